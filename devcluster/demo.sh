#!/usr/bin/env bash
# `make demo`: nim-agent end to end on the local control plane.
#
#   1. build what is missing and start the control plane (kwok plays 4 GPU nodes);
#   2. run the connector (`nim-agent serve`), as it runs next to flytepropeller;
#   3. call it as flytepropeller does: CreateTask, then GetTask until the NIM serves;
#   4. `nim-agent list`, then `nim-agent teardown`;
#   5. `pyflyte run` of the whole workflow (NIM -> a step using its endpoint -> teardown);
#   6. on the real node: the same NIM task with the NIM stand-in image and an adapter from the
#      Hub stand-in, through a connector that verifies serving (GET /v1/models); then a pod on the
#      real node asks {endpoint}/v1/chat/completions by the Service's name and prints the answer;
#   7. on the real node, when the connector's image is there (make image): `pyflyte run` of the
#      fine-tune story (a task trains an adapter, the NIM stand-in serves it from the object store,
#      the next step's question is answered by that adapter, teardown);
#   8. stop the connectors (the control plane keeps running: `make cluster-down` stops it).
# Steps 1 to 5 run on kwok's simulated nodes, whose pods serve no HTTP: there the connector's
# /v1/models check is off (NIM_AGENT_SERVING_CHECK=off). Steps 6 and 7 need the real node
# (.devcluster/images.env with NIM_STANDIN_IMAGE, which `make cluster-up` writes); step 7 also
# NIM_AGENT_IMAGE. NIM_DEMO_REAL=0 skips them, NIM_DEMO_REAL=1 makes a missing part an error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv/bin"
NAMESPACE="${NIM_DEMO_NAMESPACE:-nim-demo}"
PORT="${NIM_DEMO_PORT:-18000}"
METRICS_PORT="${NIM_DEMO_METRICS_PORT:-19090}"
LOG="$ROOT/.devcluster/demo-connector.log"
export KUBECONFIG="$ROOT/.devcluster/kubeconfig"

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# What the demo started, stopped however it ends.
SERVERS=()
STOP_OBJECTSTORE=0
cleanup() {
  local pid
  for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVERS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$STOP_OBJECTSTORE" = 1 ]; then devcluster/objectstore.sh down || true; fi
}
trap cleanup EXIT
kc() { "$ROOT/.devcluster/bin/kubectl" --request-timeout=10s "$@"; }

bold "1. Local control plane (kube-apiserver, etcd, scheduler, controller-manager; kwok nodes)"
make --no-print-directory cluster-up
kc get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu,TAINTS:.spec.taints[*].key'
kc create namespace "$NAMESPACE" --dry-run=client -o yaml | kc apply -f - >/dev/null

bold "2. The connector: nim-agent serve (gRPC :$PORT, metrics :$METRICS_PORT)"
NIM_AGENT_SERVING_CHECK=off NIM_AGENT_REAP_INTERVAL=5s "$VENV/nim-agent" serve --port "$PORT" --metrics-port "$METRICS_PORT" >"$LOG" 2>&1 &
SERVER=$!
SERVERS+=("$SERVER")
for _ in $(seq 1 120); do
  if "$VENV/python" -c "import grpc,sys; grpc.channel_ready_future(grpc.insecure_channel('127.0.0.1:$PORT')).result(timeout=0.5)" 2>/dev/null; then break; fi
  kill -0 $SERVER 2>/dev/null || { echo "the connector exited; its log:"; tail -20 "$LOG"; exit 1; }
done
echo "  serving (log: .devcluster/demo-connector.log)"

bold "3. As flytepropeller: CreateTask, then GetTask until the NIM (with a LoRA adapter) serves"
"$VENV/python" devcluster/demo_client.py --address "127.0.0.1:$PORT" --namespace "$NAMESPACE"

bold "4. nim-agent list, then nim-agent teardown"
"$VENV/nim-agent" list -n "$NAMESPACE"
for name in $(kc -n "$NAMESPACE" get pods -l app.kubernetes.io/managed-by=nim-agent -o name); do
  "$VENV/nim-agent" teardown "${name#pod/}" -n "$NAMESPACE"
done
"$VENV/nim-agent" list -n "$NAMESPACE"
echo
echo "  metrics (nim_agent_*):"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^nim_agent_(deployments_created|deletions|time_to_ready_seconds_count|kube_requests)_total|^nim_agent_time_to_ready_seconds_count' | sed 's/^/    /'

