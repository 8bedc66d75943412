"""Removing NIM servers: why (`nim_agent.contract` causes), how (`stop_deployment`,
`delete_deployment`), and the cleanup sweep that finds the ones to remove.

Flyte calls DeleteTask only on abort; after success the NIM keeps serving the workflow's next
steps. So nim-agent removes servers itself, with every decision taken from what the pod carries
(labels and annotations, `nim_agent.contract`), never from process memory: a restarted connector,
or another replica, cleans up what an earlier one created, and answers the same.

Two ways to remove a server:

- **stop** (ttl, failure, unhealthy): a server Flyte may still ask about. One merge patch writes
  the verdict GetTask will keep answering (`StopRecord`) and lowers ``activeDeadlineSeconds`` to
  1, so the kubelet ends its containers and its GPU is free, while the pod object stays. The
  sweep deletes the pod after ``stopped_retention``. A pod that has already ended by itself
  (evicted, its node lost) gets the record only.
- **delete** (abort, teardown, superseded): Flyte is done with it; the Pod and its Service go.

Shared servers (`nim_agent.sharing`) are stopped the same way when idle past their holders' idle
ttl (cause "idle"), with the pod's resourceVersion as the patch's precondition: a holder that
attached since the sweep looked changes it, and the stop fails instead of taking the server from
under it. The sweep also compacts the records of their holders that are gone.

:func:`reap_decision` (pod + now -> what to do) and :func:`superseded` (pods -> the ones a later
attempt replaced) are pure and unit-tested; :class:`Reaper` runs them over the pods in the watch
cache every ``interval`` (only while it holds the cleanup Lease, see `nim_agent.runtime`).

Why superseded attempts: flytepropeller turns a failed CreateTask (a timeout included) into a
retryable failure of the attempt, and retries the node as a new attempt with a new deployment name;
the pod the timed-out call made anyway belongs to an attempt Flyte has given up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from nim_agent import metrics
from nim_agent.contract import (
    ANNOTATION_DELETION_CAUSE,
    ANNOTATION_STOPPED,
    FAILURE,
    IDLE,
    LABEL_PREFIX,
    SUPERSEDED,
    TTL,
    UNHEALTHY,
    StopRecord,
    deletion_cause_value,
    endpoint_of,
    expires_at,
    format_duration,
    format_time,
    is_shared,
    served_at,
    stop_record,
    wanted_adapters,
)
from nim_agent.podfacts import read_pod
from nim_agent.sharing import compaction, gpu_seconds, idle_deadline, idle_since, live_holders
from nim_agent.status import (
    Classification,
    Phase,
    Reason,
    StatusPolicy,
    classify,
    is_terminal,
    policy_for,
    unhealthy_for,
)

if TYPE_CHECKING:
    from nim_agent.kube import Kube
    from nim_agent.watch import PodCache

__all__ = [
    "Action",
    "Decision",
    "Reaper",
    "delete_deployment",
    "reap_decision",
    "stop_deployment",
    "stop_record_for",
    "superseded",
]

log = logging.getLogger(__name__)


class Action(enum.Enum):
    """What the sweep does with a pod."""

    STOP = "stop"  # record the verdict, end the containers (keep the pod for the retention)
    DELETE = "delete"  # delete Pod and Service
    FORGET = "forget"  # delete a stopped pod whose retention is over (not a server removal)
    COMPACT = "compact"  # a shared server: remove the records of holders that are gone


@dataclass(frozen=True)
class Decision:
    """What to do with a pod and why; ``record`` is set when it is stopped."""

    action: Action
    cause: str
    message: str
    record: StopRecord | None = None
    classification: Classification | None = None
    patch: dict[str, Any] | None = None  # COMPACT: the annotations patch
    precondition: str | None = None  # the resourceVersion the patch must find (shared servers)


def stop_record_for(
    cause: str,
    result: Classification,
    *,
    now: datetime,
    detail: str | None = "",
    served: bool = True,
) -> StopRecord:
    """The verdict a server stopped for ``cause`` keeps answering, from its classification then.

    A terminal verdict is kept as it was (a reported phase never changes because nim-agent
    cleans up), with a note of the stop (none when ``detail`` is None: the pod ended by itself);
    a server stopped while still starting fails, naming the cause. So does a server that was
    ready but never found serving (``served`` False: no ``served-at``): no one was told it
    succeeded, and its endpoint is gone.
    """
    if is_terminal(result.phase) and (served or result.phase is not Phase.SUCCEEDED):
        note = f" nim-agent stopped the server ({cause}{': ' + detail if detail else ''})."
        message = result.message if detail is None else result.message + note
        return StopRecord(cause, now, result.phase.value, result.reason.value, message)
    reason = Reason.TTL_EXPIRED if cause in (TTL, IDLE) else Reason.UNHEALTHY
    when = "before it was found serving" if is_terminal(result.phase) else "before it was ready"
    return StopRecord(
        cause,
        now,
        Phase.FAILED.value,
        reason.value,
        f"nim-agent stopped the NIM server {when} ({detail or cause}). Last state: "
        f"{result.message}",
    )


def reap_decision(
    pod: Mapping[str, Any],
    *,
    now: datetime,
    policy: StatusPolicy,
    keep_failed: bool,
    retention: timedelta,
) -> Decision | None:
    """What the sweep does with ``pod`` now, if anything. Purely computational.

    In order: a pod being deleted is left alone; a stopped pod is forgotten (deleted) once
    ``retention`` has passed since it was stopped; a pod that ended by itself (phase Failed or
    Succeeded) gets its verdict recorded; past ``nim-agent.dev/expires-at``: stopped (ttl); failed
    (crash loop, OOM, unschedulable too long, ...): stopped (failure); served or started, then
    unready for ``policy.unhealthy_window``: stopped (unhealthy). ``keep_failed`` leaves failed
    and unhealthy servers running (until their ttl). A shared server: past its idle deadline
    (no live holder; `sharing.idle_deadline`), stopped (idle), before the failure rules; with
    records of holders that are gone, compacted (last). Both carry the pod's resourceVersion
    as their precondition.
    """
    return _decide(pod, now=now, policy=policy, keep_failed=keep_failed, retention=retention)[0]


# The reasons a server that passed its startup probe (or has served) reads as while unready: the
# only ones the unhealthy window can apply to.
_UNREADY_REASONS = frozenset({Reason.SERVING_INTERRUPTED, Reason.NOT_READY})


def _decide(
    pod: Mapping[str, Any],
    *,
    now: datetime,
    policy: StatusPolicy,
    keep_failed: bool,
    retention: timedelta,
) -> tuple[Decision | None, Classification | None]:
    """`reap_decision`, and the classification it made on the way (None when it made none)."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None, None
    record = stop_record(pod)
    if record is not None:
        if now - record.at >= retention:
            kept = format_duration(retention)
            forget = Decision(Action.FORGET, record.cause, f"stopped {kept} ago; retention over")
            return forget, None
        return None, None
    endpoint = endpoint_of(pod)
    result = classify(pod, now=now, policy=policy_for(pod, policy), endpoint=endpoint)
    served = served_at(pod) is not None
    phase = str((pod.get("status") or {}).get("phase") or "")
    if phase in ("Failed", "Succeeded"):
        cause = TTL if result.reason is Reason.TTL_EXPIRED else FAILURE
        record = stop_record_for(cause, result, now=now, detail=None, served=served)
        return Decision(Action.STOP, cause, result.message, record, result), result
    expiry = expires_at(pod)
    shared = is_shared(pod)
    if expiry is not None and now >= expiry:
        what = "lifetime (reuse_max_ttl)" if shared else "ttl"
        detail = f"{what} expired at {format_time(expiry)}"
        record = stop_record_for(TTL, result, now=now, detail=detail, served=served)
        return Decision(Action.STOP, TTL, detail, record, result), result
    version = str(meta.get("resourceVersion") or "") or None
    if shared:
        deadline = idle_deadline(pod, now)
        if deadline is not None and now >= deadline:
            since = idle_since(pod, now)
            idle = format_duration(now - since, exact=False) if since else "?"
            detail = f"idle for {idle}: no holder since {format_time(since or now)}"
            record = stop_record_for(IDLE, result, now=now, detail=detail, served=served)
            stop = Decision(Action.STOP, IDLE, detail, record, result, precondition=version)
            return stop, result
    if not keep_failed:
        decision = _failure_decision(pod, result, now=now, policy=policy, served=served)
        if decision is not None:
            return decision, result
    patch = compaction(pod, now) if shared else None
    if patch is not None:
        gone = sum(1 for value in patch.values() if value is None)
        message = f"removed the records of {gone} holder(s) that are gone"
        compact = Decision(Action.COMPACT, "compact", message, patch=patch, precondition=version)
        return compact, result
    return None, result


