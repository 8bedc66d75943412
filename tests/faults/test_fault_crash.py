"""The connector is SIGKILLed mid-work; a new one, given the calls Flyte retries, finishes the job
and nothing is leaked.

"In the middle of a create" is hit without a test hook in the connector: a burst of concurrent
CreateTasks keeps many calls in flight at once, the connector is killed when the first of them
is answered, and the calls the kill cut off are counted (the test requires at least one, over a few
rounds). CreateTask writes only the Pod; the Service is made when GetTask first finds the server
ready, so after the retried creates every deployment must have exactly one Pod and, once it
succeeded, its Service owned by that Pod.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from kubernetes import client

from tests.cluster import our_pods, our_services, stop_record_of
from tests.connector_server import Connectors, ConnectorServer, delete_request, exec_name
from tests.faults.support import COUNTS, TE, Deployments, small, try_get, wait_phases

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

SETTINGS = {
    "NIM_AGENT_REAP_INTERVAL": "1s",
    "NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD": "2",
}
BURST = 40
MAX_ROUNDS = 4
CLEANUP = 30


def send_all(
    call: Callable[..., Any], requests: dict[str, Any], timeout: float = 20
) -> dict[str, Any]:
    """Send every request at once (gRPC futures); name -> response, or the RpcError."""
    return collect({name: call.future(req, timeout=timeout) for name, req in requests.items()})


def collect(futures: dict[str, Any]) -> dict[str, Any]:
    """name -> response, or the RpcError, of gRPC futures."""
    results: dict[str, Any] = {}
    for name, future in futures.items():
        try:
            results[name] = future.result()
        except grpc.RpcError as exc:
            results[name] = exc
    return results


def kill_when(server: ConnectorServer, ready: Callable[[], bool]) -> None:
    """SIGKILL the connector as soon as ``ready()``, as a crash would."""
    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline, "the burst never got going"
        time.sleep(0.005)
    server.kill()
    COUNTS["faults injected (connector SIGKILLs)"] += 1


def test_sigkill_during_a_burst_of_creates_then_retried_creates_complete_every_deployment(
    connectors: Connectors,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    cut_total = 0
    all_requests: dict[str, Any] = {}
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < 2 or cut_total == 0):
        rounds += 1
        server = connectors.start(SETTINGS, command="nim-agent")
        d = deployments(server)
        requests = {exec_name(): d.request(small()) for _ in range(BURST)}
        all_requests.update(requests)
        futures = {n: server.stub.CreateTask.future(r, timeout=20) for n, r in requests.items()}
        # Kill as soon as the first create is answered: the others are then in flight
        # (CreateTask is one API write, so waiting for pods to appear finds them all answered).
        first = threading.Event()
        for future in futures.values():
            future.add_done_callback(lambda _, done=first: done.set())
        assert first.wait(60), "the burst never got going"
        server.kill()
        COUNTS["faults injected (connector SIGKILLs)"] += 1
        results = collect(futures)
        pods = {p.metadata.name for p in our_pods(core_v1, namespace)}
        answered = {n for n, r in results.items() if not isinstance(r, grpc.RpcError)}
        cut_total += len(requests) - len(answered)
        print(
            f"round {rounds}: {len(answered)} creates answered, {len(requests) - len(answered)} "
            f"cut off by the kill, {len(pods)} pods"
        )
        # A CreateTask answered before the kill has its Pod.
        for name in answered:
            assert d.pod_name(results[name].resource_meta) in pods

        # Flyte retries what failed; a new connector completes it.
        replacement = connectors.start(SETTINGS, command="nim-agent")
        d.server = replacement
        failed = {n: req for n, req in requests.items() if n not in answered}
        retried = send_all(replacement.stub.CreateTask, failed)
        for name, response in {**retried, **{n: results[n] for n in answered}}.items():
            assert not isinstance(response, grpc.RpcError), (name, response)
            d.metas[name] = response.resource_meta
        wait_phases(replacement, dict.fromkeys(d.metas.values(), TE.SUCCEEDED), timeout=180)
        connectors.started.remove(server)
        COUNTS["CreateTasks retried after a connector kill"] += len(failed)

    # Every deployment: one pod, and (it has succeeded) its Service owned by that pod.
    pods = our_pods(core_v1, namespace)
    assert len(pods) == len(all_requests) == rounds * BURST
    uid = {p.metadata.name: p.metadata.uid for p in pods}
    services = our_services(core_v1, namespace)
    assert sorted(s.metadata.name for s in services) == sorted(uid)
    for svc in services:
        [owner] = svc.metadata.owner_references
        assert owner.uid == uid[svc.metadata.name]
    COUNTS["CreateTasks cut off by a connector kill"] += cut_total
    assert cut_total >= 1, f"no kill landed during a CreateTask in {rounds} rounds"


def test_sigkill_during_a_burst_of_aborts_then_retried_deletes_remove_everything(
    connectors: Connectors,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    server = connectors.start(SETTINGS, command="nim-agent")
    d = deployments(server)
    for _ in range(BURST):
        d.create(small())
    wait_phases(server, dict.fromkeys(d.metas.values(), TE.SUCCEEDED), timeout=120)

    requests = {n: delete_request(m) for n, m in d.metas.items()}
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(send_all, server.stub.DeleteTask, requests)
        kill_when(server, lambda: len(our_pods(core_v1, namespace)) <= BURST - BURST // 3)
        results = sent.result()
    left = len(our_pods(core_v1, namespace))
    failed = {n: r for n, r in requests.items() if isinstance(results[n], grpc.RpcError)}
    print(f"{len(failed)} DeleteTasks failed by the kill; {left} pods left")
    assert left < BURST

    replacement = connectors.start(SETTINGS, command="nim-agent")
    d.server = replacement
    retried = send_all(replacement.stub.DeleteTask, failed)
    assert not [r for r in retried.values() if isinstance(r, grpc.RpcError)]
    COUNTS["DeleteTasks retried after a connector kill"] += len(failed)
    deadline = time.monotonic() + 30
    while our_pods(core_v1, namespace) or our_services(core_v1, namespace):
        assert time.monotonic() < deadline, "pods or services left after the retried aborts"
        time.sleep(0.2)


def test_sigkill_while_failed_servers_are_cleaned_up_a_new_connector_finishes_the_cleanup(
    connectors: Connectors,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    server = connectors.start(SETTINGS, command="nim-agent")
    d = deployments(server)
    for _ in range(CLEANUP):
        d.create(small("crashloop"))

    def running() -> int:
        """Failed servers not stopped yet (no stop record on the pod)."""
        return sum(stop_record_of(p) is None for p in our_pods(core_v1, namespace))

    # The reaper stops each failed server (one patch: its verdict, and the deadline that makes
    # the kubelet end it); kill the connector as soon as the first one is stopped.
    kill_when(server, lambda: running() < CLEANUP)
    left = running()
    print(f"{left} of {CLEANUP} failed servers left running at the kill")
    COUNTS["failed servers left mid-cleanup by a kill"] += left

    replacement = connectors.start(SETTINGS, command="nim-agent")
    d.server = replacement
    deadline = time.monotonic() + 90
    while running() or any(p.status.phase != "Failed" for p in our_pods(core_v1, namespace)):
        assert time.monotonic() < deadline, "the new connector did not finish the cleanup"
        time.sleep(0.5)
    # Every task says FAILED, naming the crash loop, whichever connector stopped its server: the
    # verdict is on the pod, not in a process's memory.
    for meta in d.metas.values():
        resource, error = try_get(replacement, meta)
        assert not error and resource.phase == TE.FAILED, error or resource.message
        assert "crash-looping" in resource.message, resource.message
