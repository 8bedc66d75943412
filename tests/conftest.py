"""What every test suite shares: which suites run, the local control plane, namespaces,
connector servers and the leak audit.

A bare ``pytest`` runs the unit tests only (no cluster, no build). The suites that need the
local control plane (``tests/integration``, ``tests/e2e``, ``tests/faults``) are collected only
with ``--with-cluster``, which ``make integration``, ``make e2e``, ``make faults`` and
``make test`` pass; naming one of them without the flag is a usage error, not a silent no-op.

Fixtures of the cluster suites:

- ``kubeconfig_path`` (session): the control plane is started once per session when it is not
  running; when it cannot be, every test using it fails with the reason (never a silent skip).
- ``api_client`` / ``core_v1`` (session): synchronous clients acting as the cluster admin.
- ``make_namespace`` (per test): ``make_namespace(stem)`` makes a fresh namespace (labelled
  ``nim-agent.dev/test``), deleted after the test; when the test failed, its pods, events and
  the nodes are added to the report. ``namespace`` is one such namespace, named after the test.
- ``connectors`` (per test) and ``module_connectors`` (per module): ``.start(settings,
  command=...)`` runs a connector server (`tests.connector_server.ConnectorServer`) against the
  control plane, stopped at the end of the test (module).

Marker ``leak_audit``: before each namespace of a marked test is deleted (which would delete our
pods with it and hide a leak), every pod or Service of ours still in it is recorded; the session
then fails listing them, and any of ours left in a test namespace at its end.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kubernetes import client

    from tests.connector_server import Connectors

TESTS = Path(__file__).resolve().parent
CLUSTER_SUITES = ("integration", "e2e", "faults")
TEST_NAMESPACE_LABEL = "nim-agent.dev/test"
SERVICE_ACCOUNT_WAIT_S = 60.0  # the controller-manager makes it; slow on a loaded 2-core machine
# Deleted pods of ours are gone within seconds on kwok (no kubelet grace); Services go with the
# pod (owner reference) or are deleted with it.
LEAK_GRACE_S = 30.0
LEAKS: list[str] = []
LEAK_AUDIT = pytest.StashKey[bool]()

# --------------------------------------------------------------------------- which suites run


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--with-cluster",
        action="store_true",
        help="also run the suites that need the local control plane: "
        + ", ".join(f"tests/{s}" for s in CLUSTER_SUITES),
    )


def _cluster_suite(path: Path) -> str | None:
    for suite in CLUSTER_SUITES:
        if path == TESTS / suite or TESTS / suite in path.parents:
            return suite
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "leak_audit: record objects of ours left in the test's namespaces (see conftest)"
    )
    if config.getoption("--with-cluster"):
        return
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        suite = _cluster_suite(path)
        if suite is not None:
            raise pytest.UsageError(
                f"{arg}: the {suite} suite needs the local control plane; add --with-cluster "
                f"(make {suite} does)"
            )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not config.getoption("--with-cluster") and _cluster_suite(collection_path) is not None:
        return True
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("--with-cluster"):
        return None
    return (
        "cluster suites not collected (" + ", ".join(CLUSTER_SUITES) + "): add --with-cluster, "
        "as make integration / e2e / faults / test do"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that stop the whole control plane (and start it again, on another port) run after
    # everything else: session clients made before do not survive them.
    items.sort(key=lambda item: item.get_closest_marker("cluster_teardown") is not None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # Keep each phase's report on the item, so fixtures can tell whether the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# --------------------------------------------------------------------------- the control plane


@pytest.fixture(scope="session")
def kubeconfig_path() -> Path:
    """Path of the admin kubeconfig of the running local control plane."""
    from tests.cluster import ClusterUnavailable, ensure_running

    try:
        return ensure_running()
    except ClusterUnavailable as e:
        reason = str(e)
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="session")
def api_client(kubeconfig_path: Path) -> Iterator[client.ApiClient]:
    from tests.cluster import new_api_client

    api = new_api_client(kubeconfig_path)
    yield api
    api.close()


@pytest.fixture(scope="session")
def core_v1(api_client: client.ApiClient) -> client.CoreV1Api:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def _namespace_name(stem: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:40].rstrip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_namespace(
    request: pytest.FixtureRequest, api_client: client.ApiClient, core_v1: client.CoreV1Api
) -> Iterator[Callable[[str], str]]:
    """``make_namespace(stem)``: a fresh namespace for this test, deleted after it."""
    from kubernetes import client

    from tests.cluster import describe_namespace, leftovers, wait_for

    made: list[str] = []

    def make(stem: str) -> str:
        name = _namespace_name(stem)
        core_v1.create_namespace(
            {"metadata": {"name": name, "labels": {TEST_NAMESPACE_LABEL: "true"}}}
        )
        made.append(name)
        # Pods are admitted only once the controller-manager has made the default ServiceAccount.
        wait_for(
            lambda: core_v1.read_namespaced_service_account("default", name),
            timeout=SERVICE_ACCOUNT_WAIT_S,
            what=f"the default ServiceAccount of namespace {name}",
        )
        return name

    yield make
    audited = request.node.get_closest_marker("leak_audit") is not None
    report = getattr(request.node, "report_call", None)
    for name in made:
        if audited:
            deadline = time.monotonic() + LEAK_GRACE_S
            left = leftovers(core_v1, name)
            while left and time.monotonic() < deadline:
                time.sleep(0.5)
                left = leftovers(core_v1, name)
            LEAKS.extend(f"{item} (left by {request.node.nodeid})" for item in left)
        if report is None or report.failed:
            request.node.add_report_section(
                "teardown", f"cluster state ({name})", describe_namespace(api_client, name)
            )
        try:
            core_v1.delete_namespace(name)
        except client.ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def namespace(request: pytest.FixtureRequest, make_namespace: Callable[[str], str]) -> str:
    """A fresh namespace for one test, named after it; deleted afterwards (pods go with it)."""
    return make_namespace(request.node.name)


@pytest.fixture(scope="session", autouse=True)
def leak_audit_at_the_end(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end of a session with ``leak_audit`` tests: nothing of ours in any test namespace
    (recorded per test, and looked for once more now), else fail listing it."""
    yield
    if not any(item.get_closest_marker("leak_audit") for item in request.session.items):
        return
    from kubernetes import client

    from nim_agent.contract import OWNED_BY_US
    from tests.cluster import KUBECONFIG, holds_resources, new_api_client

    request.config.stash[LEAK_AUDIT] = True
    leaked = list(LEAKS)
    api = new_api_client(KUBECONFIG)
    try:
        core = client.CoreV1Api(api)
        listed = core.list_namespace(label_selector=f"{TEST_NAMESPACE_LABEL}=true").items
        active = {ns.metadata.name for ns in listed if ns.status.phase == "Active"}
        pods = core.list_pod_for_all_namespaces(label_selector=OWNED_BY_US).items
        services = core.list_service_for_all_namespaces(label_selector=OWNED_BY_US).items
        # A stopped server's ended pod (and its Service) holds nothing: not a leak.
        ended = {(p.metadata.namespace, p.metadata.name) for p in pods if not holds_resources(p)}
        found = [("pod", p) for p in pods if holds_resources(p)] + [
            ("service", s) for s in services if (s.metadata.namespace, s.metadata.name) not in ended
        ]
        leaked.extend(
            f"{kind} {obj.metadata.namespace}/{obj.metadata.name} (at the end)"
            for kind, obj in found
            if obj.metadata.namespace in active
        )
    finally:
        api.close()
    LEAKS[:] = leaked
    if leaked:
        pytest.fail("leak audit: objects of ours left behind:\n  " + "\n  ".join(leaked))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if terminalreporter.config.stash.get(LEAK_AUDIT, False):
        terminalreporter.section("leak audit")
        terminalreporter.line(f"objects of ours left in test namespaces: {len(LEAKS)}")


# --------------------------------------------------------------------------- connector servers


@pytest.fixture(scope="session")
def connector_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("connectors")


def _connectors(kubeconfig: Path, logs: Path) -> Iterator[Connectors]:
    from tests.connector_server import Connectors

    started = Connectors(kubeconfig, logs)
    yield started
    started.stop_all()


@pytest.fixture
def connectors(kubeconfig_path: Path, connector_logs: Path) -> Iterator[Connectors]:
    """Connector servers for one test: ``connectors.start(settings, command=...)``."""
    yield from _connectors(kubeconfig_path, connector_logs)


@pytest.fixture(scope="module")
def module_connectors(kubeconfig_path: Path, connector_logs: Path) -> Iterator[Connectors]:
    """Connector servers shared by the tests of a module."""
    yield from _connectors(kubeconfig_path, connector_logs)
