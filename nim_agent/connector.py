"""The Flyte connector for task type ``nim``: create, follow and delete NIM deployments.

flytepropeller (or, locally, ``pyflyte run``) calls::

    create(task_template, ..., inputs, task_execution_metadata) -> NIMMetadata  (render -> kube)
    get(NIMMetadata)                                      -> Resource      (cache/kube -> status)
    delete(NIMMetadata)                                   -> None          (abort; idempotent)

SUCCEEDED means serving: the pod is Ready, its Service exists, and (unless the ``serving_check``
setting is off) ``GET /v1/models`` lists the base model and every adapter (`nim_agent.serving`
asks, `nim_agent.status` decides). The first verification is recorded on the pod, annotation
``nim-agent.dev/served-at`` (one merge patch), so that later polls, other replicas and restarted
connectors answer SUCCEEDED without asking the server again.

A task's inputs are its LoRA adapters (`NIMTask(inputs=...)`): each FlyteDirectory input is an
adapter named after the input, each ``dict[str, FlyteDirectory]`` input one adapter per key; the
pod downloads them from their object-store URIs (`render`'s ``lora-inputs`` container).

A task with ``reuse`` attaches to its configuration's shared server (`nim_agent.sharing`):
CreateTask creates it (one write; racing creates meet on its deterministic name) or adds this
execution's holder record to it (one merge patch), GetTask answers for this holder (SUCCEEDED
once the server lists this execution's adapters), DeleteTask and the teardown task release the
holder (the server keeps serving the others; the reaper stops it once idle).

Everything the connector needs to answer later is in the self-contained ``NIMMetadata`` or on the
pod itself, so a restarted connector (or another replica) answers for deployments it did not
create. A task the connector cannot run (bad config, namespace not allowed, rejected by
admission) becomes a FAILED task with a message naming the field or the policy, never a gRPC
INTERNAL error with a traceback.

This module is loaded by ``import flytekit`` (the ``flytekit.plugins`` entry point), so it stays
light: the Kubernetes client and the server runtime (`nim_agent.runtime`: the watch cache and the
reaper) are imported on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from flyteidl.core.execution_pb2 import TaskExecution, TaskLog
from flytekit.extend.backend.base_connector import (
    AsyncConnectorBase,
    ConnectorRegistry,
    Resource,
    ResourceMeta,
    SyncConnectorBase,
)
from flytekit.models.core.types import BlobType

from nim_agent.checks import (
    ConfigError,
    Problem,
    check_adapter_name,
    check_dns_label,
    check_dns_subdomain,
)
from nim_agent.contract import (
    ABORT,
    ANNOTATION_SERVED_AT,
    ANNOTATION_SERVED_MODEL,
    FAILURE,
    IDENTITY_PARTS,
    LABEL_DEPLOYMENT,
    LABEL_HOLDER,
    LABEL_PREFIX,
    NIM_CONTAINER,
    TEARDOWN,
    TTL,
    HolderRecord,
    NIMEndpoint,
    deletion_cause,
    deployment_of_endpoint,
    format_duration,
    holder_key,
    holder_records,
    is_ours,
    parse_time,
    same_deployment,
    served_at,
    stop_record,
)
from nim_agent.render import (
    DeploymentIdentity,
    ExecutionIdentity,
    SharedServer,
    namespace_for,
    render_pod,
    service_for_holder,
    service_for_pod,
    shared_deployment_name,
)
from nim_agent.settings import ConnectorSettings
from nim_agent.sharing import (
    MAX_GENERATIONS,
    conflicts,
    holder_adapters,
    holder_view,
    served_input_name,
    share_key,
    unusable,
)
from nim_agent.spec import TASK_TYPE, TEARDOWN_TASK_TYPE, NIMTaskSpec, from_custom
from nim_agent.status import (
    Classification,
    Phase,
    Reason,
    ServingCheck,
    StatusPolicy,
    classify,
    flyte_phase,
    policy_for,
)

if TYPE_CHECKING:
    from flytekit.models.literals import LiteralMap
    from flytekit.models.task import TaskExecutionMetadata, TaskTemplate

    from nim_agent.kube import Json, Kube
    from nim_agent.runtime import Background
    from nim_agent.serving import ModelsProbe
    from nim_agent.watch import PodCache

__all__ = ["NIMConnector", "NIMMetadata", "NIMTeardownConnector", "adapters_of", "release_holder"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class _LastKnown:
    """The last answer given for each deployment (bounded), to bridge API server outages."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._answers: OrderedDict[tuple[str, str], Resource] = OrderedDict()

    def remember(self, meta: NIMMetadata, resource: Resource) -> None:
        key = (meta.namespace, meta.name)
        self._answers[key] = resource
        self._answers.move_to_end(key)
        while len(self._answers) > self._capacity:
            self._answers.popitem(last=False)

    def answer(self, meta: NIMMetadata, problem: str) -> Resource:
        note = f"the Kubernetes API server is unreachable ({problem}); retrying"
        last = self._answers.get((meta.namespace, meta.name))
        if last is None:
            return Resource(phase=TaskExecution.RUNNING, message=f"State unknown: {note}.")
        return Resource(
            phase=last.phase,
            message=f"{last.message} (last known state: {note})",
            log_links=last.log_links,
            outputs=last.outputs,
            custom_info=last.custom_info,
        )


