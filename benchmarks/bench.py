"""nim-agent against the naive connector, side by side, on a dedicated local control plane.

Run by ``make bench`` (``benchmarks/run.sh`` starts and stops the control plane); directly::

    DEVCLUSTER_DIR=.devcluster-bench .venv/bin/python -m benchmarks.bench [--deployments 1000]

Two connector servers run as subprocesses, called through flyteidl's gRPC stubs as flytepropeller
calls them: ``nim-agent serve`` (ours: GetTask from the watch cache) and ``pyflyte serve connector
--modules benchmarks.baseline_connector`` (task type ``nim-baseline``: one API read per GetTask,
synchronous client in a thread). Both create the same Pods and Services in one namespace. The
machine is small and shared, so every comparison is made in the same run, measurements of the two
alternate, and figures are medians or percentiles. Kubernetes API requests are counted by the API
server itself (``apiserver_request_total`` on its /metrics); requests made by the rest of the
control plane during an idle window of the same run are subtracted.

Phases (each prints a line as it ends):
 1. import time: ``import nim_agent`` vs ``import flytekit``, fresh interpreters, interleaved
 2. CreateTask latency: sequential (alternating ours/baseline), then 50 in flight
 3. wait until every pod is Ready (kwok plays the kubelets)
 4. idle window: background API requests, idle CPU of both servers
 5. GetTask latency over all deployments, one call in flight, in alternating rounds, with the API
    requests the API server counted in each connector's rounds: first the first poll after
    Ready (ours then makes the Service and records served-at), then the steady state
 6. steady state as flytepropeller polls (every deployment every 30 s): CPU seconds per minute,
    API requests per minute, RSS
 7. readiness detection: our own watch sees the pod Ready, vs the first GetTask that returns
    SUCCEEDED when polled every 100 ms
 8. burst: 200 CreateTasks sent at once to each connector in turn (far more than flytepropeller
    sends: its workers, 20 by default, each send one at a time), latencies against propeller's
    10 s deadline, with the API server's own time per POST in the same window
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVCLUSTER = Path(os.environ.get("DEVCLUSTER_DIR", REPO_ROOT / ".devcluster-bench"))
if not DEVCLUSTER.is_absolute():
    DEVCLUSTER = REPO_ROOT / DEVCLUSTER
KUBECONFIG = DEVCLUSTER / "kubeconfig"
KUBECTL = DEVCLUSTER / "bin" / "kubectl"
RESULTS = REPO_ROOT / "benchmarks" / "results"
NAMESPACE = "nim-bench"
PROBE_LABEL = "nim-bench.dev/probe"
SELECTOR = "app.kubernetes.io/managed-by in (nim-agent,nim-baseline)"
# What GetTask reads (pods, their events). Services are left out: the API server lists them itself
# (its ClusterIP repair loop); leases and nodes are the fake kubelets' traffic.
CONNECTOR_RESOURCES = frozenset({"pods", "events"})
SUCCEEDED = 3  # flyteidl TaskExecution.SUCCEEDED
CREATE_DEADLINE_S = 10.0  # flytepropeller's connector plugin: defaultTimeout
NAMES = ("ours", "baseline")

os.environ["KUBECONFIG"] = str(KUBECONFIG)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} bench: {message}", file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------------------


def pct(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
    }


# -- processes: CPU, memory -----------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    out = {}
    for key in ("VmRSS", "VmHWM", "RssAnon"):
        m = re.search(rf"^{key}:\s+(\d+) kB", status, re.M)
        out[key] = round(int(m.group(1)) / 1024, 1) if m else float("nan")
    return out


# -- profiles (--profile): py-spy attached to a server process ---------------------------------


@contextlib.contextmanager
def profiled(enabled: bool, pid: int, name: str) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs; collapsed stacks in results/."""
    if not enabled:
        yield
        return
    out = RESULTS / f"profile-{name}.txt"
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "-p",
            str(pid),
            "--format",
            "raw",
            "-o",
            str(out),
            "--rate",
            "250",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        log(f"profile of {name}: {out.relative_to(REPO_ROOT)} (benchmarks/profile_summary.py)")


