"""The connector as operators run it: the image built from the Dockerfile (``make image``),
installed by the Helm chart on the real node ``nim-real-0``, reached through the chart's Service.

:class:`ChartRelease` drives one release with the real helm (install, upgrade, rolling restart,
uninstall) and reads it back: its pods, its Service (a ClusterIP that kube-proxy makes reachable
from this machine), the endpoint the chart's NOTES print for flytepropeller, metrics, logs. It
offers what the tests use of a connector process (:class:`tests.connector_server.ConnectorServer`):
``stub``, ``metric`` and ``log_tail``, so a test can take either.

Example::

    env = ensure_real_node()
    with ChartRelease(kubeconfig, helm, "flyte", env["NIM_AGENT_IMAGE"]) as release:
        release.install()
        meta = release.stub.CreateTask(create_request(...), timeout=10).resource_meta
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import yaml
from flyteidl.service import agent_pb2_grpc
from kubernetes import client

from nim_agent import NIM, NIMSecrets, NIMTask
from tests.cluster import DEVCLUSTER, REPO_ROOT, new_api_client, wait_for
from tests.connector_server import task_template
from tests.realnode import GPU_TOLERATION, NODE_IP, NODE_SELECTOR, ImagesEnv

CHART = REPO_ROOT / "charts" / "nim-agent"
KUBECTL = DEVCLUSTER / "bin" / "kubectl"
# The real node's cluster DNS (CoreDNS on the bridge address): from this machine, it resolves
# <svc>.<ns>.svc.cluster.local as pods do.
CLUSTER_DNS = f"{NODE_IP}:53"
# Generous for a loaded 2-core machine: importing flytekit takes seconds per pod.
ROLLOUT_TIMEOUT_S = 300


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def real_node_values(image: str, **overrides: Any) -> dict[str, Any]:
    """Chart values that run the connector on the real node from ``image`` (repository:tag)."""
    repository, _, tag = image.rpartition(":")
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        # The real node is the only one that runs containers; it carries the GPU taint as GPU
        # pools do (its own taint is tolerated by the cluster's admission policy for pods that
        # select it).
        "nodeSelector": dict(NODE_SELECTOR),
        "tolerations": [dict(GPU_TOLERATION)],
        # Two replicas: a rolling restart always leaves one serving (the lifecycle issue makes it
        # the chart's default).
        "replicaCount": 2,
    }
    values.update(overrides)
    return values


class ChartRelease:
    """One Helm release of charts/nim-agent (or another chart) in ``namespace``."""

    def __init__(
        self,
        kubeconfig: Path,
        helm: Path,
        namespace: str,
        image: str,
        *,
        release: str = "nim-agent",
        values: dict[str, Any] | None = None,
        work_dir: Path,
    ) -> None:
        self.kubeconfig, self.helm, self.namespace = kubeconfig, helm, namespace
        self.release = release
        self.values = values if values is not None else real_node_values(image)
        self.work_dir = work_dir
        self.notes = ""
        self._api = new_api_client(kubeconfig)
        self.core = client.CoreV1Api(self._api)
        self.apps = client.AppsV1Api(self._api)
        self._channel: grpc.Channel | None = None
        self._stub: agent_pb2_grpc.AsyncAgentServiceStub | None = None

    # -- helm -------------------------------------------------------------------------------

    def _tool(self, binary: Path, *args: str, timeout: float = ROLLOUT_TIMEOUT_S + 60) -> str:
        result = subprocess.run(
            [str(binary), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, (
            f"{binary.name} {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stderr}{result.stdout[-2000:]}\n{self.describe()}"
        )
        return result.stdout

    def _values_file(self, values: dict[str, Any]) -> str:
        path = self.work_dir / f"values-{self.release}-{len(list(self.work_dir.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(values))
        return str(path)

    def install(self, chart: Path = CHART) -> str:
        """``helm install --wait``: every replica Ready (its gRPC probes passed); the NOTES."""
        self.notes = self._helm_wait("install", chart)
        self.wait_routed()
        return self.notes

    def wait_routed(self, timeout: float = 30) -> None:
        """Until the Service's ClusterIP takes connections. ``helm --wait`` ends when the pods
        are Ready; kube-proxy programs the Service's rules after the EndpointSlice follows
        (minSyncPeriod 1 s on the real node), and a connection in between is refused."""
        host, port = self.service().spec.cluster_ip, self.port("metrics")

        def connects() -> bool:
            try:
                socket.create_connection((host, port), timeout=2).close()
            except OSError:
                return False
            return True

        wait_for(connects, timeout=timeout, what=f"kube-proxy to route {host}:{port}")

    def upgrade(self, chart: Path = CHART, values: dict[str, Any] | None = None) -> str:
        """``helm upgrade --wait`` to ``chart`` (the new pods Ready, the old ones gone)."""
        if values is not None:
            self.values = values
        self.notes = self._helm_wait("upgrade", chart)
        self.wait_rolled_out()
        return self.notes

    def _helm_wait(self, verb: str, chart: Path) -> str:
        """``helm install|upgrade`` of this release with its values, ``--wait``; the NOTES."""
        return self._tool(
            self.helm,
            verb,
            self.release,
            str(chart),
            "--namespace",
            self.namespace,
            "--values",
            self._values_file(self.values),
            "--wait",
            "--timeout",
            f"{ROLLOUT_TIMEOUT_S}s",
        )

    def uninstall(self) -> None:
        """``helm uninstall``, then wait until the release's pods are gone: a stopping replica
        serves (and sweeps, cluster-wide) for shutdownDelaySeconds more, and must not reap the
        NIMs of the tests that follow."""
        self._close_channel()
        subprocess.run(
            [
                str(self.helm),
                "--kubeconfig",
                str(self.kubeconfig),
                "uninstall",
                self.release,
                "--namespace",
                self.namespace,
                "--wait",
                "--timeout",
                "120s",
            ],
            capture_output=True,
            timeout=180,
            check=False,
        )
        wait_for(
            lambda: not self.pods(),
            timeout=120,
            what=f"the pods of release {self.release} to go",
            describe=self.describe,
        )

    def rollout_restart(self) -> None:
        """``kubectl rollout restart`` of the Deployment, then wait until it is complete."""
        self._tool(KUBECTL, "-n", self.namespace, "rollout", "restart", f"deployment/{self.name}")
        self.wait_rolled_out()

    def wait_rolled_out(self) -> None:
        self._tool(
            KUBECTL,
            "-n",
            self.namespace,
            "rollout",
            "status",
            f"deployment/{self.name}",
            f"--timeout={ROLLOUT_TIMEOUT_S}s",
        )
        # `rollout status` returns once the new pods are available; old ones may still stop.
        wait_for(
            lambda: all(p.metadata.deletion_timestamp is None for p in self.pods()),
            timeout=60,
            what=f"the old pods of {self.name} to go",
            describe=self.describe,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()
        self._api.close()

    # -- what the release made --------------------------------------------------------------

    @property
    def name(self) -> str:
        """The chart's full name: the Deployment's and the Service's."""
        return self.release if "nim-agent" in self.release else f"{self.release}-nim-agent"

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/name=nim-agent"

    def pods(self) -> list[client.V1Pod]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        return sorted(pods, key=lambda p: p.metadata.name)

    def ready_pods(self) -> list[client.V1Pod]:
        return [
            p
            for p in self.pods()
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def service(self) -> client.V1Service:
        return self.core.read_namespaced_service(self.name, self.namespace)

    def port(self, name: str) -> int:
        return int(next(p.port for p in self.service().spec.ports if p.name == name))

    @property
    def address(self) -> str:
        """host:port of the gRPC port on the Service's ClusterIP (kube-proxy routes it)."""
        return f"{self.service().spec.cluster_ip}:{self.port('grpc')}"

    def notes_endpoint(self) -> str:
        """The connector endpoint the NOTES print for flytepropeller (dns:///<name>...:8000)."""
        found = re.search(r"^\s*endpoint: (dns:///\S+)$", self.notes, re.M)
        assert found, f"no endpoint in the chart's NOTES:\n{self.notes}"
        return found.group(1)

    def propeller_endpoint(self) -> str:
        """The NOTES endpoint, resolved by the cluster DNS: from this machine, gRPC's dns
        resolver asks CoreDNS (``dns://<server>/<name>``) for the name pods would resolve."""
        return self.notes_endpoint().replace("dns:///", f"dns://{CLUSTER_DNS}/", 1)

    # -- as a connector ---------------------------------------------------------------------

    @property
    def stub(self) -> agent_pb2_grpc.AsyncAgentServiceStub:
        """flyteidl's AsyncAgentService through the Service's ClusterIP."""
        if self._stub is None:
            self._channel = grpc.insecure_channel(self.address)
            self._stub = agent_pb2_grpc.AsyncAgentServiceStub(self._channel)
        return self._stub

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel, self._stub = None, None

    def metrics_via_service(self) -> str:
        """A scrape of /metrics through the Service's ``metrics`` port (one replica answers)."""
        url = f"http://{self.service().spec.cluster_ip}:{self.port('metrics')}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def metric(self, name: str, **labels: str) -> float:
        """One sample summed over the Ready replicas, each scraped at its own pod address (a
        scrape of the Service reaches one replica only)."""
        port = self.values.get("metrics", {}).get("port", 9090)
        total = 0.0
        for pod in self.ready_pods():
            url = f"http://{pod.status.pod_ip}:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                total += metric_value(response.read().decode(), name, **labels)
        return total

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of every replica's log (through the API server and the kubelet)."""
        parts = []
        for pod in self.pods():
            try:
                log = self.core.read_namespaced_pod_log(
                    pod.metadata.name, self.namespace, tail_lines=lines
                )
            except client.ApiException as e:
                log = f"(no log: {e.status} {e.reason})"
            parts.append(f"--- {pod.metadata.name} ---\n{log}")
        return "\n".join(parts)

    def exec(self, pod: str, *command: str) -> subprocess.CompletedProcess[str]:
        """``kubectl exec`` in the connector container (the kubelet runs it)."""
        return subprocess.run(
            [
                *(str(KUBECTL), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace),
                *("exec", pod, "-c", "connector", "--", *command),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def describe(self) -> str:
        """Pods (node, phase, readiness, restarts) and the namespace's recent events."""
        lines = []
        try:
            for pod in self.pods():
                statuses = " ".join(
                    f"{s.name}:ready={s.ready},restarts={s.restart_count}"
                    for s in pod.status.container_statuses or []
                )
                lines.append(
                    f"pod {pod.metadata.name} node={pod.spec.node_name} phase={pod.status.phase} "
                    f"deleting={pod.metadata.deletion_timestamp is not None} {statuses}"
                )
            events = self.core.list_namespaced_event(self.namespace).items
            events.sort(key=lambda e: str(e.last_timestamp or e.event_time))
            for e in events[-25:]:
                lines.append(
                    f"{e.last_timestamp or e.event_time} {e.type} {e.reason} "
                    f"{e.involved_object.kind}/{e.involved_object.name}: {e.message}"
                )
        except Exception as e:  # a description must never hide the failure it describes
            lines.append(f"(could not describe: {e!r})")
        return "\n".join(lines)


# ---------------------------------------------------------------------- what a test deploys


def create_nim_secrets(core_v1: client.CoreV1Api, namespace: str) -> None:
    """The Secrets a NIM task names: the NGC key in the connector's default Secret
    (``nim-secrets``, key ``api_key``) and an image pull secret ``ngc-pull`` (the local
    registry asks for no credentials; the kubelet reads the Secret all the same)."""
    core_v1.create_namespaced_secret(
        namespace, {"metadata": {"name": "nim-secrets"}, "stringData": {"api_key": "standin-key"}}
    )
    auth = {"auths": {"127.0.0.1:5050": {"auth": "dW51c2VkOnVudXNlZA=="}}}  # unused:unused
    core_v1.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "ngc-pull"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json.dumps(auth)},
        },
    )


