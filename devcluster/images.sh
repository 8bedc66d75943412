#!/usr/bin/env bash
# OCI images for the real node, built without Docker from Debian packages and pushed to the local
# registry (devcluster/realnode.sh starts it on 127.0.0.1:5050):
#   pause        the CRI sandbox image: Debian's static catatonit in pause mode (containerd's
#                sandbox_image)
#   python       Debian + python3 (mmdebstrap, variant essential), user nim = uid 1000
#   nim-standin  python + devcluster/standin/nim_standin.py, named like a NIM image
#                (nim/meta/llama3-8b-instruct), so the stand-in derives its model id from it
#   hf-hub       python + devcluster/standin/hf_hub.py
# and, built only on request (`connector`, i.e. `make image`), the connector image itself:
#   python-slim  the layout of the official python:3.11-slim that the Dockerfile is written for
#                (root, no uid 1000, /usr/local/bin/python3 and python, pip, CA certificates,
#                groupadd/useradd), made from Debian's packages: the Dockerfile's PYTHON_IMAGE
#   nim-agent    the repository's Dockerfile, built by buildah (no Docker engine) on python-slim
#
# Each image is an OCI layout under ${NIM_AGENT_CACHE:-~/.cache/nim-agent}/images/<name>-<key>,
# where <key> is a hash of everything that goes into it (recipe, Debian suite, package versions
# for pause, file contents for the stand-ins); the same key is the image's tag in the registry.
# A layout that exists is never rebuilt; a tag that the registry has is never pushed again.
#
# Usage: devcluster/images.sh build | push | env | connector
#   build      build the real node's layouts that are missing (mmdebstrap needs Debian's archive)
#   push       build, then copy every image to the registry unless it has the tag already (the
#              connector image too when it is built for this checkout)
#   env        print the image references as KEY=value lines (for .devcluster/images.env);
#              NIM_AGENT_IMAGE only when the connector image of this checkout is built
#   connector  build the connector image unless cached (its key: the Dockerfile, .dockerignore,
#              the files its COPY instructions read, the base), push it when the registry runs,
#              and set NIM_AGENT_IMAGE in .devcluster/images.env
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${NIM_AGENT_CACHE:-$HOME/.cache/nim-agent}"
IMAGES="$CACHE/images"
REGISTRY="${REGISTRY:-127.0.0.1:5050}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
STANDIN_DIR="$ROOT/devcluster/standin"
STATE="${DEVCLUSTER_DIR:-$ROOT/.devcluster}"
# buildah's own storage (its layer cache: a change to nim_agent/ rebuilds only the last layers).
BUILDAH_STORE="$CACHE/buildah"
# How many connector images (one per source state) the cache keeps.
CONNECTOR_KEEP="${CONNECTOR_KEEP:-4}"
# Fixed timestamps: the same inputs give the same layers on every machine.
export SOURCE_DATE_EPOCH=1767225600  # 2026-01-01T00:00:00Z
CREATED="2026-01-01T00:00:00Z"

