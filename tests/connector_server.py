"""The connector as flytepropeller sees it: a server process, called through flyteidl's stubs.

Used by the end-to-end tests and the benchmarks. :class:`ConnectorServer` runs
``pyflyte serve connector`` (or ``nim-agent serve``) as a subprocess against the local control
plane; :func:`create_request` builds the CreateTaskRequest flytepropeller would send for a
``NIMTask`` of a given Flyte execution.

Example::

    with ConnectorServer(kubeconfig) as server:
        meta = server.stub.CreateTask(create_request(task, execution("e1"), "ns")).resource_meta
        resource = server.stub.GetTask(get_request(meta)).resource
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import grpc
from flyteidl.admin import agent_pb2
from flyteidl.core import execution_pb2, identifier_pb2
from flyteidl.service import agent_pb2_grpc
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.tools.translator import get_serializable

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
Phase = execution_pb2.TaskExecution.Phase
TERMINAL = {
    execution_pb2.TaskExecution.SUCCEEDED,
    execution_pb2.TaskExecution.FAILED,
    execution_pb2.TaskExecution.RETRYABLE_FAILED,
    execution_pb2.TaskExecution.ABORTED,
}


# kwok's pods run no process: nothing answers GET /v1/models at their (fake) addresses, so the
# connector's check that a Ready server serves is off for them unless a test sets
# NIM_AGENT_SERVING_CHECK itself (the real node's pods serve: tests/e2e/test_serving_real_node.py).
KWOK_SETTINGS = {"NIM_AGENT_SERVING_CHECK": "off"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Process:
    """A helper process for tests: ``with`` starts it and stops it whatever happens."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ConnectorServer(Process):
    """A connector gRPC server subprocess (ports chosen free), stopped on exit."""

    def __init__(
        self,
        kubeconfig: Path,
        *,
        settings: Mapping[str, str] | None = None,
        command: str = "pyflyte",
        log_path: Path | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.settings = dict(settings or {})
        self.command = command
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path or Path(f"/tmp/nim-agent-connector-{self.port}.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self._stub: agent_pb2_grpc.AsyncAgentServiceStub | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        if self.command == "pyflyte":
            return [
                str(VENV_BIN / "pyflyte"),
                "serve",
                "connector",
                "--port",
                str(self.port),
                "--prometheus_port",
                str(self.metrics_port),
            ]
        return [
            str(VENV_BIN / "nim-agent"),
            "serve",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
        ]

    def start(self, timeout: float = 60.0) -> Self:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NIM_AGENT_")},
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            # A cleanup Lease of its own, so that the servers of different tests never wait for
            # each other's Lease; replicas of one deployment share theirs (set it in settings).
            "NIM_AGENT_LEASE_NAME": f"nim-agent-test-{self.port}",
            **KWOK_SETTINGS,
            **self.settings,
        }
        self._log = open(self.log_path, "ab")  # noqa: SIM115  closed in stop()
        for attempt in range(3):
            self.process = subprocess.Popen(
                self.argv(), env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
            )
            self.channel = grpc.insecure_channel(self.address)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    grpc.channel_ready_future(self.channel).result(timeout=1)
                except grpc.FutureTimeoutError:
                    if self.process.poll() is not None:
                        break  # exited: look at why below
                    continue
                self._stub = agent_pb2_grpc.AsyncAgentServiceStub(self.channel)
                return self
            # A port picked free may be taken by another process before the server binds it
            # (other test sessions run on this machine): pick new ones and start again.
            if (
                self.process.poll() is not None
                and "Failed to bind" in self.log_tail()
                and attempt < 2
            ):
                self.channel.close()
                self.port, self.metrics_port = free_port(), free_port()
                if "NIM_AGENT_LEASE_NAME" not in self.settings:
                    env["NIM_AGENT_LEASE_NAME"] = f"nim-agent-test-{self.port}"
                continue
            break
        self.stop()
        raise AssertionError(
            f"the connector did not serve on {self.address} within {timeout:.0f}s:\n"
            + self.log_tail()
        )

    @property
    def stub(self) -> agent_pb2_grpc.AsyncAgentServiceStub:
        assert self._stub is not None, "server not started"
        return self._stub

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample (0 when absent)."""
        want = {k: v for k, v in labels.items()}
        total = 0.0
        for line in self.metrics().splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in want.items()):
                total += float(m.group(3))
        return total

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()


class Connectors:
    """Connector servers started by tests against one control plane, each logging to its own
    file in ``logs``; ``stop_all`` stops those still running (the fixtures call it)."""

    _count = itertools.count()

    def __init__(self, kubeconfig: Path, logs: Path) -> None:
        self.kubeconfig, self.logs = kubeconfig, logs
        self.started: list[ConnectorServer] = []

    def start(
        self, settings: Mapping[str, str] | None = None, *, command: str = "pyflyte"
    ) -> ConnectorServer:
        """A started server with these ``NIM_AGENT_*`` settings (``command``: pyflyte serve
        connector, or nim-agent serve)."""
        log = self.logs / f"{command}-{next(self._count)}.log"
        server = ConnectorServer(self.kubeconfig, settings=settings, command=command, log_path=log)
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


# -- requests, as flytepropeller builds them ---------------------------------------------


def task_template(task: Any) -> Any:
    """The TaskTemplate proto flytekit serializes for ``task`` (a NIMTask)."""
    settings = SerializationSettings(ImageConfig.auto_default_image())
    return get_serializable(OrderedDict(), settings, task).template.to_flyte_idl()


def execution(
    name: str,
    *,
    project: str = "flytesnacks",
    domain: str = "development",
    node: str = "n0",
    retry: int = 0,
    task_name: str = "llama",
) -> identifier_pb2.TaskExecutionIdentifier:
    return identifier_pb2.TaskExecutionIdentifier(
        task_id=identifier_pb2.Identifier(
            resource_type=identifier_pb2.TASK,
            project=project,
            domain=domain,
            name=task_name,
            version="v1",
        ),
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(
            node_id=node,
            execution_id=identifier_pb2.WorkflowExecutionIdentifier(
                project=project, domain=domain, name=name
            ),
        ),
        retry_attempt=retry,
    )


def create_request(
    template: Any,
    task_execution_id: identifier_pb2.TaskExecutionIdentifier | None,
    namespace: str,
    inputs: Any = None,
) -> agent_pb2.CreateTaskRequest:
    """CreateTask as flytepropeller sends it; `inputs` is a flyteidl LiteralMap (the task's)."""
    metadata = agent_pb2.TaskExecutionMetadata(namespace=namespace)
    if task_execution_id is not None:
        metadata.task_execution_id.CopyFrom(task_execution_id)
    return agent_pb2.CreateTaskRequest(
        template=template,
        output_prefix="/tmp/nim-agent-e2e",
        task_execution_metadata=metadata,
        inputs=inputs,
    )


def get_request(resource_meta: bytes, task_type: str = "nim") -> agent_pb2.GetTaskRequest:
    return agent_pb2.GetTaskRequest(
        resource_meta=resource_meta, task_category=agent_pb2.TaskCategory(name=task_type, version=0)
    )


def delete_request(resource_meta: bytes, task_type: str = "nim") -> agent_pb2.DeleteTaskRequest:
    return agent_pb2.DeleteTaskRequest(
        resource_meta=resource_meta, task_category=agent_pb2.TaskCategory(name=task_type, version=0)
    )


class Connector(Protocol):
    """What tests call a connector through: a process here (ConnectorServer) or a release of the
    chart (tests.chart_release.ChartRelease)."""

    @property
    def stub(self) -> agent_pb2_grpc.AsyncAgentServiceStub: ...


def poll(
    server: Connector,
    resource_meta: bytes,
    *,
    until: Callable[[Any], bool] = lambda r: r.phase in TERMINAL,
    timeout: float = 60.0,
    interval: float = 0.25,
) -> tuple[Any, list[str]]:
    """GetTask until ``until(resource)``; returns it and the phases seen (names, in order)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        resource = server.stub.GetTask(get_request(resource_meta), timeout=10).resource
        name = execution_pb2.TaskExecution.Phase.Name(resource.phase)
        if not seen or seen[-1] != name:
            seen.append(name)
        if until(resource):
            return resource, seen
        if time.monotonic() > deadline:
            raise AssertionError(
                f"GetTask did not reach the expected state in {timeout:.0f}s; phases seen: "
                f"{seen}; last message: {resource.message!r}"
            )
        time.sleep(interval)


def exec_name() -> str:
    """A fresh Flyte execution name."""
    return f"e{uuid.uuid4().hex[:10]}"


def output_string(resource: Any, name: str = "endpoint") -> str:
    value: str = resource.outputs.literals[name].scalar.primitive.string_value
    return value