@dataclass
class NIMMetadata(ResourceMeta):  # type: ignore[misc]
    """What flytepropeller keeps for one deployment between calls (JSON, self-contained)."""

    namespace: str = ""
    name: str = ""
    endpoint: str = ""
    local: bool = False
    """Created by a local run (no execution metadata): read directly, no watch cache."""
    error: str = ""
    """Set when create refused the task; get reports FAILED with it."""
    typed: bool = False
    """The task's output is a NIMEndpoint (NIMTask(typed_endpoint=True)), not the URL string."""
    shared: str = ""
    """A holder of a shared server (NIMTask(reuse=...)): the server's Pod name; ``name`` is then
    the holder's (its record on the pod, its Service)."""

    @property
    def pod_name(self) -> str:
        """The Pod this task follows: its own, or the shared server it holds."""
        return self.shared or self.name

    @classmethod
    def decode(cls, data: bytes) -> NIMMetadata:
        """Decode; bytes that are not ours give a metadata whose ``error`` says so."""
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            known = {f.name: f.type for f in fields(cls)}
            unknown = sorted(set(doc) - set(known))
            if unknown:
                raise ValueError(f"unknown keys {unknown}")
            meta = cls(**doc)
            for f in fields(cls):
                value = getattr(meta, f.name)
                if not isinstance(value, bool if f.name in ("local", "typed") else str):
                    raise ValueError(f"{f.name} has the wrong type")
            if not meta.error and not (meta.namespace and meta.name):
                raise ValueError("namespace and name are required")
            # Checked here, not left to the API server: a name it refuses as a request path
            # (e.g. "%") would otherwise fail DeleteTask with INTERNAL instead of a no-op.
            if not meta.error and (
                (problem := check_dns_label(meta.namespace))
                or (problem := check_dns_subdomain(meta.name))
                or (meta.shared and (problem := check_dns_subdomain(meta.shared)))
            ):
                raise ValueError(problem)
        except (ValueError, UnicodeDecodeError, TypeError) as exc:
            return cls(error=f"resource_meta is not a nim-agent deployment reference ({exc})")
        return meta


