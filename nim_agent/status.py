"""The status rules: a NIM pod's facts -> a Flyte task phase and a message a person can act on.

Purely computational, no I/O: the caller (the connector) reads the pod, its events and, when asked,
a log tail from Kubernetes, and passes them in together with the current time. The pod is read
into facts by `nim_agent.podfacts` (which never raises); this module decides, and everything here
is a function of its arguments, so every branch is covered by table-driven unit tests.

Public API::

    classify(pod, *, events=(), now, policy, endpoint, log_tail=None, deletion_cause=None,
             serving=None, typed=False)
        -> Classification(phase, message, reason, outputs, custom_info, log_request,
                          models_request, served)
    policy_for(pod, settings.status_policy()) -> StatusPolicy   # + the pod's own startup window
    flyte_phase(Phase.RUNNING) -> 2      # flyteidl TaskExecution.Phase value
    is_terminal(Phase.SUCCEEDED) -> True

`pod` is a core/v1 Pod as a plain JSON dict in the API's camelCase form, exactly as the API server
returns it; ``None`` means the pod is gone. `events` are core/v1 Event dicts involving the pod
(events.k8s.io/v1 ``regarding``/``note`` work too).

The mapping, first match wins. The rules are `_RULES`, in the order of the first column; a unit
test holds this table and that tuple to the same order. The NIM server is the container the
renderer named ``nim``, the adapter download the init container ``lora-downloader``
(`nim_agent.contract`); `_init_containers` applies the image, config and create rules below to
the init containers first.

===================  ==================================  =====================  ====================
rule                 pod state                           phase                  reason
===================  ==================================  =====================  ====================
(no pod)             gone, deleted by nim-agent itself   FAILED                 PodDeleted
(no pod)             gone, deleted by someone else       RETRYABLE_FAILED       PodDeleted
_stopped_by_us       nim-agent stopped it: the verdict   as recorded:           Unhealthy,
                     it recorded then (`StopRecord`)     SUCCEEDED, FAILED or   TtlExpired, ...
                                                         RETRYABLE_FAILED
_deleted_by_us       being deleted by nim-agent itself   FAILED                 PodDeleted
_disrupted           DisruptionTarget condition, or      RETRYABLE_FAILED       Preempted, Evicted,
                     being deleted by someone else                              NodeLost, PodDeleted
_pod_failed          phase Failed: Evicted, node gone,   RETRYABLE_FAILED       Evicted, NodeLost,
                     kubelet admission rejected                                 AdmissionRejected
                     (OutOf*, UnexpectedAdmission)
_pod_failed          phase Failed, DeadlineExceeded (the SUCCEEDED if it had      TtlExpired
                     kubelet's ttl backstop, before any  served, else FAILED
                     connector stopped it)
_pod_failed          phase Failed: a container or an     FAILED                 OOMKilled, ...
                     init container failed
_pod_succeeded       phase Succeeded (server exited 0)   FAILED                 ServerExited
_node_lost           phase Unknown, reason NodeLost,     RETRYABLE_FAILED       NodeLost
                     NodeNotReady
_ready               Ready (not checked), or Ready and   SUCCEEDED              Ready
                     verified serving (see below)
_ready               Ready; /v1/models not answered, or  RUNNING                VerifyingServing
                     lacking something, in the window
_ready               ... past `serving_window`, adapters FAILED                 AdaptersMissing
                     not listed
_ready               ... past `serving_window`, no       FAILED                 NotServing
                     answer or no (expected) base model
_interrupted         has served (`served-at`), unready   SUCCEEDED              ServingInterrupted
                     now (probe misses, restarts): the
                     reaper stops it after the
                     unhealthy window
_unscheduled         no node: scheduling gated           WAITING_FOR_RESOURCES  SchedulingGated
_unscheduled         no node: Unschedulable (until the   WAITING_FOR_RESOURCES  Unschedulable
                     timeout)
_unscheduled         no node, no decision yet            QUEUED                 Queued
_unscheduled         ... past `unschedulable_timeout`    FAILED                 Unschedulable
                     since creation
_init_containers     init container failed / crash       FAILED                 InitContainerFailed
                     loop / OOMKilled
_init_containers     init container failed below the     INITIALIZING           Restarting
                     threshold
_init_containers     init container running (LoRA        INITIALIZING           InitContainerRunning
                     download)
_containers_failing  InvalidImageName, ErrImageNever-    FAILED                 ImagePullError
                     Pull, or a permanent registry
                     error (not found, denied)
_containers_failing  ErrImagePull / ImagePullBackOff     INITIALIZING, then     ImagePullError
                                                         FAILED after grace
_containers_failing  CreateContainerConfigError (the     FAILED                 MissingSecret,
                     kubelet's words name a Secret)                             ContainerConfigError
_containers_failing  CreateContainerError /              INITIALIZING, then     ContainerCreateError
                     RunContainerError                   FAILED after grace
_containers_failing  OOMKilled (current or last          FAILED                 OOMKilled
                     termination)
_containers_failing  killed by its startup probe         FAILED                 StartupTimeout
_containers_failing  restartCount >= crashloop_restart_  FAILED                 CrashLoop
                     threshold
_nim_running         server restarting below the         RUNNING                Restarting
                     threshold
_nim_running         started (its startup probe passed), RUNNING                NotReady
                     not ready: no startup window
_nim_running         server running, not ready, past     FAILED                 StartupTimeout
                     `startup_timeout`
_nim_running         server running, not ready           RUNNING                LoadingModel
_nim_creating        pulling the server's image /        INITIALIZING           PullingImage,
                     creating its container                                     ContainerCreating
_fallback            anything else                       INITIALIZING, RUNNING  Unknown
===================  ==================================  =====================  ====================

Times are measured against `now`: the unschedulable timeout from the pod's creation, the image
pull and container-create grace from the first kubelet ``Failed`` event of that container (else
from scheduling), the startup window from the current start of the server container, the
serving window from the pod's Ready transition.

Verified serving (`_ready`). Without a `ServingCheck` (the connector's ``serving_check: off``),
Ready is SUCCEEDED. With one, Ready is SUCCEEDED only once ``GET {endpoint}/v1/models`` has
listed the base model (NIM_SERVED_MODEL_NAME, when the NIM container sets it) and every adapter
of the pod's adapters annotation with that model as its parent (`nim_agent.models`); or when the
pod already carries the served-at annotation of an earlier verification. The first verification
returns `Classification.served`, the annotations the caller writes on the pod (one merge patch).
A check not asked yet returns ``models_request``: ask, and classify again with the reply.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nim_agent.contract import (
    ANNOTATION_SERVED_AT,
    ANNOTATION_SERVED_MODEL,
    MODELS_PATH,
    NIM_CONTAINER,
    NIMEndpoint,
    format_duration,
    format_time,
)
from nim_agent.models import Missing, ModelsReply, missing
from nim_agent.podfacts import (
    ContainerFacts,
    EventFacts,
    PodFacts,
    custom_info,
    read_pod,
    startup_probe,
)
from nim_agent.settings import StatusPolicy

__all__ = [
    "Classification",
    "LogRequest",
    "Phase",
    "Reason",
    "ServingCheck",
    "StatusPolicy",
    "classify",
    "flyte_phase",
    "is_terminal",
    "policy_for",
    "unhealthy_for",
]


class Phase(enum.StrEnum):
    """The Flyte task phases `classify` returns, named as flyteidl's ``TaskExecution.Phase``."""

    QUEUED = "QUEUED"
    WAITING_FOR_RESOURCES = "WAITING_FOR_RESOURCES"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    RETRYABLE_FAILED = "RETRYABLE_FAILED"


