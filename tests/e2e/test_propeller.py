"""The real caller: flytepropeller v1.16.8 runs workflows with NIM tasks through our connector.

The suite runs twice, once per way of running the connector:

- ``process``: `nim-agent serve` on this machine; propeller dials its port;
- ``chart``: as operators run it (issue 13): the image `make image` built from the Dockerfile,
  installed by the Helm chart with two replicas on the real node nim-real-0; propeller (on this
  machine) dials the endpoint the chart's NOTES print, ``dns:///<release>.<ns>.svc.cluster.local``,
  resolved by the cluster DNS (the real node's CoreDNS) to the Service's ClusterIP, which
  kube-proxy routes to the replicas. That mode adds a rolling restart of the connector Deployment
  in the middle of a workflow.

Per mode: the connector, then flytepropeller (devcluster/propeller/run.sh, with its own state
folder). Each test creates a FlyteWorkflow in a fresh namespace with
devcluster/propeller/flyte_run.py, waits for it, and asserts on what propeller reports (workflow
and node status, outputs in its storage, execution events) and on the cluster. NIM pods are
simulated by kwok (`nim-agent.dev/simulate`, see devcluster/kwok).

Needs `make cluster-up`, `make propeller-build` and, for the chart mode, `make image` and the real
node (a missing piece fails, never skips).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes import client

from nim_agent.contract import endpoint_for
from nim_agent.render import deployment_name_for
from tests.chart_release import ChartRelease, real_node_values
from tests.cluster import our_pods, our_services, running_pods, wait_for
from tests.connector_server import ConnectorServer
from tests.propeller import Propeller
from tests.realnode import ImagesEnv

WORKFLOWS = "tests.e2e.propeller_workflows"
PROJECT, DOMAIN = "flytesnacks", "development"
CREATE_TIMEOUT_S = 10.0  # propeller's CreateTask deadline (config.yaml, as upstream's default)
LATENCY = "flyte_connector_request_latency_seconds"


@dataclass
class Run:
    """One workflow run: propeller's final status and the CreateTask calls it made."""

    execution_id: str
    namespace: str
    status: dict[str, Any] = field(default_factory=dict)
    create_calls: float = 0.0
    create_seconds: float = 0.0
    finished: bool = False
    stats_before: tuple[float, float] = (0.0, 0.0)


class ConnectorUnderTest(Protocol):
    """What the tests read of the connector, a process or a chart release."""

    def metric(self, name: str, **labels: str) -> float: ...
    def log_tail(self, lines: int = 40) -> str: ...


@dataclass
class Flyte:
    mode: str
    connector: ConnectorUnderTest
    propeller: Propeller
    runs: list[Run] = field(default_factory=list)

    def create_stats(self) -> tuple[float, float]:
        """(calls, total seconds) of CreateTask for task type nim, from the connector's metrics."""
        labels = {"task_type": "nim", "operation": "create"}
        return (
            self.connector.metric(f"{LATENCY}_count", **labels),
            self.connector.metric(f"{LATENCY}_sum", **labels),
        )

    def start(self, workflow: str, namespace: str) -> Run:
        run = Run("e" + uuid.uuid4().hex[:10], namespace, stats_before=self.create_stats())
        self.propeller.create(f"{WORKFLOWS}:{workflow}", namespace, run.execution_id)
        self.runs.append(run)
        return run

    def finish(self, run: Run) -> None:
        """Record the CreateTask calls made since `start` (one per NIM node, unless retried)."""
        calls, seconds = self.create_stats()
        run.create_calls = calls - run.stats_before[0]
        run.create_seconds = seconds - run.stats_before[1]
        run.finished = True

    def run(self, workflow: str, namespace: str, timeout: float = 180) -> Run:
        run = self.start(workflow, namespace)
        run.status = self.propeller.wait(namespace, run.execution_id, timeout=timeout)
        self.finish(run)
        return run


@pytest.fixture(scope="module", params=["process", "chart"])
def flyte(
    request: pytest.FixtureRequest,
    kubeconfig_path: Path,
    flytepropeller: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Flyte]:
    """The connector (a process, or the chart on the real node), then propeller pointed at it
    (so its first ListAgents finds our types)."""
    state = tmp_path_factory.mktemp(f"propeller-{request.param}")
    if request.param == "process":
        connector = _connector_process(kubeconfig_path, state)
    else:
        connector = _connector_chart(request, kubeconfig_path, state)
    yield from _with_propeller(request.param, connector, kubeconfig_path, flytepropeller, state)