class NIMConnector(AsyncConnectorBase):  # type: ignore[misc]
    """Runs NIM servers on Kubernetes for Flyte tasks of type ``nim``."""

    name = "NIM Connector"

    def __init__(self, settings: ConnectorSettings | None = None) -> None:
        super().__init__(task_type_name=TASK_TYPE, metadata_type=NIMMetadata)
        self._settings = settings
        self._background: Background | None = None
        self._last_known = _LastKnown()
        # Deployments whose Service this process has made (or found): one write per deployment.
        self._services: set[tuple[str, str]] = set()
        self._probe: ModelsProbe | None = None
        # Pods verified serving by this process, by uid: the annotations written on them, so the
        # answer holds before the watch cache shows them (or if writing them failed).
        self._served: OrderedDict[str, dict[str, str]] = OrderedDict()
        # Holders waiting for adapters: when this process last read the adapter-sync log.
        self._sync_log_reads: dict[tuple[str, str], float] = {}

    # -- configuration --------------------------------------------------------------------

    @property
    def settings(self) -> ConnectorSettings:
        """The operator's settings (``NIM_AGENT_*`` env vars / file), read on first use."""
        if self._settings is None:
            self._settings = ConnectorSettings.load()
        return self._settings

    @property
    def policy(self) -> StatusPolicy:
        """The classification thresholds of the settings (each pod adds its startup window)."""
        return self.settings.status_policy()

    async def kube(self) -> Kube:
        """The Kubernetes client of the running event loop."""
        from nim_agent.runtime import kube_for_current_loop

        return await kube_for_current_loop()

    # -- background: watch cache + reaper (server only) ------------------------------------

    def start_background(self) -> Background:
        """Start the pod watch cache and the cleanup loop on the running event loop.

        ``nim-agent serve`` calls this at start; under ``pyflyte serve connector`` the first
        call for a deployment of a Flyte execution does. Local runs never start it.
        """
        bg = self._background
        if bg is None or bg.loop is not asyncio.get_running_loop():
            from nim_agent.runtime import Background

            bg = self._background = Background.start(self.settings)
        return bg

    async def stop_background(self) -> None:
        """Stop what `start_background` started (``nim-agent serve`` on SIGTERM)."""
        bg, self._background = self._background, None
        if bg is not None:
            await bg.stop()

    def _cache(self, meta: NIMMetadata) -> PodCache | None:
        if meta.local:
            return None
        return self.start_background().cache

    # -- create ---------------------------------------------------------------------------

    async def create(
        self,
        task_template: TaskTemplate,
        output_prefix: str | None = None,
        inputs: LiteralMap | None = None,
        task_execution_metadata: TaskExecutionMetadata | None = None,
        **kwargs: Any,
    ) -> NIMMetadata:
        """Create the NIM Pod (one API write); a retried create finds the existing one."""
        from nim_agent.kube import AlreadyExists, Forbidden, Invalid, NotFound

        settings = self.settings
        try:
            spec = from_custom(task_template.custom or {})
            execution, execution_namespace = _execution_of(task_execution_metadata)
            namespace = namespace_for(spec.nim, execution_namespace, settings)
            adapter_uris = adapters_of(inputs)
        except ConfigError as exc:
            return NIMMetadata(error=f"Invalid NIM task configuration: {exc}")
        ttl = spec.ttl or settings.default_ttl
        if settings.max_ttl is not None and ttl > settings.max_ttl:
            return NIMMetadata(
                error=f"Invalid NIM task configuration: ttl: {format_duration(ttl)} is longer "
                f"than the connector allows (max_ttl {format_duration(settings.max_ttl)})"
            )
        expires = datetime.now(UTC) + ttl
        task_name = task_template.id.name or "nim"
        if spec.reuse is not None and settings.allow_reuse:
            interface = getattr(task_template, "interface", None)
            takes_inputs = bool(getattr(interface, "inputs", None))
            return await self._attach(
                spec, execution, namespace, adapter_uris, ttl, task_name, takes_inputs
            )
        identity = (
            DeploymentIdentity.for_execution(
                execution, namespace, task_name=task_name, expires_at=expires
            )
            if execution is not None
            else DeploymentIdentity.for_local(task_name, namespace, expires_at=expires)
        )
        meta = NIMMetadata(
            namespace=namespace,
            name=identity.name,
            endpoint=identity.endpoint(spec.nim.port),
            local=execution is None,
            typed=spec.typed_endpoint,
        )
        kube = await self.kube()
        try:
            pod = render_pod(spec.nim, identity, settings, adapter_uris, ttl=ttl)
        except ConfigError as exc:
            return NIMMetadata(error=f"Invalid NIM task configuration: {exc}")
        where = f"pod {namespace}/{identity.name}"
        try:
            await kube.create_pod(namespace, pod)
            from nim_agent import metrics

            metrics.DEPLOYMENTS_CREATED.inc()
            log.info("created %s for %s", where, _describe(execution, task_name))
        except AlreadyExists:
            existing = await kube.get_pod(namespace, identity.name)
            if existing is None or not same_deployment(existing, pod):
                return _refused(meta, f"{where} exists and belongs to another deployment")
            log.info("%s exists already (retried create): reusing it", where)
        except NotFound:
            return _refused(meta, f"namespace {namespace!r} does not exist")
        except (Forbidden, Invalid) as exc:
            return _refused(meta, f"Kubernetes refused {where}: {exc.message}")
        if not meta.local:
            self._cache(meta)  # start following it (server side) right away
        # The Service is not needed before the endpoint is handed out: it is made when GetTask
        # first finds the server ready (see _ensure_service), so CreateTask is one API write.
        return meta

    async def _attach(
        self,
        spec: NIMTaskSpec,
        execution: ExecutionIdentity | None,
        namespace: str,
        adapter_uris: dict[str, str],
        ttl: timedelta,
        task_name: str,
        takes_inputs: bool,
    ) -> NIMMetadata:
        """CreateTask with reuse: create the configuration's shared server with this execution
        as its first holder, or add this execution's holder record to the running one."""
        from nim_agent import metrics
        from nim_agent.kube import AlreadyExists, Forbidden, Invalid, NotFound

        settings = self.settings
        assert spec.reuse is not None
        nim, reuse = spec.nim, spec.reuse
        now = datetime.now(UTC)
        lifetime = settings.shared_lifetime
        if ttl > lifetime:
            return NIMMetadata(
                error=f"Invalid NIM task configuration: ttl: {format_duration(ttl)} is longer "
                f"than a shared server lives (the connector's reuse_max_ttl, "
                f"{format_duration(lifetime)}); shorten ttl or run without reuse"
            )
        served_uris = {served_input_name(n, u): u for n, u in adapter_uris.items()}
        try:
            key = share_key(
                nim,
                settings,
                namespace=namespace,
                reuse=reuse,
                project=execution.project if execution else "",
                domain=execution.domain if execution else "",
                inputs=takes_inputs,
            )
        except ConfigError as exc:
            return NIMMetadata(error=f"Invalid NIM task configuration: {exc}")
        holder = (
            DeploymentIdentity.for_execution(execution, namespace, task_name=task_name)
            if execution is not None
            else DeploymentIdentity.for_local(task_name, namespace)
        )
        record = HolderRecord(
            since=now,
            until=now + ttl,
            idle_ttl=reuse.idle_ttl or settings.reuse_idle_ttl,
            adapters=holder_adapters(nim, served_uris),
            execution=(
                {part: getattr(execution, part) for part in IDENTITY_PARTS}
                if execution is not None
                else {"task": task_name}
            ),
        )
        meta = NIMMetadata(
            namespace=namespace,
            name=holder.name,
            endpoint=holder.endpoint(nim.port),
            local=execution is None,
            typed=spec.typed_endpoint,
        )
        kube = await self.kube()
        policy = self.policy
        for generation in range(MAX_GENERATIONS):
            name = shared_deployment_name(key, generation, nim.image)
            where = f"shared NIM server {namespace}/{name}"
            shared = SharedServer(
                key=key,
                generation=generation,
                scope=reuse.scope,
                lifetime=lifetime,
                inputs=takes_inputs,
            )
            identity = DeploymentIdentity(
                name=name, namespace=namespace, task_name=task_name, expires_at=now + lifetime
            )
            try:
                pod = render_pod(nim, identity, settings, served_uris, shared=shared)
            except ConfigError as exc:
                return NIMMetadata(error=f"Invalid NIM task configuration: {exc}")
            pod["metadata"]["annotations"][holder_key(holder.name)] = record.to_annotation()
            try:
                await kube.create_pod(namespace, pod)
            except AlreadyExists:
                pass
            except NotFound:
                return _refused(meta, f"namespace {namespace!r} does not exist")
            except (Forbidden, Invalid) as exc:
                return _refused(meta, f"Kubernetes refused {where}: {exc.message}")
            else:
                metrics.DEPLOYMENTS_CREATED.inc()
                metrics.ATTACHES.labels("created").inc()
                log.info("created %s for %s", where, _describe(execution, task_name))
                return self._following(dataclasses.replace(meta, shared=name))
            existing = await self._lookup(kube, namespace, name)
            if existing is None:  # gone meanwhile (its retention ended): take the name again
                existing = await self._create_or_read(kube, namespace, pod)
                if existing is pod:
                    metrics.DEPLOYMENTS_CREATED.inc()
                    metrics.ATTACHES.labels("created").inc()
                    return self._following(dataclasses.replace(meta, shared=name))
                if existing is None:
                    continue
            if holder.name in holder_records(existing):  # a retried CreateTask
                return self._following(dataclasses.replace(meta, shared=name))
            why = unusable(existing, key=key, now=now, ttl=ttl, policy=policy)
            if why is not None:
                log.info("%s cannot take %s: %s", where, holder.name, why)
                continue
            clash = conflicts(existing, record.adapters)
            if clash:
                return _refused(meta, f"{where}: {'; '.join(clash)}")
            try:
                patched = await kube.patch_pod_annotations(
                    namespace, name, {holder_key(holder.name): record.to_annotation()}
                )
            except NotFound:
                continue
            why = unusable(patched, key=key, now=datetime.now(UTC), ttl=ttl, policy=policy)
            if why is not None:  # stopped between our look and our patch
                log.info("%s cannot take %s: %s", where, holder.name, why)
                continue
            warm = served_at(patched) is not None
            metrics.ATTACHES.labels("serving" if warm else "starting").inc()
            metrics.COLD_STARTS_AVOIDED.inc()
            log.info(
                "%s attached to %s (%s)",
                _describe(execution, task_name),
                where,
                "serving" if warm else "still starting",
            )
            return self._following(dataclasses.replace(meta, shared=name))
        return _refused(
            meta,
            f"none of the {MAX_GENERATIONS} names of this configuration's shared server can "
            "take it (stopped or failing servers keep their names for the stopped retention)",
        )

    def _following(self, meta: NIMMetadata) -> NIMMetadata:
        if not meta.local:
            self._cache(meta)  # start following it (server side) right away
        return meta

    async def _lookup(self, kube: Kube, namespace: str, name: str) -> Json | None:
        """A pod of ours: from the watch cache when it knows, else from the API server."""
        cache = None if self._background is None else self._background.cache
        if cache is not None:
            known, pod = cache.lookup(namespace, name)
            if known and pod is not None:
                return pod
        pod = await kube.get_pod(namespace, name)
        return pod if is_ours(pod) else None

    async def _create_or_read(self, kube: Kube, namespace: str, pod: Json) -> Json | None:
        """Create ``pod``; ``pod`` itself when made, else the pod of that name now (or None)."""
        from nim_agent.kube import AlreadyExists

        try:
            await kube.create_pod(namespace, pod)
        except AlreadyExists:
            return await self._lookup(kube, namespace, str(pod["metadata"]["name"]))
        return pod

    async def _ensure_service(self, kube: Kube, meta: NIMMetadata, pod: Json) -> None:
        """Create the deployment's Service (owned by ``pod``) unless this process made it already.

        Called before the endpoint is first handed out. Its inputs are all on the pod (the NIM
        config is rendered from it), so any replica, or a restarted connector, can do it; one
        that finds it made already (409) is done too.
        """
        from nim_agent.kube import AlreadyExists

        key = (meta.namespace, meta.name)
        if key in self._services:
            return
        if meta.shared:
            record = holder_records(pod).get(meta.name)
            service = service_for_holder(
                pod,
                meta.name,
                execution=_execution_from(record.execution if record else {}),
                task_name=str((record.execution if record else {}).get("task") or "") or None,
            )
        else:
            service = service_for_pod(pod)
        with contextlib.suppress(AlreadyExists):
            await kube.create_service(meta.namespace, service)
        self._services.add(key)

    # -- get ------------------------------------------------------------------------------

    async def get(self, resource_meta: NIMMetadata, **kwargs: Any) -> Resource:
        """Where the deployment stands: a Flyte phase, a message, and on success ``endpoint``.

        A Kubernetes API outage is answered with the last known state, not an error:
        flytepropeller fails a task after a handful of GetTask errors over its whole life, and
        a NIM loading for 20 minutes must survive an API server restart.
        """
        from nim_agent.kube import PermanentKubeError, TemporaryKubeError

        meta = resource_meta
        if meta.error:
            return Resource(phase=TaskExecution.FAILED, message=meta.error)
        try:
            resource = await self._get(meta)
        except TemporaryKubeError as exc:
            return self._last_known.answer(meta, exc.message)
        except PermanentKubeError as exc:
            return Resource(
                phase=TaskExecution.FAILED,
                message=f"nim-agent cannot read pod {meta.namespace}/{meta.name}: {exc.message} "
                "(check the connector's RBAC: get, list and watch on pods)",
            )
        self._last_known.remember(meta, resource)
        return resource

    async def _get(self, meta: NIMMetadata) -> Resource:
        kube = await self.kube()
        now = datetime.now(UTC)
        pod = await self._read_pod(kube, meta)
        if meta.shared and pod is not None and meta.name not in holder_records(pod):
            # The watch cache may not show a record written a moment ago (this execution's
            # attach): ask the API server before telling a holder it holds nothing.
            fresh = await kube.get_pod(meta.namespace, meta.pod_name)
            pod = fresh if is_ours(fresh) else None
        pod = self._with_served(pod, meta)
        real = pod
        since = None
        if meta.shared and pod is not None:
            view = holder_view(pod, meta.name, endpoint=meta.endpoint, now=now)
            if view.verdict is not None:
                verdict = view.verdict
                outputs = None
                if verdict.phase is Phase.SUCCEEDED:
                    outputs = {"endpoint": self._holder_output(meta, pod, view.record)}
                return Resource(
                    phase=flyte_phase(verdict.phase),
                    message=verdict.message,
                    log_links=self._log_links(meta),
                    outputs=outputs,
                )
            pod = view.pod
            since = view.record.since if view.record is not None else None
        cause = deletion_cause(pod)
        policy = policy_for(pod, self.policy)
        events: list[Json] = []
        check = None if self.settings.serving_check == "off" else ServingCheck(since=since)

        def classified(log_tail: str | None = None) -> Classification:
            return classify(
                pod,
                events=events,
                now=now,
                policy=policy,
                endpoint=meta.endpoint,
                log_tail=log_tail,
                deletion_cause=cause,
                serving=check,
                typed=meta.typed,
            )

        result = classified()
        if pod is not None and result.models_request:
            # The Service first: the endpoint is what the check verifies (direct route) and
            # what SUCCEEDED hands out.
            failure = await self._service_problem(kube, meta, pod)
            if failure is not None:
                return failure
            from nim_agent.serving import HOLDER_MIN_INTERVAL, MIN_INTERVAL

            reply = await self._models_probe(kube).models(
                kube,
                pod,
                not_before=since,
                max_age=HOLDER_MIN_INTERVAL if meta.shared else MIN_INTERVAL,
            )
            check = ServingCheck(reply=reply, asked=True, since=since)
            result = classified()
        if pod is not None and _wants_events(result):
            events = await _best_effort(kube.pod_events(meta.namespace, meta.pod_name), [], meta)
            result = classified()
        if pod is not None and result.log_request is not None:
            tail = await _best_effort(
                kube.pod_log_tail(
                    meta.namespace,
                    meta.pod_name,
                    container=result.log_request.container,
                    previous=result.log_request.previous,
                    lines=result.log_request.lines,
                ),
                None,
                meta,
            )
            if tail:
                result = classified(tail)
        if (
            pod is not None
            and meta.shared
            and result.reason is Reason.VERIFYING_SERVING
            and since is not None
        ):
            failed = await self._adapter_sync_errors(kube, meta, pod, now - since)
            if failed is not None:
                return failed
        if pod is not None and result.phase is Phase.SUCCEEDED and stop_record(pod) is None:
            # The Service before the endpoint is handed out, and the first success recorded on
            # the pod: two writes on the first SUCCEEDED only, sent together.
            writes = [self._service_problem(kube, meta, pod)]
            if result.served and real is not None:
                # A holder's view is not the pod: its record is written on the shared pod.
                writes.append(self._record_served(kube, meta, real, result.served))
            failure = (await asyncio.gather(*writes))[0]
            if failure is not None:
                return failure
        await self._after(kube, meta, pod, result, now)
        return Resource(
            phase=flyte_phase(result.phase),
            message=result.message,
            log_links=self._log_links(meta),
            outputs=result.outputs,
            # The reason too: the short token a person (and a test) reads the verdict by.
            custom_info={**result.custom_info, "reason": result.reason.value},
        )

    def _holder_output(self, meta: NIMMetadata, pod: Json, record: HolderRecord | None) -> Any:
        if not meta.typed:
            return meta.endpoint
        adapters = list(record.adapters) if record is not None else []
        model = (record.served_model if record is not None else "") or ""
        return NIMEndpoint.of(meta.endpoint, model, adapters)

    async def _adapter_sync_errors(
        self, kube: Kube, meta: NIMMetadata, pod: Json, waited: timedelta
    ) -> Resource | None:
        """A holder whose adapters the shared server does not list yet: when the adapter-sync
        sidecar has logged that it failed to add one of them, FAILED with its words (without
        waiting for the serving window). The log is read at most every few seconds."""
        from nim_agent.contract import ADAPTER_SYNC_CONTAINER, requested_adapters

        adapters = requested_adapters(pod)
        if not adapters or waited < _SYNC_LOG_GRACE:
            return None
        key = (meta.namespace, meta.name)
        last = self._sync_log_reads.get(key)
        if last is not None and time.monotonic() - last < _SYNC_LOG_EVERY_S:
            return None
        self._sync_log_reads[key] = time.monotonic()
        while len(self._sync_log_reads) > 10_000:
            self._sync_log_reads.pop(next(iter(self._sync_log_reads)))
        tail = await _best_effort(
            kube.pod_log_tail(
                meta.namespace, meta.pod_name, container=ADAPTER_SYNC_CONTAINER, lines=500
            ),
            None,
            meta,
        )
        errors = [
            line.strip()
            for line in (tail or "").splitlines()
            if any(f"adapter-sync: ERROR {name}:" in line for name in adapters)
        ]
        if not errors:
            return None
        return Resource(
            phase=TaskExecution.FAILED,
            message=f"The shared NIM server {meta.namespace}/{meta.pod_name} could not add this "
            f"execution's adapters (its adapter-sync sidecar said):\n" + "\n".join(errors[-5:]),
            log_links=self._log_links(meta),
        )

    def _models_probe(self, kube: Kube) -> ModelsProbe:
        """The /v1/models probe of this process, on the route the settings choose."""
        if self._probe is None:
            from nim_agent.serving import ModelsProbe, route_for

            settings = self.settings
            route = route_for(settings.serving_check, in_cluster=kube.in_cluster)
            self._probe = ModelsProbe(route=route, timeout=settings.serving_timeout.total_seconds())
            log.info("verifying NIM servers with GET /v1/models, route %s", route)
        return self._probe

    def _with_served(self, pod: Json | None, meta: NIMMetadata) -> Json | None:
        """The pod with the served annotations this process wrote (or tried to) on it, when it
        does not show them yet (a holder's: its record marked served)."""
        uid = str(((pod or {}).get("metadata") or {}).get("uid") or "")
        served = self._served.get(_served_key(uid, meta))
        if pod is None or served is None:
            return pod
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        if meta.shared:
            record = holder_records(pod).get(meta.name)
            if record is not None and record.served is not None:
                return pod
        elif served_at(pod) is not None:
            return pod
        first = (ANNOTATION_SERVED_AT, ANNOTATION_SERVED_MODEL)  # never moved once written
        missing = {k: v for k, v in served.items() if not (k in first and k in annotations)}
        pod_meta = dict(pod.get("metadata") or {})
        pod_meta["annotations"] = {**annotations, **missing}
        return {**pod, "metadata": pod_meta}

    async def _record_served(
        self, kube: Kube, meta: NIMMetadata, pod: Json, served: dict[str, str]
    ) -> None:
        """Write the first verification on the pod (one merge patch); remember it meanwhile.
        A holder's: its record marked served, and the shared server's own served-at the first
        time (``pod`` is then the shared pod itself, not the holder's view of it)."""
        from nim_agent.kube import KubeError

        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if meta.shared:
            # This holder's record marked served; the server's own served-at the first time.
            record = holder_records(pod).get(meta.name)
            when = parse_time(served.get(ANNOTATION_SERVED_AT)) or datetime.now(UTC)
            model = served.get(ANNOTATION_SERVED_MODEL, "")
            patch = {} if served_at(pod) is not None else dict(served)
            if record is not None:
                marked = dataclasses.replace(record, served=when, served_model=model)
                patch[holder_key(meta.name)] = marked.to_annotation()
            served = patch
        else:
            if self._probe is not None:
                self._probe.forget(uid)
        self._served[_served_key(uid, meta)] = dict(served)
        while len(self._served) > 10_000:
            self._served.popitem(last=False)
        try:
            await kube.patch_pod_annotations(meta.namespace, meta.pod_name, served)
        except KubeError as exc:
            log.warning(
                "NIM server %s/%s serves, but recording it on the pod failed: %s",
                meta.namespace,
                meta.name,
                exc.message,
            )
            return
        log.info("NIM server %s/%s verified serving", meta.namespace, meta.name)

    async def _service_problem(self, kube: Kube, meta: NIMMetadata, pod: Json) -> Resource | None:
        """Make sure the Service exists before the endpoint is handed out; None when it does.

        An outage is raised (GetTask answers the last known state and tries again); a refusal
        (RBAC on services, a quota) fails the task, saying so.
        """
        from nim_agent.kube import PermanentKubeError

        try:
            await self._ensure_service(kube, meta, pod)
        except PermanentKubeError as exc:
            return Resource(
                phase=TaskExecution.FAILED,
                message=f"The NIM server {meta.namespace}/{meta.name} is ready, but Kubernetes "
                f"refused its Service: {exc.message} (check the connector's RBAC: create on "
                "services)",
            )
        return None

    async def _read_pod(self, kube: Kube, meta: NIMMetadata) -> Json | None:
        cache = self._cache(meta)
        if cache is not None:
            known, pod = cache.lookup(meta.namespace, meta.pod_name)
            if known and pod is not None:
                return pod
        # Not in the cache (just created, namespace not watched, watch down): ask the server.
        pod = await kube.get_pod(meta.namespace, meta.pod_name)
        # resource_meta arrives over gRPC: a forged one must not read out a pod that is not ours.
        return pod if is_ours(pod) else None

    async def _after(
        self,
        kube: Kube,
        meta: NIMMetadata,
        pod: Json | None,
        result: Classification,
        now: datetime,
    ) -> None:
        """Metrics of the outcome; a failed server is stopped at once (unless ``keep_failed``),
        with its verdict recorded on the pod, so that every later answer is the same."""
        from nim_agent import metrics

        uid = str(((pod or {}).get("metadata") or {}).get("uid") or "")
        if result.phase is Phase.SUCCEEDED:
            metrics.observe_ready(uid, result.custom_info.get("time_to_ready_s"))
            return
        if result.phase not in (Phase.FAILED, Phase.RETRYABLE_FAILED) or pod is None:
            return
        metrics.count_failure(_served_key(uid, meta), result.reason.value)
        if meta.shared:
            # A holder's failure (its adapters) is not the server's: the others keep it. A
            # failing server is stopped by the cleanup sweep, which sees the pod itself.
            return
        if (
            stop_record(pod) is not None
            or deletion_cause(pod)
            or (pod.get("metadata") or {}).get("deletionTimestamp")
        ):
            return
        ended = str((pod.get("status") or {}).get("phase") or "") in ("Failed", "Succeeded")
        if self.settings.keep_failed and not ended:
            return
        from nim_agent.reaper import stop_deployment, stop_record_for

        # The kubelet's ttl backstop (DeadlineExceeded) is recorded as the sweep records it.
        cause = TTL if ended and result.reason is Reason.TTL_EXPIRED else FAILURE
        record = stop_record_for(cause, result, now=now, detail=None if ended else "")
        await stop_deployment(kube, pod, record)

    def _log_links(self, meta: NIMMetadata) -> list[TaskLog] | None:
        links = self.settings.log_links_for(meta.namespace, meta.name, NIM_CONTAINER)
        return [TaskLog(name=name, uri=uri) for name, uri in links] or None

    # -- delete ---------------------------------------------------------------------------

    def delete(self, resource_meta: NIMMetadata, **kwargs: Any) -> None:
        """Abort: delete the Pod and the Service. Deleting what is gone is success.

        Deliberately synchronous: flytekit's local runner calls ``delete`` from its Ctrl-C
        signal handler while its own event loop is running, where an ``async def`` cannot be
        run (flytekit would try ``asyncio.run`` inside the running loop). The server calls it
        in an executor thread. Either way it runs on a fresh loop of its own, in a helper thread
        when the calling thread already runs one.
        """
        meta = resource_meta
        if meta.error or not meta.name:
            return
        from nim_agent.runtime import run_to_completion

        run_to_completion(self._delete(meta))

    async def _delete(self, meta: NIMMetadata) -> None:
        from nim_agent.kube import Kube
        from nim_agent.reaper import delete_deployment

        kube = await Kube.connect()  # this loop is short-lived: its own client, closed after
        try:
            if meta.shared:
                await release_holder(kube, meta.namespace, meta.shared, meta.name, by=ABORT)
                return
            pod = await kube.get_pod(meta.namespace, meta.name)
            service = None if pod is not None else await kube.get_service(meta.namespace, meta.name)
            found = pod if pod is not None else service
            if found is not None and not is_ours(found):
                # resource_meta arrives over gRPC: never delete what nim-agent did not make.
                log.warning(
                    "DeleteTask for %s/%s: not a nim-agent deployment; nothing deleted",
                    meta.namespace,
                    meta.name,
                )
                return
            await delete_deployment(
                kube,
                meta.namespace,
                meta.name,
                cause=ABORT,
                detail="the Flyte execution was aborted",
            )
        finally:
            await kube.close()

    # -- teardown -------------------------------------------------------------------------

    async def teardown(
        self,
        namespace: str,
        name: str,
        *,
        owner: tuple[str, str] | None = None,
        force: bool = False,
    ) -> str:
        """Delete one of our deployments now (the ``nim-teardown`` task, ``nim-agent teardown``).

        Only pods nim-agent made are touched; a deployment already gone is success. ``owner``
        (project, domain): a deployment of another Flyte project or domain is refused, unless
        ``force`` (logged); ("", "") stands for a local run, whose teardown may remove only
        deployments of local runs. Returns a sentence saying what happened.
        """
        from nim_agent.reaper import delete_deployment

        kube = await self.kube()
        pod = await kube.get_pod(namespace, name)
        if pod is None:
            service = await kube.get_service(namespace, name)
            labels = ((service or {}).get("metadata") or {}).get("labels") or {}
            if is_ours(service) and labels.get(LABEL_HOLDER) == name:
                return await self._release_by_teardown(kube, namespace, name, labels, owner, force)
            return f"NIM deployment {namespace}/{name} was already gone"
        if not is_ours(pod):
            raise PermissionError(
                f"pod {namespace}/{name} was not made by nim-agent; not deleting it"
            )
        labels = (pod.get("metadata") or {}).get("labels") or {}
        _check_owner(f"NIM deployment {namespace}/{name}", "deleting", labels, owner, force)
        await delete_deployment(kube, namespace, name, cause=TEARDOWN, detail="requested")
        return f"deleted NIM deployment {namespace}/{name}"

    async def _release_by_teardown(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        labels: Mapping[str, str],
        owner: tuple[str, str] | None,
        force: bool,
    ) -> str:
        """Teardown of a holder's endpoint: release that holder of its shared server."""
        shared = str(labels.get(LABEL_DEPLOYMENT) or "")
        _check_owner(f"NIM endpoint {namespace}/{name}", "releasing", labels, owner, force)
        await release_holder(kube, namespace, shared, name, by=TEARDOWN)
        return (
            f"released {namespace}/{name} from the shared NIM server {shared} (it keeps serving "
            "its other holders, and stops once idle)"
        )