class Reason(enum.StrEnum):
    """A short machine token for the state, a bounded set fit for metric labels."""

    # not terminal
    QUEUED = "Queued"
    SCHEDULING_GATED = "SchedulingGated"
    UNSCHEDULABLE = "Unschedulable"  # also terminal, past the timeout
    CONTAINER_CREATING = "ContainerCreating"
    PULLING_IMAGE = "PullingImage"
    INIT_CONTAINER_RUNNING = "InitContainerRunning"
    LOADING_MODEL = "LoadingModel"
    RESTARTING = "Restarting"
    VERIFYING_SERVING = "VerifyingServing"
    UNKNOWN = "Unknown"
    # success
    READY = "Ready"
    # FAILED
    IMAGE_PULL_ERROR = "ImagePullError"  # also INITIALIZING within the grace
    MISSING_SECRET = "MissingSecret"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    CONTAINER_CREATE_ERROR = "ContainerCreateError"  # also INITIALIZING within the grace
    CRASH_LOOP = "CrashLoop"
    OOM_KILLED = "OOMKilled"
    STARTUP_TIMEOUT = "StartupTimeout"
    INIT_CONTAINER_FAILED = "InitContainerFailed"
    SERVER_EXITED = "ServerExited"
    SERVING_INTERRUPTED = "ServingInterrupted"  # SUCCEEDED: served, unready now
    NOT_READY = "NotReady"  # RUNNING: passed its startup probe, not ready (yet or again)
    TTL_EXPIRED = "TtlExpired"
    UNHEALTHY = "Unhealthy"  # stopped: unready past the unhealthy window
    ADAPTERS_MISSING = "AdaptersMissing"
    NOT_SERVING = "NotServing"
    # FAILED when nim-agent deleted the pod, RETRYABLE_FAILED otherwise
    POD_DELETED = "PodDeleted"
    # RETRYABLE_FAILED
    EVICTED = "Evicted"
    PREEMPTED = "Preempted"
    NODE_LOST = "NodeLost"
    ADMISSION_REJECTED = "AdmissionRejected"


_TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.RETRYABLE_FAILED})


def is_terminal(phase: Phase) -> bool:
    """True when Flyte stops polling after this phase (SUCCEEDED, FAILED, RETRYABLE_FAILED)."""
    return phase in _TERMINAL


def flyte_phase(phase: Phase) -> int:
    """The flyteidl ``TaskExecution.Phase`` value: ``flyte_phase(Phase.RUNNING) == 2``.

    flyteidl is imported here, not at module level, so that importing this module stays cheap.
    """
    from flyteidl.core.execution_pb2 import TaskExecution

    return int(TaskExecution.Phase.Value(phase.value))


@dataclass(frozen=True)
class LogRequest:
    """Which log would explain a failure: fetch its tail and call `classify` again with it."""

    container: str
    previous: bool  # the log of the previous (crashed) instance of the container
    lines: int = 20  # how many of the last lines to read


@dataclass(frozen=True)
class ServingCheck:
    """The ``/v1/models`` check of a Ready server, as `classify` sees it.

    ``reply`` None: no answer yet, either not asked (``asked`` False: the result then carries
    ``models_request``) or asked and still in flight. ``since``: the serving window starts no
    earlier than this (a holder attaching to a shared server that has long been Ready: its own
    adapters get the whole window from its attach).
    """

    reply: ModelsReply | None = None
    asked: bool = False
    since: datetime | None = None


@dataclass(frozen=True)
class Classification:
    """The verdict on one pod: what Flyte is told, and what metrics and logs record."""

    phase: Phase
    message: str
    reason: Reason
    # {"endpoint": the URL, or a NIMEndpoint when typed} on SUCCEEDED, None otherwise
    outputs: dict[str, Any] | None = None
    custom_info: dict[str, Any] = field(default_factory=dict)  # JSON-safe: pod, node, timings
    log_request: LogRequest | None = None  # set on failures a log would explain
    models_request: bool = False  # ask /v1/models and classify again with the reply
    served: dict[str, str] | None = None  # annotations to write: first verified serving

    @property
    def retryable(self) -> bool:
        """True when Flyte may retry the task with a fresh pod."""
        return self.phase is Phase.RETRYABLE_FAILED


def policy_for(pod: Mapping[str, Any] | None, base: StatusPolicy) -> StatusPolicy:
    """``base`` with the startup window this pod's own startup probe allows."""
    probe = startup_probe(pod)
    if probe is None:
        return base
    # The kubelet kills the container when the probe gives up; the margin lets us see that
    # kill (a precise message) rather than time out just before it.
    return dataclasses.replace(base, startup_timeout=probe.window + 2 * probe.period)