@contextmanager
def _connector_process(kubeconfig: Path, state: Path) -> Iterator[tuple[ConnectorUnderTest, str]]:
    connector = ConnectorServer(
        kubeconfig,
        command="nim-agent",
        log_path=state / "connector.log",
        # No cleanup pass during the tests: what propeller reports must come from GetTask
        # itself, not from the reaper deleting a failed pod in between.
        settings={"NIM_AGENT_REAP_INTERVAL": "1h"},
    ).start()
    try:
        yield connector, f"dns:///{connector.address}"
    finally:
        connector.stop()
    assert connector.process is not None and connector.process.poll() is not None


@contextmanager
def _connector_chart(
    request: pytest.FixtureRequest, kubeconfig: Path, state: Path
) -> Iterator[tuple[ConnectorUnderTest, str]]:
    images: ImagesEnv = request.getfixturevalue("real_node_images")
    helm: Path = request.getfixturevalue("helm")
    core_v1: client.CoreV1Api = request.getfixturevalue("core_v1")
    namespace = f"t-propeller-chart-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespace(
        {"metadata": {"name": namespace, "labels": {"nim-agent.dev/test": "true"}}}
    )
    # As in the process mode: no cleanup pass during the tests, and no /v1/models check: the
    # workflows' NIM pods live on kwok's nodes, which serve no HTTP (the chart's connector
    # verifies a real server in tests/e2e/test_chart_on_real_node.py).
    values = real_node_values(
        images["NIM_AGENT_IMAGE"], settings={"reapInterval": "1h", "servingCheck": "off"}
    )
    try:
        with ChartRelease(
            kubeconfig, helm, namespace, images["NIM_AGENT_IMAGE"], values=values, work_dir=state
        ) as release:
            release.install()
            # Propeller dials what the NOTES tell operators to configure.
            assert release.notes_endpoint() == (
                f"dns:///nim-agent.{namespace}.svc.cluster.local:8000"
            )
            yield release, release.propeller_endpoint()
    finally:
        core_v1.delete_namespace(namespace)


def _with_propeller(
    mode: str,
    connector_and_endpoint: AbstractContextManager[tuple[ConnectorUnderTest, str]],
    kubeconfig: Path,
    flytepropeller: Path,
    state: Path,
) -> Iterator[Flyte]:
    with connector_and_endpoint as (connector, endpoint):
        propeller = Propeller(kubeconfig, endpoint, state, flytepropeller).start()
        try:
            # The sync teardown type is routed by the connector's ListAgents answer only.
            wait_for(
                lambda: re.search(
                    r"supports the following task types: \[[^]]*\bnim-teardown\b",
                    propeller.log(),
                ),
                timeout=30,
                what="propeller to learn the connector's task types (ListAgents)",
                describe=lambda: propeller.log_tail(20, grep="task types"),
            )
            flyte = Flyte(mode, connector, propeller)
            yield flyte
            # Shown with `pytest -s`: the numbers the README quotes.
            print(f"\npropeller ({mode}): run.sh start took {propeller.start_seconds:.1f}s")
            for r in flyte.runs:
                print(
                    f"  {r.execution_id}: {r.status.get('phase', '-')} after "
                    f"{r.status.get('seconds', '-')}s, CreateTask {r.create_seconds:.3f}s"
                )
        finally:
            propeller.stop()
        assert not propeller.running()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, flyte: Flyte) -> Iterator[None]:
    """Propeller's and the connector's logs for this test's executions (shown on failure)."""
    first = len(flyte.runs)
    yield
    for run in flyte.runs[first:]:
        request.node.add_report_section(
            "teardown",
            f"propeller log of {run.execution_id}",
            flyte.propeller.log_tail(80, grep=run.execution_id),
        )
        request.node.add_report_section(
            "teardown",
            f"events of {run.execution_id}",
            "\n".join(flyte.propeller.events(run.execution_id)),
        )
    request.node.add_report_section("teardown", "connector log", flyte.connector.log_tail(60))


def service_url(run: Run, node: str = "n0") -> tuple[str, str]:
    """(deployment name, endpoint) the connector derives from the execution identity."""
    name = deployment_name_for(PROJECT, DOMAIN, run.execution_id, node, 0)
    return name, endpoint_for(name, run.namespace, 8000)


