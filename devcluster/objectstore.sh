#!/usr/bin/env bash
# A real S3-compatible object store on this machine for the tests that move Flyte data (adapters as
# task outputs): MinIO, built from the Go module proxy and run as a host process.
#
# Usage: devcluster/objectstore.sh up | down | env | status | build | bin
#   up      build MinIO (or reuse the cached binary), start it unless it is running, wait until it
#           answers, create the bucket, write the settings file (below) and print it
#   down    stop it and delete its data (nothing running: nothing to do)
#   env     print the settings file: KEY=value lines (load with: set -a; . FILE; set +a)
#   status  exit 0 when it answers
#   build   only build (or find) the binary; print its path
#   bin     print the binary's path (built or not; nothing is built)
#
# Binary: ${NIM_AGENT_CACHE:-~/.cache/nim-agent}/bin/minio-<version>/minio, built once with
# `go install github.com/minio/minio@<version>` (about 5 minutes cold on 2 cores).
# State: $DEVCLUSTER_DIR/objectstore/ (data/, minio.log, minio.pid); settings file:
# $DEVCLUSTER_DIR/objectstore.env with flytekit's S3 settings (FLYTE_AWS_ENDPOINT,
# FLYTE_AWS_ACCESS_KEY_ID, FLYTE_AWS_SECRET_ACCESS_KEY), OBJECTSTORE_BUCKET and
# OBJECTSTORE_RAW_OUTPUT_PREFIX (s3://<bucket>/raw). Credentials are generated at the first `up`
# and kept with the data.
#
# Settings (environment, defaults in brackets):
#   OBJECTSTORE_HOST [127.0.0.1]  listen address. Pods on the real node reach the host at
#                                 10.244.0.1: use that (once the bridge exists) or 0.0.0.0
#   OBJECTSTORE_PORT [9300]       S3 port
#   OBJECTSTORE_ENDPOINT_HOST     host name written into FLYTE_AWS_ENDPOINT [OBJECTSTORE_HOST, or
#                                 127.0.0.1 when that is 0.0.0.0]
#   OBJECTSTORE_BUCKET [nim-agent]  bucket created at start
#   DEVCLUSTER_DIR [.devcluster]  state folder
set -euo pipefail

MINIO_MODULE="github.com/minio/minio"
# The newest MinIO server on the module proxy (the project publishes source only since 2025).
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${DEVCLUSTER_DIR:-$ROOT/.devcluster}"
DIR="$STATE/objectstore"
ENV_FILE="$STATE/objectstore.env"
CACHE="${NIM_AGENT_CACHE:-$HOME/.cache/nim-agent}"
BIN_DIR="$CACHE/bin/minio-$MINIO_VERSION"
BIN="$BIN_DIR/minio"
BUILD_LOG="$CACHE/objectstore-build.log"
HOST="${OBJECTSTORE_HOST:-127.0.0.1}"
PORT="${OBJECTSTORE_PORT:-9300}"
BUCKET="${OBJECTSTORE_BUCKET:-nim-agent}"
if [ -n "${OBJECTSTORE_ENDPOINT_HOST:-}" ]; then
  ENDPOINT_HOST="$OBJECTSTORE_ENDPOINT_HOST"
elif [ "$HOST" = 0.0.0.0 ]; then
  ENDPOINT_HOST=127.0.0.1
else
  ENDPOINT_HOST="$HOST"
fi
ENDPOINT="http://$ENDPOINT_HOST:$PORT"

