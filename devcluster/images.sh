#!/usr/bin/env bash
# OCI images for the real node, built without Docker from Debian packages and pushed to the local
# registry (devcluster/realnode.sh starts it on 127.0.0.1:5050):
#   pause        the CRI sandbox image: Debian's static catatonit in pause mode (containerd's
#                sandbox_image)
#   python       Debian + python3 (mmdebstrap, variant essential), user nim = uid 1000
#   nim-standin  python + devcluster/standin/nim_standin.py, named like a NIM image
#                (nim/meta/llama3-8b-instruct), so the stand-in derives its model id from it
#   hf-hub       python + devcluster/standin/hf_hub.py
#
# Each image is an OCI layout under ${NIM_AGENT_CACHE:-~/.cache/nim-agent}/images/<name>-<key>,
# where <key> is a hash of everything that goes into it (recipe, Debian suite, package versions
# for pause, file contents for the stand-ins); the same key is the image's tag in the registry.
# A layout that exists is never rebuilt; a tag that the registry has is never pushed again.
#
# Usage: devcluster/images.sh build | push | env
#   build   build the layouts that are missing (mmdebstrap needs Debian's archive)
#   push    build, then copy every image to the registry unless it has the tag already
#   env     print the image references as KEY=value lines (for .devcluster/images.env)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${NIM_AGENT_CACHE:-$HOME/.cache/nim-agent}"
IMAGES="$CACHE/images"
REGISTRY="${REGISTRY:-127.0.0.1:5050}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
STANDIN_DIR="$ROOT/devcluster/standin"
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

key_pause() { pause_recipe | sha; }
key_python() { base_recipe | sha; }
key_standin() { standin_recipe "$STANDIN_DIR/nim_standin.py" | sha; }
key_hub() { standin_recipe "$STANDIN_DIR/hf_hub.py" | sha; }

# Registry repositories (the stand-in is named as NIM images are: nvcr.io/nim/<org>/<model>).
ref_pause() { echo "$REGISTRY/nim-agent/pause:$(key_pause)"; }
ref_python() { echo "$REGISTRY/nim-agent/python:$(key_python)"; }
ref_standin() { echo "$REGISTRY/nim/meta/llama3-8b-instruct:standin-$(key_standin)"; }
ref_hub() { echo "$REGISTRY/nim-agent/hf-hub:$(key_hub)"; }

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
}

print_env() {
  echo "REGISTRY=$REGISTRY"
  echo "PAUSE_IMAGE=$(ref_pause)"
  echo "PYTHON_BASE_IMAGE=$(ref_python)"
  echo "NIM_STANDIN_IMAGE=$(ref_standin)"
  echo "HF_HUB_IMAGE=$(ref_hub)"
}

case "${1:-}" in
  build) build_all ;;
  push) build_all; push_all ;;
  env) print_env ;;
  *) echo "usage: $0 build | push | env" >&2; exit 2 ;;
esac
