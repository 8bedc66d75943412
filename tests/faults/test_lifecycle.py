"""A server's life after it has served, and with two connector replicas.

- A readiness blip after serving never removes the server; a long unready spell stops it after
  the unhealthy window, and the task's SUCCEEDED stands.
- An eviction is RETRYABLE_FAILED on every GetTask until Flyte stops asking: through cleanup
  sweeps and through a connector restart (the verdict is on the pod, not in memory).
- Two replicas: exactly one holds the cleanup Lease; SIGKILL it and the other takes over within
  the Lease's duration and cleans up; GetTasks spread over both (gRPC round_robin, as propeller
  reaches a headless Service) all succeed through a rolling restart.

On kwok nodes the kubelet's own statuses are written by the test where noted (a readiness probe
that fails, a node-pressure eviction): kwok plays no probes and no evictions. The real node's
suite (tests/integration/test_real_node_lives.py) proves the same rules against a real kubelet.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from flyteidl.service import agent_pb2_grpc
from kubernetes import client

from tests.cluster import holds_resources, stop_record_of, wait_for
from tests.configs import simulated_nim as nim
from tests.connector_server import Connectors, ConnectorServer, get_request
from tests.faults.support import COUNTS, TE, Deployments, get, phase_name, wait_phases

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

SETTINGS = {"NIM_AGENT_REAP_INTERVAL": "1s", "NIM_AGENT_UNHEALTHY_WINDOW": "20s"}


def unready(core_v1: client.CoreV1Api, namespace: str, name: str) -> None:
    """A readiness probe failing: the kubelet marks the pod (and its container) not ready."""
    pod = core_v1.read_namespaced_pod(name, namespace)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    containers = []
    for c in pod.status.container_statuses or []:
        raw = client.ApiClient().sanitize_for_serialization(c)
        raw["ready"] = False
        containers.append(raw)
    core_v1.patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "ContainersNotReady",
                        "lastTransitionTime": now,
                    },
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "reason": "ContainersNotReady",
                        "lastTransitionTime": now,
                    },
                ],
                "containerStatuses": containers,
            }
        },
    )


def annotations(core_v1: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    return dict(core_v1.read_namespaced_pod(name, namespace).metadata.annotations or {})


def record(core_v1: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    """The stop record on the pod (None: not stopped)."""
    return stop_record_of(core_v1.read_namespaced_pod(name, namespace))


@pytest.fixture
def server(connectors: Connectors) -> ConnectorServer:
    return connectors.start(SETTINGS, command="nim-agent")


def test_a_readiness_blip_after_serving_keeps_the_server_and_its_succeeded(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    d = deployments(server)
    meta = d.create(nim("never-ready"))  # never ready by itself: the test says when it is
    name = d.pod_name(meta)
    wait_phases(server, {meta: TE.RUNNING}, timeout=60)
    pod = core_v1.read_namespaced_pod(name, namespace)
    # Ready, as after a passed readiness probe (kwok's never-ready pod runs; the test is its
    # probe): GetTask finds it serving and writes served-at.
    raw = client.ApiClient().sanitize_for_serialization(pod.status.container_statuses[0])
    raw.update(ready=True, started=True)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    core_v1.patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                ],
                "containerStatuses": [raw],
            }
        },
    )
    wait_phases(server, {meta: TE.SUCCEEDED}, timeout=30)
    assert "nim-agent.dev/served-at" in annotations(core_v1, namespace, name)
    before = server.metric("nim_agent_serving_interruptions_total")

    # The blip: unready for a few sweeps, then ready again.
    unready(core_v1, namespace, name)
    answers = Counter()
    for _ in range(8):  # 8 x 0.5 s: several cleanup sweeps (every 1 s)
        resource = get(server, meta)
        answers[f"{phase_name(resource.phase)}"] += 1
        assert resource.phase == TE.SUCCEEDED, resource.message
        time.sleep(0.5)
    assert "has served since" in get(server, meta).message
    pod = core_v1.read_namespaced_pod(name, namespace)
    assert holds_resources(pod) and stop_record_of(pod) is None
    wait_for(
        lambda: server.metric("nim_agent_serving_interruptions_total") >= before + 1,
        timeout=10,
        what="the interruption to be counted",
    )
    COUNTS["readiness blips after serving survived"] += 1

    # Unready past the unhealthy window (20 s here): stopped, and SUCCEEDED stands.
    stopped = wait_for(
        lambda: record(core_v1, namespace, name),
        timeout=90,
        what="the server to be stopped after the unhealthy window",
    )
    assert stopped["cause"] == "unhealthy" and stopped["phase"] == "SUCCEEDED", stopped
    resource = get(server, meta)
    assert resource.phase == TE.SUCCEEDED and "unhealthy" in resource.message, resource.message
    assert server.metric("nim_agent_deletions_total", cause="unhealthy") >= 1


def test_an_evicted_server_stays_retryable_through_sweeps_and_a_connector_restart(
    connectors: Connectors,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    first = connectors.start(SETTINGS, command="nim-agent")
    d = deployments(first)
    meta = d.create(nim("ready"))
    name = d.pod_name(meta)
    wait_phases(first, {meta: TE.SUCCEEDED}, timeout=60)
    # A node-pressure eviction, as the kubelet writes it (kwok plays no evictions).
    core_v1.patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory. Threshold quantity: 100Mi.",
            }
        },
    )
    # The watch brings the kubelet's status to the connector's cache.
    wait_phases(first, {meta: TE.RETRYABLE_FAILED}, timeout=30)
    seen = [get(first, meta) for _ in range(3)]
    wait_for(
        lambda: record(core_v1, namespace, name),
        timeout=30,
        what="the verdict to be recorded on the pod",
    )
    time.sleep(3)  # more sweeps
    seen += [get(first, meta) for _ in range(3)]
    first.kill()
    COUNTS["faults injected (connector SIGKILLs)"] += 1
    second = connectors.start(SETTINGS, command="nim-agent")
    d.server = second
    seen += [get(second, meta) for _ in range(3)]
    phases = Counter(phase_name(r.phase) for r in seen)
    assert phases == {"RETRYABLE_FAILED": len(seen)}, phases
    assert all("evicted" in r.message for r in seen), {r.message for r in seen}
    assert (record(core_v1, namespace, name) or {})["phase"] == "RETRYABLE_FAILED"


# -- two replicas ------------------------------------------------------------------------------

LEASE_DURATION_S = 6


def replica_settings(lease: str) -> dict[str, str]:
    """Replicas of one deployment share their cleanup Lease."""
    return {
        **SETTINGS,
        "NIM_AGENT_LEASE_NAME": lease,
        "NIM_AGENT_LEASE_DURATION": f"{LEASE_DURATION_S}s",
    }


def replicas(connectors: Connectors, lease: str) -> list[ConnectorServer]:
    return [connectors.start(replica_settings(lease), command="nim-agent") for _ in range(2)]


def leaders(servers: list[ConnectorServer]) -> list[ConnectorServer]:
    return [
        s
        for s in servers
        if s.process and s.process.poll() is None and s.metric("nim_agent_leader") == 1
    ]


def test_one_replica_sweeps_and_the_other_takes_over_within_the_lease_duration(
    connectors: Connectors,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    a, b = replicas(connectors, f"lease-{namespace}"[:60])
    [holder] = wait_for(
        lambda: leaders([a, b]) if len(leaders([a, b])) == 1 else None,
        timeout=30,
        what="exactly one replica to hold the cleanup Lease",
    )
    other = b if holder is a else a
    d = deployments(other)
    # Expiring while the holder is dead: only the new holder can stop it.
    meta = d.create(nim("ready"), ttl=timedelta(seconds=8))
    wait_phases(other, {meta: TE.SUCCEEDED}, timeout=60)
    holder.kill()  # mid-sweep: it sweeps every second
    killed = time.monotonic()
    COUNTS["faults injected (connector SIGKILLs)"] += 1
    wait_for(
        lambda: leaders([other]),
        timeout=3 * LEASE_DURATION_S,
        what="the other replica to take over",
    )
    failover = time.monotonic() - killed
    print(f"the other replica held the cleanup Lease {failover:.1f}s after the SIGKILL")
    assert failover <= LEASE_DURATION_S + 3  # + its retry period and a loaded machine's delay
    wait_for(
        lambda: record(core_v1, namespace, d.pod_name(meta)),
        timeout=30,
        what="the new holder to stop the expired server",
    )
    assert other.metric("nim_agent_deletions_total", cause="ttl") >= 1


def test_gettasks_over_both_replicas_all_succeed_through_a_rolling_restart(
    connectors: Connectors,
    kubeconfig_path: Path,
    connector_logs: Path,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    lease = f"lease-{namespace}"[:60]
    servers = replicas(connectors, lease)
    d = deployments(servers[0])
    metas = [d.create(nim("ready")) for _ in range(5)]
    wait_phases(servers[0], dict.fromkeys(metas, TE.SUCCEEDED), timeout=60)
    # As propeller reaches a headless Service: one channel, round_robin over the replicas.
    target = "ipv4:" + ",".join(s.address for s in servers)
    channel = grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
    stub = agent_pb2_grpc.AsyncAgentServiceStub(channel)
    errors: list[str] = []
    answers: Counter[str] = Counter()
    done = threading.Event()

    def poll() -> None:
        i = 0
        while not done.is_set() or i < 200:
            try:
                resource = stub.GetTask(get_request(metas[i % len(metas)]), timeout=10).resource
                answers[phase_name(resource.phase)] += 1
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
            i += 1
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        # A rolling restart, one replica at a time (maxUnavailable 1): SIGTERM (in-flight calls
        # finish, the channel sends new ones to the other replica), then a new process on the
        # same address, as a new pod behind the same Service.
        for i in range(len(servers)):
            time.sleep(1)
            old = servers[i]
            old.stop()
            new = ConnectorServer(
                kubeconfig_path,
                settings=replica_settings(lease),
                command="nim-agent",
                log_path=connector_logs / f"rolled-{i}.log",
            )
            new.port, new.metrics_port = old.port, old.metrics_port
            connectors.started.append(new.start())
            servers[i] = new
            d.server = new  # the tracker aborts what the test made through a live replica
        time.sleep(2)
    finally:
        done.set()
        poller.join(timeout=120)
        channel.close()
    total = sum(answers.values()) + len(errors)
    COUNTS["GetTasks during a rolling restart"] += total
    assert total >= 200
    assert not errors, errors[:5]
    assert answers == {"SUCCEEDED": total}, answers