def standin_task_template(images: ImagesEnv, ttl: timedelta = timedelta(hours=1)) -> Any:
    """The TaskTemplate of a NIMTask whose server is the NIM stand-in image on the real node."""
    nim = NIM(
        secrets=NIMSecrets(
            ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="_FSEC_"
        ),
        image=images["NIM_STANDIN_IMAGE"],
        cpu="250m",
        gpu=1,
        mem="256Mi",
        shm_size="16Mi",
        node_selector=dict(NODE_SELECTOR),
        startup_period_seconds=2,
        readiness_period_seconds=2,
    )
    return task_template(NIMTask(name="e2e.real-node-standin", nim=nim, ttl=ttl))


def registry_digest(images: ImagesEnv, ref: str) -> str:
    """The manifest digest the local registry serves for ``ref`` (host/repo:tag)."""
    repo_tag = ref.removeprefix(images.registry + "/")
    repo, _, tag = repo_tag.rpartition(":")
    request = urllib.request.Request(
        f"http://{images.registry}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers["Docker-Content-Digest"])


def _git(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], input=stdin, capture_output=True, check=False
    )


def previous_chart(helm: Path, work: Path) -> tuple[Path, str]:
    """charts/nim-agent as it was before its last change, packaged by helm from git history,
    and the commit it comes from: the newest commit that changed the chart and whose chart
    differs from the working tree's. AssertionError when history has none (e.g. a shallow
    clone)."""
    log = _git("log", "--format=%H", "--", "charts/nim-agent")
    assert log.returncode == 0, log.stderr.decode()
    for commit in log.stdout.decode().split():
        if _git("diff", "--quiet", commit, "--", "charts/nim-agent").returncode == 0:
            continue  # the working tree's chart
        source = work / f"chart-{commit[:10]}"
        source.mkdir()
        archive = _git("archive", commit, "charts/nim-agent")
        assert archive.returncode == 0, archive.stderr.decode()
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
        packaged = subprocess.run(
            [str(helm), "package", str(source / "charts" / "nim-agent"), "-d", str(work)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert packaged.returncode == 0, packaged.stderr
        # "Successfully packaged chart and saved it to: <path>"
        return Path(packaged.stdout.strip().rsplit(" ", 1)[-1]), commit
    raise AssertionError(
        "no earlier state of charts/nim-agent in git history to upgrade from "
        "(a shallow clone? fetch the history)"
    )
