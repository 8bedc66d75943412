#!/usr/bin/env bash
# Start, stop and populate the local Kubernetes control plane: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler run as local processes through
# `kwokctl --runtime binary`; kwok plays the kubelets of fake GPU and CPU nodes (see kwok/*.yaml).
#
# Usage: devcluster/cluster.sh up | down | nodes | status
#   up      start the control plane if it is not running (a running one is left alone), add the
#           fake nodes, and wait until the apiserver, controller-manager, scheduler and nodes are ready
#   down    stop it and delete its state (nothing running: nothing to do)
#   nodes   add fake nodes up to NODES_GPU / NODES_CPU (existing nodes are kept)
#   status  exit 0 when the apiserver answers
#
# Binaries: links in .devcluster/bin (made by `make cluster-build`, i.e. devcluster/build.sh).
# State: .devcluster/kwok (kwokctl's workdir: pki, etcd data, logs), kubeconfig at
# .devcluster/kubeconfig. Settings (environment, defaults in brackets):
#   NODES_GPU [4] fake GPU nodes, each GPUS_PER_NODE [8] nvidia.com/gpu, 64 cpu, 512Gi, tainted
#             nvidia.com/gpu=present:NoSchedule as GPU pools usually are
#   NODES_CPU [1] untainted CPU nodes, 16 cpu, 64Gi
#   NIM_AGENT_CLUSTER [nim-agent] cluster name; DEVCLUSTER_DIR [.devcluster] state folder
#   REAL_NODE [1] also start the real node nim-real-0 (devcluster/realnode.sh: kubelet,
#             containerd, runc, CNI, kube-proxy, CoreDNS, the local registry and the Hugging Face
#             Hub stand-in); 0: kwok nodes only. `down` stops the real node whatever REAL_NODE says.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/devcluster"
STATE="${DEVCLUSTER_DIR:-$ROOT/.devcluster}"
BIN="$STATE/bin"
KUBECONFIG_OUT="$STATE/kubeconfig"
NAME="${NIM_AGENT_CLUSTER:-nim-agent}"
NODES_GPU="${NODES_GPU:-4}"
NODES_CPU="${NODES_CPU:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"
REAL_NODE="${REAL_NODE:-1}"

export KWOK_WORKDIR="$STATE/kwok"
CLUSTER_DIR="$KWOK_WORKDIR/clusters/$NAME"
# kwokctl looks kubectl up on PATH (it would otherwise download one).
export PATH="$BIN:$PATH"

log() { printf '%s devcluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

REQUIRED=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl)

require_binaries() {
  local missing=()
  for b in "${REQUIRED[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] ||
    die "missing in $BIN: ${missing[*]}. Build them with 'make cluster-build' (devcluster/build.sh; log in ~/.cache/nim-agent/build.log)"
}

kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" --request-timeout=10s "$@"; }

healthy() {
  [ -f "$KUBECONFIG_OUT" ] && [ -x "$BIN/kubectl" ] &&
    [ "$("$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" --request-timeout=3s get --raw /readyz 2>/dev/null)" = ok ]
}

# poll SECONDS COMMAND...: run COMMAND every 0.5 s until it succeeds; false after SECONDS
poll() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll, and fail the script on a timeout
wait_for() {
  local timeout=$1 what=$2; shift 2
  poll "$timeout" "$@" || die "timed out after ${timeout}s waiting for $what (logs: $CLUSTER_DIR/logs)"
}

