"""What the connector's /v1/models check costs: one request through the API server's pod proxy
(the route of a connector outside the cluster) and directly (inside it), against the NIM
stand-in, on the local control plane.

    .venv/bin/python -m benchmarks.serving_check [--requests 200]

It makes a kwok pod in a namespace of its own, points the pod's address at the NIM stand-in
running on this machine (kwok's pods run no process; the same fake as
tests/e2e/test_serving_check.py), and times `nim_agent.serving.ModelsProbe` requests: each one
what a GetTask adds while a Ready server is being verified (at most one per poll, none once it
is verified). Prints p50 / p90 / p99 / max in milliseconds, and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.cluster import KUBECONFIG, new_api_client, wait_for  # noqa: E402
from tests.connector_server import free_port  # noqa: E402
from tests.e2e.test_serving_check import host_address  # noqa: E402
from tests.standins import start_nim  # noqa: E402


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50_ms": at(0.5),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "max_ms": round(1000 * ordered[-1], 2),
        "mean_ms": round(1000 * statistics.fmean(ordered), 2),
    }


async def measure(pod: dict[str, Any], route: str, requests: int) -> dict[str, float]:
    from nim_agent.kube import Kube
    from nim_agent.serving import ModelsProbe

    kube = await Kube.connect(str(KUBECONFIG))
    probe = ModelsProbe(route=route, timeout=5)
    samples = []
    try:
        for _ in range(requests):
            probe.forget(pod["metadata"]["uid"])  # every call asks the server
            started = time.perf_counter()
            reply = await probe.models(kube, pod)
            samples.append(time.perf_counter() - started)
            assert reply is not None and reply.models is not None, reply
    finally:
        await kube.close()
    return percentiles(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    from kubernetes import client

    api = new_api_client(KUBECONFIG)
    core = client.CoreV1Api(api)
    namespace = f"bench-serving-{uuid.uuid4().hex[:6]}"
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix=f"{namespace}-"))
    nim = start_nim(work, NIM_SERVER_PORT=str(port), STANDIN_HOST=host_address())
    try:
        wait_for(lambda: "is ready to serve" in nim.log(), timeout=30, what="the stand-in")
        core.create_namespace({"metadata": {"name": namespace}})
        wait_for(
            lambda: core.read_namespaced_service_account("default", namespace),
            timeout=60,
            what="the default ServiceAccount",
        )
        spec = {
            "containers": [
                {
                    "name": "nim",
                    "image": "x",
                    "ports": [{"name": "nim-http", "containerPort": port}],
                },
            ],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        }
        core.create_namespaced_pod(namespace, {"metadata": {"name": "nim"}, "spec": spec})
        wait_for(
            lambda: core.read_namespaced_pod("nim", namespace).status.pod_ip,
            timeout=60,
            what="kwok to give the pod an address",
        )
        address = host_address()
        core.patch_namespaced_pod_status(
            "nim",
            namespace,
            [
                {"op": "replace", "path": "/status/podIP", "value": address},
                {"op": "replace", "path": "/status/podIPs", "value": [{"ip": address}]},
            ],
        )
        pod = api.sanitize_for_serialization(core.read_namespaced_pod("nim", namespace))
        pod["metadata"]["annotations"] = {"nim-agent.dev/endpoint": f"http://{address}:{port}"}
        results = {
            "requests": args.requests,
            "proxy": asyncio.run(measure(pod, "proxy", args.requests)),
            "direct": asyncio.run(measure(pod, "direct", args.requests)),
        }
    finally:
        nim.stop()
        shutil.rmtree(work, ignore_errors=True)
        try:
            core.delete_namespace(namespace)
        finally:
            api.close()
    for route in ("proxy", "direct"):
        r = results[route]
        print(
            f"GET /v1/models {route:6}: p50 {r['p50_ms']} ms, p90 {r['p90_ms']} ms, "
            f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms ({args.requests} requests)"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
