"""Network faults between the connector and the API server, through a real TCP fault proxy.

Toxiproxy (built from Go modules by devcluster/build.sh) sits between a connector and the API
server: the connector's kubeconfig points at the proxy, which forwards to the API server (TLS
passes through untouched). Each fault is a toxic on the proxy for a while, then removed:

- ``limit_data``: every connection is closed after a few kilobytes, in the middle of list
  bodies, of the watch stream and of the cleanup sweep's requests;
- ``reset_peer``: connections are reset (TCP RST) shortly after they open;
- ``latency``: 1.5 s added to every answer;
- ``bandwidth``: answers trickle at a few KB/s.

During each fault GetTask keeps answering (the last known state when it cannot read), and after
each the connector is whole again: the watch cache is synced (GetTask sends no GET), the cleanup
sweep runs (a ttl that passed during the faults is enforced), the Lease is held, and every loop
is alive (their restarts are counted in ``nim_agent_loop_restarts_total``, never fatal).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster import DEVCLUSTER, running_pods, wait_for
from tests.configs import simulated_nim as nim
from tests.connector_server import ConnectorServer, free_port
from tests.faults.support import COUNTS, TE, Deployments, phase_name, try_get, wait_phases

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

TOXIPROXY = DEVCLUSTER / "bin" / "toxiproxy-server"
SETTINGS = {"NIM_AGENT_REAP_INTERVAL": "1s"}
FAULT_SECONDS = 10.0

# (name, toxic type, attributes): what each fault does to the answers of the API server.
FAULTS = [
    ("cut mid-body", "limit_data", {"bytes": 3000}),
    ("reset", "reset_peer", {"timeout": 300}),
    ("latency", "latency", {"latency": 1500, "jitter": 200}),
    ("bandwidth", "bandwidth", {"rate": 4}),  # KB/s
]


class Toxiproxy:
    """A toxiproxy server process and its HTTP API."""

    def __init__(self, log: Path) -> None:
        assert TOXIPROXY.exists(), f"{TOXIPROXY} is missing: run `make cluster-build`"
        self.port = free_port()
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [str(TOXIPROXY), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._up, timeout=30, what="toxiproxy to listen")

    def _up(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def proxy(self, name: str, upstream: str) -> int:
        listen = free_port()
        self.call(
            "POST",
            "/proxies",
            {"name": name, "listen": f"127.0.0.1:{listen}", "upstream": upstream, "enabled": True},
        )
        return listen

    def toxic(self, proxy: str, kind: str, attributes: dict[str, Any]) -> str:
        name = f"{kind}-fault"
        self.call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {"name": name, "type": kind, "stream": "downstream", "attributes": attributes},
        )
        return name

    def heal(self, proxy: str, toxic: str) -> None:
        self.call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture
def toxiproxy(tmp_path: Path) -> Iterator[Toxiproxy]:
    proxy = Toxiproxy(tmp_path / "toxiproxy.log")
    yield proxy
    proxy.stop()


def through(kubeconfig: Path, port: int, path: Path) -> Path:
    """A copy of ``kubeconfig`` whose API server address is 127.0.0.1:``port``."""
    doc = yaml.safe_load(kubeconfig.read_text())
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def gets_from_cache(server: ConnectorServer, metas: list[bytes]) -> bool:
    """GetTask of every deployment sends no GET to the API server: answered from the cache."""
    before = server.metric("nim_agent_kube_requests_total", verb="get")
    for meta in metas:
        _, error = try_get(server, meta)
        if error:
            return False
    return server.metric("nim_agent_kube_requests_total", verb="get") == before


def test_the_connector_recovers_from_every_network_fault_with_its_loops_alive(
    toxiproxy: Toxiproxy,
    kubeconfig_path: Path,
    tmp_path: Path,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    admin = yaml.safe_load(kubeconfig_path.read_text())
    upstream = admin["clusters"][0]["cluster"]["server"].removeprefix("https://")
    listen = toxiproxy.proxy("apiserver", upstream)
    kubeconfig = through(kubeconfig_path, listen, tmp_path / "through-proxy")
    server = ConnectorServer(
        kubeconfig, settings=SETTINGS, command="nim-agent", log_path=tmp_path / "connector.log"
    ).start()
    d = deployments(server)
    late: ConnectorServer | None = None
    try:
        ready = d.create(nim("ready"))
        loading = d.create(nim("never-ready"))
        # Its ttl passes during the faults: only a sweep that survived them stops it.
        expiring = d.create(nim("ready"), ttl=timedelta(seconds=25))
        living = [ready, loading]
        wait_phases(
            server, {ready: TE.SUCCEEDED, loading: TE.RUNNING, expiring: TE.SUCCEEDED}, timeout=60
        )
        wait_for(lambda: gets_from_cache(server, living), timeout=30, what="the cache to serve")
        answers: Counter[str] = Counter()
        loading_pod = d.pod_name(loading)
        for name, kind, attributes in FAULTS:
            toxic = toxiproxy.toxic("apiserver", kind, attributes)
            COUNTS[f"network faults injected ({name})"] += 1
            if late is None:
                # A connector starting now: its first list is cut mid-body, again and again.
                late = ConnectorServer(
                    kubeconfig,
                    settings=SETTINGS,
                    command="nim-agent",
                    log_path=tmp_path / "late.log",
                ).start()
            until = time.monotonic() + FAULT_SECONDS
            tick = 0
            while time.monotonic() < until:
                # Pod changes (made directly, not through the proxy) keep the watch streams
                # busy, so that the faults hit them mid-stream.
                tick += 1
                core_v1.patch_namespaced_pod(
                    loading_pod, namespace, {"metadata": {"annotations": {"test/tick": str(tick)}}}
                )
                for meta in living:
                    resource, error = try_get(server, meta, timeout=10)
                    answers[error or phase_name(resource.phase)] += 1
                    # Never a wrong verdict: the last known state, or the truth.
                    if resource is not None:
                        assert resource.phase in (TE.SUCCEEDED, TE.RUNNING), resource.message
                time.sleep(0.5)
            toxiproxy.heal("apiserver", toxic)
            # Whole again: the watch caches synced (no GETs), after this fault.
            for connector in (server, late):
                wait_for(
                    lambda connector=connector: gets_from_cache(connector, living),
                    timeout=90,
                    what=f"the cache to be synced again after the {name} fault",
                    describe=connector.log_tail,
                )
        # The sweep ran through it all: the ttl that passed during the faults is enforced...
        wait_for(
            lambda: (
                d.pod_name(expiring)
                not in {p.metadata.name for p in running_pods(core_v1, namespace)}
            ),
            timeout=60,
            what="the expired server to be stopped",
            describe=server.log_tail,
        )
        # ...the Lease is held, and every answer was a real one (never a gRPC error).
        assert server.metric("nim_agent_leader") == 1, server.log_tail()
        assert set(answers) <= {"SUCCEEDED", "RUNNING"}, answers
        restarts = server.metric("nim_agent_loop_restarts_total")
        watch_errors = server.metric("nim_agent_watch_restarts_total", reason="error")
        print(
            f"answers during the faults: {dict(answers)}; watch restarts on errors: "
            f"{watch_errors:.0f}; loop restarts: {restarts:.0f}"
        )
        assert watch_errors >= 1  # the faults did reach the watch streams
        # A loop that failed was restarted (and counted): it is running now, as shown above.
        assert server.process is not None and server.process.poll() is None
        assert late is not None and late.metric("nim_agent_watch_restarts_total") >= 1
    finally:
        d.abort_all()  # through the proxy, healed now
        d.metas.clear()
        server.stop()
        if late is not None:
            late.stop()
