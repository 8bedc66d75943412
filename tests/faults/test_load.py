"""Load: 200 CreateTasks at once, then GetTask for every deployment, continuously, as fast as the
connector answers: no errors, every deployment SUCCEEDED, and the connector's memory flat.

`make test` polls for 40 s; `make soak` (NIM_AGENT_SOAK=1) for NIM_AGENT_SOAK_SECONDS (300).
Memory is the connector process's resident set (VmRSS), sampled every second after a warm-up;
"flat": less than 20 MiB of growth after the warm-up, and in the soak a least-squares slope below
1 MiB/min.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from kubernetes import client

from tests.cluster import our_pods
from tests.connector_server import (
    Connectors,
    ConnectorServer,
    delete_request,
    exec_name,
    get_request,
)
from tests.faults.support import COUNTS, TE, Deployments, phase_name, small

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

CONCURRENT = int(os.environ.get("NIM_AGENT_LOAD_CREATES", "200"))
WARMUP_S = 10.0
SETTINGS = {"NIM_AGENT_REAP_INTERVAL": "5s"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 60 if var else 0.0


@pytest.fixture
def server(connectors: Connectors) -> ConnectorServer:
    return connectors.start(SETTINGS, command="nim-agent")


def test_200_concurrent_creates_and_continuous_polling(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
    soak: bool,
) -> None:
    poll_seconds = float(os.environ.get("NIM_AGENT_SOAK_SECONDS", "300")) if soak else 40.0
    d = deployments(server)
    requests = {exec_name(): d.request(small()) for _ in range(CONCURRENT)}

    # -- 200 CreateTasks at once, each within flytepropeller's 10 s ---------------------------
    started = time.monotonic()
    futures = {n: server.stub.CreateTask.future(r, timeout=10) for n, r in requests.items()}
    errors: list[str] = []
    for name, future in futures.items():
        try:
            d.metas[name] = future.result().resource_meta
        except grpc.RpcError as exc:
            errors.append(f"CreateTask {name}: {exc.code().name} {exc.details()[:200]}")
    created_in = time.monotonic() - started
    assert not errors, errors[:5]
    assert len(our_pods(core_v1, namespace)) == CONCURRENT
    COUNTS["requests under load (CreateTask)"] += CONCURRENT

    # -- GetTask for all, round after round -------------------------------------------------
    pid = server.process.pid if server.process else 0
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append((time.monotonic(), rss_mib(pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    phases: dict[bytes, int] = {}
    gets = rounds = 0
    all_succeeded_at: float | None = None
    deadline = time.monotonic() + poll_seconds
    try:
        while time.monotonic() < deadline or all_succeeded_at is None:
            round_futures = {
                m: server.stub.GetTask.future(get_request(m), timeout=10) for m in d.metas.values()
            }
            for meta, future in round_futures.items():
                try:
                    phases[meta] = future.result().resource.phase
                except grpc.RpcError as exc:
                    errors.append(f"GetTask: {exc.code().name} {exc.details()[:200]}")
            gets += len(round_futures)
            rounds += 1
            assert not errors, errors[:5]
            failed = [
                phase_name(p) for p in phases.values() if p in (TE.FAILED, TE.RETRYABLE_FAILED)
            ]
            assert not failed, failed[:5]
            if all_succeeded_at is None and all(p == TE.SUCCEEDED for p in phases.values()):
                all_succeeded_at = time.monotonic() - started
            assert time.monotonic() < deadline + 120, "not every deployment SUCCEEDED in time"
    finally:
        stop.set()
        sampler.join()
    COUNTS["requests under load (GetTask)"] += gets

    steady = [(t, v) for t, v in samples if t - samples[0][0] >= WARMUP_S]
    growth = steady[-1][1] - steady[0][1]
    slope = slope_per_minute(steady)
    print(
        f"{CONCURRENT} creates in {created_in:.1f}s; all SUCCEEDED after {all_succeeded_at:.1f}s; "
        f"{gets} GetTasks in {rounds} rounds over {poll_seconds:.0f}s "
        f"({gets / poll_seconds:.0f}/s); RSS {steady[0][1]:.1f} -> {steady[-1][1]:.1f} MiB, "
        f"slope {slope:+.2f} MiB/min"
    )
    assert growth < 20, f"RSS grew {growth:.1f} MiB while polling"
    if soak:
        assert slope < 1.0, f"RSS grows {slope:.2f} MiB/min"

    # -- and all aborted at once ----------------------------------------------------------
    deletes = [
        server.stub.DeleteTask.future(delete_request(m), timeout=30) for m in d.metas.values()
    ]
    for future in deletes:
        future.result()
    COUNTS["requests under load (DeleteTask)"] += len(deletes)
    d.metas.clear()
    deadline = time.monotonic() + 60
    while our_pods(core_v1, namespace):
        assert time.monotonic() < deadline, "aborted deployments still there"
        time.sleep(0.5)