@contextlib.contextmanager
def profiling(enabled: bool, conns: dict[str, Any], phase: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for c in conns.values():
            stack.enter_context(profiled(enabled, c.pid, f"{phase}-{c.name}"))
        yield


# -- the API server's own request counters ------------------------------------------------

_SAMPLE = re.compile(r"^apiserver_request_total\{([^}]*)\}\s+(\S+)$")
_POST_TIME = re.compile(r"^apiserver_request_duration_seconds_(sum|count)\{([^}]*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def apiserver_requests() -> dict[str, float]:
    """Non-watch requests counted by the API server: for the connectors' resources, and all."""
    text = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(KUBECONFIG), "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    counts = {"connector_resources": 0.0, "reads": 0.0, "pods_get": 0.0, "all": 0.0}
    for line in text.splitlines():
        t = _POST_TIME.match(line)
        if t:  # server-side time of the creates: "POST pods seconds", "POST pods count"
            labels = dict(_LABEL.findall(t.group(2)))
            resource = labels.get("resource")
            request = (labels.get("verb"), labels.get("group"), labels.get("subresource"))
            if request == ("POST", "", "") and resource in ("pods", "services"):
                key = f"POST {resource} {'seconds' if t.group(1) == 'sum' else 'n'}"
                counts[key] = counts.get(key, 0.0) + float(t.group(3))
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(1)))
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        value = float(m.group(2))
        counts["all"] += value
        if labels.get("group") == "" and labels.get("resource") in CONNECTOR_RESOURCES:
            counts["connector_resources"] += value
            if labels.get("verb") in ("GET", "LIST"):
                counts["reads"] += value
            sub = labels.get("subresource")
            key = f"{labels.get('verb')} {labels.get('resource')}{'/' + sub if sub else ''}"
            counts[key] = counts.get(key, 0.0) + value
            if labels.get("resource") == "pods" and labels.get("verb") == "GET":
                counts["pods_get"] += value
    return counts


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """after - before; breakdown keys (``VERB resource``) only where they changed."""
    main = ("connector_resources", "reads", "pods_get", "all")
    out = {k: after[k] - before.get(k, 0.0) for k in main}
    out.update(
        {
            k: v - before.get(k, 0.0)
            for k, v in after.items()
            if k not in main and v != before.get(k)
        }
    )
    return out


# -- import time ----------------------------------------------------------------------------


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout
    return float(out.strip().splitlines()[-1])


def measure_imports(runs: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"nim_agent": [], "flytekit": []}
    for _ in range(runs):
        for module in times:  # interleaved: the machine's noise falls on both
            times[module].append(import_seconds(module))
    return {
        module: {"median_s": round(statistics.median(t), 3), "runs": [round(x, 3) for x in t]}
        for module, t in times.items()
    }


# -- the connectors, as flytepropeller calls them --------------------------------------------


@dataclass
class Connector:
    name: str
    server: Any  # tests.connector_server.ConnectorServer
    stub: Any  # AsyncAgentServiceStub on a grpc.aio channel
    task_type: str
    template: Any
    probe_template: Any
    burst_template: Any
    prefix: str
    deployments: list[bytes] = field(default_factory=list)  # resource_meta of each
    create_errors: list[str] = field(default_factory=list)  # failed CreateTask attempts

    @property
    def pid(self) -> int:
        return int(self.server.process.pid)

    async def create(
        self, execution_name: str, *, probe: bool = False, burst: bool = False
    ) -> tuple[float, bytes]:
        from tests.connector_server import create_request, execution

        tmpl = self.burst_template if burst else self.probe_template if probe else self.template
        request = create_request(tmpl, execution(execution_name), NAMESPACE)
        import grpc

        t0 = time.perf_counter()
        for attempt in range(1, 4):  # flytepropeller retries a failed CreateTask (idempotent)
            try:
                response = await self.stub.CreateTask(request, timeout=30)
                return time.perf_counter() - t0, response.resource_meta
            except grpc.aio.AioRpcError as exc:
                self.create_errors.append(f"{exc.code().name}: {exc.details()[-200:]}")
                if attempt == 3:
                    raise
        raise AssertionError("unreachable")

    async def get(self, resource_meta: bytes) -> tuple[float, Any]:
        from tests.connector_server import get_request

        request = get_request(resource_meta, self.task_type)
        t0 = time.perf_counter()
        response = await self.stub.GetTask(request, timeout=30)
        return time.perf_counter() - t0, response.resource


