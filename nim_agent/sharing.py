"""Shared servers (`NIMTask(reuse=...)`): share keys, names, holders and what they mean.

Purely computational, no I/O: the connector and the reaper read the shared pod (from the watch
cache or the API) and write what these functions say, each with one merge patch.

A shared server is one NIM Pod that several executions (its *holders*) use. Executions share it
when their serving configuration is the same: everything the `NIM` renders into the Pod (image,
resources, env, Secret references, ServiceAccount, scheduling, cache, security profile, labels,
annotations, downloader images) except its adapters, in the same namespace, under the same reuse
scope (with "project-domain", the same Flyte project and domain too). The share key is a hash of
exactly that: the Pod the configuration renders without adapters, so any field, present or
future, that changes the server changes the key. Each holder brings its own adapters, which the
server's adapter-sync sidecar adds while it runs.

Names. The server's name derives from the key and a generation (`render.shared_deployment_name`):
executions that create it at once race on one name and one server is made (the others get
AlreadyExists and attach). A server that cannot take a new holder (stopped, ended, failing, or
ending before the holder's ttl) is skipped for the key's next generation.

Holders. Each has one annotation on the pod, ``holders.nim-agent.dev/<holder>``
(`contract.HolderRecord`: since, until = since + the task's ttl, idle ttl, adapters), added by
one merge patch when it attaches and rewritten only by itself (served, released): no
read-modify-write of a shared value, so 50 attaching at once never conflict. A holder's name is
the name its own deployment would have had, and its Service of that name selects the shared pod:
its endpoint URL is its own, and a teardown of that URL releases that holder only.

Life. While a holder is live (not released, before its until) the server runs. Then it stays warm
for the largest idle ttl counted from each holder's end (`idle_deadline`); the reaper stops it
after that (cause "idle"), with the pod's resourceVersion as a precondition, so a holder that
attached meanwhile makes the stop fail rather than lose its server; and at the latest at its
lifetime cap (``activeDeadlineSeconds`` too). The sweep also removes records of holders that are
gone (`compaction`), keeping their adapter bindings (``nim-agent.dev/adapters-kept``) and their
idle deadline (``nim-agent.dev/idle-until``).

Public API::

    share_key(nim, settings, namespace=, reuse=, project=, domain=, inputs=) -> str
    served_input_name(name, uri) -> str        holder_adapters(nim, served_uris) -> {name: source}
    unusable(pod, key=, now=, ttl=, policy=) -> str | None
    conflicts(pod, adapters) -> [str]
    idle_deadline(pod, now) -> datetime | None        live_holders(pod, now) -> {name: record}
    idle_since(pod, now) -> datetime | None           gpu_seconds(pod, now) -> float
    compaction(pod, now) -> patch | None
    holder_view(pod, holder, endpoint=, now=) -> HolderView(pod, verdict, record)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from nim_agent.contract import (
    ANNOTATION_ADAPTERS,
    ANNOTATION_ADAPTERS_KEPT,
    ANNOTATION_ENDPOINT,
    ANNOTATION_IDLE_SINCE,
    ANNOTATION_IDLE_UNTIL,
    ANNOTATION_SERVED_AT,
    ANNOTATION_SERVED_MODEL,
    ANNOTATION_STOPPED,
    NIM_CONTAINER,
    HolderRecord,
    StopRecord,
    adapter_name,
    adapter_source_text,
    adapters_value,
    deletion_cause,
    expires_at,
    format_duration,
    format_time,
    holder_key,
    holder_records,
    is_ours,
    parse_time,
    share_key_of,
    stop_record,
    wanted_adapters,
)
from nim_agent.podfacts import read_pod
from nim_agent.render import GPU_RESOURCE, DeploymentIdentity, SharedServer, render_pod
from nim_agent.settings import ConnectorSettings
from nim_agent.status import Phase, Reason, StatusPolicy, classify, policy_for

if TYPE_CHECKING:
    from nim_agent.config import NIM, Reuse

__all__ = [
    "MAX_GENERATIONS",
    "HolderVerdict",
    "HolderView",
    "compaction",
    "conflicts",
    "gpu_seconds",
    "holder_adapters",
    "holder_view",
    "idle_deadline",
    "idle_since",
    "live_holders",
    "served_input_name",
    "share_key",
    "unusable",
]

# How many names a share key has: a stopped server keeps its pod (and name) for the stopped
# retention, so later holders go to the next generation meanwhile.
MAX_GENERATIONS = 16
_KEY_LEN = 32  # hex digits: 128 bits, and a valid label value
_CANONICAL_NAME = "nim-shared"


def share_key(
    nim: NIM,
    settings: ConnectorSettings,
    *,
    namespace: str,
    reuse: Reuse,
    project: str = "",
    domain: str = "",
    inputs: bool = False,
) -> str:
    """The share key: a hash of the Pod `nim` renders without its adapters (under these settings),
    its namespace and the reuse scope (with "project-domain": the project and domain too).
    `inputs`: the task takes adapters as inputs (its server's sidecar runs flytekit's image).

    ConfigError as `render_pod` raises it for a configuration the settings do not allow.
    """
    canonical = dataclasses.replace(nim, hf_repo_ids=[], namespace=None)
    shared = SharedServer(
        key="", scope=reuse.scope, lifetime=settings.shared_lifetime, inputs=inputs
    )
    identity = DeploymentIdentity(name=_CANONICAL_NAME, namespace=namespace)
    pod = render_pod(canonical, identity, settings, shared=shared)
    meta = pod["metadata"]
    users_labels, users_annotations = nim.labels or {}, nim.annotations or {}
    doc: dict[str, Any] = {
        "namespace": namespace,
        "scope": reuse.scope,
        "spec": pod["spec"],
        "labels": {k: v for k, v in meta.get("labels", {}).items() if k in users_labels},
        "annotations": {
            k: v for k, v in meta.get("annotations", {}).items() if k in users_annotations
        },
    }
    if reuse.scope == "project-domain":
        doc["project"], doc["domain"] = project, domain
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_KEY_LEN]


def served_input_name(name: str, uri: str) -> str:
    """The name an adapter given as a task input is served under on a shared server: the input's
    name and 8 hex digits of its URI, so that two executions' "support" adapters (different
    folders) never mix, and the same folder is one adapter however many executions ask for it.

    >>> served_input_name("support", "s3://bucket/raw/ab/o0")
    'support-...'
    """
    return f"{name}-{hashlib.sha256(uri.encode('utf-8')).hexdigest()[:8]}"


def holder_adapters(
    nim: NIM, served_uris: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """{served name: source} of a holder: its Hugging Face adapters (served as the repository's
    last part), then its task inputs ({served name: URI}, see `served_input_name`)."""
    found: dict[str, dict[str, str]] = {
        adapter_name(repo): {"hf": repo} for repo in nim.hf_repo_ids or []
    }
    found.update({name: {"uri": uri} for name, uri in (served_uris or {}).items()})
    return found


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _ended(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") if isinstance(pod.get("status"), Mapping) else {}
    return str((status or {}).get("phase") or "") in ("Failed", "Succeeded")


def unusable(
    pod: Mapping[str, Any],
    *,
    key: str,
    now: datetime,
    ttl: timedelta,
    policy: StatusPolicy,
) -> str | None:
    """Why an existing pod of a share key's name cannot take a new holder living `ttl`, or None
    when it can: not ours or another key, being deleted, stopped, ended, failing, or ending
    (lifetime cap) before the holder's ttl would."""
    if not is_ours(pod) or share_key_of(pod) != key:
        return "it is not this configuration's shared server"
    if _meta(pod).get("deletionTimestamp") or deletion_cause(pod):
        return "it is being deleted"
    record = stop_record(pod)
    if record is not None:
        return f"it was stopped ({record.cause})"
    if _ended(pod):
        return "it has ended"
    result = classify(pod, now=now, policy=policy_for(pod, policy), endpoint="")
    if result.phase in (Phase.FAILED, Phase.RETRYABLE_FAILED):
        return f"it is failing ({result.reason.value})"
    end = expires_at(pod)
    if end is not None and end - now < ttl:
        return f"it ends in {format_duration(end - now, exact=False)}, before this ttl would"
    return None


