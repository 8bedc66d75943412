"""The on-pod contract: every name, key and format nim-agent writes on objects and reads back.

Purely computational, stdlib only. The renderer writes these labels, annotations, container names
and paths; the connector, the reaper, the watch cache, the status rules and the CLI read them back
from the objects, never from process memory. Each appears here once:

=========================================  =====================================================
key or name                                meaning
=========================================  =====================================================
label ``app.kubernetes.io/managed-by``     ``nim-agent``: the selector of the watch cache, of
                                           ``nim-agent list`` and of every cleanup (`OWNED_BY_US`)
label ``app.kubernetes.io/name``           ``nim``
label ``app.kubernetes.io/instance``       the deployment name
label ``nim-agent.dev/deployment``         the deployment name (= Pod name = Service name)
labels ``nim-agent.dev/<part>``            the Flyte execution identity (`IDENTITY_PARTS`)
label ``nim-agent.dev/simulate``           the local control plane's pod life (users may set it)
annotation ``nim-agent.dev/execution-id``  the full execution identity, JSON
annotation ``nim-agent.dev/expires-at``    RFC 3339 UTC time after which the reaper deletes it
annotation ``nim-agent.dev/endpoint``      the in-cluster URL (`endpoint_for`)
annotation ``nim-agent.dev/deletion-cause``  ``<cause>: <detail>`` once nim-agent deletes it
annotation ``nim-agent.dev/adapters``      JSON list of the adapter names the server must list
                                           at ``/v1/models`` (`requested_adapters`)
annotation ``nim-agent.dev/served-at``     RFC 3339 UTC time the deployment was first verified
                                           serving (Ready, and ``/v1/models`` listing the base
                                           model and every adapter): written once, never moved
annotation ``nim-agent.dev/served-model``  the base model id ``/v1/models`` listed then
annotation ``nim-agent.dev/stopped``       JSON `StopRecord`: why and when nim-agent stopped
                                           the server, and the verdict GetTask keeps answering
label ``nim-agent.dev/share-key``          shared servers (reuse): the hash of the serving
                                           configuration, namespace and scope (`share_key_of`)
label ``nim-agent.dev/generation``         shared servers: which of the key's names it is
label ``nim-agent.dev/holder``             a holder's Service: the holder's name (= Service)
annotation ``holders.nim-agent.dev/<h>``   shared servers: one per holder `h` (an execution),
                                           JSON `HolderRecord` (since, until, adapters, ...)
annotation ``nim-agent.dev/adapters-kept`` shared servers: {name: source} of adapters bound by
                                           holders that are gone (kept for the server's life)
annotation ``nim-agent.dev/idle-until``    shared servers: the latest end + idle ttl of the
                                           holders that are gone (and ``idle-since``: their
                                           latest end)
annotation ``nim-agent.dev/reuse``         shared servers: their scope (`namespace`, ...)
container ``nim``                          the NIM server (`NIM_CONTAINER`)
init container ``lora-downloader``         Hugging Face adapters into ``$NIM_PEFT_SOURCE/<name>``
init container ``lora-inputs``             adapters that are task inputs (FlyteDirectory), from
                                           Flyte's object store into ``$NIM_PEFT_SOURCE/<name>``
init container ``input-downloader``        sidecar form: the task's inputs into ``/shared``
native sidecar ``adapter-sync``            shared servers: adds the adapters holders ask for
                                           while the server runs (`nim_agent/adapter_sync.py`)
=========================================  =====================================================

A shared server (``NIMTask(reuse=...)``) carries no execution identity labels: its holders do, in
their records and on their Services (one per holder, named like the holder's own deployment,
selecting the shared pod), so each holder's endpoint URL is its own.

Adapters downloaded onto a cache PVC are kept under ``/opt/nim/.cache/nim-agent/adapters``
(`ADAPTER_CACHE_PATH`), one folder per Hugging Face revision or object-store URI, and linked into
``$NIM_PEFT_SOURCE``. A NIMTask's output is the endpoint URL (`endpoint_for`), or with
``typed_endpoint=True`` a `NIMEndpoint`.

Times on objects are RFC 3339 (`parse_time`, `format_time`); durations in messages, settings and
the CLI are written ``90s``, ``15m``, ``1h30m`` (`parse_duration`, `format_duration`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nim_agent import adapter_sync as _adapter_sync
from nim_agent import hf_download as _hf_download
from nim_agent.checks import show

__all__ = [
    "ABORT",
    "ADAPTER_CACHE_PATH",
    "ADAPTER_INPUTS_CONTAINER",
    "ADAPTER_SYNC_CONTAINER",
    "ANNOTATIONS_PATH",
    "ANNOTATION_ADAPTERS",
    "ANNOTATION_ADAPTERS_KEPT",
    "ANNOTATION_DELETION_CAUSE",
    "ANNOTATION_ENDPOINT",
    "ANNOTATION_EXECUTION_ID",
    "ANNOTATION_EXPIRES_AT",
    "ANNOTATION_IDLE_SINCE",
    "ANNOTATION_IDLE_UNTIL",
    "ANNOTATION_REUSE",
    "ANNOTATION_SERVED_AT",
    "ANNOTATION_SERVED_MODEL",
    "ANNOTATION_STOPPED",
    "APP_NAME",
    "CACHE_PATH",
    "FAILURE",
    "HOLDER_PREFIX",
    "IDENTITY_PARTS",
    "IDLE",
    "INPUT_CONTAINER",
    "LABEL_DEPLOYMENT",
    "LABEL_GENERATION",
    "LABEL_HOLDER",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_PREFIX",
    "LABEL_SHARE_KEY",
    "LABEL_SIMULATE",
    "LORA_CONTAINER",
    "MANAGED_BY",
    "MODELS_PATH",
    "NIM_CONTAINER",
    "OWNED_BY_US",
    "PEFT_SOURCE_ENV",
    "SHARED_PATH",
    "SHM_PATH",
    "SUPERSEDED",
    "TEARDOWN",
    "TTL",
    "UNHEALTHY",
    "HolderRecord",
    "NIMEndpoint",
    "StopRecord",
    "adapter_name",
    "adapter_source_text",
    "adapters_value",
    "deletion_cause",
    "deletion_cause_value",
    "deployment_of_endpoint",
    "endpoint_for",
    "endpoint_of",
    "expires_at",
    "format_duration",
    "format_time",
    "holder_key",
    "holder_records",
    "is_ours",
    "is_reserved_key",
    "is_shared",
    "kept_adapters",
    "parse_duration",
    "parse_time",
    "requested_adapters",
    "same_deployment",
    "served_at",
    "served_model",
    "share_key_of",
    "stop_record",
    "wanted_adapters",
]

# --------------------------------------------------------------------------- labels, annotations

MANAGED_BY = "nim-agent"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
OWNED_BY_US = f"{LABEL_MANAGED_BY}={MANAGED_BY}"  # label selector of everything nim-agent made
LABEL_NAME = "app.kubernetes.io/name"
APP_NAME = "nim"  # the value of LABEL_NAME
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_PREFIX = "nim-agent.dev/"
LABEL_DEPLOYMENT = LABEL_PREFIX + "deployment"
# The Flyte execution identity, one label each (`nim-agent.dev/project`, ...).
IDENTITY_PARTS = ("project", "domain", "execution", "node", "retry")
# The local control plane's pod life (devcluster/kwok); `simulate-*` annotations tune its timing.
# The only keys in our prefix a user may set.
LABEL_SIMULATE = LABEL_PREFIX + "simulate"
ANNOTATION_EXECUTION_ID = LABEL_PREFIX + "execution-id"
ANNOTATION_EXPIRES_AT = LABEL_PREFIX + "expires-at"
ANNOTATION_ENDPOINT = LABEL_PREFIX + "endpoint"
ANNOTATION_DELETION_CAUSE = LABEL_PREFIX + "deletion-cause"
ANNOTATION_ADAPTERS = LABEL_PREFIX + "adapters"
# "This server has served": the first time the deployment was verified serving. Written once, by
# one merge patch, so that later polls, other replicas and restarted connectors know it without
# asking the server again.
ANNOTATION_SERVED_AT = LABEL_PREFIX + "served-at"
ANNOTATION_SERVED_MODEL = LABEL_PREFIX + "served-model"
# Why and when nim-agent stopped the server, and the verdict it answers from then on (`StopRecord`).
ANNOTATION_STOPPED = LABEL_PREFIX + "stopped"
# Shared servers (NIMTask(reuse=...)). The key and the generation name the server; each holder
# (an execution attached to it) has one annotation of its own, so that attaching and releasing
# are one merge patch each, never a read-modify-write of a shared value.
LABEL_SHARE_KEY = LABEL_PREFIX + "share-key"
LABEL_GENERATION = LABEL_PREFIX + "generation"
LABEL_HOLDER = LABEL_PREFIX + "holder"
HOLDER_PREFIX = _adapter_sync.HOLDER_PREFIX
ANNOTATION_ADAPTERS_KEPT = _adapter_sync.KEPT_ANNOTATION
ANNOTATION_IDLE_UNTIL = LABEL_PREFIX + "idle-until"
ANNOTATION_IDLE_SINCE = LABEL_PREFIX + "idle-since"
ANNOTATION_REUSE = LABEL_PREFIX + "reuse"

# --------------------------------------------------------------------------- containers, paths

NIM_CONTAINER = "nim"
LORA_CONTAINER = "lora-downloader"
ADAPTER_INPUTS_CONTAINER = "lora-inputs"
INPUT_CONTAINER = "input-downloader"
ADAPTER_SYNC_CONTAINER = "adapter-sync"
ANNOTATIONS_PATH = "/etc/nim-agent"  # the adapter-sync sidecar's downward API volume
CACHE_PATH = "/opt/nim/.cache"
ADAPTER_CACHE_PATH = CACHE_PATH + "/nim-agent/adapters"
SHM_PATH = "/dev/shm"
SHARED_PATH = "/shared"  # sidecar form: the task's inputs, downloaded before the server starts
PEFT_SOURCE_ENV = "NIM_PEFT_SOURCE"
MODELS_PATH = "/v1/models"  # the NIM lists its base model and its adapters here


# The folder under $NIM_PEFT_SOURCE for a Hugging Face repo id, which is also the name NIM serves
# the adapter under: adapter_name("tloen/alpaca-lora-7b") == "alpaca-lora-7b". Its home is the
# downloader that runs in the pod (a self-contained program), so the pod and nim-agent agree.
adapter_name = _hf_download.adapter_name

# {name: source} a shared server must serve, from its annotations: the rule that binds each
# adapter name to one source for the server's life. Its home is the adapter-sync sidecar's
# program, so the pod and nim-agent agree.
wanted_adapters = _adapter_sync.wanted_adapters
adapter_source_text = _adapter_sync.describe


def is_reserved_key(key: str) -> bool:
    """Whether a label or annotation key is nim-agent's own: in the ``nim-agent.dev/`` prefix or
    a subdomain of it (``holders.nim-agent.dev/``), bar the local control plane's
    ``nim-agent.dev/simulate*``. Users may not set them: nim-agent reads them back."""
    prefix, slash, _ = key.rpartition("/")
    if not slash:
        return False
    if prefix == LABEL_PREFIX.rstrip("/"):
        return not key.startswith(LABEL_SIMULATE)
    return prefix.endswith("." + LABEL_PREFIX.rstrip("/"))


# --------------------------------------------------------------------------- reading objects


def _metadata(obj: Mapping[str, Any] | None, part: str) -> Mapping[str, Any]:
    meta = (obj or {}).get("metadata")
    value = meta.get(part) if isinstance(meta, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def is_ours(obj: Mapping[str, Any] | None) -> bool:
    """Whether a Pod or Service was made by nim-agent (its managed-by label)."""
    return bool(_metadata(obj, "labels").get(LABEL_MANAGED_BY) == MANAGED_BY)


def same_deployment(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether an existing pod is the one ``wanted`` describes: ours, and the same deployment
    and execution identity (every label of ours but the local control plane's)."""
    have, want = _metadata(existing, "labels"), _metadata(wanted, "labels")
    keys = [k for k in want if k.startswith(LABEL_PREFIX) and not k.startswith(LABEL_SIMULATE)]
    return is_ours(existing) and all(have.get(k) == want[k] for k in keys)


