"""Deleting deployments: why (ttl, failure, abort, teardown, superseded), how
(`delete_deployment`), and the cleanup sweep that deletes expired, failed and superseded ones.

Flyte calls DeleteTask only on abort; after success the NIM keeps serving the workflow's next
steps. So nim-agent removes deployments itself, with every decision taken from what the pod
carries (labels and annotations, `nim_agent.contract`): a restarted connector, or another
replica, cleans up what an earlier one created. Only `Tombstones` (why a deployment that is
already gone went) live in process memory.

:func:`reap_decision` (pod + now -> cause or None) and :func:`superseded` (pods -> the ones a
later attempt replaced) are pure and unit-tested; :class:`Reaper` runs them over the pods in the
watch cache every ``interval`` and deletes.

Why superseded attempts: flytepropeller turns a failed CreateTask (a timeout included) into a
retryable failure of the attempt, and retries the node as a new attempt with a new deployment name;
the pod the timed-out call made anyway belongs to an attempt Flyte has given up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from nim_agent import metrics
from nim_agent.contract import (
    ANNOTATION_DELETION_CAUSE,
    FAILURE,
    LABEL_PREFIX,
    SUPERSEDED,
    TTL,
    deletion_cause_value,
    expires_at,
    format_time,
)
from nim_agent.status import Classification, Phase, StatusPolicy, classify, policy_for

if TYPE_CHECKING:
    from nim_agent.kube import Kube
    from nim_agent.watch import PodCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """Why a pod is to be deleted; ``classification`` is set for failures."""

    cause: str
    message: str
    classification: Classification | None = None


def reap_decision(
    pod: Mapping[str, Any], *, now: datetime, policy: StatusPolicy, keep_failed: bool
) -> Decision | None:
    """Whether (and why) the reaper deletes ``pod`` now. Purely computational.

    - past its ``nim-agent.dev/expires-at``: ttl (failed pods kept for debugging go too);
    - classified FAILED or RETRYABLE_FAILED (crash loop, OOM, unschedulable too long, ...):
      failure, unless ``keep_failed``;
    - already being deleted: nothing to do.
    """
    return _decide(pod, now=now, policy=policy, keep_failed=keep_failed)[0]


def _decide(
    pod: Mapping[str, Any], *, now: datetime, policy: StatusPolicy, keep_failed: bool
) -> tuple[Decision | None, Classification | None]:
    """:func:`reap_decision`, and the classification it made on the way (if it made one)."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None, None
    expiry = expires_at(pod)
    if expiry is not None and now >= expiry:
        return Decision(TTL, f"ttl expired at {format_time(expiry)}"), None
    if keep_failed:
        return None, None
    result = classify(pod, now=now, policy=policy_for(pod, policy), endpoint="")
    if result.phase in (Phase.FAILED, Phase.RETRYABLE_FAILED):
        return Decision(FAILURE, result.message, result), result
    return None, result


def superseded(pods: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Decision]]:
    """Pods of Flyte task attempts that a later attempt of the same node has replaced.

    Purely computational. Pods are grouped by namespace and Flyte node execution (the
    ``nim-agent.dev/{project,domain,execution,node}`` labels); in each group every pod whose
    ``nim-agent.dev/retry`` is lower than the group's highest is returned, with the decision to
    delete it. Local runs (no execution labels) and pods being deleted are left alone.
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
            if number < latest:
                message = (
                    f"attempt {number} was replaced by attempt {latest} of the same Flyte node"
                )
                found.append((pod, Decision(SUPERSEDED, message)))
    return found


class Tombstones:
    """Why recently deleted deployments went, so GetTask can say so after the pod is gone.

    In memory and bounded: after a restart a deleted pod reads as "deleted by someone else",
    which is why deletions are also written on the pod (``nim-agent.dev/deletion-cause``)
    first, for as long as it is terminating.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str], str] = OrderedDict()

    def add(self, namespace: str, name: str, cause: str) -> None:
        self._entries[(namespace, name)] = cause
        self._entries.move_to_end((namespace, name))
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def get(self, namespace: str, name: str) -> str | None:
        return self._entries.get((namespace, name))


