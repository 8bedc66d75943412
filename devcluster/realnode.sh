#!/usr/bin/env bash
# The real worker node of the local control plane: kubelet + containerd + runc run real containers
# next to the kwok nodes. Started by `devcluster/cluster.sh up` (unless REAL_NODE=0) once the
# control plane is ready, stopped by `devcluster/cluster.sh down`.
#
# What runs, all as host processes started here (pids in .devcluster/realnode/pids):
#   registry    CNCF distribution on 127.0.0.1:5050 (plain HTTP), data in ~/.cache/nim-agent/registry
#   containerd  Debian's containerd 1.6 + runc, cgroupfs driver, its own root, state and socket
#               under .devcluster/realnode/containerd; sandbox image and all images pulled from
#               the local registry (devcluster/images.sh builds them)
#   kubelet     node nim-real-0 (failCgroupV1: false on cgroup v1 machines), cgroups under
#               /nim-real-0, root dir .devcluster/realnode/kubelet
#   kube-proxy  iptables mode, Service range 10.96.0.0/16
#   coredns     cluster DNS on 10.244.0.1:53 (cluster.local only: nothing is forwarded outside)
#   socat       the apiserver's port on 10.244.0.1 (the apiserver listens on 127.0.0.1 only), so
#               pods reach it as the `kubernetes` Service
# Network: bridge nimbr0 (10.244.0.1/24) with the CNI plugins bridge + host-local + portmap (+
# loopback); pods get routes to the pod and Service ranges only, and iptables rules (chains
# NIM-REALNODE-*) drop anything from the bridge that would leave it, and refuse connections from
# pods to the host except DNS, the apiserver and HOST_PORTS_FOR_PODS.
# In the cluster: the node (labels nim-agent.dev/node=real; taints nvidia.com/gpu=present and
# nim-agent.dev/node=real, NoSchedule; 8 nvidia.com/gpu), a MutatingAdmissionPolicy that gives
# pods selecting the node its toleration, and the Hugging Face Hub stand-in (namespace
# nim-devcluster). Image references and the Hub's address: .devcluster/images.env.
#
# Usage: devcluster/realnode.sh up | down | status | leftovers
#   up         start whatever is not running (a daemon whose settings changed is restarted),
#              push new images, wait until the node is Ready and the Hub stand-in serves
#   down       stop everything and remove what `up` created: processes, containers, mounts,
#              network namespaces, veths, the bridge, iptables rules and nft tables, cgroups,
#              sysctl changes, machine folders that were not there; when the control plane stays
#              up, it deletes the node and force-deletes the pods bound to it
#   status     exit 0 when the node's processes and the registry run and the node is Ready
#   leftovers  list what a `down` should have removed and is still there (exit 1 if any)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/devcluster"
STATE="${DEVCLUSTER_DIR:-$ROOT/.devcluster}"
BIN="$STATE/bin"
ADMIN_KUBECONFIG="$STATE/kubeconfig"
NAME="${NIM_AGENT_CLUSTER:-nim-agent}"
CLUSTER_PKI="$STATE/kwok/clusters/$NAME/pki"
RN="$STATE/realnode"
CACHE="${NIM_AGENT_CACHE:-$HOME/.cache/nim-agent}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"

# Fixed interfaces (see README "Local control plane").
NODE_NAME=nim-real-0
BRIDGE=nimbr0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS=$NODE_IP
REGISTRY=127.0.0.1:5050
GPUS=8
HUB_NAMESPACE=nim-devcluster
# Fixture repositories of the Hub stand-in (devcluster/standin/hf_hub.py serves them).
HF_FIXTURE_REPO=standin/llama3-8b-lora-public
HF_FIXTURE_PRIVATE_REPO=standin/llama3-8b-lora-private
# Ports of host processes that pods may reach at $NODE_IP besides DNS and the apiserver
# (9300: the S3 object store of devcluster/objectstore.sh). Every other port of the host is
# closed to pods.
HOST_PORTS_FOR_PODS="${HOST_PORTS_FOR_PODS:-9300}"
CGROUP_ROOT=/nim-real-0
CNI_BIN=/usr/lib/cni
CTR_SOCK="$RN/containerd.sock"
COREDNS_READY=127.0.0.1:18181

# Machine-wide sysctls the node changes (the kubelet sets the vm/kernel ones itself); their
# values before `up` are restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory
  vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes)
# Folders outside .devcluster that containerd, the CNI library and the kubelet create whatever
# they are told (shim sockets, the CNI result cache, device-plugin sockets, log links); those
# that did not exist before `up` are removed by `down`.
MACHINE_DIRS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods
  /etc/cni /opt/cni /opt/containerd /var/lib/containerd /run/netns /var/run/netns /etc/kubernetes)

