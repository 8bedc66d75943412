"""flytepropeller as tests use it: the real caller of the connector, on the local control plane.

:class:`Propeller` starts ``devcluster/propeller/run.sh`` with its own state folder (config, log,
events, storage) and free ports, pointed at a connector's gRPC port, and drives workflows with
``devcluster/propeller/flyte_run.py`` (create / wait / outputs), the script people use by hand.

Example::

    with ConnectorServer(kubeconfig, command="nim-agent") as connector:
        with Propeller(kubeconfig, f"dns:///{connector.address}", state_dir, binary) as propeller:
            execution = propeller.create("tests.e2e.propeller_workflows:endpoint_wf", "ns")
            status = propeller.wait("ns", execution)
            outputs = propeller.outputs("ns", execution)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

from tests.connector_server import Process, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
PROPELLER_DIR = REPO_ROOT / "devcluster" / "propeller"
RUN_SH = PROPELLER_DIR / "run.sh"
FLYTE_RUN = PROPELLER_DIR / "flyte_run.py"


def other_propellers(binary: Path) -> list[str]:
    """Running flytepropeller processes (pid and command line), from /proc.

    Two propellers watching the same cluster would both run the tests' workflows.
    """
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if Path(exe).name == binary.name or Path(exe) == binary.resolve():
            found.append(f"pid {proc.name}: {cmdline}")
    return found


class Propeller(Process):
    """One flytepropeller process (devcluster/propeller/run.sh), stopped on exit."""

    def __init__(
        self, kubeconfig: Path, connector_endpoint: str, state_dir: Path, binary: Path
    ) -> None:
        """``connector_endpoint``: a gRPC target as propeller's configuration takes it, e.g.
        ``dns:///127.0.0.1:8000``, or ``dns://<dns server>/<name>:<port>`` to have that DNS
        server resolve the name."""
        self.kubeconfig = kubeconfig
        self.state_dir = state_dir
        self.binary = binary
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBECTL_FLYTE": str(binary.parent / "kubectl-flyte"),
            "PROPELLER_STATE": str(state_dir),
            "PROPELLER_KUBECONFIG": str(kubeconfig),
            "PROPELLER_CONNECTOR_ENDPOINT": connector_endpoint,
            "PROPELLER_PROF_PORT": str(free_port()),
        }
        self.start_seconds = 0.0

    @property
    def log_path(self) -> Path:
        return self.state_dir / "propeller.log"

    @property
    def events_path(self) -> Path:
        return self.state_dir / "events.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60, grep: str = "") -> str:
        return "\n".join([line for line in self.log().splitlines() if grep in line][-lines:])

    def connector_call_errors(self) -> list[str]:
        """Propeller's log lines of connector calls that failed (GetTask, CreateTask, the sync
        ExecuteTaskSync, DeleteTask; flyteplugins webapi/connector's own wording). A failed
        GetTask counts towards the task's maxSystemFailures for its whole life."""
        marks = (
            "failed to get task from connector",
            "failed to create task from connector",
            "failed to execute task from connector",
            "failed to delete task from connector",
        )
        return [line for line in self.log().splitlines() if any(m in line for m in marks)]

    def events(self, execution_id: str) -> list[str]:
        """Execution events (file sink), one line each, of one execution."""
        try:
            text = self.events_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if f'name:"{execution_id}"' in line]

    def start(self) -> Self:
        others = other_propellers(self.binary)
        if others:
            raise AssertionError(
                "another flytepropeller runs on this machine and would run the tests' workflows "
                "too; stop it first (devcluster/propeller/run.sh stop):\n" + "\n".join(others)
            )
        started = time.monotonic()
        result = self._run_sh("start", timeout=180)
        self.start_seconds = time.monotonic() - started
        if result.returncode != 0:
            raise AssertionError(
                f"devcluster/propeller/run.sh start failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- propeller log ---\n{self.log_tail()}"
            )
        return self

    def stop(self) -> None:
        result = self._run_sh("stop", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr

    def running(self) -> bool:
        return self._run_sh("status", timeout=30).returncode == 0

    def _run_sh(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RUN_SH), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- workflows, through devcluster/propeller/flyte_run.py ------------------------------

    def flyte_run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(FLYTE_RUN), *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def create(self, workflow: str, namespace: str, execution_id: str) -> str:
        """Serialize ``MODULE:WORKFLOW`` and create its FlyteWorkflow; the execution id."""
        result = self.flyte_run("create", workflow, "-n", namespace, "--execution-id", execution_id)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.strip().splitlines()[-1]

    def wait(self, namespace: str, execution_id: str, timeout: float = 180) -> dict[str, Any]:
        """The workflow's status once terminal (AssertionError when it is not in time)."""
        result = self.flyte_run(
            "wait", execution_id, "-n", namespace, "--timeout", str(timeout), timeout=timeout + 60
        )
        assert result.returncode in (0, 1), (
            f"flyte_run wait exited {result.returncode}: {result.stdout}{result.stderr}\n"
            f"--- propeller log ---\n{self.log_tail(grep=execution_id)}"
        )
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    def phase(self, namespace: str, execution_id: str) -> str:
        """The workflow's phase now (flyte_run wait without waiting: exit 3 = not finished)."""
        result = self.flyte_run("wait", execution_id, "-n", namespace, "--timeout", "0")
        assert result.returncode in (0, 1, 3), result.stdout + result.stderr
        return str(json.loads(result.stdout)["phase"])

    def outputs(self, namespace: str, execution_id: str, node: str | None = None) -> Any:
        args = ["outputs", execution_id, "-n", namespace] + (["--node", node] if node else [])
        result = self.flyte_run(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)