def expires_at(pod: Mapping[str, Any] | None) -> datetime | None:
    """When the deployment's ttl runs out (None: never, or unreadable)."""
    return parse_time(_metadata(pod, "annotations").get(ANNOTATION_EXPIRES_AT))


def endpoint_of(pod: Mapping[str, Any] | None) -> str:
    """The endpoint annotation ("" when absent)."""
    value = _metadata(pod, "annotations").get(ANNOTATION_ENDPOINT)
    return value if isinstance(value, str) else ""


def adapters_value(names: Sequence[str]) -> str:
    """The adapters annotation for these adapter names (in the order given)."""
    return json.dumps(list(names), separators=(",", ":"))


def requested_adapters(pod: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The adapter names the server must list (its adapters annotation); () when none or
    unreadable."""
    raw = _metadata(pod, "annotations").get(ANNOTATION_ADAPTERS)
    try:
        names = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return ()
    if not isinstance(names, list):
        return ()
    return tuple(n for n in names if isinstance(n, str) and n)


def is_shared(pod: Mapping[str, Any] | None) -> bool:
    """Whether a pod is a shared server (NIMTask(reuse=...)): it carries a share key."""
    return bool(_metadata(pod, "labels").get(LABEL_SHARE_KEY))


def share_key_of(pod: Mapping[str, Any] | None) -> str:
    """A shared server's share key ("" for a server of one execution)."""
    value = _metadata(pod, "labels").get(LABEL_SHARE_KEY)
    return value if isinstance(value, str) else ""


def holder_key(holder: str) -> str:
    """The annotation of holder ``holder``'s record on a shared server."""
    return HOLDER_PREFIX + holder


def holder_records(pod: Mapping[str, Any] | None) -> dict[str, HolderRecord]:
    """{holder name: record} of a shared server (unreadable records left out)."""
    found = {}
    for key, value in _metadata(pod, "annotations").items():
        if isinstance(key, str) and key.startswith(HOLDER_PREFIX):
            record = HolderRecord.from_annotation(value)
            if record is not None:
                found[key[len(HOLDER_PREFIX) :]] = record
    return found


def kept_adapters(pod: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """{name: source} of the adapters a shared server keeps from holders that are gone."""
    raw = _metadata(pod, "annotations").get(ANNOTATION_ADAPTERS_KEPT)
    return wanted_adapters({ANNOTATION_ADAPTERS_KEPT: raw}) if isinstance(raw, str) else {}


def served_at(pod: Mapping[str, Any] | None) -> datetime | None:
    """When the deployment was first verified serving (None: not yet, or unreadable)."""
    return parse_time(_metadata(pod, "annotations").get(ANNOTATION_SERVED_AT))


def served_model(pod: Mapping[str, Any] | None) -> str:
    """The base model id the server listed when it was verified ("" when unknown)."""
    value = _metadata(pod, "annotations").get(ANNOTATION_SERVED_MODEL)
    return value if isinstance(value, str) else ""


# --------------------------------------------------------------------------- deletion causes

# Why nim-agent removes a server, as metrics labels and messages say it. A server Flyte may still
# ask about is stopped (kept, with a `StopRecord`, its containers ended by the kubelet); one
# Flyte is done with is deleted.
TTL = "ttl"  # stopped: its ttl has passed
FAILURE = "failure"  # stopped: it failed (crash loop, OOM, startup window, ...)
UNHEALTHY = "unhealthy"  # stopped: it served, then stayed unready past the unhealthy window
TEARDOWN = "teardown"  # deleted: the workflow (or an operator) asked for it
ABORT = "abort"  # deleted: the Flyte execution was aborted
SUPERSEDED = "superseded"  # deleted: a later attempt of the same Flyte node replaced this one
IDLE = "idle"  # stopped: a shared server whose last holder ended more than its idle ttl ago


def deletion_cause_value(cause: str, detail: str = "") -> str:
    """``"<cause>: <detail>"`` as written on the pod before nim-agent deletes it (bounded)."""
    return (f"{cause}: {detail}" if detail else cause)[:1000]


@dataclass(frozen=True)
class StopRecord:
    """Why and when nim-agent stopped a server, and the verdict GetTask answers from then on.

    Written on the pod (annotation ``nim-agent.dev/stopped``, JSON) in the same patch that lowers
    its ``activeDeadlineSeconds`` so the kubelet ends its containers: the pod object stays, so
    every replica and every later connector answers the same, until the reaper deletes the pod
    after the retention. ``phase`` is a Flyte phase name (always terminal).
    """

    cause: str
    at: datetime
    phase: str
    reason: str
    message: str

    def to_annotation(self) -> str:
        doc = {
            "cause": self.cause,
            "at": format_time(self.at),
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message[:4000],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_annotation(cls, text: object) -> StopRecord | None:
        """The record written by `to_annotation`; None when absent or unreadable."""
        if not isinstance(text, str) or not text:
            return None
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        at = parse_time(doc.get("at"))
        fields = [doc.get(k) for k in ("cause", "phase", "reason", "message")]
        if at is None or not all(isinstance(f, str) for f in fields):
            return None
        cause, phase, reason, message = (str(f) for f in fields)
        return cls(cause=cause, at=at, phase=phase, reason=reason, message=message)


def stop_record(pod: Mapping[str, Any] | None) -> StopRecord | None:
    """The pod's `StopRecord`, or None when nim-agent has not stopped it."""
    return StopRecord.from_annotation(_metadata(pod, "annotations").get(ANNOTATION_STOPPED))


@dataclass(frozen=True)
class HolderRecord:
    """One holder of a shared server: an execution attached to it, and what it asked for.

    Written on the shared pod as annotation ``holders.nim-agent.dev/<holder>`` (JSON) by one
    merge patch when the execution attaches (or in the pod itself by the one that creates it),
    rewritten by the same holder only (served, ended), removed by the cleanup sweep once ended.
    ``until`` is ``since`` + the task's ttl: a holder whose execution vanished without a teardown
    or an abort ends then. ``adapters`` are {served name: source}, a source being {"hf": repo id}
    or {"uri": folder URI} (`nim_agent.adapter_sync`), in the order the task gives them (Hugging
    Face ones, then task inputs). ``idle_ttl``: how long the server stays
    warm after this holder ends. ``execution``: the Flyte identity ({project, domain, execution,
    node, retry}; {"task": name} for a local run).
    """

    since: datetime
    until: datetime
    idle_ttl: timedelta
    adapters: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    execution: Mapping[str, Any] = field(default_factory=dict)
    served: datetime | None = None
    served_model: str = ""
    ended: datetime | None = None
    ended_by: str = ""

    def live(self, now: datetime) -> bool:
        """Whether the holder still holds the server: not released, not past its ttl."""
        return self.ended is None and now < self.until

    @property
    def end(self) -> datetime:
        """When the holder stopped (or stops) holding the server."""
        return min(self.ended, self.until) if self.ended is not None else self.until

    def to_annotation(self) -> str:
        doc: dict[str, Any] = {
            "since": format_time(self.since),
            "until": format_time(self.until),
            "idle_ttl": int(self.idle_ttl.total_seconds()),
            "adapters": [{"name": k, **v} for k, v in self.adapters.items()],
            "execution": dict(self.execution),
        }
        if self.served is not None:
            doc["served"] = format_time(self.served)
            doc["served_model"] = self.served_model
        if self.ended is not None:
            doc["ended"] = format_time(self.ended)
            doc["ended_by"] = self.ended_by
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_annotation(cls, text: object) -> HolderRecord | None:
        """The record written by `to_annotation`; None when absent or unreadable."""
        try:
            doc = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        since, until = parse_time(doc.get("since")), parse_time(doc.get("until"))
        idle = doc.get("idle_ttl")
        if since is None or until is None or not isinstance(idle, int) or isinstance(idle, bool):
            return None
        adapters = dict(_adapter_sync.record_adapters(doc))
        execution = doc.get("execution")
        return cls(
            since=since,
            until=until,
            idle_ttl=timedelta(seconds=max(0, idle)),
            adapters=adapters,
            execution=execution if isinstance(execution, dict) else {},
            served=parse_time(doc.get("served")),
            served_model=str(doc.get("served_model") or ""),
            ended=parse_time(doc.get("ended")),
            ended_by=str(doc.get("ended_by") or ""),
        )


def deletion_cause(pod: Mapping[str, Any] | None) -> str | None:
    """Why nim-agent is deleting the pod, or None when it is not."""
    cause = _metadata(pod, "annotations").get(ANNOTATION_DELETION_CAUSE)
    return str(cause) if cause else None


# --------------------------------------------------------------------------- the endpoint


def endpoint_for(name: str, namespace: str, port: int) -> str:
    """The in-cluster URL of a deployment's Service (a NIMTask's output ``endpoint``)."""
    return f"http://{name}.{namespace}.svc.cluster.local:{port}"


@dataclass
class NIMEndpoint:
    """A NIMTask's output with ``typed_endpoint=True``: where the server is and what it serves.

    Example (a downstream task)::

        @task
        def ask(endpoint: NIMEndpoint, question: str) -> str:
            client = openai.OpenAI(base_url=endpoint.openai_base_url, api_key="none")
            reply = client.chat.completions.create(
                model=endpoint.adapters[0] if endpoint.adapters else endpoint.model,
                messages=[{"role": "user", "content": question}],
            )
            return reply.choices[0].message.content
    """

    base_url: str
    """The server's in-cluster URL, ``http://<name>.<namespace>.svc.cluster.local:<port>`` (the
    plain ``endpoint`` string)."""
    openai_base_url: str
    """``base_url + "/v1"``: what OpenAI-compatible clients take as their base URL."""
    model: str
    """The served base model id, as ``/v1/models`` lists it ("" when nim-agent did not check)."""
    adapters: list[str] = field(default_factory=list)
    """The LoRA adapters it serves (model ids usable in requests): those of hf_repo_ids in their
    order, then those given as task inputs, by input name (and key)."""

    @classmethod
    def of(cls, base_url: str, model: str = "", adapters: Sequence[str] = ()) -> NIMEndpoint:
        """The typed endpoint of a server at `base_url`."""
        base = base_url.rstrip("/")
        return cls(
            base_url=base, openai_base_url=base + "/v1", model=model, adapters=list(adapters)
        )


_ENDPOINT = re.compile(
    r"^http://(?P<name>[a-z]([-a-z0-9]*[a-z0-9])?)\.(?P<namespace>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"\.svc(\.cluster\.local)?(:\d{1,5})?/?$"
)


def deployment_of_endpoint(endpoint: str) -> tuple[str, str] | None:
    """(name, namespace) of the deployment behind an endpoint from `endpoint_for`, else None.

    >>> deployment_of_endpoint("http://nim-e1-n0-0-ab12.flyte.svc.cluster.local:8000")
    ('nim-e1-n0-0-ab12', 'flyte')
    """
    m = _ENDPOINT.match(endpoint.strip())
    return (m["name"], m["namespace"]) if m else None


# --------------------------------------------------------------------------- times, durations


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time as the API server writes it (``2026-11-02T12:00:00Z``); None when absent
    or unreadable. A time without a zone is taken as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """A UTC RFC 3339 time, seconds precision as the API's own (naive datetimes are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


def parse_duration(value: object) -> timedelta:
    """`90s`, `15m`, `2h`, `1h30m`, or a number of seconds, as a timedelta (ValueError if not)."""
    if isinstance(value, timedelta):
        return value
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"\d+(\.\d+)?", text):
                return timedelta(seconds=float(text))
            m = _DURATION.match(text)
            if text and m:
                return timedelta(
                    hours=int(m["h"] or 0), minutes=int(m["m"] or 0), seconds=int(m["s"] or 0)
                )
    except OverflowError:  # beyond timedelta's 999999999 days, or infinite
        raise ValueError(f"{show(value)} is not a duration this side of year 10000") from None
    raise ValueError(f'{show(value)} is not a duration; use e.g. "90s", "15m", "2h" or "1h30m"')


def format_duration(delta: timedelta | None, *, exact: bool = True) -> str:
    """`2h`, `1h30m`, `3m12s`, `45s`: whole seconds, never negative (None reads as 0s).

    ``exact`` keeps every unit, so that `parse_duration` reads it back (settings, ttl); without
    it only the two largest units are kept, as progress messages read (`1h5m`, not `1h5m12s`).
    """
    seconds = max(0, int(delta.total_seconds())) if delta is not None else 0
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours and not exact:
        secs = 0
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")