def _ago(delta: timedelta | None) -> str:
    """How long, as progress messages say it: `3m12s`, `1h5m`."""
    return format_duration(delta, exact=False)


# ---------------------------------------------------------------------------------------------
# The rules. Each returns a verdict or None (not mine); `classify` takes the first verdict.


@dataclass(frozen=True)
class _Context:
    pod: PodFacts
    policy: StatusPolicy
    endpoint: str
    log_tail: str | None
    deletion_cause: str | None
    serving: ServingCheck | None = None


@dataclass(frozen=True)
class _Verdict:
    phase: Phase
    reason: Reason
    message: str
    log_request: LogRequest | None = None
    models_request: bool = False
    model: str = ""  # on SUCCEEDED: the served base model id, when known
    served: dict[str, str] | None = None


_LOG_TAIL_LINES = 20
_LOG_TAIL_CHARS = 2000


def _with_log(message: str, ctx: _Context, about: Sequence[str] = ()) -> str:
    """`message` and the log tail; with `about`, only the lines naming one of those words (a
    serving server's log is mostly its access log), else the last lines."""
    if not ctx.log_tail or not ctx.log_tail.strip():
        return message
    lines = ctx.log_tail.rstrip().splitlines()
    named = [line for line in lines if any(word in line for word in about)]
    if named:
        tail = "\n".join(named[-_LOG_TAIL_LINES:])[-_LOG_TAIL_CHARS:]
        return f"{message}\nLog lines naming {', '.join(about)}:\n{tail}"
    tail = "\n".join(lines[-_LOG_TAIL_LINES:])[-_LOG_TAIL_CHARS:]
    return f"{message}\nLast log lines:\n{tail}"


def _retryable(reason: Reason, message: str) -> _Verdict:
    return _Verdict(Phase.RETRYABLE_FAILED, reason, f"{message}; Flyte may retry with a new pod.")


def _stopped_by_us(ctx: _Context) -> _Verdict | None:
    """nim-agent stopped the server and wrote down its verdict: answer that, always."""
    record = ctx.pod.stopped
    if record is None:
        return None
    phase = Phase.__members__.get(record.phase, Phase.FAILED)
    if not is_terminal(phase):  # never written so; a hand-edited record reads as a failure
        phase = Phase.FAILED
    reason = Reason(record.reason) if record.reason in Reason._value2member_map_ else Reason.UNKNOWN
    return _Verdict(phase, reason, record.message)


def _deleted_by_us(ctx: _Context) -> _Verdict | None:
    if ctx.deletion_cause is None:
        return None
    return _Verdict(
        Phase.FAILED,
        Reason.POD_DELETED,
        f"The NIM pod was deleted by nim-agent ({ctx.deletion_cause}) before the task finished.",
    )


# DisruptionTarget condition reasons (k8s.io/api/core/v1), ours to retry.
_DISRUPTIONS: Mapping[str, tuple[Reason, str]] = {
    "PreemptionByScheduler": (
        Reason.PREEMPTED,
        "preempted by the scheduler for a higher-priority pod",
    ),
    "PreemptionByKubeScheduler": (Reason.PREEMPTED, "preempted by the scheduler"),
    "DeletionByTaintManager": (
        Reason.EVICTED,
        "evicted by a NoExecute taint on its node (often: node not ready or unreachable)",
    ),
    "EvictionByEvictionAPI": (Reason.EVICTED, "evicted through the Eviction API (node drain)"),
    "DeletionByPodGC": (
        Reason.NODE_LOST,
        "deleted by the pod garbage collector (its node is gone)",
    ),
    "TerminationByKubelet": (
        Reason.EVICTED,
        "terminated by the kubelet (node pressure eviction or node shutdown)",
    ),
}


def _disrupted(ctx: _Context) -> _Verdict | None:
    pod = ctx.pod
    status, reason, message, _ = pod.condition("DisruptionTarget")
    where = f" on node {pod.node}" if pod.node else ""
    if status == "True":
        token, text = _DISRUPTIONS.get(
            reason, (Reason.EVICTED, f"disrupted ({reason or 'no reason given'})")
        )
        detail = f": {message}" if message else ""
        return _retryable(token, f"The NIM pod was {text}{where}{detail}")
    if pod.deleting is None:
        return None
    hint = pod.last_event("Preempted", "Evicted", "NodeNotReady", "NodeControllerEviction")
    if hint and hint.reason == "Preempted":
        return _retryable(Reason.PREEMPTED, f"The NIM pod was preempted{where}: {hint.message}")
    if hint and hint.reason == "Evicted":
        return _retryable(Reason.EVICTED, f"The NIM pod was evicted{where}: {hint.message}")
    if hint:
        return _retryable(
            Reason.NODE_LOST, f"The NIM pod{where} is being deleted: its node is not ready"
        )
    return _retryable(
        Reason.POD_DELETED,
        f"The NIM pod is being deleted{where}, not by nim-agent (by someone, or with its "
        "namespace)",
    )


# Pod-level reasons of a Failed pod that are the node's fault, not the configuration's.
_NODE_LOST_REASONS = frozenset({"NodeLost", "Shutdown", "Terminated", "NodeShutdown"})
_ADMISSION_REASONS = frozenset(
    {"UnexpectedAdmissionError", "NodeAffinity", "NodeSelectorMismatching", "Preempting"}
)


