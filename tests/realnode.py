"""The real node of the local control plane (devcluster/realnode.sh), as tests use it.

:func:`ensure_real_node` makes sure the node ``nim-real-0`` runs (starting it with
``make cluster-up`` when it does not) and returns the image references of
``.devcluster/images.env``; it raises :class:`RealNodeUnavailable` with the reason when the node
cannot run, so tests that need it fail saying why (they are never skipped).

Example::

    env = ensure_real_node()
    pod = real_node_pod("web", env.python_base, ["python3", "-m", "http.server", "8080"])
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster import CLUSTER_SCRIPT, DEVCLUSTER, REPO_ROOT, START_TIMEOUT_S

REALNODE_SCRIPT = REPO_ROOT / "devcluster" / "realnode.sh"
IMAGES_ENV = DEVCLUSTER / "images.env"
REALNODE_STATE = DEVCLUSTER / "realnode"

NODE_NAME = "nim-real-0"
NODE_SELECTOR = {"nim-agent.dev/node": "real"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
BRIDGE = "nimbr0"
POD_CIDR_PREFIX = "10.244.0."
NODE_IP = "10.244.0.1"

# Pod Security "restricted", as NIM pods run: uid 1000, no privileges.
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


class RealNodeUnavailable(RuntimeError):
    """The real node is not running and could not be started; the message says why."""


@dataclass(frozen=True)
class ImagesEnv:
    """``.devcluster/images.env``: image references and the Hub stand-in's address."""

    values: dict[str, str]

    @property
    def registry(self) -> str:
        return self.values["REGISTRY"]

    @property
    def python_base(self) -> str:
        return self.values["PYTHON_BASE_IMAGE"]

    def __getitem__(self, key: str) -> str:
        return self.values[key]


def read_images_env(path: Path = IMAGES_ENV) -> ImagesEnv:
    """Parse the ``KEY=value`` lines of ``images.env`` (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return ImagesEnv(values)


def real_node_running() -> bool:
    """True when the node's processes run and the node is Ready (``realnode.sh status``)."""
    result = subprocess.run(
        [str(REALNODE_SCRIPT), "status"], capture_output=True, timeout=60, check=False
    )
    return result.returncode == 0


def ensure_real_node(timeout: float = START_TIMEOUT_S) -> ImagesEnv:
    """Start the control plane with its real node unless both run; return ``images.env``."""
    if not real_node_running():
        try:
            result = subprocess.run(
                ["make", "--no-print-directory", "cluster-up", "REAL_NODE=1"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise RealNodeUnavailable(
                f"`make cluster-up` did not finish within {timeout:.0f}s"
            ) from e
        if result.returncode != 0 or not real_node_running():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
            raise RealNodeUnavailable(
                f"the real node {NODE_NAME} is required for these tests and did not start "
                f"(`make cluster-up` exit {result.returncode}; logs in "
                f"{REALNODE_STATE.relative_to(REPO_ROOT)}/logs):\n{tail}"
            )
    if not IMAGES_ENV.is_file():
        raise RealNodeUnavailable(f"the real node runs but {IMAGES_ENV} is missing")
    return read_images_env()


def stop_everything() -> subprocess.CompletedProcess[str]:
    """``devcluster/cluster.sh down``: the control plane and the real node."""
    return subprocess.run(
        [str(CLUSTER_SCRIPT), "down"], capture_output=True, text=True, timeout=300, check=False
    )


def real_node_pod(
    name: str,
    image: str,
    command: list[str],
    *,
    labels: dict[str, str] | None = None,
    restart_policy: str = "Always",
    readiness_port: int | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A restricted pod that selects the real node (and tolerates its GPU taint, as NIM pods do).

    ``readiness_port``: an HTTP readiness probe on ``/`` at that port.
    """
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "command": command,
        "securityContext": RESTRICTED_CONTAINER,
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        },
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if readiness_port is not None:
        container["ports"] = [{"containerPort": readiness_port, "name": "http"}]
        container["readinessProbe"] = {
            "httpGet": {"path": "/", "port": readiness_port},
            "periodSeconds": 1,
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeSelector": NODE_SELECTOR,
            "tolerations": [GPU_TOLERATION],
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 2,
            "securityContext": RESTRICTED_POD,
            "containers": [container],
        },
    }
