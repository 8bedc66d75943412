#!/usr/bin/env bash
# Install the Debian packages given as arguments unless they are installed already (then it
# costs one dpkg-query). Runs `apt-get update` only when something is missing. Needs root.
#
# Usage: devcluster/apt.sh PACKAGE...
set -euo pipefail

log() { printf '%s devcluster/apt: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing=()
for p in "$@"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed; trying the install with the lists we have"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
  die "apt-get install ${missing[*]} failed"