# Stop the processes kwokctl recorded for this cluster, by pid, when they are still ours (their
# command line names the cluster folder), and forget them: a pid file left by a process that died
# (a reboot, a killed session) makes `kwokctl start` believe the component runs.
stop_recorded_processes() {
  local pidfile pid
  for pidfile in "$CLUSTER_DIR"/pids/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$CLUSTER_DIR"; then
      kill "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

write_kubeconfig() {
  # Self-contained (certificates inlined), so it can be copied and read by any client.
  "$BIN/kubectl" --kubeconfig "$CLUSTER_DIR/kubeconfig.yaml" config view --raw --flatten >"$KUBECONFIG_OUT.tmp"
  chmod 600 "$KUBECONFIG_OUT.tmp"
  mv "$KUBECONFIG_OUT.tmp" "$KUBECONFIG_OUT"
}

node_manifest() { # node_manifest KIND INDEX
  local kind=$1 i=$2 name="kwok-$1-$2"
  if [ "$kind" = gpu ]; then
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    node.kubernetes.io/instance-type: fake-gpu-${GPUS_PER_NODE}x
    type: kwok
    nim-agent.dev/pool: gpu
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.count: "$GPUS_PER_NODE"
    nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB
    nvidia.com/gpu.memory: "81920"
spec:
  taints:
  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}
status:
  addresses:
  - {type: InternalIP, address: "10.200.$((i / 250)).$((i % 250 + 1))"}
  - {type: Hostname, address: $name}
  capacity: {cpu: "64", memory: 512Gi, ephemeral-storage: 2Ti, pods: "110", nvidia.com/gpu: "$GPUS_PER_NODE"}
  allocatable: {cpu: "64", memory: 512Gi, ephemeral-storage: 2Ti, pods: "110", nvidia.com/gpu: "$GPUS_PER_NODE"}
EOF
  else
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    node.kubernetes.io/instance-type: fake-cpu-16
    type: kwok
    nim-agent.dev/pool: cpu
status:
  addresses:
  - {type: InternalIP, address: "10.201.$((i / 250)).$((i % 250 + 1))"}
  - {type: Hostname, address: $name}
  capacity: {cpu: "16", memory: 64Gi, ephemeral-storage: 500Gi, pods: "110"}
  allocatable: {cpu: "16", memory: 64Gi, ephemeral-storage: 500Gi, pods: "110"}
EOF
  fi
}

ensure_nodes() {
  local existing manifest="" added=0
  existing=$(kc get nodes -l type=kwok -o name)
  for kind in gpu cpu; do
    local count=$NODES_GPU; [ "$kind" = cpu ] && count=$NODES_CPU
    for ((i = 0; i < count; i++)); do
      grep -qx "node/kwok-$kind-$i" <<<"$existing" && continue
      manifest+=$(node_manifest "$kind" "$i")$'\n'
      added=$((added + 1))
    done
  done
  if [ $added -gt 0 ]; then
    log "adding $added fake node(s)"
    kc create -f - <<<"$manifest" >/dev/null
  fi
  # Nodes become Ready once kwok has played their initialize stage.
  local want=$((NODES_GPU + NODES_CPU))
  wait_for "$READY_TIMEOUT" "$want Ready fake nodes" nodes_ready "$want"
}