def _pod_failed(ctx: _Context) -> _Verdict | None:
    pod = ctx.pod
    if pod.phase != "Failed":
        return None
    where = f" on node {pod.node}" if pod.node else ""
    detail = f": {pod.status_message}" if pod.status_message else ""
    reason = pod.status_reason
    evicted_event = pod.last_event("Evicted")
    if reason == "Evicted" or (not reason and evicted_event):
        detail = detail or (f": {evicted_event.message}" if evicted_event else "")
        return _retryable(Reason.EVICTED, f"The NIM pod was evicted{where}{detail}")
    if reason in _NODE_LOST_REASONS:
        return _retryable(
            Reason.NODE_LOST, f"The NIM pod's node was lost or shut down ({reason}){where}{detail}"
        )
    if reason.startswith("OutOf") or reason in _ADMISSION_REASONS:
        return _retryable(
            Reason.ADMISSION_REJECTED, f"The kubelet{where} rejected the NIM pod ({reason}){detail}"
        )
    if reason == "DeadlineExceeded":
        # The kubelet enforced spec.activeDeadlineSeconds, the ttl's backstop, before any
        # connector stopped it (none was running, or its sweep came later). An ended pod no
        # longer shows whether it had been Ready: only served-at says it was found serving.
        if pod.served_at is not None:
            return _Verdict(
                Phase.SUCCEEDED,
                Reason.TTL_EXPIRED,
                f"The NIM server at {ctx.endpoint} served from {format_time(pod.served_at)} and "
                f"was stopped by the kubelet at its ttl (activeDeadlineSeconds){where}.",
            )
        return _Verdict(
            Phase.FAILED,
            Reason.TTL_EXPIRED,
            f"The NIM server's ttl passed before it was found serving: the kubelet stopped it "
            f"(activeDeadlineSeconds){where}. Raise ttl if the model needs longer to load, and "
            "check that a connector was running to follow it.",
        )
    verdict = _init_failure(ctx, final=True) or _container_failure(ctx, final=True)
    if verdict:
        return verdict
    return _Verdict(
        Phase.FAILED,
        Reason.SERVER_EXITED,
        f"The NIM pod failed ({reason or 'no reason given'}){where}{detail}.",
    )


def _pod_succeeded(ctx: _Context) -> _Verdict | None:
    if ctx.pod.phase != "Succeeded":
        return None
    main = ctx.pod.nim
    name = main.name if main else "the server container"
    return _Verdict(
        Phase.FAILED,
        Reason.SERVER_EXITED,
        _with_log(
            f"The NIM server (container {name}) exited with code 0, but a server must keep "
            "running: check the image's command, args and env.",
            ctx,
        ),
        LogRequest(main.name, previous=False) if main else None,
    )


def _node_lost(ctx: _Context) -> _Verdict | None:
    pod = ctx.pod
    where = f"node {pod.node}" if pod.node else "its node"
    if pod.phase == "Unknown":
        return _retryable(
            Reason.NODE_LOST, f"The NIM pod's state is Unknown: {where} stopped reporting"
        )
    if pod.status_reason == "NodeLost":
        return _retryable(
            Reason.NODE_LOST, f"The NIM pod was lost with {where}: {pod.status_message}"
        )
    status, reason, _, since = pod.condition("Ready")
    if status == "True":
        return None
    event = pod.last_event("NodeNotReady")
    # The node controller marks Ready False and records NodeNotReady; an older event is history.
    if reason == "NodeNotReady" or (event and (since is None or (event.last or since) >= since)):
        return _retryable(Reason.NODE_LOST, f"The NIM pod's {where} is not ready")
    return None


def _ready(ctx: _Context) -> _Verdict | None:
    pod = ctx.pod
    if pod.condition("Ready")[0] != "True":
        return None
    took = f" after {_ago(pod.ready_at - pod.created)}" if pod.ready_at and pod.created else ""
    restarts = sum(c.restart_count for c in pod.containers)
    note = f" ({restarts} container restart{'s' if restarts != 1 else ''})" if restarts else ""
    if ctx.serving is None:  # not checked: Ready is enough, and the first Ready is recorded
        return _Verdict(
            Phase.SUCCEEDED,
            Reason.READY,
            f"NIM server ready at {ctx.endpoint}{took}{note}.",
            model=pod.served_model or pod.model_name,
            served=None
            if pod.served_at is not None
            else {ANNOTATION_SERVED_AT: format_time(pod.ready_at or pod.now)},
        )
    if pod.served_at is not None:  # verified before (by this connector, another, an earlier one)
        return _Verdict(
            Phase.SUCCEEDED,
            Reason.READY,
            f"NIM server serving at {ctx.endpoint} (ready{took}{note}; verified at "
            f"{format_time(pod.served_at)}).",
            model=pod.served_model or pod.model_name,
        )
    return _serving(ctx, took + note)


# What to look at when /v1/models keeps lacking something (the FAILED messages' advice).
_ADAPTER_HINT = (
    "check that each adapter is a LoRA adapter of this base model (adapter_config.json with "
    "*.safetensors or *.bin weights, or a .nemo file), that the image supports LoRA (a feat_lora "
    "profile; -variant images do not), the NIM_MAX_CPU_LORAS / NIM_MAX_GPU_LORAS limits, and the "
    "server's log"
)
_ADAPTER_LOG_LINES = 2000  # where the server said why it did not load an adapter, at its start
_ROUTE_HINT = (
    "check the connector's route to the server (serving_check direct: the connector's network "
    "access to the pod's port; proxy: RBAC get on pods/proxy) and the server's log"
)


def _lacking(lack: Missing) -> str:
    parts = []
    if lack.model == "*":
        parts.append("a base model")
    elif lack.model:
        parts.append(f"the base model {lack.model} (NIM_SERVED_MODEL_NAME)")
    if lack.adapters:
        word = "adapter" if len(lack.adapters) == 1 else "adapters"
        parts.append(f"{word} {', '.join(lack.adapters)}")
    return " and ".join(parts)