def make_templates() -> tuple[Any, Any, Any]:
    from nim_agent import NIM, NIMSecrets, NIMTask
    from tests.connector_server import task_template

    def nim(gpu: int = 1, **labels: str) -> NIM:
        return NIM(
            secrets=NIMSecrets(
                ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="_FSEC_"
            ),
            cpu=1 if gpu else "100m",
            gpu=gpu,
            mem="2Gi" if gpu else "256Mi",
            shm_size="1Gi" if gpu else "64Mi",
            labels=labels or None,
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        )

    ttl = timedelta(hours=6)
    main = task_template(NIMTask(name="bench.llama", nim=nim(), ttl=ttl))
    probe = task_template(NIMTask(name="bench.probe", nim=nim(**{PROBE_LABEL: "1"}), ttl=ttl))
    # Burst deployments take no GPU, so that 2 x 200 more fit beside the 2,000 live ones.
    burst = task_template(
        NIMTask(name="bench.burst", nim=nim(gpu=0, **{PROBE_LABEL: "1"}), ttl=ttl)
    )
    return main, probe, burst


def retyped(template: Any, task_type: str) -> Any:
    copy = type(template)()
    copy.CopyFrom(template)
    copy.type = task_type
    return copy


async def run_limited(jobs: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run the jobs with at most ``limit`` in flight; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


# -- watching readiness ourselves -------------------------------------------------------------


class ReadyWatch:
    """Our own list+watch of the benchmark's pods: when each was first seen Ready."""

    def __init__(self) -> None:
        self.ready_at: dict[str, float] = {}
        self.cache: Any = None

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        name = str((pod.get("metadata") or {}).get("name") or "")
        if kind == "DELETED" or name in self.ready_at:
            return
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == "True":
                self.ready_at[name] = time.monotonic()

    async def start(self) -> None:
        from nim_agent.runtime import kube_for_current_loop, supervised
        from nim_agent.watch import PodCache

        self.cache = PodCache(
            kube_for_current_loop,
            label_selector=SELECTOR,
            namespaces=[NAMESPACE],
            on_event=self._on_event,
        )
        self.cache.start(supervised)
        async with asyncio.timeout(60):
            await self.cache.wait_synced()

    async def wait_ready(self, count: int, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        last = -1
        while len(self.ready_at) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.ready_at)} of {count} pods Ready")
            if len(self.ready_at) != last:
                last = len(self.ready_at)
            await asyncio.sleep(1)

    async def stop(self) -> None:
        if self.cache is not None:
            await self.cache.stop()


# -- phases -------------------------------------------------------------------------------


async def phase_create(
    conns: dict[str, Connector], total: int, sequential: int, concurrency: int
) -> dict[str, Any]:
    seq: dict[str, list[float]] = {n: [] for n in conns}
    conc: dict[str, list[float]] = {n: [] for n in conns}
    index = dict.fromkeys(conns, 0)

    def next_name(c: Connector) -> str:
        index[c.name] += 1
        return f"{c.prefix}{index[c.name]:05d}"

    floor = ApiFloor(next(iter(conns.values())).template)
    for i in range(sequential):
        for c in conns.values():  # alternating, one request in flight
            latency, meta = await c.create(next_name(c))
            seq[c.name].append(latency)
            c.deployments.append(meta)
        await floor.create(f"f{i:05d}")
    await floor.clean()
    log(f"sequential creates done: {sequential} each")
    before = apiserver_requests()
    block = 2 * concurrency
    while any(index[n] < total for n in conns):
        for c in conns.values():  # alternating blocks, `concurrency` requests in flight
            n = min(block, total - index[c.name])
            if n <= 0:
                continue
            names = [next_name(c) for _ in range(n)]
            results = await run_limited(
                [lambda c=c, name=name: c.create(name) for name in names], concurrency
            )
            for latency, meta in results:
                conc[c.name].append(latency)
                c.deployments.append(meta)
    log(f"concurrent creates done: {total} deployments each")
    server_side = delta(apiserver_requests(), before)
    out: dict[str, Any] = {
        n: {"sequential": summary_ms(seq[n]), f"concurrent_{concurrency}": summary_ms(conc[n])}
        for n in conns
    }
    for c in conns.values():
        out[c.name]["failed_attempts"] = len(c.create_errors)
        out[c.name]["failures_sample"] = sorted(set(c.create_errors))[:5]
    out[f"apiserver_mean_ms_concurrent_{concurrency}"] = {
        kind: round(
            1000
            * server_side.get(f"POST {kind} seconds", 0.0)
            / max(server_side.get(f"POST {kind} n", 0.0), 1),
            1,
        )
        for kind in ("pods", "services")
    }
    out["api_floor"] = {
        "what": "POST pod, then POST service, from the benchmark process (aiohttp), no gRPC",
        "pod": summary_ms(floor.pod),
        "pod_and_service": summary_ms(floor.both),
    }
    return out


