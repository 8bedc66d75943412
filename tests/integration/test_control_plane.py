"""The local control plane does what the connector's tests rely on (issue 3's "done when").

Each test asserts on the cluster's state: scheduling of GPU requests against the fake nodes, the
pod lives chosen by the label ``nim-agent.dev/simulate`` (devcluster/kwok/pod-stages.yaml),
garbage collection through owner references, Pod Security admission and RBAC.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client, watch

from tests.cluster import (
    GPU_RESOURCE,
    NGC_SECRET,
    NIM_IMAGE,
    POOL_LABEL,
    api_client_with_token,
    describe_namespace,
    nim_like_pod,
    wait_for,
)


def container_status(pod: client.V1Pod, name: str = "nim") -> client.V1ContainerStatus | None:
    return next((s for s in pod.status.container_statuses or [] if s.name == name), None)


def condition(pod: client.V1Pod, kind: str) -> client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


def is_ready(pod: client.V1Pod) -> bool:
    ready = condition(pod, "Ready")
    return ready is not None and ready.status == "True"


def api_message(error: client.ApiException) -> str:
    """The message of the Status object an API error carries."""
    return str(json.loads(error.body)["message"])


def state_name(state: client.V1ContainerState | None) -> str:
    """'running', 'terminated:Completed', 'waiting:CrashLoopBackOff', ... or '-'."""
    if state is None:
        return "-"
    if state.running:
        return "running"
    if state.terminated:
        return f"terminated:{state.terminated.reason}"
    if state.waiting:
        return f"waiting:{state.waiting.reason}"
    return "-"


class Pods:
    """Small helpers on the pods of one test namespace, each wait bounded."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    def create(self, manifest: dict[str, Any]) -> client.V1Pod:
        return self.core.create_namespaced_pod(self.namespace, manifest)

    def get(self, name: str) -> client.V1Pod:
        return self.core.read_namespaced_pod(name, self.namespace)

    def wait(
        self, name: str, predicate: Any, *, timeout: float, what: str, interval: float = 0.2
    ) -> client.V1Pod:
        def probe() -> client.V1Pod | None:
            pod = self.get(name)
            return pod if predicate(pod) else None

        return wait_for(
            probe,
            timeout=timeout,
            interval=interval,
            what=f"pod {name}: {what}",
            describe=lambda: describe_namespace(self.api, self.namespace),
        )

    def wait_gone(self, name: str, *, timeout: float) -> None:
        def gone() -> bool:
            try:
                self.get(name)
            except client.ApiException as e:
                if e.status == 404:
                    return True
                raise
            return False

        wait_for(gone, timeout=timeout, what=f"pod {name} to be deleted")

    def observe(self, name: str, until: Any, *, timeout: int) -> list[tuple[str, str, str, bool]]:
        """Watch one pod until ``until(pod)``; return the states seen (phase, init, main, ready)."""
        seen: list[tuple[str, str, str, bool]] = []
        w = watch.Watch()
        for event in w.stream(
            self.core.list_namespaced_pod,
            self.namespace,
            field_selector=f"metadata.name={name}",
            timeout_seconds=timeout,
            _request_timeout=timeout + 5,
        ):
            pod = event["object"]
            init = next(iter(pod.status.init_container_statuses or []), None)
            main = container_status(pod)
            step = (
                pod.status.phase,
                state_name(init.state if init else None),
                state_name(main.state if main else None),
                is_ready(pod),
            )
            if not seen or seen[-1] != step:
                seen.append(step)
            if until(pod):
                w.stop()
                return seen
        raise AssertionError(f"pod {name} did not get there within {timeout}s; saw {seen}")


@pytest.fixture
def pods(api_client: client.ApiClient, namespace: str) -> Pods:
    return Pods(api_client, namespace)


def test_fake_nodes_offer_gpus_behind_the_gpu_taint(core_v1: client.CoreV1Api) -> None:
    nodes = core_v1.list_node(label_selector="type=kwok").items
    gpu_nodes = [n for n in nodes if n.metadata.labels.get(POOL_LABEL) == "gpu"]
    cpu_nodes = [n for n in nodes if n.metadata.labels.get(POOL_LABEL) == "cpu"]
    assert len(gpu_nodes) >= 4
    assert len(cpu_nodes) >= 1
    for node in nodes:
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True", node.metadata.name
    for node in gpu_nodes:
        assert node.status.allocatable[GPU_RESOURCE] == "8"
        assert node.status.allocatable["cpu"] == "64"
        assert node.status.allocatable["memory"] == "512Gi"
        taints = {(t.key, t.value, t.effect) for t in node.spec.taints}
        assert (GPU_RESOURCE, "present", "NoSchedule") in taints
    for node in cpu_nodes:
        assert GPU_RESOURCE not in node.status.allocatable
        assert not node.spec.taints


