"""Unit tests of `nim_agent.status.classify`: one table of pod states, and robustness checks.

Pods are built by `make_pod` from short descriptions; times are seconds after `T0`, the pod's
creation, so a case reads as a timeline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nim_agent.status as status
from nim_agent.status import (
    Classification,
    LogRequest,
    Phase,
    Reason,
    StatusPolicy,
    classify,
    flyte_phase,
    is_terminal,
)

T0 = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)
IMAGE = "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0"
ENDPOINT = "http://llama3-8b-a1b2c3.flyte.svc.cluster.local:8000"
POLICY = StatusPolicy()  # crash loop at 3 restarts, 15m unschedulable, 30m startup, 2m pull grace
UID = "0b7c6f1e-0000-4000-8000-000000000001"
MINUTE = 60

# ---------------------------------------------------------------------------------------------
# Builders: plain dicts in the API's camelCase form, like the API server returns them.


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": message}}


def running(since: float) -> dict[str, Any]:
    return {"running": {"startedAt": ts(since)}}


def terminated(
    code: int, reason: str = "Error", message: str = "", at: float = 0
) -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": reason,
            "message": message,
            "startedAt": ts(at),
            "finishedAt": ts(at + 1),
        }
    }


def container(
    name: str = "nim",
    state: dict[str, Any] | None = None,
    *,
    last: dict[str, Any] | None = None,
    restarts: int = 0,
    ready: bool = False,
    started: bool | None = None,
) -> dict[str, Any]:
    status = {
        "name": name,
        "image": IMAGE if name == "nim" else "ghcr.io/example/lora-downloader:1",
        "state": state if state is not None else waiting("ContainerCreating"),
        "lastState": last or {},
        "restartCount": restarts,
        "ready": ready,
    }
    if started is not None:
        status["started"] = started
    return status


def cond(
    kind: str, state: str, at: float = 5, reason: str = "", message: str = ""
) -> dict[str, Any]:
    return {
        "type": kind,
        "status": state,
        "lastTransitionTime": ts(at),
        "reason": reason,
        "message": message,
    }


def unschedulable(message: str = "") -> dict[str, Any]:
    return cond("PodScheduled", "False", 1, "Unschedulable", message)


def make_pod(
    *containers: dict[str, Any],
    init: Sequence[dict[str, Any]] = (),
    phase: str = "Pending",
    node: str | None = "gpu-node-1",
    conditions: Sequence[dict[str, Any]] | None = None,
    reason: str = "",
    message: str = "",
    deleting: float | None = None,
    gates: Sequence[str] = (),
    nominated: str = "",
) -> dict[str, Any]:
    """A NIM pod created at T0; scheduled at 5 s on `node` unless `conditions` say otherwise."""
    main = list(containers) or [container()]
    if conditions is None:
        conditions = [cond("PodScheduled", "True", 5)] if node else []
    pod: dict[str, Any] = {
        "metadata": {
            "name": "llama3-8b-a1b2c3",
            "namespace": "flyte",
            "uid": UID,
            "creationTimestamp": ts(0),
        },
        "spec": {
            "containers": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "resources": {"limits": {"memory": "20Gi"}},
                }
                for c in main
            ],
            "initContainers": [
                {"name": c["name"], "image": c["image"], "resources": {"limits": {"memory": "2Gi"}}}
                for c in init
            ],
        },
        "status": {
            "phase": phase,
            "conditions": list(conditions),
            "containerStatuses": main,
            "initContainerStatuses": list(init),
        },
    }
    if node:
        pod["spec"]["nodeName"] = node
        pod["status"]["podIP"] = "10.0.3.7"
    if reason or message:
        pod["status"].update(reason=reason, message=message)
    if deleting is not None:
        pod["metadata"]["deletionTimestamp"] = ts(deleting)
    if gates:
        pod["spec"]["schedulingGates"] = [{"name": g} for g in gates]
    if nominated:
        pod["status"]["nominatedNodeName"] = nominated
    return pod


def event(
    reason: str,
    message: str,
    at: float,
    *,
    kind: str = "Warning",
    container: str | None = None,
    uid: str = UID,
) -> dict[str, Any]:
    involved: dict[str, Any] = {"kind": "Pod", "name": "llama3-8b-a1b2c3", "uid": uid}
    if container:
        involved["fieldPath"] = f"spec.containers{{{container}}}"
    return {
        "reason": reason,
        "message": message,
        "type": kind,
        "count": 1,
        "firstTimestamp": ts(at),
        "lastTimestamp": ts(at),
        "involvedObject": involved,
    }


def ready_pod(ready_at: float = 100) -> dict[str, Any]:
    return make_pod(
        container(state=running(20), ready=True),
        phase="Running",
        conditions=[
            cond("PodScheduled", "True", 5),
            cond("Initialized", "True", 6),
            cond("ContainersReady", "True", ready_at),
            cond("Ready", "True", ready_at),
        ],
    )


def annotated(pod: dict[str, Any], **annotations: str) -> dict[str, Any]:
    """`pod` with nim-agent's annotations: served_at="...", stopped="..." (keys without prefix)."""
    keys = {"served_at": "nim-agent.dev/served-at", "stopped": "nim-agent.dev/stopped"}
    pod["metadata"]["annotations"] = {keys[k]: v for k, v in annotations.items()}
    return pod


def stopped(phase: str, reason: str, message: str, cause: str = "failure") -> str:
    return json.dumps(
        {"cause": cause, "at": ts(300), "phase": phase, "reason": reason, "message": message}
    )


def unready_after_serving(*main: dict[str, Any]) -> dict[str, Any]:
    """A pod Ready at 100 s, unready again since 2,000 s."""
    return make_pod(
        *main,
        phase="Running",
        conditions=[
            cond("PodScheduled", "True", 5),
            cond("Initialized", "True", 6),
            cond("ContainersReady", "False", 2000),
            cond("Ready", "False", 2000, "ContainersNotReady"),
        ],
    )