class ApiFloor:
    """What CreateTask cannot go below: the API server's two round trips, timed directly."""

    def __init__(self, template: Any) -> None:
        from nim_agent.spec import from_custom

        self.nim = from_custom(json_format_dict(template.custom)).nim
        self.pod: list[float] = []
        self.both: list[float] = []
        self.names: list[str] = []

    async def create(self, execution_name: str) -> None:
        from nim_agent.contract import LABEL_MANAGED_BY
        from nim_agent.render import (
            DeploymentIdentity,
            ExecutionIdentity,
            render_pod,
            render_service,
        )
        from nim_agent.runtime import kube_for_current_loop
        from nim_agent.settings import ConnectorSettings

        kube = await kube_for_current_loop()
        identity = DeploymentIdentity.for_execution(
            ExecutionIdentity("flytesnacks", "development", execution_name, "n0", 0), NAMESPACE
        )
        pod = render_pod(self.nim, identity, ConnectorSettings.load(environ={}))
        pod["metadata"]["labels"][LABEL_MANAGED_BY] = "nim-bench-floor"
        t0 = time.perf_counter()
        created = await kube.create_pod(NAMESPACE, pod)
        t1 = time.perf_counter()
        service = render_service(self.nim, identity, pod_uid=created["metadata"]["uid"])
        await kube.create_service(NAMESPACE, service)
        t2 = time.perf_counter()
        self.pod.append(t1 - t0)
        self.both.append(t2 - t0)
        self.names.append(identity.name)

    async def clean(self) -> None:
        from nim_agent.runtime import kube_for_current_loop

        kube = await kube_for_current_loop()
        for name in self.names:
            await kube.delete_pod(NAMESPACE, name, grace_seconds=0)


def json_format_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    doc: dict[str, Any] = json_format.MessageToDict(message)
    return doc


