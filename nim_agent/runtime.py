"""The server runtime: per event loop, the Kubernetes client and the background work on it.

What runs where in a connector process:

- one `Kube` client per event loop (`kube_for_current_loop`): aiohttp sessions belong to the
  loop they were made on, and flytekit's local runner calls ``delete`` from a fresh
  ``asyncio.run`` on Ctrl-C (`run_to_completion` runs such a call on a loop of its own);
- on the server's loop, the pod watch cache and the reaper (`Background.start`), each loop a
  named task started by `supervised`, so that none ends without a line in the log saying why.

`supervised` is the home of supervision: restarts with backoff and a restart count belong here.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from nim_agent.contract import OWNED_BY_US, format_duration
from nim_agent.kube import Kube
from nim_agent.reaper import Reaper, Tombstones
from nim_agent.settings import ConnectorSettings
from nim_agent.watch import PodCache

__all__ = [
    "Background",
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


# --------------------------------------------------------------------------- background work


def supervised(coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
    """Run a long-lived loop as a named task on the running loop; an end other than a
    cancellation is logged with its cause (such loops are meant to run until stopped)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(_report_end)
    return task


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("background task %s stopped: %r", task.get_name(), error, exc_info=error)
    else:
        log.error("background task %s returned; it was meant to run until stopped", task.get_name())


@dataclass
class Background:
    """The watch cache and the reaper of the long-running server, bound to its event loop."""

    loop: asyncio.AbstractEventLoop
    cache: PodCache
    reaper: Reaper
    tasks: list[asyncio.Task[None]]

    @classmethod
    def start(cls, settings: ConnectorSettings, tombstones: Tombstones) -> Background:
        """Start the pod watch cache and the cleanup loop on the running event loop."""
        namespaces = settings.watch_namespaces or None
        cache = PodCache(kube_for_current_loop, label_selector=OWNED_BY_US, namespaces=namespaces)
        cache.start()
        reaper = Reaper(
            kube_for_current_loop,
            cache,
            policy=settings.status_policy(),
            keep_failed=settings.keep_failed,
            tombstones=tombstones,
            interval=settings.reap_interval,
        )
        task = supervised(reaper.run(), name="nim-agent-reaper")
        log.info(
            "nim-agent: watching pods (%s), cleanup every %s",
            ", ".join(namespaces) if namespaces else "all namespaces",
            format_duration(settings.reap_interval),
        )
        return cls(asyncio.get_running_loop(), cache, reaper, [task])

    async def stop(self) -> None:
        """Stop the reaper and the watch cache (awaiting their end)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.cache.stop()
