"""Fixtures of the fault and abuse suite: the control plane's processes, what a test deployed,
and the counts printed at the end. (The cluster, namespace and connector fixtures, and the leak
audit every module here opts into, are tests/conftest.py's.)

- ``control_plane`` (session): restart the apiserver (:mod:`tests.faults.controlplane`); left
  healthy at the end of every test that used it.
- ``deployments`` (per test): ``deployments(server)``, a tracker of what a test creates, aborted
  after the test (before the leak audit of its namespace).
- ``soak``: whether the long variants run (``NIM_AGENT_SOAK=1``, ``make soak``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from tests.connector_server import ConnectorServer
from tests.faults.controlplane import ControlPlane
from tests.faults.support import COUNTS, Deployments


@pytest.fixture(scope="session")
def soak() -> bool:
    return os.environ.get("NIM_AGENT_SOAK", "") not in ("", "0")


@pytest.fixture(scope="session")
def control_plane(kubeconfig_path: object) -> Iterator[ControlPlane]:
    plane = ControlPlane.from_env()
    yield plane
    COUNTS["faults injected (apiserver kills)"] += plane.faults_injected
    plane.heal()


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COUNTS:
        terminalreporter.section("fault and abuse suite: counts")
        for key, value in sorted(COUNTS.items()):
            terminalreporter.line(f"{key}: {value}")
