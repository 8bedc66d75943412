"""Load as flytepropeller sends it: 200 executions launched by propeller's workers, each CreateTask
under propeller's deadline and retried as propeller retries, then GetTask for every deployment,
continuously: every execution ends up with exactly one server, every one SUCCEEDED, no GetTask
error, the connector's memory flat, and nothing left after the aborts.

What flytepropeller v1.16.8 does (flyteplugins ``pluginmachinery/internal/webapi`` and
``plugins/webapi/connector``, read at that tag), and how it is modelled here:

- CreateTask calls come from propeller's workflow evaluation loops (``propeller.workers``,
  default 20), one node at a time per loop: at most WORKERS calls in flight. The connector
  plugin's ``writeRateLimiter`` (burst 100, 10 QPS) is validated but not applied to CreateTask
  in that release, so it is not modelled.
- Each call has a deadline (``defaultTimeout``, 10 s). A CreateTask that fails, a timeout
  included, fails the attempt as retryable; the node is retried as a new attempt (retry number
  + 1, so a new deployment name) while the task has retries left (RETRIES here; Flyte's default
  is 0, where the workflow fails). The pod a timed-out call created anyway belongs to an attempt
  Flyte gave up on: the reaper deletes it as superseded.
- GetTask is polled for every deployment round after round (here as fast as the connector
  answers; propeller re-polls on a 30 s resync).

The burst of 200 simultaneous CreateTasks (far more than propeller sends) is a benchmark figure:
``make bench`` reports its latencies against the 10 s deadline.

`make test` polls for 40 s; `make soak` (NIM_AGENT_SOAK=1) for NIM_AGENT_SOAK_SECONDS (300).
Memory is the connector process's resident set (VmRSS), sampled every second after a warm-up;
"flat": less than 20 MiB of growth after the warm-up, and in the soak a least-squares slope below
1 MiB/min.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from kubernetes import client

from nim_agent import NIM
from tests.cluster import our_pods, running_pods
from tests.connector_server import (
    Connectors,
    ConnectorServer,
    create_request,
    delete_request,
    exec_name,
    execution,
    get_request,
)
from tests.faults.support import COUNTS, TE, Deployments, phase_name, small, template

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

EXECUTIONS = int(os.environ.get("NIM_AGENT_LOAD_CREATES", "200"))
WORKERS = 20  # flytepropeller's `propeller.workers` default
CREATE_DEADLINE_S = 10.0  # the connector plugin's defaultTimeout
RETRIES = 2  # the task's retries (user-set; Flyte's default is 0)
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


@dataclass
class Launch:
    """One execution's node as propeller launches it: attempts until a CreateTask answers."""

    name: str
    attempts: list[str] = field(default_factory=list)  # how each attempt's CreateTask ended
    meta: bytes = b""  # resource_meta of the attempt that answered


def launch(server: ConnectorServer, namespace: str, name: str, config: NIM) -> Launch:
    """CreateTask for one node, attempt after attempt, as propeller retries a failed create."""
    state = Launch(name)
    tmpl = template(config)
    for retry in range(RETRIES + 1):
        request = create_request(tmpl, execution(name, retry=retry), namespace)
        try:
            response = server.stub.CreateTask(request, timeout=CREATE_DEADLINE_S)
        except grpc.RpcError as exc:
            state.attempts.append(exc.code().name)
            continue
        state.attempts.append("OK")
        state.meta = response.resource_meta
        break
    return state


@pytest.fixture
def server(connectors: Connectors) -> ConnectorServer:
    return connectors.start(SETTINGS, command="nim-agent")


