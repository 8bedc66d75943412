#!/usr/bin/env bash
# `make bench`: build or reuse the control-plane binaries, start a control plane of the
# benchmark's own (never the shared .devcluster one), run benchmarks/bench.py, and stop it
# however the run ends. Arguments go to bench.py (`make bench BENCH_ARGS="--profile"`).
#
# Settings (environment, defaults in brackets):
#   DEVCLUSTER_DIR [.devcluster-bench]  state folder; NIM_AGENT_CLUSTER [nim-agent-bench]
#   NODES_GPU [135] x GPUS_PER_NODE [16] fake GPUs: room for 2 x 1,000 one-GPU deployments + probes
#   REUSE_BENCH [1]  then benchmarks/reuse.py (warm servers vs a server per execution, about 13 min),
#                    on the worktree's own control plane with the real node (one per machine: it
#                    waits for none; it fails saying so when another worktree holds the node);
#                    REUSE_BENCH_ARGS go to it
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEVCLUSTER_DIR="${DEVCLUSTER_DIR:-$ROOT/.devcluster-bench}"
# One real node per machine (it belongs to the main control plane): kwok nodes only here.
export REAL_NODE=0
export NIM_AGENT_CLUSTER="${NIM_AGENT_CLUSTER:-nim-agent-bench}"
export NODES_GPU="${NODES_GPU:-135}" GPUS_PER_NODE="${GPUS_PER_NODE:-16}" NODES_CPU="${NODES_CPU:-0}"

DEVCLUSTER_BIN="$DEVCLUSTER_DIR/bin" "$ROOT/devcluster/build.sh"
trap '"$ROOT/devcluster/cluster.sh" down' EXIT
"$ROOT/devcluster/cluster.sh" up
cd "$ROOT"
.venv/bin/python -m benchmarks.bench "$@"
if [ "${REUSE_BENCH:-1}" != 0 ]; then
  # Not this control plane: the real node belongs to the worktree's own (.devcluster).
  # shellcheck disable=SC2086
  env -u DEVCLUSTER_DIR -u NIM_AGENT_CLUSTER -u NODES_GPU -u GPUS_PER_NODE -u NODES_CPU REAL_NODE=1 \
    .venv/bin/python -m benchmarks.reuse ${REUSE_BENCH_ARGS:-}
fi