bold "5. pyflyte run examples/demo_workflow.py wf (NIM -> chat_request(endpoint) -> teardown)"
NIM_AGENT_SERVING_CHECK=off NIM_AGENT_DEFAULT_NAMESPACE="$NAMESPACE" "$VENV/pyflyte" run examples/demo_workflow.py wf --question "What is Flyte?"

IMAGES_ENV="$ROOT/.devcluster/images.env"
image_value() { [ -f "$IMAGES_ENV" ] && sed -n "s/^$1=//p" "$IMAGES_ENV" | tail -1; }
STANDIN_IMAGE="$(image_value NIM_STANDIN_IMAGE || true)"
AGENT_IMAGE="$(image_value NIM_AGENT_IMAGE || true)"
REAL="${NIM_DEMO_REAL:-auto}"
REAL_NODE_UP=0
if [ -n "$STANDIN_IMAGE" ] && devcluster/realnode.sh status >/dev/null 2>&1; then REAL_NODE_UP=1; fi
if [ "$REAL" = 1 ] && [ "$REAL_NODE_UP" = 0 ]; then
  echo "NIM_DEMO_REAL=1 but the real node is not running, or $IMAGES_ENV lacks NIM_STANDIN_IMAGE (make cluster-up starts it)" >&2
  exit 1
fi

if [ "$REAL" != 0 ] && [ "$REAL_NODE_UP" = 1 ]; then
  bold "6. On the real node: the NIM stand-in serves a Hub adapter; a pod asks it by the Service name"
  REAL_PORT="${NIM_DEMO_REAL_PORT:-18001}"
  REAL_METRICS_PORT="${NIM_DEMO_REAL_METRICS_PORT:-19091}"
  REAL_LOG="$ROOT/.devcluster/demo-connector-real.log"
  # A real kubelet resolves the secretKeyRefs: the NGC key (the stand-in ignores its value) and
  # the Hub token (the Hub stand-in's own).
  kc -n "$NAMESPACE" create secret generic nim-secrets --from-literal=api_key=stand-in \
    --from-literal=token="$(image_value HF_FIXTURE_TOKEN)" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
  # This connector verifies serving (GET /v1/models through the API server's pod proxy: it runs
  # on this machine, outside the pod network), as in a real cluster; the kwok one above cannot.
  NIM_AGENT_SERVING_CHECK=proxy NIM_AGENT_REAP_INTERVAL=5s NIM_AGENT_LEASE_NAME=nim-agent-demo-real \
    "$VENV/nim-agent" serve --port "$REAL_PORT" --metrics-port "$REAL_METRICS_PORT" >"$REAL_LOG" 2>&1 &
  REAL_SERVER=$!
  SERVERS+=("$REAL_SERVER")
  for _ in $(seq 1 120); do
    if "$VENV/python" -c "import grpc,sys; grpc.channel_ready_future(grpc.insecure_channel('127.0.0.1:$REAL_PORT')).result(timeout=0.5)" 2>/dev/null; then break; fi
    kill -0 $REAL_SERVER 2>/dev/null || { echo "the connector exited; its log:"; tail -20 "$REAL_LOG"; exit 1; }
  done
  echo "  a second connector, verifying serving: nim-agent serve on :$REAL_PORT (log: .devcluster/demo-connector-real.log)"
  NIM_DEMO_IMAGE="$STANDIN_IMAGE" NIM_DEMO_NODE_SELECTOR=nim-agent.dev/node=real \
    NIM_DEMO_MEM=512Mi NIM_DEMO_SHM=64Mi NIM_DEMO_LORA_MEM=256Mi NIM_DEMO_PROBE_PERIOD=2 \
    NIM_DEMO_HF_ENDPOINT="$(image_value HF_ENDPOINT)" NIM_DEMO_HF_REPO="$(image_value HF_FIXTURE_REPO)" \
    "$VENV/python" devcluster/demo_client.py --address "127.0.0.1:$REAL_PORT" --namespace "$NAMESPACE" \
    --ask-image "$(image_value PYTHON_BASE_IMAGE)" --ask-node-selector nim-agent.dev/node=real
  for name in $(kc -n "$NAMESPACE" get pods -l app.kubernetes.io/managed-by=nim-agent -o name); do
    "$VENV/nim-agent" teardown "${name#pod/}" -n "$NAMESPACE"
  done