async def release_holder(kube: Kube, namespace: str, shared: str, holder: str, *, by: str) -> bool:
    """End a holder's hold on a shared server: its record marked ended (one merge patch of its own
    annotation) and its Service deleted. The server keeps serving its other holders; when this
    was the last, its idle countdown starts. Idempotent: True when a live record was ended."""
    from nim_agent import metrics
    from nim_agent.kube import NotFound

    pod = await kube.get_pod(namespace, shared)
    released = False
    record = holder_records(pod).get(holder) if is_ours(pod) else None
    if record is not None and record.ended is None:
        ended = dataclasses.replace(record, ended=datetime.now(UTC), ended_by=by)
        with contextlib.suppress(NotFound):
            await kube.patch_pod_annotations(
                namespace, shared, {holder_key(holder): ended.to_annotation()}
            )
            released = True
            metrics.RELEASES.labels(by).inc()
            log.info("released %s/%s from shared NIM server %s (%s)", namespace, holder, shared, by)
    service = await kube.get_service(namespace, holder)
    labels = ((service or {}).get("metadata") or {}).get("labels") or {}
    if is_ours(service) and labels.get(LABEL_HOLDER) == holder:
        await kube.delete_service(namespace, holder)
    return released


# -- helpers ------------------------------------------------------------------------------