def _serving(ctx: _Context, took: str) -> _Verdict:
    """A Ready server under the /v1/models check (see the module docstring)."""
    pod, check = ctx.pod, ctx.serving
    assert check is not None
    window = ctx.policy.serving_window
    start = pod.ready_at
    if start is not None and check.since is not None and check.since > start:
        start = check.since
    ready_for = pod.since(start)
    late = ready_for is not None and ready_for >= window
    url = f"{ctx.endpoint}{MODELS_PATH}"
    since = f"ready for {_ago(ready_for)}, " if ready_for is not None else ""
    reply = check.reply
    log = LogRequest(NIM_CONTAINER, previous=False)
    if reply is None:
        if late and check.asked:
            return _Verdict(
                Phase.FAILED,
                Reason.NOT_SERVING,
                _with_log(
                    f"The NIM server has been ready for {_ago(ready_for)} but GET {url} has not "
                    f"answered within the serving window ({_ago(window)}): {_ROUTE_HINT}.",
                    ctx,
                ),
                log,
            )
        doing = "asking" if check.asked else "checking that it serves:"
        return _Verdict(
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            f"NIM server ready{took}; {doing} GET {url} ({since}FAILED after {_ago(window)} "
            "without the base model and every adapter listed).",
            models_request=not check.asked,
        )
    if reply.models is None:
        if late:
            return _Verdict(
                Phase.FAILED,
                Reason.NOT_SERVING,
                _with_log(
                    f"The NIM server has been ready for {_ago(ready_for)} but GET {url} does not "
                    f"answer with a model list ({reply.problem}): {_ROUTE_HINT}.",
                    ctx,
                ),
                log,
            )
        return _Verdict(
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            f"NIM server ready{took}, but GET {url} failed: {reply.problem} ({since}retrying; "
            f"FAILED after {_ago(window)}).",
        )
    lack = missing(reply.models, adapters=pod.adapters, model=pod.model_name or None)
    if not lack:
        model = next(
            (m for m in (pod.model_name or "").split(",") if m.strip() in reply.models.base),
            reply.models.model,
        ).strip()
        adapters = f" and adapters {', '.join(pod.adapters)}" if pod.adapters else ""
        return _Verdict(
            Phase.SUCCEEDED,
            Reason.READY,
            f"NIM server serving at {ctx.endpoint} (ready{took}): {MODELS_PATH} lists "
            f"{model}{adapters}.",
            model=model,
            served={
                ANNOTATION_SERVED_AT: format_time(reply.at),
                ANNOTATION_SERVED_MODEL: model,
            },
        )
    lacking = _lacking(lack)
    listed = reply.models.describe()
    if late:
        if lack.adapters:
            return _Verdict(
                Phase.FAILED,
                Reason.ADAPTERS_MISSING,
                _with_log(
                    f"The NIM server has been ready for {_ago(ready_for)} but {MODELS_PATH} does "
                    f"not list {lacking} (it lists {listed}): {_ADAPTER_HINT}.",
                    ctx,
                    about=lack.adapters,
                ),
                LogRequest(NIM_CONTAINER, previous=False, lines=_ADAPTER_LOG_LINES),
            )
        return _Verdict(
            Phase.FAILED,
            Reason.NOT_SERVING,
            _with_log(
                f"The NIM server has been ready for {_ago(ready_for)} but {MODELS_PATH} does not "
                f"list {lacking} (it lists {listed}): check NIM_SERVED_MODEL_NAME and the "
                "server's log.",
                ctx,
            ),
            log,
        )
    return _Verdict(
        Phase.RUNNING,
        Reason.VERIFYING_SERVING,
        f"NIM server ready{took}; {MODELS_PATH} does not list {lacking} yet (it lists {listed}; "
        f"{since}FAILED after {_ago(window)}).",
    )


def _interrupted(ctx: _Context) -> _Verdict | None:
    """A server that has served and is unready now (a busy NIM misses readiness probes, a
    restart reloads the model): still the task's server. Reported, never failed here; the
    reaper stops it only after the unhealthy window."""
    pod = ctx.pod
    if pod.served_at is None:
        return None
    since = pod.unready_since
    unready = f" for {_ago(pod.since(since))}" if since else ""
    main = pod.nim
    why = ""
    if main is not None and main.running_since is None and main.latest_termination:
        why = f"; container {main.name} exited with {main.latest_termination.describe()}"
        why += f" (restart {main.restart_count})"
    else:
        probe = pod.last_event("Unhealthy", container=main) if main else None
        why = f"; last probe: {probe.message}" if probe else ""
    return _Verdict(
        Phase.SUCCEEDED,
        Reason.SERVING_INTERRUPTED,
        f"The NIM server at {ctx.endpoint} has served since {format_time(pod.served_at)}; not "
        f"ready{unready}{why}. nim-agent stops it after "
        f"{_ago(ctx.policy.unhealthy_window)} unready.",
    )


def unhealthy_for(pod: PodFacts) -> timedelta | None:
    """How long a server that has served or passed its startup probe has been unready; None
    when it is ready, has never started, or its pod has ended."""
    if pod.phase in ("Failed", "Succeeded") or pod.deleting is not None:
        return None
    main = pod.nim
    passed_startup = pod.served_at is not None or (main is not None and main.started)
    if not passed_startup or pod.condition("Ready")[0] == "True":
        return None
    return pod.since(pod.unready_since or pod.served_at)


def _unscheduled(ctx: _Context) -> _Verdict | None:
    pod = ctx.pod
    if pod.node:
        return None
    status, reason, message, _ = pod.condition("PodScheduled")
    if status == "True":
        return None  # bound, nodeName not seen yet: let the later rules describe it
    waited = pod.since(pod.created)
    if reason == "SchedulingGated" or (pod.scheduling_gates and status != "False"):
        gates = ", ".join(pod.scheduling_gates) or "scheduling gates"
        return _Verdict(
            Phase.WAITING_FOR_RESOURCES,
            Reason.SCHEDULING_GATED,
            f"Waiting in a queue, {_ago(waited)}: held by {gates}.",
        )
    timeout = ctx.policy.unschedulable_timeout
    if status == "False":
        event = pod.last_event("FailedScheduling")
        why = message or (event.message if event else "") or "the scheduler gave no details"
        if pod.nominated_node:
            why += f" (preempting lower-priority pods on node {pod.nominated_node})"
        if waited is not None and waited >= timeout:
            return _Verdict(
                Phase.FAILED,
                Reason.UNSCHEDULABLE,
                f"No node could take the NIM pod within {_ago(timeout)} "
                f"(waited {_ago(waited)}): {why}. Lower gpu/mem/cpu or check the node "
                "selector, tolerations and affinity.",
            )
        return _Verdict(
            Phase.WAITING_FOR_RESOURCES,
            Reason.UNSCHEDULABLE,
            f"Waiting for a node, {_ago(waited)} (gives up after {_ago(timeout)}): {why}",
        )
    if waited is not None and waited >= timeout:
        return _Verdict(
            Phase.FAILED,
            Reason.UNSCHEDULABLE,
            f"No scheduler placed the NIM pod within {_ago(timeout)}: check that the "
            "scheduler named in spec.schedulerName is running.",
        )
    return _Verdict(Phase.QUEUED, Reason.QUEUED, f"Waiting for the scheduler, {_ago(waited)}.")


