"""The status rules meet a real kubelet: each pod life runs on the real node, through the connector.

Every test here deploys the NIM stand-in image (devcluster/standin/nim_standin.py, its failure
knobs set by environment) on the real node ``nim-real-0`` through a connector server
(``nim-agent serve`` on this machine, as flytepropeller's connector runs beside it: CreateTask,
then GetTask) and asserts the phase, reason (``custom_info["reason"]``) and message the connector
answers. Nothing is simulated but the GPU (the node advertises ``nvidia.com/gpu`` by a status
patch) and the model (the stand-in loads none): the kubelet pulls from the local registry, runs
the init container against the Hugging Face Hub stand-in, probes, restarts, OOM-kills, enforces
``activeDeadlineSeconds`` and writes the statuses and events that `nim_agent.status` reads.

Each connector watches only its test's namespace, so no other test's sweep touches its pods.
Every life is recorded (`tests.lives.LifeRecorder`); with ``NIM_AGENT_RECORD_LIVES=1`` the records
are written, sanitised, to tests/unit/fixtures/kubelet/ for tests/unit/test_status_kubelet.py.
When the real node cannot start, the tests fail saying why (never skip).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flyteidl.core import execution_pb2
from kubernetes import client

from nim_agent import NIM, NIMSecrets, NIMTask
from nim_agent.contract import ANNOTATION_SERVED_AT, ANNOTATION_STOPPED, adapter_name
from nim_agent.settings import ConnectorSettings
from tests.cluster import REPO_ROOT, describe_namespace, our_pods, wait_for
from tests.connector_server import (
    Connectors,
    ConnectorServer,
    create_request,
    exec_name,
    execution,
    get_request,
    task_template,
)
from tests.lives import LifeRecorder, fixture_of, recording, write_fixture
from tests.realnode import (
    NODE_NAME,
    NODE_SELECTOR,
    RealNodeUnavailable,
    ensure_real_node,
    real_node_pod,
)

pytestmark = pytest.mark.real_node
TE = execution_pb2.TaskExecution
BASE = "meta/llama3-8b-instruct"  # the model id the stand-in image derives from its name
ASK_PROGRAM = (REPO_ROOT / "devcluster" / "ask_endpoint.py").read_text()

# The connector as these tests run it: restarts counted from 2 (a loop, not one exit), the
# /v1/models check through the API server's pod proxy (it runs on this machine, outside the
# pod network), sweeps every 2 s.
SETTINGS = {
    "NIM_AGENT_SERVING_CHECK": "proxy",
    "NIM_AGENT_SERVING_WINDOW": "60s",
    "NIM_AGENT_SERVING_TIMEOUT": "5s",
    "NIM_AGENT_REAP_INTERVAL": "2s",
    "NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD": "2",
}
# Bounds for a loaded 2-core machine, not expectations: a pod starts in seconds here, a crash
# loop of 2 restarts takes about 15 s (the first restart at once, the second after a 10 s back-off).
LIFE_TIMEOUT_S = 240
POLL_S = 0.5


@pytest.fixture(scope="module")
def images(kubeconfig_path: Path) -> dict[str, str]:
    try:
        values = dict(ensure_real_node().values)
    except RealNodeUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    missing = [
        k
        for k in ("NIM_STANDIN_IMAGE", "PYTHON_BASE_IMAGE", "HF_ENDPOINT", "HF_FIXTURE_REPO")
        if not values.get(k)
    ]
    if missing:
        pytest.fail(f"images.env lacks {', '.join(missing)} (make cluster-up writes them)")
    return values


@pytest.fixture(autouse=True)
def ngc_key(core_v1: client.CoreV1Api, namespace: str) -> None:
    """The connector's default Secret with an NGC key (the stand-in ignores its value)."""
    core_v1.create_namespaced_secret(
        namespace, {"metadata": {"name": "nim-secrets"}, "stringData": {"api_key": "stand-in"}}
    )


@pytest.fixture
def connector(connectors: Connectors, namespace: str) -> Callable[..., ConnectorServer]:
    """``connector(**settings)``: a connector server watching only this test's namespace."""

    def start(**extra: str) -> ConnectorServer:
        settings = {**SETTINGS, "NIM_AGENT_WATCH_NAMESPACES": namespace, **extra}
        return connectors.start(settings, command="nim-agent")

    return start


