#!/usr/bin/env bash
# `make bench`: build or reuse the control-plane binaries, start a control plane of the
# benchmark's own (never the shared .devcluster one), run benchmarks/bench.py, and stop it
# however the run ends. Arguments go to bench.py (`make bench BENCH_ARGS="--profile"`).
#
# Settings (environment, defaults in brackets):
#   DEVCLUSTER_DIR [.devcluster-bench]  state folder; NIM_AGENT_CLUSTER [nim-agent-bench]
#   NODES_GPU [135] x GPUS_PER_NODE [16] fake GPUs: room for 2 x 1,000 one-GPU deployments + probes
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
