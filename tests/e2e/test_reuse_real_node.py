"""Warm servers for real: one NIM stand-in on the real node, adapters added to it while it runs.

On the local control plane's real node (tests/realnode.py): the kubelet runs the shared server's
pod with its native sidecar `adapter-sync`, rewrites the pod's downward API annotations file when
a holder attaches, the sidecar downloads the holder's adapter from the Hugging Face Hub stand-in
into NIM_PEFT_SOURCE, the NIM stand-in picks the new folder up on its NIM_PEFT_REFRESH_INTERVAL
scan (as NIM's dynamic LoRA does), and the connector answers SUCCEEDED for that holder only once
``GET /v1/models`` lists its adapter (through the API server's pod proxy: the connector runs on
this machine). Adapters from task inputs reach the same sidecar through flytekit's data access
(nim_agent/flyte_download.py), which tests/unit/test_adapter_sync.py runs, as the program, against
the NIM stand-in; in a pod that sidecar runs in an image with flytekit (the connector's
adapter_inputs_image), which this machine's real node does not have yet.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from flyteidl.core import execution_pb2
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.models.literals import Literal
from kubernetes import client

from nim_agent import NIM, NIMEndpoint, NIMTask, Reuse
from nim_agent.contract import LABEL_SHARE_KEY, adapter_name
from tests.cluster import our_pods, wait_for
from tests.connector_server import (
    Connectors,
    ConnectorServer,
    create_request,
    delete_request,
    exec_name,
    execution,
    poll,
    task_template,
)
from tests.e2e.test_serving_real_node import (
    SERVE_TIMEOUT_S,
    images,  # noqa: F401  (a fixture)
    ngc_key,  # noqa: F401  (a fixture)
    service_proxy_post,
    standin_nim,
)

TE = execution_pb2.TaskExecution
pytestmark = pytest.mark.real_node
SETTINGS = {
    "NIM_AGENT_SERVING_CHECK": "proxy",  # the connector runs on the host, outside the cluster
    "NIM_AGENT_SERVING_WINDOW": "60s",
    "NIM_AGENT_REAP_INTERVAL": "2s",
}
IDLE_S = 5


@pytest.fixture(scope="module")
def server(module_connectors: Connectors) -> ConnectorServer:
    return module_connectors.start(SETTINGS, command="nim-agent")


def shared(refs: dict[str, str], repos: list[str]) -> NIM:
    env = {
        "NIM_PEFT_SOURCE": "/opt/nim/loras",
        "STANDIN_STARTUP_SECONDS": "2",
        "NIM_PEFT_REFRESH_INTERVAL": "1",
    }
    return standin_nim(refs, hf_repo_ids=repos, env=env)


def attach(server: ConnectorServer, namespace: str, nim: NIM) -> bytes:
    task = NIMTask(
        name="e2e.reuse",
        nim=nim,
        typed_endpoint=True,
        reuse=Reuse(idle_ttl=timedelta(seconds=IDLE_S)),
    )
    request = create_request(task_template(task), execution(exec_name()), namespace)
    meta: bytes = server.stub.CreateTask(request, timeout=30).resource_meta
    return meta


def typed(resource: Any) -> NIMEndpoint:
    literal = Literal.from_flyte_idl(resource.outputs.literals["endpoint"])
    value: NIMEndpoint = TypeEngine.to_python_value(
        FlyteContextManager.current_context(), literal, NIMEndpoint
    )
    return value


def test_adapters_are_added_to_the_running_shared_server_and_verified_per_holder(
    server: ConnectorServer,
    images: dict[str, str],  # noqa: F811
    api_client: client.ApiClient,
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    first_repo, nemo = images["HF_FIXTURE_REPO"], "standin/llama3-8b-lora-nemo"
    first = attach(server, namespace, shared(images, [first_repo]))
    resource, phases = poll(server, first, timeout=SERVE_TIMEOUT_S, interval=0.5)
    assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
    assert typed(resource).adapters == [adapter_name(first_repo)]
    [pod] = our_pods(core_v1, namespace)
    name = pod.metadata.name
    assert LABEL_SHARE_KEY in pod.metadata.labels

    # A second execution with another adapter: the same pod, its adapter added live.
    started = time.monotonic()
    second = attach(server, namespace, shared(images, [nemo]))
    resource, phases = poll(server, second, timeout=120, interval=0.25)
    hot_add_s = time.monotonic() - started
    assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
    assert f"lists meta/llama3-8b-instruct and adapters {adapter_name(nemo)}" in resource.message
    endpoint = typed(resource)
    assert endpoint.adapters == [adapter_name(nemo)]
    assert [p.metadata.name for p in our_pods(core_v1, namespace)] == [name]
    pod = core_v1.read_namespaced_pod(name, namespace)
    statuses = {s.name: s for s in pod.status.init_container_statuses}
    assert statuses["adapter-sync"].restart_count == 0 and statuses["adapter-sync"].started
    assert pod.status.container_statuses[0].restart_count == 0  # never restarted for it
    log = core_v1.read_namespaced_pod_log(name, namespace, container="adapter-sync")
    assert f"added {adapter_name(nemo)} from hf:{nemo}" in log
    # The second holder's endpoint (its own Service) answers with its adapter.
    holder = json.loads(second)["name"]
    answer = service_proxy_post(
        api_client,
        namespace,
        holder,
        8000,
        "/v1/chat/completions",
        {"model": adapter_name(nemo), "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer["model"] == adapter_name(nemo)

    # A third asks for an adapter the server has: SUCCEEDED without any download.
    started = time.monotonic()
    third = attach(server, namespace, shared(images, [first_repo]))
    resource, phases = poll(server, third, timeout=60, interval=0.25)
    present_s = time.monotonic() - started
    assert resource.phase == TE.SUCCEEDED, (phases, resource.message)

    # A fourth asks for a repository the Hub does not have: FAILED with the sidecar's words,
    # well before the serving window; the server keeps serving the others.
    missing = attach(server, namespace, shared(images, ["standin/no-such-lora"]))
    resource, phases = poll(server, missing, timeout=60, interval=0.5)
    assert resource.phase == TE.FAILED, (phases, resource.message)
    assert "adapter-sync sidecar said" in resource.message
    assert "no-such-lora" in resource.message
    assert poll(server, second, timeout=10)[0].phase == TE.SUCCEEDED
    pod = core_v1.read_namespaced_pod(name, namespace)
    assert "nim-agent.dev/stopped" not in (pod.metadata.annotations or {})
    print(
        f"\nreal node: attach + hot-add of an adapter -> SUCCEEDED in {hot_add_s:.1f}s; "
        f"adapter already there: {present_s:.1f}s"
    )

    # Released, all four: the server stops after its idle ttl, not before.
    for meta in (first, second, third, missing):
        server.stub.DeleteTask(delete_request(meta), timeout=30)
    released = time.monotonic()
    wait_for(
        lambda: (
            "nim-agent.dev/stopped"
            in (core_v1.read_namespaced_pod(name, namespace).metadata.annotations or {})
        ),
        timeout=IDLE_S + 60,
        what="the idle shared server to be stopped",
    )
    assert time.monotonic() - released >= IDLE_S - 1
    wait_for(
        lambda: core_v1.read_namespaced_pod(name, namespace).status.phase == "Failed",
        timeout=60,
        what="the kubelet to end the stopped server (activeDeadlineSeconds)",
    )