elif [ "$REAL" != 0 ]; then
  bold "6. (skipped) The real node is not running"
  echo "  REAL_NODE=0, or another worktree of this machine owns the real node: make cluster-up"
  echo "  (REAL_NODE=1, the default) starts it, then run make demo again."
fi

if [ "$REAL" != 0 ] && [ "$REAL_NODE_UP" = 1 ] && [ -n "$AGENT_IMAGE" ]; then
  bold "7. On the real node: a task trains an adapter, the NIM serves it, the next step asks it"
  # MinIO on the node's bridge address, where pods (port 9300) and this machine both reach it;
  # stopped at the end unless it was running before.
  export OBJECTSTORE_HOST=10.244.0.1 OBJECTSTORE_PORT=9300
  if ! devcluster/objectstore.sh status 2>/dev/null; then STOP_OBJECTSTORE=1; fi
  devcluster/objectstore.sh up >/dev/null
  set -a
  # shellcheck disable=SC1091
  . "$ROOT/.devcluster/objectstore.env"
  set +a
  kc -n "$NAMESPACE" create secret generic object-store \
    --from-literal=FLYTE_AWS_ACCESS_KEY_ID="$FLYTE_AWS_ACCESS_KEY_ID" \
    --from-literal=FLYTE_AWS_SECRET_ACCESS_KEY="$FLYTE_AWS_SECRET_ACCESS_KEY" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
  NIM_AGENT_SERVING_CHECK=proxy NIM_AGENT_DEFAULT_NAMESPACE="$NAMESPACE" \
    NIM_AGENT_ADAPTER_INPUTS_IMAGE="$AGENT_IMAGE" \
    NIM_AGENT_ADAPTER_INPUTS_ENV="{\"FLYTE_AWS_ENDPOINT\": \"$FLYTE_AWS_ENDPOINT\"}" \
    NIM_AGENT_ADAPTER_INPUTS_SECRET=object-store \
    NIM_DEMO_IMAGE="$STANDIN_IMAGE" NIM_DEMO_NODE_SELECTOR=nim-agent.dev/node=real \
    NIM_DEMO_MEM=512Mi NIM_DEMO_SHM=64Mi \
    "$VENV/pyflyte" run --raw-output-data-prefix "$OBJECTSTORE_RAW_OUTPUT_PREFIX" \
    examples/demo_workflow.py tuned --question "What is Flyte?"
elif [ "$REAL" = 1 ]; then
  echo "NIM_DEMO_REAL=1 but $IMAGES_ENV lacks NIM_AGENT_IMAGE (the connector's image: make image)" >&2
  exit 1
elif [ "$REAL" != 0 ] && [ "$REAL_NODE_UP" = 1 ]; then
  bold "7. (skipped) The fine-tune story needs the connector's image"
  echo "  $IMAGES_ENV lacks NIM_AGENT_IMAGE: build it (make image), then run make demo again."
fi

bold "Done"
cat <<'TXT'
  What you saw is real Kubernetes: the API server validated and admitted the Pod and Service, the
  scheduler placed the pod on a node with a free nvidia.com/gpu (tolerating the GPU taint), the
  garbage collector removed the Service with its Pod.

  What is simulated:
  - Steps 3 to 5 ran on kwok's nodes: kwok plays their kubelets, so no image is pulled and no
    container runs; the pod's life (init container for the LoRA download, then Running, then
    Ready) is scripted (devcluster/kwok/pod-stages.yaml).
  - Steps 6 and 7 ran on the real node nim-real-0: a real kubelet, containerd and runc pulled the
    images from a local registry, ran the adapter download against the Hub, probed the server
    and restarted it if needed; the answer came over the pod network, to a pod, by the Service's
    DNS name. But there is no GPU: the node advertises 8 nvidia.com/gpu by a status patch and
    nothing uses them. And there is no model: the server is a stand-in
    (devcluster/standin/nim_standin.py) that speaks NIM's HTTP API and answers with a canned
    sentence naming the model or adapter asked; the Hugging Face Hub is a stand-in too, with
    fixture adapter repositories.

  On a real GPU cluster: the image comes from nvcr.io (imagePullSecret ngc_image_secret), the
  NGC key and HF token come from Kubernetes Secrets by reference, the adapter is downloaded for
  real, and the model takes minutes to load: GetTask says "loading model, 3m12s" meanwhile.
  Install it there with the Helm chart: docs/install.md.

  The control plane is still running: `make cluster-down` stops it.
TXT
