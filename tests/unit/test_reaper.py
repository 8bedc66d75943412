"""reap_decision and policy_for: which deployments the cleanup loop deletes, and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nim_agent.contract import FAILURE, SUPERSEDED, TTL
from nim_agent.reaper import Tombstones, reap_decision, superseded
from nim_agent.status import StatusPolicy, policy_for

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = StatusPolicy()


def pod(
    *,
    expires: str | None = None,
    ready: bool = True,
    restarts: int = 0,
    deleting: bool = False,
    created: datetime = NOW - timedelta(minutes=5),
) -> dict[str, Any]:
    annotations = {"nim-agent.dev/expires-at": expires} if expires else {}
    state: dict[str, Any] = {"running": {"startedAt": (NOW - timedelta(minutes=4)).isoformat()}}
    status = {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready and not restarts else "False"},
        ],
        "containerStatuses": [
            {
                "name": "nim",
                "ready": ready and not restarts,
                "restartCount": restarts,
                "state": state if restarts == 0 else {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}} if restarts else {},
            }
        ],
    }
    meta: dict[str, Any] = {
        "name": "nim-x",
        "namespace": "ns",
        "uid": "u1",
        "annotations": annotations,
        "creationTimestamp": created.isoformat(),
    }
    if deleting:
        meta["deletionTimestamp"] = NOW.isoformat()
    return {
        "metadata": meta,
        "spec": {"nodeName": "gpu-0", "containers": [{"name": "nim"}]},
        "status": status,
    }


@pytest.mark.parametrize(
    ("the_pod", "keep_failed", "cause"),
    [
        pytest.param(pod(), False, None, id="a ready pod without expiry is kept"),
        pytest.param(
            pod(expires="2026-11-27T13:00:00Z"), False, None, id="a pod before its ttl is kept"
        ),
        pytest.param(
            pod(expires="2026-11-27T11:59:59Z"), False, TTL, id="a pod past its ttl is deleted"
        ),
        pytest.param(
            pod(expires="2026-11-27T12:00:00Z"),
            False,
            TTL,
            id="a pod exactly at its ttl is deleted",
        ),
        pytest.param(pod(expires="not a time"), False, None, id="an unreadable expiry is ignored"),
        pytest.param(pod(restarts=5), False, FAILURE, id="a crash-looping pod is deleted"),
        pytest.param(pod(restarts=5), True, None, id="keep_failed keeps a crash-looping pod"),
        pytest.param(
            pod(restarts=5, expires="2026-11-27T11:00:00Z"),
            True,
            TTL,
            id="keep_failed still deletes a failed pod past its ttl",
        ),
        pytest.param(
            pod(restarts=1), False, None, id="a pod restarting below the threshold is kept"
        ),
        pytest.param(
            pod(expires="2026-11-27T11:00:00Z", deleting=True),
            False,
            None,
            id="a pod already being deleted is left alone",
        ),
        pytest.param(pod(ready=False), False, None, id="a loading pod is kept"),
    ],
)
def test_reap_decision_deletes_only_expired_or_failed_pods(
    the_pod: dict[str, Any], keep_failed: bool, cause: str | None
) -> None:
    decision = reap_decision(the_pod, now=NOW, policy=POLICY, keep_failed=keep_failed)
    assert (decision.cause if decision else None) == cause
    if decision is not None and cause == FAILURE:
        assert decision.classification is not None
        assert "exit code 1" in decision.message.lower() or "crash" in decision.message.lower()


def test_policy_for_takes_the_startup_window_from_the_pods_own_probe() -> None:
    p = pod()
    p["spec"]["containers"][0]["startupProbe"] = {
        "periodSeconds": 10,
        "failureThreshold": 100,
        "initialDelaySeconds": 30,
    }
    assert policy_for(p, POLICY).startup_timeout == timedelta(seconds=30 + 1000 + 20)
    assert policy_for(p, POLICY).crashloop_restart_threshold == POLICY.crashloop_restart_threshold


def test_policy_for_falls_back_to_the_base_policy_on_odd_probes() -> None:
    p = pod()
    p["spec"]["containers"][0]["startupProbe"] = {"periodSeconds": "ten"}
    assert policy_for(p, POLICY) == POLICY
    assert policy_for(None, POLICY) == POLICY


def test_tombstones_forget_the_oldest_beyond_capacity() -> None:
    stones = Tombstones(capacity=2)
    stones.add("ns", "a", "ttl")
    stones.add("ns", "b", "abort")
    stones.add("ns", "c", "teardown")
    assert stones.get("ns", "a") is None
    assert (stones.get("ns", "b"), stones.get("ns", "c")) == ("abort", "teardown")


def attempt(retry: int | str, *, node: str = "n0", execution: str = "e1", **kw: Any) -> Any:
    p = pod(**kw)
    p["metadata"]["name"] = f"nim-{execution}-{node}-{retry}"
    p["metadata"]["labels"] = {
        "nim-agent.dev/project": "flytesnacks",
        "nim-agent.dev/domain": "development",
        "nim-agent.dev/execution": execution,
        "nim-agent.dev/node": node,
        "nim-agent.dev/retry": str(retry),
    }
    return p


@pytest.mark.parametrize(
    ("pods", "replaced"),
    [
        ([], []),
        ([attempt(0)], []),
        ([attempt(0), attempt(1)], ["nim-e1-n0-0"]),
        ([attempt(2), attempt(0), attempt(1)], ["nim-e1-n0-0", "nim-e1-n0-1"]),
        # other nodes and executions are other groups
        ([attempt(0, node="n1"), attempt(1), attempt(0, execution="e2")], []),
        # a pod already being deleted neither counts nor is deleted again
        ([attempt(0), attempt(1, deleting=True)], []),
        ([attempt(0, deleting=True), attempt(1)], []),
        # local runs carry no execution labels; unreadable retry labels are left alone
        ([pod(), attempt(1)], []),
        ([attempt("x"), attempt(1)], []),
    ],
    ids=lambda v: ",".join(p if isinstance(p, str) else p["metadata"]["name"] for p in v) or "-",
)
def test_earlier_attempts_of_a_node_are_superseded_by_the_latest(
    pods: list[Any], replaced: list[str]
) -> None:
    found = superseded(pods)
    assert sorted(p["metadata"]["name"] for p, _ in found) == replaced
    for _, decision in found:
        assert decision.cause == SUPERSEDED
        assert "replaced by attempt" in decision.message


def test_the_same_node_in_two_namespaces_is_two_groups() -> None:
    first, second = attempt(0), attempt(1)
    second["metadata"]["namespace"] = "other"
    assert superseded([first, second]) == []