log() { printf '%s devcluster/images: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

sha() { sha256sum | cut -c1-16; }

# What goes into each image, as text: its hash is the image's key (and tag).
base_recipe() {
  printf 'python-base v1\nsuite=%s mirror=%s variant=essential include=python3\nuser=nim:1000:1000\n' \
    "$DEBIAN_SUITE" "$DEBIAN_MIRROR"
}
pause_recipe() {
  printf 'pause v2\ncatatonit=%s %s\n' "$(dpkg-query -W -f='${Version}' catatonit)" \
    "$(sha256sum </usr/bin/catatonit | cut -d' ' -f1)"
}
standin_recipe() { # standin_recipe FILE
  printf 'standin v3 base=%s\n%s %s\n' "$(base_recipe | sha)" "$(basename "$1")" \
    "$(sha256sum <"$1" | cut -d' ' -f1)"
}

# The official python:3.11-slim, as far as the Dockerfile and what it installs depend on it: the
# packages of debian:bookworm-slim (variant minbase: Essential + apt, so libstdc++ too, which
# grpcio's wheel links against) and the ones the python image adds (CA certificates, netbase,
# tzdata); python3 and python in /usr/local/bin (the virtualenv links to /usr/local/bin/python3),
# `python -m pip` installing as root into /usr/local, groupadd/useradd, no user with uid 1000,
# root as the default user.
SLIM_PACKAGES=python3,python3-pip,ca-certificates,netbase,tzdata,passwd
slim_recipe() {
  printf 'python-slim v3\nsuite=%s mirror=%s variant=minbase include=%s\n' \
    "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$SLIM_PACKAGES"
  printf '/usr/local/bin/{python3,python,pip}; no EXTERNALLY-MANAGED; LANG=C.UTF-8; user root\n'
  local ca
  for ca in $(local_cas); do printf 'ca %s %s\n' "$(basename "$ca")" "$(sha256sum <"$ca" | cut -d' ' -f1)"; done
}

# The machine's own certificate authorities (Debian's place for local ones). Where outgoing TLS
# is re-signed by a proxy (as here), RUN steps reach PyPI only when the base trusts the same CAs
# as the machine: they are added to the base's store, and SSL_CERT_FILE points uv at that store
# (uv trusts its built-in roots otherwise; Debian's pip uses the store already).
local_cas() { find /usr/local/share/ca-certificates -type f -name '*.crt' 2>/dev/null | LC_ALL=C sort; }

# The build context of the Dockerfile: the sources of its COPY instructions that read the
# context (not --from=<stage>), relative to the repository, one file per line, sorted. Compiled
# Python files are left out (.dockerignore leaves them out of the context too).
connector_files() {
  local src
  awk 'toupper($1) == "COPY" && $0 !~ /--from/ { for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' \
    "$ROOT/Dockerfile" | while read -r src; do
    [ -e "$ROOT/$src" ] || die "the Dockerfile copies $src, which is not in the repository"
    (cd "$ROOT" && find "$src" -type f ! -path '*/__pycache__/*' ! -name '*.pyc')
  done | LC_ALL=C sort -u
}

# connector_recipe DIR FILES: everything the connector image is made of, as text: the base, the
# Dockerfile, .dockerignore and the context files listed in FILES, as found in DIR (the
# repository, or the staged build context)
connector_recipe() {
  local dir=$1 list=$2 f
  printf 'nim-agent v1 base=%s\n' "$(slim_recipe | sha)"
  for f in Dockerfile .dockerignore $(cat "$list"); do
    printf '%s %s\n' "$f" "$(sha256sum <"$dir/$f" | cut -d' ' -f1)"
  done
}

key_pause() { pause_recipe | sha; }
key_python() { base_recipe | sha; }
key_standin() { standin_recipe "$STANDIN_DIR/nim_standin.py" | sha; }
key_hub() { standin_recipe "$STANDIN_DIR/hf_hub.py" | sha; }
key_slim() { slim_recipe | sha; }
key_connector() {
  local list; list=$(mktemp)
  connector_files >"$list" || { rm -f "$list"; return 1; }
  connector_recipe "$ROOT" "$list" | sha
  rm -f "$list"
}

# Registry repositories (the stand-in is named as NIM images are: nvcr.io/nim/<org>/<model>).
ref_pause() { echo "$REGISTRY/nim-agent/pause:$(key_pause)"; }
ref_python() { echo "$REGISTRY/nim-agent/python:$(key_python)"; }
ref_standin() { echo "$REGISTRY/nim/meta/llama3-8b-instruct:standin-$(key_standin)"; }
ref_hub() { echo "$REGISTRY/nim-agent/hf-hub:$(key_hub)"; }
ref_connector() { local k; k=$(key_connector) || return 1; echo "$REGISTRY/nim-agent/nim-agent:$k"; }

# layout NAME KEY: the cache folder of one image
layout() { echo "$IMAGES/$1-$2"; }

# umoci_config LAYOUT ARGS...: set the image config (fixed timestamps, linux/amd64)
umoci_config() {
  local dir=$1; shift
  umoci config --image "$dir:image" --created "$CREATED" --history.created "$CREATED" \
    --history.author nim-agent --author nim-agent "$@"
}

build_pause() {
  local dest; dest=$(layout pause "$(key_pause)")
  [ -d "$dest" ] && return 0
  log "building the pause image (catatonit -P)"
  local tmp="$dest.tmp"; rm -rf "$tmp"; mkdir -p "$tmp/root"
  cp /usr/bin/catatonit "$tmp/root/pause"
  touch -d "@$SOURCE_DATE_EPOCH" "$tmp/root/pause"
  umoci init --layout "$tmp/oci"
  umoci new --image "$tmp/oci:image"
  umoci insert --image "$tmp/oci:image" --history.created "$CREATED" "$tmp/root/pause" /pause
  umoci_config "$tmp/oci" --config.entrypoint /pause --config.cmd -P --config.user 65535:65535
  mv "$tmp/oci" "$dest"; rm -rf "$tmp"
}

build_python() {
  local dest; dest=$(layout python "$(key_python)")
  [ -d "$dest" ] && return 0
  local t0=$SECONDS
  log "building the python base image with mmdebstrap ($DEBIAN_SUITE, essential + python3)"
  local tmp="$dest.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
  # Documentation, manuals and translations are left out; the user nim (uid 1000, as NIM images
  # run) owns its home.
  mmdebstrap --quiet --variant=essential --include=python3 --format=tar \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='echo "nim:x:1000:1000:nim:/home/nim:/bin/sh" >>"$1/etc/passwd"' \
    --customize-hook='echo "nim:x:1000:" >>"$1/etc/group"' \
    --customize-hook='echo "nim:*:20454:0:99999:7:::" >>"$1/etc/shadow"' \
    --customize-hook='mkdir -p "$1/home/nim" && chown 1000:1000 "$1/home/nim"' \
    "$DEBIAN_SUITE" "$tmp/rootfs.tar" "$DEBIAN_MIRROR" >"$tmp/mmdebstrap.log" 2>&1 ||
    die "mmdebstrap failed: $(tail -5 "$tmp/mmdebstrap.log" | tr '\n' ' ') (log: $tmp/mmdebstrap.log)"
  umoci init --layout "$tmp/oci"
  umoci new --image "$tmp/oci:image"
  umoci raw add-layer --image "$tmp/oci:image" --history.created "$CREATED" "$tmp/rootfs.tar"
  umoci_config "$tmp/oci" --config.user 1000:1000 --config.workingdir /home/nim \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env HOME=/home/nim --config.env PYTHONUNBUFFERED=1 \
    --config.env PYTHONDONTWRITEBYTECODE=1 --config.cmd python3
  mv "$tmp/oci" "$dest"; rm -rf "$tmp"
  log "built the python base image in $((SECONDS - t0))s"
}

# build_standin NAME KEY FILE DIR [ENV...]: the python base plus FILE as /opt/DIR/<file>, run as
# `python3 /opt/DIR/<file>`
build_standin() {
  local name=$1 key=$2 file=$3 dir=$4; shift 4
  local dest; dest=$(layout "$name" "$key")
  [ -d "$dest" ] && return 0
  [ -f "$file" ] || die "$file is missing"
  log "building the $name image ($(basename "$file"))"
  local base; base=$(layout python "$(key_python)")
  local tmp="$dest.tmp"; rm -rf "$tmp"; mkdir -p "$tmp/root/$dir"
  # Blobs are immutable (named by digest): share them with the base layout.
  mkdir -p "$tmp/oci"
  cp -al "$base/blobs" "$tmp/oci/blobs"
  cp "$base/index.json" "$base/oci-layout" "$tmp/oci/"
  install -m 0644 "$file" "$tmp/root/$dir/$(basename "$file")"
  touch -d "@$SOURCE_DATE_EPOCH" "$tmp/root/$dir" "$tmp/root/$dir/$(basename "$file")"
  umoci insert --image "$tmp/oci:image" --history.created "$CREATED" "$tmp/root/$dir" "/opt/$dir"
  local envs=(); for e in "$@"; do envs+=(--config.env "$e"); done
  umoci_config "$tmp/oci" --config.cmd python3 --config.cmd "/opt/$dir/$(basename "$file")" \
    "${envs[@]}"
  mv "$tmp/oci" "$dest"; rm -rf "$tmp"
}

build_slim() {
  local dest; dest=$(layout python-slim "$(key_slim)")
  [ -d "$dest" ] && return 0
  local t0=$SECONDS
  log "building the python-slim base with mmdebstrap ($DEBIAN_SUITE minbase + $SLIM_PACKAGES)"
  local tmp="$dest.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
  local ca_hooks=() ca_env=() ca
  if [ -n "$(local_cas)" ]; then
    mkdir -p "$tmp/cas"
    for ca in $(local_cas); do cp "$ca" "$tmp/cas/"; done
    ca_hooks=(--customize-hook="cp $tmp/cas/*.crt \"\$1/usr/local/share/ca-certificates/\"" \
      --customize-hook='chroot "$1" update-ca-certificates >/dev/null')
    ca_env=(--config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
    log "the base trusts this machine's CAs too: $(local_cas | xargs -n1 basename | tr '\n' ' ')"
  fi
  # The official image installs no recommended packages and no documentation either. Its
  # python3 is in /usr/local/bin, and pip may install there as root (no EXTERNALLY-MANAGED).
  mmdebstrap --quiet --variant=minbase --include="$SLIM_PACKAGES" \
    --format=tar --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='ln -sf /usr/bin/python3 "$1/usr/local/bin/python3"' \
    --customize-hook='ln -sf python3 "$1/usr/local/bin/python"' \
    --customize-hook='ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "${ca_hooks[@]}" \
    "$DEBIAN_SUITE" "$tmp/rootfs.tar" "$DEBIAN_MIRROR" >"$tmp/mmdebstrap.log" 2>&1 ||
    die "mmdebstrap failed: $(tail -5 "$tmp/mmdebstrap.log" | tr '\n' ' ') (log: $tmp/mmdebstrap.log)"
  umoci init --layout "$tmp/oci"
  umoci new --image "$tmp/oci:image"
  umoci raw add-layer --image "$tmp/oci:image" --history.created "$CREATED" "$tmp/rootfs.tar"
  umoci_config "$tmp/oci" --config.workingdir / \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env LANG=C.UTF-8 "${ca_env[@]}" --config.cmd python3
  mv "$tmp/oci" "$dest"; rm -rf "$tmp"
  log "built the python-slim base in $((SECONDS - t0))s"
}

# buildah on its own storage under the cache (overlay on the cache's filesystem).
bah() { buildah --root "$BUILDAH_STORE/root" --runroot "$BUILDAH_STORE/run" --storage-driver overlay "$@"; }

# The connector image: the repository's Dockerfile, unchanged, built by buildah with
# PYTHON_IMAGE=python-slim. RUN steps use the host's network (uv and pip fetch from PyPI; no
# bridge or firewall rule is made for the build) and buildah's layer cache: a change to nim_agent/
# only reruns the steps after `COPY nim_agent`.
build_connector() {
  local key; key=$(key_connector) || die "cannot list the Dockerfile's build context"
  local dest; dest=$(layout nim-agent "$key")
  if [ -d "$dest" ]; then
    log "connector image $key: cached"
    return 0
  fi
  local t0=$SECONDS
  "$ROOT/devcluster/apt.sh" buildah runc skopeo umoci mmdebstrap curl
  build_slim
  log "building the connector image $key from the Dockerfile (buildah $(buildah --version | awk '{print $3}'))"
  local tmp="$dest.tmp"; rm -rf "$tmp"; mkdir -p "$tmp/context"
  # The context holds exactly the files the key was made of.
  connector_files >"$tmp/files"
  cp "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$tmp/context/"
  (cd "$ROOT" && tar -cf - -T "$tmp/files") | tar -xf - -C "$tmp/context"
  [ "$(connector_recipe "$tmp/context" "$tmp/files" | sha)" = "$key" ] ||
    die "the sources changed while the build context was copied; run it again"
  local base="localhost/nim-agent/python-slim:$(key_slim)" name="localhost/nim-agent/nim-agent:$key"
  mkdir -p "$BUILDAH_STORE"
  if ! bah inspect --type image "$base" >/dev/null 2>&1; then
    skopeo copy --quiet "oci:$(layout python-slim "$(key_slim)"):image" \
      "containers-storage:[overlay@$BUILDAH_STORE/root+$BUILDAH_STORE/run]$base" ||
      die "could not load the python-slim base into buildah's storage"
  fi
  bah bud --layers --pull=never --network=host --runtime=runc --format=oci \
    --build-arg "PYTHON_IMAGE=$base" -t "$name" -f "$tmp/context/Dockerfile" "$tmp/context" \
    >"$tmp/build.log" 2>&1 ||
    die "buildah bud failed: $(tail -15 "$tmp/build.log") (log: $tmp/build.log)"
  bah push --quiet "$name" "oci:$tmp/oci:image" >>"$tmp/build.log" 2>&1 ||
    die "buildah push to an OCI layout failed (log: $tmp/build.log)"
  mv "$tmp/oci" "$dest"; rm -rf "$tmp"
  log "built the connector image $key in $((SECONDS - t0))s: $(image_size "$dest")"
  prune_connectors
}

# image_size LAYOUT: compressed (what a pull moves) and unpacked size of the layout's image
image_size() {
  python3 - "$1" <<'PY'
import json, sys, gzip, os
root = sys.argv[1]
def blob(d): return os.path.join(root, "blobs", *d.split(":"))
index = json.load(open(os.path.join(root, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
packed = sum(l["size"] for l in manifest["layers"])
unpacked = 0
for l in manifest["layers"]:
    with gzip.open(blob(l["digest"])) as f:
        while chunk := f.read(1 << 20):
            unpacked += len(chunk)
print(f"{packed / 1e6:.0f} MB compressed, {unpacked / 1e6:.0f} MB unpacked, {len(manifest['layers'])} layers")
PY
}

# Keep the newest CONNECTOR_KEEP connector layouts; buildah's storage is emptied when it passes
# 8 GB (its layer cache is rebuilt by the next build).
prune_connectors() {
  local old
  for old in $(ls -1dt "$IMAGES"/nim-agent-* 2>/dev/null | tail -n +"$((CONNECTOR_KEEP + 1))"); do
    rm -rf "$old"
  done
  if [ "$(du -sm "$BUILDAH_STORE" 2>/dev/null | cut -f1)" -gt 8000 ]; then
    log "buildah's storage passed 8 GB: emptying it"
    bah rmi --all --force >/dev/null 2>&1 || true
  fi
}

# The connector image: build unless cached, push when the registry runs, record its reference.
connector() {
  mkdir -p "$IMAGES"
  exec 8>"$IMAGES/.lock"
  flock 8
  build_connector
  flock -u 8
  local key ref; key=$(key_connector); ref=$(ref_connector)
  if curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; then
    push_one nim-agent "$key" "$ref"
  else
    log "no registry on $REGISTRY: $ref is pushed when the real node starts (make cluster-up)"
  fi
  mkdir -p "$STATE"
  { grep -v '^NIM_AGENT_IMAGE=' "$STATE/images.env" 2>/dev/null || true; echo "NIM_AGENT_IMAGE=$ref"; } \
    >"$STATE/images.env.tmp"
  mv "$STATE/images.env.tmp" "$STATE/images.env"
  log "NIM_AGENT_IMAGE=$ref (${STATE#"$ROOT/"}/images.env)"
}

build_all() {
  "$ROOT/devcluster/apt.sh" mmdebstrap umoci skopeo catatonit curl
  mkdir -p "$IMAGES"
  # One build at a time per cache (two worktrees may build at once).
  exec 8>"$IMAGES/.lock"
  flock 8
  build_pause
  build_python
  # The NIM stand-in writes its model cache under NIM_CACHE_PATH (/opt/nim/.cache, as NIM does);
  # pods mount a volume there, a bare run gets the folder from the image.
  if [ ! -d "$(layout nim-standin "$(key_standin)")" ]; then
    local cache_dir; cache_dir=$(mktemp -d)
    # /opt/nim as NIM images have it: anyone may enter, uid 1000 owns the cache.
    chmod 0755 "$cache_dir"
    mkdir -p "$cache_dir/.cache"; chown 1000:1000 "$cache_dir/.cache"
    touch -d "@$SOURCE_DATE_EPOCH" "$cache_dir" "$cache_dir/.cache"
    build_standin nim-standin "$(key_standin)" "$STANDIN_DIR/nim_standin.py" nim-standin \
      "STANDIN_IMAGE=$(ref_standin)" NIM_CACHE_PATH=/opt/nim/.cache
    local dest; dest=$(layout nim-standin "$(key_standin)")
    umoci insert --image "$dest:image" --history.created "$CREATED" "$cache_dir" /opt/nim
    umoci_config "$dest" --config.exposedports 8000/tcp
    rm -rf "$cache_dir"
  fi
  build_standin hf-hub "$(key_hub)" "$STANDIN_DIR/hf_hub.py" hf-hub
  flock -u 8
}

registry_has() { # registry_has REF
  local ref=$1 repo tag
  repo=${ref#"$REGISTRY"/}; tag=${repo##*:}; repo=${repo%:*}
  curl -fsS -o /dev/null -I \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REGISTRY/v2/$repo/manifests/$tag" 2>/dev/null
}

push_one() { # push_one NAME KEY REF
  local dir; dir=$(layout "$1" "$2")
  registry_has "$3" && return 0
  log "pushing $3"
  skopeo copy --quiet --dest-tls-verify=false "oci:$dir:image" "docker://$3" ||
    die "skopeo copy of $dir to $3 failed"
}

push_all() {
  curl -fsS -o /dev/null "http://$REGISTRY/v2/" ||
    die "no registry answers on http://$REGISTRY/v2/ (devcluster/realnode.sh starts it)"
  push_one pause "$(key_pause)" "$(ref_pause)"
  push_one python "$(key_python)" "$(ref_python)"
  push_one nim-standin "$(key_standin)" "$(ref_standin)"
  push_one hf-hub "$(key_hub)" "$(ref_hub)"
  # The connector image only when `make image` built it for this checkout.
  local key; key=$(key_connector)
  if [ -d "$(layout nim-agent "$key")" ]; then push_one nim-agent "$key" "$(ref_connector)"; fi
}

print_env() {
  echo "REGISTRY=$REGISTRY"
  echo "PAUSE_IMAGE=$(ref_pause)"
  echo "PYTHON_BASE_IMAGE=$(ref_python)"
  echo "NIM_STANDIN_IMAGE=$(ref_standin)"
  echo "HF_HUB_IMAGE=$(ref_hub)"
  local key; key=$(key_connector)
  if [ -d "$(layout nim-agent "$key")" ]; then echo "NIM_AGENT_IMAGE=$(ref_connector)"; fi
}

case "${1:-}" in
  build) build_all ;;
  push) build_all; push_all ;;
  env) print_env ;;
  connector) connector ;;
  *) echo "usage: $0 build | push | env | connector" >&2; exit 2 ;;
esac
