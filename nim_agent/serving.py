"""Asking a NIM server what it serves: ``GET /v1/models``, cheaply and never for long.

The only module that talks HTTP to NIM servers. Two routes, chosen by the connector's
``serving_check`` setting:

- ``direct``: GET ``{endpoint}/v1/models``, the Service's cluster DNS name, exactly as the
  workflow's next steps will call it (for a connector running in the cluster; no credentials go
  with it). Needs network access from the connector to the NIM pods' port.
- ``proxy``: GET through the API server's pod proxy,
  ``/api/v1/namespaces/<ns>/pods/<name>:<port>/proxy/v1/models``, with the connector's own
  Kubernetes credentials (`nim_agent.kube`): works from outside the cluster (local runs). Needs
  RBAC ``get`` on ``pods/proxy`` in the NIM namespaces.
- ``auto``: direct when the connector runs in a pod (in-cluster credentials), else proxy.

Costs, per deployment: at most one request in flight, and none while the last answer is younger
than `MIN_INTERVAL`, so never more than one per poll of GetTask (flytepropeller polls every 30 s,
`pyflyte run` every second); each request gives up after the ``serving_timeout`` setting; a
GetTask waits for it at most `WAIT` and otherwise answers from what it knows, the request going
on in the background for the next poll. Answers are kept per pod uid (a recreated pod of the same
name is asked afresh). Once a deployment is verified the connector records it on the pod
(``nim-agent.dev/served-at``) and never asks again.

Example::

    probe = ModelsProbe(route="proxy", timeout=5.0)
    reply = await probe.models(kube, pod)   # ModelsReply, or None while the request runs
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from nim_agent import metrics
from nim_agent.contract import MODELS_PATH, NIM_CONTAINER, endpoint_of
from nim_agent.models import ModelsReply, parse_models

if TYPE_CHECKING:
    from nim_agent.kube import Kube

__all__ = ["HOLDER_MIN_INTERVAL", "MIN_INTERVAL", "WAIT", "ModelsProbe", "route_for"]

log = logging.getLogger(__name__)

WAIT = 1.0  # seconds a GetTask waits for an answer before answering without it
MIN_INTERVAL = 2.0  # seconds an answer is reused before the server is asked again
# A holder of a warm shared server waits seconds for its adapter, not minutes for a model: its
# checks reuse an answer this long only (still one request in flight per pod).
HOLDER_MIN_INTERVAL = 0.5
_CAPACITY = 10_000


def route_for(setting: str, *, in_cluster: bool) -> str:
    """The route a ``serving_check`` setting means here: "direct" or "proxy" ("off" stays)."""
    if setting == "auto":
        return "direct" if in_cluster else "proxy"
    return setting


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _nim_port(pod: Mapping[str, Any]) -> int | None:
    spec = pod.get("spec") if isinstance(pod.get("spec"), Mapping) else {}
    for container in (spec or {}).get("containers") or []:
        if isinstance(container, Mapping) and container.get("name") == NIM_CONTAINER:
            for port in container.get("ports") or []:
                if isinstance(port, Mapping) and isinstance(port.get("containerPort"), int):
                    return int(port["containerPort"])
    return None


def _status_text(body: bytes) -> str:
    """The message of an error answer: a Kubernetes Status', an OpenAI-style error's, or text."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return " ".join(body[:200].decode("utf-8", "replace").split())
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:200]
        for key in ("message", "detail", "error"):
            if isinstance(doc.get(key), str):
                return str(doc[key])[:200]
    return json.dumps(doc)[:200]


