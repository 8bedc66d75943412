#!/usr/bin/env bash
# Run flytepropeller against the local control plane (make cluster-up first).
#
# Usage: devcluster/propeller/run.sh start | stop | status | render
#   start   build if needed (cached), install the FlyteWorkflow CRD, render config.yaml, start
#           propeller in the background and wait until it serves /healthcheck
#   stop    stop the propeller this script started (by its recorded pid)
#   status  exit 0 when that propeller is running
#   render  print the rendered configuration
#
# State lives in $PROPELLER_STATE (default .devcluster/propeller): config.yaml, propeller.log,
# propeller.pid, events.log (one execution event per line) and storage/ (inputs and outputs).
# Settings (environment, defaults in brackets):
#   PROPELLER_KUBECONFIG [.devcluster/kubeconfig]    PROPELLER_KUBECTL [.devcluster/bin/kubectl]
#   PROPELLER_CONNECTOR_ENDPOINT [dns:///127.0.0.1:8000]
#   PROPELLER_RESYNC_INTERVAL [5s] (GetTask period; upstream default 30s)
#   PROPELLER_PROF_PORT [10254]  PROPELLER_LOG_LEVEL [4]  PROPELLER_STORAGE_CONTAINER [nim-agent]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
STATE="${PROPELLER_STATE:-$ROOT/.devcluster/propeller}"
PID_FILE="$STATE/propeller.pid"
LOG_FILE="$STATE/propeller.log"

export PROPELLER_KUBECONFIG="${PROPELLER_KUBECONFIG:-$ROOT/.devcluster/kubeconfig}"
export PROPELLER_CONNECTOR_ENDPOINT="${PROPELLER_CONNECTOR_ENDPOINT:-dns:///127.0.0.1:8000}"
export PROPELLER_RESYNC_INTERVAL="${PROPELLER_RESYNC_INTERVAL:-5s}"
export PROPELLER_PROF_PORT="${PROPELLER_PROF_PORT:-10254}"
export PROPELLER_LOG_LEVEL="${PROPELLER_LOG_LEVEL:-4}"
export PROPELLER_STORAGE_CONTAINER="${PROPELLER_STORAGE_CONTAINER:-nim-agent}"
export PROPELLER_STORAGE_DIR="${PROPELLER_STORAGE_DIR:-$STATE/storage}"
export PROPELLER_EVENTS_FILE="${PROPELLER_EVENTS_FILE:-$STATE/events.log}"
KUBECTL="${PROPELLER_KUBECTL:-$ROOT/.devcluster/bin/kubectl}"

die() { echo "propeller/run: $*" >&2; exit 1; }

render() {
  local out line name
  out=$(cat "$HERE/config.yaml")
  for name in KUBECONFIG CONNECTOR_ENDPOINT RESYNC_INTERVAL PROF_PORT LOG_LEVEL STORAGE_CONTAINER \
              STORAGE_DIR EVENTS_FILE; do
    line="PROPELLER_$name"
    out=${out//"{{$name}}"/"${!line}"}
  done
  if grep -q '{{[A-Z_]*}}' <<<"$out"; then
    die "config.yaml has a placeholder run.sh does not fill: $(grep -o '{{[A-Z_]*}}' <<<"$out" | head -1)"
  fi
  printf '%s\n' "$out"
}

running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

start() {
  if running; then echo "propeller already running (pid $(cat "$PID_FILE"))"; return 0; fi
  [ -f "$PROPELLER_KUBECONFIG" ] || die "no kubeconfig at $PROPELLER_KUBECONFIG: start the control plane first (make cluster-up)"
  [ -x "$KUBECTL" ] || die "no kubectl at $KUBECTL"
  "$HERE/build.sh"
  local bin
  bin="$("$HERE/build.sh" --print-bin-dir)/flytepropeller"
  mkdir -p "$STATE" "$PROPELLER_STORAGE_DIR/$PROPELLER_STORAGE_CONTAINER"
  "$KUBECTL" --kubeconfig "$PROPELLER_KUBECONFIG" apply -f "$HERE/flyteworkflow-crd.yaml" >/dev/null \
    || die "could not install the FlyteWorkflow CRD"
  "$KUBECTL" --kubeconfig "$PROPELLER_KUBECONFIG" wait --for condition=established --timeout=60s \
    crd/flyteworkflows.flyte.lyft.com >/dev/null || die "the FlyteWorkflow CRD did not become established"
  render > "$STATE/config.yaml"
  nohup "$bin" --config "$STATE/config.yaml" >"$LOG_FILE" 2>&1 &
  echo $! > "$PID_FILE"
  local i
  for i in $(seq 1 60); do
    running || die "propeller exited during start-up; last lines of $LOG_FILE: $(tail -5 "$LOG_FILE")"
    if curl -fsS "http://127.0.0.1:$PROPELLER_PROF_PORT/healthcheck" >/dev/null 2>&1; then
      echo "propeller running (pid $(cat "$PID_FILE"), log $LOG_FILE, events $PROPELLER_EVENTS_FILE)"
      return 0
    fi
    sleep 1
  done
  stop
  die "propeller did not answer /healthcheck on port $PROPELLER_PROF_PORT within 60s; see $LOG_FILE"
}

stop() {
  running || { rm -f "$PID_FILE"; return 0; }
  local pid i
  pid=$(cat "$PID_FILE")
  kill "$pid"
  for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$PID_FILE"
  echo "propeller stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running ;;
  render) render ;;
  *) echo "usage: $0 start | stop | status | render" >&2; exit 2 ;;
esac
