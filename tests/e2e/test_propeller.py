"""The real caller: flytepropeller v1.16.8 runs workflows with NIM tasks through our connector.

Once per module: the connector (`nim-agent serve`) and flytepropeller (devcluster/propeller/run.sh,
pointed at that connector's port, with its own state folder). Each test creates a FlyteWorkflow
in a fresh namespace with devcluster/propeller/flyte_run.py, waits for it, and asserts on what
propeller reports (workflow and node status, outputs in its storage, execution events) and on
the cluster. Pods are simulated by kwok (`nim-agent.dev/simulate`, see devcluster/kwok).

Needs `make cluster-up` and `make propeller-build` (a missing binary fails, never skips).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nim_agent.contract import endpoint_for
from nim_agent.render import deployment_name_for
from tests.cluster import our_pods, our_services, wait_for
from tests.connector_server import ConnectorServer
from tests.propeller import Propeller

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


@dataclass
class Flyte:
    connector: ConnectorServer
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


@pytest.fixture(scope="module")
def flyte(
    kubeconfig_path: Path, flytepropeller: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flyte]:
    """The connector, then propeller pointed at it (so its first ListAgents finds our types)."""
    state = tmp_path_factory.mktemp("propeller")
    connector = ConnectorServer(
        kubeconfig_path,
        command="nim-agent",
        log_path=state / "connector.log",
        # No cleanup pass during the tests: what propeller reports must come from GetTask
        # itself, not from the reaper deleting a failed pod in between.
        settings={"NIM_AGENT_REAP_INTERVAL": "1h"},
    ).start()
    try:
        propeller = Propeller(kubeconfig_path, connector.address, state, flytepropeller).start()
        try:
            # The sync teardown type is routed by the connector's ListAgents answer only.
            wait_for(
                lambda: re.search(
                    r"supports the following task types: \[[^]]*\bnim-teardown\b", propeller.log()
                ),
                timeout=30,
                what="propeller to learn the connector's task types (ListAgents)",
                describe=lambda: propeller.log_tail(20, grep="task types"),
            )
            flyte = Flyte(connector, propeller)
            yield flyte
            # Shown with `pytest -s`: the numbers the README quotes.
            print(f"\npropeller: run.sh start took {propeller.start_seconds:.1f}s")
            for r in flyte.runs:
                print(
                    f"  {r.execution_id}: {r.status.get('phase', '-')} after "
                    f"{r.status.get('seconds', '-')}s, CreateTask {r.create_seconds:.3f}s"
                )
        finally:
            propeller.stop()
        assert not propeller.running()
    finally:
        connector.stop()
    assert connector.process is not None and connector.process.poll() is not None


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
    teardowns = flyte.connector.metric(
        "flyte_connector_requests_success_total", task_type="nim-teardown", operation="do"
    )

    run = flyte.run("endpoint_then_teardown_wf", namespace)

    assert run.status["phase"] == "Succeeded", run.status
    assert {n: s["phase"] for n, s in run.status["nodes"].items()} == {
        "n0": "Succeeded",
        "n1": "Succeeded",
    }, run.status
    name, url = service_url(run)
    assert flyte.propeller.outputs(namespace, run.execution_id) == {"o0": url}
    # Propeller called the sync teardown (ExecuteTaskSync) with the endpoint as its input ...
    # (flytekit counts the call after its answer is sent: the workflow may finish first)
    wait_for(
        lambda: (
            flyte.connector.metric(
                "flyte_connector_requests_success_total", task_type="nim-teardown", operation="do"
            )
            == teardowns + 1
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
    wait_for(
        lambda: not our_pods(core_v1, namespace),
        timeout=30,
        what="the connector to delete the failed pod",
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
