"""The tolerant pod reader: a core/v1 Pod and its events, read once into typed facts.

Purely computational, no I/O. `read_pod` never raises: every field of the pod may be absent or
of the wrong type, and reads as empty. The status rules (`nim_agent.status`) decide on these
facts only; they never look into the pod dict themselves. Containers are known by the names
`nim_agent.render` gave them (`contract.NIM_CONTAINER`, `contract.LORA_CONTAINER`,
`contract.ADAPTER_INPUTS_CONTAINER`).

Example::

    facts = read_pod(pod, events, now=datetime.now(UTC))
    facts.nim.restart_count, facts.condition("Ready"), facts.last_event("BackOff")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nim_agent.contract import (
    ADAPTER_INPUTS_CONTAINER,
    LORA_CONTAINER,
    NIM_CONTAINER,
    StopRecord,
    format_time,
    parse_time,
    requested_adapters,
    served_at,
    served_model,
    stop_record,
)

__all__ = [
    "ContainerFacts",
    "EventFacts",
    "PodFacts",
    "StartupProbe",
    "Termination",
    "custom_info",
    "read_pod",
    "startup_probe",
]


# Tolerant accessors: a missing or mistyped field reads as empty, never raises.


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _maps(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _text(value: object) -> str:
    """A message from the API, without the trailing period: ours are appended after it."""
    return _str(value).strip().rstrip(".").rstrip()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Termination:
    """How a container's (current or last) run ended."""

    exit_code: int | None
    reason: str
    message: str
    signal: int | None
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def parse(state: Mapping[str, Any]) -> Termination | None:
        raw = state.get("terminated")
        if not isinstance(raw, Mapping):
            return None
        return Termination(
            exit_code=_int(raw.get("exitCode")),
            reason=_str(raw.get("reason")),
            message=_text(raw.get("message")),
            signal=_int(raw.get("signal")),
            started_at=parse_time(raw.get("startedAt")),
            finished_at=parse_time(raw.get("finishedAt")),
        )

    def describe(self) -> str:
        """`exit code 1 (Error)`."""
        parts = []
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        if self.signal is not None:
            parts.append(f"signal {self.signal}")
        text = ", ".join(parts) or "unknown exit code"
        return f"{text} ({self.reason})" if self.reason else text

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or self.reason not in ("", "Completed")


@dataclass(frozen=True)
class ContainerFacts:
    """One container or init container: its spec and status, merged by name."""

    name: str
    image: str
    init: bool
    sidecar: bool  # an init container with restartPolicy Always runs beside the server
    memory_limit: str
    restart_count: int
    ready: bool
    started: bool  # the kubelet's `started`: the startup probe passed (reset by a restart)
    waiting_reason: str
    waiting_message: str
    running_since: datetime | None
    terminated: Termination | None
    last_terminated: Termination | None

    @property
    def kind(self) -> str:
        return "init container" if self.init else "container"

    @property
    def field_path(self) -> str:
        return f"spec.{'initContainers' if self.init else 'containers'}{{{self.name}}}"

    @property
    def is_nim(self) -> bool:
        """The NIM server itself (the container the renderer named `NIM_CONTAINER`)."""
        return not self.init and self.name == NIM_CONTAINER

    @property
    def is_lora_downloader(self) -> bool:
        """An adapter download init container: from Hugging Face (`LORA_CONTAINER`) or from the
        task's inputs (`ADAPTER_INPUTS_CONTAINER`)."""
        return self.init and self.name in (LORA_CONTAINER, ADAPTER_INPUTS_CONTAINER)

    @property
    def is_input_adapter_downloader(self) -> bool:
        """The init container that downloads the task's adapter inputs from the object store."""
        return self.init and self.name == ADAPTER_INPUTS_CONTAINER

    @property
    def oom_killed(self) -> bool:
        return any(t is not None and t.reason == "OOMKilled" for t in self._terminations)

    @property
    def latest_termination(self) -> Termination | None:
        return self.terminated or self.last_terminated

    @property
    def _terminations(self) -> tuple[Termination | None, Termination | None]:
        return (self.terminated, self.last_terminated)


def _read_containers(pod: Mapping[str, Any], *, init: bool) -> list[ContainerFacts]:
    spec_key, status_key = (
        ("initContainers", "initContainerStatuses") if init else ("containers", "containerStatuses")
    )
    specs = {_str(c.get("name")): c for c in _maps(_map(pod.get("spec")).get(spec_key))}
    statuses = {_str(s.get("name")): s for s in _maps(_map(pod.get("status")).get(status_key))}
    names = list(specs) + [name for name in statuses if name not in specs]
    result = []
    for name in names:
        spec, status = specs.get(name, {}), statuses.get(name, {})
        state, last = _map(status.get("state")), _map(status.get("lastState"))
        waiting, running = _map(state.get("waiting")), _map(state.get("running"))
        limits = _map(_map(spec.get("resources")).get("limits"))
        result.append(
            ContainerFacts(
                name=name or "?",
                image=_str(status.get("image")) or _str(spec.get("image")),
                init=init,
                sidecar=init and spec.get("restartPolicy") == "Always",
                memory_limit=_str(limits.get("memory")),
                restart_count=_int(status.get("restartCount")) or 0,
                ready=status.get("ready") is True,
                started=status.get("started") is True,
                waiting_reason=_str(waiting.get("reason")),
                waiting_message=_text(waiting.get("message")),
                running_since=parse_time(running.get("startedAt")) if "running" in state else None,
                terminated=Termination.parse(state),
                last_terminated=Termination.parse(last),
            )
        )
    return result


