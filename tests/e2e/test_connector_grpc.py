"""The connector through flytepropeller's protocol: a `pyflyte serve connector` process, called
with flyteidl's AsyncAgentService stub, against the local control plane.

Every test asserts on what the gRPC client receives and on the cluster's state. Pods are
simulated by kwok (`nim-agent.dev/simulate`, see devcluster/kwok): no GPU, no NIM image.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from flyteidl.core import execution_pb2
from kubernetes import client

from nim_agent import NIMTask
from tests.cluster import our_pods, our_services, stop_record_of, stopped_pods, wait_for
from tests.configs import simulated_nim
from tests.connector_server import (
    Connectors,
    ConnectorServer,
    create_request,
    delete_request,
    exec_name,
    execution,
    get_request,
    output_string,
    poll,
    task_template,
)

TE = execution_pb2.TaskExecution
SERVER_SETTINGS = {
    "NIM_AGENT_UNSCHEDULABLE_TIMEOUT": "8s",
    "NIM_AGENT_REAP_INTERVAL": "1s",
    "NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD": "2",
}


def template(mode: str = "ready", ttl: timedelta = timedelta(hours=1), **overrides: Any) -> Any:
    nim = simulated_nim(mode, **overrides)
    return task_template(NIMTask(name=f"e2e.{mode}", nim=nim, ttl=ttl))


@pytest.fixture(scope="module")
def server(module_connectors: Connectors) -> ConnectorServer:
    return module_connectors.start(SERVER_SETTINGS)


def test_create_get_delete_runs_a_nim_to_its_endpoint_and_removes_it(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    meta = server.stub.CreateTask(
        create_request(template(), execution(exec_name()), namespace), timeout=10
    ).resource_meta

    resource, phases = poll(server, meta)

    assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
    [pod] = our_pods(core_v1, namespace)
    service = core_v1.read_namespaced_service(pod.metadata.name, namespace)
    port = service.spec.ports[0].port
    assert output_string(resource) == (
        f"http://{service.metadata.name}.{namespace}.svc.cluster.local:{port}"
    )
    assert service.metadata.owner_references[0].uid == pod.metadata.uid
    assert "gpu" in pod.spec.node_name
    assert resource.custom_info.fields["pod"].string_value == pod.metadata.name

    server.stub.DeleteTask(delete_request(meta), timeout=10)

    wait_for(lambda: not our_pods(core_v1, namespace), timeout=30, what="the pod to go")
    wait_for(
        lambda: not core_v1.list_namespaced_service(namespace).items,
        timeout=30,
        what="the service to go",
    )


def test_create_sent_five_times_for_one_execution_leaves_one_pod(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    request = create_request(template(), execution(exec_name()), namespace)
    metas = {server.stub.CreateTask(request, timeout=10).resource_meta for _ in range(5)}

    assert len(metas) == 1
    assert len(our_pods(core_v1, namespace)) == 1
    # CreateTask writes only the Pod; the Service comes when the server is first found ready.
    assert not core_v1.list_namespaced_service(namespace).items
    resource, _ = poll(server, metas.pop())
    assert resource.phase == TE.SUCCEEDED, resource.message
    assert len(core_v1.list_namespaced_service(namespace).items) == 1


def test_each_retry_attempt_gets_its_own_pod(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    name = exec_name()
    for attempt in (0, 1):
        server.stub.CreateTask(
            create_request(template(), execution(name, retry=attempt), namespace), timeout=10
        )
    assert len(our_pods(core_v1, namespace)) == 2


@pytest.mark.parametrize(
    ("mode", "phase", "words"),
    [
        pytest.param(
            "crashloop", TE.FAILED, ["exit code 1"], id="crashloop fails naming the exit code"
        ),
        pytest.param("oom", TE.FAILED, ["OOMKilled", "mem"], id="oom fails suggesting more mem"),
        pytest.param(
            "image-pull-error",
            TE.FAILED,
            ["not found", "nvcr.io/nim/meta/llama3-8b-instruct"],
            id="image-pull-error fails naming the image",
        ),
        pytest.param(
            "config-error", TE.FAILED, ["secret"], id="config-error fails naming the secret"
        ),
    ],
)
def test_each_simulated_failure_gives_its_phase_and_names_the_cause(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    mode: str,
    phase: int,
    words: list[str],
) -> None:
    meta = server.stub.CreateTask(
        create_request(template(mode), execution(exec_name()), namespace), timeout=10
    ).resource_meta

    resource, phases = poll(server, meta, timeout=90)

    assert resource.phase == phase, (phases, resource.message)
    for word in words:
        assert word.lower() in resource.message.lower(), resource.message
    # The failed server is stopped once its diagnostics are in the message (containers ended
    # by the kubelet, the pod kept with the verdict for the retention)...
    stopped = wait_for(
        lambda: stopped_pods(core_v1, namespace), timeout=60, what="the failed server to be stopped"
    )
    assert stopped[0].spec.active_deadline_seconds == 1
    # ...and later polls keep telling the same story.
    again = server.stub.GetTask(get_request(meta), timeout=10).resource
    assert again.phase == phase
    assert words[0].lower() in again.message.lower()


def test_a_never_ready_server_reports_loading_then_fails_its_startup_window(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    tmpl = template("never-ready", startup_period_seconds=1, startup_failure_threshold=3)
    meta = server.stub.CreateTask(
        create_request(tmpl, execution(exec_name()), namespace), timeout=10
    ).resource_meta

    resource, phases = poll(server, meta, timeout=90)

    assert "RUNNING" in phases, phases
    assert resource.phase == TE.FAILED, (phases, resource.message)
    assert "startup" in resource.message.lower()


def test_too_many_gpus_waits_with_the_schedulers_reason_then_fails(
    server: ConnectorServer, namespace: str
) -> None:
    meta = server.stub.CreateTask(
        create_request(template(gpu=64), execution(exec_name()), namespace), timeout=10
    ).resource_meta

    waiting, _ = poll(server, meta, until=lambda r: r.phase == TE.WAITING_FOR_RESOURCES)
    assert "Insufficient nvidia.com/gpu" in waiting.message

    failed, phases = poll(server, meta, timeout=60)
    assert failed.phase == TE.FAILED, (phases, failed.message)
    assert "Insufficient nvidia.com/gpu" in failed.message


def test_ttl_expiry_removes_the_deployment(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    meta = server.stub.CreateTask(
        create_request(template(ttl=timedelta(seconds=6)), execution(exec_name()), namespace),
        timeout=10,
    ).resource_meta
    resource, _ = poll(server, meta)
    assert resource.phase == TE.SUCCEEDED

    # Stopped at its ttl: the containers ended, the pod kept (with its verdict) for the retention.
    [pod] = wait_for(
        lambda: stopped_pods(core_v1, namespace),
        timeout=60,
        what="the server to be stopped at its ttl",
    )
    assert (stop_record_of(pod) or {})["cause"] == "ttl"
    assert server.metric("nim_agent_deletions_total", cause="ttl") >= 1
    # It had served: a later GetTask (a lost answer's retry) still says SUCCEEDED.
    again = server.stub.GetTask(get_request(meta), timeout=10).resource
    assert again.phase == TE.SUCCEEDED, again.message
    assert "ttl expired" in again.message


def test_a_restarted_connector_answers_for_a_deployment_it_did_not_create(
    connectors: Connectors, namespace: str
) -> None:
    first = connectors.start(SERVER_SETTINGS)
    meta = first.stub.CreateTask(
        create_request(template(), execution(exec_name()), namespace), timeout=10
    ).resource_meta
    first.kill()
    second = connectors.start(SERVER_SETTINGS)
    resource, phases = poll(second, meta)
    assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
    assert output_string(resource).startswith("http://nim-")


def test_an_invalid_config_fails_the_task_naming_the_field(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    tmpl = template()
    tmpl.custom.fields["nim"].struct_value.fields["mem"].string_value = "20GB"

    meta = server.stub.CreateTask(
        create_request(tmpl, execution(exec_name()), namespace), timeout=10
    ).resource_meta
    resource = server.stub.GetTask(get_request(meta), timeout=10).resource

    assert resource.phase == TE.FAILED
    assert "mem" in resource.message and "20GB" in resource.message
    assert not our_pods(core_v1, namespace)


@pytest.mark.parametrize("garbage", [b"", b"\x00\xff", b"{}", b'{"name": 1}', b"[]"])
def test_garbage_resource_meta_is_answered_without_internal_errors(
    server: ConnectorServer, garbage: bytes
) -> None:
    resource = server.stub.GetTask(get_request(garbage), timeout=10).resource
    assert resource.phase == TE.FAILED
    assert "resource_meta" in resource.message
    server.stub.DeleteTask(delete_request(garbage), timeout=10)  # no error: nothing to delete


def test_delete_twice_is_fine(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    meta = server.stub.CreateTask(
        create_request(template(), execution(exec_name()), namespace), timeout=10
    ).resource_meta
    assert len(our_pods(core_v1, namespace)) == 1

    server.stub.DeleteTask(delete_request(meta), timeout=10)
    server.stub.DeleteTask(delete_request(meta), timeout=10)  # the pod may be gone already

    wait_for(lambda: not our_pods(core_v1, namespace), timeout=30, what="the pod to go")
    wait_for(lambda: not our_services(core_v1, namespace), timeout=30, what="the service to go")
    # Flyte sends no GetTask after an abort; one sent anyway is answered, not an error.
    resource = server.stub.GetTask(get_request(meta), timeout=10).resource
    assert resource.phase in (TE.FAILED, TE.RETRYABLE_FAILED), resource.message


def test_metrics_count_what_the_tests_did(server: ConnectorServer) -> None:
    text = server.metrics()
    assert "flyte_connector_requests_success_total" in text
    assert server.metric("nim_agent_deployments_created_total") >= 1
    assert server.metric("nim_agent_kube_requests_total", verb="create", code="201") >= 1
    assert server.metric("nim_agent_failures_total") >= 1
    assert "nim_agent_time_to_ready_seconds_bucket" in text


def test_an_unknown_task_type_is_not_found(server: ConnectorServer) -> None:
    with pytest.raises(grpc.RpcError) as err:
        server.stub.GetTask(get_request(b"{}", task_type="not-nim"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
