"""The naive design, for comparison: task type ``nim-baseline``, loaded only by the benchmark.

It renders and creates exactly the objects nim-agent creates (same ``render_pod`` /
``render_service``, same ``classify``), but answers every GetTask by reading the pod from the API
server with the synchronous kubernetes client, as flytekit's k8sdataservice connector does. Its
methods are plain functions, so flytekit's server runs each call in its executor thread pool.

Two deliberate differences from nim-agent's objects, so that the two populations of a benchmark
run do not see each other: the pods and Services carry ``app.kubernetes.io/managed-by:
nim-baseline`` (nim-agent's watch cache and reaper select ``nim-agent``), and the baseline reads
the pod as raw JSON instead of building the client's pydantic ``V1Pod`` model. The second is
generous to the baseline: only the API round trip per GetTask is left to compare.

Registered by ``pyflyte serve connector --modules benchmarks.baseline_connector`` in the
benchmark's server process only; nothing in ``nim_agent`` imports it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flytekit.extend.backend.base_connector import (
    AsyncConnectorBase,
    ConnectorRegistry,
    Resource,
    ResourceMeta,
)
from kubernetes import client, config

from nim_agent.connector import _execution_of
from nim_agent.contract import LABEL_MANAGED_BY
from nim_agent.render import DeploymentIdentity, render_pod, render_service
from nim_agent.settings import ConnectorSettings
from nim_agent.spec import from_custom
from nim_agent.status import Phase, StatusPolicy, classify, flyte_phase, policy_for

TASK_TYPE = "nim-baseline"
MANAGED_BY = "nim-baseline"


@dataclass
class BaselineMetadata(ResourceMeta):  # type: ignore[misc]
    namespace: str = ""
    name: str = ""
    endpoint: str = ""


class NIMBaselineConnector(AsyncConnectorBase):  # type: ignore[misc]
    """create/get/delete with one blocking API request (or more) per call, in a thread."""

    name = "NIM Baseline Connector"

    def __init__(self) -> None:
        super().__init__(task_type_name=TASK_TYPE, metadata_type=BaselineMetadata)
        self._core: client.CoreV1Api | None = None
        self._lock = threading.Lock()
        self._settings = ConnectorSettings.load()

    @property
    def core(self) -> client.CoreV1Api:
        with self._lock:
            if self._core is None:
                self._core = client.CoreV1Api(config.new_client_from_config())
            return self._core

    def create(
        self,
        task_template: Any,
        output_prefix: str | None = None,
        inputs: Any = None,
        task_execution_metadata: Any = None,
        **kwargs: Any,
    ) -> BaselineMetadata:
        spec = from_custom(task_template.custom or {})
        execution, namespace = _execution_of(task_execution_metadata)
        assert execution is not None and namespace, "the benchmark always sends an execution"
        identity = DeploymentIdentity.for_execution(
            execution,
            namespace,
            task_name=task_template.id.name,
            expires_at=datetime.now(UTC) + spec.ttl,
        )
        pod = _relabel(render_pod(spec.nim, identity, self._settings))
        created = self.core.create_namespaced_pod(namespace, pod, _preload_content=False)
        uid = json.loads(created.data)["metadata"]["uid"]
        service = _relabel(render_service(spec.nim, identity, pod_uid=uid))
        self.core.create_namespaced_service(namespace, service, _preload_content=False)
        return BaselineMetadata(
            namespace=namespace, name=identity.name, endpoint=identity.endpoint(spec.nim.port)
        )

    def get(self, resource_meta: BaselineMetadata, **kwargs: Any) -> Resource:
        meta = resource_meta
        try:
            raw = self.core.read_namespaced_pod(meta.name, meta.namespace, _preload_content=False)
            pod: dict[str, Any] | None = json.loads(raw.data)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            pod = None
        now = datetime.now(UTC)
        policy = policy_for(pod, StatusPolicy())
        result = classify(pod, now=now, policy=policy, endpoint=meta.endpoint)
        if pod is not None and result.phase not in (Phase.RUNNING, Phase.SUCCEEDED):
            events = self.core.list_namespaced_event(
                meta.namespace,
                field_selector=f"involvedObject.kind=Pod,involvedObject.name={meta.name}",
                _preload_content=False,
            )
            items = json.loads(events.data).get("items") or []
            result = classify(pod, events=items, now=now, policy=policy, endpoint=meta.endpoint)
        return Resource(
            phase=flyte_phase(result.phase),
            message=result.message,
            outputs=result.outputs,
            custom_info=result.custom_info or None,
        )

    def delete(self, resource_meta: BaselineMetadata, **kwargs: Any) -> None:
        try:
            self.core.delete_namespaced_pod(
                resource_meta.name, resource_meta.namespace, _preload_content=False
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise


def _relabel(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["labels"][LABEL_MANAGED_BY] = MANAGED_BY
    return obj


ConnectorRegistry.register(NIMBaselineConnector())
