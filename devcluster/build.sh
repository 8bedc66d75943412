#!/usr/bin/env bash
# Build the local control plane's binaries from package registries only (no Docker, no release
# downloads): kube-apiserver, kube-scheduler, kube-controller-manager and kubectl from the
# k8s.io/kubernetes Go module, etcd from go.etcd.io/etcd/server/v3, kwok/kwokctl and helm; for
# the real node kubelet and kube-proxy (same module), CoreDNS, the distribution registry and
# crictl.
#
# Binaries are cached outside the work tree, keyed by version, and rebuilt only when missing:
#   ${NIM_AGENT_CACHE:-~/.cache/nim-agent}/bin/<component>-<version>/<binary>
# Each component is built into a temporary folder and moved into place when complete, so an
# interrupted run leaves nothing half-built behind and is safe to re-run.
#
# One build at a time: a second run waits for the first (lock file next to the log), then finds
# the binaries ready. Every binary is linked into $DEVCLUSTER_BIN (default <cache>/bin/current);
# `make cluster-build` sets it to .devcluster/bin.
#
# Usage: devcluster/build.sh [--print-versions]
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
# The real node's helpers (devcluster/realnode.sh): cluster DNS, the local OCI registry, crictl.
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
DISTRIBUTION_VERSION="${DISTRIBUTION_VERSION:-v3.1.2}"
CRI_TOOLS_VERSION="${CRI_TOOLS_VERSION:-v1.37.0}"
TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.5.0}"

CACHE="${NIM_AGENT_CACHE:-$HOME/.cache/nim-agent}"
LOG="$CACHE/build.log"
mkdir -p "$CACHE/bin" "$CACHE/src"

# The module proxy is reachable here, the checksum database may not be; sums still come from the
# proxy's zips and are recorded in each wrapper's go.sum.
export GOSUMDB="${GOSUMDB:-off}"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

log() { printf '%s devcluster/build: %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }
die() { log "FAILED: $*"; log "full log: $LOG"; exit 1; }

# Go is needed only when something has to be built.
need_go() {
  command -v go >/dev/null || die "Go is not installed (need Go >= 1.26 to build Kubernetes $K8S_VERSION)"
}

# wait_for_other_build DIR: a build started by an older copy of this script (which took no lock)
# may still be writing into DIR; never build over it.
wait_for_other_build() {
  if pgrep -f -- "-o $1/" >/dev/null 2>&1; then
    log "another go build is writing $1; waiting for it to finish"
    while pgrep -f -- "-o $1/" >/dev/null 2>&1; do sleep 10; done
  fi
}

# have DIR BIN... : true when every BIN exists and is executable in DIR
have() { local d=$1; shift; for b in "$@"; do [ -x "$d/$b" ] || return 1; done; }

# finish TMP DEST: atomically publish a completed build
finish() { rm -rf "$2"; mv "$1" "$2"; }

build_kubernetes() {
  local dest="$CACHE/bin/kubernetes-$K8S_VERSION"
  have "$dest" kube-apiserver kube-scheduler kube-controller-manager kubectl && return 0
  wait_for_other_build "$dest.tmp"
  have "$dest" kube-apiserver kube-scheduler kube-controller-manager kubectl && return 0
  need_go
  local t0=$SECONDS
  log "building Kubernetes $K8S_VERSION (kube-apiserver, kube-scheduler, kube-controller-manager, kubectl); cold builds take 30-50 minutes on 2 cores"
  local src="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$src"
  local minor="${K8S_VERSION#v1.}"  # 37.2
  # The wrapper module: require k8s.io/kubernetes and replace every staging module that its go.mod
  # pins at v0.0.0 (via ./staging paths) with the published v0.<minor>.<patch>.
  local kmod
  kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$kmod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION from the module proxy"
  {
    echo "module nim-agent.dev/devcluster/kubernetes"
    echo
    echo "go $(sed -n 's/^go //p' "$kmod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    # sample-* staging modules are not published; nothing we build imports them.
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$kmod" | grep -v '/sample-' |
      while read -r m; do echo "	$m => $m v0.$minor"; done
    echo ")"
  } > "$src/go.mod"
  cat > "$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*} -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  local tmp="$dest.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  ( cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl ) >>"$LOG" 2>&1 \
    || die "go build of Kubernetes $K8S_VERSION failed (last lines: $(tail -5 "$LOG" | tr '\n' ' '))"
  finish "$tmp" "$dest"
  log "built Kubernetes $K8S_VERSION in $((SECONDS - t0))s"
}

# The real node's binaries (kubelet, kube-proxy) from the same wrapper module, in a folder of their
# own: a control plane without them still works for everything but the real node.
build_kubernetes_node() {
  local dest="$CACHE/bin/kubernetes-node-$K8S_VERSION"
  have "$dest" kubelet kube-proxy && return 0
  need_go
  local t0=$SECONDS src="$CACHE/src/kubernetes-$K8S_VERSION" minor="${K8S_VERSION#v1.}"
  log "building kubelet and kube-proxy $K8S_VERSION"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*} -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  local tmp="$dest.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  ( cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy ) >>"$LOG" 2>&1 \
    || die "go build of kubelet/kube-proxy $K8S_VERSION failed (last lines: $(tail -5 "$LOG" | tr '\n' ' '))"
  finish "$tmp" "$dest"
  log "built kubelet and kube-proxy $K8S_VERSION in $((SECONDS - t0))s"
}