@pytest.fixture
def recorder(api_client: client.ApiClient, namespace: str) -> Iterator[LifeRecorder]:
    with LifeRecorder(api_client, namespace) as rec:
        yield rec


SECRETS = NIMSecrets(ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="")


def standin(images: dict[str, str], *, env: dict[str, str] | None = None, **fields: Any) -> NIM:
    """The NIM stand-in on the real node: small, probed every second or two."""
    base: dict[str, Any] = {
        "secrets": SECRETS,
        "image": images["NIM_STANDIN_IMAGE"],
        "image_pull_policy": "IfNotPresent",
        "gpu": 1,
        "cpu": "250m",
        "mem": "256Mi",
        "shm_size": "16Mi",
        "node_selector": NODE_SELECTOR,
        "env": {"STANDIN_STARTUP_SECONDS": "2", **(env or {})},
        "startup_period_seconds": 1,
        "startup_failure_threshold": 30,
        "readiness_period_seconds": 1,
        "readiness_failure_threshold": 1,
    }
    base.update(fields)
    return NIM(**base)


def with_adapter(images: dict[str, str], repo: str, **fields: Any) -> dict[str, Any]:
    """NIM fields for a Hub adapter from the Hub stand-in."""
    return {
        "hf_repo_ids": [repo],
        "hf_endpoint": images["HF_ENDPOINT"],
        "lora_adapter_mem": "128Mi",
        **fields,
    }


def deploy(
    server: ConnectorServer, namespace: str, nim: NIM, *, ttl: timedelta | None = None
) -> bytes:
    task = NIMTask(name="kubelet.life", nim=nim, ttl=ttl)
    meta: bytes = server.stub.CreateTask(
        create_request(task_template(task), execution(exec_name()), namespace), timeout=10
    ).resource_meta
    return meta


class Answer:
    """One GetTask answer: phase name, reason (custom_info), message."""

    def __init__(self, resource: Any) -> None:
        self.resource = resource
        self.phase = TE.Phase.Name(resource.phase)
        fields = resource.custom_info.fields
        self.reason = fields["reason"].string_value if "reason" in fields else ""
        self.message = resource.message

    def __repr__(self) -> str:
        return f"{self.phase}/{self.reason}: {self.message}"


def get(server: ConnectorServer, meta: bytes, rec: LifeRecorder | None = None) -> Answer:
    answer = Answer(server.stub.GetTask(get_request(meta), timeout=20).resource)
    if rec is not None:
        rec.answer(answer.phase, answer.reason, answer.message)
    return answer


