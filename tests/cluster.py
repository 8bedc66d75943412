"""The local control plane, as tests (and benchmarks) use it: start, connect, wait, describe.

One control plane serves a whole test session. :func:`ensure_running` starts it the way
``make cluster-up`` does (building the binaries first if the cache lacks them) and raises
:class:`ClusterUnavailable` with the reason when it cannot: integration tests fail then, they are
never skipped.

Example::

    kubeconfig = ensure_running()
    api = new_api_client(kubeconfig)
    pod = wait_for(lambda: ready_pod(api, "ns", "p"), timeout=30, what="pod p Ready")
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

from nim_agent.contract import LABEL_SIMULATE, OWNED_BY_US

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVCLUSTER = Path(os.environ.get("DEVCLUSTER_DIR", REPO_ROOT / ".devcluster"))
KUBECONFIG = DEVCLUSTER / "kubeconfig"
CLUSTER_SCRIPT = REPO_ROOT / "devcluster" / "cluster.sh"

# The fake nodes of `devcluster/cluster.sh` (labels and the GPU taint).
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
POOL_LABEL = "nim-agent.dev/pool"
SIMULATE_LABEL = LABEL_SIMULATE

# Starting from nothing may include a cold build of Kubernetes (30-50 minutes on 2 cores).
START_TIMEOUT_S = float(os.environ.get("DEVCLUSTER_START_TIMEOUT", 90 * 60))

T = TypeVar("T")


class ClusterUnavailable(RuntimeError):
    """The local control plane is not running and could not be started; the message says why."""


def is_running() -> bool:
    """True when the apiserver of the local control plane answers /readyz."""
    result = subprocess.run(
        [str(CLUSTER_SCRIPT), "status"], capture_output=True, timeout=30, check=False
    )
    return result.returncode == 0


def ensure_running(timeout: float = START_TIMEOUT_S) -> Path:
    """Start the local control plane unless it runs; return the path of its kubeconfig.

    Runs ``make cluster-up`` (build or reuse the binaries, start, add the fake nodes); a running
    control plane is left as it is.
    """
    if not is_running():
        try:
            result = subprocess.run(
                ["make", "--no-print-directory", "cluster-up"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise ClusterUnavailable(
                f"`make cluster-up` did not finish within {timeout:.0f}s"
            ) from e
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
            raise ClusterUnavailable(
                f"`make cluster-up` failed (exit {result.returncode}); the local control plane "
                f"is required for these tests:\n{tail}"
            )
    if not KUBECONFIG.is_file():
        raise ClusterUnavailable(f"the control plane runs but {KUBECONFIG} is missing")
    return KUBECONFIG


def new_api_client(kubeconfig: Path = KUBECONFIG) -> client.ApiClient:
    """A synchronous API client for the admin user of the local control plane."""
    return config.new_client_from_config(config_file=str(kubeconfig))


def api_client_with_token(admin: client.ApiClient, token: str) -> client.ApiClient:
    """A client for the same apiserver that authenticates with a bearer token only.

    Used to act as a ServiceAccount: the admin's client certificate is left out.
    """
    admin_conf = admin.configuration
    conf = client.Configuration()
    conf.host = admin_conf.host
    conf.ssl_ca_cert = admin_conf.ssl_ca_cert
    conf.verify_ssl = admin_conf.verify_ssl
    conf.api_key = {"authorization": token}
    conf.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(conf)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that; bounded by ``timeout``.

    Raises ``AssertionError`` naming ``what`` and the last value seen (or ``describe()``), so a
    timeout says what the cluster looked like.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = probe()
        except client.ApiException as e:
            last = f"ApiException {e.status} {e.reason}: {e.body}"
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            seen = describe() if describe else repr(last)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; saw: {seen}")
        time.sleep(interval)


def to_api_dict(api: client.ApiClient, obj: Any) -> Any:
    """A client model as the API's own JSON shape (camelCase, unset fields left out)."""
    return api.sanitize_for_serialization(obj)


def describe_namespace(api: client.ApiClient, namespace: str) -> str:
    """Pods (with status), events and nodes, as text: what a failing test leaves behind."""
    core = client.CoreV1Api(api)
    parts: list[str] = []
    try:
        pods = core.list_namespaced_pod(namespace).items
        parts.append(f"== pods in {namespace}: {len(pods)}")
        for pod in pods:
            doc = {
                "name": pod.metadata.name,
                "labels": pod.metadata.labels,
                "deletionTimestamp": pod.metadata.deletion_timestamp,
                "nodeName": pod.spec.node_name,
                "status": to_api_dict(api, pod.status),
            }
            parts.append(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
        events = core.list_namespaced_event(namespace).items
        events.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.first_timestamp))
        parts.append(f"== events in {namespace}: {len(events)}")
        for e in events:
            obj = e.involved_object
            parts.append(
                f"{e.last_timestamp or e.event_time} {e.type} {e.reason} "
                f"{obj.kind}/{obj.name}: {e.message} (x{e.count or 1})"
            )
        nodes = core.list_node().items
        parts.append(f"== nodes: {len(nodes)}")
        for node in nodes:
            ready = next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "?")
            alloc = node.status.allocatable or {}
            parts.append(
                f"{node.metadata.name} Ready={ready} cpu={alloc.get('cpu')} "
                f"memory={alloc.get('memory')} gpu={alloc.get(GPU_RESOURCE, '0')} "
                f"taints={[t.key for t in node.spec.taints or []]}"
            )
    except Exception as e:  # a dump must never hide the test's own failure
        parts.append(f"(could not describe the cluster: {e!r})")
    return "\n".join(parts)


