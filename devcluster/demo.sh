#!/usr/bin/env bash
# `make demo`: nim-agent end to end on the local control plane.
#
#   1. build what is missing and start the control plane (kwok plays 4 GPU nodes);
#   2. run the connector (`nim-agent serve`), as it runs next to flytepropeller;
#   3. call it as flytepropeller does: CreateTask, then GetTask until the NIM serves;
#   4. `nim-agent list`, then `nim-agent teardown`;
#   5. `pyflyte run` of the whole workflow (NIM -> a step using its endpoint -> teardown);
#   6. stop the connector (the control plane keeps running: `make cluster-down` stops it).
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
kc() { "$ROOT/.devcluster/bin/kubectl" --request-timeout=10s "$@"; }

bold "1. Local control plane (kube-apiserver, etcd, scheduler, controller-manager; kwok nodes)"
make --no-print-directory cluster-up
kc get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu,TAINTS:.spec.taints[*].key'
kc create namespace "$NAMESPACE" --dry-run=client -o yaml | kc apply -f - >/dev/null

bold "2. The connector: nim-agent serve (gRPC :$PORT, metrics :$METRICS_PORT)"
NIM_AGENT_SERVING_CHECK=off NIM_AGENT_REAP_INTERVAL=5s "$VENV/nim-agent" serve --port "$PORT" --metrics-port "$METRICS_PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
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

bold "Done"
cat <<'TXT'
  What you saw is real Kubernetes: the API server validated and admitted the Pod and Service, the
  scheduler placed the pod on a node with a free nvidia.com/gpu (tolerating the GPU taint), the
  garbage collector removed the Service with its Pod. What is simulated: the nodes. kwok plays
  the kubelets, so no image is pulled, no GPU exists and no model loads; the pod's life
  (init container for the LoRA download, then Running, then Ready) is scripted.

  On a real GPU cluster: the image comes from nvcr.io (imagePullSecret ngc_image_secret), the
  NGC key and HF token come from Kubernetes Secrets by reference, the adapter is downloaded for
  real, and the model takes minutes to load: GetTask says "loading model, 3m12s" meanwhile.
  Install it there with the Helm chart: docs/install.md.

  The control plane is still running: `make cluster-down` stops it.
TXT