async def delete_deployment(
    kube: Kube, namespace: str, name: str, *, cause: str, detail: str, tombstones: Tombstones
) -> bool:
    """Delete a deployment's Pod and Service; True if the Pod existed. Idempotent."""
    from nim_agent.kube import NotFound

    value = deletion_cause_value(cause, detail)
    tombstones.add(namespace, name, value)
    with contextlib.suppress(NotFound):
        await kube.patch_pod_annotations(namespace, name, {ANNOTATION_DELETION_CAUSE: value})
    existed = await kube.delete_pod(namespace, name)
    await kube.delete_service(namespace, name)  # owned by the pod; deleting now frees the name
    if existed:
        metrics.DELETIONS.labels(cause).inc()
        log.info("deleted NIM deployment %s/%s (%s: %s)", namespace, name, cause, detail)
    return existed


# Pods classified between two yields to the event loop. A sweep runs on the connector's event
# loop: 1,000 pods in one go held it for 0.1 s (0.3-1 s on a loaded 2-core machine), and every
# GetTask arriving meanwhile waited (make bench: readiness detection max 1.2 s, GetTask max 0.3 s).
_SWEEP_SLICE = 50


class Reaper:
    """Every ``interval``, delete the expired and failed deployments in the watch cache."""

    def __init__(
        self,
        kube: Callable[[], Awaitable[Kube]],
        cache: PodCache,
        *,
        policy: StatusPolicy,
        keep_failed: bool,
        tombstones: Tombstones,
        interval: timedelta = timedelta(seconds=30),
    ) -> None:
        self._kube = kube
        self._cache = cache
        self._policy = policy
        self._keep_failed = keep_failed
        self._tombstones = tombstones
        self._interval = interval.total_seconds()

    async def sweep(self, now: datetime | None = None) -> list[tuple[str, str, Decision]]:
        """One pass; returns what was deleted as (namespace, name, decision)."""
        now = now or datetime.now(UTC)
        done: list[tuple[str, str, Decision]] = []
        phases: dict[str, int] = dict.fromkeys((p.value for p in Phase), 0)
        kube = await self._kube()
        pods = list(self._cache.pods())
        replaced = {id(pod): decision for pod, decision in superseded(pods)}
        for i, pod in enumerate(pods):
            if i % _SWEEP_SLICE == _SWEEP_SLICE - 1:
                await asyncio.sleep(0)  # let GetTask calls in between slices of the sweep
            meta = pod.get("metadata") or {}
            namespace, name = str(meta.get("namespace")), str(meta.get("name"))
            decision, result = _decide(
                pod, now=now, policy=self._policy, keep_failed=self._keep_failed
            )
            if decision is None and id(pod) in replaced:
                decision = replaced[id(pod)]
            if decision is None:
                if result is None:
                    result = classify(
                        pod, now=now, policy=policy_for(pod, self._policy), endpoint=""
                    )
                phases[result.phase.value] += 1
                continue
            if decision.classification is not None:
                uid = str(meta.get("uid") or "")
                metrics.count_failure(uid, decision.classification.reason.value)
            await delete_deployment(
                kube,
                namespace,
                name,
                cause=decision.cause,
                detail=decision.message,
                tombstones=self._tombstones,
            )
            done.append((namespace, name, decision))
        for phase, count in phases.items():
            metrics.DEPLOYMENTS.labels(phase).set(count)
        return done

    async def run(self) -> None:
        """Sweep forever; errors are logged and the next sweep tries again."""
        from nim_agent.kube import KubeError

        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except KubeError as exc:
                log.warning("cleanup sweep failed: %s; next try in %.0fs", exc, self._interval)