nodes_ready() {
  local n
  n=$(kc get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')
  [ "$n" -ge "$1" ]
}

wait_control_plane() {
  wait_for "$READY_TIMEOUT" "the apiserver (/readyz)" healthy
  # The controller-manager creates every namespace's default ServiceAccount; both components take
  # their leader Lease once they run.
  wait_for "$READY_TIMEOUT" "kube-controller-manager (default ServiceAccount)" kc get serviceaccount default -n default
  wait_for "$READY_TIMEOUT" "kube-controller-manager leader lease" kc get lease kube-controller-manager -n kube-system
  wait_for "$READY_TIMEOUT" "kube-scheduler leader lease" kc get lease kube-scheduler -n kube-system
}

# kwokctl starts the components as daemons: they must not inherit the lock (fd 9), or they would
# hold it for as long as they run.
kwokctl() { "$BIN/kwokctl" --name "$NAME" "$@" 9>&-; }

kwokctl_create() {
  kwokctl \
    -c "$HERE/kwok/kwokctl.yaml" -c "$HERE/kwok/node-stages.yaml" -c "$HERE/kwok/pod-stages.yaml" \
    create cluster --runtime binary --kubeconfig "" --timeout 3m \
    --kube-audit-policy "$HERE/kwok/audit-policy.yaml" \
    --etcd-binary "$BIN/etcd" \
    --kube-apiserver-binary "$BIN/kube-apiserver" \
    --kube-controller-manager-binary "$BIN/kube-controller-manager" \
    --kube-scheduler-binary "$BIN/kube-scheduler" \
    --kwok-controller-binary "$BIN/kwok"
}

# A control plane made before the real node existed lacks what its pods need (the apiserver's
# certificate for the `kubernetes` Service IP, its advertised address): it is made again.
made_for_real_node() {
  openssl x509 -in "$CLUSTER_DIR/pki/admin.crt" -noout -ext subjectAltName 2>/dev/null | grep -qF 10.96.0.1 &&
    grep -qF advertise-address "$CLUSTER_DIR/kwok.yaml" 2>/dev/null
}

real_node_up() {
  [ "$REAL_NODE" = 0 ] && return 0
  "$HERE/realnode.sh" up 9>&- ||
    die "the real node did not start (above; logs in ${STATE#"$ROOT/"}/realnode/logs). REAL_NODE=0 starts the control plane without it"
}

up() {
  require_binaries
  if healthy && [ "$REAL_NODE" != 0 ] && ! made_for_real_node; then
    log "the running cluster '$NAME' was made before the real node existed: making it again"
    down
  fi
  if healthy; then
    ensure_nodes
    real_node_up
    log "cluster '$NAME' already running (kubeconfig: ${KUBECONFIG_OUT#"$ROOT/"})"
    return 0
  fi
  local start=$SECONDS
  if [ -d "$CLUSTER_DIR" ]; then
    # Left over from an earlier run (stopped processes, a reboot): restart it, else start afresh.
    log "restarting the existing cluster '$NAME'"
    stop_recorded_processes
    if kwokctl start cluster --timeout 30s >>"$STATE/cluster.log" 2>&1 &&
       write_kubeconfig && poll 30 healthy; then
      :
    else
      log "restart failed (see $STATE/cluster.log); recreating the cluster"
      kwokctl delete cluster >>"$STATE/cluster.log" 2>&1 || true
      rm -rf "$CLUSTER_DIR"
    fi
  fi
  if [ ! -d "$CLUSTER_DIR" ]; then
    log "creating cluster '$NAME' (kube-apiserver $("$BIN/kube-apiserver" --version | awk '{print $2}'), kwok $("$BIN/kwok" --version | awk '{print $3}'))"
    kwokctl_create >>"$STATE/cluster.log" 2>&1 ||
      die "kwokctl create cluster failed: $(tail -5 "$STATE/cluster.log" | tr '\n' ' ') (full log: $STATE/cluster.log, component logs: $CLUSTER_DIR/logs)"
    write_kubeconfig
  fi
  wait_control_plane
  ensure_nodes
  real_node_up
  local real="no real node"
  [ "$REAL_NODE" = 0 ] || real="real node nim-real-0"
  log "cluster '$NAME' ready in $((SECONDS - start))s: $NODES_GPU GPU node(s) x $GPUS_PER_NODE nvidia.com/gpu, $NODES_CPU CPU node(s), $real; kubeconfig: ${KUBECONFIG_OUT#"$ROOT/"}"
}

down() {
  # The real node first, while the apiserver still answers.
  if [ -d "$STATE/realnode" ]; then
    "$HERE/realnode.sh" down 9>&- || log "stopping the real node failed (above)"
  fi
  if [ ! -d "$CLUSTER_DIR" ]; then
    rm -f "$KUBECONFIG_OUT"
    log "no cluster '$NAME' here: nothing to stop"
    return 0
  fi
  if [ -x "$BIN/kwokctl" ]; then
    kwokctl delete cluster >>"$STATE/cluster.log" 2>&1 ||
      log "kwokctl delete cluster failed (see $STATE/cluster.log); stopping the recorded processes"
  fi
  # Whatever kwokctl could not stop.
  stop_recorded_processes
  rm -rf "$CLUSTER_DIR" "$KUBECONFIG_OUT"
  log "cluster '$NAME' stopped and deleted"
}

mkdir -p "$STATE"
cmd="${1:-}"
case "$cmd" in
  up | down)
    # One start or stop at a time (make and a test session may race).
    exec 9>"$STATE/cluster.lock"
    flock -w 300 9 || die "another devcluster up/down holds $STATE/cluster.lock"
    "$cmd"
    ;;
  nodes) require_binaries; healthy || die "the control plane is not running (make cluster-up)"; ensure_nodes ;;
  status) healthy ;;
  *) echo "usage: $0 up | down | nodes | status" >&2; exit 2 ;;
esac