LORA = "lora-downloader"
SECRET_MISSING = 'secret "ngc-api" not found'
PULL_TIMEOUT = (
    f'failed to pull and unpack image "{IMAGE}": failed to copy: read tcp 10.0.0.4:51234->'
    "1.2.3.4:443: i/o timeout"
)

# ---------------------------------------------------------------------------------------------
# The table.


@dataclass(frozen=True)
class Case:
    pod: Mapping[str, Any] | None
    phase: Phase
    reason: Reason
    has: Sequence[str] = ()  # fragments the message must contain
    lacks: Sequence[str] = ()  # fragments it must not contain
    events: Sequence[Mapping[str, Any]] = ()
    now: float = MINUTE  # seconds after creation
    log_tail: str | None = None


CASES = [
    # --- scheduling
    pytest.param(
        Case(
            make_pod(
                node=None,
                conditions=[
                    unschedulable(
                        "0/5 nodes are available: 4 Insufficient nvidia.com/gpu, 1 node(s) had "
                        "untolerated taint {node-role.kubernetes.io/control-plane: }."
                    )
                ],
            ),
            Phase.WAITING_FOR_RESOURCES,
            Reason.UNSCHEDULABLE,
            has=["0/5 nodes are available", "4 Insufficient nvidia.com/gpu", "2m5s", "15m"],
            now=125,
        ),
        id="an unschedulable pod waits for resources with the scheduler's message",
    ),
    pytest.param(
        Case(
            make_pod(node=None, conditions=[unschedulable()]),
            Phase.WAITING_FOR_RESOURCES,
            Reason.UNSCHEDULABLE,
            has=["0/2 nodes are available: 2 Insufficient nvidia.com/gpu"],
            events=[
                event("FailedScheduling", "0/2 nodes are available: 1 Insufficient cpu.", 2),
                event(
                    "FailedScheduling",
                    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                    30,
                ),
            ],
        ),
        id="the latest FailedScheduling event explains a condition without a message",
    ),
    pytest.param(
        Case(
            make_pod(node=None, conditions=[unschedulable()]),
            Phase.WAITING_FOR_RESOURCES,
            Reason.UNSCHEDULABLE,
            lacks=["stale"],
            events=[
                event("FailedScheduling", "stale message", 2, uid="another-pod-with-the-same-name")
            ],
        ),
        id="events of an older pod with the same name are ignored",
    ),
    pytest.param(
        Case(
            make_pod(node=None, conditions=[unschedulable("0/5 nodes are available.")]),
            Phase.FAILED,
            Reason.UNSCHEDULABLE,
            has=["within 15m", "waited 16m", "0/5 nodes are available", "tolerations"],
            now=16 * MINUTE,
        ),
        id="an unschedulable pod fails after the unschedulable timeout",
    ),
    pytest.param(
        Case(
            make_pod(
                node=None,
                conditions=[unschedulable("0/1 nodes are available.")],
                nominated="gpu-node-2",
            ),
            Phase.WAITING_FOR_RESOURCES,
            Reason.UNSCHEDULABLE,
            has=["preempting lower-priority pods on node gpu-node-2"],
        ),
        id="a pod nominated for a node by preemption says so",
    ),
    pytest.param(
        Case(make_pod(node=None), Phase.QUEUED, Reason.QUEUED, has=["scheduler", "5s"], now=5),
        id="a pod the scheduler has not looked at yet is queued",
    ),
    pytest.param(
        Case(
            make_pod(node=None),
            Phase.FAILED,
            Reason.UNSCHEDULABLE,
            has=["spec.schedulerName"],
            now=20 * MINUTE,
        ),
        id="a pod no scheduler picks up fails after the unschedulable timeout",
    ),
    pytest.param(
        Case(
            make_pod(
                node=None,
                gates=["kueue.x-k8s.io/admission"],
                conditions=[cond("PodScheduled", "False", 1, "SchedulingGated")],
            ),
            Phase.WAITING_FOR_RESOURCES,
            Reason.SCHEDULING_GATED,
            has=["kueue.x-k8s.io/admission", "2h"],
            now=2 * 60 * MINUTE,
        ),
        id="a scheduling-gated pod waits in its queue without a timeout",
    ),
    # --- initializing
    pytest.param(
        Case(
            make_pod(container(state=waiting("ContainerCreating"))),
            Phase.INITIALIZING,
            Reason.PULLING_IMAGE,
            has=[IMAGE, "container nim", "50s"],
            events=[
                event("Pulling", f'Pulling image "{IMAGE}"', 10, kind="Normal", container="nim")
            ],
        ),
        id="a pod pulling its image is initializing and names the image",
    ),
    pytest.param(
        Case(
            make_pod(container(state=waiting("ContainerCreating"))),
            Phase.INITIALIZING,
            Reason.CONTAINER_CREATING,
            has=["Creating container nim on node gpu-node-1", "55s since scheduling"],
            events=[
                event("Pulling", "Pulling image", 10, kind="Normal", container="nim"),
                event("Pulled", "Successfully pulled image", 40, kind="Normal", container="nim"),
            ],
        ),
        id="a pod whose image is pulled is initializing while its container is created",
    ),
    pytest.param(
        Case(
            make_pod(container(state=waiting("ContainerCreating"))),
            Phase.INITIALIZING,
            Reason.CONTAINER_CREATING,
            has=["FailedMount", 'persistentvolumeclaim "nim-cache" not found'],
            events=[
                event(
                    "FailedMount",
                    'MountVolume.SetUp failed: persistentvolumeclaim "nim-cache" not found',
                    30,
                )
            ],
        ),
        id="a creating pod shows the latest warning event",
    ),
    pytest.param(
        Case(
            make_pod(container(state=waiting("ContainerCreating"))),
            Phase.INITIALIZING,
            Reason.CONTAINER_CREATING,
            lacks=["Insufficient", "last warning"],
            events=[event("FailedScheduling", "0/2 nodes are available: 2 Insufficient cpu", 2)],
        ),
        id="scheduling warnings from before the pod was placed are not shown while creating",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("PodInitializing")),
                init=[container(LORA, running(48))],
                conditions=[cond("PodScheduled", "True", 5), cond("Initialized", "False", 5)],
            ),
            Phase.INITIALIZING,
            Reason.INIT_CONTAINER_RUNNING,
            has=["Downloading LoRA adapters (init container lora-downloader running, 12s)"],
        ),
        id="a running LoRA init container is reported as downloading adapters",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("PodInitializing")),
                init=[container("wait-for-cache", running(30))],
            ),
            Phase.INITIALIZING,
            Reason.INIT_CONTAINER_RUNNING,
            has=["Running init container wait-for-cache, 30s"],
        ),
        id="another running init container is named",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("PodInitializing")),
                init=[
                    container(
                        LORA, waiting("CrashLoopBackOff"), last=terminated(1, at=20), restarts=1
                    )
                ],
            ),
            Phase.INITIALIZING,
            Reason.RESTARTING,
            has=["lora-downloader", "exit code 1", "restart 1", "FAILED at 3"],
        ),
        id="an init container failing below the threshold is retried",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("PodInitializing")),
                init=[
                    container(
                        LORA,
                        waiting("CrashLoopBackOff"),
                        last=terminated(1, message="401 Client Error: Unauthorized for url"),
                        restarts=3,
                    )
                ],
            ),
            Phase.FAILED,
            Reason.INIT_CONTAINER_FAILED,
            has=[
                "lora-downloader",
                "exit code 1",
                "401 Client Error",
                "hf_repo_ids",
                "hf_token_key",
            ],
        ),
        id="a crash-looping LoRA init container fails pointing at hf_repo_ids and the HF token",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("PodInitializing")),
                init=[container(LORA, terminated(1, message="RepositoryNotFoundError"))],
                phase="Failed",
            ),
            Phase.FAILED,
            Reason.INIT_CONTAINER_FAILED,
            has=["lora-downloader", "exit code 1", "RepositoryNotFoundError", "hf_repo_ids"],
        ),
        id="a failed pod whose init container exited non-zero fails naming it",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("PodInitializing")),
                init=[
                    container(
                        "lora-inputs",
                        waiting("CrashLoopBackOff"),
                        last=terminated(
                            1, message="adapter support: cannot download s3://b/raw/o0", at=20
                        ),
                        restarts=3,
                    )
                ],
            ),
            Phase.FAILED,
            Reason.INIT_CONTAINER_FAILED,
            has=["lora-inputs", "cannot download s3://b/raw/o0", "adapter_inputs_secret"],
            lacks=["hf_repo_ids"],
        ),
        id="a failing download of adapter inputs points at the object-store access",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("PodInitializing")),
                init=[
                    container(LORA, waiting("CrashLoopBackOff"), last=terminated(137, "OOMKilled"))
                ],
            ),
            Phase.FAILED,
            Reason.INIT_CONTAINER_FAILED,
            has=["lora-downloader", "OOMKilled", "`lora_adapter_mem`", "2Gi"],
        ),
        id="an OOMKilled LoRA init container suggests raising lora_adapter_mem",
    ),
    # --- image pull, config and create errors
    pytest.param(
        Case(
            make_pod(container(state=waiting("ErrImagePull", PULL_TIMEOUT))),
            Phase.INITIALIZING,
            Reason.IMAGE_PULL_ERROR,
            has=[IMAGE, "i/o timeout", "Retrying, 30s", "FAILED after 2m"],
            events=[event("Failed", f"Failed to pull image: {PULL_TIMEOUT}", 30, container="nim")],
        ),
        id="a transient image pull error is tolerated within the grace",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"'))
            ),
            Phase.FAILED,
            Reason.IMAGE_PULL_ERROR,
            has=[IMAGE, "503 Service Unavailable", "ngc_image_secret", "ImagePullBackOff"],
            events=[
                event(
                    "Failed", "Failed to pull image: 503 Service Unavailable", 10, container="nim"
                ),
                event("BackOff", f'Back-off pulling image "{IMAGE}"', 40, container="nim"),
            ],
            now=10 + 2 * MINUTE,
        ),
        id="an image pull back-off past the grace fails with the registry's message",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting(
                        "ImagePullBackOff",
                        f'Back-off pulling image "{IMAGE}": ErrImagePull: rpc error: '
                        f'code = NotFound desc = failed to resolve reference "{IMAGE}": '
                        f"{IMAGE}: not found",
                    )
                )
            ),
            Phase.FAILED,
            Reason.IMAGE_PULL_ERROR,
            has=[IMAGE, "code = NotFound", "image name and tag"],
            lacks=["Retrying"],
            # What kubelet v1.37 wrote on the real node (tests/unit/fixtures/kubelet/
            # image-tag-missing.json): its last Failed events only echo the waiting reason.
            events=[
                event("Failed", f"Failed to pull image: {IMAGE}: not found", 1, container="nim"),
                event("Failed", "Error: ErrImagePull", 1, container="nim"),
                event("Failed", "Error: ImagePullBackOff", 2, container="nim"),
            ],
            now=3,
        ),
        id="a back-off whose message carries the registry's answer fails at once (kubelet v1.37)",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"'))
            ),
            Phase.FAILED,
            Reason.IMAGE_PULL_ERROR,
            has=[IMAGE, "manifest unknown"],
            lacks=["Error: ImagePullBackOff", "Retrying"],
            events=[
                event("Failed", "Failed to pull image: manifest unknown", 1, container="nim"),
                event("Failed", "Error: ImagePullBackOff", 2, container="nim"),
            ],
            now=3,
        ),
        id="a bare back-off takes the registry's answer from the event before the kubelet's echo",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting(
                        "ErrImagePull",
                        f'rpc error: code = NotFound desc = failed to resolve reference "{IMAGE}": '
                        f"{IMAGE}: not found",
                    )
                )
            ),
            Phase.FAILED,
            Reason.IMAGE_PULL_ERROR,
            has=[IMAGE, "not found", "image name and tag"],
            now=10,
        ),
        id="an image that does not exist fails at once",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting("ErrImagePull", "401 Unauthorized: authentication required")
                )
            ),
            Phase.FAILED,
            Reason.IMAGE_PULL_ERROR,
            has=["401 Unauthorized", "Unable to retrieve some image pull secrets (ngc-pull)"],
            events=[
                event(
                    "FailedToRetrieveImagePullSecret",
                    "Unable to retrieve some image pull secrets (ngc-pull); attempting to pull the "
                    "image may not succeed.",
                    6,
                )
            ],
            now=10,
        ),
        id="an unauthorized pull fails at once and shows the missing pull secret",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting(
                        "InvalidImageName", 'Failed to apply default image tag "nvcr.io/nim/Llama:"'
                    )
                )
            ),
            Phase.FAILED,
            Reason.IMAGE_PULL_ERROR,
            has=["InvalidImageName", "Failed to apply default image tag"],
            now=6,
        ),
        id="an invalid image name fails at once",
    ),
    pytest.param(
        Case(
            make_pod(container(state=waiting("CreateContainerConfigError", SECRET_MISSING))),
            Phase.FAILED,
            Reason.MISSING_SECRET,
            has=['secret "ngc-api" not found', "namespace flyte", "NIMSecrets", "ngc_secret_key"],
        ),
        id="a missing secret fails naming it and pointing at NIMSecrets",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting(
                        "CreateContainerConfigError",
                        "couldn't find key api_key in Secret flyte/ngc-api",
                    )
                )
            ),
            Phase.FAILED,
            Reason.MISSING_SECRET,
            has=["couldn't find key api_key in Secret flyte/ngc-api", "NIMSecrets"],
        ),
        id="a missing secret key fails naming the key",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting(
                        "CreateContainerConfigError",
                        "container has runAsNonRoot and image has non-numeric user (nim), cannot "
                        "verify user is non-root",
                    )
                )
            ),
            Phase.FAILED,
            Reason.CONTAINER_CONFIG_ERROR,
            has=["runAsNonRoot", "container nim"],
            lacks=["NIMSecrets"],
        ),
        id="a config error that is not about secrets does not blame the secrets",
    ),
    pytest.param(
        Case(
            make_pod(container(state=waiting("CreateContainerError", "context deadline exceeded"))),
            Phase.INITIALIZING,
            Reason.CONTAINER_CREATE_ERROR,
            has=["context deadline exceeded", "FAILED after 2m"],
            events=[event("Failed", "Error: context deadline exceeded", 40, container="nim")],
        ),
        id="a container create error is tolerated within the grace",
    ),
    pytest.param(
        Case(
            make_pod(container(state=waiting("CreateContainerError", "context deadline exceeded"))),
            Phase.FAILED,
            Reason.CONTAINER_CREATE_ERROR,
            has=["context deadline exceeded", "CreateContainerError", "2m55s"],
            now=3 * MINUTE,
        ),
        id="a container create error fails after the grace counted from scheduling",
    ),
    # --- server container
    pytest.param(
        Case(
            make_pod(container(state=running(8)), phase="Running"),
            Phase.RUNNING,
            Reason.LOADING_MODEL,
            has=["Loading model, 3m12s", "startup window 30m"],
            now=200,
        ),
        id="a running server that is not ready yet is loading the model",
    ),
    pytest.param(
        Case(
            make_pod(container(state=running(8)), phase="Running"),
            Phase.FAILED,
            Reason.STARTUP_TIMEOUT,
            has=["Startup window exceeded", "31m", "window 30m", "startup_failure_threshold"],
            events=[
                event(
                    "Unhealthy",
                    "Startup probe failed: HTTP probe failed with statuscode: 503",
                    1800,
                    container="nim",
                )
            ],
            now=8 + 31 * MINUTE,
        ),
        id="a server not ready past the startup window fails",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=running(1000), last=terminated(137, "Error", at=8), restarts=1),
                phase="Running",
            ),
            Phase.FAILED,
            Reason.STARTUP_TIMEOUT,
            has=["startup probe", "statuscode: 503", "startup_failure_threshold"],
            events=[
                event(
                    "Unhealthy",
                    "Startup probe failed: HTTP probe failed with statuscode: 503",
                    990,
                    container="nim",
                ),
                event(
                    "Killing",
                    "Container nim failed startup probe, will be restarted",
                    995,
                    container="nim",
                ),
            ],
            now=1010,
        ),
        id="a server killed by its startup probe fails as a startup timeout",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting("CrashLoopBackOff", "back-off 40s restarting failed container"),
                    last=terminated(1, "Error", "ValueError: no compatible profile", at=100),
                    restarts=3,
                ),
                phase="Running",
            ),
            Phase.FAILED,
            Reason.CRASH_LOOP,
            has=[
                "Container nim is crash-looping",
                "3 restarts",
                "exit code 1 (Error)",
                "ValueError: no compatible profile",
                "Last log lines:",
                "line 30",
            ],
            lacks=["line 10\n"],
            log_tail="\n".join(f"line {n}" for n in range(1, 31)),
            now=200,
        ),
        id="a crash loop past the threshold fails with exit code, reason and log tail",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=running(150), last=terminated(1, at=100), restarts=3),
                phase="Running",
            ),
            Phase.FAILED,
            Reason.CRASH_LOOP,
            has=["3 restarts", "exit code 1"],
            now=160,
        ),
        id="a server running again after reaching the restart threshold still fails",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("CrashLoopBackOff"), last=terminated(2, at=30), restarts=1),
                phase="Running",
            ),
            Phase.RUNNING,
            Reason.RESTARTING,
            has=["Container nim exited with exit code 2", "restart 1", "FAILED at 3"],
        ),
        id="a server restarting below the threshold is running",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=running(40), last=terminated(1, at=20), restarts=1),
                phase="Running",
            ),
            Phase.RUNNING,
            Reason.LOADING_MODEL,
            has=["Loading model, 20s", "restarted 1x", "exit code 1"],
        ),
        id="a server loading again after one restart notes the restart",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting("CrashLoopBackOff"),
                    last=terminated(137, "OOMKilled", at=30),
                    restarts=1,
                ),
                phase="Running",
            ),
            Phase.FAILED,
            Reason.OOM_KILLED,
            has=["container nim", "OOMKilled", "exit code 137", "20Gi", "raise `mem`"],
        ),
        id="an OOMKilled server fails at once suggesting to raise mem",
    ),
    pytest.param(
        Case(
            make_pod(container(state=terminated(137, "OOMKilled", at=30)), phase="Running"),
            Phase.FAILED,
            Reason.OOM_KILLED,
            has=["raise `mem`"],
        ),
        id="a current OOMKilled termination fails too",
    ),
    pytest.param(
        Case(
            make_pod(container(state=terminated(0, "Completed", at=30)), phase="Succeeded"),
            Phase.FAILED,
            Reason.SERVER_EXITED,
            has=["exited with code 0", "must keep running"],
        ),
        id="a server that exited successfully is a failure",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=terminated(3, "Error", "bad NIM_MODEL_PROFILE")), phase="Failed"
            ),
            Phase.FAILED,
            Reason.SERVER_EXITED,
            has=["Container nim exited with exit code 3 (Error)", "bad NIM_MODEL_PROFILE"],
        ),
        id="a failed pod whose server exited once fails with the exit code",
    ),
    pytest.param(
        Case(ready_pod(), Phase.SUCCEEDED, Reason.READY, has=[ENDPOINT, "1m40s"], now=101),
        id="a ready pod succeeds with its endpoint",
    ),
    # --- disruptions
    pytest.param(
        Case(
            make_pod(
                container(state=terminated(137, "Error")),
                phase="Failed",
                reason="Evicted",
                message="The node was low on resource: ephemeral-storage.",
            ),
            Phase.RETRYABLE_FAILED,
            Reason.EVICTED,
            has=["evicted", "gpu-node-1", "low on resource: ephemeral-storage"],
        ),
        id="an evicted pod is retryable",
    ),
    pytest.param(
        Case(
            make_pod(container(state=terminated(137, "Error")), phase="Failed"),
            Phase.RETRYABLE_FAILED,
            Reason.EVICTED,
            has=["The node had condition: [DiskPressure]"],
            events=[event("Evicted", "The node had condition: [DiskPressure].", 50)],
        ),
        id="a failed pod without a reason but with an Evicted event is evicted",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=running(8)),
                phase="Running",
                conditions=[
                    cond("PodScheduled", "True", 5),
                    cond(
                        "DisruptionTarget",
                        "True",
                        50,
                        "PreemptionByScheduler",
                        "default-scheduler: preempting to accommodate a higher priority pod",
                    ),
                ],
                deleting=50,
            ),
            Phase.RETRYABLE_FAILED,
            Reason.PREEMPTED,
            has=["preempted by the scheduler", "higher priority pod", "Flyte may retry"],
        ),
        id="a pod preempted by the scheduler is retryable",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=running(8)),
                phase="Running",
                conditions=[cond("DisruptionTarget", "True", 50, "DeletionByTaintManager")],
            ),
            Phase.RETRYABLE_FAILED,
            Reason.EVICTED,
            has=["NoExecute taint"],
        ),
        id="a pod deleted by the taint manager is retryable",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=running(8)),
                phase="Running",
                conditions=[cond("DisruptionTarget", "True", 50, "DeletionByPodGC")],
            ),
            Phase.RETRYABLE_FAILED,
            Reason.NODE_LOST,
            has=["garbage collector"],
        ),
        id="a pod collected because its node is gone is node lost",
    ),
    pytest.param(
        Case(
            make_pod(container(state=running(8)), phase="Running", deleting=50),
            Phase.RETRYABLE_FAILED,
            Reason.PREEMPTED,
            has=["Preempted by pod 1234 on node gpu-node-1"],
            events=[
                event("Preempted", "Preempted by pod 1234 on node gpu-node-1", 49, kind="Normal")
            ],
        ),
        id="a terminating pod with a Preempted event is preempted",
    ),
    pytest.param(
        Case(
            make_pod(container(state=running(8)), phase="Running", deleting=50),
            Phase.RETRYABLE_FAILED,
            Reason.POD_DELETED,
            has=["being deleted", "not by nim-agent"],
        ),
        id="a pod being deleted by someone else is retryable",
    ),
    pytest.param(
        Case(
            make_pod(container(state=running(8)), phase="Unknown"),
            Phase.RETRYABLE_FAILED,
            Reason.NODE_LOST,
            has=["Unknown", "gpu-node-1"],
        ),
        id="a pod in phase Unknown is node lost",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=running(8)),
                phase="Running",
                conditions=[cond("PodScheduled", "True", 5), cond("Ready", "False", 300)],
            ),
            Phase.RETRYABLE_FAILED,
            Reason.NODE_LOST,
            has=["node gpu-node-1 is not ready"],
            events=[event("NodeNotReady", "Node is not ready", 300)],
            now=320,
        ),
        id="a pod marked not ready by the node controller is node lost",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=running(8)),
                phase="Running",
                conditions=[cond("PodScheduled", "True", 5), cond("Ready", "False", 100)],
            ),
            Phase.RUNNING,
            Reason.LOADING_MODEL,
            events=[event("NodeNotReady", "Node is not ready", 50)],
            now=120,
        ),
        id="a NodeNotReady event older than the readiness transition is history",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("ContainerCreating")),
                phase="Failed",
                reason="UnexpectedAdmissionError",
                message="Allocate failed due to requested number of devices unavailable",
            ),
            Phase.RETRYABLE_FAILED,
            Reason.ADMISSION_REJECTED,
            has=["UnexpectedAdmissionError", "devices unavailable"],
        ),
        id="a kubelet admission error (GPU device plugin) is retryable",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=waiting("ContainerCreating")),
                phase="Failed",
                reason="OutOfnvidia.com/gpu",
                message="Node didn't have enough resource: nvidia.com/gpu",
            ),
            Phase.RETRYABLE_FAILED,
            Reason.ADMISSION_REJECTED,
            has=["OutOfnvidia.com/gpu"],
        ),
        id="a kubelet OutOf rejection is retryable",
    ),
    pytest.param(
        Case(
            make_pod(container(state=running(8)), phase="Failed", reason="NodeLost"),
            Phase.RETRYABLE_FAILED,
            Reason.NODE_LOST,
            has=["NodeLost"],
        ),
        id="a failed pod whose node was lost is retryable",
    ),
    pytest.param(
        Case(None, Phase.RETRYABLE_FAILED, Reason.POD_DELETED, has=["no longer exists"]),
        id="a pod that vanished without nim-agent deleting it is retryable",
    ),
    # --- after serving: a server a workflow may be using is reported, never failed
    pytest.param(
        Case(
            annotated(
                unready_after_serving(container(state=running(20), started=True)),
                served_at=ts(100),
            ),
            Phase.SUCCEEDED,
            Reason.SERVING_INTERRUPTED,
            has=["has served since", "not ready for 10m", "last probe: Readiness probe failed"],
            lacks=["Startup window"],
            events=[event("Unhealthy", "Readiness probe failed: HTTP 503", 2590, container="nim")],
            now=2600,
        ),
        id="a readiness blip after 44 minutes of serving keeps the task succeeded",
    ),
    pytest.param(
        Case(
            annotated(
                unready_after_serving(
                    container(
                        state=waiting("CrashLoopBackOff", "back-off 40s"),
                        last=terminated(1, at=2500),
                        restarts=5,
                        started=False,
                    )
                ),
                served_at=ts(100),
            ),
            Phase.SUCCEEDED,
            Reason.SERVING_INTERRUPTED,
            has=["exited with exit code 1 (Error)", "restart 5", "stops it after 30m"],
            lacks=["crash-looping"],
            now=2600,
        ),
        id="a crash loop after serving is reported, not failed, within the unhealthy window",
    ),
    pytest.param(
        Case(
            unready_after_serving(container(state=running(20), started=True)),
            Phase.RUNNING,
            Reason.NOT_READY,
            has=["startup probe passed", "not ready for 10m"],
            lacks=["Startup window"],
            now=2600,
        ),
        id="a server past its startup probe is not held to the startup window",
    ),
    pytest.param(
        Case(
            annotated(
                make_pod(container(state=running(20)), phase="Failed", reason="Evicted"),
                stopped=stopped(
                    "FAILED", "Unhealthy", "The NIM server was unready for 30m; stopped."
                ),
            ),
            Phase.FAILED,
            Reason.UNHEALTHY,
            has=["unready for 30m; stopped."],
            lacks=["evicted"],
        ),
        id="a server nim-agent stopped answers the verdict it recorded, whatever the pod says",
    ),
    pytest.param(
        Case(
            annotated(
                make_pod(
                    container(state=terminated(0, "Completed", at=3000)),
                    phase="Failed",
                    reason="DeadlineExceeded",
                ),
                stopped=stopped("SUCCEEDED", "TtlExpired", "Served; stopped at its ttl.", "ttl"),
            ),
            Phase.SUCCEEDED,
            Reason.TTL_EXPIRED,
            has=["stopped at its ttl"],
        ),
        id="a served server stopped at its ttl stays succeeded",
    ),
    pytest.param(
        Case(
            make_pod(
                container(state=terminated(137, "Error", at=3000)),
                phase="Failed",
                reason="DeadlineExceeded",
                message="Pod was active on the node longer than the specified deadline",
            ),
            Phase.FAILED,
            Reason.TTL_EXPIRED,
            has=["ttl passed before it was found serving", "activeDeadlineSeconds"],
        ),
        id="the kubelet's deadline with no connector running fails a server still loading",
    ),
    pytest.param(
        Case(
            annotated(
                make_pod(
                    container(state=terminated(137, "Error", at=3000)),
                    phase="Failed",
                    reason="DeadlineExceeded",
                ),
                served_at=ts(100),
            ),
            Phase.SUCCEEDED,
            Reason.TTL_EXPIRED,
            has=["served from", "stopped by the kubelet at its ttl"],
        ),
        id="the kubelet's deadline after serving keeps the task succeeded",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting(
                        "ErrImagePull",
                        'rpc error: code = Unknown desc = failed to pull and unpack image "'
                        'registry-401.example/nim@sha256:5012ab40404f": failed to copy: '
                        "read tcp 10.0.0.4:51234->1.2.3.4:443: connection reset by peer",
                    )
                )
            ),
            Phase.INITIALIZING,
            Reason.IMAGE_PULL_ERROR,
            has=["connection reset by peer", "Retrying"],
            now=10,
        ),
        id="a 401 or 404 inside a host name or digest is not a registry verdict",
    ),
    pytest.param(
        Case(
            make_pod(
                container(
                    state=waiting(
                        "ErrImagePull",
                        'rpc error: code = Unknown desc = failed to pull and unpack image "'
                        f'{IMAGE}": failed to resolve reference "{IMAGE}": unexpected status '
                        "from HEAD request to https://nvcr.io/v2/nim/meta/llama3-8b-instruct/"
                        "manifests/1.0.0: 403 Forbidden",
                    )
                )
            ),
            Phase.FAILED,
            Reason.IMAGE_PULL_ERROR,
            has=["403 Forbidden"],
            now=10,
        ),
        id="a registry's 403 status line fails at once",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_classify_maps_pod_states_to_phases(case: Case) -> None:
    result = classify(
        case.pod,
        events=case.events,
        now=T0 + timedelta(seconds=case.now),
        policy=POLICY,
        endpoint=ENDPOINT,
        log_tail=case.log_tail,
    )
    assert (result.phase, result.reason) == (case.phase, case.reason), result.message
    for fragment in case.has:
        assert fragment in result.message
    for fragment in case.lacks:
        assert fragment not in result.message
    assert result.outputs == ({"endpoint": ENDPOINT} if case.phase is Phase.SUCCEEDED else None)
    assert result.retryable is (case.phase is Phase.RETRYABLE_FAILED)
    json.dumps(result.custom_info)


def test_every_reason_and_most_phases_appear_in_the_table() -> None:
    cases = [p.values[0] for p in CASES]
    unreached = {Reason.UNKNOWN}  # covered by the robustness tests
    # The verification of a Ready server: tests/unit/test_serving_status.py has their table.
    unreached |= {Reason.VERIFYING_SERVING, Reason.ADAPTERS_MISSING, Reason.NOT_SERVING}
    assert {c.reason for c in cases} | unreached == set(Reason)
    assert {c.phase for c in cases} == set(Phase)


def docstring_table() -> list[tuple[str, str, str, str]]:
    """The rows of the table in `nim_agent.status`'s docstring: (rule, state, phase, reason),
    continuation lines joined to the row above."""
    lines = (status.__doc__ or "").splitlines()
    rulers = [i for i, line in enumerate(lines) if line.startswith("====")]
    assert len(rulers) == 3, "the docstring has one table: ruler, header, ruler, rows, ruler"
    starts = [m.start() for m in re.finditer(r"=+", lines[rulers[0]])]
    rows: list[list[str]] = []
    for line in lines[rulers[1] + 1 : rulers[2]]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        if cells[0]:
            rows.append(cells)
        else:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells, strict=True)]
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def test_the_docstring_table_lists_the_rules_in_their_order() -> None:
    named = [row[0] for row in docstring_table() if row[0] != "(no pod)"]
    in_order = list(dict.fromkeys(named))
    assert in_order == [rule.__name__ for rule in status._RULES] + ["_fallback"]
    assert named == sorted(named, key=in_order.index), "a rule's rows stand together"


