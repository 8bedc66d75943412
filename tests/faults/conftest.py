"""Fixtures of the fault and abuse suite: the control plane's processes, and the leak audit.

- ``control_plane`` (session): restart the apiserver (:mod:`tests.faults.controlplane`); left
  healthy at the end of every test that used it.
- ``namespace`` (per test): as the integration suite's, plus the leak audit: before the
  namespace is deleted (which would delete our pods with it and hide a leak), every pod or
  Service of ours still in it is recorded; the session ends with a failure listing them all.
- ``soak``: whether the long variants run (``NIM_AGENT_SOAK=1``, ``make soak``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from tests.cluster import KUBECONFIG, new_api_client, wait_for
from tests.connector_server import ConnectorServer
from tests.faults.controlplane import ControlPlane
from tests.faults.support import COUNTS, OURS, Deployments, names, our_pods, our_services
from tests.integration import conftest as base

# The integration suite's fixtures: the control plane (started once), admin clients, and the hook
# that lets `namespace` describe the cluster when a test failed.
kubeconfig_path = base.kubeconfig_path
api_client = base.api_client
core_v1 = base.core_v1
pytest_runtest_makereport = base.pytest_runtest_makereport

TEST_NAMESPACE_LABEL = "nim-agent.dev/test"
LEAKS: list[str] = []
# Pods of ours that were deleted are gone within seconds on kwok (no kubelet grace); Services
# go with the pod (owner reference) or are deleted with it.
LEAK_GRACE_S = 30.0


@pytest.fixture(scope="session")
def soak() -> bool:
    return os.environ.get("NIM_AGENT_SOAK", "") not in ("", "0")


@pytest.fixture(scope="session")
def control_plane(kubeconfig_path: object) -> Iterator[ControlPlane]:
    plane = ControlPlane.from_env()
    yield plane
    COUNTS["faults injected (apiserver kills)"] += plane.faults_injected
    plane.heal()


def _leftovers(core_v1: client.CoreV1Api, namespace: str) -> list[str]:
    return [f"pod {namespace}/{n}" for n in names(our_pods(core_v1, namespace))] + [
        f"service {namespace}/{n}" for n in names(our_services(core_v1, namespace))
    ]


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest, api_client: client.ApiClient, core_v1: client.CoreV1Api
) -> Iterator[str]:
    """A fresh namespace; what of ours is left in it at the end is recorded as leaked."""
    name = base._namespace_name(request.node.name)
    core_v1.create_namespace({"metadata": {"name": name, "labels": {TEST_NAMESPACE_LABEL: "true"}}})
    wait_for(
        lambda: core_v1.read_namespaced_service_account("default", name),
        timeout=60,
        what=f"the default ServiceAccount of namespace {name}",
    )
    yield name
    deadline = time.monotonic() + LEAK_GRACE_S
    left = _leftovers(core_v1, name)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _leftovers(core_v1, name)
    if left:
        LEAKS.extend(f"{item} (left by {request.node.nodeid})" for item in left)
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        from tests.cluster import describe_namespace

        request.node.add_report_section(
            "teardown", "cluster state", describe_namespace(api_client, name)
        )
    try:
        core_v1.delete_namespace(name)
    except client.ApiException as e:
        if e.status != 404:
            raise


@pytest.fixture
def deployments(namespace: str) -> Iterator[Callable[[ConnectorServer], Deployments]]:
    """``deployments(server)``: a tracker of what a test creates; all aborted after the test
    (before the leak audit of its namespace), through whichever connector the tracker holds."""
    made: list[Deployments] = []

    def make(server: ConnectorServer) -> Deployments:
        made.append(Deployments(server, namespace))
        return made[-1]

    yield make
    for tracker in made:
        with contextlib.suppress(Exception):  # a test that failed may have left a dead server
            tracker.abort_all()


@pytest.fixture(scope="session", autouse=True)
def leak_audit(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end of the suite: nothing of ours in any test namespace, else fail listing it."""
    yield
    leaked = list(LEAKS)
    if any("namespace" in getattr(item, "fixturenames", ()) for item in request.session.items):
        api = new_api_client(KUBECONFIG)
        try:
            core_v1 = client.CoreV1Api(api)
            listed = core_v1.list_namespace(label_selector=f"{TEST_NAMESPACE_LABEL}=true").items
            active = {ns.metadata.name for ns in listed if ns.status.phase == "Active"}
            for pod in core_v1.list_pod_for_all_namespaces(label_selector=OURS).items:
                if pod.metadata.namespace in active:
                    leaked.append(f"pod {pod.metadata.namespace}/{pod.metadata.name} (at the end)")
            for svc in core_v1.list_service_for_all_namespaces(label_selector=OURS).items:
                if svc.metadata.namespace in active:
                    leaked.append(
                        f"service {svc.metadata.namespace}/{svc.metadata.name} (at the end)"
                    )
        finally:
            api.close()
    COUNTS["objects leaked"] = len(leaked)
    if leaked:
        pytest.fail("leak audit: objects of ours left behind:\n  " + "\n  ".join(leaked))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COUNTS:
        terminalreporter.section("fault and abuse suite: counts")
        for key, value in sorted(COUNTS.items()):
            terminalreporter.line(f"{key}: {value}")
