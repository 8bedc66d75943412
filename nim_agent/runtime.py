"""The server runtime: per event loop, the Kubernetes client and the background work on it.

What runs where in a connector process:

- one `Kube` client per event loop (`kube_for_current_loop`): aiohttp sessions belong to the
  loop they were made on, and flytekit's local runner calls ``delete`` from a fresh
  ``asyncio.run`` on Ctrl-C (`run_to_completion` runs such a call on a loop of its own);
- on the server's loop (`Background.start`): the pod watch cache (every replica: GetTask reads
  it), the `LeaseElector` (every replica competes for one coordination.k8s.io Lease) and the
  reaper (sweeps only while this replica holds the Lease). Each is a loop `supervised` runs:
  a loop that fails or returns is logged with its cause, counted
  (``nim_agent_loop_restarts_total{loop}``) and restarted with backoff; `Background.health`
  says whether the process is sound (the liveness answer of ``nim-agent serve``).

Why our own elector rather than ``kubernetes.leaderelection``: that one runs the synchronous
client in a thread of its own; this is a few lines on the server's event loop, with client-go's
rules (expiry judged by the local clock since the record last changed, never by comparing
clocks; the Lease released on a clean stop so the other replica takes over at once).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nim_agent import metrics
from nim_agent.contract import OWNED_BY_US, format_duration, served_at
from nim_agent.kube import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Json,
    Kube,
    KubeError,
)
from nim_agent.reaper import Reaper
from nim_agent.settings import ConnectorSettings
from nim_agent.watch import Backoff, PodCache

__all__ = [
    "Background",
    "LeaseElector",
    "close_kube_for_current_loop",
    "kube_for_current_loop",
    "run_to_completion",
    "supervised",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- one client per loop

_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Kube] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
_atexit_registered = False


async def kube_for_current_loop() -> Kube:
    """The client of the running event loop, connected on first use."""
    global _atexit_registered
    loop = asyncio.get_running_loop()
    kube = _per_loop.get(loop)
    if kube is not None:
        return kube
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        kube = _per_loop.get(loop)
        if kube is None:
            kube = await Kube.connect()
            _per_loop[loop] = kube
            if not _atexit_registered:
                atexit.register(_close_idle_loops)
                _atexit_registered = True
    return kube


async def close_kube_for_current_loop() -> None:
    """Close the running loop's client (e.g. at the end of an ``asyncio.run``)."""
    kube = _per_loop.pop(asyncio.get_running_loop(), None)
    if kube is not None:
        await kube.close()


def _close_idle_loops() -> None:
    # At interpreter exit, close the sessions of loops that are still open but idle (such as
    # flytekit's local connector loop), so aiohttp does not warn about unclosed sessions.
    for loop, kube in list(_per_loop.items()):
        if not loop.is_closed() and not loop.is_running():
            with contextlib.suppress(Exception):
                loop.run_until_complete(kube.close())
    _per_loop.clear()


def run_to_completion(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on a new event loop; in a helper thread if this thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="nim-agent-delete")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


# --------------------------------------------------------------------------- supervision

# A loop that ran this long before failing is restarted after the shortest delay again.
_HEALTHY_RUN_S = 60.0
# A loop failing this many times in a row (each within _HEALTHY_RUN_S) makes the process unhealthy.
_UNHEALTHY_STREAK = 5


@dataclass
class _LoopState:
    streak: int = 0  # failures in a row


_loops: dict[str, _LoopState] = {}