APT_PACKAGES=(containerd runc containernetworking-plugins conntrack iptables nftables socat curl openssl)

log() { printf '%s devcluster/realnode: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

kc() { "$BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" --request-timeout=10s "$@"; }

# poll SECONDS COMMAND...: run COMMAND every 0.5 s until it succeeds; false after SECONDS
poll() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

# wait_for SECONDS DESCRIPTION LOG COMMAND...: poll; on a timeout fail with the log's last lines
wait_for() {
  local timeout=$1 what=$2 logfile=$3; shift 3
  poll "$timeout" "$@" ||
    die "timed out after ${timeout}s waiting for $what; last lines of $logfile:
$(tail -15 "$logfile" 2>/dev/null)"
}

apiserver_port() { sed -n 's#^ *server: https://127.0.0.1:\([0-9]*\).*#\1#p' "$ADMIN_KUBECONFIG" | head -1; }

# ---------------------------------------------------------------------------------------------
# Processes: each runs in a session of its own (so its children stop with it), its pid in
# $RN/pids/NAME.pid; it is ours only when its command line names MARK (set per process).

start_daemon() { # start_daemon NAME COMMAND...
  local name=$1; shift
  mkdir -p "$RN/pids" "$RN/logs"
  # Not the cluster lock (fd 9): a daemon would hold it as long as it runs.
  setsid "$@" >>"$RN/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RN/pids/$name.pid"
}

# our_pid NAME MARK: the pid of NAME when it runs and its command line contains MARK
our_pid() {
  local f="$RN/pids/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
  echo "$pid"
}

running() { our_pid "$@" >/dev/null; }

alive() { # alive PID: running, not a zombie waiting for its parent
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# stop_daemons SECONDS NAME MARK [NAME MARK...]: SIGTERM to each one's session at once, SIGKILL
# to those still running after SECONDS
stop_daemons() {
  local grace=$1; shift
  local pids=() pid
  while [ $# -gt 0 ]; do
    if pid=$(our_pid "$1" "$2"); then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$RN/pids/$1.pid"
    shift 2
  done
  local deadline=$((SECONDS + grace))
  for pid in "${pids[@]}"; do
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$pid"; then
      log "$(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-60) (pid $pid) did not stop within ${grace}s: killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# update_config FILE: write stdin to FILE; when that changed it and the daemon reading it runs,
# note the daemon for a restart (restart_if_changed)
CHANGED_CONFIGS=()
update_config() {
  cat >"$1.new"
  if cmp -s "$1.new" "$1"; then rm "$1.new"; else mv "$1.new" "$1"; CHANGED_CONFIGS+=("$1"); fi
}

# restart_if_changed NAME MARK FILE: stop NAME when FILE changed in this run (it starts again with
# the new settings; pods keep running through restarts of containerd and the kubelet)
restart_if_changed() {
  local f
  for f in "${CHANGED_CONFIGS[@]}"; do
    if [ "$f" = "$3" ] && running "$1" "$2"; then
      log "restarting $1: $(basename "$3") changed"
      stop_daemons 15 "$1" "$2"
    fi
  done
}

# Markers: a word of each daemon's command line that only our instance has.
MARK_CONTAINERD="$RN/containerd.toml"
MARK_KUBELET="$RN/kubelet.yaml"
MARK_PROXY="$RN/kube-proxy.yaml"
MARK_DNS="$RN/Corefile"
MARK_FORWARD="bind=$NODE_IP"
MARK_REGISTRY="$STATE/registry.yml"

# ---------------------------------------------------------------------------------------------
# Preflight

require() {
  local missing=()
  for b in kubectl kubelet kube-proxy coredns registry crictl; do
    [ -x "$BIN/$b" ] || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die "missing in $BIN: ${missing[*]}. Build them with 'make cluster-build' (devcluster/build.sh; log in ~/.cache/nim-agent/build.log)"
  [ "$(id -u)" = 0 ] || die "the real node needs root (network namespaces, mounts, cgroups, iptables); REAL_NODE=0 starts the control plane without it"
  [ -f "$ADMIN_KUBECONFIG" ] || die "no control plane: $ADMIN_KUBECONFIG is missing (devcluster/cluster.sh up starts it)"
  [ -f "$CLUSTER_PKI/ca.key" ] || die "the control plane's CA ($CLUSTER_PKI/ca.key) is missing"
  # A unix socket path has at most 107 bytes (with containerd's ".ttrpc" suffix).
  [ ${#CTR_SOCK} -le 100 ] || die "the state folder's path is too long for containerd's socket ($CTR_SOCK); set DEVCLUSTER_DIR to a shorter one"
}

# One real node per machine: the bridge, the node's addresses and the registry port are fixed.
# The bridge carries the state folder that owns it as its alias.
check_owner() {
  local alias
  [ -d "/sys/class/net/$BRIDGE" ] || return 0
  alias=$(cat "/sys/class/net/$BRIDGE/ifalias" 2>/dev/null || true)
  [ "$alias" = "nim-agent:$RN" ] ||
    die "bridge $BRIDGE exists and belongs to ${alias:-something else} (one real node per machine: stop it there with 'make cluster-down', or use REAL_NODE=0 here)"
}

# ---------------------------------------------------------------------------------------------
# Host network: bridge, sysctls, iptables

save_machine_state() {
  [ -f "$RN/saved/sysctl" ] && return 0
  mkdir -p "$RN/saved"
  local s
  for s in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$s" "$(sysctl -n "$s" 2>/dev/null || echo '')"
  done >"$RN/saved/sysctl.tmp"
  local d
  for d in "${MACHINE_DIRS[@]}"; do [ -e "$d" ] || echo "$d"; done >"$RN/saved/absent-dirs"
  # iptables (nft backend) makes its tables on first use; those that were not there are removed.
  nft list tables >"$RN/saved/nft-tables" 2>/dev/null || true
  mv "$RN/saved/sysctl.tmp" "$RN/saved/sysctl"
}

restore_machine_state() {
  [ -f "$RN/saved/sysctl" ] || return 0
  local line key value
  while IFS= read -r line; do
    key=${line%%=*}; value=${line#*=}
    [ -n "$value" ] || continue
    [ "$(sysctl -n "$key" 2>/dev/null)" = "$value" ] || sysctl -qw "$key=$value" >/dev/null ||
      log "could not restore $key=$value"
  done <"$RN/saved/sysctl"
  # nft tables that iptables made for the node's rules, when nothing else put rules in them.
  if [ -f "$RN/saved/nft-tables" ] && command -v nft >/dev/null; then
    local table
    while IFS= read -r table; do
      [ -n "$table" ] || continue
      grep -qxF "$table" "$RN/saved/nft-tables" && continue
      # shellcheck disable=SC2086
      if [ -z "$(nft list $table 2>/dev/null | grep -vE '^\s*(table |chain |type |\}|$)')" ]; then
        nft delete $table 2>/dev/null || log "could not delete nft $table"
      fi
    done < <(nft list tables 2>/dev/null)
  fi
  # Folders that did not exist before `up`: everything in them is the node's (sockets, caches).
  local d
  while IFS= read -r d; do
    [ -n "$d" ] && [ -e "$d" ] || continue
    [ -z "$(awk -v p="$d/" 'index($5, p) == 1' /proc/self/mountinfo)" ] || { log "left $d: something is mounted in it"; continue; }
    rm -rf "$d"
  done <"$RN/saved/absent-dirs"
}

# iptables chains of the node: NIM-REALNODE-INPUT (pods -> host) and NIM-REALNODE-FORWARD (pods ->
# anywhere but the bridge), each jumped to first from INPUT / FORWARD.
setup_network() {
  if [ ! -d "/sys/class/net/$BRIDGE" ]; then
    ip link add "$BRIDGE" type bridge
  fi
  ip link set "$BRIDGE" alias "nim-agent:$RN"
  ip addr replace "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Services: kube-proxy's NAT between pods on one bridge needs bridged traffic in iptables, and
  # forwarding between the bridge's ports (nothing else is forwarded: rules below).
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1 >/dev/null

  local port; port=$(apiserver_port)
  [ -n "$port" ] || die "no apiserver port in $ADMIN_KUBECONFIG"
  iptables -w -N NIM-REALNODE-INPUT 2>/dev/null || iptables -w -F NIM-REALNODE-INPUT
  iptables -w -A NIM-REALNODE-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  iptables -w -A NIM-REALNODE-INPUT -d "$NODE_IP" -p udp --dport 53 -j ACCEPT
  iptables -w -A NIM-REALNODE-INPUT -d "$NODE_IP" -p tcp --dport 53 -j ACCEPT
  iptables -w -A NIM-REALNODE-INPUT -d "$NODE_IP" -p tcp --dport "$port" -j ACCEPT
  local p
  for p in $HOST_PORTS_FOR_PODS; do
    iptables -w -A NIM-REALNODE-INPUT -d "$NODE_IP" -p tcp --dport "$p" -j ACCEPT
  done
  iptables -w -A NIM-REALNODE-INPUT -p icmp -j ACCEPT
  # Refused rather than dropped: a pod learns at once that the host's other ports are closed.
  iptables -w -A NIM-REALNODE-INPUT -p tcp -j REJECT --reject-with tcp-reset
  iptables -w -A NIM-REALNODE-INPUT -j REJECT
  iptables -w -C INPUT -i "$BRIDGE" -j NIM-REALNODE-INPUT 2>/dev/null ||
    iptables -w -I INPUT 1 -i "$BRIDGE" -j NIM-REALNODE-INPUT
  iptables -w -N NIM-REALNODE-FORWARD 2>/dev/null || iptables -w -F NIM-REALNODE-FORWARD
  iptables -w -A NIM-REALNODE-FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  iptables -w -A NIM-REALNODE-FORWARD -i "$BRIDGE" -j DROP
  iptables -w -A NIM-REALNODE-FORWARD -o "$BRIDGE" -j DROP
  iptables -w -A NIM-REALNODE-FORWARD -s "$POD_CIDR" -j DROP
  iptables -w -C FORWARD -j NIM-REALNODE-FORWARD 2>/dev/null ||
    iptables -w -I FORWARD 1 -j NIM-REALNODE-FORWARD
}

# ---------------------------------------------------------------------------------------------
# Certificates and kubeconfigs for the node's components, signed by the control plane's CA.

# client_kubeconfig NAME CN ORG: $RN/NAME.kubeconfig for user CN in group ORG (empty: none)
client_kubeconfig() {
  local name=$1 cn=$2 org=$3 dir="$RN/pki"
  local out="$RN/$name.kubeconfig"
  # Reissued when the control plane (its CA) is new.
  cmp -s "$CLUSTER_PKI/ca.crt" "$dir/$name.ca" 2>/dev/null || rm -f "$out"
  [ -f "$out" ] && return 0
  mkdir -p "$dir"
  local subj="/CN=$cn"; [ -n "$org" ] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$dir/$name.key" -subj "$subj" \
    -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$CLUSTER_PKI/ca.crt" -CAkey "$CLUSTER_PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -out "$dir/$name.crt" \
    -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') \
    2>/dev/null || die "could not sign the $name certificate with $CLUSTER_PKI/ca.key"
  cp "$CLUSTER_PKI/ca.crt" "$dir/$name.ca"
  local k=("$BIN/kubectl" --kubeconfig "$out.tmp")
  "${k[@]}" config set-cluster local --server="https://127.0.0.1:$(apiserver_port)" \
    --certificate-authority="$CLUSTER_PKI/ca.crt" --embed-certs >/dev/null
  "${k[@]}" config set-credentials "$name" --client-certificate="$dir/$name.crt" \
    --client-key="$dir/$name.key" --embed-certs >/dev/null
  "${k[@]}" config set-context local --cluster=local --user="$name" >/dev/null
  "${k[@]}" config use-context local >/dev/null
  chmod 600 "$out.tmp"; mv "$out.tmp" "$out"
}

# ---------------------------------------------------------------------------------------------
# Registry and images

start_registry() {
  if curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; then
    running registry "$MARK_REGISTRY" || log "using the registry already on $REGISTRY (started elsewhere)"
    return 0
  fi
  mkdir -p "$CACHE/registry"
  cat >"$STATE/registry.yml" <<EOF
version: 0.1
log: {level: warn, formatter: text}
storage:
  filesystem: {rootdirectory: $CACHE/registry}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
http:
  addr: $REGISTRY
EOF
  log "starting the registry on $REGISTRY (data: ${CACHE/#"$HOME"/"~"}/registry)"
  OTEL_TRACES_EXPORTER=none start_daemon registry "$BIN/registry" serve "$STATE/registry.yml"
  wait_for 30 "the registry on $REGISTRY" "$RN/logs/registry.log" \
    curl -fsS -o /dev/null "http://$REGISTRY/v2/"
}

# ---------------------------------------------------------------------------------------------
# containerd

write_containerd_config() {
  local pause=$1
  mkdir -p "$RN/containerd/certs.d/$REGISTRY" "$RN/cni/net.d"
  cat >"$RN/containerd/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
  update_config "$RN/containerd.toml" <<EOF
# Generated by devcluster/realnode.sh: containerd of the local real node (not the machine's).
version = 2
root = "$RN/containerd/root"
state = "$RN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CTR_SOCK"

[ttrpc]
  address = "$CTR_SOCK.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$RN/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  # Sessions here lack CAP_SYS_RESOURCE: no process may lower its oom_score_adj (runc would fail
  # "failed to update /proc/self/oom_score_adj: Permission denied"); containerd clamps the
  # kubelet's values to its own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$RN/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$RN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$RN/containerd/certs.d"
EOF
  # Pods: routes to the pod range (on the bridge) and the Service range (via the host) only, so
  # anything else is unreachable from inside; no masquerading.
  cat >"$RN/cni/net.d/10-nimbr0.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "nim-real",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

crictl() {
  [ -f "$RN/crictl.yaml" ] ||
    printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 10\n' "$CTR_SOCK" "$CTR_SOCK" >"$RN/crictl.yaml"
  "$BIN/crictl" --config "$RN/crictl.yaml" "$@"
}

start_containerd() {
  restart_if_changed containerd "$MARK_CONTAINERD" "$RN/containerd.toml"
  running containerd "$MARK_CONTAINERD" && return 0
  log "starting containerd ($(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'))"
  start_daemon containerd containerd --config "$RN/containerd.toml"
  wait_for 30 "containerd's CRI" "$RN/logs/containerd.log" crictl info
}

# ---------------------------------------------------------------------------------------------
# cgroups: the kubelet's cgroup root must exist in every hierarchy

cgroup_v1_mounts() { awk '$9 == "cgroup" {print $5}' /proc/self/mountinfo; }
cgroup_v2_mount() { awk '$9 == "cgroup2" && $5 == "/sys/fs/cgroup" {print $5}' /proc/self/mountinfo; }
# Every cgroup hierarchy, the unified one of a hybrid machine included (runc uses it too).
cgroup_all_mounts() { awk '$9 == "cgroup" || $9 == "cgroup2" {print $5}' /proc/self/mountinfo; }

make_cgroup_root() {
  local mp
  for mp in $(cgroup_v1_mounts); do
    [ -d "$mp$CGROUP_ROOT" ] && continue
    mkdir "$mp$CGROUP_ROOT"
    if [ -f "$mp/cpuset.cpus" ]; then
      cat "$mp/cpuset.cpus" >"$mp$CGROUP_ROOT/cpuset.cpus"
      cat "$mp/cpuset.mems" >"$mp$CGROUP_ROOT/cpuset.mems"
    fi
  done
  mp=$(cgroup_v2_mount)
  if [ -n "$mp" ] && [ ! -d "$mp$CGROUP_ROOT" ]; then
    mkdir "$mp$CGROUP_ROOT"
    local c
    for c in $(cat "$mp/cgroup.controllers"); do echo "+$c" >"$mp$CGROUP_ROOT/cgroup.subtree_control" 2>/dev/null || true; done
  fi
}

# Remove the node's cgroups bottom-up, killing whatever is still in them.
remove_cgroups() {
  local mp d
  for mp in $(cgroup_all_mounts); do
    [ -d "$mp$CGROUP_ROOT" ] || continue
    find "$mp$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    find "$mp$CGROUP_ROOT" -depth -type d | while read -r d; do
      rmdir "$d" 2>/dev/null || { sleep 0.5; rmdir "$d" 2>/dev/null; } || log "could not remove cgroup $d"
    done
  done
}

cgroup_version() { [ -n "$(cgroup_v2_mount)" ] && echo 2 || echo 1; }

# ---------------------------------------------------------------------------------------------
# kubelet, kube-proxy, CoreDNS, the apiserver forward

start_forward() {
  running apiserver-forward "$MARK_FORWARD" && return 0
  local port; port=$(apiserver_port)
  start_daemon apiserver-forward socat "TCP-LISTEN:$port,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$port"
}

start_coredns() {
  client_kubeconfig coredns nim-agent:coredns ""
  update_config "$RN/Corefile" <<EOF
# Generated by devcluster/realnode.sh: cluster DNS of the real node. Only the cluster's zones are
# served; other names are refused (pods have no way out of the machine anyway).
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $CLUSTER_DNS
    errors
    ready $COREDNS_READY
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $RN/coredns.kubeconfig local
        ttl 5
    }
    cache 5
    loadbalance
}
EOF
  restart_if_changed coredns "$MARK_DNS" "$RN/Corefile"
  running coredns "$MARK_DNS" && return 0
  start_daemon coredns "$BIN/coredns" -conf "$RN/Corefile"
  wait_for 30 "CoreDNS (ready on $COREDNS_READY)" "$RN/logs/coredns.log" \
    curl -fsS -o /dev/null "http://$COREDNS_READY/ready"
}

start_kubelet() {
  client_kubeconfig kubelet "system:node:$NODE_NAME" system:nodes
  mkdir -p "$RN/kubelet" "$RN/pod-logs"
  update_config "$RN/kubelet.yaml" <<EOF
# Generated by devcluster/realnode.sh: the kubelet of node $NODE_NAME.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 (the kubelet refuses it unless told otherwise); cgroupfs: no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix://$CTR_SOCK
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CLUSTER_PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS]
# Not the machine's resolver: pods resolve cluster names only.
resolvConf: ""
registerWithTaints:
- {key: nvidia.com/gpu, value: present, effect: NoSchedule}
- {key: nim-agent.dev/node, value: real, effect: NoSchedule}
podLogsDir: $RN/pod-logs
serializeImagePulls: false
failSwapOn: false
# The machine's disk is shared; evict only when it is really full.
evictionHard: {memory.available: 200Mi, nodefs.available: 3%, imagefs.available: 3%, nodefs.inodesFree: 3%}
imageGCHighThresholdPercent: 98
imageGCLowThresholdPercent: 95
rotateCertificates: false
serverTLSBootstrap: false
# The default -999 needs CAP_SYS_RESOURCE, which sessions here lack (containerd clamps pods' too).
oomScoreAdj: 0
EOF
  restart_if_changed kubelet "$MARK_KUBELET" "$RN/kubelet.yaml"
  running kubelet "$MARK_KUBELET" && return 0
  log "starting the kubelet ($("$BIN/kubelet" --version | awk '{print $2}'), cgroup v$(cgroup_version), node $NODE_NAME)"
  start_daemon kubelet "$BIN/kubelet" --config "$RN/kubelet.yaml" --kubeconfig "$RN/kubelet.kubeconfig" \
    --root-dir "$RN/kubelet" --cert-dir "$RN/kubelet/pki" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --node-labels "nim-agent.dev/node=real" --v=1
}

start_kube_proxy() {
  client_kubeconfig kube-proxy system:kube-proxy ""
  update_config "$RN/kube-proxy.yaml" <<EOF
# Generated by devcluster/realnode.sh: kube-proxy of node $NODE_NAME.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $RN/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts on the bridge address only, never on the machine's own interfaces.
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  # Service traffic between pods on one bridge is masqueraded to the bridge address, so replies
  # go back through the host's NAT; never towards the outside (there is no route there).
  masqueradeAll: true
  # Do not set route_localnet on the machine.
  localhostNodePorts: false
  minSyncPeriod: 1s
# The default -999 needs CAP_SYS_RESOURCE, which sessions here lack.
oomScoreAdj: 0
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  restart_if_changed kube-proxy "$MARK_PROXY" "$RN/kube-proxy.yaml"
  running kube-proxy "$MARK_PROXY" && return 0
  start_daemon kube-proxy "$BIN/kube-proxy" --config "$RN/kube-proxy.yaml" --v=1
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

node_has_gpus() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}' 2>/dev/null)" = "$GPUS" ]
}

# Extended resources are advertised by a node status patch (as the Kubernetes docs describe); the
# kubelet zeroes them when it registers again, so this runs on every `up`.
advertise_gpus() {
  node_has_gpus && return 0
  kc patch node "$NODE_NAME" --subresource=status --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$GPUS\"}]" >/dev/null
  wait_for 60 "$GPUS nvidia.com/gpu allocatable on $NODE_NAME" "$RN/logs/kubelet.log" node_has_gpus
}

# ---------------------------------------------------------------------------------------------
# Cluster objects: the toleration policy, CoreDNS's RBAC, the Hub stand-in

hub_namespace_not_terminating() {
  [ "$(kc get namespace "$HUB_NAMESPACE" -o jsonpath='{.status.phase}' 2>/dev/null)" != Terminating ]
}

apply_cluster_objects() {
  # A `down` of the node alone deletes the Hub's namespace; it must be gone before it is made again.
  wait_for 60 "namespace $HUB_NAMESPACE to finish terminating" /dev/null hub_namespace_not_terminating
  kc apply -f "$HERE/realnode/cluster.yaml" >/dev/null
}

# The Hub's current revision rolled out (a new image replaces the pod of the old one).
hub_ready() {
  "$BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" -n "$HUB_NAMESPACE" rollout status deployment/hf-hub --timeout=2s
}

deploy_hub() {
  local hub_image=$1
  # The fixture token: random per control plane, kept in a Secret; pods of a test namespace get
  # it from HF_FIXTURE_TOKEN in images.env.
  local token
  token=$(kc -n "$HUB_NAMESPACE" get secret hf-fixture-token -o jsonpath='{.data.token}' 2>/dev/null | base64 -d || true)
  if [ -z "$token" ]; then
    token="hf_fixture_$(openssl rand -hex 16)"
    kc -n "$HUB_NAMESPACE" create secret generic hf-fixture-token --from-literal=token="$token" >/dev/null
  fi
  sed -e "s#@HF_HUB_IMAGE@#$hub_image#g" -e "s#@HF_FIXTURE_REPO@#$HF_FIXTURE_REPO#g" \
    -e "s#@HF_FIXTURE_PRIVATE_REPO@#$HF_FIXTURE_PRIVATE_REPO#g" "$HERE/realnode/hf-hub.yaml" |
    kc apply -f - >/dev/null
  HF_TOKEN_VALUE=$token
}

write_images_env() {
  local hub_port hub_url
  hub_port=$(kc -n "$HUB_NAMESPACE" get service hf-hub -o jsonpath='{.spec.ports[0].port}')
  hub_url="http://hf-hub.$HUB_NAMESPACE.svc.cluster.local"
  [ "$hub_port" = 80 ] || hub_url="$hub_url:$hub_port"
  {
    echo "# Generated by devcluster/realnode.sh (images: devcluster/images.sh); shell KEY=value lines."
    "$HERE/images.sh" env
    echo "HF_ENDPOINT=$hub_url"
    echo "HF_FIXTURE_REPO=$HF_FIXTURE_REPO"
    echo "HF_FIXTURE_PRIVATE_REPO=$HF_FIXTURE_PRIVATE_REPO"
    echo "HF_FIXTURE_NEMO_REPO=standin/llama3-8b-lora-nemo"
    echo "HF_FIXTURE_SERIES=standin/llama3-8b-lora-eval-"
    echo "HF_FIXTURE_SERIES_COUNT=12"
    echo "HF_FIXTURE_TOKEN_SECRET=hf-fixture-token"
    echo "HF_FIXTURE_TOKEN_SECRET_NAMESPACE=$HUB_NAMESPACE"
    echo "HF_FIXTURE_TOKEN=$HF_TOKEN_VALUE"
    echo "REAL_NODE_NAME=$NODE_NAME"
    echo "REAL_NODE_SELECTOR=nim-agent.dev/node=real"
  } >"$STATE/images.env.tmp"
  mv "$STATE/images.env.tmp" "$STATE/images.env"
}

# ---------------------------------------------------------------------------------------------

all_running() {
  running containerd "$MARK_CONTAINERD" && running kubelet "$MARK_KUBELET" &&
    running kube-proxy "$MARK_PROXY" && running coredns "$MARK_DNS" &&
    running apiserver-forward "$MARK_FORWARD"
}

# The control plane the node belongs to: its apiserver port and CA.
controlplane_id() { echo "$(apiserver_port) $(sha256sum <"$CLUSTER_PKI/ca.crt" | cut -c1-16)"; }

up() {
  require
  check_owner
  local start=$SECONDS
  if [ -f "$RN/controlplane" ] && [ "$(cat "$RN/controlplane")" != "$(controlplane_id)" ]; then
    log "the control plane was made again since the node started: restarting the node"
    down
  fi
  "$HERE/apt.sh" "${APT_PACKAGES[@]}"
  mkdir -p "$RN/logs" "$RN/pids"
  save_machine_state
  controlplane_id >"$RN/controlplane"
  setup_network
  start_registry
  "$HERE/images.sh" push
  local pause hub
  pause=$("$HERE/images.sh" env | sed -n 's/^PAUSE_IMAGE=//p')
  hub=$("$HERE/images.sh" env | sed -n 's/^HF_HUB_IMAGE=//p')
  make_cgroup_root
  write_containerd_config "$pause"
  start_containerd
  start_forward
  apply_cluster_objects
  start_coredns
  start_kubelet
  wait_for "$READY_TIMEOUT" "node $NODE_NAME Ready" "$RN/logs/kubelet.log" node_ready
  advertise_gpus
  start_kube_proxy
  deploy_hub "$hub"
  wait_for "$READY_TIMEOUT" "the Hugging Face Hub stand-in (deployment hf-hub in $HUB_NAMESPACE) Ready" \
    "$RN/logs/kubelet.log" hub_ready
  write_images_env
  log "real node $NODE_NAME ready in $((SECONDS - start))s: pods on $BRIDGE ($POD_CIDR), DNS $CLUSTER_DNS, images from $REGISTRY (${STATE#"$ROOT/"}/images.env)"
}

# Every pod sandbox through the CRI (CNI teardown included), then the containerd shims that a
# killed containerd would leave.
remove_pods() {
  if running containerd "$MARK_CONTAINERD"; then
    crictl stopp $(crictl pods -q 2>/dev/null) >/dev/null 2>&1 || true
    crictl rmp -a -f >/dev/null 2>&1 || log "crictl rmp failed; killing the containers instead"
  fi
}

kill_shims() {
  local pid
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $CTR_SOCK" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

our_mounts() { # mount points under the state folder, deepest first
  awk -v p="$RN/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r
}

down() {
  local start=$SECONDS
  check_owner
  if [ ! -d "$RN" ] && [ ! -d "/sys/class/net/$BRIDGE" ]; then
    log "no real node here: nothing to stop"
    return 0
  fi
  if [ -f "$ADMIN_KUBECONFIG" ] && [ -x "$BIN/kubectl" ] &&
     kc get --raw /readyz >/dev/null 2>&1; then
    # The control plane stays up when only the node goes: it keeps no node. Pods bound to it go
    # at once (no kubelet will confirm their end; they would wait for the pod GC). The Hub's
    # Deployment and the cluster objects stay (its new pod waits for the node's return): deleting
    # their namespace would leave it Terminating for a minute, in the way of the next `up`.
    kc delete pods --all-namespaces --field-selector "spec.nodeName=$NODE_NAME" --grace-period=0 \
      --force --wait=false >/dev/null 2>&1 || true
    kc delete node "$NODE_NAME" --wait=false --ignore-not-found >/dev/null 2>&1 || true
  fi
  stop_daemons 10 kubelet "$MARK_KUBELET" kube-proxy "$MARK_PROXY" coredns "$MARK_DNS" \
    apiserver-forward "$MARK_FORWARD"
  remove_pods
  stop_daemons 15 containerd "$MARK_CONTAINERD"
  kill_shims
  # Rules: kube-proxy's own clean-up, then every chain the node's components made.
  if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  remove_iptables
  local m
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"; done
  if [ -d "/sys/class/net/$BRIDGE" ]; then
    for m in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$m" 2>/dev/null || true
    done
    ip link del "$BRIDGE"
  fi
  # Connection tracking entries of pods and Services (they would only time out).
  if command -v conntrack >/dev/null; then
    local net
    for net in "$POD_CIDR" "$SERVICE_CIDR"; do
      conntrack -D -s "$net" >/dev/null 2>&1 || true
      conntrack -D -d "$net" >/dev/null 2>&1 || true
    done
  fi
  remove_cgroups
  restore_machine_state
  stop_daemons 10 registry "$MARK_REGISTRY"
  rm -rf "$RN" "$STATE/images.env" "$STATE/registry.yml"
  if ! leftovers >/dev/null 2>&1; then
    log "WARNING: left behind after down:"; leftovers >&2 || true
  fi
  log "real node stopped and removed in $((SECONDS - start))s"
}

# iptables chains made by the node: ours, kube-proxy's (KUBE-*), the kubelet's canaries and the
# CNI plugins' (CNI-*), with every rule that jumps to them.
remove_iptables() {
  local cmd table chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle raw; do
      local rules
      rules=$("$cmd" -w -t "$table" -S 2>/dev/null |
        awk '$1 == "-A" && $2 ~ /^(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING)$/ && / -j (NIM-REALNODE|KUBE-|CNI-)/' |
        sed 's/^-A /-D /')
      while read -r rule; do
        [ -n "$rule" ] && { eval "$cmd -w -t $table $rule" 2>/dev/null || true; }
      done <<<"$rules"
      for chain in $("$cmd" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(NIM-REALNODE|KUBE-|CNI-)/ {print $2}'); do
        "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(NIM-REALNODE|KUBE-|CNI-)/ {print $2}'); do
        "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# What `down` must leave no trace of; one line per thing found (a subshell: every check runs,
# whatever the one before found).
leftover_lines() (
  set +e +o pipefail
  [ -d "/sys/class/net/$BRIDGE" ] && echo "link: $BRIDGE"
  # The CNI bridge plugin names host-side veths veth<8 hex digits>.
  ip -o link show type veth 2>/dev/null | awk -F': ' '$2 ~ /^veth[0-9a-f]{8}(@|$)/ {print "veth: " $2}'
  awk -v p="$RN/" 'index($5, p) == 1 {print "mount: " $5}' /proc/self/mountinfo
  pgrep -af -- "$RN/|bind=$NODE_IP|-address $CTR_SOCK" | grep -v -e pgrep -e 'realnode.sh' | sed 's/^/process: /'
  for mp in $(cgroup_all_mounts); do [ -d "$mp$CGROUP_ROOT" ] && echo "cgroup: $mp$CGROUP_ROOT"; done
  for cmd in iptables ip6tables; do
    for table in filter nat mangle raw; do
      "$cmd" -w -t "$table" -S 2>/dev/null | grep -E 'NIM-REALNODE|KUBE-|CNI-|10\.244\.' | sed "s/^/$cmd -t $table: /"
    done
  done
  [ -d "$RN" ] && echo "folder: $RN"
  true
)

leftovers() {
  local out
  out=$(leftover_lines)
  [ -z "$out" ] || { echo "$out"; return 1; }
}

status() {
  all_running && node_ready && curl -fsS -o /dev/null "http://$REGISTRY/v2/"
}

mkdir -p "$STATE"
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  leftovers) leftovers ;;
  *) echo "usage: $0 up | down | status | leftovers" >&2; exit 2 ;;
esac