def _execution_of(
    metadata: TaskExecutionMetadata | None,
) -> tuple[ExecutionIdentity | None, str | None]:
    """The Flyte execution identity and namespace; (None, None) for a local run."""
    if metadata is None or metadata.task_execution_id is None:
        return None, None
    task_exec = metadata.task_execution_id
    node_exec = task_exec.node_execution_id
    wf_exec = node_exec.execution_id if node_exec is not None else None
    if wf_exec is None or not wf_exec.name:
        return None, metadata.namespace or None
    return (
        ExecutionIdentity(
            project=wf_exec.project,
            domain=wf_exec.domain,
            execution=wf_exec.name,
            node=node_exec.node_id,
            retry=int(task_exec.retry_attempt or 0),
        ),
        metadata.namespace or None,
    )


def _directory_uri(literal: Any) -> tuple[str | None, str]:
    """(URI, "") of a FlyteDirectory literal, else (None, what it is instead)."""
    scalar = getattr(literal, "scalar", None)
    blob = getattr(scalar, "blob", None) if scalar is not None else None
    if blob is None:
        return None, "is not a FlyteDirectory"
    if blob.metadata.type.dimensionality != BlobType.BlobDimensionality.MULTIPART:
        return None, "is a file (FlyteFile); an adapter is a folder: pass a FlyteDirectory"
    return str(blob.uri), ""