def test_workflow_output_is_the_service_url(
    flyte: Flyte, core_v1: client.CoreV1Api, namespace: str
) -> None:
    run = flyte.run("endpoint_wf", namespace)

    assert run.status["phase"] == "Succeeded", run.status
    assert run.status["nodes"]["n0"]["phase"] == "Succeeded", run.status
    name, url = service_url(run)
    # What propeller stored: the workflow's output and the task's `endpoint`.
    assert flyte.propeller.outputs(namespace, run.execution_id) == {"o0": url}
    assert flyte.propeller.outputs(namespace, run.execution_id, node="n0") == {"endpoint": url}
    # The URL names a Service of ours on port 8000, in the workflow's namespace, in front of a
    # Ready pod of this execution; after success the server keeps running for later steps.
    service = core_v1.read_namespaced_service(name, namespace)
    assert [p.port for p in service.spec.ports] == [8000]
    pod = core_v1.read_namespaced_pod(name, namespace)
    assert pod.metadata.labels["nim-agent.dev/execution"] == run.execution_id
    assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
    task_events = [e for e in flyte.propeller.events(run.execution_id) if "TASK EVENT" in e]
    assert "Phase: SUCCEEDED" in task_events[-1], task_events
    assert run.create_calls == 1


def test_next_step_consumes_the_endpoint_and_tears_the_server_down(
    flyte: Flyte, core_v1: client.CoreV1Api, namespace: str
) -> None:
    # Teardown calls counted by flytekit's latency summary: its success counter is incremented
    # after the answer is yielded, and propeller cancels the stream as soon as it has the answer,
    # which often ends flytekit's generator before it counts (ExecuteTaskSync, flytekit 1.16).
    calls = f"{LATENCY}_count"
    teardowns = flyte.connector.metric(calls, task_type="nim-teardown", operation="do")

    run = flyte.run("endpoint_then_teardown_wf", namespace)

    assert run.status["phase"] == "Succeeded", run.status
    assert {n: s["phase"] for n, s in run.status["nodes"].items()} == {
        "n0": "Succeeded",
        "n1": "Succeeded",
    }, run.status
    name, url = service_url(run)
    assert flyte.propeller.outputs(namespace, run.execution_id) == {"o0": url}
    # Propeller called the sync teardown (ExecuteTaskSync) with the endpoint as its input ...
    wait_for(
        lambda: (
            flyte.connector.metric(calls, task_type="nim-teardown", operation="do") == teardowns + 1
        ),
        timeout=30,
        what="the connector to count one teardown call",
    )
    # ... and the deployment behind it is gone (the Service with its pod).
    wait_for(
        lambda: not our_pods(core_v1, namespace) and not our_services(core_v1, namespace),
        timeout=30,
        what=f"the teardown to remove pod and Service {name}",
    )


def test_crashloop_fails_the_workflow_with_our_message(
    flyte: Flyte, core_v1: client.CoreV1Api, namespace: str
) -> None:
    deletes = flyte.connector.metric(
        "flyte_connector_requests_success_total", task_type="nim", operation="delete"
    )

    run = flyte.run("crashloop_wf", namespace)

    assert run.status["phase"] == "Failed", run.status
    node = run.status["nodes"]["n0"]
    assert node["phase"] == "Failed", run.status
    # Our classification reaches the node status (as its error; propeller leaves the node's
    # message empty): the words a person acts on, straight from GetTask, at the threshold.
    error = node["error"]["message"]
    found = re.search(r"Container nim is crash-looping: (\d+) restarts, last exit code 1", error)
    assert found and int(found[1]) >= 3, node  # the connector's threshold: 3
    assert error == run.status["error"]["message"], run.status
    # Propeller calls DeleteTask only on abort, not after a failure: removing the failed server
    # (once its diagnostics are captured) is the connector's own job.
    assert (
        flyte.connector.metric(
            "flyte_connector_requests_success_total", task_type="nim", operation="delete"
        )
        == deletes
    )
    # Stopped, not deleted: its verdict stays on the pod for the retention (the lifecycle rule).
    wait_for(
        lambda: not running_pods(core_v1, namespace),
        timeout=30,
        what="the connector to stop the failed server",
    )