def test_the_docstring_table_names_real_phases_and_every_reason() -> None:
    rows = docstring_table()
    phases = {word for row in rows for word in re.findall(r"[A-Z][A-Z_]+[A-Z]", row[2])}
    reasons = {word for row in rows for word in re.findall(r"\w+", row[3])}
    assert phases == {p.name for p in Phase}
    assert {r.value for r in Reason} <= reasons
    assert reasons <= {r.value for r in Reason}


# ---------------------------------------------------------------------------------------------
# Deletion, logs, custom_info, the enum mapping.


def test_a_pod_deleted_by_nim_agent_fails_without_retry() -> None:
    for pod in (None, make_pod(container(state=running(8)), phase="Running", deleting=50)):
        result = classify(
            pod, now=T0, policy=POLICY, endpoint=ENDPOINT, deletion_cause="ttl expired"
        )
        assert (result.phase, result.reason) == (Phase.FAILED, Reason.POD_DELETED)
        assert "ttl expired" in result.message
        assert not result.retryable


def test_a_crash_loop_asks_for_the_previous_log_of_the_crashed_container() -> None:
    pod = make_pod(
        container(state=waiting("CrashLoopBackOff"), last=terminated(1), restarts=5),
        phase="Running",
    )
    result = classify(pod, now=T0 + timedelta(minutes=5), policy=POLICY, endpoint=ENDPOINT)
    assert result.log_request == LogRequest("nim", previous=True)
    assert "Last log lines" not in result.message


