"""Abort (DeleteTask) in every phase of a deployment, twice in a row: both calls succeed, and the
Pod and its Service go at once (an aborted execution is over: nothing is kept for it). While the
pod terminates, GetTask says nim-agent deleted it for the abort; Flyte sends no GetTask after an
abort, and one sent anyway is answered, never SUCCEEDED."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.cluster import our_pods, our_services
from tests.configs import simulated_nim as nim
from tests.connector_server import Connectors, ConnectorServer, delete_request
from tests.faults.support import COUNTS, TE, Deployments, get, initializing, wait_phases

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

SETTINGS = {
    "NIM_AGENT_UNSCHEDULABLE_TIMEOUT": "10m",
    "NIM_AGENT_REAP_INTERVAL": "1s",
    "NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD": "2",
    "NIM_AGENT_KEEP_FAILED": "true",  # so that a FAILED deployment still has a pod to abort
}


@pytest.fixture(scope="module")
def server(module_connectors: Connectors) -> ConnectorServer:
    return module_connectors.start(SETTINGS)


# (config, the phase to reach before aborting; None: abort right after CreateTask)
PHASES: dict[str, tuple[Callable[[], Any], int | None]] = {
    "just-created": (lambda: nim("ready"), None),
    "waiting-for-resources": (lambda: nim("ready", gpu=64), TE.WAITING_FOR_RESOURCES),
    "initializing": (lambda: initializing("10m"), TE.INITIALIZING),
    "running-not-ready": (lambda: nim("never-ready"), TE.RUNNING),
    "succeeded": (lambda: nim("ready"), TE.SUCCEEDED),
    "failed-kept": (lambda: nim("crashloop"), TE.FAILED),
    "image-pull-error": (lambda: nim("image-pull-error"), None),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_abort_twice_in_each_phase_removes_the_deployment(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
    phase: str,
) -> None:
    config, reach = PHASES[phase]
    d = deployments(server)
    meta = d.create(config())
    if reach is not None:
        wait_phases(server, {meta: reach}, timeout=90)
    assert our_pods(core_v1, namespace), "nothing to abort"

    server.stub.DeleteTask(delete_request(meta), timeout=30)
    server.stub.DeleteTask(delete_request(meta), timeout=30)
    COUNTS["aborts (DeleteTask, each sent twice)"] += 1

    deadline = time.monotonic() + 30
    while our_pods(core_v1, namespace) or our_services(core_v1, namespace):
        assert time.monotonic() < deadline, "the aborted deployment is still there"
        time.sleep(0.2)
    resource = get(server, meta)
    assert resource.phase in (TE.FAILED, TE.RETRYABLE_FAILED), resource.message


def test_abort_of_a_refused_task_and_of_a_deployment_already_gone_is_fine(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    d = deployments(server)
    refused = d.create(nim("ready", namespace="kube-system"))  # not allowed: FAILED, no pod
    assert json.loads(refused)["error"]
    gone = d.create(nim("ready"))
    core_v1.delete_namespaced_pod(d.pod_name(gone), namespace, grace_period_seconds=0)
    for meta in (refused, gone):
        for _ in range(2):
            server.stub.DeleteTask(delete_request(meta), timeout=30)
    assert not our_pods(core_v1, namespace)