async def idle_window(conns: dict[str, Connector], seconds: float) -> dict[str, Any]:
    before_api = apiserver_requests()
    before_cpu = {n: cpu_seconds(c.pid) for n, c in conns.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    api = delta(apiserver_requests(), before_api)
    return {
        "seconds": round(elapsed, 1),
        "api_requests": api,
        "api_per_s": {k: v / elapsed for k, v in api.items()},
        "cpu_s_per_min": {
            n: round((cpu_seconds(c.pid) - before_cpu[n]) * 60 / elapsed, 3)
            for n, c in conns.items()
        },
    }


async def phase_get(
    conns: dict[str, Connector], rounds: int, background: dict[str, float]
) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {n: [] for n in conns}
    api: dict[str, dict[str, float]] = {
        n: {"connector_resources": 0.0, "reads": 0.0, "pods_get": 0.0, "all": 0.0} for n in conns
    }
    calls = dict.fromkeys(conns, 0)
    window = dict.fromkeys(conns, 0.0)
    phases: dict[str, dict[int, int]] = {n: {} for n in conns}
    for _ in range(rounds):
        for c in conns.values():
            metas = list(c.deployments)
            random.shuffle(metas)
            before = apiserver_requests()
            t0 = time.monotonic()
            for meta in metas:  # one call in flight: latency, not queueing
                latency, resource = await c.get(meta)
                latencies[c.name].append(latency)
                phases[c.name][resource.phase] = phases[c.name].get(resource.phase, 0) + 1
            window[c.name] += time.monotonic() - t0
            got = delta(apiserver_requests(), before)
            for k in got:
                api[c.name][k] = api[c.name].get(k, 0.0) + got[k]
            calls[c.name] += len(metas)
        log(f"GetTask round done ({', '.join(f'{n} {calls[n]}' for n in conns)} calls)")
    out: dict[str, Any] = {}
    for n in conns:
        corrected = {
            k: max(0.0, api[n][k] - background.get(k, 0.0) * window[n]) / calls[n] for k in api[n]
        }
        out[n] = {
            **summary_ms(latencies[n]),
            "phases": phases[n],
            "api_requests_raw": api[n],
            "window_s": round(window[n], 1),
            "api_requests_per_get": {k: round(v, 3) for k, v in corrected.items()},
        }
    return out


async def phase_steady(
    conns: dict[str, Connector], seconds: float, period: float, background: dict[str, float]
) -> dict[str, Any]:
    """Each connector alone in its window, polled as flytepropeller would: every deployment
    once per ``period`` seconds, evenly spread."""
    out: dict[str, Any] = {}
    for c in conns.values():
        n = len(c.deployments)
        interval = period / n
        total = int(seconds / interval)
        before_api = apiserver_requests()
        before_cpu = {m: cpu_seconds(x.pid) for m, x in conns.items()}
        latencies: list[float] = []
        pending: set[asyncio.Task[Any]] = set()
        t0 = time.monotonic()
        for i in range(total):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(c.get(c.deployments[i % n]))
            task.add_done_callback(lambda t, out=latencies: out.append(t.result()[0]))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        elapsed = time.monotonic() - t0
        api = delta(apiserver_requests(), before_api)
        corrected = {k: max(0.0, v - background.get(k, 0.0) * elapsed) for k, v in api.items()}
        out[c.name] = {
            "seconds": round(elapsed, 1),
            "gets": total,
            "gets_per_s": round(total / elapsed, 1),
            "latency": summary_ms(latencies),
            "cpu_s_per_min": round((cpu_seconds(c.pid) - before_cpu[c.name]) * 60 / elapsed, 3),
            "other_server_cpu_s_per_min": {
                m: round((cpu_seconds(x.pid) - before_cpu[m]) * 60 / elapsed, 3)
                for m, x in conns.items()
                if m != c.name
            },
            "api_requests_per_min": {k: round(v * 60 / elapsed, 1) for k, v in corrected.items()},
            "api_requests_per_min_raw": {k: round(v * 60 / elapsed, 1) for k, v in api.items()},
            "rss_mb": rss_mb(c.pid),
        }
        log(
            f"steady window {c.name}: {total} GetTask in {elapsed:.0f}s, "
            f"cpu {out[c.name]['cpu_s_per_min']} s/min"
        )
    return out


async def phase_readiness(
    conns: dict[str, Connector],
    watch: ReadyWatch,
    count: int,
    parallel: int,
    interval: float,
    background: dict[str, float],
) -> dict[str, Any]:
    """Batches of ``parallel`` new deployments, ours and the baseline's in turn, each polled
    every ``interval`` from CreateTask to SUCCEEDED; the API server counts the reads."""
    detection: dict[str, list[float]] = {n: [] for n in conns}
    phases: dict[str, dict[int, int]] = {n: {} for n in conns}
    reads = dict.fromkeys(conns, 0.0)
    window = dict.fromkeys(conns, 0.0)

    async def follow(c: Connector, meta: bytes) -> None:
        name = json.loads(meta)["name"]
        t0 = time.monotonic()
        k = 0
        while True:
            _, resource = await c.get(meta)
            seen = time.monotonic()
            k += 1
            phases[c.name][resource.phase] = phases[c.name].get(resource.phase, 0) + 1
            if resource.phase == SUCCEEDED:
                break
            if seen - t0 > 120:
                raise TimeoutError(f"{c.name}: {name} not SUCCEEDED after 120s")
            await asyncio.sleep(max(0.0, t0 + k * interval - time.monotonic()))
        for _ in range(100):  # our watch may see it a moment after the connector did
            if name in watch.ready_at:
                break
            await asyncio.sleep(0.05)
        detection[c.name].append(seen - watch.ready_at[name])

    done = 0
    while done < count:
        batch = min(parallel, count - done)
        for c in conns.values():
            before = apiserver_requests()
            t0 = time.monotonic()
            metas = [
                (await c.create(f"{c.prefix}probe-{done + i:03d}", probe=True))[1]
                for i in range(batch)
            ]
            await asyncio.gather(*(follow(c, meta) for meta in metas))
            window[c.name] += time.monotonic() - t0
            reads[c.name] += delta(apiserver_requests(), before)["reads"]
        done += batch
    log(f"readiness: {count} deployments each")
    out: dict[str, Any] = {}
    for n in conns:
        gets = sum(phases[n].values())
        extra = max(0.0, reads[n] - background.get("reads", 0.0) * window[n])
        out[n] = {
            **summary_ms(detection[n]),
            "mean_ms": round(1000 * statistics.mean(detection[n]), 1),
            "gets_by_phase": phases[n],
            "api_reads_per_get_while_starting": round(extra / max(gets, 1), 3),
        }
    return out


async def phase_burst(conns: dict[str, Connector], size: int, rounds: int) -> dict[str, Any]:
    """``size`` CreateTasks at once to one connector, then to the other, ``rounds`` times.

    Each call waits up to 60 s so the whole tail is measured; calls beyond propeller's 10 s
    deadline are counted (propeller would have failed those attempts). The API server's own
    time per POST is taken from its metrics over each connector's bursts.
    """
    latencies: dict[str, list[float]] = {n: [] for n in conns}
    errors: dict[str, list[str]] = {n: [] for n in conns}
    server: dict[str, dict[str, float]] = {n: {} for n in conns}
    import grpc

    from tests.connector_server import create_request, execution

    async def one(c: Connector, name: str) -> None:
        request = create_request(c.burst_template, execution(name), NAMESPACE)
        t0 = time.perf_counter()
        try:
            await c.stub.CreateTask(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            errors[c.name].append(f"{exc.code().name}: {exc.details()[-120:]}")
            return
        latencies[c.name].append(time.perf_counter() - t0)

    for r in range(rounds):
        for c in conns.values():
            before = apiserver_requests()
            await asyncio.gather(*(one(c, f"{c.prefix}burst-{r}-{i:04d}") for i in range(size)))
            got = delta(apiserver_requests(), before)
            for k, v in got.items():
                if k.startswith("POST "):
                    server[c.name][k] = server[c.name].get(k, 0.0) + v
            await asyncio.sleep(5)  # let the API server and both watches settle
        log(f"burst round {r + 1} of {rounds} done")
    out: dict[str, Any] = {}
    for n in conns:
        ms = [s * 1000 for s in latencies[n]]
        out[n] = {
            **summary_ms(latencies[n]),
            "exceeded_deadline": sum(1 for x in ms if x > CREATE_DEADLINE_S * 1000),
            "errors": len(errors[n]),
            "errors_sample": sorted(set(errors[n]))[:5],
            "apiserver_mean_ms": {
                kind: round(
                    1000
                    * server[n].get(f"POST {kind} seconds", 0.0)
                    / max(server[n].get(f"POST {kind} n", 0.0), 1),
                    1,
                )
                for kind in ("pods", "services")
            },
            "apiserver_posts": {
                kind: server[n].get(f"POST {kind} n", 0.0) for kind in ("pods", "services")
            },
        }
    return out


# -- the run --------------------------------------------------------------------------------


def kubectl(*args: str, timeout: float = 600) -> None:
    subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(KUBECONFIG), *args],
        capture_output=True,
        check=False,
        timeout=timeout,
    )