def test_a_running_server_asks_for_no_log() -> None:
    pod = make_pod(container(state=running(8)), phase="Running")
    result = classify(pod, now=T0 + timedelta(minutes=1), policy=POLICY, endpoint=ENDPOINT)
    assert result.log_request is None


def test_custom_info_carries_pod_node_and_timings() -> None:
    result = classify(
        ready_pod(ready_at=100), now=T0 + timedelta(minutes=2), policy=POLICY, endpoint=ENDPOINT
    )
    assert result.custom_info == {
        "pod": "llama3-8b-a1b2c3",
        "namespace": "flyte",
        "node": "gpu-node-1",
        "pod_ip": "10.0.3.7",
        "pod_phase": "Running",
        "created_at": ts(0),
        "scheduled_at": ts(5),
        "initialized_at": ts(6),
        "started_at": ts(20),
        "ready_at": ts(100),
        "time_to_schedule_s": 5.0,
        "time_to_ready_s": 100.0,
        "restarts": {"nim": 0},
    }


def test_the_policy_thresholds_are_honoured() -> None:
    pod = make_pod(
        container(state=waiting("CrashLoopBackOff"), last=terminated(1), restarts=3),
        phase="Running",
    )
    lenient = StatusPolicy(crashloop_restart_threshold=5)
    now = T0 + timedelta(minutes=5)
    assert classify(pod, now=now, policy=lenient, endpoint=ENDPOINT).phase is Phase.RUNNING
    assert classify(pod, now=now, policy=POLICY, endpoint=ENDPOINT).phase is Phase.FAILED