def _oom(ctx: _Context, container: ContainerFacts) -> _Verdict:
    limit = f" of {container.memory_limit}" if container.memory_limit else ""
    knob = "lora_adapter_mem" if container.is_lora_downloader else "mem"
    reason = Reason.INIT_CONTAINER_FAILED if container.init else Reason.OOM_KILLED
    return _Verdict(
        Phase.FAILED,
        reason,
        _with_log(
            f"The NIM {container.kind} {container.name} was killed for exceeding its memory "
            f"limit{limit} (OOMKilled, exit code 137): raise `{knob}`.",
            ctx,
        ),
        LogRequest(container.name, previous=container.terminated is None),
    )


def _init_failure(ctx: _Context, *, final: bool) -> _Verdict | None:
    """An init container that failed `threshold` times (or once, when the pod has failed)."""
    threshold = ctx.policy.crashloop_restart_threshold
    for container in ctx.pod.init_containers:
        term = container.latest_termination
        if term is None or not term.failed:
            continue
        if container.oom_killed:
            return _oom(ctx, container)
        if final or container.restart_count >= threshold:
            if container.is_input_adapter_downloader:
                hint = (
                    "check that each adapter input is the folder of a LoRA adapter "
                    "(adapter_config.json with *.safetensors or *.bin weights, or a .nemo file) "
                    "and that the pod may read Flyte's object store (the connector's "
                    "adapter_inputs_image, adapter_inputs_env and adapter_inputs_secret, or "
                    "NIM(service_account=...))"
                )
            elif container.is_lora_downloader:
                hint = (
                    "check hf_repo_ids (each an existing Hugging Face repository holding "
                    "adapter_config.json and adapter_model.safetensors), hf_endpoint and the HF "
                    "token (NIMSecrets hf_token_group / hf_token_key)"
                )
            else:
                hint = "check its log"
            detail = f": {term.message}" if term.message else ""
            restarts = (
                f" after {container.restart_count} restarts" if container.restart_count else ""
            )
            return _Verdict(
                Phase.FAILED,
                Reason.INIT_CONTAINER_FAILED,
                _with_log(
                    f"Init container {container.name} failed{restarts} with {term.describe()}"
                    f"{detail}; {hint}.",
                    ctx,
                ),
                LogRequest(container.name, previous=container.terminated is None),
            )
    return None


def _init_containers(ctx: _Context) -> _Verdict | None:
    pod = ctx.pod
    failure = _init_failure(ctx, final=False)
    if failure:
        return failure
    if pod.condition("Initialized")[0] == "True":
        return None
    for container in pod.init_containers:
        if container.sidecar and container.running_since:
            continue
        problem = _waiting_problem(ctx, container)
        if problem:
            return problem
        if container.terminated and not container.terminated.failed:
            continue  # done
        term = container.latest_termination
        if container.running_since is None and term is not None and term.failed:
            return _Verdict(
                Phase.INITIALIZING,
                Reason.RESTARTING,
                f"Init container {container.name} failed with {term.describe()}; kubelet retries "
                f"(restart {container.restart_count}, FAILED at "
                f"{ctx.policy.crashloop_restart_threshold}).",
            )
        if container.running_since:
            ran = _ago(pod.since(container.running_since))
            if container.is_lora_downloader:
                text = (
                    f"Downloading LoRA adapters (init container {container.name} running, {ran})."
                )
            else:
                text = f"Running init container {container.name}, {ran}."
            return _Verdict(Phase.INITIALIZING, Reason.INIT_CONTAINER_RUNNING, text)
        return _creating(ctx, container)
    return None


# Registry answers that retrying will not change, in the words of the runtime's error (the CRI's
# gRPC code, the registry's HTTP status line, the distribution spec's error codes). Matched as
# whole phrases: a bare "404" inside an image digest or a host name is not a verdict.
_BARE_ERROR = re.compile(r"Error: \w+")  # the kubelet's Failed event echoing a waiting reason
_PERMANENT_PULL_ERROR = re.compile(
    r"code = NotFound"  # containerd: the reference does not resolve (no such tag/repository)
    r"|\b40[134] (Unauthorized|Forbidden|Not Found)\b"  # the registry's status line
    r"|manifest unknown|manifest for \S+ not found|name unknown"
    r"|pull access denied|repository does not exist|insufficient_scope|\bdenied: "
    r"|authentication required|invalid reference format"
    r"|: not found\s*$",  # containerd: `failed to resolve reference "<ref>": <ref>: not found`
    re.IGNORECASE,
)
_PULL_WAITING = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "RegistryUnavailable", "ImageInspectError"}
)
_PULL_PERMANENT_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
_CREATE_WAITING = frozenset({"CreateContainerError", "RunContainerError"})


# The kubelet's words for a Secret it cannot read (secretKeyRef, envFrom): `secret "x" not found`
# (the API's NotFound), `couldn't find key k in Secret ns/x`, `couldn't get secret ns/x`.
_SECRET_PROBLEM = re.compile(r'secret "[^"]*" not found|in secret \S|get secret \S', re.IGNORECASE)