@dataclass(frozen=True)
class EventFacts:
    """One event about the pod (core/v1 or events.k8s.io/v1), with its first and last time."""

    reason: str
    message: str
    type: str
    field_path: str
    first: datetime | None
    last: datetime | None


def _read_events(
    raw: Sequence[Mapping[str, Any]], pod_uid: str, created: datetime | None
) -> list[EventFacts]:
    result = []
    for item in raw or ():
        event = _map(item)
        involved = _map(event.get("involvedObject") or event.get("regarding"))
        uid = _str(involved.get("uid"))
        if uid and pod_uid and uid != pod_uid:
            continue  # an older pod of the same name
        series = _map(event.get("series"))
        first = parse_time(event.get("firstTimestamp")) or parse_time(event.get("eventTime"))
        last = (
            parse_time(event.get("lastTimestamp"))
            or parse_time(series.get("lastObservedTime"))
            or parse_time(event.get("deprecatedLastTimestamp"))
            or first
            or parse_time(_map(event.get("metadata")).get("creationTimestamp"))
        )
        if created and last and last < created:
            continue
        result.append(
            EventFacts(
                reason=_str(event.get("reason")),
                message=_text(event.get("message")) or _text(event.get("note")),
                type=_str(event.get("type")),
                field_path=_str(involved.get("fieldPath")),
                first=first or last,
                last=last,
            )
        )
    # oldest first; events without any time sort first, so they never hide a dated one
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(result, key=lambda e: e.last or epoch)


@dataclass(frozen=True)
class PodFacts:
    """The facts the status rules need, read once from the pod dict by `read_pod`."""

    name: str
    namespace: str
    uid: str
    node: str
    pod_ip: str
    phase: str
    status_reason: str
    status_message: str
    nominated_node: str
    created: datetime | None
    deleting: datetime | None
    stopped: StopRecord | None  # nim-agent stopped it (`contract.stop_record`)
    conditions: Mapping[str, Mapping[str, Any]]
    scheduling_gates: list[str]
    init_containers: list[ContainerFacts]
    containers: list[ContainerFacts]
    events: list[EventFacts]
    now: datetime
    served_at: datetime | None = None
    """When the deployment was first verified serving (its served-at annotation)."""
    served_model: str = ""
    """The base model id recorded with served-at."""
    adapters: tuple[str, ...] = ()
    """The adapter names the server must list (its adapters annotation)."""
    model_name: str = ""
    """NIM_SERVED_MODEL_NAME of the NIM container, when set: the base model it must list."""

    def condition(self, kind: str) -> tuple[str, str, str, datetime | None]:
        """(status, reason, message, lastTransitionTime) of a condition; status "" if absent."""
        cond = self.conditions.get(kind, {})
        return (
            _str(cond.get("status")),
            _str(cond.get("reason")),
            _text(cond.get("message")),
            parse_time(cond.get("lastTransitionTime")),
        )

    def since(self, start: datetime | None) -> timedelta | None:
        return self.now - start if start else None

    @property
    def scheduled_at(self) -> datetime | None:
        status, _, _, at = self.condition("PodScheduled")
        return at if status == "True" else None

    @property
    def ready_at(self) -> datetime | None:
        status, _, _, at = self.condition("Ready")
        return at if status == "True" else None

    @property
    def nim(self) -> ContainerFacts | None:
        """The NIM server container, found by the name the renderer gave it."""
        return next((c for c in self.containers if c.is_nim), None)

    @property
    def unready_since(self) -> datetime | None:
        """Since when the pod has not been Ready (its Ready condition's last transition)."""
        status, _, _, at = self.condition("Ready")
        return at if status == "False" else None

    def events_about(
        self, reasons: Sequence[str], container: ContainerFacts | None = None
    ) -> list[EventFacts]:
        """Events with one of `reasons` (about `container`, or the whole pod), oldest first."""
        return [
            e
            for e in self.events
            if e.reason in reasons
            and (container is None or e.field_path in ("", container.field_path))
        ]

    def last_event(
        self, *reasons: str, container: ContainerFacts | None = None
    ) -> EventFacts | None:
        found = self.events_about(reasons, container)
        return found[-1] if found else None

    def first_event(
        self, *reasons: str, container: ContainerFacts | None = None
    ) -> EventFacts | None:
        found = self.events_about(reasons, container)
        return found[0] if found else None

    def last_warning(self, after: datetime | None) -> EventFacts | None:
        """The latest kubelet-side warning since `after` (the scheduler's are history by then)."""
        for event in reversed(self.events):
            if event.type != "Warning" or event.reason == "FailedScheduling":
                continue
            if after is None or event.last is None or event.last >= after:
                return event
        return None

    def failing_since(self, container: ContainerFacts) -> datetime | None:
        """When kubelet first reported a failure for the container, else when it was scheduled."""
        event = self.first_event("Failed", container=container)
        return (event.first if event else None) or self.scheduled_at or self.created