log() { printf '%s devcluster/objectstore: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

build() {
  [ -x "$BIN" ] && return 0
  command -v go >/dev/null || die "Go is not installed (need Go >= 1.24 to build MinIO)"
  mkdir -p "$CACHE/bin"
  exec 8>"$CACHE/objectstore-build.lock"
  if ! flock -n 8; then
    log "another MinIO build is running; waiting for it (log: $BUILD_LOG)"
    flock 8
  fi
  [ -x "$BIN" ] && return 0
  log "building MinIO $MINIO_VERSION from the Go module proxy (about 5 min cold; log: $BUILD_LOG)"
  local tmp="$BIN_DIR.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp"
  if ! GOBIN="$tmp" GOSUMDB="${GOSUMDB:-off}" GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 \
    GOTOOLCHAIN=local nice -n 10 go install -trimpath "$MINIO_MODULE@$MINIO_VERSION" >>"$BUILD_LOG" 2>&1; then
    die "building MinIO failed; see $BUILD_LOG"
  fi
  rm -rf "$BIN_DIR" && mv "$tmp" "$BIN_DIR"
  log "built $BIN"
}

pid_alive() { [ -f "$DIR/minio.pid" ] && kill -0 "$(cat "$DIR/minio.pid")" 2>/dev/null; }

healthy() { curl -fsS -m 3 -o /dev/null "$ENDPOINT/minio/health/live" 2>/dev/null; }

# make_bucket: create $BUCKET over the S3 API (a PUT signed with AWS Signature V4; python3's
# standard library does the signing, so no S3 client has to be installed). An existing bucket is fine.
make_bucket() {
  python3 - "$ENDPOINT" "$BUCKET" "$ACCESS_KEY" "$SECRET_KEY" <<'PY'
import datetime, hashlib, hmac, sys, urllib.error, urllib.parse, urllib.request
endpoint, bucket, access, secret = sys.argv[1:5]
host = urllib.parse.urlsplit(endpoint).netloc
now = datetime.datetime.now(datetime.timezone.utc)
amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
payload = hashlib.sha256(b"").hexdigest()
headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
signed = ";".join(sorted(headers))
canonical = "\n".join(["PUT", f"/{bucket}", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
scope = f"{day}/us-east-1/s3/aws4_request"
to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
key = ("AWS4" + secret).encode()
for part in (day, "us-east-1", "s3", "aws4_request"):
    key = hmac.new(key, part.encode(), hashlib.sha256).digest()
signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT", headers={
    "x-amz-content-sha256": payload, "x-amz-date": amz_date,
    "Authorization": f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={signature}",
})
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as e:
    body = e.read().decode("utf-8", "replace")
    if "BucketAlreadyOwnedByYou" not in body:
        sys.exit(f"creating bucket {bucket} failed: {e.code} {body[:300]}")
PY
}

write_env() {
  umask 077
  cat >"$ENV_FILE.tmp" <<EOF
FLYTE_AWS_ENDPOINT=$ENDPOINT
FLYTE_AWS_ACCESS_KEY_ID=$ACCESS_KEY
FLYTE_AWS_SECRET_ACCESS_KEY=$SECRET_KEY
OBJECTSTORE_BUCKET=$BUCKET
OBJECTSTORE_RAW_OUTPUT_PREFIX=s3://$BUCKET/raw
OBJECTSTORE_LISTEN=$HOST:$PORT
EOF
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

credentials() {
  mkdir -p "$DIR"
  if [ ! -f "$DIR/credentials" ]; then
    (umask 077 && printf 'ACCESS_KEY=nimagent%s\nSECRET_KEY=%s\n' \
      "$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')" \
      "$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')" >"$DIR/credentials")
  fi
  # shellcheck disable=SC1091
  . "$DIR/credentials"
}

up() {
  build
  credentials
  if pid_alive && healthy; then
    log "already running at $ENDPOINT (pid $(cat "$DIR/minio.pid"))"
  else
    pid_alive && die "pid $(cat "$DIR/minio.pid") is running but $ENDPOINT does not answer; run '$0 down' first"
    if curl -s -m 2 -o /dev/null "http://$ENDPOINT_HOST:$PORT/"; then
      die "something else answers on $ENDPOINT_HOST:$PORT; set OBJECTSTORE_PORT"
    fi
    mkdir -p "$DIR/data"
    log "starting MinIO on $HOST:$PORT (data: $DIR/data)"
    MINIO_ROOT_USER="$ACCESS_KEY" MINIO_ROOT_PASSWORD="$SECRET_KEY" MINIO_BROWSER=off \
      MINIO_UPDATE=off setsid "$BIN" server --quiet --address "$HOST:$PORT" "$DIR/data" \
      >>"$DIR/minio.log" 2>&1 </dev/null &
    echo $! >"$DIR/minio.pid"
    local deadline=$((SECONDS + 60))
    until healthy; do
      pid_alive || die "MinIO exited; last lines of $DIR/minio.log: $(tail -5 "$DIR/minio.log")"
      [ $SECONDS -lt $deadline ] || die "MinIO did not answer at $ENDPOINT within 60 s; see $DIR/minio.log"
      sleep 0.5
    done
    log "MinIO answers at $ENDPOINT (pid $(cat "$DIR/minio.pid"))"
  fi
  make_bucket || die "could not create bucket $BUCKET"
  write_env
  log "bucket s3://$BUCKET ready; settings in $ENV_FILE"
  cat "$ENV_FILE"
}

down() {
  if pid_alive; then
    local pid
    pid="$(cat "$DIR/minio.pid")"
    log "stopping MinIO (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  fi
  rm -rf "$DIR" "$ENV_FILE"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) [ -f "$ENV_FILE" ] || die "no $ENV_FILE: run '$0 up' first"; cat "$ENV_FILE" ;;
  status) healthy ;;
  build) build && echo "$BIN" ;;
  bin) echo "$BIN" ;;
  *) die "usage: $0 up | down | env | status | build | bin" ;;
esac