# --------------------------------------------------------------------------- what tests deploy


NIM_IMAGE = "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0"
NGC_SECRET = "ngc-api-key"
RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def nim_like_pod(
    name: str,
    *,
    simulate: str | None = None,
    gpu: int = 1,
    init_container: bool = True,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod shaped like a NIM deployment, made by hand (not by nim-agent): LoRA init container,
    GPU, NGC key from a Secret, Pod Security "restricted"."""
    labels = {"app.kubernetes.io/name": "nim", **(labels or {})}
    if simulate is not None:
        labels[SIMULATE_LABEL] = simulate
    resources = {"cpu": "1", "memory": "20Gi"}
    if gpu:
        resources[GPU_RESOURCE] = str(gpu)
    spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "nim",
                "image": NIM_IMAGE,
                "ports": [{"containerPort": 8000, "name": "http"}],
                "env": [
                    {
                        "name": "NGC_API_KEY",
                        "valueFrom": {"secretKeyRef": {"name": NGC_SECRET, "key": "api_key"}},
                    }
                ],
                "resources": {"requests": resources, "limits": resources},
                "startupProbe": {
                    "httpGet": {"path": "/v1/health/ready", "port": 8000},
                    "failureThreshold": 100,
                },
                "securityContext": RESTRICTED_CONTAINER_SECURITY,
            }
        ],
        "tolerations": [GPU_TOLERATION] if gpu else [],
    }
    if init_container:
        spec["initContainers"] = [
            {
                "name": "lora-downloader",
                "image": "busybox:1.36",
                "command": ["true"],
                "securityContext": RESTRICTED_CONTAINER_SECURITY,
            }
        ]
    return {
        "metadata": {"name": name, "labels": labels, "annotations": annotations or {}},
        "spec": spec,
    }


def our_pods(core_v1: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    """The pods nim-agent made in ``namespace``."""
    return list(core_v1.list_namespaced_pod(namespace, label_selector=OWNED_BY_US).items)


def our_services(core_v1: client.CoreV1Api, namespace: str) -> list[client.V1Service]:
    """The Services nim-agent made in ``namespace``."""
    return list(core_v1.list_namespaced_service(namespace, label_selector=OWNED_BY_US).items)


def names(objects: Any) -> list[str]:
    """The sorted names of client objects."""
    return sorted(o.metadata.name for o in objects)


def leftovers(core_v1: client.CoreV1Api, namespace: str) -> list[str]:
    """``pod ns/name`` and ``service ns/name`` for every object of ours in ``namespace`` that
    still holds something: a stopped server's pod has ended (no containers, no GPU) and is kept,
    with its Service, only so that its verdict stays readable for the retention; it is no leak."""
    pods = our_pods(core_v1, namespace)
    ended = {p.metadata.name for p in pods if not holds_resources(p)}
    return [f"pod {namespace}/{p.metadata.name}" for p in pods if holds_resources(p)] + [
        f"service {namespace}/{n}"
        for n in names(our_services(core_v1, namespace))
        if n not in ended
    ]


def holds_resources(pod: client.V1Pod) -> bool:
    """Whether a pod still counts against its node: it has not ended (Failed or Succeeded)."""
    return (pod.status.phase if pod.status else None) not in ("Failed", "Succeeded")


def running_pods(core_v1: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    """Our pods that still hold something (not ended, e.g. not stopped by nim-agent)."""
    return [p for p in our_pods(core_v1, namespace) if holds_resources(p)]


def stop_record_of(pod: client.V1Pod) -> dict[str, Any] | None:
    """The `StopRecord` nim-agent wrote on a pod it stopped (as a dict), or None."""
    from nim_agent.contract import ANNOTATION_STOPPED

    raw = (pod.metadata.annotations or {}).get(ANNOTATION_STOPPED)
    return json.loads(raw) if raw else None


def stopped_pods(core_v1: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    """Our pods nim-agent stopped whose containers the kubelet has ended (phase Failed)."""
    return [
        p
        for p in our_pods(core_v1, namespace)
        if p.status.phase == "Failed" and stop_record_of(p) is not None
    ]