def test_gpu_pod_with_the_toleration_is_scheduled_on_a_gpu_node_and_becomes_ready(
    pods: Pods, core_v1: client.CoreV1Api
) -> None:
    pods.create(nim_like_pod("one-gpu", gpu=1))
    pod = pods.wait("one-gpu", is_ready, timeout=30, what="Ready")
    node = core_v1.read_node(pod.spec.node_name)
    assert node.metadata.labels[POOL_LABEL] == "gpu"
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip
    assert condition(pod, "PodScheduled").status == "True"
    main = container_status(pod)
    assert main.ready and main.started and main.state.running
    assert main.restart_count == 0


def test_pod_asking_more_gpus_than_any_node_has_stays_pending_with_the_scheduler_reason(
    pods: Pods,
) -> None:
    pods.create(nim_like_pod("nine-gpus", gpu=9))

    def unschedulable(pod: client.V1Pod) -> bool:
        scheduled = condition(pod, "PodScheduled")
        return scheduled is not None and scheduled.reason == "Unschedulable"

    pod = pods.wait("nine-gpus", unschedulable, timeout=30, what="PodScheduled=False Unschedulable")
    scheduled = condition(pod, "PodScheduled")
    assert scheduled.status == "False"
    assert "Insufficient nvidia.com/gpu" in scheduled.message
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name


@pytest.mark.parametrize("simulate", [None, "ready"], ids=["unlabelled", "ready"])
def test_ready_life_runs_the_init_container_before_the_main_container_then_becomes_ready(
    pods: Pods, simulate: str | None
) -> None:
    pods.create(nim_like_pod("ready", simulate=simulate))
    seen = pods.observe("ready", is_ready, timeout=30)

    # INITIALIZING is observable: the init container runs while the main one waits.
    assert ("Pending", "running", "waiting:PodInitializing", False) in seen, seen
    # The main container starts only once the init container completed, and before Ready.
    first_main_running = next(i for i, s in enumerate(seen) if s[2] == "running")
    assert all(s[1] == "terminated:Completed" for s in seen[first_main_running:]), seen
    assert seen[first_main_running][3] is False, seen
    assert seen[-1] == ("Running", "terminated:Completed", "running", True), seen

    pod = pods.get("ready")
    init = pod.status.init_container_statuses[0]
    main = container_status(pod)
    assert init.state.terminated.exit_code == 0
    assert init.state.terminated.finished_at <= main.state.running.started_at
    assert condition(pod, "Initialized").status == "True"
    assert condition(pod, "ContainersReady").status == "True"


def test_ready_after_annotation_delays_readiness(pods: Pods) -> None:
    pods.create(
        nim_like_pod(
            "slow", init_container=False, annotations={"nim-agent.dev/simulate-ready-after": "4s"}
        )
    )
    pod = pods.wait("slow", is_ready, timeout=30, what="Ready")
    started = container_status(pod).state.running.started_at
    became_ready = condition(pod, "Ready").last_transition_time
    # API times have whole seconds.
    assert (became_ready - started).total_seconds() >= 3


def test_never_ready_pod_runs_but_never_becomes_ready(pods: Pods) -> None:
    pods.create(nim_like_pod("never", simulate="never-ready"))
    pods.wait(
        "never",
        lambda p: (s := container_status(p)) is not None and s.state.running is not None,
        timeout=30,
        what="main container running",
    )
    # A ready pod would be Ready 1.5 s after its container started; give it well over that.
    with pytest.raises(AssertionError, match="timed out"):
        pods.wait("never", is_ready, timeout=5, what="Ready (must not happen)")
    pod = pods.get("never")
    assert pod.status.phase == "Running"
    main = container_status(pod)
    assert main.ready is False
    assert main.restart_count == 0
    assert condition(pod, "Ready").reason == "ContainersNotReady"


@pytest.mark.parametrize(
    ("simulate", "exit_code", "reason"),
    [("crashloop", 1, "Error"), ("oom", 137, "OOMKilled")],
)
def test_crashing_pod_restarts_again_and_again_with_its_exit_code_and_reason(
    pods: Pods, simulate: str, exit_code: int, reason: str
) -> None:
    pods.create(nim_like_pod("crash", simulate=simulate))

    def in_backoff_after_restarts(pod: client.V1Pod) -> bool:
        main = container_status(pod)
        return (
            main is not None
            and main.restart_count >= 2
            and main.state.waiting is not None
            and main.state.waiting.reason == "CrashLoopBackOff"
        )

    pod = pods.wait(
        "crash", in_backoff_after_restarts, timeout=40, what="CrashLoopBackOff, 2+ restarts"
    )
    main = container_status(pod)
    assert main.last_state.terminated.exit_code == exit_code
    assert main.last_state.terminated.reason == reason
    assert "back-off" in main.state.waiting.message
    assert main.ready is False
    assert pod.status.phase == "Running"
    assert not is_ready(pod)
    restarts = main.restart_count
    pods.wait(
        "crash",
        lambda p: container_status(p).restart_count > restarts,
        timeout=15,
        what="restartCount to keep growing",
    )
    events = pods.core.list_namespaced_event(
        pods.namespace, field_selector="involvedObject.name=crash,reason=BackOff"
    ).items
    assert events, "a BackOff event for the crashing container"


