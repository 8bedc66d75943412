"""Prometheus metrics of nim-agent, all prefixed ``nim_agent_``.

They live in prometheus_client's default registry, so flytekit's connector server exposes them
on its metrics port (9090 by default) next to its own ``flyte_connector_*`` series.

Metric                                        | labels
--------------------------------------------- | -----------------------------
nim_agent_deployments                         | phase (gauge: live deployments, not stopped)
nim_agent_deployments_created_total           | (counter)
nim_agent_time_to_ready_seconds               | (histogram: pod creation -> Ready)
nim_agent_failures_total                      | reason
nim_agent_deletions_total                     | cause: servers removed (stopped: ttl, failure,
                                              | unhealthy; deleted: abort, teardown, superseded)
nim_agent_serving_interruptions_total         | (counter: a server that had served went unready)
nim_agent_unhealthy_servers                   | (gauge: served, unready now; from the sweep)
nim_agent_loop_restarts_total                 | loop (a background loop failed and was restarted)
nim_agent_leader                              | (gauge: 1 while this process holds the reaper Lease)
nim_agent_kube_requests_total                 | verb, code
nim_agent_watch_restarts_total                | reason
nim_agent_serving_checks_total                | route (direct, proxy), outcome (listed, failed)
nim_agent_serving_check_seconds               | route (histogram: one GET /v1/models)
nim_agent_shared_attaches_total               | server (created: this execution made the shared
                                              | server; starting / serving: it attached to one)
nim_agent_cold_starts_avoided_total           | (counter: executions that attached to a running
                                              | shared server instead of starting their own)
nim_agent_shared_releases_total               | by (teardown, abort): holders released
nim_agent_shared_server_holders               | namespace, server (gauge, from the sweep)
nim_agent_shared_server_idle_seconds          | namespace, server (gauge: since its last holder
                                              | ended; 0 while held)
nim_agent_shared_server_gpu_seconds           | namespace, server (gauge: GPUs x seconds the
                                              | server has held them so far)
nim_agent_shared_server_adapters              | namespace, server (gauge: adapters it serves)
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DEPLOYMENTS = Gauge(
    "nim_agent_deployments",
    "Live NIM deployments (not stopped or being deleted) in the watch cache, by Flyte phase.",
    ["phase"],
)
DEPLOYMENTS_CREATED = Counter(
    "nim_agent_deployments_created",
    "NIM deployments created (retried creates of an existing deployment are not counted).",
)
TIME_TO_READY = Histogram(
    "nim_agent_time_to_ready_seconds",
    "Time from pod creation to the NIM server's Ready condition.",
    buckets=(5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600),
)
FAILURES = Counter(
    "nim_agent_failures",
    "Deployments reported FAILED or RETRYABLE_FAILED, by reason.",
    ["reason"],
)
DELETIONS = Counter(
    "nim_agent_deletions",
    "Deployments deleted by nim-agent, by cause.",
    ["cause"],
)
KUBE_REQUESTS = Counter(
    "nim_agent_kube_requests",
    "Requests sent to the Kubernetes API server, by verb and HTTP status code.",
    ["verb", "code"],
)
SERVING_INTERRUPTIONS = Counter(
    "nim_agent_serving_interruptions",
    "Times a NIM server that had served became unready (a readiness probe missed, a restart).",
)
UNHEALTHY_SERVERS = Gauge(
    "nim_agent_unhealthy_servers",
    "NIM servers that have served and are unready now (counted by the cleanup sweep).",
)
LOOP_RESTARTS = Counter(
    "nim_agent_loop_restarts",
    "Background loops (pod watch, cleanup sweep, leader election) that failed and were restarted.",
    ["loop"],
)
LEADER = Gauge(
    "nim_agent_leader",
    "1 while this process holds the Lease that makes it run the cleanup sweep, else 0.",
)
WATCH_RESTARTS = Counter(
    "nim_agent_watch_restarts",
    "Restarts of the pod watch, by reason (expired, error, timeout).",
    ["reason"],
)

SERVING_CHECKS = Counter(
    "nim_agent_serving_checks",
    "GET /v1/models requests to NIM servers, by route and outcome (listed: a model list came).",
    ["route", "outcome"],
)
SERVING_CHECK_SECONDS = Histogram(
    "nim_agent_serving_check_seconds",
    "Duration of one GET /v1/models request to a NIM server.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class _Once:
    """Remembers recent keys (bounded), so a pod polled many times is counted once."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._seen: dict[str, None] = {}

    def first(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            del self._seen[next(iter(self._seen))]
        return True


_failed = _Once()
_ready = _Once()


def count_failure(pod_uid: str, reason: str) -> None:
    """Count a deployment's failure once, however often it is polled or swept."""
    if _failed.first(pod_uid or reason):
        FAILURES.labels(reason).inc()


def observe_ready(pod_uid: str, seconds: float | None) -> None:
    """Record a deployment's time to ready once."""
    if seconds is not None and _ready.first(pod_uid):
        TIME_TO_READY.observe(seconds)


ATTACHES = Counter(
    "nim_agent_shared_attaches",
    "Executions holding a shared NIM server, by the server's state when they came "
    "(created: they made it; starting; serving).",
    ["server"],
)
COLD_STARTS_AVOIDED = Counter(
    "nim_agent_cold_starts_avoided",
    "Executions that attached to a running shared NIM server instead of starting their own.",
)
RELEASES = Counter(
    "nim_agent_shared_releases",
    "Holders of shared NIM servers released, by what released them (teardown, abort).",
    ["by"],
)
_SERVER = ["namespace", "server"]
SHARED_HOLDERS = Gauge(
    "nim_agent_shared_server_holders",
    "Live holders of each shared NIM server (from the cleanup sweep).",
    _SERVER,
)
SHARED_IDLE_SECONDS = Gauge(
    "nim_agent_shared_server_idle_seconds",
    "Seconds since each shared NIM server's last holder ended (0 while held).",
    _SERVER,
)
SHARED_GPU_SECONDS = Gauge(
    "nim_agent_shared_server_gpu_seconds",
    "GPUs x seconds each shared NIM server has held its GPUs so far.",
    _SERVER,
)
SHARED_ADAPTERS = Gauge(
    "nim_agent_shared_server_adapters",
    "Adapters each shared NIM server serves (bound to it by its holders).",
    _SERVER,
)
_SHARED_GAUGES = (SHARED_HOLDERS, SHARED_IDLE_SECONDS, SHARED_GPU_SECONDS, SHARED_ADAPTERS)
_shared_seen: set[tuple[str, str]] = set()


def set_shared_servers(values: dict[tuple[str, str], tuple[int, float, float, int]]) -> None:
    """The shared servers' gauges from one sweep: {(namespace, server): (holders, idle seconds,
    GPU-seconds, adapters)}; servers no longer present lose their series."""
    for key, numbers in values.items():
        for gauge, value in zip(_SHARED_GAUGES, numbers, strict=True):
            gauge.labels(*key).set(value)
    for key in _shared_seen - set(values):
        for gauge in _SHARED_GAUGES:
            gauge.remove(*key)
    _shared_seen.clear()
    _shared_seen.update(values)