def adapters_of(inputs: LiteralMap | None) -> dict[str, str]:
    """The LoRA adapters a NIM task's inputs give, {adapter name: folder URI}, ordered by input
    name, then key (protobuf maps keep no order: this one is the same however the inputs came).

    A FlyteDirectory input is one adapter named after the input; a ``dict[str, FlyteDirectory]``
    input gives one adapter per key. Anything else, an invalid adapter name or a name given
    twice is a ConfigError naming the input (``inputs.<name>`` or ``inputs.<name>[<key>]``).
    """
    found: dict[str, str] = {}
    problems: list[Problem] = []

    def add(where: str, name: str, literal: Any) -> None:
        uri, why = _directory_uri(literal)
        if uri is None:
            problems.append(Problem(where, why))
        elif message := check_adapter_name(name):
            problems.append(Problem(where, message))
        elif name in found:
            problems.append(Problem(where, f"adapter {name!r} is given twice; rename one"))
        else:
            found[name] = uri

    for name, literal in sorted((inputs.literals if inputs is not None else {}).items()):
        entries = getattr(getattr(literal, "map", None), "literals", None)
        if entries is not None:
            for key, item in sorted(entries.items()):
                add(f"inputs.{name}[{key}]", key, item)
        elif getattr(literal, "scalar", None) is not None:
            add(f"inputs.{name}", name, literal)
        else:
            problems.append(
                Problem(
                    f"inputs.{name}",
                    "is not a FlyteDirectory or a dict of them: a NIM task's inputs are its LoRA "
                    "adapters",
                )
            )
    if problems:
        raise ConfigError(problems)
    return found


