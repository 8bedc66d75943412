"""The connector's check that a Ready server serves (GET /v1/models), through flytepropeller's
protocol, on the local control plane.

The connector runs as a server (`nim-agent serve`) with ``serving_check: proxy``, as a local
run uses it: every request goes through the API server's pod proxy. kwok's pods run no process,
so where a server must answer, the test fakes the one thing a simulated node cannot give, a
reachable pod address: it patches the pod's ``status.podIP`` to this machine's address, where
the real NIM stand-in program (devcluster/standin/nim_standin.py) listens on the pod's NIM port.
The API server, its pod proxy, the connector, the Service and the annotations are all real.
The same path against real pods on the real node: tests/e2e/test_serving_real_node.py.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flyteidl.core import execution_pb2
from flytekit import kwtypes
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.models.literals import Literal
from flytekit.types.directory import FlyteDirectory
from kubernetes import client

from nim_agent import NIMTask
from nim_agent.contract import (
    ANNOTATION_ADAPTERS,
    ANNOTATION_SERVED_AT,
    ANNOTATION_SERVED_MODEL,
    NIMEndpoint,
)
from tests.cluster import our_pods, running_pods, wait_for
from tests.configs import simulated_nim
from tests.connector_server import (
    Connectors,
    ConnectorServer,
    create_request,
    exec_name,
    execution,
    free_port,
    get_request,
    output_string,
    poll,
    task_template,
)
from tests.standins import Process, start_nim

TE = execution_pb2.TaskExecution
BASE = "meta/llama3-8b-instruct"
HF_REPO = "standin/llama3-8b-lora-public"
HF_ADAPTER = "llama3-8b-lora-public"
SETTINGS = {
    "NIM_AGENT_SERVING_CHECK": "proxy",
    "NIM_AGENT_SERVING_WINDOW": "8s",
    "NIM_AGENT_SERVING_TIMEOUT": "3s",
    "NIM_AGENT_REAP_INTERVAL": "1s",
}
SLOW_READY = {"nim-agent.dev/simulate-ready-after": "4s"}  # time to patch the pod's address


def host_address() -> str:
    """This machine's address on its default route: not loopback, which the API server's proxy
    refuses to dial."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.123", 9))  # no packet is sent: this only picks a route
        address: str = s.getsockname()[0]
    assert not address.startswith("127."), f"no non-loopback address on this machine: {address}"
    return address


def make_adapter(root: Path, name: str) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)


def nim_server(tmp_path: Path, adapters: list[str], **env: str) -> Process:
    """The NIM stand-in on this machine's address and a free port, with these adapter folders."""
    loras = tmp_path / "loras"
    for name in adapters:
        make_adapter(loras, name)
    proc = start_nim(
        tmp_path,
        NIM_SERVER_PORT=str(free_port()),
        STANDIN_HOST=host_address(),
        NIM_PEFT_SOURCE=str(loras),
        STANDIN_STARTUP_SECONDS="0.2",
        **env,
    )
    proc.url = proc.url.replace("127.0.0.1", host_address())
    try:
        wait_for(lambda: "is ready to serve" in proc.log(), timeout=30, what="the stand-in ready")
    except BaseException:
        proc.stop()  # the caller's try/finally has not begun yet
        raise
    return proc


def port_of(proc: Process) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def models_requests(proc: Process) -> int:
    return proc.log().count('"GET /v1/models')


@pytest.fixture(scope="module")
def server(module_connectors: Connectors) -> ConnectorServer:
    return module_connectors.start(SETTINGS, command="nim-agent")


def nim_task(port: int, *, typed: bool = False, **overrides: Any) -> NIMTask:
    fields: dict[str, Any] = {"port": port, "annotations": SLOW_READY}
    fields.update(overrides)
    return NIMTask(name="e2e.serving", nim=simulated_nim("ready", **fields), typed_endpoint=typed)


def route_pod_to(core_v1: client.CoreV1Api, namespace: str, address: str) -> client.V1Pod:
    """Once kwok has given our pod an address, point it at `address` (the fake described in the
    module docstring); kwok sets an address only once."""
    pod = wait_for(
        lambda: next((p for p in our_pods(core_v1, namespace) if p.status.pod_ip), None),
        timeout=60,
        what="kwok to give the pod an address",
    )
    body = [  # a JSON patch: a strategic merge would add the address beside kwok's
        {"op": "replace", "path": "/status/podIP", "value": address},
        {"op": "replace", "path": "/status/podIPs", "value": [{"ip": address}]},
    ]
    core_v1.patch_namespaced_pod_status(pod.metadata.name, namespace, body)
    return pod