build_etcd() {
  local dest="$CACHE/bin/etcd-$ETCD_VERSION"
  have "$dest" etcd && return 0
  need_go
  log "building etcd $ETCD_VERSION"
  local src="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$src"
  printf 'module nim-agent.dev/devcluster/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$src/go.mod"
  cat > "$src/main.go" <<'GO'
// etcd, built from its server module: the release binaries cannot be downloaded here.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  local tmp="$dest.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  ( cd "$src" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" . ) >>"$LOG" 2>&1 \
    || die "go build of etcd $ETCD_VERSION failed (last lines: $(tail -5 "$LOG" | tr '\n' ' '))"
  finish "$tmp" "$dest"
  log "built etcd $ETCD_VERSION"
}

# go_install NAME VERSION DEST PKG... : `go install` tools that build without replaces
go_install() {
  local name=$1 version=$2 dest=$3; shift 3
  local bins=(); for p in "$@"; do bins+=("$(basename "${p%@*}")"); done
  have "$dest" "${bins[@]}" && return 0
  need_go
  log "building $name $version"
  local tmp="$dest.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  GOBIN="$tmp" GOFLAGS="-buildvcs=false" go install -trimpath -ldflags "-s -w" "$@" >>"$LOG" 2>&1 \
    || die "go install of $name $version failed (last lines: $(tail -5 "$LOG" | tr '\n' ' '))"
  finish "$tmp" "$dest"
  log "built $name $version"
}

# wrapper_build NAME VERSION DEST BINARY MODULE MAIN_GO: build one binary from a two-file wrapper
# module (go.mod requiring MODULE@VERSION, and MAIN_GO as main.go) that compiles in only the
# packages we use; the upstream main packages pull in every cloud SDK.
wrapper_build() {
  local name=$1 version=$2 dest=$3 bin=$4 module=$5 main_go=$6
  have "$dest" "$bin" && return 0
  need_go
  local t0=$SECONDS src="$CACHE/src/$name-$version"
  log "building $name $version"
  mkdir -p "$src"
  printf 'module nim-agent.dev/devcluster/%s\n\ngo 1.26\n\nrequire %s %s\n' "$name" "$module" "$version" > "$src/go.mod"
  printf '%s\n' "$main_go" > "$src/main.go"
  local tmp="$dest.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  ( cd "$src" && go build -trimpath -ldflags "-s -w" -o "$tmp/$bin" . ) >>"$LOG" 2>&1 \
    || die "go build of $name $version failed (last lines: $(tail -5 "$LOG" | tr '\n' ' '))"
  finish "$tmp" "$dest"
  log "built $name $version in $((SECONDS - t0))s"
}