def test_executions_launched_as_propeller_does_each_get_one_server_and_succeed(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
    soak: bool,
) -> None:
    poll_seconds = float(os.environ.get("NIM_AGENT_SOAK_SECONDS", "300")) if soak else 40.0
    d = deployments(server)
    names = [exec_name() for _ in range(EXECUTIONS)]

    # -- launched by propeller's workers, each create under its deadline, retried ------------
    started = time.monotonic()
    config = small()
    with ThreadPoolExecutor(WORKERS) as workers:
        launches = list(workers.map(lambda n: launch(server, namespace, n, config), names))
    created_in = time.monotonic() - started
    outcomes = Counter(a for la in launches for a in la.attempts)
    out_of_retries = [la.name for la in launches if not la.meta]
    assert not out_of_retries, f"{len(out_of_retries)} nodes failed every attempt: {outcomes}"
    for la in launches:
        d.metas[la.name] = la.meta
    COUNTS["requests under load (CreateTask)"] += sum(len(la.attempts) for la in launches)
    COUNTS["CreateTask attempts failed under load (retried as propeller does)"] += (
        sum(outcomes.values()) - outcomes["OK"]
    )

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
    errors: list[str] = []
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
            # A margin for a loaded 2-core machine; on a quiet one all succeed within ~30 s.
            assert time.monotonic() < deadline + 300, "not every deployment SUCCEEDED in time"
    finally:
        stop.set()
        sampler.join()
    COUNTS["requests under load (GetTask)"] += gets

    # -- one server per execution: pods of attempts Flyte gave up on are gone -------------
    def servers_per_execution() -> Counter[str]:
        return Counter(
            p.metadata.labels["nim-agent.dev/execution"]
            for p in our_pods(core_v1, namespace)
            if p.metadata.deletion_timestamp is None
        )

    wait_deadline = time.monotonic() + 120  # reaper every 5 s; margin for a loaded machine
    while (per := servers_per_execution()) != Counter({n: 1 for n in names}):
        extra = {n: c for n, c in per.items() if c != 1}
        missing = sorted(set(names) - set(per))
        assert time.monotonic() < wait_deadline, f"not one server each: {extra}, {missing[:5]}"
        time.sleep(1)

    steady = [(t, v) for t, v in samples if t - samples[0][0] >= WARMUP_S]
    growth = steady[-1][1] - steady[0][1]
    slope = slope_per_minute(steady)
    print(
        f"{EXECUTIONS} executions launched by {WORKERS} workers in {created_in:.1f}s "
        f"(CreateTask outcomes {dict(outcomes)}); all SUCCEEDED after {all_succeeded_at:.1f}s; "
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
    deadline = time.monotonic() + 120
    while our_pods(core_v1, namespace):
        assert time.monotonic() < deadline, "aborted deployments still there"
        time.sleep(0.5)


def test_a_create_whose_answer_never_reached_propeller_is_stopped_at_its_ttl(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    """From propeller's side, a timed-out CreateTask is one whose answer it never got: it holds
    no resource_meta, so it never sends GetTask or DeleteTask for it, whether it retries the node
    or the execution is aborted. Such a deployment is stopped at its ttl all the same."""
    request = create_request(
        template(small(), ttl=timedelta(seconds=15)),
        execution(exec_name()),
        namespace,
    )
    server.stub.CreateTask(request, timeout=CREATE_DEADLINE_S)  # the answer is thrown away
    [pod] = our_pods(core_v1, namespace)
    deadline = time.monotonic() + 120  # ttl 15 s + reaper every 5 s; margin for a loaded machine
    while running_pods(core_v1, namespace):
        assert time.monotonic() < deadline, f"{pod.metadata.name} outlived its ttl"
        time.sleep(1)
    assert server.metric("nim_agent_deletions_total", cause="ttl") >= 1


def test_the_pod_of_an_attempt_flyte_gave_up_on_is_deleted_when_the_next_attempt_starts(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    """Attempt 0's CreateTask timed out at propeller (its pod was made anyway); propeller retried
    the node as attempt 1. The reaper deletes attempt 0's server, attempt 1's serves."""
    name = exec_name()
    tmpl = template(small())
    server.stub.CreateTask(create_request(tmpl, execution(name, retry=0), namespace), timeout=10)
    meta = server.stub.CreateTask(
        create_request(tmpl, execution(name, retry=1), namespace), timeout=10
    ).resource_meta
    deadline = time.monotonic() + 120
    while True:
        retries = sorted(
            p.metadata.labels["nim-agent.dev/retry"] for p in our_pods(core_v1, namespace)
        )
        if retries == ["1"]:
            break
        assert time.monotonic() < deadline, f"attempts still there: {retries}"
        time.sleep(0.5)
    resource = server.stub.GetTask(get_request(meta), timeout=10).resource
    deadline = time.monotonic() + 120
    while resource.phase != TE.SUCCEEDED:
        assert resource.phase not in (TE.FAILED, TE.RETRYABLE_FAILED), resource.message
        assert time.monotonic() < deadline, resource.message
        time.sleep(0.5)
        resource = server.stub.GetTask(get_request(meta), timeout=10).resource
    assert server.metric("nim_agent_deletions_total", cause="superseded") == 1
    server.stub.DeleteTask(delete_request(meta), timeout=30)