# A holder waiting for adapters the shared server does not list yet: the adapter-sync sidecar's
# log is read after this long (a hot-add takes seconds), and then at most every few seconds.
_SYNC_LOG_GRACE = timedelta(seconds=3)
_SYNC_LOG_EVERY_S = 5.0


def _served_key(uid: str, meta: NIMMetadata) -> str:
    return f"{uid}/{meta.name}" if meta.shared else uid


def _execution_from(doc: Mapping[str, Any]) -> ExecutionIdentity | None:
    """The Flyte identity in a holder record (None for a local run)."""
    try:
        return ExecutionIdentity(
            project=str(doc["project"]),
            domain=str(doc["domain"]),
            execution=str(doc["execution"]),
            node=str(doc["node"]),
            retry=int(doc.get("retry") or 0),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _describe(execution: ExecutionIdentity | None, task_name: str) -> str:
    if execution is None:
        return f"local run of {task_name}"
    e = execution
    return f"{e.project}/{e.domain}/{e.execution} node {e.node} attempt {e.retry}"


def _refused(meta: NIMMetadata, why: str) -> NIMMetadata:
    log.warning("refused NIM deployment %s/%s: %s", meta.namespace, meta.name, why)
    return NIMMetadata(namespace=meta.namespace, name=meta.name, error=f"Cannot deploy: {why}")


async def _best_effort(call: Awaitable[T], fallback: T, meta: NIMMetadata) -> T:
    """Extra detail for a message (events, a log tail): on any API error, do without it.

    Logs come through the kubelet, which may be unreachable (node gone; always on kwok's fake
    nodes) or forbidden (no pods/log RBAC): the phase is still right without them.
    """
    from nim_agent.kube import KubeError

    try:
        return await call
    except KubeError as exc:
        log.warning("detail for pod %s/%s unavailable: %s", meta.namespace, meta.name, exc)
        return fallback


def _check_owner(
    what: str, doing: str, labels: Mapping[str, str], owner: tuple[str, str] | None, force: bool
) -> None:
    """A teardown acts only within its own Flyte project and domain, unless forced (logged)."""
    belongs = (labels.get(LABEL_PREFIX + "project", ""), labels.get(LABEL_PREFIX + "domain", ""))
    if owner is None or belongs == owner:
        return
    whose = "/".join(belongs) if any(belongs) else "a local run"
    mine = "/".join(owner) if any(owner) else "a local run"
    if not force:
        raise PermissionError(
            f"{what} belongs to {whose}, not to {mine}; not {doing} it "
            "(NIMTeardownTask(force=True) overrides this)"
        )
    log.warning("teardown of %s (of %s) forced by %s", what, whose, mine)


def _wants_events(result: Classification) -> bool:
    """Events add the scheduler's and kubelet's words; read them only while they matter.

    A server container that has restarted counts too: only the kubelet's ``Killing`` event
    says that its startup probe killed it (a startup timeout, at the first kill); its status
    shows a plain exit, and would wait for the crash-loop threshold. So does a server that has
    served and is unready now: its message quotes the kubelet's last failed probe.
    """
    if result.phase in (
        Phase.QUEUED,
        Phase.WAITING_FOR_RESOURCES,
        Phase.INITIALIZING,
        Phase.FAILED,
        Phase.RETRYABLE_FAILED,
    ):
        return True
    if result.reason is Reason.SERVING_INTERRUPTED:
        return True  # the kubelet's last probe failure says why a server that served is unready
    restarts = result.custom_info.get("restarts") or {}
    return result.reason in (Reason.RESTARTING, Reason.LOADING_MODEL) and bool(
        restarts.get(NIM_CONTAINER)
    )


class NIMTeardownConnector(SyncConnectorBase):  # type: ignore[misc]
    """Task type ``nim-teardown``: delete the deployment behind an ``endpoint`` right away."""

    name = "NIM Teardown Connector"

    def __init__(self, main: NIMConnector) -> None:
        super().__init__(task_type_name=TEARDOWN_TASK_TYPE)
        self._main = main

    async def do(
        self,
        task_template: TaskTemplate,
        output_prefix: str | None = None,
        inputs: LiteralMap | None = None,
        **kwargs: Any,
    ) -> Resource:
        endpoint = ""
        if inputs is not None and "endpoint" in inputs.literals:
            scalar = inputs.literals["endpoint"].scalar
            endpoint = scalar.primitive.string_value if scalar and scalar.primitive else ""
        target = deployment_of_endpoint(endpoint)
        if target is None:
            return Resource(
                phase=TaskExecution.FAILED,
                message=f"endpoint: {endpoint!r} is not the endpoint of a NIM deployment "
                "(expected http://<name>.<namespace>.svc.cluster.local:<port>, as NIMTask outputs)",
            )
        name, namespace = target
        # flytekit passes a sync connector no execution metadata: the teardown task's own
        # registered identity says which project and domain it runs for ("" for local runs).
        owner = (task_template.id.project or "", task_template.id.domain or "")
        force = bool((task_template.custom or {}).get("force"))
        try:
            message = await self._main.teardown(namespace, name, owner=owner, force=force)
        except PermissionError as exc:
            return Resource(phase=TaskExecution.FAILED, message=str(exc))
        return Resource(phase=TaskExecution.SUCCEEDED, message=message, outputs={})


_nim = NIMConnector()
ConnectorRegistry.register(_nim)
ConnectorRegistry.register(NIMTeardownConnector(_nim))
