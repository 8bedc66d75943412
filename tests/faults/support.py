"""What the fault and abuse tests share: task templates, a tracker of what they created, counts.

Every deployment a test creates goes through :class:`Deployments`, which aborts them all at the
end (as Flyte would on abort, or the ttl later): the leak audit (marker ``leak_audit``, see
tests/conftest.py) then expects no pod or Service of ours in the test's namespace, so anything a
fault left behind is reported. Every test module of the suite opts into that audit.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import grpc
from flyteidl.core import execution_pb2

from nim_agent import NIM, NIMTask
from tests.cluster import GPU_TOLERATION
from tests.configs import simulated_nim as nim
from tests.connector_server import (
    ConnectorServer,
    create_request,
    delete_request,
    exec_name,
    execution,
    get_request,
    task_template,
)

TE = execution_pb2.TaskExecution

# Counts reported at the end of the run (see conftest.py): faults injected, bad inputs tried,
# requests sent under load.
COUNTS: Counter[str] = Counter()


def phase_name(phase: int) -> str:
    return str(TE.Phase.Name(phase))


def small(mode: str = "ready", **overrides: Any) -> NIM:
    """A NIM without a GPU, small enough for hundreds at once on the fake nodes (110 pods each;
    the GPU nodes' taint is tolerated so that all five nodes take them)."""
    fields: dict[str, Any] = {
        "gpu": 0,
        "cpu": "100m",
        "mem": "256Mi",
        "shm_size": "64Mi",
        "tolerations": [GPU_TOLERATION],
    }
    return nim(mode, **{**fields, **overrides})


def initializing(init_time: str = "10m", **overrides: Any) -> NIM:
    """A NIM whose LoRA download init container runs for ``init_time`` (phase INITIALIZING)."""
    return nim(
        "ready",
        hf_repo_ids=["tloen/alpaca-lora-7b"],
        lora_adapter_mem="1Gi",
        env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        annotations={"nim-agent.dev/simulate-init-time": init_time},
        **overrides,
    )


def template(
    config: NIM | None = None, ttl: timedelta = timedelta(hours=1), name: str = "f"
) -> Any:
    return task_template(NIMTask(name=f"faults.{name}", nim=config or nim(), ttl=ttl))


def get(server: ConnectorServer, meta: bytes, timeout: float = 10) -> Any:
    return server.stub.GetTask(get_request(meta), timeout=timeout).resource


def try_get(server: ConnectorServer, meta: bytes, timeout: float = 5) -> tuple[Any, str]:
    """(resource, "") or (None, the gRPC status code name)."""
    try:
        return get(server, meta, timeout), ""
    except grpc.RpcError as exc:
        return None, exc.code().name


class Deployments:
    """Deployments created by one test through one connector (changeable: a restarted one)."""

    def __init__(self, server: ConnectorServer, namespace: str) -> None:
        self.server = server
        self.namespace = namespace
        self.metas: dict[str, bytes] = {}  # execution name -> resource_meta

    def request(self, config: NIM | None = None, *, name: str | None = None, **kw: Any) -> Any:
        task_execution = execution(name or exec_name())
        return create_request(template(config, **kw), task_execution, self.namespace)

    def create(
        self, config: NIM | None = None, *, name: str | None = None, timeout: float = 10, **kw: Any
    ) -> bytes:
        name = name or exec_name()
        meta: bytes = self.server.stub.CreateTask(
            self.request(config, name=name, **kw), timeout=timeout
        ).resource_meta
        self.metas[name] = meta
        return meta

    def pod_name(self, meta: bytes) -> str:
        return str(json.loads(meta)["name"])

    def abort_all(self) -> None:
        for meta in self.metas.values():
            self.server.stub.DeleteTask(delete_request(meta), timeout=30)


def wait_phases(
    server: ConnectorServer,
    expected: dict[bytes, int],
    *,
    timeout: float,
    interval: float = 0.1,
) -> dict[bytes, str]:
    """GetTask every deployment until each reports its expected phase; the last answers seen.

    Raises AssertionError listing the deployments still wrong after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    seen: dict[bytes, str] = {}
    while True:
        for meta in expected:
            resource, error = try_get(server, meta)
            seen[meta] = error or f"{phase_name(resource.phase)}: {resource.message[:120]}"
        wrong = {
            json.loads(m)["name"]: s
            for m, s in seen.items()
            if not s.startswith(phase_name(expected[m]) + ":")
        }
        if not wrong:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"still wrong after {timeout:.1f}s: {wrong}")
        time.sleep(interval)
