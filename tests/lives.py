"""Recording pod lives on a real kubelet, as fixtures for the unit tests of `nim_agent.status`.

A *life* is everything a NIM pod went through, as the API server showed it: every version of the
pod (a watch), every version of the events about it (a watch: the kubelet updates an event's
``count`` and ``lastTimestamp`` rather than making a new one), the containers' logs at the end,
and what the connector answered to each GetTask meanwhile. :class:`LifeRecorder` records one
(tests/integration/test_kubelet_lives.py uses it for every life it runs on the real node);
:func:`fixture_of` turns the record into a sanitised JSON document:

- no uids, container ids, resource versions or managedFields; image digests read ``sha256:0...``;
- every time is shifted so that the pod's creation is ``T0`` (2026-01-01T00:00:00Z): a time reads
  as its offset from the creation, and ``at`` (seconds) says when the recorder saw a version;
- the node is ``node-0``, the namespace ``flyte``, the pod (and Service) ``nim-<life>``, the
  Flyte execution ``exec-0``, the stand-in image ``.../llama3-8b-instruct:standin``, pod IPs
  ``10.244.0.100``; the same words inside messages and annotations too.

The tests write fixtures only when asked (they never change the work tree by themselves)::

    NIM_AGENT_RECORD_LIVES=1 .venv/bin/pytest --with-cluster tests/integration/test_kubelet_lives.py

writes ``tests/unit/fixtures/kubelet/<life>.json``, read by tests/unit/test_status_kubelet.py.
Review the diff before committing: a re-recorded life may take another path (one more restart,
a probe seen a period later), and the unit table says which verdicts each life must produce.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nim_agent.contract import OWNED_BY_US, format_time, parse_time

if TYPE_CHECKING:  # the unit tests read fixtures without the Kubernetes client
    from kubernetes import client

FIXTURES = Path(__file__).resolve().parent / "unit" / "fixtures" / "kubelet"
RECORD_ENV = "NIM_AGENT_RECORD_LIVES"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NODE = "node-0"
NAMESPACE = "flyte"
EXECUTION = "exec-0"
STANDIN_IMAGE = "127.0.0.1:5050/nim/meta/llama3-8b-instruct:standin"
POD_IP = "10.244.0.100"

_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CONTAINER_ID = re.compile(r"containerd://[0-9a-f]{64}")
_POD_IP = re.compile(r"\b10\.244\.0\.(?!1\b)\d{1,3}\b")
# Fields that differ on every run and say nothing about the life.
_DROP_META = ("uid", "resourceVersion", "managedFields", "generation", "selfLink", "generateName")


def recording() -> bool:
    """Whether this run writes fixtures (``NIM_AGENT_RECORD_LIVES=1``)."""
    return os.environ.get(RECORD_ENV, "") not in ("", "0")


@dataclass
class Seen:
    """One version of an object, and when the recorder saw it (seconds since it started)."""

    at: float
    obj: dict[str, Any]


@dataclass
class Answer:
    """One GetTask answer of the connector."""

    at: float
    phase: str
    reason: str
    message: str


@dataclass
class LifeRecorder:
    """Watch the pods of nim-agent and the pod events in ``namespace`` from ``start()`` until
    ``stop()``, in two threads; ``answer()`` adds a GetTask answer.

    Example::

        with LifeRecorder(api, namespace) as rec:
            ... deploy, poll GetTask, rec.answer(phase, reason, message) ...
        doc = fixture_of(rec, "crash-loop", description="...", policy=..., logs=...)
    """

    api: client.ApiClient  # the admin's
    namespace: str
    pods: list[Seen] = field(default_factory=list)
    events: list[Seen] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    _started: float = 0.0
    _started_at: datetime = T0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> LifeRecorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def now(self) -> float:
        return time.monotonic() - self._started

    def start(self) -> None:
        from kubernetes import client

        self._started = time.monotonic()
        self._started_at = datetime.now(UTC)
        core = client.CoreV1Api(self.api)
        for target, list_call, kwargs in (
            (self.pods, core.list_namespaced_pod, {"label_selector": OWNED_BY_US}),
            (
                self.events,
                core.list_namespaced_event,
                {"field_selector": "involvedObject.kind=Pod"},
            ),
        ):
            thread = threading.Thread(
                target=self._watch, args=(target, list_call, kwargs), daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _watch(self, target: list[Seen], list_call: Any, kwargs: dict[str, Any]) -> None:
        from kubernetes import client, watch

        version = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for item in w.stream(
                    list_call,
                    self.namespace,
                    resource_version=version or None,
                    timeout_seconds=5,  # come back often to look at the stop flag
                    _request_timeout=30,
                    **kwargs,
                ):
                    obj = self.api.sanitize_for_serialization(item["object"])
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if item["type"] in ("ADDED", "MODIFIED"):
                        with self._lock:
                            target.append(Seen(self.now(), obj))
                    if self._stop.is_set():
                        break
            except client.ApiException as e:
                if e.status == 410:  # too old: list again (versions seen twice are dropped later)
                    version = ""
                time.sleep(0.5)
            except Exception:  # a dropped connection: watch again from the last version
                time.sleep(0.5)
            finally:
                w.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)

    def answer(self, phase: str, reason: str, message: str) -> None:
        with self._lock:
            if not self.answers or (self.answers[-1].phase, self.answers[-1].reason) != (
                phase,
                reason,
            ):
                self.answers.append(Answer(self.now(), phase, reason, message))

    def pod_versions(self) -> list[Seen]:
        """Distinct versions of the (one) pod, in the order seen."""
        with self._lock:
            seen: set[str] = set()
            out = []
            for s in self.pods:
                version = str(s.obj.get("metadata", {}).get("resourceVersion"))
                if version not in seen:
                    seen.add(version)
                    out.append(s)
            return out

    def event_versions(self, pod_name: str) -> list[Seen]:
        with self._lock:
            seen: set[str] = set()
            out = []
            for s in self.events:
                if (s.obj.get("involvedObject") or {}).get("name") != pod_name:
                    continue
                version = str(s.obj.get("metadata", {}).get("resourceVersion"))
                if version not in seen:
                    seen.add(version)
                    out.append(s)
            return out


# --------------------------------------------------------------------------- sanitising


@dataclass(frozen=True)
class Names:
    """The run's own words and what a fixture says instead."""

    pod: str
    namespace: str
    node: str
    created: datetime
    execution: str = ""
    images: Mapping[str, str] = field(default_factory=dict)  # real reference -> fixture's
    uids: tuple[str, ...] = ()
    life: str = ""

    def replacements(self) -> list[tuple[str, str]]:
        pairs = [(u, "<uid>") for u in self.uids if u]
        pairs += sorted(self.images.items(), key=lambda kv: -len(kv[0]))
        pairs += [
            (self.pod, f"nim-{self.life}"),
            (self.namespace, NAMESPACE),
            (self.node, NODE),
        ]
        if self.execution:
            pairs.append((self.execution, EXECUTION))
        return [(a, b) for a, b in pairs if a]


