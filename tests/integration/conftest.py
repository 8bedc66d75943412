"""Fixtures for tests against the local control plane (devcluster/, `make cluster-up`).

- ``kubeconfig_path`` (session): the control plane is started once per session when it is not
  running; when it cannot be, every test using it fails with the reason (never a silent skip).
- ``api_client`` / ``core_v1`` (session): synchronous clients acting as the cluster admin.
- ``namespace`` (per test): a fresh namespace, deleted afterwards; when the test failed, its pods,
  events and the nodes are added to the report.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster import (
    ClusterUnavailable,
    describe_namespace,
    ensure_running,
    new_api_client,
    wait_for,
)

TEST_NAMESPACE_LABEL = "nim-agent.dev/test"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # Keep each phase's report on the item, so fixtures can tell whether the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def kubeconfig_path() -> Path:
    """Path of the admin kubeconfig of the running local control plane."""
    try:
        return ensure_running()
    except ClusterUnavailable as e:
        reason = str(e)
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="session")
def api_client(kubeconfig_path: Path) -> Iterator[client.ApiClient]:
    api = new_api_client(kubeconfig_path)
    yield api
    api.close()


@pytest.fixture(scope="session")
def core_v1(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].rstrip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest, api_client: client.ApiClient, core_v1: client.CoreV1Api
) -> Iterator[str]:
    """A fresh namespace for one test; deleted afterwards (pods go with it)."""
    name = _namespace_name(request.node.name)
    core_v1.create_namespace({"metadata": {"name": name, "labels": {TEST_NAMESPACE_LABEL: "true"}}})
    # Pods are admitted only once the controller-manager has made the default ServiceAccount.
    wait_for(
        lambda: core_v1.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"the default ServiceAccount of namespace {name}",
    )
    yield name
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        request.node.add_report_section(
            "teardown", "cluster state", describe_namespace(api_client, name)
        )
    try:
        core_v1.delete_namespace(name)
    except client.ApiException as e:
        if e.status != 404:
            raise