def _failure_decision(
    pod: Mapping[str, Any],
    result: Classification,
    *,
    now: datetime,
    policy: StatusPolicy,
    served: bool,
) -> Decision | None:
    """A running server that failed or stayed unhealthy too long: stop it."""
    if result.phase in (Phase.FAILED, Phase.RETRYABLE_FAILED):
        record = stop_record_for(FAILURE, result, now=now)
        return Decision(Action.STOP, FAILURE, result.message, record, result)
    if result.reason not in _UNREADY_REASONS:
        return None
    unready = unhealthy_for(read_pod(pod, (), now))
    if unready is not None and unready >= policy.unhealthy_window:
        detail = (
            f"unready for {format_duration(unready, exact=False)} "
            f"(unhealthy window {format_duration(policy.unhealthy_window)})"
        )
        record = stop_record_for(UNHEALTHY, result, now=now, detail=detail, served=served)
        return Decision(Action.STOP, UNHEALTHY, detail, record, result)
    return None


def superseded(pods: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Decision]]:
    """Pods of Flyte task attempts that a later attempt of the same node has replaced.

    Purely computational. Pods are grouped by namespace and Flyte node execution (the
    ``nim-agent.dev/{project,domain,execution,node}`` labels); in each group every pod whose
    ``nim-agent.dev/retry`` is lower than the group's highest is returned, with the decision to
    delete it. Local runs (no execution labels), pods being deleted and stopped pods (their
    record is kept for the retention) are left alone.
    """
    groups: dict[tuple[str, ...], list[tuple[int, Mapping[str, Any]]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        labels = meta.get("labels") or {}
        node = tuple(
            labels.get(LABEL_PREFIX + k, "") for k in ("project", "domain", "execution", "node")
        )
        attempt = str(labels.get(LABEL_PREFIX + "retry", ""))
        if not all(node) or not attempt.isdigit():
            continue
        groups.setdefault((str(meta.get("namespace")), *node), []).append((int(attempt), pod))
    found = []
    for attempts in groups.values():
        latest = max(number for number, _ in attempts)
        for number, pod in attempts:
            if number < latest and stop_record(pod) is None:
                message = (
                    f"attempt {number} was replaced by attempt {latest} of the same Flyte node"
                )
                found.append((pod, Decision(Action.DELETE, SUPERSEDED, message)))
    return found


async def stop_deployment(
    kube: Kube, pod: Mapping[str, Any], record: StopRecord, *, precondition: str | None = None
) -> bool:
    """Stop a server: record its verdict and end its containers, in one merge patch.

    ``activeDeadlineSeconds`` 1 (a pod may lower it, never raise it) makes the kubelet end the
    containers at once and mark the pod Failed (DeadlineExceeded); its resources, the GPU
    included, are free, and the pod object keeps the record for every replica to read. A pod
    that has already ended gets the record only. True when the server was running (a removal
    nim-agent made, counted by cause); False for a record on an ended pod, or a pod gone.
    ``precondition``: the resourceVersion the pod must still have (else nothing is done, False).
    """
    from nim_agent.kube import Conflict, NotFound

    meta = pod.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    ended = str((pod.get("status") or {}).get("phase") or "") in ("Failed", "Succeeded")
    patch: dict[str, Any] = {
        "metadata": {"annotations": {ANNOTATION_STOPPED: record.to_annotation()}}
    }
    if not ended:
        patch["spec"] = {"activeDeadlineSeconds": 1}
    if precondition is not None:
        patch["metadata"]["resourceVersion"] = precondition
    try:
        await kube.patch_pod(namespace, name, patch)
    except NotFound:
        return False
    except Conflict:
        log.info(
            "NIM deployment %s/%s changed since the sweep looked; not stopped", namespace, name
        )
        return False
    if ended:
        log.info(
            "recorded the end of NIM deployment %s/%s: %s %s",
            namespace,
            name,
            record.phase,
            record.reason,
        )
        return False
    metrics.DELETIONS.labels(record.cause).inc()
    log.info(
        "stopped NIM deployment %s/%s (%s): %s; Flyte is answered %s",
        namespace,
        name,
        record.cause,
        _first_line(record.message),
        record.phase,
    )
    return True


async def delete_deployment(
    kube: Kube, namespace: str, name: str, *, cause: str, detail: str, server: bool = True
) -> bool:
    """Delete a deployment's Pod and Service; True if the Pod existed. Idempotent.

    The cause is written on the pod first, so GetTask reads "deleted by nim-agent" (FAILED, not
    retryable) while it terminates. ``server`` False: the server had already been stopped (a
    stopped pod whose retention is over); not counted again as a removal.
    """
    from nim_agent.kube import NotFound

    value = deletion_cause_value(cause, detail)
    with contextlib.suppress(NotFound):
        await kube.patch_pod_annotations(namespace, name, {ANNOTATION_DELETION_CAUSE: value})
    existed = await kube.delete_pod(namespace, name)
    await kube.delete_service(namespace, name)  # owned by the pod; deleting now frees the name
    if existed and server:
        metrics.DELETIONS.labels(cause).inc()
        log.info("deleted NIM deployment %s/%s (%s: %s)", namespace, name, cause, detail)
    elif existed:
        log.info("removed the stopped NIM deployment %s/%s (%s)", namespace, name, detail)
    return existed


async def _compact(kube: Kube, namespace: str, name: str, decision: Decision) -> bool:
    """Apply a COMPACT decision (its precondition included); False when the pod changed or went."""
    from nim_agent.kube import Conflict, NotFound

    body: dict[str, Any] = {"metadata": {"annotations": decision.patch}}
    if decision.precondition is not None:
        body["metadata"]["resourceVersion"] = decision.precondition
    try:
        await kube.patch_pod(namespace, name, body)
    except (Conflict, NotFound):
        return False
    log.info("shared NIM server %s/%s: %s", namespace, name, decision.message)
    return True


def _idle_seconds(pod: Mapping[str, Any], now: datetime) -> float:
    since = idle_since(pod, now)
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


# Pods classified between two yields to the event loop. A sweep runs on the connector's event
# loop: 1,000 pods in one go held it for 0.1 s (0.3-1 s on a loaded 2-core machine), and every
# GetTask arriving meanwhile waited (make bench: readiness detection max 1.2 s, GetTask max 0.3 s).
_SWEEP_SLICE = 50


class Reaper:
    """Every ``interval``, stop and delete what `reap_decision` and `superseded` say, among the
    pods in the watch cache; only while ``may_sweep()`` (the cleanup Lease is held)."""

    def __init__(
        self,
        kube: Callable[[], Awaitable[Kube]],
        cache: PodCache,
        *,
        policy: StatusPolicy,
        keep_failed: bool,
        retention: timedelta,
        interval: timedelta = timedelta(seconds=30),
        may_sweep: Callable[[], bool] = lambda: True,
    ) -> None:
        self._kube = kube
        self._cache = cache
        self._policy = policy
        self._keep_failed = keep_failed
        self._retention = retention
        self._interval = interval.total_seconds()
        self._may_sweep = may_sweep

    async def sweep(self, now: datetime | None = None) -> list[tuple[str, str, Decision]]:
        """One pass; returns what was stopped or deleted as (namespace, name, decision)."""
        now = now or datetime.now(UTC)
        done: list[tuple[str, str, Decision]] = []
        phases: dict[str, int] = dict.fromkeys((p.value for p in Phase), 0)
        unhealthy = 0
        kube = await self._kube()
        pods = list(self._cache.pods())
        replaced = {id(pod): decision for pod, decision in superseded(pods)}
        for i, pod in enumerate(pods):
            if i % _SWEEP_SLICE == _SWEEP_SLICE - 1:
                await asyncio.sleep(0)  # let GetTask calls in between slices of the sweep
            meta = pod.get("metadata") or {}
            namespace, name = str(meta.get("namespace")), str(meta.get("name"))
            decision, result = _decide(
                pod,
                now=now,
                policy=self._policy,
                keep_failed=self._keep_failed,
                retention=self._retention,
            )
            decision = replaced.get(id(pod)) or decision
            if decision is None:
                if result is not None:  # a stopped pod, kept for its retention, is not counted
                    phases[result.phase.value] += 1
                    unhealthy += result.reason is Reason.SERVING_INTERRUPTED
                continue
            if decision.classification is not None and decision.cause == "failure":
                uid = str(meta.get("uid") or "")
                metrics.count_failure(uid, decision.classification.reason.value)
            if decision.action is Action.STOP:
                assert decision.record is not None
                await stop_deployment(
                    kube, pod, decision.record, precondition=decision.precondition
                )
            elif decision.action is Action.COMPACT:
                if result is not None:  # a running shared server: counted as any other
                    phases[result.phase.value] += 1
                if not await _compact(kube, namespace, name, decision):
                    continue
            else:
                await delete_deployment(
                    kube,
                    namespace,
                    name,
                    cause=decision.cause,
                    detail=decision.message,
                    server=decision.action is Action.DELETE,
                )
            done.append((namespace, name, decision))
        for phase, count in phases.items():
            metrics.DEPLOYMENTS.labels(phase).set(count)
        metrics.UNHEALTHY_SERVERS.set(unhealthy)
        metrics.set_shared_servers(
            {
                (str(p["metadata"].get("namespace")), str(p["metadata"].get("name"))): (
                    len(live_holders(p, now)),
                    _idle_seconds(p, now),
                    gpu_seconds(p, now),
                    len(wanted_adapters((p.get("metadata") or {}).get("annotations") or {})),
                )
                for p in pods
                if is_shared(p) and isinstance(p.get("metadata"), dict)
            }
        )
        return done

    async def run(self) -> None:
        """Sweep every interval while ``may_sweep()``; an API error skips to the next sweep
        (anything else ends the loop, for its supervisor to log and restart)."""
        from nim_agent.kube import KubeError

        while True:
            await asyncio.sleep(self._interval)
            if not self._may_sweep():
                continue
            try:
                await self.sweep()
            except KubeError as exc:
                log.warning("cleanup sweep failed: %s; next try in %.0fs", exc, self._interval)