def supervised(factory: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task[None]:
    """Run ``factory()`` as the named long-lived loop ``name`` on the running event loop, for
    ever: when it fails or returns, log why, count it, and start it again after a backoff
    (1 s doubling to 30 s, reset once a run lasted a minute). Cancel the task to stop it."""
    state = _loops.setdefault(name, _LoopState())
    return asyncio.get_running_loop().create_task(_supervise(factory, name, state), name=name)


async def _supervise(
    factory: Callable[[], Coroutine[Any, Any, None]], name: str, state: _LoopState
) -> None:
    backoff = Backoff(base=1.0, cap=30.0)
    while True:
        started = time.monotonic()
        try:
            await factory()
            problem = "returned (it is meant to run until stopped)"
            error: BaseException | None = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            problem, error = f"failed: {type(exc).__name__}: {exc}", exc
        if time.monotonic() - started >= _HEALTHY_RUN_S:
            backoff.reset()
            state.streak = 0
        state.streak += 1
        delay = backoff.next_delay()
        metrics.LOOP_RESTARTS.labels(name).inc()
        log.error(
            "background loop %s %s; restarting it in %.1fs", name, problem, delay, exc_info=error
        )
        await asyncio.sleep(delay)


def loops_failing() -> list[str]:
    """The supervised loops failing over and over (each restart within a minute of the last)."""
    return sorted(name for name, s in _loops.items() if s.streak >= _UNHEALTHY_STREAK)


# --------------------------------------------------------------------------- leader election


def _micro_time(moment: datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseElector:
    """Holds (or waits for) one coordination.k8s.io Lease; `is_leader` says whether it does.

    As client-go's leader election: acquire an absent Lease, or one whose record has not
    changed for ``duration`` by this process's own clock; renew every ``retry`` while holding;
    stop counting as leader when no renewal succeeded for two thirds of ``duration`` (before any
    other replica can take over); release the Lease on a clean stop. A Lease this process may
    not use (403: RBAC without leases) is logged once and taken as held: every replica then
    sweeps, which is safe (each step is idempotent), only repeated.
    """

    kube: Callable[[], Coroutine[Any, Any, Kube]]
    namespace: str
    name: str
    duration: timedelta
    identity: str = field(
        default_factory=lambda: (
            f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{secrets.token_hex(4)}"
        )
    )
    _renewed_at: float | None = None  # monotonic time of our last successful acquire/renew
    _observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
    _observed_at: float = 0.0
    _forbidden: bool = False

    @property
    def retry(self) -> float:
        return max(1.0, self.duration.total_seconds() / 7.5)  # 2 s for client-go's 15 s

    def is_leader(self) -> bool:
        if self._forbidden:
            return True
        if self._renewed_at is None:
            return False
        return time.monotonic() - self._renewed_at < self.duration.total_seconds() * 2 / 3

    async def run(self) -> None:
        """Compete for the Lease for ever (run it `supervised`)."""
        was_leader = False
        try:
            while True:
                try:
                    await self._round()
                except Forbidden as exc:
                    if not self._forbidden:
                        log.error(
                            "cannot use Lease %s/%s (%s): every replica runs the cleanup sweep "
                            "(grant get, create and update on leases to fix this)",
                            self.namespace,
                            self.name,
                            exc.message,
                        )
                    self._forbidden = True
                except KubeError as exc:
                    log.warning("Lease %s/%s: %s", self.namespace, self.name, exc.message)
                leader = self.is_leader()
                if leader != was_leader:
                    log.info(
                        "%s the cleanup Lease %s/%s (%s)",
                        "holding" if leader else "no longer holding",
                        self.namespace,
                        self.name,
                        self.identity,
                    )
                    was_leader = leader
                metrics.LEADER.set(1 if leader else 0)
                await asyncio.sleep(self.retry)
        finally:
            metrics.LEADER.set(0)

    async def _round(self) -> None:
        kube = await self.kube()
        now = datetime.now(UTC)
        lease = await kube.get_lease(self.namespace, self.name)
        if lease is None:
            try:
                await kube.create_lease(self.namespace, self._lease(now, transitions=0))
            except AlreadyExists:
                return
            self._renewed_at = time.monotonic()
            return
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        expired = time.monotonic() - self._observed_at >= float(
            spec.get("leaseDurationSeconds") or self.duration.total_seconds()
        )
        if holder and holder != self.identity and not expired:
            self._renewed_at = None
            return
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        body = self._lease(
            now, transitions=transitions, acquired=None if holder == self.identity else now
        )
        if holder == self.identity:
            body["spec"]["acquireTime"] = spec.get("acquireTime") or _micro_time(now)
        body["metadata"]["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
        try:
            await kube.replace_lease(self.namespace, self.name, body)
        except Conflict:
            return  # someone else renewed or took it meanwhile: look again next round
        self._renewed_at = time.monotonic()

    def _lease(self, now: datetime, *, transitions: int, acquired: datetime | None = None) -> Json:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.duration.total_seconds()),
                "acquireTime": _micro_time(acquired or now),
                "renewTime": _micro_time(now),
                "leaseTransitions": transitions,
            },
        }

    async def release(self) -> None:
        """Give the Lease up (if held), so another replica takes over without waiting."""
        if self._renewed_at is None or self._forbidden:
            return
        self._renewed_at = None
        with contextlib.suppress(KubeError):
            kube = await self.kube()
            lease = await kube.get_lease(self.namespace, self.name)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            spec = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
            await kube.replace_lease(self.namespace, self.name, {**lease, "spec": spec})
            log.info("released the cleanup Lease %s/%s", self.namespace, self.name)