def test_a_naive_now_is_taken_as_utc() -> None:
    pod = make_pod(container(state=running(8)), phase="Running")
    result = classify(
        pod,
        now=(T0 + timedelta(seconds=200)).replace(tzinfo=None),
        policy=POLICY,
        endpoint=ENDPOINT,
    )
    assert "Loading model, 3m12s" in result.message


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name)
def test_flyte_phase_matches_flyteidl_by_name(phase: Phase) -> None:
    from flyteidl.core.execution_pb2 import TaskExecution

    assert flyte_phase(phase) == TaskExecution.Phase.Value(phase.name)


def test_flyte_phase_values_are_flyteidl_numbers() -> None:
    assert flyte_phase(Phase.RUNNING) == 2
    assert flyte_phase(Phase.SUCCEEDED) == 3
    assert flyte_phase(Phase.RETRYABLE_FAILED) == 8


def test_only_succeeded_and_failures_are_terminal() -> None:
    terminal = {p for p in Phase if is_terminal(p)}
    assert terminal == {Phase.SUCCEEDED, Phase.FAILED, Phase.RETRYABLE_FAILED}


def test_the_public_api_is_locked() -> None:
    assert sorted(status.__all__) == [
        "Classification",
        "LogRequest",
        "Phase",
        "Reason",
        "ServingCheck",
        "StatusPolicy",
        "classify",
        "flyte_phase",
        "is_terminal",
        "policy_for",  # moved here from nim_agent.reaper: the pod's own startup window
        "unhealthy_for",
    ]