def test_image_pull_error_pod_waits_in_errimagepull_and_imagepullbackoff(pods: Pods) -> None:
    pods.create(nim_like_pod("pull", simulate="image-pull-error"))
    reasons: set[str] = set()

    def pull_reasons_seen(pod: client.V1Pod) -> bool:
        main = container_status(pod)
        if main is not None and main.state.waiting is not None:
            assert main.state.waiting.reason in {
                "PodInitializing",
                "ContainerCreating",
                "ErrImagePull",
                "ImagePullBackOff",
            }
            if main.state.waiting.reason in {"ErrImagePull", "ImagePullBackOff"}:
                assert NIM_IMAGE in main.state.waiting.message
                reasons.add(main.state.waiting.reason)
        return reasons == {"ErrImagePull", "ImagePullBackOff"}

    pod = pods.wait("pull", pull_reasons_seen, timeout=30, interval=0.1, what="both pull errors")
    assert pod.status.phase == "Pending"
    assert container_status(pod).state.running is None
    assert pod.status.init_container_statuses[0].state.terminated.reason == "Completed"


def test_config_error_pod_names_the_missing_secret(pods: Pods) -> None:
    pods.create(nim_like_pod("config", simulate="config-error"))

    def config_error(pod: client.V1Pod) -> bool:
        main = container_status(pod)
        waiting = main.state.waiting if main else None
        return waiting is not None and waiting.reason == "CreateContainerConfigError"

    pod = pods.wait("config", config_error, timeout=30, what="CreateContainerConfigError")
    assert container_status(pod).state.waiting.message == f'secret "{NGC_SECRET}" not found'
    assert pod.status.phase == "Pending"
    assert not is_ready(pod)


@pytest.mark.parametrize("simulate", ["ready", "crashloop", "image-pull-error", "config-error"])
def test_deleted_pod_goes_away_whatever_its_life(pods: Pods, simulate: str) -> None:
    pods.create(nim_like_pod("doomed", simulate=simulate))
    pods.wait(
        "doomed",
        lambda p: p.status.phase is not None and p.status.pod_ip,
        timeout=30,
        what="started by the fake kubelet",
    )
    pods.core.delete_namespaced_pod("doomed", pods.namespace)  # default 30 s grace period
    pods.wait_gone("doomed", timeout=15)


def test_deleting_a_pod_garbage_collects_the_service_it_owns(pods: Pods) -> None:
    pod = pods.create(nim_like_pod("owner", gpu=0, init_container=False))
    service = {
        "metadata": {
            "name": "owner",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.metadata.name,
                    "uid": pod.metadata.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"selector": {"app.kubernetes.io/name": "nim"}, "ports": [{"port": 8000}]},
    }
    created = pods.core.create_namespaced_service(pods.namespace, service)
    assert created.spec.cluster_ip
    pods.core.delete_namespaced_pod("owner", pods.namespace)
    pods.wait_gone("owner", timeout=15)

    def service_gone() -> bool:
        try:
            pods.core.read_namespaced_service("owner", pods.namespace)
        except client.ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    wait_for(service_gone, timeout=30, what="the garbage collector to delete the owned Service")


def test_restricted_namespace_rejects_a_privileged_pod_and_admits_a_compliant_one(
    core_v1: client.CoreV1Api, namespace: str
) -> None:
    core_v1.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    privileged = nim_like_pod("privileged", gpu=0, init_container=False)
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    with pytest.raises(client.ApiException) as rejected:
        core_v1.create_namespaced_pod(namespace, privileged)
    assert rejected.value.status == 403
    message = api_message(rejected.value)
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'privileged (container "nim" must not set securityContext.privileged=true)' in message

    compliant = core_v1.create_namespaced_pod(namespace, nim_like_pod("compliant", gpu=0))
    assert compliant.metadata.uid


def test_service_account_bound_to_a_role_can_create_pods_but_not_read_secrets(
    api_client: client.ApiClient, core_v1: client.CoreV1Api, namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    core_v1.create_namespaced_service_account(namespace, {"metadata": {"name": "deployer"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pods"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["create", "get", "list", "watch", "delete"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "deployer-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": namespace}],
        },
    )
    core_v1.create_namespaced_secret(
        namespace, {"metadata": {"name": NGC_SECRET}, "stringData": {"api_key": "not-a-key"}}
    )
    token = core_v1.create_namespaced_service_account_token(
        "deployer", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    with api_client_with_token(api_client, token) as as_deployer:
        sa_core = client.CoreV1Api(as_deployer)
        created = sa_core.create_namespaced_pod(namespace, nim_like_pod("by-sa", gpu=0))
        assert created.metadata.name == "by-sa"
        for read in (
            lambda: sa_core.read_namespaced_secret(NGC_SECRET, namespace),
            lambda: sa_core.list_namespaced_secret(namespace),
        ):
            with pytest.raises(client.ApiException) as denied:
                read()
            assert denied.value.status == 403
            message = api_message(denied.value)
            assert f'"system:serviceaccount:{namespace}:deployer" cannot' in message
            assert 'resource "secrets"' in message