def test_a_ready_server_succeeds_once_it_lists_its_adapters_and_it_is_recorded_on_the_pod(
    server: ConnectorServer,
    module_connectors: Connectors,
    core_v1: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    nim = nim_server(tmp_path, [HF_ADAPTER])
    try:
        task = nim_task(
            port_of(nim),
            env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
            hf_repo_ids=[HF_REPO],
            lora_adapter_mem="1Gi",
        )
        meta = server.stub.CreateTask(
            create_request(task_template(task), execution(exec_name()), namespace), timeout=10
        ).resource_meta
        route_pod_to(core_v1, namespace, host_address())

        resource, phases = poll(server, meta, timeout=90)

        assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
        assert f"/v1/models lists {BASE} and adapters {HF_ADAPTER}" in resource.message
        [pod] = our_pods(core_v1, namespace)
        annotations = pod.metadata.annotations
        assert yaml.safe_load(annotations[ANNOTATION_ADAPTERS]) == [HF_ADAPTER]
        assert annotations[ANNOTATION_SERVED_MODEL] == BASE
        assert annotations[ANNOTATION_SERVED_AT].endswith("Z")
        # The Service came first (the endpoint handed out resolves), then the check.
        assert core_v1.read_namespaced_service(pod.metadata.name, namespace)
        asked = models_requests(nim)
        assert asked >= 1
        listed = server.metric("nim_agent_serving_checks_total", route="proxy", outcome="listed")
        assert listed >= 1

        # Later polls, and another connector (a restart, a second replica), answer from the pod.
        for _ in range(3):
            again = server.stub.GetTask(get_request(meta), timeout=10).resource
            assert again.phase == TE.SUCCEEDED
        other = module_connectors.start(SETTINGS, command="nim-agent")
        answer = other.stub.GetTask(get_request(meta), timeout=10).resource
        assert answer.phase == TE.SUCCEEDED and "verified at" in answer.message
        assert output_string(answer) == output_string(resource)
        assert models_requests(nim) == asked
    finally:
        nim.stop()


def test_a_typed_endpoint_names_the_served_model_and_the_adapters(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    nim = nim_server(tmp_path, [HF_ADAPTER])
    try:
        task = nim_task(
            port_of(nim),
            typed=True,
            env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
            hf_repo_ids=[HF_REPO],
            lora_adapter_mem="1Gi",
        )
        meta = server.stub.CreateTask(
            create_request(task_template(task), execution(exec_name()), namespace), timeout=10
        ).resource_meta
        route_pod_to(core_v1, namespace, host_address())
        resource, phases = poll(server, meta, timeout=90)
        assert resource.phase == TE.SUCCEEDED, (phases, resource.message)

        literal = Literal.from_flyte_idl(resource.outputs.literals["endpoint"])
        ctx = FlyteContextManager.current_context()
        endpoint = TypeEngine.to_python_value(ctx, literal, NIMEndpoint)
        [pod] = our_pods(core_v1, namespace)
        base = f"http://{pod.metadata.name}.{namespace}.svc.cluster.local:{port_of(nim)}"
        assert endpoint == NIMEndpoint(
            base_url=base, openai_base_url=base + "/v1", model=BASE, adapters=[HF_ADAPTER]
        )
    finally:
        nim.stop()


def test_an_adapter_the_server_does_not_load_fails_the_task_naming_it(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    # NIM leaves an adapter it cannot load out of /v1/models; the stand-in does the same.
    nim = nim_server(tmp_path, [HF_ADAPTER], STANDIN_REJECT_ADAPTERS=HF_ADAPTER)
    try:
        task = nim_task(
            port_of(nim),
            env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
            hf_repo_ids=[HF_REPO],
            lora_adapter_mem="1Gi",
        )
        meta = server.stub.CreateTask(
            create_request(task_template(task), execution(exec_name()), namespace), timeout=10
        ).resource_meta
        route_pod_to(core_v1, namespace, host_address())

        running, _ = poll(
            server, meta, until=lambda r: "does not list adapter" in r.message, timeout=90
        )
        assert running.phase == TE.RUNNING
        assert f"does not list adapter {HF_ADAPTER} yet (it lists {BASE}" in running.message

        failed, phases = poll(server, meta, timeout=60)
        assert failed.phase == TE.FAILED, (phases, failed.message)
        assert f"does not list adapter {HF_ADAPTER}" in failed.message, failed.message
        assert "adapter_config.json" in failed.message
        # A failed server is stopped (keep_failed is off) once its diagnostics are in the message.
        wait_for(
            lambda: not running_pods(core_v1, namespace),
            timeout=30,
            what="the failed server to be stopped",
        )
    finally:
        nim.stop()


def test_a_server_that_cannot_be_reached_fails_after_the_window_naming_the_route(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    # No address patch: the API server cannot reach a kwok pod's made-up address.
    task = nim_task(free_port())
    meta = server.stub.CreateTask(
        create_request(task_template(task), execution(exec_name()), namespace), timeout=10
    ).resource_meta

    checking, _ = poll(server, meta, until=lambda r: "/v1/models" in r.message, timeout=60)
    assert checking.phase == TE.RUNNING
    failed, phases = poll(server, meta, timeout=60)
    assert failed.phase == TE.FAILED, (phases, failed.message)
    assert "/v1/models" in failed.message and "pods/proxy" in failed.message


def test_a_served_at_annotation_answers_without_asking_the_server(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str
) -> None:
    # As a pod verified by an earlier connector carries it; its address leads nowhere.
    task = nim_task(free_port())
    meta = server.stub.CreateTask(
        create_request(task_template(task), execution(exec_name()), namespace), timeout=10
    ).resource_meta
    # Ready first: served-at on a pod that is not ready reads as a served server's interruption.
    [pod] = wait_for(
        lambda: [
            p
            for p in our_pods(core_v1, namespace)
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ],
        timeout=30,
        what="the pod to be Ready",
    )
    served = {ANNOTATION_SERVED_AT: "2026-11-02T12:00:00Z", ANNOTATION_SERVED_MODEL: BASE}
    core_v1.patch_namespaced_pod(
        pod.metadata.name, namespace, {"metadata": {"annotations": served}}
    )
    before = server.metric("nim_agent_serving_checks_total")

    resource, phases = poll(server, meta, timeout=60)

    assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
    assert "verified at 2026-11-02T12:00:00Z" in resource.message
    assert server.metric("nim_agent_serving_checks_total") == before


@pytest.fixture
def restricted_kubeconfig(
    api_client: client.ApiClient, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> Iterator[Path]:
    """A kubeconfig for a ServiceAccount with the chart's rules minus pods/proxy."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    core_v1.create_namespaced_service_account(namespace, {"metadata": {"name": "no-proxy"}})
    core = {
        "pods": ["create", "get", "list", "watch", "delete", "patch"],
        "pods/log": ["get"],
        "services": ["create", "get", "list", "delete"],
        "events": ["get", "list", "watch"],
    }
    rules = [{"apiGroups": [""], "resources": [r], "verbs": v} for r, v in core.items()]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "no-proxy"}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "no-proxy"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "no-proxy",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "no-proxy", "namespace": namespace}],
        },
    )
    token = core_v1.create_namespaced_service_account_token(
        "no-proxy", namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    conf = api_client.configuration
    path = tmp_path / "no-proxy.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": conf.host, "certificate-authority": conf.ssl_ca_cert},
                    }
                ],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    yield path


def test_without_rbac_on_pods_proxy_the_message_says_what_to_grant(
    core_v1: client.CoreV1Api, namespace: str, restricted_kubeconfig: Path, tmp_path: Path
) -> None:
    settings = {**SETTINGS, "NIM_AGENT_WATCH_NAMESPACES": namespace}
    with ConnectorServer(
        restricted_kubeconfig, settings=settings, command="nim-agent", log_path=tmp_path / "log"
    ) as server:
        task = nim_task(free_port())
        meta = server.stub.CreateTask(
            create_request(task_template(task), execution(exec_name()), namespace), timeout=10
        ).resource_meta

        resource, _ = poll(server, meta, until=lambda r: "pods/proxy" in r.message, timeout=60)

    assert resource.phase == TE.RUNNING
    assert "the API server refused its pod proxy" in resource.message
    assert "grant the connector get on pods/proxy" in resource.message


def test_the_check_adds_at_most_one_request_per_poll_and_polls_stay_fast(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    """What the check costs GetTask: printed (figures belong to benchmarks), bounded loosely."""
    nim = nim_server(tmp_path, [], STANDIN_MODELS_DELAY_SECONDS="0")
    try:
        meta = server.stub.CreateTask(
            create_request(
                task_template(nim_task(port_of(nim))), execution(exec_name()), namespace
            ),
            timeout=10,
        ).resource_meta
        route_pod_to(core_v1, namespace, host_address())
        polls, seconds = 0, []
        resource = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            started = time.monotonic()
            resource = server.stub.GetTask(get_request(meta), timeout=10).resource
            seconds.append(time.monotonic() - started)
            polls += 1
            if resource.phase == TE.SUCCEEDED:
                break
            time.sleep(0.25)
        assert resource is not None and resource.phase == TE.SUCCEEDED, resource
        asked = models_requests(nim)
        assert 1 <= asked <= polls
        ordered = sorted(seconds)
        print(
            f"\nGetTask until SUCCEEDED: {polls} polls, {asked} GET /v1/models through the pod "
            f"proxy; poll p50 {1000 * ordered[len(ordered) // 2]:.1f} ms, max "
            f"{1000 * ordered[-1]:.1f} ms"
        )
        assert ordered[-1] < 10  # GetTask's own deadline; the check waits at most 1 s of it
    finally:
        nim.stop()


def test_adapters_given_as_task_inputs_are_downloaded_by_the_pod_and_verified(
    server: ConnectorServer, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    """CreateTask with the inputs flytepropeller sends (a FlyteDirectory, a dict of them): the
    pod's lora-inputs container gets their URIs (kwok only simulates running it; the program
    itself runs in tests/unit/test_adapter_inputs.py), and /v1/models must list each by name."""
    nim = nim_server(tmp_path, ["support", "math", "code"])
    try:
        task = NIMTask(
            name="e2e.inputs",
            nim=simulated_nim(
                "ready",
                port=port_of(nim),
                annotations=SLOW_READY,
                env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
                lora_adapter_mem="1Gi",
            ),
            inputs=kwtypes(support=FlyteDirectory, more=dict[str, FlyteDirectory]),
            typed_endpoint=True,
        )
        values = {
            "support": FlyteDirectory("s3://flyte/raw/ab/o0"),
            "more": {
                "math": FlyteDirectory("s3://flyte/raw/cd/o0"),
                "code": FlyteDirectory("s3://e"),
            },
        }
        ctx = FlyteContextManager.current_context()
        inputs = TypeEngine.dict_to_literal_map(ctx, values, task.python_interface.inputs)
        meta = server.stub.CreateTask(
            create_request(
                task_template(task), execution(exec_name()), namespace, inputs.to_flyte_idl()
            ),
            timeout=10,
        ).resource_meta
        pod = route_pod_to(core_v1, namespace, host_address())
        (downloader,) = [c for c in pod.spec.init_containers if c.name == "lora-inputs"]
        env = {e.name: e.value for e in downloader.env}
        assert json.loads(env["NIM_AGENT_ADAPTER_URIS"]) == {
            "support": "s3://flyte/raw/ab/o0",
            "math": "s3://flyte/raw/cd/o0",
            "code": "s3://e",
        }

        resource, phases = poll(server, meta, timeout=90)

        assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
        literal = Literal.from_flyte_idl(resource.outputs.literals["endpoint"])
        endpoint = TypeEngine.to_python_value(ctx, literal, NIMEndpoint)
        assert endpoint.adapters == ["code", "math", "support"]  # by input name, then key
    finally:
        nim.stop()


def test_inputs_that_are_not_adapters_fail_the_task_naming_the_input(
    server: ConnectorServer, namespace: str
) -> None:
    task = NIMTask(
        name="e2e.inputs",
        nim=simulated_nim(
            "ready", env={"NIM_PEFT_SOURCE": "/opt/nim/loras"}, lora_adapter_mem="1Gi"
        ),
        inputs=kwtypes(support=FlyteDirectory),
    )
    ctx = FlyteContextManager.current_context()
    local = TypeEngine.dict_to_literal_map(
        ctx, {"support": FlyteDirectory("s3://b/x")}, {"support": FlyteDirectory}
    ).to_flyte_idl()
    local.literals["support"].scalar.blob.uri = "/home/me/adapter"  # a path of someone's machine
    meta = server.stub.CreateTask(
        create_request(task_template(task), execution(exec_name()), namespace, local), timeout=10
    ).resource_meta
    resource = server.stub.GetTask(get_request(meta), timeout=10).resource
    assert resource.phase == TE.FAILED
    assert "adapters.support" in resource.message and "is a path on the machine" in resource.message