def _waiting_problem(ctx: _Context, container: ContainerFacts) -> _Verdict | None:
    """Image pull, config and create errors of a waiting container (init or regular)."""
    pod, waiting = ctx.pod, container.waiting_reason
    if waiting in _PULL_WAITING or waiting in _PULL_PERMANENT_WAITING:
        return _pull_error(ctx, container)
    if waiting == "CreateContainerConfigError":
        text = container.waiting_message or "no message"
        if _SECRET_PROBLEM.search(text):
            return _Verdict(
                Phase.FAILED,
                Reason.MISSING_SECRET,
                f"Cannot start {container.kind} {container.name}: {text}. Create the Secret in "
                f"namespace {pod.namespace or '?'} or fix NIMSecrets (ngc_secret_group / "
                "ngc_secret_key, hf_token_group / hf_token_key).",
            )
        return _Verdict(
            Phase.FAILED,
            Reason.CONTAINER_CONFIG_ERROR,
            f"Cannot start {container.kind} {container.name}: {text} (CreateContainerConfigError).",
        )
    if waiting in _CREATE_WAITING:
        text = container.waiting_message or "no message"
        failing = pod.since(pod.failing_since(container))
        grace = ctx.policy.container_error_grace
        if failing is not None and failing >= grace:
            return _Verdict(
                Phase.FAILED,
                Reason.CONTAINER_CREATE_ERROR,
                f"The runtime could not start {container.kind} {container.name} for "
                f"{_ago(failing)} ({waiting}): {text}.",
            )
        return _Verdict(
            Phase.INITIALIZING,
            Reason.CONTAINER_CREATE_ERROR,
            f"Starting {container.kind} {container.name} failed ({waiting}), kubelet retries "
            f"(FAILED after {_ago(grace)}): {text}.",
        )
    return None


def _pull_error(ctx: _Context, container: ContainerFacts) -> _Verdict:
    pod, waiting = ctx.pod, container.waiting_reason
    # The registry's answer is in ErrImagePull's message, in ImagePullBackOff's on recent
    # kubelets ("Back-off pulling image ...: ErrImagePull: <answer>", v1.37 here; older ones say
    # only "Back-off pulling image ..."), and in the kubelet's "Failed to pull image" event. Its
    # latest Failed event is mostly a bare echo of the waiting reason ("Error: ImagePullBackOff"):
    # never the answer.
    registry = container.waiting_message
    if waiting != "ErrImagePull" and "ErrImagePull:" not in registry:
        for event in reversed(pod.events_about(("Failed",), container)):
            if event.message and not _BARE_ERROR.fullmatch(event.message):
                registry = event.message
                break
    secret_event = pod.last_event("FailedToRetrieveImagePullSecret")
    secret_note = f" ({secret_event.message})" if secret_event else ""
    image = container.image or "?"
    text = (
        f"Cannot pull image {image} for {container.kind} {container.name} ({waiting}): "
        f"{registry or 'no message'}{secret_note}. Check the image name and tag, and that "
        "ngc_image_secret names a docker-registry Secret with access to the registry."
    )
    permanent = waiting in _PULL_PERMANENT_WAITING or bool(_PERMANENT_PULL_ERROR.search(registry))
    failing = pod.since(pod.failing_since(container))
    grace = ctx.policy.image_pull_grace
    if permanent or (failing is not None and failing >= grace):
        return _Verdict(Phase.FAILED, Reason.IMAGE_PULL_ERROR, text)
    return _Verdict(
        Phase.INITIALIZING,
        Reason.IMAGE_PULL_ERROR,
        f"{text} Retrying, {_ago(failing)} (FAILED after {_ago(grace)}).",
    )


def _startup_probe_kill(pod: PodFacts, container: ContainerFacts) -> EventFacts | None:
    killing = pod.last_event("Killing", container=container)
    if killing and "startup probe" in killing.message.lower():
        return killing
    return None


def _container_failure(ctx: _Context, *, final: bool) -> _Verdict | None:
    """OOM, startup probe kill or crash loop of a regular container (or any exit, if final)."""
    pod, threshold = ctx.pod, ctx.policy.crashloop_restart_threshold
    for container in pod.containers:
        term = container.latest_termination
        if term is None:
            continue
        log = LogRequest(container.name, previous=container.terminated is None)
        if container.oom_killed:
            return _oom(ctx, container)
        if _startup_probe_kill(pod, container):
            probe = pod.last_event("Unhealthy", container=container)
            detail = f" (last probe: {probe.message})" if probe else ""
            return _Verdict(
                Phase.FAILED,
                Reason.STARTUP_TIMEOUT,
                _with_log(
                    f"The NIM server (container {container.name}) did not pass its startup probe "
                    f"in time and was restarted by the kubelet{detail}: raise "
                    "startup_failure_threshold if the model needs longer to load.",
                    ctx,
                ),
                log,
            )
        if container.restart_count >= threshold or (final and term.failed):
            detail = f": {term.message}" if term.message else ""
            liveness = pod.last_event("Killing", container=container)
            killed = (
                " (killed by its liveness probe)"
                if liveness and "liveness probe" in liveness.message.lower()
                else ""
            )
            if container.restart_count < threshold:  # the pod failed: no restart will come
                reason = Reason.SERVER_EXITED
                head = f"Container {container.name} exited with {term.describe()}{killed}{detail}."
            else:
                reason = Reason.CRASH_LOOP
                head = (
                    f"Container {container.name} is crash-looping: {container.restart_count} "
                    f"restarts, last {term.describe()}{killed}{detail}."
                )
            return _Verdict(Phase.FAILED, reason, _with_log(head, ctx), log)
    return None


def _containers_failing(ctx: _Context) -> _Verdict | None:
    for container in ctx.pod.containers:
        problem = _waiting_problem(ctx, container)
        if problem:
            return problem
    return _container_failure(ctx, final=False)


