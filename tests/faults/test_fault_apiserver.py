"""The API server goes away and comes back: the connector's watch reconnects (through 410 Gone,
which a restarted apiserver answers for any resourceVersion older than its new watch cache), and
GetTask tells the truth again soon after (the time is printed; on a quiet machine well under a
second, see the README's fault figures), with no pod duplicated or lost.

The bound asserted, BACK_WITHIN_S, is a margin for a loaded 2-core machine that runs the whole
control plane (a restarted apiserver is busy with every controller's relist), not a target.

The outage is real: the kube-apiserver process is SIGKILLed and started again by kwokctl with its
own flags (tests/faults/controlplane.py); etcd keeps the state.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nim_agent import metrics
from nim_agent.contract import OWNED_BY_US
from nim_agent.kube import Json, Kube
from nim_agent.runtime import supervised
from nim_agent.watch import PodCache
from tests.cluster import our_pods
from tests.configs import simulated_nim as nim
from tests.connector_server import Connectors, ConnectorServer, delete_request
from tests.faults.controlplane import ControlPlane
from tests.faults.support import (
    COUNTS,
    TE,
    Deployments,
    get,
    initializing,
    phase_name,
    try_get,
    wait_phases,
)

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

SETTINGS = {
    "NIM_AGENT_UNSCHEDULABLE_TIMEOUT": "10m",
    "NIM_AGENT_REAP_INTERVAL": "1s",
    "NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD": "2",
}
BACK_WITHIN_S = 30.0


@pytest.fixture
def server(connectors: Connectors) -> ConnectorServer:
    return connectors.start(SETTINGS, command="nim-agent")


def test_apiserver_restart_with_deployments_in_every_phase(
    server: ConnectorServer,
    control_plane: ControlPlane,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    d = deployments(server)
    expected: dict[bytes, int] = {
        d.create(nim("ready")): TE.SUCCEEDED,
        d.create(nim("never-ready")): TE.RUNNING,
        d.create(initializing("10m")): TE.INITIALIZING,
        d.create(nim("ready", gpu=64)): TE.WAITING_FOR_RESOURCES,
        d.create(nim("crashloop")): TE.FAILED,
    }
    aborted = d.create(nim("ready"))
    # Moves on after the API server is back: the watch must deliver what happens then.
    progressing = d.create(initializing("12s"))
    wait_phases(server, {**expected, aborted: TE.SUCCEEDED}, timeout=90)
    server.stub.DeleteTask(delete_request(aborted), timeout=10)
    wait_phases(server, {**expected, progressing: TE.INITIALIZING}, timeout=30)
    deadline = time.monotonic() + 30
    while d.pod_name(aborted) in {p.metadata.name for p in our_pods(core_v1, namespace)}:
        assert time.monotonic() < deadline, "the aborted deployment is still there"
        time.sleep(0.2)
    before = {p.metadata.name: p.metadata.uid for p in our_pods(core_v1, namespace)}
    # The aborted one is gone; the crash-looping one is stopped (kept, with its verdict).
    assert len(before) == 6, before
    gets_before = server.metric("nim_agent_kube_requests_total", verb="get")

    # -- the outage: answers while the API server is down must never be a wrong verdict -------
    outage_answers: list[str] = []
    plane_killed = time.monotonic()
    control_plane.kill("kube-apiserver")
    during = None
    while time.monotonic() - plane_killed < 4:
        for meta, want in expected.items():
            resource, error = try_get(server, meta, timeout=3)
            if resource is None:
                outage_answers.append(error)
            else:
                outage_answers.append(phase_name(resource.phase))
                name = json.loads(meta)["name"]
                assert resource.phase == want, (
                    f"during the outage GetTask said {phase_name(resource.phase)} "
                    f"({resource.message}) for {name}, expected {phase_name(want)}"
                )
        # A CreateTask sent while the API server is down fails; Flyte retries it later.
        if during is None:
            during = d.request(nim("ready"))
            with pytest.raises(Exception):  # noqa: B017  any gRPC error is fine here
                server.stub.CreateTask(during, timeout=5)
    control_plane.start_missing()
    control_plane.wait_ready()
    back = time.monotonic()

    # -- back: every GetTask right again soon ------------------------------------------------
    wait_phases(server, expected, timeout=BACK_WITHIN_S, interval=0.05)
    right_after = time.monotonic() - back
    assert right_after <= BACK_WITHIN_S

    # The retried create makes exactly one pod.
    retried = server.stub.CreateTask(during, timeout=10).resource_meta
    assert server.stub.CreateTask(during, timeout=10).resource_meta == retried
    d.metas["during-outage"] = retried
    assert get(server, retried).phase != TE.FAILED

    # The watch reconnected (through 410 Gone) and GetTask is answered from it again: polling
    # the deployments whose pods exist sends no more GETs to the API server.
    living = [m for m, phase in expected.items() if phase != TE.FAILED]

    def cache_serves() -> bool:
        first = server.metric("nim_agent_kube_requests_total", verb="get")
        for meta in living:
            get(server, meta)
        return server.metric("nim_agent_kube_requests_total", verb="get") == first

    deadline = time.monotonic() + 60
    while not cache_serves():
        assert time.monotonic() < deadline, "GetTask still reads the API server directly"
        time.sleep(0.5)
    assert server.metric("nim_agent_watch_restarts_total", reason="expired") >= 1
    assert server.metric("nim_agent_kube_requests_total", verb="get") >= gets_before

    # What changes after the return reaches GetTask through the watch.
    wait_phases(server, {progressing: TE.SUCCEEDED, retried: TE.SUCCEEDED}, timeout=60)

    # No pod duplicated or lost: the same pods (same uids), plus the one created after.
    after = {p.metadata.name: p.metadata.uid for p in our_pods(core_v1, namespace)}
    assert {k: after.get(k) for k in before} == before
    assert set(after) - set(before) == {d.pod_name(retried)}
    for meta in expected:
        name = d.pod_name(meta)
        assert (name in after) == (name in before)

    print(
        f"GetTask right {right_after:.2f}s after /readyz; "
        f"answers during the outage: {dict(Counter(outage_answers))}"
    )
    control_plane.heal()


def test_a_connector_started_while_the_apiserver_is_down_serves_once_it_is_back(
    server: ConnectorServer,
    connectors: Connectors,
    control_plane: ControlPlane,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    d = deployments(server)
    metas = {d.create(nim("ready")): TE.SUCCEEDED, d.create(nim("never-ready")): TE.RUNNING}
    wait_phases(server, metas, timeout=60)
    server.kill()
    COUNTS["faults injected (connector SIGKILLs)"] += 1
    control_plane.kill("kube-apiserver")
    try:
        # Both come back after, say, a node reboot: the connector first.
        late = connectors.start(SETTINGS, command="nim-agent")
    finally:
        control_plane.start_missing()
        control_plane.wait_ready()
    back = time.monotonic()
    try:
        d.server = late
        wait_phases(late, metas, timeout=BACK_WITHIN_S, interval=0.05)
        right_after = time.monotonic() - back
        assert right_after <= BACK_WITHIN_S
        print(f"a connector started during the outage was right {right_after:.2f}s after /readyz")
        # An abort sent now works too (the tracker aborts the rest through this connector).
        late.stub.DeleteTask(delete_request(next(iter(metas))), timeout=10)
        d.abort_all()
    finally:
        late.stop()
        control_plane.heal()


# -- 410 Gone: a watch whose resourceVersion is too old relists and carries on ----------------


def pod_body(name: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "nim-agent"}},
        "spec": {
            "containers": [{"name": "nim", "image": "nvcr.io/nim/x:1"}],
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
    }


class StaleFirstList:
    """The real Kube, except that the cache's first list returns an old snapshot.

    Stands for a cache that listed long ago, before the changes made since. Only the snapshot is
    replayed: the 410 comes from the real API server, for the snapshot's real resourceVersion.
    """

    def __init__(self, kube: Kube, snapshot: tuple[list[Json], str], cache: list[PodCache]):
        self._kube = kube
        self._snapshot: tuple[list[Json], str] | None = snapshot
        self._cache = cache
        self.relists: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kube, name)

    async def list_pods(self, namespace: str | None, **kw: Any) -> tuple[list[Json], str]:
        if self._snapshot is not None:
            snapshot, self._snapshot = self._snapshot, None
            return snapshot
        # A relist: what does the cache answer while it runs?
        [cache] = self._cache
        assert namespace is not None
        self.relists.append(
            {"fresh": cache.fresh(namespace), "a": cache.lookup(namespace, "a")[1] is not None}
        )
        return await self._kube.list_pods(namespace, **kw)


async def test_a_watch_410_gone_relists_and_carries_on(
    kubeconfig_path: Path, control_plane: ControlPlane, namespace: str
) -> None:
    kube = await Kube.connect(str(kubeconfig_path))
    try:
        await kube.create_pod(namespace, pod_body("a"))
        await kube.create_pod(namespace, pod_body("b"))
        snapshot = await kube.list_pods(namespace, label_selector=OWNED_BY_US)
        # Changes the old snapshot does not know about...
        await kube.delete_pod(namespace, "a", grace_seconds=0)
        await kube.create_pod(namespace, pod_body("c"))
        # ...and a restarted apiserver, whose watch cache starts after the snapshot: the
        # snapshot's resourceVersion is now too old to watch from.
        await asyncio.to_thread(control_plane.restart_apiserver, 0.5)
        await kube.close()
        kube = await Kube.connect(str(kubeconfig_path))

        holder: list[PodCache] = []
        stale = StaleFirstList(kube, snapshot, holder)

        async def factory() -> Any:
            return stale

        expired = metrics.WATCH_RESTARTS.labels("expired")._value.get()
        cache = PodCache(factory, label_selector=OWNED_BY_US, namespaces=[namespace])
        holder.append(cache)
        cache.start(supervised)
        try:
            async with asyncio.timeout(30):
                await cache.wait_for(namespace, "c", lambda p: p is not None)
                await cache.wait_for(namespace, "a", lambda p: p is None)
                while not cache.fresh(namespace):  # noqa: ASYNC110  relisted; watch next
                    await asyncio.sleep(0.05)
            assert metrics.WATCH_RESTARTS.labels("expired")._value.get() == expired + 1
            assert cache.lookup(namespace, "b")[1] is not None
            # While relisting after the 410 the cache must not claim to know: "a" was deleted
            # long ago, and a fresh answer from the old snapshot would say it exists.
            assert stale.relists == [{"fresh": False, "a": False}], stale.relists
            # And it carries on watching.
            await kube.create_pod(namespace, pod_body("d"))
            await kube.delete_pod(namespace, "b", grace_seconds=0)
            async with asyncio.timeout(30):
                await cache.wait_for(namespace, "d", lambda p: p is not None)
                await cache.wait_for(namespace, "b", lambda p: p is None)
            COUNTS["watch 410 Gone relists"] += 1
        finally:
            await cache.stop()
            for name in ("b", "c", "d"):
                await kube.delete_pod(namespace, name, grace_seconds=0)
    finally:
        await kube.close()
        await asyncio.to_thread(control_plane.heal)