# CoreDNS with the plugins the real node's Corefile uses (devcluster/realnode/Corefile).
build_coredns() {
  wrapper_build coredns "$COREDNS_VERSION" "$CACHE/bin/coredns-$COREDNS_VERSION" coredns \
    github.com/coredns/coredns '// CoreDNS with only the plugins the local real node uses.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }'
}

# The CNCF distribution registry with its filesystem storage driver only.
build_registry() {
  wrapper_build registry "$DISTRIBUTION_VERSION" "$CACHE/bin/registry-$DISTRIBUTION_VERSION" registry \
    github.com/distribution/distribution/v3 '// The distribution registry with the filesystem storage driver only.
package main

import (
	"os"

	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}'
}

# crictl: the real node's containers seen through the CRI (debugging, and a clean stop of every
# pod sandbox when the node goes down).
build_crictl() {
  go_install cri-tools "$CRI_TOOLS_VERSION" "$CACHE/bin/cri-tools-$CRI_TOOLS_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
}

# Toxiproxy: a TCP proxy that injects network faults (resets mid-body, latency, bandwidth limits)
# between the connector and the API server, for the fault suite (tests/faults/test_network.py).
build_toxiproxy() {
  local dest="$CACHE/bin/toxiproxy-$TOXIPROXY_VERSION"
  have "$dest" toxiproxy-server && return 0
  need_go
  log "building toxiproxy $TOXIPROXY_VERSION"
  local tmp="$dest.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  GOBIN="$tmp" GOFLAGS="-buildvcs=false" go install -trimpath -ldflags "-s -w" \
      "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >>"$LOG" 2>&1 \
    || die "go install of toxiproxy $TOXIPROXY_VERSION failed (last lines: $(tail -5 "$LOG" | tr '\n' ' '))"
  mv "$tmp/server" "$tmp/toxiproxy-server"
  finish "$tmp" "$dest"
  log "built toxiproxy $TOXIPROXY_VERSION"
}

build_kwok() {
  go_install kwok "$KWOK_VERSION" "$CACHE/bin/kwok-$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
}

build_helm() {
  go_install helm "$HELM_VERSION" "$CACHE/bin/helm-$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

if [ "${1:-}" = "--print-versions" ]; then
  echo "K8S_VERSION=$K8S_VERSION ETCD_VERSION=$ETCD_VERSION KWOK_VERSION=$KWOK_VERSION HELM_VERSION=$HELM_VERSION COREDNS_VERSION=$COREDNS_VERSION DISTRIBUTION_VERSION=$DISTRIBUTION_VERSION CRI_TOOLS_VERSION=$CRI_TOOLS_VERSION TOXIPROXY_VERSION=$TOXIPROXY_VERSION"
  exit 0
fi

exec 9>"$CACHE/build.lock"
if ! flock -n 9; then
  log "another devcluster/build.sh is running; waiting for it (log: $LOG)"
  flock 9
fi

start=$(date +%s)
build_kwok
build_helm
build_etcd
build_kubernetes
build_kubernetes_node
build_coredns
build_registry
build_crictl
build_toxiproxy

# One folder of links, as the Makefile and tests expect them.
link_dir="${DEVCLUSTER_BIN:-$CACHE/bin/current}"
mkdir -p "$link_dir"
for f in "$CACHE/bin/kubernetes-$K8S_VERSION"/* "$CACHE/bin/etcd-$ETCD_VERSION"/* \
         "$CACHE/bin/kwok-$KWOK_VERSION"/* "$CACHE/bin/helm-$HELM_VERSION"/* \
         "$CACHE/bin/kubernetes-node-$K8S_VERSION"/* "$CACHE/bin/coredns-$COREDNS_VERSION"/* \
         "$CACHE/bin/registry-$DISTRIBUTION_VERSION"/* "$CACHE/bin/cri-tools-$CRI_TOOLS_VERSION"/* \
         "$CACHE/bin/toxiproxy-$TOXIPROXY_VERSION"/*; do
  ln -sfn "$f" "$link_dir/$(basename "$f")"
done
log "binaries ready in $link_dir ($(( $(date +%s) - start ))s)"
