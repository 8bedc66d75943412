"""Faults of the local control plane: take its kube-apiserver down and bring it back.

``devcluster/cluster.sh`` runs the components through ``kwokctl --runtime binary``: each is a
local process whose pid kwokctl records in ``<cluster>/pids/<component>.pid``. kwokctl 0.8 has no
"stop one component", so an outage is made the way a crash happens: SIGKILL the apiserver's
process (only when its command line names this cluster's folder). ``kwokctl start cluster`` then
starts every component whose pid file is gone, with the exact flags it created the cluster with;
pid files of processes that died are removed first, or kwokctl would believe they still run.

kube-controller-manager and kube-scheduler exit by design when they cannot renew their leader
Lease for 10 s: :meth:`ControlPlane.heal` restarts whatever died and waits until both hold their
Lease again, so a test leaves the control plane as healthy as it found it.

Example::

    plane = ControlPlane.from_env()
    outage = plane.restart_apiserver(down_for=4)   # killed, down 4 s, started, /readyz ok
    plane.heal()
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.cluster import DEVCLUSTER, KUBECONFIG

APISERVER = "kube-apiserver"
LEADERS = ("kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class Outage:
    """One apiserver outage: monotonic times of the kill and of /readyz answering again."""

    killed_at: float
    ready_at: float
    ready_wall: datetime

    @property
    def seconds(self) -> float:
        return self.ready_at - self.killed_at


class ControlPlane:
    """The local control plane's processes, as kwokctl recorded them."""

    def __init__(self, state: Path, name: str, kubeconfig: Path) -> None:
        self.state = state
        self.name = name
        self.kubeconfig = kubeconfig
        self.cluster_dir = state / "kwok" / "clusters" / name
        self.bin = state / "bin"
        self.log = state / "faults-kwokctl.log"
        self.faults_injected = 0

    @classmethod
    def from_env(cls) -> ControlPlane:
        """The control plane tests.cluster uses (DEVCLUSTER_DIR, NIM_AGENT_CLUSTER)."""
        return cls(DEVCLUSTER, os.environ.get("NIM_AGENT_CLUSTER", "nim-agent"), KUBECONFIG)

    # -- processes ------------------------------------------------------------------------

    def pid(self, component: str) -> int | None:
        """The live pid of ``component`` when it is this cluster's process, else None."""
        try:
            pid = int((self.cluster_dir / "pids" / f"{component}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        state = stat.rsplit(")", 1)[-1].split()[0]
        if state == "Z" or str(self.cluster_dir).encode() not in cmdline:
            return None
        return pid

    def kill(self, component: str, timeout: float = 15.0) -> None:
        """SIGKILL ``component`` and wait until the process is gone."""
        pid = self.pid(component)
        assert pid is not None, f"{component} of {self.cluster_dir} is not running"
        os.kill(pid, signal.SIGKILL)
        self.faults_injected += 1
        deadline = time.monotonic() + timeout
        while self.pid(component) is not None:
            assert time.monotonic() < deadline, f"{component} (pid {pid}) did not exit"
            time.sleep(0.05)

    def start_missing(self) -> None:
        """Start every component that is not running (kwokctl, with the cluster's own flags)."""
        for pidfile in (self.cluster_dir / "pids").glob("*.pid"):
            if self.pid(pidfile.stem) is None:
                pidfile.unlink(missing_ok=True)
        env = {
            **os.environ,
            "KWOK_WORKDIR": str(self.state / "kwok"),
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        with open(self.log, "ab") as log:
            result = subprocess.run(
                [
                    str(self.bin / "kwokctl"),
                    f"--name={self.name}",
                    "start",
                    "cluster",
                    "--timeout=60s",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
        assert result.returncode == 0, f"kwokctl start cluster failed; see {self.log}"

    @property
    def _kubectl(self) -> list[str]:
        return [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig)]

    def ready(self) -> bool:
        result = subprocess.run(
            [*self._kubectl, "--request-timeout=2s", "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0 and result.stdout.strip() == "ok"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            assert time.monotonic() < deadline, f"the apiserver was not ready in {timeout:.0f}s"
            time.sleep(0.1)

    # -- faults ---------------------------------------------------------------------------

    def restart_apiserver(self, down_for: float) -> Outage:
        """Kill the apiserver, keep it down ``down_for`` seconds, start it, wait for /readyz."""
        killed_at = time.monotonic()
        self.kill(APISERVER)
        time.sleep(max(0.0, down_for - (time.monotonic() - killed_at)))
        self.start_missing()
        self.wait_ready()
        return Outage(killed_at, time.monotonic(), datetime.now(UTC))

    def heal(self, timeout: float = 120.0) -> None:
        """Restart whatever died, until the apiserver answers and both leaders hold a fresh Lease.

        The controller-manager (garbage collection of our Services, ServiceAccounts of new
        namespaces) and the scheduler must be back before the next test creates pods.
        """
        since = datetime.now(UTC)
        deadline = time.monotonic() + timeout
        while True:
            if any(self.pid(c) is None for c in (APISERVER, *LEADERS)):
                self.start_missing()
                self.wait_ready()
                since = datetime.now(UTC)
            if self.ready() and all(self._lease_renewed_since(c, since) for c in LEADERS):
                return
            assert time.monotonic() < deadline, f"the control plane did not heal in {timeout}s"
            time.sleep(0.5)

    def _lease_renewed_since(self, component: str, since: datetime) -> bool:
        result = subprocess.run(
            [
                *self._kubectl,
                "--request-timeout=3s",
                "--namespace=kube-system",
                "get",
                "lease",
                component,
                "--output=jsonpath={.spec.renewTime}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        text = result.stdout.strip()
        if result.returncode != 0 or not text:
            return False
        renewed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return renewed >= since.replace(microsecond=0)