def fresh_namespace() -> None:
    """The benchmark's namespace, without pods or Services left by an earlier run."""
    kubectl("create", "namespace", NAMESPACE)
    kubectl("delete", "pods,services", "--all", "-n", NAMESPACE, "--wait=true")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    from flyteidl.service import agent_pb2_grpc

    from tests.connector_server import ConnectorServer

    class Server(ConnectorServer):
        def __init__(self, name: str, baseline: bool) -> None:
            super().__init__(
                KUBECONFIG,
                settings={"PYTHONPATH": str(REPO_ROOT)},
                command="pyflyte" if baseline else "nim-agent",
                log_path=RESULTS / f"{name}-server.log",
            )
            self.baseline = baseline

        def argv(self) -> list[str]:
            extra = ["--modules", "benchmarks.baseline_connector"] if self.baseline else []
            return [*super().argv(), *extra]

    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
        "params": vars(args),
    }
    log(f"import times ({args.import_runs} runs each, interleaved)")
    results["import"] = measure_imports(args.import_runs)
    log(
        f"import: {results['import']['nim_agent']['median_s']}s nim_agent, "
        f"{results['import']['flytekit']['median_s']}s flytekit"
    )

    fresh_namespace()
    main, probe, burst = make_templates()
    servers = {"ours": Server("ours", False), "baseline": Server("baseline", True)}
    log("starting the two connector servers")
    for s in servers.values():
        s.log_path.unlink(missing_ok=True)
        s.start(timeout=180)
    watch = ReadyWatch()
    channels = {n: grpc.aio.insecure_channel(s.address) for n, s in servers.items()}
    try:
        conns = {
            "ours": Connector(
                "ours",
                servers["ours"],
                agent_pb2_grpc.AsyncAgentServiceStub(channels["ours"]),
                "nim",
                main,
                probe,
                burst,
                "o",
            ),
            "baseline": Connector(
                "baseline",
                servers["baseline"],
                agent_pb2_grpc.AsyncAgentServiceStub(channels["baseline"]),
                "nim-baseline",
                retyped(main, "nim-baseline"),
                retyped(probe, "nim-baseline"),
                retyped(burst, "nim-baseline"),
                "b",
            ),
        }
        await watch.start()
        # Warm up: one deployment each to SUCCEEDED (lazy imports, connections, the cache).
        for c in conns.values():
            _, meta = await c.create(f"{c.prefix}warmup")
            for _ in range(300):
                if (await c.get(meta))[1].phase == SUCCEEDED:
                    break
                await asyncio.sleep(0.2)
        results["rss_mb_before"] = {n: rss_mb(c.pid) for n, c in conns.items()}

        log(
            f"CreateTask: {args.sequential} sequential, then up to {args.deployments} "
            f"{args.concurrency} at a time, each"
        )
        with profiling(args.profile, conns, "create"):
            results["create"] = await phase_create(
                conns, args.deployments, args.sequential, args.concurrency
            )
        expected = 2 * (args.deployments + 1)
        log(f"waiting for {expected} pods to be Ready")
        t0 = time.monotonic()
        await watch.wait_ready(expected, within_s=args.ready_timeout)
        results["all_ready_after_s"] = round(time.monotonic() - t0, 1)
        await asyncio.sleep(5)  # let the last status patches settle

        log(f"idle window ({args.idle_seconds}s)")
        idle = await idle_window(conns, args.idle_seconds)
        results["idle"] = idle
        background = idle["api_per_s"]

        # The first GetTask of a Ready deployment makes its Service and records that it serves
        # (two writes, once per deployment; the baseline made its Service at create): measured
        # apart from the steady state that follows.
        log("GetTask latency, first poll after Ready: 1 round over every deployment, each")
        results["first_get"] = await phase_get(conns, 1, background)
        log(f"GetTask latency: {args.get_rounds} rounds over every deployment, each")
        with profiling(args.profile, conns, "get"):
            results["get"] = await phase_get(conns, args.get_rounds, background)

        log(
            f"steady state: {args.steady_seconds}s per connector, every deployment polled "
            f"every {args.poll_period}s"
        )
        with profiling(args.profile, conns, "steady"):
            results["steady"] = await phase_steady(
                conns, args.steady_seconds, args.poll_period, background
            )
        results["rss_mb"] = {n: rss_mb(c.pid) for n, c in conns.items()}

        log(f"readiness detection: {args.readiness} deployments each, polled every 100 ms")
        with profiling(args.profile, conns, "readiness"):
            results["readiness"] = await phase_readiness(
                conns, watch, args.readiness, args.readiness_parallel, 0.1, background
            )
        log(
            f"burst: {args.burst} CreateTasks at once, each connector in turn, {args.burst_rounds}x"
        )
        with profiling(args.profile, conns, "burst"):
            results["burst"] = await phase_burst(conns, args.burst, args.burst_rounds)
        results["ours_kube_requests_total"] = servers["ours"].metric(
            "nim_agent_kube_requests_total"
        )
    finally:
        from nim_agent.runtime import close_kube_for_current_loop

        await watch.stop()
        await close_kube_for_current_loop()
        for ch in channels.values():
            await ch.close()
        for s in servers.values():
            s.stop()
        if not args.keep:
            kubectl("delete", "pods,services", "--all", "-n", NAMESPACE, "--wait=false")
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