# ---------------------------------------------------------------------------------------------
# Robustness: every field may be absent or malformed; classify never raises, never says None.


def assert_sane(result: Classification) -> None:
    assert isinstance(result.phase, Phase)
    assert isinstance(result.reason, Reason)
    assert result.message
    json.dumps(result.custom_info)


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param({}, id="an empty dict"),
        pytest.param({"metadata": {"name": "x"}}, id="a pod without status"),
        pytest.param({"status": None, "spec": None}, id="null status and spec"),
        pytest.param({"status": "garbage", "metadata": []}, id="mistyped status and metadata"),
        pytest.param({"status": {"phase": "Running"}}, id="a status with only a running phase"),
        pytest.param({"status": {"phase": "Pending"}}, id="a status with only a pending phase"),
        pytest.param({"status": {"phase": "Failed"}}, id="a status with only a failed phase"),
        pytest.param({"status": {"phase": "Succeeded"}}, id="a status with only a succeeded phase"),
        pytest.param(
            {"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}},
            id="a node but no containers",
        ),
        pytest.param(
            {
                "status": {
                    "containerStatuses": [None, 5, {"state": None}, {"state": {"waiting": 3}}]
                }
            },
            id="malformed container statuses",
        ),
        pytest.param(
            {
                "spec": {"nodeName": "n1", "containers": [{"name": "nim"}]},
                "status": {"containerStatuses": [{"name": "nim", "state": {"running": {}}}]},
            },
            id="running without a start time",
        ),
        pytest.param(
            {
                "metadata": {"creationTimestamp": "yesterday", "deletionTimestamp": 5},
                "status": {"conditions": [{"type": "Ready"}, "x", {"status": "True"}]},
            },
            id="unparseable times and partial conditions",
        ),
        pytest.param(
            {
                "spec": {"nodeName": "n1"},
                "status": {
                    "phase": "Running",
                    "containerStatuses": [
                        {"name": "nim", "restartCount": "many", "lastState": {"terminated": {}}}
                    ],
                },
            },
            id="an empty termination record",
        ),
    ],
)
def test_classify_never_raises_on_partial_pods(pod: dict[str, Any]) -> None:
    events: list[Any] = [{}, {"lastTimestamp": 5}, {"involvedObject": "x", "reason": "Failed"}]
    result = classify(pod, events=events, now=T0, policy=POLICY, endpoint=ENDPOINT)
    assert_sane(result)
    assert result.phase in (Phase.QUEUED, Phase.INITIALIZING, Phase.RUNNING) or is_terminal(
        result.phase
    )


