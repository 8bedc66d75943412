"""reap_decision, superseded and stop records: what the cleanup sweep does with each pod, and why.

Pods are plain dicts built by `pod()`; `NOW` is the sweep's time. A stopped pod's verdict is read
back through `classify`, as GetTask reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nim_agent.contract import FAILURE, SUPERSEDED, TTL, UNHEALTHY, StopRecord
from nim_agent.reaper import Action, reap_decision, stop_record_for, superseded
from nim_agent.status import Phase, Reason, StatusPolicy, classify, policy_for

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = StatusPolicy()  # unhealthy window 30m
RETENTION = timedelta(hours=1)


def pod(
    *,
    expires: str | None = None,
    ready: bool = True,
    restarts: int = 0,
    deleting: bool = False,
    created: datetime = NOW - timedelta(minutes=5),
    served: datetime | None = None,
    unready_since: datetime | None = None,
    started: bool | None = None,
    phase: str = "Running",
    reason: str = "",
    stopped: StopRecord | None = None,
) -> dict[str, Any]:
    annotations = {"nim-agent.dev/expires-at": expires} if expires else {}
    if served is not None:
        annotations["nim-agent.dev/served-at"] = served.strftime("%Y-%m-%dT%H:%M:%SZ")
    if stopped is not None:
        annotations["nim-agent.dev/stopped"] = stopped.to_annotation()
    state: dict[str, Any] = {"running": {"startedAt": (NOW - timedelta(minutes=4)).isoformat()}}
    is_ready = ready and not restarts and unready_since is None
    container: dict[str, Any] = {
        "name": "nim",
        "ready": is_ready,
        "restartCount": restarts,
        "state": state if restarts == 0 else {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}} if restarts else {},
    }
    if started is not None:
        container["started"] = started
    since = (unready_since or NOW - timedelta(minutes=4)).isoformat()
    status = {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {
                "type": "Ready",
                "status": "True" if is_ready else "False",
                "lastTransitionTime": since,
            },
        ],
        "containerStatuses": [container],
    }
    if reason:
        status["reason"] = reason
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


def record(phase: str = "FAILED", at: datetime = NOW - timedelta(minutes=10)) -> StopRecord:
    return StopRecord("failure", at, phase, "CrashLoop", "Container nim is crash-looping.")


@pytest.mark.parametrize(
    ("the_pod", "keep_failed", "action", "cause"),
    [
        pytest.param(pod(), False, None, None, id="a ready pod without expiry is kept"),
        pytest.param(
            pod(expires="2026-11-27T13:00:00Z"),
            False,
            None,
            None,
            id="a pod before its ttl is kept",
        ),
        pytest.param(
            pod(expires="2026-11-27T11:59:59Z"),
            False,
            Action.STOP,
            TTL,
            id="a pod past its ttl is stopped",
        ),
        pytest.param(
            pod(expires="2026-11-27T12:00:00Z"),
            False,
            Action.STOP,
            TTL,
            id="a pod exactly at its ttl is stopped",
        ),
        pytest.param(
            pod(expires="not a time"), False, None, None, id="an unreadable expiry is ignored"
        ),
        pytest.param(
            pod(restarts=5), False, Action.STOP, FAILURE, id="a crash-looping pod is stopped"
        ),
        pytest.param(
            pod(restarts=5), True, None, None, id="keep_failed keeps a crash-looping pod running"
        ),
        pytest.param(
            pod(restarts=5, expires="2026-11-27T11:00:00Z"),
            True,
            Action.STOP,
            TTL,
            id="keep_failed still stops a failed pod past its ttl",
        ),
        pytest.param(
            pod(restarts=1), False, None, None, id="a pod restarting below the threshold is kept"
        ),
        pytest.param(
            pod(expires="2026-11-27T11:00:00Z", deleting=True),
            False,
            None,
            None,
            id="a pod already being deleted is left alone",
        ),
        pytest.param(pod(ready=False), False, None, None, id="a loading pod is kept"),
        # after serving: a blip or a crash loop is not a failure; only a long unhealthy spell is
        pytest.param(
            pod(served=NOW - timedelta(hours=1), unready_since=NOW - timedelta(minutes=1)),
            False,
            None,
            None,
            id="a served server unready for a minute is kept",
        ),
        pytest.param(
            pod(
                served=NOW - timedelta(hours=1),
                restarts=9,
                unready_since=NOW - timedelta(minutes=20),
            ),
            False,
            None,
            None,
            id="a served server crash-looping for 20 minutes is kept",
        ),
        pytest.param(
            pod(served=NOW - timedelta(hours=1), unready_since=NOW - timedelta(minutes=31)),
            False,
            Action.STOP,
            UNHEALTHY,
            id="a served server unready past the unhealthy window is stopped",
        ),
        pytest.param(
            pod(started=True, unready_since=NOW - timedelta(minutes=31)),
            False,
            Action.STOP,
            UNHEALTHY,
            id="a server past its startup probe, unready past the window, is stopped",
        ),
        pytest.param(
            pod(served=NOW - timedelta(hours=1), unready_since=NOW - timedelta(minutes=31)),
            True,
            None,
            None,
            id="keep_failed keeps an unhealthy server too",
        ),
        # stopped pods: kept for the retention, then forgotten
        pytest.param(
            pod(phase="Failed", reason="DeadlineExceeded", stopped=record()),
            False,
            None,
            None,
            id="a stopped pod is kept during its retention",
        ),
        pytest.param(
            pod(
                phase="Failed",
                reason="DeadlineExceeded",
                stopped=record(at=NOW - timedelta(hours=1)),
            ),
            False,
            Action.FORGET,
            "failure",
            id="a stopped pod is deleted once its retention is over",
        ),
        pytest.param(
            pod(phase="Failed", reason="Evicted"),
            True,
            Action.STOP,
            FAILURE,
            id="a pod that ended by itself gets its verdict recorded",
        ),
        pytest.param(
            pod(phase="Failed", reason="DeadlineExceeded", served=NOW - timedelta(hours=3)),
            False,
            Action.STOP,
            TTL,
            id="a pod the kubelet stopped at its ttl gets a ttl record",
        ),
    ],
)
def test_reap_decision_stops_expired_failed_and_unhealthy_servers(
    the_pod: dict[str, Any], keep_failed: bool, action: Action | None, cause: str | None
) -> None:
    decision = reap_decision(
        the_pod, now=NOW, policy=POLICY, keep_failed=keep_failed, retention=RETENTION
    )
    assert (decision.action if decision else None, decision.cause if decision else None) == (
        action,
        cause,
    )
    if decision is not None and decision.action is Action.STOP:
        assert decision.record is not None
        assert decision.record.phase in ("SUCCEEDED", "FAILED", "RETRYABLE_FAILED")
        assert decision.record.at == NOW


def verdict_after_stop(the_pod: dict[str, Any]) -> tuple[Phase, Reason, str]:
    """What GetTask answers for ``the_pod`` once the sweep has stopped it (the kubelet has
    ended it too), read back through `classify`."""
    decision = reap_decision(
        the_pod, now=NOW, policy=POLICY, keep_failed=False, retention=RETENTION
    )
    assert decision is not None and decision.record is not None
    the_pod["metadata"]["annotations"]["nim-agent.dev/stopped"] = decision.record.to_annotation()
    the_pod["status"].update(phase="Failed", reason="DeadlineExceeded")
    result = classify(the_pod, now=NOW + timedelta(hours=2), policy=POLICY, endpoint="http://e")
    return result.phase, result.reason, result.message


def test_a_retryable_failure_stays_retryable_after_the_sweep() -> None:
    evicted = pod(phase="Failed", reason="Evicted")
    before = classify(evicted, now=NOW, policy=POLICY, endpoint="http://e")
    assert before.phase is Phase.RETRYABLE_FAILED
    phase, reason, message = verdict_after_stop(evicted)
    assert (phase, reason) == (Phase.RETRYABLE_FAILED, Reason.EVICTED)
    assert message == before.message  # word for word: the pod ended by itself


def test_a_failure_stays_failed_with_its_cause_after_the_sweep() -> None:
    phase, reason, message = verdict_after_stop(pod(restarts=5))
    assert (phase, reason) == (Phase.FAILED, Reason.CRASH_LOOP)
    assert "crash-looping" in message and "nim-agent stopped the server (failure" in message


def test_a_server_that_served_stays_succeeded_after_its_ttl() -> None:
    phase, reason, message = verdict_after_stop(
        pod(expires="2026-11-27T11:00:00Z", served=NOW - timedelta(hours=2))
    )
    assert (phase, reason) == (Phase.SUCCEEDED, Reason.READY)
    assert "ttl expired at 2026-11-27T11:00:00Z" in message


def test_a_ready_server_never_found_serving_fails_at_its_ttl() -> None:
    # Ready, but no one was told (no served-at): its endpoint is gone, so no SUCCEEDED now.
    phase, reason, message = verdict_after_stop(pod(expires="2026-11-27T11:00:00Z"))
    assert (phase, reason) == (Phase.FAILED, Reason.TTL_EXPIRED)
    assert "before it was found serving" in message


def test_a_server_still_loading_at_its_ttl_fails_naming_the_ttl() -> None:
    phase, reason, message = verdict_after_stop(pod(expires="2026-11-27T11:00:00Z", ready=False))
    assert (phase, reason) == (Phase.FAILED, Reason.TTL_EXPIRED)
    assert "before it was ready" in message and "ttl expired" in message


def test_a_served_server_stopped_as_unhealthy_stays_succeeded() -> None:
    phase, reason, message = verdict_after_stop(
        pod(served=NOW - timedelta(hours=1), unready_since=NOW - timedelta(minutes=45))
    )
    assert (phase, reason) == (Phase.SUCCEEDED, Reason.SERVING_INTERRUPTED)
    assert "unhealthy: unready for 45m" in message


def test_a_stop_record_of_a_still_running_classification_is_terminal() -> None:
    loading = classify(pod(ready=False), now=NOW, policy=POLICY, endpoint="")
    assert loading.phase is Phase.RUNNING
    made = stop_record_for(UNHEALTHY, loading, now=NOW, detail="unready for 31m")
    assert (made.phase, made.reason) == ("FAILED", "Unhealthy")
    assert StopRecord.from_annotation(made.to_annotation()) == made


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"cause": "ttl"}',
        '{"cause": 1, "at": "2026-11-27T12:00:00Z", '
        '"phase": "FAILED", "reason": "x", "message": "m"}',
    ],
)
def test_an_unreadable_stop_record_is_no_record(text: str) -> None:
    assert StopRecord.from_annotation(text) is None


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
        assert (decision.action, decision.cause) == (Action.DELETE, SUPERSEDED)
        assert "replaced by attempt" in decision.message


def test_the_same_node_in_two_namespaces_is_two_groups() -> None:
    first, second = attempt(0), attempt(1)
    second["metadata"]["namespace"] = "other"
    assert superseded([first, second]) == []