def test_deleting_the_flyteworkflow_deletes_the_pod(
    flyte: Flyte, api_client: client.ApiClient, core_v1: client.CoreV1Api, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    deletes = flyte.connector.metric(
        "flyte_connector_requests_success_total", task_type="nim", operation="delete"
    )
    run = flyte.start("never_ready_wf", namespace)
    name, _ = service_url(run)
    wait_for(
        lambda: [p for p in our_pods(core_v1, namespace) if p.status.phase == "Running"],
        timeout=60,
        what=f"pod {name} to run",
    )
    wait_for(
        lambda: any(
            "Phase: RUNNING" in e and "TASK EVENT" in e
            for e in flyte.propeller.events(run.execution_id)
        ),
        timeout=30,
        what="propeller to report the task RUNNING",
    )

    custom.delete_namespaced_custom_object(
        "flyte.lyft.com", "v1alpha1", namespace, "flyteworkflows", run.execution_id
    )

    # Propeller aborts the node (DeleteTask), the connector deletes the pod, propeller releases
    # its finalizer and the object goes.
    wait_for(
        lambda: not our_pods(core_v1, namespace),
        timeout=60,
        what=f"the abort to delete pod {name}",
    )
    wait_for(
        lambda: (
            flyte.connector.metric(
                "flyte_connector_requests_success_total", task_type="nim", operation="delete"
            )
            == deletes + 1
        ),
        timeout=10,
        what="the connector to count one DeleteTask",
    )
    wait_for(
        lambda: (
            not custom.list_namespaced_custom_object(
                "flyte.lyft.com", "v1alpha1", namespace, "flyteworkflows"
            )["items"]
        ),
        timeout=30,
        what="the FlyteWorkflow to go (finalizer released)",
    )
    assert any("Phase: ABORTED" in e for e in flyte.propeller.events(run.execution_id))
    flyte.finish(run)
    assert run.create_calls == 1


def test_create_task_stays_well_under_propellers_deadline(flyte: Flyte, namespace: str) -> None:
    run = flyte.run("endpoint_wf", namespace)
    assert run.status["phase"] == "Succeeded", run.status

    # One CreateTask per NIM node: propeller never retried one (a timed-out create is retried).
    assert run.create_calls == 1
    assert run.create_seconds < CREATE_TIMEOUT_S / 5, run.create_seconds
    # Every run of this module (the first create included, when the connector's Kubernetes
    # client and watch cache start): a single call, well within the deadline.
    for r in flyte.runs:
        if r.finished:
            assert r.create_calls == 1, r
            assert r.create_seconds < CREATE_TIMEOUT_S / 2, r
    # Propeller's side: no gRPC deadline hit, no failed create, in the whole module's log.
    log = flyte.propeller.log().lower()
    assert "deadline exceeded" not in log and "deadlineexceeded" not in log, (
        flyte.propeller.log_tail(grep="eadline")
    )
    assert "failed to create task from connector" not in log


class CallProbe:
    """Calls the connector through the Service every ``interval`` seconds in a thread (flyteidl's
    ListAgents: cheap, answered by the same server as GetTask); records what failed."""

    def __init__(self, address: str, interval: float = 0.1) -> None:
        self.address, self.interval = address, interval
        self.calls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import grpc
        from flyteidl.admin import agent_pb2
        from flyteidl.service import agent_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = agent_pb2_grpc.AgentMetadataServiceStub(channel)
            while not self._stop.is_set():
                self.calls += 1
                try:
                    stub.ListAgents(agent_pb2.ListAgentsRequest(), timeout=10)
                except grpc.RpcError as e:
                    when = time.strftime("%H:%M:%S")
                    self.failures.append(f"{when} {e.code().name}: {e.details()}")
                self._stop.wait(self.interval)

    def __enter__(self) -> CallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_a_rolling_restart_of_the_connector_during_a_workflow_costs_propeller_no_call(
    flyte: Flyte, core_v1: client.CoreV1Api, namespace: str
) -> None:
    if flyte.mode != "chart":
        pytest.skip("a rolling restart needs the chart's replicas behind a Service (chart mode)")
    release = flyte.connector
    assert isinstance(release, ChartRelease)
    errors_before = len(flyte.propeller.connector_call_errors())
    old_pods = {p.metadata.name for p in release.pods()}
    run = flyte.start("slow_endpoint_then_teardown_wf", namespace)
    # Propeller follows the NIM task with GetTask (every 5 s) before the restart begins.
    wait_for(
        lambda: any(
            "TASK EVENT" in e and ("Phase: RUNNING" in e or "Phase: INITIALIZING" in e)
            for e in flyte.propeller.events(run.execution_id)
        ),
        timeout=60,
        what="propeller to report the NIM task started",
    )

    # Propeller calls every 5 s; the probe every 0.1 s, through the same Service, so that the
    # moments when a replica stops are not missed.
    started = time.monotonic()
    with CallProbe(release.address) as probe:
        release.rollout_restart()
        time.sleep(2)
    restart_seconds = time.monotonic() - started
    new_pods = {p.metadata.name for p in release.ready_pods()}
    # The restart happened while the workflow ran: the server takes 60 s to get ready.
    phase_after_restart = flyte.propeller.phase(namespace, run.execution_id)

    run.status = flyte.propeller.wait(namespace, run.execution_id, timeout=240)
    errors = flyte.propeller.connector_call_errors()[errors_before:]
    print(
        f"\nrolling restart of 2 replicas took {restart_seconds:.0f}s during the workflow; "
        f"failed calls: propeller {len(errors)}, probe {len(probe.failures)} of {probe.calls}"
    )
    assert not new_pods & old_pods, (old_pods, new_pods)
    assert phase_after_restart not in ("Succeeded", "Failed", "Aborted"), (
        "the workflow finished before the restart did: nothing was tested"
    )
    assert run.status["phase"] == "Succeeded", run.status
    assert {n: s["phase"] for n, s in run.status["nodes"].items()} == {
        "n0": "Succeeded",
        "n1": "Succeeded",
    }, run.status
    # Not one call failed: with two replicas behind the Service, each stopping one keeps
    # serving until the Service has forgotten it (the chart's shutdownDelaySeconds). A failed
    # GetTask counts towards the task's maxSystemFailures for its whole life.
    assert errors == [], "\n".join(errors)
    # gRPC's C core cancels a call that reaches a server in the instant between the start of
    # its shutdown and the client's reading of its GOAWAY: CANCELLED, about once in 20 rollouts
    # at the probe's 10 calls/s (2 in 46 rollouts measured; never a refused connection). Counted
    # above, not failed; anything else fails.
    assert [f for f in probe.failures if not f.endswith("CANCELLED: CANCELLED")] == [], "\n".join(
        probe.failures
    )
    wait_for(
        lambda: not our_pods(core_v1, namespace),
        timeout=30,
        what="the teardown to remove the NIM pod",
    )


def test_two_workflows_share_one_warm_server_and_a_teardown_releases_only_its_own_hold(
    flyte: Flyte, core_v1: client.CoreV1Api, namespace: str
) -> None:
    first = flyte.run("shared_wf", namespace)
    assert first.status["phase"] == "Succeeded", first.status
    [pod] = our_pods(core_v1, namespace)
    assert "nim-agent.dev/share-key" in pod.metadata.labels

    second = flyte.run("shared_then_teardown_wf", namespace)
    assert second.status["phase"] == "Succeeded", second.status
    # One server for both executions; each output is the execution's own endpoint (a Service
    # of its own, named as its deployment would have been, selecting the shared pod).
    assert [p.metadata.name for p in our_pods(core_v1, namespace)] == [pod.metadata.name]
    urls = [flyte.propeller.outputs(namespace, r.execution_id)["o0"] for r in (first, second)]
    assert urls == [service_url(first)[1], service_url(second)[1]]
    assert first.create_calls == second.create_calls == 1
    # The second's teardown released its hold only: its Service is gone, the first's serves on.
    wait_for(
        lambda: (
            {s.metadata.name for s in our_services(core_v1, namespace)} == {service_url(first)[0]}
        ),
        timeout=30,
        what="the teardown to release the second execution's hold",
    )
    service = core_v1.read_namespaced_service(service_url(first)[0], namespace)
    assert service.spec.selector == {"nim-agent.dev/deployment": pod.metadata.name}
    pod = core_v1.read_namespaced_pod(pod.metadata.name, namespace)
    holders = {
        k: json.loads(v)
        for k, v in pod.metadata.annotations.items()
        if k.startswith("holders.nim-agent.dev/")
    }
    ended = {k.split("/", 1)[1]: v.get("ended_by") for k, v in holders.items()}
    assert ended == {service_url(first)[0]: None, service_url(second)[0]: "teardown"}
    assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
    assert flyte.connector.metric("nim_agent_cold_starts_avoided_total") >= 1
