"""The leak audit itself: it sees a pod and a Service of ours left in a test namespace."""

from __future__ import annotations

import pytest
from kubernetes import client

from nim_agent.contract import LABEL_MANAGED_BY, MANAGED_BY
from tests.cluster import GPU_TOLERATION, leftovers

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind


def test_the_leak_audit_lists_a_pod_and_a_service_of_ours(
    core_v1: client.CoreV1Api, namespace: str
) -> None:
    ours = {LABEL_MANAGED_BY: MANAGED_BY}
    core_v1.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "leaked", "labels": ours},
            "spec": {
                "containers": [{"name": "nim", "image": "nvcr.io/nim/x:1"}],
                "tolerations": [GPU_TOLERATION],
            },
        },
    )
    core_v1.create_namespaced_service(
        namespace,
        {"metadata": {"name": "leaked", "labels": ours}, "spec": {"ports": [{"port": 8000}]}},
    )
    core_v1.create_namespaced_service(
        namespace, {"metadata": {"name": "not-ours"}, "spec": {"ports": [{"port": 80}]}}
    )

    assert leftovers(core_v1, namespace) == [
        f"pod {namespace}/leaked",
        f"service {namespace}/leaked",
    ]

    core_v1.delete_namespaced_pod("leaked", namespace, grace_period_seconds=0)
    core_v1.delete_namespaced_service("leaked", namespace)
