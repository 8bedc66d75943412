"""Warm servers (NIMTask(reuse=...)) against a server per execution: an evaluation loop.

    .venv/bin/python -m benchmarks.reuse [--executions 10] [--cold-start 90] [--evaluate 60]

`make bench` runs it after benchmarks/bench.py. It needs the real node (one per machine): it
starts the worktree's control plane with it when they are not running (`make cluster-up`, as the
real-node tests do), and stops what it started at the end.

The loop, as an LLM team runs it: executions of one workflow, one after the other, each serving
a different LoRA adapter on the same base model (the Hub stand-in's series
standin/llama3-8b-lora-eval-00, -01, ...), then evaluating it (chat completions naming the
adapter, one a second, through the execution's own endpoint, for `--evaluate` seconds), then
releasing its server (DeleteTask, as a teardown step or an abort would). After the loop one more
execution asks again for the first adapter (already on the warm server). Two arms, in one run, at
the same time, through one connector (`nim-agent serve`):

- reuse on: `NIMTask(reuse=Reuse(idle_ttl=...))`; the first execution starts the shared server,
  the others attach and have their adapter added while it runs;
- reuse off: the same task without reuse; every execution starts a server of its own. These
  executions do not interact, so they run `--parallel` at a time: each one's figures are its own
  (a sequential loop would only take longer).

The cold start is modelled by the NIM stand-in on the real node: `STANDIN_STARTUP_SECONDS`
(`--cold-start`, default 90 s: an 8B model loading from a warm cache, the image already on the
node) on top of the real pod start (scheduling, the adapter download init container, the
container start, probes). Hot-adds are real too: the kubelet's downward API update, the
adapter-sync sidecar's download from the Hub stand-in, the stand-in's NIM_PEFT_REFRESH_INTERVAL
scan (1 s here), the connector's /v1/models check through the API server's pod proxy.

Reported per arm: time from CreateTask to SUCCEEDED (GetTask polled every 0.25 s) of execution 1,
of executions 2..N (p50, max) and of the repeat; GPU-minutes held (each server: from its
scheduling until it was stopped, or its pod was gone after the release); serving time (the
evaluation windows); servers started. Targets (issue 15): on, executions 2..N p50 at least 20x
faster than a cold start; the repeat under 5 s; GPU-minutes held at most 1.3x the serving time.
Writes benchmarks/results/reuse-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.pop("DEVCLUSTER_DIR", None)  # the worktree's own control plane: it has the real node

from kubernetes import client  # noqa: E402

from nim_agent import NIM, NIMSecrets, NIMTask, Reuse  # noqa: E402
from nim_agent.contract import adapter_name  # noqa: E402
from nim_agent.sharing import gpu_seconds  # noqa: E402
from tests.cluster import CLUSTER_SCRIPT, KUBECONFIG, new_api_client, wait_for  # noqa: E402
from tests.connector_server import (  # noqa: E402
    TERMINAL,
    ConnectorServer,
    create_request,
    delete_request,
    execution,
    get_request,
    task_template,
)
from tests.realnode import NODE_SELECTOR, ensure_real_node, real_node_running  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
SUCCEEDED = 3  # flyteidl TaskExecution.SUCCEEDED
POLL_S = 0.25


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} reuse-bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Execution:
    """One execution of the loop: its adapter and what it measured."""

    index: int
    adapter: str
    to_succeeded_s: float = 0.0
    serving_s: float = 0.0
    answers: int = 0
    server: str = ""
    message: str = ""


@dataclass
class Arm:
    """One side of the comparison."""

    name: str
    namespace: str
    reuse: bool
    executions: list[Execution] = field(default_factory=list)
    gpu_seconds: dict[str, float] = field(default_factory=dict)  # server -> GPU-seconds held
    errors: list[str] = field(default_factory=list)


def nim_config(images: dict[str, str], repo: str, cold_start: int) -> NIM:
    return NIM(
        secrets=NIMSecrets(
            ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix=""
        ),
        image=images["NIM_STANDIN_IMAGE"],
        image_pull_policy="IfNotPresent",
        gpu=1,
        cpu="100m",
        mem="256Mi",
        shm_size="16Mi",
        node_selector=NODE_SELECTOR,
        env={
            "NIM_PEFT_SOURCE": "/opt/nim/loras",
            "NIM_PEFT_REFRESH_INTERVAL": "1",
            "STANDIN_STARTUP_SECONDS": str(cold_start),
        },
        hf_repo_ids=[repo],
        hf_endpoint=images["HF_ENDPOINT"],
        lora_adapter_mem="128Mi",
        startup_period_seconds=1,
        startup_failure_threshold=cold_start + 120,
        readiness_period_seconds=1,
    )


class Loop:
    """Drives one arm through the connector and the API server."""

    def __init__(
        self,
        server: ConnectorServer,
        api: client.ApiClient,
        images: dict[str, str],
        args: argparse.Namespace,
    ) -> None:
        self.server, self.api, self.images, self.args = server, api, images, args
        self.core = client.CoreV1Api(api)

    def template(self, repo: str, reuse: bool) -> Any:
        task = NIMTask(
            name="bench.eval",
            nim=nim_config(self.images, repo, self.args.cold_start),
            ttl=timedelta(hours=2),
            reuse=Reuse(idle_ttl=timedelta(seconds=self.args.idle_ttl)) if reuse else None,
        )
        return task_template(task)

    def run_one(self, arm: Arm, run: Execution) -> None:
        repo = f"{self.images['HF_FIXTURE_SERIES']}{run.index % self.args.executions:02d}"
        request = create_request(
            self.template(repo, arm.reuse), execution(f"e{uuid.uuid4().hex[:10]}"), arm.namespace
        )
        started = time.monotonic()
        meta = self.server.stub.CreateTask(request, timeout=30).resource_meta
        doc = json.loads(meta)
        run.server = doc.get("shared") or doc["name"]
        while True:
            resource = self.server.stub.GetTask(get_request(meta), timeout=30).resource
            if resource.phase in TERMINAL:
                break
            time.sleep(POLL_S)
        run.to_succeeded_s = time.monotonic() - started
        run.message = resource.message[:200]
        if resource.phase != SUCCEEDED:
            arm.errors.append(f"execution {run.index}: {resource.message[:300]}")
            self.server.stub.DeleteTask(delete_request(meta), timeout=30)
            return
        scheduled = self.scheduled_at(arm.namespace, run.server)
        run.serving_s, run.answers = self.evaluate(arm.namespace, doc["name"], run.adapter)
        self.server.stub.DeleteTask(delete_request(meta), timeout=30)  # release / delete
        if not arm.reuse:  # its own server: held until the pod is gone
            wait_for(
                lambda: not self.pod_exists(arm.namespace, run.server),
                timeout=120,
                what=f"pod {run.server} to go",
            )
            gone = datetime.now(UTC)
            arm.gpu_seconds[run.server] = (gone - scheduled).total_seconds()

    def evaluate(self, namespace: str, service: str, adapter: str) -> tuple[float, int]:
        """Chat completions naming the adapter through the execution's endpoint (the API
        server's service proxy), one a second, for --evaluate seconds."""
        started = time.monotonic()
        answers = 0
        while time.monotonic() - started < self.args.evaluate:
            tick = time.monotonic()
            body = {"model": adapter, "messages": [{"role": "user", "content": "score me"}]}
            try:
                method, url, headers, data, _ = self.api.param_serialize(
                    method="POST",
                    resource_path=f"/api/v1/namespaces/{namespace}/services/{service}:8000"
                    "/proxy/v1/chat/completions",
                    header_params={"Content-Type": "application/json"},
                    body=body,
                    auth_settings=["BearerToken"],
                )
                response = self.api.call_api(method, url, header_params=headers, body=data)
                response.read()
                answers += json.loads(response.data).get("model") == adapter
            except Exception as e:  # counted as a missing answer
                log(f"request to {service} failed: {e}")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        return time.monotonic() - started, answers

    def scheduled_at(self, namespace: str, name: str) -> datetime:
        pod = self.core.read_namespaced_pod(name, namespace)
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "True":
                moment: datetime = c.last_transition_time
                return moment
        created: datetime = pod.metadata.creation_timestamp
        return created

    def pod_exists(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_pod(name, namespace)
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True


def run_arm_on(loop: Loop, arm: Arm, total: int) -> None:
    for i in range(total):
        repo_index = i if i < loop.args.executions else 0  # the repeat: the first adapter again
        adapter = adapter_name(f"{loop.images['HF_FIXTURE_SERIES']}{repo_index:02d}")
        run = Execution(repo_index, adapter)
        arm.executions.append(run)
        loop.run_one(arm, run)
        log(f"{arm.name}: execution {i + 1} SUCCEEDED after {run.to_succeeded_s:.1f}s")
    # The server stops once idle: its GPU-seconds, until the stop.
    servers = {r.server for r in arm.executions}
    for name in servers:

        def stopped(name: str = name) -> Any:
            pod = loop.core.read_namespaced_pod(name, arm.namespace)
            return pod if "nim-agent.dev/stopped" in (pod.metadata.annotations or {}) else None

        pod = wait_for(
            stopped, timeout=loop.args.idle_ttl + 120, what=f"shared server {name} to stop"
        )
        raw = loop.api.sanitize_for_serialization(pod)
        arm.gpu_seconds[name] = gpu_seconds(raw, datetime.now(UTC))


def run_arm_off(loop: Loop, arm: Arm, total: int) -> None:
    runs = []
    for i in range(total):
        repo_index = i if i < loop.args.executions else 0
        name = adapter_name(f"{loop.images['HF_FIXTURE_SERIES']}{repo_index:02d}")
        runs.append(Execution(repo_index, name))
    arm.executions = runs

    def one(run: Execution) -> None:
        loop.run_one(arm, run)
        log(f"{arm.name}: an execution SUCCEEDED after {run.to_succeeded_s:.1f}s")

    with ThreadPoolExecutor(max_workers=loop.args.parallel) as pool:
        list(pool.map(one, runs))


def summary(arm: Arm, executions: int) -> dict[str, Any]:
    loop = arm.executions[:executions]
    later = [r.to_succeeded_s for r in loop[1:]]
    repeat = arm.executions[executions:]
    held = sum(arm.gpu_seconds.values())
    serving = sum(r.serving_s for r in arm.executions)
    return {
        "first_s": round(loop[0].to_succeeded_s, 2) if loop else None,
        "later_p50_s": round(statistics.median(later), 2) if later else None,
        "later_max_s": round(max(later), 2) if later else None,
        "repeat_s": round(repeat[0].to_succeeded_s, 2) if repeat else None,
        "gpu_minutes_held": round(held / 60, 2),
        "serving_minutes": round(serving / 60, 2),
        "held_per_serving": round(held / serving, 3) if serving else None,
        "servers_started": len(arm.gpu_seconds),
        "answers": sum(r.answers for r in arm.executions),
        "errors": arm.errors,
    }


def table(on: dict[str, Any], off: dict[str, Any], args: argparse.Namespace) -> str:
    n = args.executions
    rows = [
        ("", "reuse on", "reuse off"),
        ("execution 1: CreateTask -> SUCCEEDED", f"{on['first_s']} s", f"{off['first_s']} s"),
        (
            f"executions 2-{n}: p50 / max",
            f"{on['later_p50_s']} / {on['later_max_s']} s",
            f"{off['later_p50_s']} / {off['later_max_s']} s",
        ),
        ("adapter already on the server (repeat)", f"{on['repeat_s']} s", f"{off['repeat_s']} s"),
        ("GPU-minutes held", str(on["gpu_minutes_held"]), str(off["gpu_minutes_held"])),
        ("serving minutes (evaluations)", str(on["serving_minutes"]), str(off["serving_minutes"])),
        ("held / serving", str(on["held_per_serving"]), str(off["held_per_serving"])),
        ("servers started", str(on["servers_started"]), str(off["servers_started"])),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--executions", type=int, default=10, help="loop length (<= 12)")
    parser.add_argument("--cold-start", type=int, default=90, help="model load seconds")
    parser.add_argument("--evaluate", type=float, default=60, help="seconds each evaluates")
    parser.add_argument("--idle-ttl", type=int, default=30, help="the shared server's idle ttl")
    parser.add_argument("--parallel", type=int, default=4, help="reuse-off executions at once")
    args = parser.parse_args()
    was_running = real_node_running()
    images = dict(ensure_real_node().values)
    if int(images.get("HF_FIXTURE_SERIES_COUNT", "0")) < args.executions:
        raise SystemExit("the Hub stand-in's series is too short: restart the real node")
    api = new_api_client(KUBECONFIG)
    core = client.CoreV1Api(api)
    arms = [
        Arm("reuse on", f"nim-bench-reuse-on-{uuid.uuid4().hex[:6]}", True),
        Arm("reuse off", f"nim-bench-reuse-off-{uuid.uuid4().hex[:6]}", False),
    ]
    for arm in arms:
        core.create_namespace({"metadata": {"name": arm.namespace}})
        wait_for(
            lambda ns=arm.namespace: core.read_namespaced_service_account("default", ns),
            timeout=60,
            what="the default ServiceAccount",
        )
        core.create_namespaced_secret(
            arm.namespace,
            {"metadata": {"name": "nim-secrets"}, "stringData": {"api_key": "stand-in"}},
        )
    settings = {
        "NIM_AGENT_SERVING_CHECK": "proxy",
        "NIM_AGENT_SERVING_WINDOW": f"{args.cold_start + 300}s",
        "NIM_AGENT_REAP_INTERVAL": "5s",
        "NIM_AGENT_LEADER_ELECTION": "false",
    }
    log_path = RESULTS / "reuse-connector.log"
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = ConnectorServer(KUBECONFIG, settings=settings, command="nim-agent", log_path=log_path)
    total = args.executions + 1
    started = time.monotonic()
    try:
        server.start()
        loop = Loop(server, api, images, args)
        workers: list[tuple[Callable[[Loop, Arm, int], None], Arm]] = [
            (run_arm_on, arms[0]),
            (run_arm_off, arms[1]),
        ]
        threads = [
            threading.Thread(target=fn, args=(loop, arm, total), name=arm.name)
            for fn, arm in workers
        ]
        log(
            f"{args.executions} executions (+1 repeat) per arm, cold start {args.cold_start}s, "
            f"evaluation {args.evaluate:g}s, idle ttl {args.idle_ttl}s"
        )
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
        for arm in arms:
            subprocess.run(
                [str(REPO_ROOT / ".devcluster" / "bin" / "kubectl"), "--kubeconfig",
                 str(KUBECONFIG), "delete", "namespace", arm.namespace, "--wait=false"],
                capture_output=True, check=False,
            )  # fmt: skip
        if not was_running:
            subprocess.run([str(CLUSTER_SCRIPT), "down"], capture_output=True, check=False)
    on, off = (summary(arm, args.executions) for arm in arms)
    targets = {
        "later_p50_20x_faster_than_cold": bool(
            on["later_p50_s"]
            and off["later_p50_s"]
            and off["later_p50_s"] / on["later_p50_s"] >= 20
        ),
        "repeat_under_5s": bool(on["repeat_s"] is not None and on["repeat_s"] < 5),
        "held_at_most_1.3x_serving": bool(
            on["held_per_serving"] is not None and on["held_per_serving"] <= 1.3
        ),
    }
    result = {
        "time": datetime.now(UTC).isoformat(),
        "wall_s": round(time.monotonic() - started, 1),
        "args": vars(args),
        "reuse_on": on,
        "reuse_off": off,
        "speedup_p50": round(off["later_p50_s"] / on["later_p50_s"], 1)
        if on["later_p50_s"] and off["later_p50_s"]
        else None,
        "targets": targets,
        "executions": {arm.name: [asdict(r) for r in arm.executions] for arm in arms},
    }
    path = RESULTS / f"reuse-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(on, off, args))
    print(f"speed-up of executions 2-{args.executions} (p50): {result['speedup_p50']}x; "
          f"targets: {targets}; {path.relative_to(REPO_ROOT)}")  # fmt: skip
    return 0 if all(targets.values()) and not on["errors"] and not off["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