def test_an_unrecognised_state_is_described_not_guessed() -> None:
    pod = {"spec": {"nodeName": "n1"}, "status": {"phase": "Running", "reason": "Weird"}}
    result = classify(pod, now=T0, policy=POLICY, endpoint=ENDPOINT)
    assert (result.phase, result.reason) == (Phase.INITIALIZING, Reason.UNKNOWN)
    assert "phase Running" in result.message and "reason Weird" in result.message


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_STATE = st.sampled_from(
    [
        waiting("ErrImagePull", "not found"),
        waiting("ImagePullBackOff"),
        waiting("CrashLoopBackOff"),
        waiting("CreateContainerConfigError", SECRET_MISSING),
        waiting("ContainerCreating"),
        running(8),
        terminated(137, "OOMKilled"),
        terminated(0, "Completed"),
        {},
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    phase=st.sampled_from(["Pending", "Running", "Failed", "Succeeded", "Unknown", "", None]),
    node=st.sampled_from(["gpu-node-1", None]),
    state=_STATE,
    last=_STATE,
    init_state=_STATE,
    restarts=st.integers(0, 6),
    now=st.integers(-60, 4000),
    noise=_JSON,
    drop=st.sampled_from(["", "metadata", "spec", "status", "conditions", "containerStatuses"]),
)
def test_classify_is_total_over_mixed_and_noisy_pods(
    phase: str | None,
    node: str | None,
    state: dict[str, Any],
    last: dict[str, Any],
    init_state: dict[str, Any],
    restarts: int,
    now: int,
    noise: Any,
    drop: str,
) -> None:
    pod = make_pod(
        container(state=state, last=last, restarts=restarts),
        init=[container(LORA, init_state, restarts=restarts)],
        node=node,
    )
    pod["status"]["phase"] = phase
    pod["status"]["extra"] = noise
    for part in (pod, pod["status"]):
        part.pop(drop, None)
    events = [event("Failed", "x", 1, container="nim"), noise]
    result = classify(
        pod, events=events, now=T0 + timedelta(seconds=now), policy=POLICY, endpoint=ENDPOINT
    )
    assert_sane(result)