def read_pod(raw: object, events: Sequence[Mapping[str, Any]], now: datetime) -> PodFacts:
    """The facts of a pod dict (and the events involving it), read as of `now`; never raises.

    Events of an older pod with the same name are left out when both carry a uid.
    """
    pod = _map(raw)
    meta, spec, status = (
        _map(pod.get("metadata")),
        _map(pod.get("spec")),
        _map(pod.get("status")),
    )
    created = parse_time(meta.get("creationTimestamp"))
    uid = _str(meta.get("uid"))
    return PodFacts(
        name=_str(meta.get("name")),
        namespace=_str(meta.get("namespace")),
        uid=uid,
        node=_str(spec.get("nodeName")),
        pod_ip=_str(status.get("podIP")),
        phase=_str(status.get("phase")),
        status_reason=_str(status.get("reason")),
        status_message=_text(status.get("message")),
        nominated_node=_str(status.get("nominatedNodeName")),
        created=created,
        deleting=parse_time(meta.get("deletionTimestamp")),
        stopped=stop_record(pod),
        conditions={_str(c.get("type")): c for c in _maps(status.get("conditions"))},
        scheduling_gates=[
            _str(g.get("name")) for g in _maps(spec.get("schedulingGates")) if g.get("name")
        ],
        init_containers=_read_containers(pod, init=True),
        containers=_read_containers(pod, init=False),
        events=_read_events(events, uid, created),
        now=now if now.tzinfo else now.replace(tzinfo=UTC),
        served_at=served_at(pod),
        served_model=served_model(pod),
        adapters=requested_adapters(pod),
        model_name=_nim_env(spec, "NIM_SERVED_MODEL_NAME"),
    )


def _nim_env(spec: Mapping[str, Any], name: str) -> str:
    """A literal env value of the NIM container ("" when absent or from a reference)."""
    for container in _maps(spec.get("containers")):
        if container.get("name") == NIM_CONTAINER:
            for var in _maps(container.get("env")):
                if var.get("name") == name:
                    return _str(var.get("value")).strip()
    return ""


def custom_info(pod: PodFacts) -> dict[str, Any]:
    """What Flyte shows of the pod (JSON-safe): pod, node, IP, phase, timings, restarts."""
    main = pod.nim
    created, scheduled, ready = pod.created, pod.scheduled_at, pod.ready_at
    init_status, _, _, init_at = pod.condition("Initialized")
    info: dict[str, Any] = {
        "pod": pod.name,
        "namespace": pod.namespace,
        "node": pod.node,
        "pod_ip": pod.pod_ip,
        "pod_phase": pod.phase,
        "created_at": _time_text(created),
        "scheduled_at": _time_text(scheduled),
        "initialized_at": _time_text(init_at) if init_status == "True" else None,
        "started_at": _time_text(main.running_since) if main else None,
        "ready_at": _time_text(ready),
        "time_to_schedule_s": _seconds(created, scheduled),
        "time_to_ready_s": _seconds(created, ready),
        "restarts": {c.name: c.restart_count for c in pod.init_containers + pod.containers},
    }
    return {key: value for key, value in info.items() if value not in (None, "", {})}


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def _time_text(moment: datetime | None) -> str | None:
    return format_time(moment) if moment else None


@dataclass(frozen=True)
class StartupProbe:
    """The NIM container's startup probe: how long the kubelet lets the model load."""

    initial_delay: timedelta
    period: timedelta
    failure_threshold: int

    @property
    def window(self) -> timedelta:
        """Initial delay + period x failure threshold: then the kubelet restarts the server."""
        return self.initial_delay + self.period * self.failure_threshold


def startup_probe(raw: object) -> StartupProbe | None:
    """The startup probe of the pod's NIM container (Kubernetes' defaults filled in), or None
    when the container or its probe is absent or unreadable."""
    containers = _maps(_map(_map(raw).get("spec")).get("containers"))
    spec = next((c for c in containers if c.get("name") == NIM_CONTAINER), {})
    probe = spec.get("startupProbe")
    if not isinstance(probe, Mapping):
        return None
    period = probe.get("periodSeconds") or 10
    failures = probe.get("failureThreshold") or 3
    delay = probe.get("initialDelaySeconds") or 0
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (period, failures, delay)):
        return None
    return StartupProbe(timedelta(seconds=delay), timedelta(seconds=period), failures)