def follow(
    server: ConnectorServer,
    meta: bytes,
    rec: LifeRecorder,
    until: Callable[[Answer], bool],
    *,
    timeout: float = LIFE_TIMEOUT_S,
    what: str,
) -> tuple[Answer, list[str]]:
    """GetTask every half second until ``until(answer)``; the answer and the distinct
    ``phase/reason`` pairs seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        answer = get(server, meta, rec)
        step = f"{answer.phase}/{answer.reason}"
        if not seen or seen[-1] != step:
            seen.append(step)
        if until(answer):
            return answer, seen
        if time.monotonic() > deadline:
            raise AssertionError(
                f"GetTask did not reach {what} in {timeout:.0f}s; seen {seen}; last: {answer!r}"
            )
        time.sleep(POLL_S)


def terminal(answer: Answer) -> bool:
    return answer.phase in ("SUCCEEDED", "FAILED", "RETRYABLE_FAILED")


def the_pod(core_v1: client.CoreV1Api, namespace: str) -> client.V1Pod:
    [pod] = our_pods(core_v1, namespace)
    return pod


def record(
    rec: LifeRecorder,
    life: str,
    description: str,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
    *,
    settings: dict[str, str] | None = None,
    logs: dict[str, tuple[str, bool]] | None = None,
) -> None:
    """Write the life's fixture when recording (``NIM_AGENT_RECORD_LIVES=1``); ``logs`` names
    container logs to keep: {key: (container, previous)}."""
    if not recording():
        return
    rec.stop()
    pods = our_pods(core_v1, namespace)
    texts = {}
    for key, (container, previous) in (logs or {}).items():
        try:
            texts[key] = core_v1.read_namespaced_pod_log(
                pods[0].metadata.name, namespace, container=container, previous=previous
            )
        except client.ApiException as e:
            texts[key] = f"(no log: {e.status} {e.reason})"
    policy = ConnectorSettings.load({**SETTINGS, **(settings or {})}).status_policy()
    node = core_v1.read_node(NODE_NAME).status.node_info
    doc = fixture_of(
        rec,
        life,
        description=description,
        policy={
            "crashloop_restart_threshold": policy.crashloop_restart_threshold,
            "unhealthy_window_s": policy.unhealthy_window.total_seconds(),
            "serving_window_s": policy.serving_window.total_seconds(),
        },
        logs=texts,
        images={
            images["NIM_STANDIN_IMAGE"]: "127.0.0.1:5050/nim/meta/llama3-8b-instruct:standin",
            images["NIM_STANDIN_IMAGE"].rpartition(":")[0]: "127.0.0.1:5050/nim/meta/"
            "llama3-8b-instruct",
        },
        node_info={
            "kubelet": node.kubelet_version,
            "runtime": node.container_runtime_version,
            "kernel": node.kernel_version,
        },
    )
    write_fixture(doc)


def kubelet_events(core_v1: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    events = core_v1.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    ).items
    return [e for e in events if e.source and e.source.component == "kubelet"]


def run_pod_to_end(
    core_v1: client.CoreV1Api, namespace: str, pod: dict[str, Any], timeout: float = 180
) -> tuple[client.V1Pod, str]:
    name = pod["metadata"]["name"]
    core_v1.create_namespaced_pod(namespace, pod)
    done = wait_for(
        lambda: (
            p
            if (p := core_v1.read_namespaced_pod(name, namespace)).status.phase
            in ("Succeeded", "Failed")
            else None
        ),
        timeout=timeout,
        what=f"pod {name} to finish",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    return done, core_v1.read_namespaced_pod_log(name, namespace)


# --------------------------------------------------------------------------------- the lives


def test_ready_with_an_adapter_is_verified_serving_and_a_pod_gets_answers_by_the_service_name(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    server = connector()
    adapter = adapter_name(images["HF_FIXTURE_REPO"])
    nim = standin(
        images,
        env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        **with_adapter(images, images["HF_FIXTURE_REPO"]),
    )
    meta = deploy(server, namespace, nim)

    answer, seen = follow(server, meta, recorder, terminal, what="a terminal phase")

    assert (answer.phase, answer.reason) == ("SUCCEEDED", "Ready"), (seen, answer)
    assert f"/v1/models lists {BASE} and adapters {adapter}" in answer.message
    assert "INITIALIZING/InitContainerRunning" in seen or "INITIALIZING/PullingImage" in seen, seen
    pod = the_pod(core_v1, namespace)
    assert pod.spec.node_name == NODE_NAME
    assert ANNOTATION_SERVED_AT in pod.metadata.annotations
    endpoint = answer.resource.outputs.literals["endpoint"].scalar.primitive.string_value
    assert endpoint.endswith(f".{namespace}.svc.cluster.local:8000"), endpoint

    # A workflow's next step: a pod on the real node asks the endpoint by its Service name.
    consumer = real_node_pod(
        "ask",
        images["PYTHON_BASE_IMAGE"],
        ["python3", "-c", ASK_PROGRAM, endpoint, adapter],
        restart_policy="Never",
    )
    done, log = run_pod_to_end(core_v1, namespace, consumer)
    assert done.status.phase == "Succeeded", log
    reply = json.loads(log.strip().splitlines()[-1])
    assert reply["model"] == adapter
    assert reply["object"] == "chat.completion"
    assert adapter in reply["choices"][0]["message"]["content"], reply
    print(f"\nanswer from {endpoint} to a pod: {reply['choices'][0]['message']['content']!r}")
    record(
        recorder,
        "ready",
        "Ready with a Hugging Face adapter (init container lora-downloader), verified serving",
        images,
        core_v1,
        namespace,
        logs={"lora-downloader": ("lora-downloader", False)},
    )


def test_a_crash_loop_fails_with_the_real_exit_code_and_the_log_tail(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    server = connector()
    meta = deploy(server, namespace, standin(images, env={"STANDIN_EXIT_CODE": "3"}))

    answer, seen = follow(server, meta, recorder, terminal, what="a terminal phase")

    assert (answer.phase, answer.reason) == ("FAILED", "CrashLoop"), (seen, answer)
    assert "Container nim is crash-looping: 2 restarts, last exit code 3 (Error)" in answer.message
    assert "Last log lines:" in answer.message
    assert "simulated start-up failure: exiting with code 3" in answer.message
    assert "RUNNING/Restarting" in seen, seen
    pod = the_pod(core_v1, namespace)
    record_ = json.loads(pod.metadata.annotations[ANNOTATION_STOPPED])
    assert (record_["cause"], record_["reason"]) == ("failure", "CrashLoop")
    record(
        recorder,
        "crash-loop",
        "STANDIN_EXIT_CODE=3: the server exits at start, the kubelet restarts it with back-off",
        images,
        core_v1,
        namespace,
        logs={"nim (previous)": ("nim", True)},
    )


def test_an_oom_kill_fails_at_once_suggesting_mem(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    server = connector()
    nim = standin(images, mem="96Mi", env={"STANDIN_ALLOCATE_MIB": "256"})
    meta = deploy(server, namespace, nim)

    answer, seen = follow(server, meta, recorder, terminal, what="a terminal phase")

    assert (answer.phase, answer.reason) == ("FAILED", "OOMKilled"), (seen, answer)
    assert "was killed for exceeding its memory limit of 96Mi (OOMKilled, exit code 137)" in (
        answer.message
    )
    assert "raise `mem`" in answer.message
    assert "allocating 256 MiB" in answer.message  # the log of the killed run
    status = the_pod(core_v1, namespace).status.container_statuses[0]
    killed = status.last_state.terminated or status.state.terminated
    assert (killed.reason, killed.exit_code) == ("OOMKilled", 137)
    record(
        recorder,
        "oom-killed",
        "STANDIN_ALLOCATE_MIB=256 with mem 96Mi: the kernel's OOM killer ends the server",
        images,
        core_v1,
        namespace,
        logs={"nim (previous)": ("nim", True)},
    )


def test_a_missing_secret_fails_naming_it(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    server = connector()
    secrets = NIMSecrets(
        ngc_image_secret="ngc-pull",
        ngc_secret_key="api_key",
        secrets_prefix="",
        ngc_secret_group="no-such-secret",
    )
    meta = deploy(server, namespace, standin(images, secrets=secrets))

    answer, seen = follow(server, meta, recorder, terminal, what="a terminal phase")

    assert (answer.phase, answer.reason) == ("FAILED", "MissingSecret"), (seen, answer)
    assert 'secret "no-such-secret" not found' in answer.message
    assert f"Create the Secret in namespace {namespace}" in answer.message
    record(
        recorder,
        "missing-secret",
        "the NGC key's secretKeyRef names a Secret that does not exist",
        images,
        core_v1,
        namespace,
    )


def test_an_image_tag_missing_from_the_registry_fails_at_once(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    server = connector()
    missing = images["NIM_STANDIN_IMAGE"].rpartition(":")[0] + ":no-such-tag"
    meta = deploy(server, namespace, standin(images, image=missing))

    answer, seen = follow(server, meta, recorder, terminal, what="a terminal phase")

    assert (answer.phase, answer.reason) == ("FAILED", "ImagePullError"), (seen, answer)
    assert f"Cannot pull image {missing}" in answer.message
    assert "not found" in answer.message
    # At once: the registry's answer is permanent, the 2-minute grace is for transient errors.
    pod = the_pod(core_v1, namespace)
    record_ = json.loads(pod.metadata.annotations[ANNOTATION_STOPPED])
    age = (
        pod.metadata.creation_timestamp.timestamp() - time.time()
    )  # negative: seconds since creation
    assert -age < 110, f"failed only {-age:.0f}s after creation: {record_}"
    assert "Retrying" not in answer.message
    record(
        recorder,
        "image-tag-missing",
        "the image's tag is not in the local registry: the kubelet's ErrImagePull",
        images,
        core_v1,
        namespace,
    )


@pytest.mark.parametrize(
    ("life", "repo", "token", "says"),
    [
        pytest.param(
            "lora-unknown-repo",
            "standin/no-such-adapter",
            None,
            "standin/no-such-adapter: repository not found at",
            id="an unknown Hub repository",
        ),
        pytest.param(
            "lora-bad-token",
            "HF_FIXTURE_PRIVATE_REPO",
            "hf_not_the_right_token",
            "refused the token in HF_TOKEN (invalid credentials)",
            id="a private repository with a bad token",
        ),
    ],
)
def test_a_failing_lora_download_fails_the_task_with_the_downloaders_reason(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
    life: str,
    repo: str,
    token: str | None,
    says: str,
) -> None:
    server = connector()
    repo = images.get(repo, repo)
    secrets = SECRETS
    if token is not None:
        core_v1.create_namespaced_secret(
            namespace, {"metadata": {"name": "hf"}, "stringData": {"token": token}}
        )
        secrets = NIMSecrets(
            ngc_image_secret="ngc-pull",
            ngc_secret_key="api_key",
            secrets_prefix="",
            hf_token_group="hf",
            hf_token_key="token",
        )
    nim = standin(
        images,
        secrets=secrets,
        env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        **with_adapter(images, repo),
    )
    meta = deploy(server, namespace, nim)

    answer, seen = follow(server, meta, recorder, terminal, what="a terminal phase")

    assert (answer.phase, answer.reason) == ("FAILED", "InitContainerFailed"), (seen, answer)
    assert "Init container lora-downloader failed after 2 restarts with exit code 1" in (
        answer.message
    )
    assert says in answer.message
    assert "check hf_repo_ids" in answer.message
    assert "INITIALIZING/Restarting" in seen, seen
    record(
        recorder,
        life,
        f"hf_repo_ids [{repo}]"
        + (" with a token the Hub refuses" if token else ": no such repository on the Hub"),
        images,
        core_v1,
        namespace,
        logs={"lora-downloader (previous)": ("lora-downloader", True)},
    )


def test_a_server_killed_by_its_startup_probe_fails_as_a_startup_timeout(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    server = connector()
    # A 6 s window (3 x 2 s) for a model that takes 60 s: the kubelet kills and restarts it.
    nim = standin(
        images,
        env={"STANDIN_STARTUP_SECONDS": "60"},
        startup_period_seconds=2,
        startup_failure_threshold=3,
    )
    meta = deploy(server, namespace, nim)

    answer, seen = follow(server, meta, recorder, terminal, what="a terminal phase")

    assert (answer.phase, answer.reason) == ("FAILED", "StartupTimeout"), (seen, answer)
    # At the first kill: not after a crash loop of kills (the kubelet's back-off between them).
    assert "RUNNING/Restarting" not in seen and "FAILED/CrashLoop" not in seen, seen
    assert "did not pass its startup probe in time and was restarted by the kubelet" in (
        answer.message
    )
    assert "Startup probe failed: HTTP probe failed with statuscode: 503" in answer.message
    assert "raise startup_failure_threshold" in answer.message
    name = the_pod(core_v1, namespace).metadata.name
    killing = [e for e in kubelet_events(core_v1, namespace, name) if e.reason == "Killing"]
    assert killing and "failed startup probe" in killing[0].message, killing
    record(
        recorder,
        "startup-probe-kill",
        "STANDIN_STARTUP_SECONDS=60 with a startup window of 3 x 2 s: the kubelet's startup "
        "probe kills and restarts the server",
        images,
        core_v1,
        namespace,
        logs={"nim (previous)": ("nim", True)},
    )


def test_readiness_flapping_after_serving_keeps_the_server_and_the_task_succeeded(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    server = connector()
    # Ready, then readiness fails for 12 s, 20 s after the first Ready (liveness stays 200).
    nim = standin(images, env={"STANDIN_UNREADY_AFTER": "20", "STANDIN_UNREADY_FOR": "12"})
    meta = deploy(server, namespace, nim)

    served, seen = follow(server, meta, recorder, terminal, what="a terminal phase")
    assert (served.phase, served.reason) == ("SUCCEEDED", "Ready"), (seen, served)
    interrupted, during = follow(
        server,
        meta,
        recorder,
        lambda a: a.reason == "ServingInterrupted",
        timeout=90,
        what="ServingInterrupted",
    )
    assert "has served since" in interrupted.message
    assert "Readiness probe failed: HTTP probe failed with statuscode: 503" in interrupted.message
    _, after = follow(
        server, meta, recorder, lambda a: a.reason == "Ready", timeout=90, what="Ready again"
    )

    # Flyte was told SUCCEEDED throughout; the server was never stopped nor restarted.
    assert {step.split("/")[0] for step in during + after} == {"SUCCEEDED"}, during + after
    pod = the_pod(core_v1, namespace)
    assert ANNOTATION_STOPPED not in (pod.metadata.annotations or {})
    assert pod.status.phase == "Running"
    assert pod.status.container_statuses[0].restart_count == 0
    assert server.metric("nim_agent_serving_interruptions_total") >= 1
    assert server.metric("nim_agent_deletions_total") == 0
    record(
        recorder,
        "readiness-flap",
        "Ready, verified serving; 20 s later readiness fails for 12 s (STANDIN_UNREADY_AFTER/FOR), "
        "then it is Ready again",
        images,
        core_v1,
        namespace,
    )


def gpus_held_on_the_real_node(core_v1: client.CoreV1Api) -> dict[str, int]:
    """``namespace/pod`` -> nvidia.com/gpu requested, for the pods on the real node that hold
    their resources (not ended)."""
    pods = core_v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE_NAME}").items
    held = {}
    for pod in pods:
        if pod.status.phase in ("Succeeded", "Failed"):
            continue
        gpus = sum(
            int((c.resources.requests or {}).get("nvidia.com/gpu", 0))
            for c in pod.spec.containers
            if c.resources
        )
        if gpus:
            held[f"{pod.metadata.namespace}/{pod.metadata.name}"] = gpus
    return held


def test_a_server_unready_past_the_unhealthy_window_is_stopped_and_its_gpu_freed(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    settings = {"NIM_AGENT_UNHEALTHY_WINDOW": "15s"}
    server = connector(**settings)
    # Ready, then unready for good 15 s later.
    nim = standin(images, env={"STANDIN_UNREADY_AFTER": "15"})
    meta = deploy(server, namespace, nim)
    served, seen = follow(server, meta, recorder, terminal, what="a terminal phase")
    assert (served.phase, served.reason) == ("SUCCEEDED", "Ready"), (seen, served)
    name = the_pod(core_v1, namespace).metadata.name

    # Every GPU of the node but the server's is free (earlier tests' pods have gone), so a pod
    # asking for all 8 cannot be placed while the server runs.
    wait_for(
        lambda: gpus_held_on_the_real_node(core_v1) == {f"{namespace}/{name}": 1},
        timeout=120,
        what="no GPU held on the real node but the server's",
        describe=lambda: repr(gpus_held_on_the_real_node(core_v1)),
    )
    all_gpus = real_node_pod("all-gpus", images["PYTHON_BASE_IMAGE"], ["sleep", "3600"])
    for part in ("requests", "limits"):
        all_gpus["spec"]["containers"][0]["resources"][part]["nvidia.com/gpu"] = "8"
    core_v1.create_namespaced_pod(namespace, all_gpus)
    waiting = wait_for(
        lambda: next(
            (
                c.message
                for c in core_v1.read_namespaced_pod("all-gpus", namespace).status.conditions or []
                if c.type == "PodScheduled" and c.reason == "Unschedulable"
            ),
            None,
        ),
        timeout=60,
        what="pod all-gpus Unschedulable",
    )
    assert "Insufficient nvidia.com/gpu" in waiting, waiting

    stopped, during = follow(
        server,
        meta,
        recorder,
        lambda a: "nim-agent stopped the server (unhealthy" in a.message,
        timeout=120,
        what="the stop",
    )
    assert {step.split("/")[0] for step in during} == {"SUCCEEDED"}, during
    assert stopped.reason == "ServingInterrupted"
    pod = wait_for(
        lambda: (
            p
            if (p := core_v1.read_namespaced_pod(name, namespace)).status.phase == "Failed"
            else None
        ),
        timeout=60,
        what="the kubelet to end the stopped server",
    )
    assert pod.status.reason == "DeadlineExceeded", pod.status
    assert pod.spec.active_deadline_seconds == 1
    record_ = json.loads(pod.metadata.annotations[ANNOTATION_STOPPED])
    assert (record_["cause"], record_["phase"]) == ("unhealthy", "SUCCEEDED"), record_
    # Its GPU is free: the pod asking for all 8 is placed and runs.
    placed = wait_for(
        lambda: (
            p
            if (p := core_v1.read_namespaced_pod("all-gpus", namespace)).status.phase == "Running"
            else None
        ),
        timeout=120,
        what="pod all-gpus Running",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    assert placed.spec.node_name == NODE_NAME
    again = get(server, meta)
    assert (again.phase, again.reason) == ("SUCCEEDED", "ServingInterrupted"), again
    assert server.metric("nim_agent_deletions_total", cause="unhealthy") == 1
    record(
        recorder,
        "unhealthy-stopped",
        "Ready, verified serving, then unready for good 15 s later (STANDIN_UNREADY_AFTER): "
        "stopped by nim-agent past an unhealthy window of 15 s, ended by the kubelet",
        images,
        core_v1,
        namespace,
        settings=settings,
    )


def test_with_no_connector_the_kubelet_ends_the_server_at_its_ttl_and_a_later_one_cleans_up(
    connector: Callable[..., ConnectorServer],
    recorder: LifeRecorder,
    images: dict[str, str],
    core_v1: client.CoreV1Api,
    namespace: str,
) -> None:
    first = connector()
    meta = deploy(first, namespace, standin(images), ttl=timedelta(seconds=30))
    first.kill()  # SIGKILL right after CreateTask: nothing of nim-agent runs any more

    # The kubelet enforces activeDeadlineSeconds (the ttl) by itself.
    name = the_pod(core_v1, namespace).metadata.name
    pod = wait_for(
        lambda: (
            p
            if (p := core_v1.read_namespaced_pod(name, namespace)).status.phase == "Failed"
            else None
        ),
        timeout=120,
        what="the kubelet to end the pod at its deadline",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    assert pod.status.reason == "DeadlineExceeded", pod.status
    assert pod.spec.active_deadline_seconds == 30
    assert ANNOTATION_STOPPED not in (pod.metadata.annotations or {})
    assert ANNOTATION_SERVED_AT not in (pod.metadata.annotations or {})

    # A later connector answers as the DeadlineExceeded rule says, records it and deletes it.
    settings = {"NIM_AGENT_STOPPED_RETENTION": "20s"}
    later = connector(**settings)
    answer = get(later, meta, recorder)
    assert (answer.phase, answer.reason) == ("FAILED", "TtlExpired"), answer
    assert "ttl passed before it was found serving" in answer.message
    assert "activeDeadlineSeconds" in answer.message
    recorded = wait_for(
        lambda: (core_v1.read_namespaced_pod(name, namespace).metadata.annotations or {}).get(
            ANNOTATION_STOPPED
        ),
        timeout=60,
        what="the stop record",
    )
    record_ = json.loads(recorded)
    assert (record_["cause"], record_["phase"], record_["reason"]) == (
        "ttl",
        "FAILED",
        "TtlExpired",
    )
    assert get(later, meta, recorder).message == answer.message
    if recording():
        record(
            recorder,
            "deadline-no-connector",
            "ttl 30 s; the connector is SIGKILLed right "
            "after CreateTask: the kubelet's activeDeadlineSeconds ends the server; a later "
            "connector records it",
            images,
            core_v1,
            namespace,
            settings=settings,
        )
    wait_for(
        lambda: not our_pods(core_v1, namespace),
        timeout=120,
        what="the later connector to delete the pod after stopped_retention",
    )