def shift_time(text: str, created: datetime) -> str:
    """Every RFC 3339 time in ``text`` moved so that ``created`` becomes `T0`."""

    def shifted(match: re.Match[str]) -> str:
        moment = parse_time(match.group(0))
        if moment is None:
            return match.group(0)
        fraction = "." in match.group(0)
        out = T0 + (moment - created)
        if fraction:
            return out.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return format_time(out)

    return _TIME.sub(shifted, text)


def sanitise_text(text: str, names: Names) -> str:
    for old, new in names.replacements():
        text = text.replace(old, new)
    text = _CONTAINER_ID.sub("containerd://<id>", text)
    text = _DIGEST.sub("sha256:" + "0" * 64, text)
    text = _POD_IP.sub(POD_IP, text)
    return shift_time(text, names.created)


def sanitise(value: Any, names: Names) -> Any:
    """A JSON value with the run's own words replaced (see the module docstring)."""
    if isinstance(value, str):
        return sanitise_text(value, names)
    if isinstance(value, list):
        return [sanitise(v, names) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ("uid", "containerID", "resourceVersion", "managedFields"):
                continue
            out[sanitise_text(key, names)] = sanitise(item, names)
        return out
    return value


_LONG_ARG = 300  # the adapter download programs run as `python3 -c <source>`: kept out


def sanitise_pod(pod: Mapping[str, Any], names: Names) -> dict[str, Any]:
    pod = json.loads(json.dumps(pod))
    meta = pod.get("metadata") or {}
    for key in _DROP_META:
        meta.pop(key, None)
    for owner in meta.get("ownerReferences") or []:
        owner.pop("uid", None)
    spec = pod.get("spec") or {}
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for key in ("command", "args"):
            if isinstance(container.get(key), list):
                container[key] = [
                    a if len(a) <= _LONG_ARG else f"<program, {len(a)} characters>"
                    for a in container[key]
                ]
    return sanitise(pod, names)  # type: ignore[no-any-return]


_EVENT_KEYS = (
    "type",
    "reason",
    "message",
    "count",
    "firstTimestamp",
    "lastTimestamp",
    "eventTime",
    "series",
    "source",
    "reportingComponent",
    "reportingInstance",
    "action",
)


def sanitise_event(event: Mapping[str, Any], names: Names) -> dict[str, Any]:
    involved = event.get("involvedObject") or {}
    doc = {k: event[k] for k in _EVENT_KEYS if event.get(k) is not None}
    doc["involvedObject"] = {
        k: involved[k] for k in ("kind", "namespace", "name", "fieldPath") if involved.get(k)
    }
    doc["id"] = str((event.get("metadata") or {}).get("name") or "").rsplit(".", 1)[-1]
    return sanitise(doc, names)  # type: ignore[no-any-return]


def fixture_of(
    recorder: LifeRecorder,
    life: str,
    *,
    description: str,
    policy: Mapping[str, Any],
    logs: Mapping[str, str] | None = None,
    images: Mapping[str, str] | None = None,
    node_info: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The sanitised fixture of a recorded life (see the module docstring for its form)."""
    versions = recorder.pod_versions()
    if not versions:
        raise AssertionError(f"life {life}: the recorder saw no pod")
    first = versions[0].obj
    meta = first.get("metadata") or {}
    created = parse_time(meta.get("creationTimestamp"))
    assert created is not None
    pod_name = str(meta.get("name"))
    labels = meta.get("labels") or {}
    names = Names(
        pod=pod_name,
        namespace=str(meta.get("namespace")),
        node=str((versions[-1].obj.get("spec") or {}).get("nodeName") or ""),
        created=created,
        execution=str(labels.get("nim-agent.dev/execution") or ""),
        images=dict(images or {}),
        uids=tuple(sorted({str((v.obj.get("metadata") or {}).get("uid") or "") for v in versions})),
        life=life,
    )
    # `at` is seconds from the pod's creation: the recorder's clock moved onto the API's.
    offset = (recorder._started_at - created).total_seconds()
    events = recorder.event_versions(pod_name)
    pods = []
    spec: object = None
    for seen in versions:
        pod = sanitise_pod(seen.obj, names)
        item = {"at": round(seen.at + offset, 2), "metadata": pod.get("metadata")}
        if pod.get("spec") != spec:  # the spec changes rarely: written when it does
            item["spec"] = spec = pod.get("spec")
        item["status"] = pod.get("status")
        pods.append(item)
    return {
        "life": life,
        "description": description,
        "recorded_on": dict(node_info or {}),
        "policy": dict(policy),
        "pods": pods,
        "events": [
            {"at": round(s.at + offset, 2), "event": sanitise_event(s.obj, names)} for s in events
        ],
        "logs": {k: sanitise_text(v, names) for k, v in (logs or {}).items()},
        "connector": [
            {
                "at": round(a.at + offset, 2),
                "phase": a.phase,
                "reason": a.reason,
                "message": sanitise_text(a.message, names),
            }
            for a in recorder.answers
        ],
    }


def write_fixture(doc: Mapping[str, Any]) -> Path:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"{doc['life']}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


# --------------------------------------------------------------------------- reading fixtures


def events_as_of(doc: Mapping[str, Any], at: float) -> list[dict[str, Any]]:
    """The events of a fixture as they stood ``at`` seconds after the pod's creation: the last
    version of each event seen by then."""
    latest: dict[str, dict[str, Any]] = {}
    for item in doc["events"]:
        if item["at"] <= at:
            latest[item["event"]["id"]] = item["event"]
    return list(latest.values())


def moment(at: float) -> datetime:
    return T0 + timedelta(seconds=at)


def frames(doc: Mapping[str, Any]) -> Iterable[tuple[float, dict[str, Any], list[dict[str, Any]]]]:
    """(at, pod, events as of then) for every pod version of a fixture (a version without
    ``spec`` has the one of the version before)."""
    spec: Any = None
    for item in doc["pods"]:
        spec = item.get("spec", spec)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": item["metadata"],
            "spec": spec,
            "status": item["status"],
        }
        yield item["at"], pod, events_as_of(doc, item["at"])