class ModelsProbe:
    """``GET /v1/models`` of NIM pods over one route, deduplicated and cached per pod uid."""

    def __init__(self, *, route: str, timeout: float) -> None:
        if route not in ("direct", "proxy"):
            raise ValueError(f"route {route!r} is not direct or proxy")
        self.route = route
        self.timeout = timeout
        self._answers: OrderedDict[str, tuple[float, ModelsReply]] = OrderedDict()
        self._running: dict[str, asyncio.Task[ModelsReply]] = {}

    def forget(self, uid: str) -> None:
        """Drop what is known of a pod (verified, or gone)."""
        self._answers.pop(uid, None)

    async def models(
        self,
        kube: Kube,
        pod: Mapping[str, Any],
        *,
        not_before: datetime | None = None,
        max_age: float = MIN_INTERVAL,
    ) -> ModelsReply | None:
        """The server's latest answer, asking it when the last one is older than `max_age`
        seconds (or than `not_before`: a holder that attached to a shared server since then asks
        afresh); None when a request is under way and has not answered within WAIT."""
        uid = str(_meta(pod).get("uid") or "")
        known = self._answers.get(uid)
        if not_before is not None and known is not None and known[1].at < not_before:
            known = None
        if known is not None and time.monotonic() - known[0] < max_age:
            return known[1]
        task = self._running.get(uid)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.get_running_loop().create_task(
                self._ask(kube, pod, uid), name=f"nim-agent-models-{uid[:8]}"
            )
            self._running[uid] = task
        try:
            return await asyncio.wait_for(asyncio.shield(task), WAIT)
        except TimeoutError:
            return known[1] if known is not None else None

    async def _ask(self, kube: Kube, pod: Mapping[str, Any], uid: str) -> ModelsReply:
        try:
            started = time.monotonic()
            try:
                reply = await self._request(kube, pod)
            except Exception as exc:  # a GetTask must not fail because of this check
                log.exception("GET %s of pod uid %s failed unexpectedly", MODELS_PATH, uid)
                reply = ModelsReply(at=datetime.now(UTC), problem=f"unexpected error: {exc!r}")
            seconds = time.monotonic() - started
            reply = ModelsReply(
                at=reply.at, models=reply.models, problem=reply.problem, seconds=seconds
            )
            outcome = "listed" if reply.models is not None else "failed"
            metrics.SERVING_CHECKS.labels(self.route, outcome).inc()
            metrics.SERVING_CHECK_SECONDS.labels(self.route).observe(seconds)
            self._answers[uid] = (time.monotonic(), reply)
            self._answers.move_to_end(uid)
            while len(self._answers) > _CAPACITY:
                self._answers.popitem(last=False)
            return reply
        finally:
            self._running.pop(uid, None)

    async def _request(self, kube: Kube, pod: Mapping[str, Any]) -> ModelsReply:
        """One request over the route; every failure becomes a reply with its problem."""
        now = datetime.now(UTC)
        try:
            body = await (self._direct(pod) if self.route == "direct" else self._proxy(kube, pod))
        except _NoAnswer as exc:
            return ModelsReply(at=now, problem=str(exc))
        try:
            return ModelsReply(at=datetime.now(UTC), models=parse_models(body))
        except ValueError as exc:
            return ModelsReply(at=datetime.now(UTC), problem=str(exc))

    async def _direct(self, pod: Mapping[str, Any]) -> bytes:
        endpoint = endpoint_of(pod)
        if not endpoint:
            raise _NoAnswer("the pod has no endpoint annotation")
        url = endpoint.rstrip("/") + MODELS_PATH
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, allow_redirects=False) as response,
            ):
                body = await response.read()
                if response.status != 200:
                    raise _NoAnswer(f"HTTP {response.status}: {_status_text(body)}")
                return body
        except TimeoutError:
            raise _NoAnswer(f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise _NoAnswer(f"{type(exc).__name__}: {exc}") from None

    async def _proxy(self, kube: Kube, pod: Mapping[str, Any]) -> bytes:
        from nim_agent.kube import Forbidden, KubeError

        meta = _meta(pod)
        namespace, name, port = meta.get("namespace"), meta.get("name"), _nim_port(pod)
        if not (isinstance(namespace, str) and isinstance(name, str) and port):
            raise _NoAnswer("the pod has no name, namespace or NIM port")
        started = time.monotonic()
        try:
            return await kube.pod_proxy_get(
                namespace, name, port, MODELS_PATH, seconds=self.timeout
            )
        except Forbidden as exc:
            if exc.reason != "Forbidden":  # not the API server's Status: the pod's own 403
                raise _NoAnswer(f"HTTP 403: {exc.message} (pod proxy)") from None
            raise _NoAnswer(
                f"the API server refused its pod proxy ({exc.message}); grant the connector get "
                "on pods/proxy, or use serving_check direct from inside the cluster"
            ) from None
        except KubeError as exc:
            if time.monotonic() - started >= self.timeout * 0.95:
                raise _NoAnswer(f"no answer within {self.timeout:g}s (pod proxy)") from None
            code = f"HTTP {exc.status}: " if exc.status else ""
            raise _NoAnswer(f"{code}{exc.message} (pod proxy)") from None


class _NoAnswer(Exception):
    """The request gave no model list; the message says why (for the task's message)."""