def conflicts(pod: Mapping[str, Any], adapters: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The adapters of a holder whose name the server has bound to another source (one name is
    one content for a server's life), each as a sentence."""
    bound = wanted_adapters(_meta(pod).get("annotations") or {})
    found = []
    for name, source in adapters.items():
        have = bound.get(name)
        if have is not None and dict(have) != dict(source):
            found.append(
                f"adapter {name} is {adapter_source_text(have)} on the shared server, not "
                f"{adapter_source_text(source)}"
            )
    return found


def _superseded(records: Mapping[str, HolderRecord]) -> dict[str, datetime]:
    """Holders replaced by a later attempt of the same Flyte node: {holder: when replaced}."""
    latest: dict[tuple[str, ...], tuple[int, datetime]] = {}
    keyed = {}
    for holder, record in records.items():
        e = record.execution
        node = tuple(str(e.get(k) or "") for k in ("project", "domain", "execution", "node"))
        retry = e.get("retry")
        if not all(node) or not isinstance(retry, int):
            continue
        keyed[holder] = (node, retry)
        if node not in latest or retry > latest[node][0]:
            latest[node] = (retry, record.since)
    return {h: latest[n][1] for h, (n, r) in keyed.items() if r < latest[n][0]}


def _ends(records: Mapping[str, HolderRecord]) -> dict[str, datetime]:
    """When each holder stops holding: released, past its until, or superseded."""
    replaced = _superseded(records)
    return {h: min(r.end, replaced.get(h, r.end)) for h, r in records.items()}


def live_holders(pod: Mapping[str, Any], now: datetime) -> dict[str, HolderRecord]:
    """The holders still holding the server at `now`."""
    records = holder_records(pod)
    ends = _ends(records)
    return {h: r for h, r in records.items() if r.ended is None and now < ends[h]}


def idle_deadline(pod: Mapping[str, Any], now: datetime) -> datetime | None:
    """When an idle shared server is to be stopped: the latest end + idle ttl of its holders
    (and of those already compacted away); None while a holder is live."""
    records = holder_records(pod)
    ends = _ends(records)
    if any(r.ended is None and now < ends[h] for h, r in records.items()):
        return None
    candidates = [ends[h] + r.idle_ttl for h, r in records.items()]
    kept = parse_time((_meta(pod).get("annotations") or {}).get(ANNOTATION_IDLE_UNTIL))
    if kept is not None:
        candidates.append(kept)
    if not candidates:  # no holder ever recorded: idle from its creation
        created = parse_time(_meta(pod).get("creationTimestamp"))
        return created or now
    return max(candidates)


def idle_since(pod: Mapping[str, Any], now: datetime) -> datetime | None:
    """When a shared server's last holder ended (None while a holder is live)."""
    records = holder_records(pod)
    ends = _ends(records)
    if any(r.ended is None and now < ends[h] for h, r in records.items()):
        return None
    candidates = list(ends.values())
    kept = parse_time((_meta(pod).get("annotations") or {}).get(ANNOTATION_IDLE_SINCE))
    if kept is not None:
        candidates.append(kept)
    if not candidates:
        return parse_time(_meta(pod).get("creationTimestamp")) or now
    return max(candidates)


def gpu_seconds(pod: Mapping[str, Any], now: datetime) -> float:
    """GPUs x seconds a server has held its GPUs: from its scheduling until now, or until it
    was stopped or ended."""
    facts = read_pod(pod, (), now)
    main: Mapping[str, Any] = next(
        (
            c
            for c in (pod.get("spec") or {}).get("containers") or []
            if c.get("name") == NIM_CONTAINER
        ),
        {},
    )
    limits = (main.get("resources") or {}).get("limits") or {}
    try:
        gpus = int(str(limits.get(GPU_RESOURCE, "0")))
    except ValueError:
        gpus = 0
    start = facts.scheduled_at or facts.created
    if not gpus or start is None:
        return 0.0
    end = now
    if facts.stopped is not None:
        end = min(end, facts.stopped.at)
    finished = [
        c.terminated.finished_at
        for c in facts.containers
        if c.terminated is not None and c.terminated.finished_at is not None
    ]
    if facts.phase in ("Failed", "Succeeded") and finished:
        end = min(end, max(finished))
    return gpus * max(0.0, (end - start).total_seconds())


def compaction(pod: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The annotations patch that removes the records of holders that are gone, keeping their
    adapter bindings and idle deadline; None when there is none to remove. The caller adds the
    pod's resourceVersion as a precondition."""
    records = holder_records(pod)
    ends = _ends(records)
    gone = [h for h, r in records.items() if r.ended is not None or now >= ends[h]]
    if not gone:
        return None
    annotations = _meta(pod).get("annotations") or {}
    patch: dict[str, Any] = {holder_key(h): None for h in gone}
    patch[ANNOTATION_ADAPTERS_KEPT] = json.dumps(
        wanted_adapters(annotations), sort_keys=True, separators=(",", ":")
    )
    until = [ends[h] + records[h].idle_ttl for h in gone]
    kept = parse_time(annotations.get(ANNOTATION_IDLE_UNTIL))
    if kept is not None:
        until.append(kept)
    patch[ANNOTATION_IDLE_UNTIL] = format_time(max(until))
    last = [ends[h] for h in gone]
    kept_since = parse_time(annotations.get(ANNOTATION_IDLE_SINCE))
    if kept_since is not None:
        last.append(kept_since)
    patch[ANNOTATION_IDLE_SINCE] = format_time(max(last))
    return patch


@dataclass(frozen=True)
class HolderVerdict:
    """An answer for a holder that needs no classification of the pod (its record says it)."""

    phase: Phase
    reason: Reason
    message: str


@dataclass(frozen=True)
class HolderView:
    """The shared pod as one holder sees it, to classify with the usual rules: its own adapters,
    endpoint and served time in place of the pod's; or a `verdict` that answers at once."""

    pod: dict[str, Any] | None
    verdict: HolderVerdict | None
    record: HolderRecord | None


def holder_view(pod: Mapping[str, Any], holder: str, *, endpoint: str, now: datetime) -> HolderView:
    """How the shared `pod` stands for `holder` (see `HolderView`).

    Its record gone: FAILED (released or compacted; Flyte no longer asks after a release). Its
    record ended or past its until: SUCCEEDED when it had been served, else FAILED. Another
    source bound to one of its adapter names: FAILED. A stop record answering SUCCEEDED (the
    server had served) reads FAILED for a holder it never served.
    """
    record = holder_records(pod).get(holder)
    name = str(_meta(pod).get("name") or "")
    if record is None:
        return HolderView(
            None,
            HolderVerdict(
                Phase.FAILED,
                Reason.POD_DELETED,
                f"This execution no longer holds the shared NIM server {name} (released, "
                "expired, or the server was replaced).",
            ),
            None,
        )
    if record.ended is not None or now >= record.until:
        why = f"released ({record.ended_by})" if record.ended else "past its ttl"
        if record.served is not None:
            verdict = HolderVerdict(
                Phase.SUCCEEDED,
                Reason.READY,
                f"Served by the shared NIM server {name} from {format_time(record.served)}; "
                f"this execution's hold ended: {why}.",
            )
        else:
            verdict = HolderVerdict(
                Phase.FAILED,
                Reason.TTL_EXPIRED,
                f"This execution's hold on the shared NIM server {name} ended ({why}) before "
                "the server served its adapters.",
            )
        return HolderView(None, verdict, record)
    clash = conflicts(pod, record.adapters)
    if clash:
        return HolderView(
            None,
            HolderVerdict(
                Phase.FAILED,
                Reason.ADAPTERS_MISSING,
                f"The shared NIM server {name} serves another adapter under this name: "
                f"{'; '.join(clash)}. Rename the adapter, or run without reuse.",
            ),
            record,
        )
    view = json.loads(json.dumps(pod))  # a deep copy, plain JSON
    meta = view.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    for key in (ANNOTATION_ADAPTERS, ANNOTATION_SERVED_AT, ANNOTATION_SERVED_MODEL):
        annotations.pop(key, None)
    if record.adapters:
        annotations[ANNOTATION_ADAPTERS] = adapters_value(list(record.adapters))
    if record.served is not None:
        annotations[ANNOTATION_SERVED_AT] = format_time(record.served)
        annotations[ANNOTATION_SERVED_MODEL] = record.served_model
    annotations[ANNOTATION_ENDPOINT] = endpoint
    stopped = stop_record(pod)
    if stopped is not None and stopped.phase == Phase.SUCCEEDED.value and record.served is None:
        replaced = StopRecord(
            stopped.cause,
            stopped.at,
            Phase.FAILED.value,
            stopped.reason,
            f"The shared NIM server was stopped ({stopped.cause}) before it served this "
            f"execution's adapters. {stopped.message}",
        )
        annotations[ANNOTATION_STOPPED] = replaced.to_annotation()
    meta["annotations"] = annotations
    return HolderView(view, None, record)
