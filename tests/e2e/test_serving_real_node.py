"""Serving verified on the real node: real pods of the NIM stand-in image, real adapter downloads.

Everything here runs for real on the local control plane's real node (`nim-real-0`, from the
real-node issue): the kubelet pulls `NIM_STANDIN_IMAGE` from the local registry, the
`lora-downloader` init container runs nim_agent/hf_download.py against the Hugging Face Hub
stand-in, the `lora-inputs` one runs nim_agent/flyte_download.py (in `NIM_AGENT_IMAGE`, the
connector's own image, which has flytekit) against MinIO (devcluster/objectstore.sh, listening on
the node's bridge address), the server's readiness probe gates Ready, and the connector asks
`/v1/models` through the API server's pod proxy. The image references come from
`.devcluster/images.env`; when it, the real node or an image is missing, the tests fail saying
which (never skip).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flyteidl.core import execution_pb2
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.models.literals import Literal
from kubernetes import client

from nim_agent import NIM, NIMEndpoint, NIMSecrets, NIMTask
from nim_agent.contract import ANNOTATION_SERVED_AT, adapter_name
from tests.cluster import DEVCLUSTER, REPO_ROOT, our_pods, wait_for
from tests.connector_server import (
    Connectors,
    ConnectorServer,
    create_request,
    exec_name,
    execution,
    poll,
    task_template,
)
from tests.realnode import (
    IMAGES_ENV,
    NODE_IP,
    NODE_NAME,
    NODE_SELECTOR,
    RealNodeUnavailable,
    ensure_real_node,
)

TE = execution_pb2.TaskExecution
OBJECTSTORE_PORT = "9300"  # the host port pods may reach (the real node's HOST_PORTS_FOR_PODS)
BASE = "meta/llama3-8b-instruct"  # the model id the stand-in image derives from its name
pytestmark = pytest.mark.real_node
SECRETS = NIMSecrets(ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="")
SETTINGS = {
    "NIM_AGENT_SERVING_CHECK": "proxy",  # the connector runs on the host, outside the cluster
    "NIM_AGENT_SERVING_WINDOW": "20s",
    "NIM_AGENT_SERVING_TIMEOUT": "5s",
    "NIM_AGENT_REAP_INTERVAL": "2s",
    "NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD": "1",  # a failed download fails at its first retry
}
# Pulling, starting and downloading on a loaded 2-core machine: bounds, not expectations.
SERVE_TIMEOUT_S = 240


def require(images: dict[str, str], *keys: str) -> None:
    missing = [k for k in keys if not images.get(k)]
    if missing:
        pytest.fail(
            f"{IMAGES_ENV.name} lacks {', '.join(missing)}: "
            + ("make image builds NIM_AGENT_IMAGE; " if "NIM_AGENT_IMAGE" in missing else "")
            + "make cluster-up writes the rest",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def images(kubeconfig_path: Path) -> dict[str, str]:
    """images.env of the running real node (started when it is not; the tests fail saying why
    when it cannot be)."""
    try:
        images = dict(ensure_real_node().values)
    except RealNodeUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    require(images, "NIM_STANDIN_IMAGE", "HF_ENDPOINT", "HF_FIXTURE_REPO")
    return images


@pytest.fixture(scope="module")
def server(module_connectors: Connectors) -> ConnectorServer:
    return module_connectors.start(SETTINGS, command="nim-agent")


@pytest.fixture(autouse=True)
def ngc_key(core_v1: client.CoreV1Api, namespace: str) -> None:
    """The connector's default Secret with an NGC key (the stand-in ignores its value): a real
    kubelet refuses to start a container whose secretKeyRef it cannot resolve."""
    core_v1.create_namespaced_secret(
        namespace, {"metadata": {"name": "nim-secrets"}, "stringData": {"api_key": "stand-in"}}
    )


def standin_nim(images: dict[str, str], **overrides: Any) -> NIM:
    """The NIM stand-in on the real node, small enough for this machine."""
    fields: dict[str, Any] = {
        "secrets": SECRETS,
        "image": images["NIM_STANDIN_IMAGE"],
        "image_pull_policy": "IfNotPresent",
        "gpu": 1,  # the real node advertises nvidia.com/gpu; the stand-in uses none
        "cpu": "500m",
        "mem": "512Mi",
        "shm_size": "64Mi",
        "node_selector": NODE_SELECTOR,
        "env": {"NIM_PEFT_SOURCE": "/opt/nim/loras", "STANDIN_STARTUP_SECONDS": "2"},
        "hf_repo_ids": [images["HF_FIXTURE_REPO"]],
        "hf_endpoint": images["HF_ENDPOINT"],
        "lora_adapter_mem": "256Mi",
        "startup_period_seconds": 1,
        "readiness_period_seconds": 2,
    }
    fields.update(overrides)
    return NIM(**fields)


def deploy(server: ConnectorServer, namespace: str, nim: NIM, *, typed: bool = False) -> bytes:
    task = NIMTask(name="e2e.real-node", nim=nim, typed_endpoint=typed)
    meta: bytes = server.stub.CreateTask(
        create_request(task_template(task), execution(exec_name()), namespace), timeout=10
    ).resource_meta
    return meta


def service_proxy_post(
    api_client: client.ApiClient, namespace: str, name: str, port: int, path: str, body: Any
) -> Any:
    """POST through the API server's service proxy: from this machine, as a local run would."""
    method, url, headers, data, _ = api_client.param_serialize(
        method="POST",
        resource_path=f"/api/v1/namespaces/{namespace}/services/{name}:{port}/proxy{path}",
        header_params={"Content-Type": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, header_params=headers, body=data)
    response.read()
    return json.loads(response.data)


def test_a_hub_adapter_is_downloaded_verified_and_answers_requests_by_its_name(
    server: ConnectorServer,
    images: dict[str, str],
    api_client: client.ApiClient,
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    adapter = adapter_name(images["HF_FIXTURE_REPO"])
    meta = deploy(server, namespace, standin_nim(images), typed=True)

    resource, phases = poll(server, meta, timeout=SERVE_TIMEOUT_S, interval=1)

    assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
    assert f"/v1/models lists {BASE} and adapters {adapter}" in resource.message
    ctx = FlyteContextManager.current_context()
    literal = Literal.from_flyte_idl(resource.outputs.literals["endpoint"])
    endpoint = TypeEngine.to_python_value(ctx, literal, NIMEndpoint)
    assert endpoint.model == BASE and endpoint.adapters == [adapter]
    [pod] = our_pods(core_v1, namespace)
    assert pod.spec.node_name == NODE_NAME
    assert ANNOTATION_SERVED_AT in pod.metadata.annotations
    # The downloader fetched only the adapter's files, from the Hub stand-in.
    log = core_v1.read_namespaced_pod_log(pod.metadata.name, namespace, container="lora-downloader")
    assert "adapter_config.json" in log and "(1 downloaded, 0 already there)" in log
    # A request naming the adapter is answered by it.
    answer = service_proxy_post(
        api_client,
        namespace,
        pod.metadata.name,
        8000,
        "/v1/chat/completions",
        {"model": adapter, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
    )
    assert answer["model"] == adapter
    count = server.metric("nim_agent_serving_check_seconds_count", route="proxy")
    total = server.metric("nim_agent_serving_check_seconds_sum", route="proxy")
    print(f"\nGET /v1/models of a real pod through the pod proxy: {count:.0f} requests, mean "
          f"{1000 * total / max(count, 1):.1f} ms")  # fmt: skip


def test_an_adapter_the_server_refuses_to_load_fails_the_task_naming_it(
    server: ConnectorServer, images: dict[str, str], core_v1: client.CoreV1Api, namespace: str
) -> None:
    adapter = adapter_name(images["HF_FIXTURE_REPO"])
    env = {
        "NIM_PEFT_SOURCE": "/opt/nim/loras",
        "STANDIN_STARTUP_SECONDS": "2",
        "STANDIN_REJECT_ADAPTERS": adapter,  # logged as a load failure, as NIM does
    }
    meta = deploy(server, namespace, standin_nim(images, env=env))

    resource, phases = poll(server, meta, timeout=SERVE_TIMEOUT_S, interval=1)

    assert resource.phase == TE.FAILED, (phases, resource.message)
    assert f"/v1/models does not list adapter {adapter}" in resource.message
    assert "failed to load LoRA adapter" in resource.message  # the server's own log, via kubelet
    assert "RUNNING" in phases


def test_a_private_repository_needs_its_token_and_without_it_the_download_says_so(
    server: ConnectorServer, images: dict[str, str], core_v1: client.CoreV1Api, namespace: str
) -> None:
    require(images, "HF_FIXTURE_PRIVATE_REPO", "HF_FIXTURE_TOKEN")
    private = images["HF_FIXTURE_PRIVATE_REPO"]
    no_token = deploy(server, namespace, standin_nim(images, hf_repo_ids=[private]))
    failed, phases = poll(server, no_token, timeout=SERVE_TIMEOUT_S, interval=1)
    assert failed.phase == TE.FAILED, (phases, failed.message)
    assert "lora-downloader" in failed.message
    assert f"{private}: repository not found" in failed.message
    assert "no token was given" in failed.message

    core_v1.create_namespaced_secret(
        namespace, {"metadata": {"name": "hf"}, "stringData": {"token": images["HF_FIXTURE_TOKEN"]}}
    )
    secrets = NIMSecrets(
        ngc_image_secret="ngc-pull",
        ngc_secret_key="api_key",
        secrets_prefix="",
        hf_token_group="hf",
        hf_token_key="token",
    )
    with_token = deploy(
        server, namespace, standin_nim(images, secrets=secrets, hf_repo_ids=[private])
    )
    served, phases = poll(server, with_token, timeout=SERVE_TIMEOUT_S, interval=1)
    assert served.phase == TE.SUCCEEDED, (phases, served.message)
    assert adapter_name(private) in served.message


@pytest.fixture
def cache_claim(core_v1: client.CoreV1Api, namespace: str, tmp_path: Path) -> Iterator[str]:
    """A PersistentVolumeClaim bound to a folder of this machine (the real node's host)."""
    folder = tmp_path / "pv"
    folder.mkdir()
    folder.chmod(0o777)  # hostPath volumes get no fsGroup: let uid 1000 write
    name = f"pv-{namespace}"[:63]
    core_v1.create_persistent_volume(
        {
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": "nim-cache"},
            },
        }
    )
    core_v1.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "nim-cache"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    try:
        yield "nim-cache"
    finally:
        core_v1.delete_persistent_volume(name)


def test_adapters_on_a_cache_claim_are_not_downloaded_again_by_a_later_server(
    server: ConnectorServer,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
    cache_claim: str,
) -> None:
    logs = []
    for _ in range(2):
        meta = deploy(server, namespace, standin_nim(images, cache_pvc=cache_claim))
        resource, phases = poll(server, meta, timeout=SERVE_TIMEOUT_S, interval=1)
        assert resource.phase == TE.SUCCEEDED, (phases, resource.message)
        [pod] = our_pods(core_v1, namespace)
        name = pod.metadata.name
        logs.append(core_v1.read_namespaced_pod_log(name, namespace, container="lora-downloader"))
        core_v1.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        wait_for(lambda: not our_pods(core_v1, namespace), timeout=60, what="the pod to go")
    assert "(1 downloaded, 0 already there)" in logs[0]
    assert "not downloading" in logs[1] and "(0 downloaded, 1 already there)" in logs[1]


# --------------------------------------------------------------------------- from the workflow


@pytest.fixture(scope="module")
def object_store() -> Iterator[dict[str, str]]:
    """MinIO on the real node's bridge address (devcluster/objectstore.sh), for pods and us."""
    env = {
        **os.environ,
        "OBJECTSTORE_HOST": NODE_IP,
        "OBJECTSTORE_PORT": OBJECTSTORE_PORT,
        "DEVCLUSTER_DIR": str(DEVCLUSTER),
    }
    script = str(REPO_ROOT / "devcluster" / "objectstore.sh")
    running = subprocess.run([script, "status"], env=env, capture_output=True).returncode == 0
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stderr[-2000:]
    settings = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    try:
        yield settings
    finally:
        if not running:  # leave one that was running before as it was
            subprocess.run([script, "down"], env=env, capture_output=True, timeout=120)


def test_an_adapter_trained_by_the_workflow_is_served_and_answers_the_next_step(
    images: dict[str, str],
    object_store: dict[str, str],
    core_v1: client.CoreV1Api,
    kubeconfig_path: Path,
    namespace: str,
) -> None:
    """examples/demo_workflow.py `tuned`, run by pyflyte on this machine: finetune() writes an
    adapter, flytekit keeps it here, NIMTask uploads it to the run's raw output prefix in MinIO,
    the pod's lora-inputs container downloads it, /v1/models lists it, ask() gets its answer."""
    require(images, "NIM_AGENT_IMAGE")
    core_v1.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "object-store"},
            "stringData": {
                "FLYTE_AWS_ACCESS_KEY_ID": object_store["FLYTE_AWS_ACCESS_KEY_ID"],
                "FLYTE_AWS_SECRET_ACCESS_KEY": object_store["FLYTE_AWS_SECRET_ACCESS_KEY"],
            },
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIM_AGENT_", "FLYTE_"))}
    env.update(
        KUBECONFIG=str(kubeconfig_path),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
        # flytekit on this machine (the upload) and in the pod reach MinIO at the same address
        FLYTE_AWS_ENDPOINT=object_store["FLYTE_AWS_ENDPOINT"],
        FLYTE_AWS_ACCESS_KEY_ID=object_store["FLYTE_AWS_ACCESS_KEY_ID"],
        FLYTE_AWS_SECRET_ACCESS_KEY=object_store["FLYTE_AWS_SECRET_ACCESS_KEY"],
        NIM_AGENT_DEFAULT_NAMESPACE=namespace,
        NIM_AGENT_SERVING_CHECK="proxy",
        NIM_AGENT_ADAPTER_INPUTS_IMAGE=images["NIM_AGENT_IMAGE"],
        NIM_AGENT_ADAPTER_INPUTS_ENV=json.dumps(
            {"FLYTE_AWS_ENDPOINT": object_store["FLYTE_AWS_ENDPOINT"]}
        ),
        NIM_AGENT_ADAPTER_INPUTS_SECRET="object-store",
        NIM_DEMO_IMAGE=images["NIM_STANDIN_IMAGE"],
        NIM_DEMO_NODE_SELECTOR="nim-agent.dev/node=real",
        NIM_DEMO_MEM="512Mi",
        NIM_DEMO_SHM="64Mi",
    )
    result = subprocess.run(
        [
            str(REPO_ROOT / ".venv" / "bin" / "pyflyte"),
            "run",
            "--raw-output-data-prefix",
            object_store["OBJECTSTORE_RAW_OUTPUT_PREFIX"],
            "examples/demo_workflow.py",
            "tuned",
            "--question",
            "What is Flyte?",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "support answered:" in output, output[-3000:]
    # The teardown step removed the deployment.
    wait_for(lambda: not our_pods(core_v1, namespace), timeout=60, what="the teardown")