# --------------------------------------------------------------------------- background work


def _count_interruptions(old: Json | None, new: Json | None) -> None:
    """The watch cache's change hook: a server that had served going unready is counted."""
    if old is None or new is None or served_at(new) is None:
        return
    if _ready(old) and not _ready(new):
        metrics.SERVING_INTERRUPTIONS.inc()
        meta = new.get("metadata") or {}
        log.warning(
            "NIM deployment %s/%s, which has served, is not ready now",
            meta.get("namespace"),
            meta.get("name"),
        )


def _ready(pod: Json) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# A cache that cannot sync for this long makes the process unhealthy (its liveness answer).
UNSYNCED_UNHEALTHY_S = 600.0


@dataclass
class Background:
    """The watch cache, the Lease elector and the reaper of the long-running server, bound to its
    event loop."""

    loop: asyncio.AbstractEventLoop
    cache: PodCache
    elector: LeaseElector | None
    reaper: Reaper
    tasks: list[asyncio.Task[None]]

    @classmethod
    def start(cls, settings: ConnectorSettings) -> Background:
        """Start the pod watch cache, the Lease elector and the cleanup loop on this event loop."""
        namespaces = settings.watch_namespaces or None
        cache = PodCache(
            kube_for_current_loop,
            label_selector=OWNED_BY_US,
            namespaces=namespaces,
            on_change=_count_interruptions,
        )
        tasks: list[asyncio.Task[None]] = []

        def spawn(
            factory: Callable[[], Coroutine[Any, Any, None]], name: str
        ) -> asyncio.Task[None]:
            tasks.append(supervised(factory, name))
            return tasks[-1]

        cache.start(spawn)
        elector = None
        if settings.leader_election:
            elector = LeaseElector(
                kube_for_current_loop,
                namespace=settings.lease_namespace or os.environ.get("POD_NAMESPACE") or "default",
                name=settings.lease_name,
                duration=settings.lease_duration,
            )
            spawn(elector.run, "lease-elector")
        reaper = Reaper(
            kube_for_current_loop,
            cache,
            policy=settings.status_policy(),
            keep_failed=settings.keep_failed,
            retention=settings.stopped_retention,
            interval=settings.reap_interval,
            may_sweep=elector.is_leader if elector is not None else lambda: True,
        )
        spawn(reaper.run, "reaper")
        log.info(
            "nim-agent: watching pods (%s), cleanup every %s%s",
            ", ".join(namespaces) if namespaces else "all namespaces",
            format_duration(settings.reap_interval),
            f" while holding Lease {elector.namespace}/{elector.name}" if elector else "",
        )
        return cls(asyncio.get_running_loop(), cache, elector, reaper, tasks)

    def health(self) -> str | None:
        """None when sound; else why not: the watch cache has not synced for ten minutes, or a
        background loop keeps failing."""
        problems = []
        stale = self.cache.stale_for()
        if stale >= UNSYNCED_UNHEALTHY_S:
            problems.append(f"the pod watch has not synced for {stale:.0f}s")
        failing = loops_failing()
        if failing:
            problems.append(f"background loops failing over and over: {', '.join(failing)}")
        return "; ".join(problems) or None

    async def stop(self) -> None:
        """Stop every loop (awaiting their end) and release the Lease."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.elector is not None:
            await self.elector.release()
