#!/usr/bin/env bash
# Build flytepropeller and kubectl-flyte from the Go module proxy (no Docker, no release downloads).
#
# flyteorg/flyte publishes its components as separate Go modules (github.com/flyteorg/flyte/
# flytepropeller, flyteplugins, flytestdlib, flyteidl), but their go.mod files replace each other
# with sibling folders, so `go install ...@vX` fails. We build through a wrapper module instead:
# go.mod.in (beside this script) pins the four modules to their releases, and main.go is a
# propeller main that links only the plugins we need (see the comment in main.go).
#
# Binaries are cached outside the work tree, keyed by version, and rebuilt only when missing:
#   ${NIM_AGENT_CACHE:-~/.cache/nim-agent}/bin/flytepropeller-<version>/{flytepropeller,kubectl-flyte}
# They are built into a temporary folder and moved into place when complete, so an interrupted
# run leaves nothing half-built behind and is safe to re-run.
#
# Usage: devcluster/propeller/build.sh [--print-bin-dir | --print-versions]
# Env:   FLYTE_VERSION, FLYTEIDL_VERSION, NIM_AGENT_CACHE,
#        PROPELLER_BUILD_JOBS (go build -p; 1 keeps a parallel build elsewhere responsive)
set -euo pipefail

FLYTE_VERSION="${FLYTE_VERSION:-v1.16.8}"        # flytepropeller, flyteplugins, flytestdlib
FLYTEIDL_VERSION="${FLYTEIDL_VERSION:-v1.16.8}"  # the flyteidl the Python side (flytekit) uses

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${NIM_AGENT_CACHE:-$HOME/.cache/nim-agent}"
DEST="$CACHE/bin/flytepropeller-$FLYTE_VERSION"
SRC="$CACHE/src/flytepropeller-$FLYTE_VERSION"
LOG="$CACHE/propeller-build.log"

case "${1:-}" in
  --print-versions) echo "FLYTE_VERSION=$FLYTE_VERSION FLYTEIDL_VERSION=$FLYTEIDL_VERSION"; exit 0 ;;
  --print-bin-dir) echo "$DEST"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir | --print-versions]" >&2; exit 2 ;;
esac

mkdir -p "$CACHE/bin" "$SRC"

# The module proxy is reachable here, the checksum database may not be. Zips are still checked:
# go.sum is seeded from the go.sum files that the flyte modules ship.
export GOSUMDB="${GOSUMDB:-off}"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

log() { printf '%s propeller/build: %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }
die() { log "FAILED: $*"; log "full log: $LOG"; exit 1; }

if [ -x "$DEST/flytepropeller" ] && [ -x "$DEST/kubectl-flyte" ]; then
  log "flytepropeller $FLYTE_VERSION already built in $DEST"
  exit 0
fi

command -v go >/dev/null || die "Go is not installed (flytepropeller $FLYTE_VERSION needs Go >= 1.26)"
start=$(date +%s)
log "building flytepropeller + kubectl-flyte $FLYTE_VERSION (flyteidl $FLYTEIDL_VERSION) in $SRC"

# download MODULE VERSION FIELD: fetch one module from the proxy, print a field of its -json record
download() {
  local out
  out=$(go mod download -json "$1@$2" 2>>"$LOG") || true
  if printf '%s' "$out" | grep -q '"Error"'; then
    die "the Go module proxy does not serve $1@$2: $(printf '%s' "$out" | sed -n 's/.*"Error": "\(.*\)".*/\1/p')"
  fi
  printf '%s' "$out" | sed -n "s/.*\"$3\": \"\(.*\)\".*/\1/p" | head -1
}

# 1. The four flyte modules; their go.sum files seed ours.
sums=()
for m in flytepropeller flyteplugins flytestdlib; do
  dir=$(download "github.com/flyteorg/flyte/$m" "$FLYTE_VERSION" Dir)
  [ -f "$dir/go.sum" ] && sums+=("$dir/go.sum")
done
dir=$(download github.com/flyteorg/flyte/flyteidl "$FLYTEIDL_VERSION" Dir)
[ -f "$dir/go.sum" ] && sums+=("$dir/go.sum")
commit=$(download github.com/flyteorg/flyte/flytepropeller "$FLYTE_VERSION" Hash)

# 2. The wrapper module.
sed -e "s/@FLYTE_VERSION@/$FLYTE_VERSION/g" -e "s/@FLYTEIDL_VERSION@/$FLYTEIDL_VERSION/g" \
  "$HERE/go.mod.in" > "$SRC/go.mod"
mkdir -p "$SRC/cmd/flytepropeller"
cp "$HERE/main.go" "$SRC/cmd/flytepropeller/main.go"
[ -s "$SRC/go.sum" ] || cat "${sums[@]}" | sort -u > "$SRC/go.sum"

# 3. Build into a temporary folder, then publish.
ldflags="-s -w -X github.com/flyteorg/flyte/flytestdlib/version.Version=$FLYTE_VERSION"
ldflags+=" -X github.com/flyteorg/flyte/flytestdlib/version.Build=${commit:0:12}"
jobs=()
[ -n "${PROPELLER_BUILD_JOBS:-}" ] && jobs=(-p "$PROPELLER_BUILD_JOBS")
tmp="$DEST.tmp"
rm -rf "$tmp"; mkdir -p "$tmp"
( cd "$SRC" && go build "${jobs[@]}" -trimpath -ldflags "$ldflags" -o "$tmp/flytepropeller" ./cmd/flytepropeller ) >>"$LOG" 2>&1 \
  || die "go build of flytepropeller $FLYTE_VERSION failed (last lines: $(tail -5 "$LOG" | tr '\n' ' '))"
( cd "$SRC" && go build "${jobs[@]}" -trimpath -ldflags "$ldflags" -o "$tmp/kubectl-flyte" \
    github.com/flyteorg/flyte/flytepropeller/cmd/kubectl-flyte ) >>"$LOG" 2>&1 \
  || die "go build of kubectl-flyte $FLYTE_VERSION failed (last lines: $(tail -5 "$LOG" | tr '\n' ' '))"
rm -rf "$DEST"; mv "$tmp" "$DEST"
log "built flytepropeller $FLYTE_VERSION in $(( $(date +%s) - start ))s: $(du -h "$DEST/flytepropeller" | cut -f1) flytepropeller, $(du -h "$DEST/kubectl-flyte" | cut -f1) kubectl-flyte, in $DEST"