def _nim_running(ctx: _Context) -> _Verdict | None:
    pod, main = ctx.pod, ctx.pod.nim
    if main is None:
        return None
    last = main.latest_termination
    if main.running_since is None:
        if last is not None and (main.restart_count > 0 or main.terminated is not None):
            return _Verdict(
                Phase.RUNNING,
                Reason.RESTARTING,
                f"Container {main.name} exited with {last.describe()}; kubelet restarts it "
                f"(restart {main.restart_count}, FAILED at "
                f"{ctx.policy.crashloop_restart_threshold}).",
            )
        return None
    running = pod.since(main.running_since)
    timeout = ctx.policy.startup_timeout
    if main.started:
        # The startup probe passed: the startup window is over for this container.
        since = pod.unready_since
        probe = pod.last_event("Unhealthy", container=main)
        detail = f"; last probe: {probe.message}" if probe else ""
        return _Verdict(
            Phase.RUNNING,
            Reason.NOT_READY,
            f"The NIM server started (startup probe passed) but is not ready"
            f"{f' for {_ago(pod.since(since))}' if since else ''}{detail}.",
        )
    if running is not None and running >= timeout:
        probe = pod.last_event("Unhealthy", container=main)
        detail = f"; last probe: {probe.message}" if probe else ""
        return _Verdict(
            Phase.FAILED,
            Reason.STARTUP_TIMEOUT,
            _with_log(
                f"Startup window exceeded: the NIM server (container {main.name}) has run for "
                f"{_ago(running)} without becoming ready (window {_ago(timeout)}"
                f"{detail}). Raise startup_failure_threshold if the model needs longer to load.",
                ctx,
            ),
            LogRequest(main.name, previous=False),
        )
    note = ""
    if main.restart_count and last:
        note = f"; restarted {main.restart_count}x, last {last.describe()}"
    elif main.ready:
        note = "; container ready, waiting for the pod's readiness gates"
    return _Verdict(
        Phase.RUNNING,
        Reason.LOADING_MODEL,
        f"Loading model, {_ago(running)} (startup window {_ago(timeout)}{note}).",
    )


def _creating(ctx: _Context, container: ContainerFacts) -> _Verdict:
    """A scheduled container that has not started: pulling its image, or being created."""
    pod = ctx.pod
    pulling = pod.last_event("Pulling", container=container)
    pulled = pod.last_event("Pulled", container=container)
    warning = pod.last_warning(after=pod.scheduled_at)
    note = f"; last warning: {warning.reason}: {warning.message}" if warning else ""
    if pulling and (pulled is None or (pulled.last or pod.now) < (pulling.last or pod.now)):
        took = _ago(pod.since(pulling.first))
        return _Verdict(
            Phase.INITIALIZING,
            Reason.PULLING_IMAGE,
            f"Pulling image {container.image or '?'} for {container.kind} {container.name}, "
            f"{took}{note}.",
        )
    since = pod.since(pod.scheduled_at)
    where = f" on node {pod.node}" if pod.node else ""
    waiting = f" ({container.waiting_reason})" if container.waiting_reason else ""
    return _Verdict(
        Phase.INITIALIZING,
        Reason.CONTAINER_CREATING,
        f"Creating {container.kind} {container.name}{where}{waiting}, {_ago(since)} since "
        f"scheduling{note}.",
    )


def _nim_creating(ctx: _Context) -> _Verdict | None:
    main = ctx.pod.nim
    if main is None or not ctx.pod.node:
        return None
    return _creating(ctx, main)


def _fallback(ctx: _Context) -> _Verdict:
    pod = ctx.pod
    started = any(c.running_since or c.latest_termination for c in pod.containers)
    seen = ", ".join(
        f"{label} {value}"
        for label, value in (
            ("phase", pod.phase),
            ("reason", pod.status_reason),
            ("node", pod.node),
        )
        if value
    )
    return _Verdict(
        Phase.RUNNING if started else Phase.INITIALIZING,
        Reason.UNKNOWN,
        f"NIM pod state not recognised yet ({seen or 'no status reported'}).",
    )


_Rule = Callable[[_Context], _Verdict | None]

_RULES: tuple[_Rule, ...] = (
    _stopped_by_us,
    _deleted_by_us,
    _disrupted,
    _pod_failed,
    _pod_succeeded,
    _node_lost,
    _ready,
    _interrupted,
    _unscheduled,
    _init_containers,
    _containers_failing,
    _nim_running,
    _nim_creating,
)


def classify(
    pod: Mapping[str, Any] | None,
    *,
    events: Sequence[Mapping[str, Any]] = (),
    now: datetime,
    policy: StatusPolicy,
    endpoint: str,
    log_tail: str | None = None,
    deletion_cause: str | None = None,
    serving: ServingCheck | None = None,
    typed: bool = False,
) -> Classification:
    """Map a NIM pod (and its events) to a Flyte phase, a message and metrics reason.

    `pod` None means the pod no longer exists (confirm with a direct read, not only the cache).
    `deletion_cause` is set when nim-agent itself deleted, or is deleting, the deployment (e.g.
    "ttl expired", "teardown", "failure cleanup"): the result is then FAILED, never retryable.
    `log_tail` is the tail of the log named by a previous result's `log_request`; it is appended
    to the message of failures. `endpoint` becomes the output of SUCCEEDED (with `typed`, as a
    `NIMEndpoint` with the served model and adapters). `serving` is the ``/v1/models`` check of a
    Ready server (None: not checked, Ready is SUCCEEDED); see the module docstring.

    Example::

        result = classify(pod, events=events, now=datetime.now(UTC), policy=StatusPolicy(),
                          endpoint="http://llama.flyte.svc.cluster.local:8000")
        if result.log_request: ...  # read that log, classify again with log_tail=...
    """
    if pod is None:
        if deletion_cause is not None:
            message = f"The NIM pod was deleted by nim-agent ({deletion_cause})."
            return Classification(Phase.FAILED, message, Reason.POD_DELETED)
        return Classification(
            Phase.RETRYABLE_FAILED,
            "The NIM pod no longer exists and nim-agent did not delete it (deleted by someone, "
            "with its namespace, or by a node drain); Flyte may retry with a new pod.",
            Reason.POD_DELETED,
        )
    facts = read_pod(pod, events, now)
    ctx = _Context(facts, policy, endpoint, log_tail, deletion_cause, serving)
    verdict = next((v for rule in _RULES if (v := rule(ctx)) is not None), None) or _fallback(ctx)
    outputs: dict[str, Any] | None = None
    if verdict.phase is Phase.SUCCEEDED:
        value = NIMEndpoint.of(endpoint, verdict.model, facts.adapters) if typed else endpoint
        outputs = {"endpoint": value}
    return Classification(
        phase=verdict.phase,
        message=verdict.message,
        reason=verdict.reason,
        outputs=outputs,
        custom_info=custom_info(facts),
        log_request=verdict.log_request,
        models_request=verdict.models_request,
        served=verdict.served,
    )