# -- report ---------------------------------------------------------------------------------


def table(r: dict[str, Any]) -> str:
    conc = f"concurrent_{r['params']['concurrency']}"
    rows: list[tuple[str, float, float, str]] = []

    def row(label: str, ours: float, base: float, target: str = "") -> None:
        rows.append((label, ours, base, target))

    for kind, label in (
        ("sequential", "sequential"),
        (conc, f"{r['params']['concurrency']} at a time"),
    ):
        for p in ("p50", "p99"):
            row(
                f"CreateTask {p}, {label} (ms)",
                r["create"]["ours"][kind][f"{p}_ms"],
                r["create"]["baseline"][kind][f"{p}_ms"],
                "<= 30" if p == "p50" else "",
            )
    row(
        "  CreateTask attempts failed (retried)",
        r["create"]["ours"]["failed_attempts"],
        r["create"]["baseline"]["failed_attempts"],
        "0",
    )
    burst = r["burst"]
    for p in ("p50", "p99", "max"):
        row(
            f"CreateTask {p}, {r['params']['burst']} at once (ms)",
            burst["ours"][f"{p}_ms"],
            burst["baseline"][f"{p}_ms"],
            "< 10000" if p == "max" else "",
        )
    row(
        "  beyond propeller's 10 s deadline",
        burst["ours"]["exceeded_deadline"],
        burst["baseline"]["exceeded_deadline"],
        "0",
    )
    row(
        "  API server's mean POST pod (ms)",
        burst["ours"]["apiserver_mean_ms"]["pods"],
        burst["baseline"]["apiserver_mean_ms"]["pods"],
    )
    floor = r["create"]["api_floor"]["pod_and_service"]
    row("  API floor: POST pod + POST service p50", floor["p50_ms"], floor["p50_ms"], "(both)")
    n = r["params"]["deployments"]
    if "first_get" in r:
        for p in ("p50", "p99"):
            row(
                f"first GetTask after Ready {p} (ms)",
                r["first_get"]["ours"][f"{p}_ms"],
                r["first_get"]["baseline"][f"{p}_ms"],
                "(Service + served-at)" if p == "p50" else "",
            )
    for p in ("p50", "p99"):
        row(
            f"GetTask {p}, {n} live (ms)",
            r["get"]["ours"][f"{p}_ms"],
            r["get"]["baseline"][f"{p}_ms"],
            "<= 2" if p == "p50" else "",
        )
    row(
        "API requests per GetTask",
        r["get"]["ours"]["api_requests_per_get"]["connector_resources"],
        r["get"]["baseline"]["api_requests_per_get"]["connector_resources"],
        "0",
    )
    for p, key in (("p50", "p50_ms"), ("p90", "p90_ms"), ("max", "max_ms")):
        row(
            f"Readiness detection {p} (ms)",
            r["readiness"]["ours"][key],
            r["readiness"]["baseline"][key],
            "<= 100" if p == "p50" else "",
        )
    row(
        "  API reads per GetTask, QUEUED..Ready",
        r["readiness"]["ours"]["api_reads_per_get_while_starting"],
        r["readiness"]["baseline"]["api_reads_per_get_while_starting"],
    )
    row(
        f"RSS, {n} live (MB)",
        r["rss_mb"]["ours"]["VmRSS"],
        r["rss_mb"]["baseline"]["VmRSS"],
        "<= 200",
    )
    row(
        "CPU s/min, idle",
        r["idle"]["cpu_s_per_min"]["ours"],
        r["idle"]["cpu_s_per_min"]["baseline"],
    )
    period = r["params"]["poll_period"]
    row(
        f"CPU s/min, polled every {period:g}s",
        r["steady"]["ours"]["cpu_s_per_min"],
        r["steady"]["baseline"]["cpu_s_per_min"],
    )
    row(
        "API requests/min, polled",
        r["steady"]["ours"]["api_requests_per_min"]["connector_resources"],
        r["steady"]["baseline"]["api_requests_per_min"]["connector_resources"],
    )
    lines = [
        f"{'':44} {'ours':>10} {'baseline':>10} {'base/ours':>10}  target (ours)",
    ]
    for label, ours, base, target in rows:
        ratio = f"{base / ours:.1f}x" if ours else ("inf" if base else "-")
        lines.append(f"{label:44} {ours:>10.2f} {base:>10.2f} {ratio:>10}  {target}")
    server = r["create"].get(f"apiserver_mean_ms_concurrent_{r['params']['concurrency']}", {})
    lines_after = [
        f"API server's own time per create, {r['params']['concurrency']} at a time (both "
        f"connectors): POST pod {server.get('pods')} ms, POST service {server.get('services')} "
        "ms (mean)"
    ]
    imp = r["import"]
    lines.append(
        f"{'import (s, median)':44} {imp['nim_agent']['median_s']:>10.3f} "
        f"{imp['flytekit']['median_s']:>10.3f} {'':>10}  (nim_agent vs flytekit alone)"
    )
    return "\n".join(lines + lines_after)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--deployments", type=int, default=1000, help="live deployments per connector")
    p.add_argument("--sequential", type=int, default=100, help="creates measured one at a time")
    p.add_argument("--concurrency", type=int, default=50, help="creates in flight")
    p.add_argument("--get-rounds", type=int, default=2, help="GetTask rounds over every deployment")
    p.add_argument("--idle-seconds", type=float, default=30)
    p.add_argument("--steady-seconds", type=float, default=60)
    p.add_argument("--poll-period", type=float, default=30, help="flytepropeller's resync period")
    p.add_argument("--readiness", type=int, default=20, help="deployments followed to Ready")
    p.add_argument("--readiness-parallel", type=int, default=5)
    p.add_argument("--burst", type=int, default=200, help="CreateTasks sent at once")
    p.add_argument("--burst-rounds", type=int, default=2)
    p.add_argument("--import-runs", type=int, default=7)
    p.add_argument("--ready-timeout", type=float, default=600)
    p.add_argument("--keep", action="store_true", help="leave the deployments in place")
    p.add_argument("--profile", action="store_true", help="py-spy both servers, per phase")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not KUBECONFIG.is_file():
        log(f"no control plane: {KUBECONFIG} is missing (benchmarks/run.sh starts one)")
        return 1
    results = asyncio.run(run(args))
    out = args.out or RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    print(f"\nresults: {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
