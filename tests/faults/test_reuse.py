"""Warm servers (NIMTask(reuse=...)) on the local control plane: one server for many executions.

- A second execution attaches to the running server (no second pod), each holder with its own
  endpoint (a Service of its own selecting the shared pod); a retried create is one holder.
- 50 executions creating at once make exactly one server, and all 50 are held by it.
- Abort and teardown release one holder each; the server keeps serving the others; once the
  last is gone, it is stopped after its idle ttl, not before.
- A holder whose execution vanished (no teardown, no abort) ends at its own ttl.
- The idle stop is conditional on the pod's resourceVersion: a holder that attached after the
  sweep looked keeps its server.
- A stopped server is never attached to: the next execution gets the key's next name.
- Isolation: namespaces, Secret references, ServiceAccounts, the project-domain scope and
  conflicting adapter sources never share.

Pods are kwok's (devcluster/kwok): Ready after a second or two, nothing listens, so the
``/v1/models`` check is off here (tests/e2e/test_reuse_real_node.py runs the real thing).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from nim_agent import NIM, NIMSecrets, NIMTask, Reuse
from nim_agent.contract import HOLDER_PREFIX, LABEL_SHARE_KEY, StopRecord
from nim_agent.kube import Kube
from nim_agent.reaper import stop_deployment
from tests.cluster import KUBECONFIG, REPO_ROOT, holds_resources, our_pods, our_services, wait_for
from tests.configs import simulated_nim as nim
from tests.connector_server import (
    Connectors,
    ConnectorServer,
    create_request,
    delete_request,
    exec_name,
    execution,
    task_template,
)
from tests.faults.support import COUNTS, TE, get, wait_phases

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

IDLE = timedelta(seconds=4)
SETTINGS = {"NIM_AGENT_REAP_INTERVAL": "1s", "NIM_AGENT_SERVICE_ACCOUNTS": "default,nim"}


def shared_task(
    config: NIM | None = None,
    *,
    ttl: timedelta = timedelta(hours=1),
    reuse: Reuse | None = None,
    name: str = "reuse",
) -> Any:
    task = NIMTask(
        name=f"faults.{name}",
        nim=config or nim("ready"),
        ttl=ttl,
        reuse=reuse or Reuse(idle_ttl=IDLE),
    )
    return task_template(task)


class Holders:
    """The executions one test attaches, through one connector; each released after the test
    (abort), so that the servers go idle and stop (a stopped pod holds nothing: no leak)."""

    def __init__(self, server: ConnectorServer, namespace: str) -> None:
        self.server = server
        self.namespace = namespace
        self.metas: list[bytes] = []

    def create(
        self,
        template: Any,
        *,
        name: str | None = None,
        project: str = "flytesnacks",
        namespace: str | None = None,
    ) -> bytes:
        request = create_request(
            template, execution(name or exec_name(), project=project), namespace or self.namespace
        )
        meta: bytes = self.server.stub.CreateTask(request, timeout=30).resource_meta
        self.metas.append(meta)
        return meta

    def abort(self, meta: bytes) -> None:
        self.server.stub.DeleteTask(delete_request(meta), timeout=30)

    def release_all(self) -> None:
        for meta in self.metas:
            self.abort(meta)


@pytest.fixture
def server(connectors: Connectors) -> ConnectorServer:
    return connectors.start(SETTINGS, command="nim-agent")


@pytest.fixture
def holders(server: ConnectorServer, namespace: str) -> Any:
    made = Holders(server, namespace)
    yield made
    made.release_all()


def succeed_without_failing(server: ConnectorServer, metas: list[bytes], timeout: float) -> None:
    """GetTask every holder from its CreateTask on until all are SUCCEEDED; none may answer a
    terminal failure on the way (flytepropeller would stop there: a fresh holder that the watch
    cache does not show yet must not read as "no longer holds")."""
    deadline = time.monotonic() + timeout
    waiting = list(metas)
    while waiting:
        for meta in list(waiting):
            resource = get(server, meta)
            assert resource.phase not in (TE.FAILED, TE.RETRYABLE_FAILED), resource.message
            if resource.phase == TE.SUCCEEDED:
                waiting.remove(meta)
        assert time.monotonic() < deadline, f"{len(waiting)} holders not SUCCEEDED in time"
        time.sleep(0.05)


def meta_of(meta: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(meta)
    return doc


def shared_pods(core_v1: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return [p for p in our_pods(core_v1, namespace) if LABEL_SHARE_KEY in p.metadata.labels]


def records(pod: client.V1Pod) -> dict[str, dict[str, Any]]:
    annotations = pod.metadata.annotations or {}
    return {
        k[len(HOLDER_PREFIX) :]: json.loads(v)
        for k, v in annotations.items()
        if k.startswith(HOLDER_PREFIX)
    }


def stopped(core_v1: client.CoreV1Api, namespace: str, name: str) -> StopRecord | None:
    pod = core_v1.read_namespaced_pod(name, namespace)
    return StopRecord.from_annotation((pod.metadata.annotations or {}).get("nim-agent.dev/stopped"))


def test_a_second_execution_attaches_to_the_running_server_with_an_endpoint_of_its_own(
    server: ConnectorServer, holders: Holders, core_v1: client.CoreV1Api, namespace: str
) -> None:
    template = shared_task()
    first = holders.create(template)
    wait_phases(server, {first: TE.SUCCEEDED}, timeout=60)
    [pod] = shared_pods(core_v1, namespace)

    started = time.monotonic()
    second = holders.create(template)
    succeed_without_failing(server, [second], timeout=30)
    attach_s = time.monotonic() - started

    assert [p.metadata.name for p in shared_pods(core_v1, namespace)] == [pod.metadata.name]
    a, b = meta_of(first), meta_of(second)
    assert a["shared"] == b["shared"] == pod.metadata.name
    assert a["name"] != b["name"] and a["endpoint"] != b["endpoint"]
    # Each endpoint is a Service of its own, selecting the one shared pod.
    for m in (a, b):
        service = core_v1.read_namespaced_service(m["name"], namespace)
        assert service.spec.selector == {"nim-agent.dev/deployment": pod.metadata.name}
        assert m["endpoint"] == f"http://{m['name']}.{namespace}.svc.cluster.local:8000"
        assert service.metadata.labels["nim-agent.dev/holder"] == m["name"]
    pod = core_v1.read_namespaced_pod(pod.metadata.name, namespace)
    assert set(records(pod)) == {a["name"], b["name"]}
    # A shared server carries no execution's identity (the reaper's superseded rule and
    # teardowns of one execution never touch it).
    assert "nim-agent.dev/execution" not in pod.metadata.labels
    resource = get(server, second)
    assert resource.outputs.literals["endpoint"].scalar.primitive.string_value == b["endpoint"]
    assert server.metric("nim_agent_shared_attaches_total", server="serving") == 1
    assert server.metric("nim_agent_shared_attaches_total", server="created") == 1
    assert server.metric("nim_agent_cold_starts_avoided_total") == 1
    assert server.metric("nim_agent_deployments_created_total") == 1
    # A retried CreateTask of the second execution is the same holder.
    again = holders.create(template, name=_execution_name(pod, b["name"]))
    assert again == second
    assert len(records(core_v1.read_namespaced_pod(pod.metadata.name, namespace))) == 2
    print(f"\nattach to a serving server -> SUCCEEDED in {attach_s:.2f}s (kwok, polled 0.1s)")


def _execution_name(pod: client.V1Pod, holder: str) -> str:
    return str(records(pod)[holder]["execution"]["execution"])


def test_fifty_executions_creating_at_once_make_exactly_one_server(
    server: ConnectorServer, holders: Holders, core_v1: client.CoreV1Api, namespace: str
) -> None:
    template = shared_task()
    with ThreadPoolExecutor(max_workers=50) as pool:
        metas = list(pool.map(lambda _: holders.create(template), range(50)))
    COUNTS["concurrent shared creates"] += len(metas)
    names = {meta_of(m)["shared"] for m in metas}
    assert len(names) == 1, names
    [pod] = shared_pods(core_v1, namespace)
    assert len(our_pods(core_v1, namespace)) == 1
    assert len(records(pod)) == 50
    succeed_without_failing(server, metas, timeout=120)
    assert server.metric("nim_agent_deployments_created_total") == 1
    assert server.metric("nim_agent_cold_starts_avoided_total") == 49


def test_abort_and_teardown_release_one_holder_each_and_the_idle_ttl_stops_the_server(
    server: ConnectorServer, holders: Holders, core_v1: client.CoreV1Api, namespace: str
) -> None:
    template = shared_task()
    first, second = holders.create(template), holders.create(template)
    wait_phases(server, {first: TE.SUCCEEDED, second: TE.SUCCEEDED}, timeout=60)
    a, b = meta_of(first), meta_of(second)
    name = a["shared"]

    holders.abort(first)  # flytepropeller's DeleteTask
    pod = core_v1.read_namespaced_pod(name, namespace)
    assert records(pod)[a["name"]]["ended_by"] == "abort"
    assert "ended" not in records(pod)[b["name"]]
    assert holds_resources(pod) and {s.metadata.name for s in our_services(core_v1, namespace)} == {
        b["name"]
    }
    time.sleep(IDLE.total_seconds() + 2)  # past an idle ttl: still held by the second
    assert stopped(core_v1, namespace, name) is None
    assert get(server, second).phase == TE.SUCCEEDED

    # The teardown task (here its CLI twin) with the second's endpoint releases it too.
    out = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/nim-agent"), "teardown", b["endpoint"]],
        env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"released {namespace}/{b['name']} from the shared NIM server {name}" in out
    released = time.monotonic()
    record = wait_for(
        lambda: stopped(core_v1, namespace, name),
        timeout=IDLE.total_seconds() + 30,
        what="the idle server to be stopped",
    )
    waited = time.monotonic() - released
    assert record.cause == "idle", record
    assert waited >= IDLE.total_seconds() - 1.5, waited  # not before its idle ttl
    assert record.phase == "SUCCEEDED" and "idle for" in record.message
    wait_for(
        lambda: not holds_resources(core_v1.read_namespaced_pod(name, namespace)),
        timeout=30,
        what="the kubelet (kwok's stage) to end the stopped server",
    )
    assert server.metric("nim_agent_deletions_total", cause="idle") == 1
    assert server.metric("nim_agent_shared_releases_total", by="abort") == 1
    assert server.metric("nim_agent_shared_releases_total", by="teardown") == 0  # the CLI's own
    print(f"\nlast release -> stopped after {waited:.1f}s (idle ttl {IDLE.total_seconds():.0f}s)")


def test_a_holder_whose_execution_vanished_ends_at_its_own_ttl(
    server: ConnectorServer, holders: Holders, core_v1: client.CoreV1Api, namespace: str
) -> None:
    short = holders.create(shared_task(ttl=timedelta(seconds=6)))
    long = holders.create(shared_task(ttl=timedelta(hours=1)))
    wait_phases(server, {short: TE.SUCCEEDED, long: TE.SUCCEEDED}, timeout=60)
    s, held = meta_of(short), meta_of(long)
    assert s["shared"] == held["shared"]  # the ttl is the holder's, not the configuration's
    name = s["shared"]
    # Past its until, the vanished holder's record is compacted away by the sweep; the server
    # stays, held by the other; its idle deadline is kept.
    pod = wait_for(
        lambda: (
            p
            if s["name"] not in records(p := core_v1.read_namespaced_pod(name, namespace))
            else None
        ),
        timeout=40,
        what="the expired holder's record to be compacted",
    )
    assert set(records(pod)) == {held["name"]}
    assert "nim-agent.dev/idle-until" in pod.metadata.annotations
    assert stopped(core_v1, namespace, name) is None
    holders.abort(long)
    record = wait_for(
        lambda: stopped(core_v1, namespace, name),
        timeout=IDLE.total_seconds() + 30,
        what="the server to stop once its last holder is gone",
    )
    assert record.cause == "idle"


def test_the_idle_stop_fails_when_a_holder_attached_after_the_sweep_looked(
    server: ConnectorServer, holders: Holders, core_v1: client.CoreV1Api, namespace: str
) -> None:
    # The default idle ttl of these tests (4 s): the sweep leaves the server alone while a holder
    # is live, and stops it once the fixture has released both (a warm server left is a leak).
    template = shared_task()
    first = holders.create(template)
    wait_phases(server, {first: TE.SUCCEEDED}, timeout=60)
    name = meta_of(first)["shared"]

    async def race() -> tuple[bool, str]:
        kube = await Kube.connect(str(KUBECONFIG))
        try:
            looked = await kube.get_pod(namespace, name)  # what a sweep saw ...
            assert looked is not None
            holders.create(template)  # ... before this execution attached
            record = StopRecord("idle", datetime.now(UTC), "SUCCEEDED", "", "")
            version = looked["metadata"]["resourceVersion"]
            done = await stop_deployment(kube, looked, record, precondition=version)
            return done, version
        finally:
            await kube.close()

    done, version = asyncio.run(race())
    assert not done  # Conflict: the pod changed since the sweep's look
    pod = core_v1.read_namespaced_pod(name, namespace)
    assert pod.metadata.resource_version != version
    assert holds_resources(pod) and stopped(core_v1, namespace, name) is None
    assert len(records(pod)) == 2


def test_a_stopped_server_is_never_attached_to_the_next_execution_gets_a_new_one(
    server: ConnectorServer, holders: Holders, core_v1: client.CoreV1Api, namespace: str
) -> None:
    template = shared_task()
    first = holders.create(template)
    wait_phases(server, {first: TE.SUCCEEDED}, timeout=60)
    old = meta_of(first)["shared"]
    # Stopped (as the sweep stops a failed or expired server): its pod keeps its name.
    core_v1.patch_namespaced_pod(
        old,
        namespace,
        {
            "metadata": {
                "annotations": {
                    "nim-agent.dev/stopped": json.dumps(
                        {
                            "cause": "failure",
                            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "phase": "FAILED",
                            "reason": "CrashLoop",
                            "message": "stopped by the test",
                        }
                    )
                }
            },
            "spec": {"activeDeadlineSeconds": 1},
        },
    )
    second = holders.create(template)
    new = meta_of(second)["shared"]
    assert new != old
    pod = core_v1.read_namespaced_pod(new, namespace)
    assert pod.metadata.labels["nim-agent.dev/generation"] == "1"
    assert (
        pod.metadata.labels[LABEL_SHARE_KEY]
        == core_v1.read_namespaced_pod(old, namespace).metadata.labels[LABEL_SHARE_KEY]
    )
    wait_phases(server, {second: TE.SUCCEEDED, first: TE.FAILED}, timeout=60)


@pytest.fixture
def other_namespace(make_namespace: Callable[[str], str]) -> str:
    return make_namespace("reuse-other")


def test_isolation_namespaces_secrets_service_accounts_scope_and_adapter_sources(
    server: ConnectorServer,
    holders: Holders,
    core_v1: client.CoreV1Api,
    namespace: str,
    other_namespace: str,
) -> None:
    core_v1.create_namespaced_service_account(namespace, {"metadata": {"name": "nim"}})
    secrets = NIMSecrets(
        ngc_image_secret="ngc-pull",
        ngc_secret_key="api_key",
        secrets_prefix="",
        ngc_secret_group="team-b-ngc",
    )
    peft = {"NIM_PEFT_SOURCE": "/opt/nim/loras"}
    cases = {
        "base": shared_task(),
        "other secrets": shared_task(nim("ready", secrets=secrets)),
        "other service account": shared_task(nim("ready", service_account="nim")),
        "project-domain scope": shared_task(reuse=Reuse(scope="project-domain", idle_ttl=IDLE)),
        "adapters a/lora": shared_task(
            nim("ready", env=peft, lora_adapter_mem="1Gi", hf_repo_ids=["a/lora"])
        ),
    }
    made = {what: holders.create(t) for what, t in cases.items()}
    made["same, other namespace"] = holders.create(cases["base"], namespace=other_namespace)
    made["project-domain, other project"] = holders.create(
        cases["project-domain scope"], project="other-project"
    )
    servers = {what: meta_of(m)["shared"] for what, m in made.items()}
    assert len(set(servers.values())) == len(servers), servers  # no two share
    # Same configuration, same namespace: shares; with the project-domain scope, only within
    # the project.
    assert meta_of(holders.create(cases["base"]))["shared"] == servers["base"]
    same_project = holders.create(cases["project-domain scope"])
    assert meta_of(same_project)["shared"] == servers["project-domain scope"]
    # An adapter name bound to another source on the server: refused, naming both.
    clash = holders.create(
        shared_task(nim("ready", env=peft, lora_adapter_mem="1Gi", hf_repo_ids=["b/lora"]))
    )
    resource = get(server, clash)
    assert resource.phase == TE.FAILED, resource.message
    assert "adapter lora is hf:a/lora on the shared server, not hf:b/lora" in resource.message
    # The shared pods carry a share key each, and no two the same.
    keys = [p.metadata.labels[LABEL_SHARE_KEY] for p in shared_pods(core_v1, namespace)]
    keys += [p.metadata.labels[LABEL_SHARE_KEY] for p in shared_pods(core_v1, other_namespace)]
    assert len(keys) == len(set(keys)) == len(servers)
    COUNTS["isolation cases (servers not shared)"] += len(servers)


def test_holders_adapters_reach_the_server_s_annotations_for_its_adapter_sync_sidecar(
    server: ConnectorServer, holders: Holders, core_v1: client.CoreV1Api, namespace: str
) -> None:
    peft = {"NIM_PEFT_SOURCE": "/opt/nim/loras"}

    def with_adapter(repo: str) -> Any:
        return shared_task(nim("ready", env=peft, lora_adapter_mem="1Gi", hf_repo_ids=[repo]))

    first = holders.create(with_adapter("acme/first-lora"))
    second = holders.create(with_adapter("acme/second-lora"))
    wait_phases(server, {first: TE.SUCCEEDED, second: TE.SUCCEEDED}, timeout=60)
    [pod] = shared_pods(core_v1, namespace)
    # The first holder's adapter came with the pod (its init container), the second's through
    # the sidecar, which follows the pod's annotations (downward API volume).
    init = [c.name for c in pod.spec.init_containers]
    assert init == ["lora-downloader", "adapter-sync"]
    sidecar = pod.spec.init_containers[1]
    assert sidecar.restart_policy == "Always"
    [volume] = [v for v in pod.spec.volumes if v.downward_api is not None]
    assert volume.downward_api.items[0].field_ref.field_path == "metadata.annotations"
    from nim_agent.contract import wanted_adapters

    assert wanted_adapters(pod.metadata.annotations) == {
        "first-lora": {"hf": "acme/first-lora"},
        "second-lora": {"hf": "acme/second-lora"},
    }
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["NIM_PEFT_REFRESH_INTERVAL"] == "5"  # NIM rescans for new folders
