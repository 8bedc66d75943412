"""Shared servers, purely: share keys, names, holders, idle deadlines, compaction, holder views,
and what the cleanup sweep decides for a shared pod.

Pods are plain dicts: a shared server rendered by `render_pod` (`shared_pod()`), with holder
records added the way the connector adds them; `NOW` is the sweep's (or GetTask's) time.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nim_agent import NIM, NIMSecrets, Reuse
from nim_agent.contract import (
    ANNOTATION_ADAPTERS,
    ANNOTATION_ADAPTERS_KEPT,
    ANNOTATION_ENDPOINT,
    ANNOTATION_IDLE_SINCE,
    ANNOTATION_IDLE_UNTIL,
    ANNOTATION_SERVED_AT,
    ANNOTATION_STOPPED,
    IDLE,
    TTL,
    HolderRecord,
    StopRecord,
    format_time,
    holder_key,
    stop_record,
)
from nim_agent.reaper import Action, reap_decision
from nim_agent.render import DeploymentIdentity, SharedServer, render_pod, shared_deployment_name
from nim_agent.settings import ConnectorSettings, StatusPolicy
from nim_agent.sharing import (
    compaction,
    conflicts,
    gpu_seconds,
    holder_adapters,
    holder_view,
    idle_deadline,
    idle_since,
    live_holders,
    served_input_name,
    share_key,
    unusable,
)
from nim_agent.status import Phase, Reason

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SETTINGS = ConnectorSettings(service_accounts=("default", "nim"))
SECRETS = NIMSecrets(ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="")
POLICY = StatusPolicy()
RETENTION = timedelta(hours=1)


def base(**overrides: Any) -> NIM:
    fields: dict[str, Any] = {
        "secrets": SECRETS,
        "env": {"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        "lora_adapter_mem": "1Gi",
    }
    fields.update(overrides)
    return NIM(**fields)


def key_of(nim: NIM, **kw: Any) -> str:
    args: dict[str, Any] = {"namespace": "ns", "reuse": Reuse()}
    args.update(kw)
    return share_key(nim, SETTINGS, **args)


# --------------------------------------------------------------------------- share keys


def test_the_share_key_ignores_the_adapters_and_the_config_s_namespace_field() -> None:
    key = key_of(base())
    assert key == key_of(base(hf_repo_ids=["tloen/alpaca-lora-7b"]))
    assert key == key_of(base(namespace="ns"))
    assert len(key) == 32 and int(key, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"image": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3"},
        {"gpu": 2},
        {"mem": "40Gi"},
        {"cpu": 2},
        {"env": {"NIM_PEFT_SOURCE": "/opt/nim/loras", "NIM_MAX_GPU_LORAS": "4"}},
        {"secrets": dataclasses.replace(SECRETS, ngc_secret_group="team-b")},
        {"secrets": dataclasses.replace(SECRETS, ngc_image_secret="other-pull")},
        {"secrets": dataclasses.replace(SECRETS, hf_token_group="hf", hf_token_key="t")},
        {"service_account": "nim"},
        {"node_selector": {"gpu": "a100"}},
        {"cache_pvc": "models"},
        {"security_profile": "nvidia"},
        {"labels": {"team": "ml"}},
        {"annotations": {"note": "x"}},
        {"lora_adapter_mem": "2Gi"},
        {"hf_endpoint": "https://hf-mirror.example.com"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_any_change_to_what_the_server_is_changes_the_share_key(change: dict[str, Any]) -> None:
    settings = ConnectorSettings(
        service_accounts=("default", "nim"), allowed_security_profiles=("nvidia",)
    )
    one = share_key(base(), settings, namespace="ns", reuse=Reuse())
    other = share_key(base(**change), settings, namespace="ns", reuse=Reuse())
    assert one != other


def test_the_share_key_holds_the_namespace_the_scope_and_with_project_domain_the_project() -> None:
    nim = base()
    assert key_of(nim) != key_of(nim, namespace="other")
    assert key_of(nim) != key_of(nim, reuse=Reuse(scope="project-domain"))
    assert key_of(nim, project="a", domain="d") == key_of(nim, project="b", domain="d")
    pd = Reuse(scope="project-domain")
    assert key_of(nim, reuse=pd, project="a", domain="d") != key_of(
        nim, reuse=pd, project="b", domain="d"
    )
    assert key_of(nim, inputs=True) != key_of(nim)  # its sidecar runs another image
    # The idle ttl is the holder's, not the server's: no effect on the key.
    assert key_of(nim, reuse=Reuse(idle_ttl=timedelta(minutes=1))) == key_of(nim)


def test_the_share_key_follows_the_connector_settings_that_change_the_pod() -> None:
    nim = base()
    other = ConnectorSettings(service_accounts=("default", "nim"), default_secret_name="ngc-b")
    assert share_key(nim, other, namespace="ns", reuse=Reuse()) != key_of(nim)


def test_shared_names_derive_from_key_and_generation_and_are_dns_labels() -> None:
    a = shared_deployment_name("k" * 32, 0, "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0")
    assert a == shared_deployment_name("k" * 32, 0, "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0")
    assert a != shared_deployment_name("k" * 32, 1, "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0")
    assert a.startswith("nim-llama3-8b-instruct-shared-") and len(a) <= 63


def test_input_adapters_are_served_under_their_name_and_a_hash_of_their_uri() -> None:
    a = served_input_name("support", "s3://b/raw/1/o0")
    assert a == served_input_name("support", "s3://b/raw/1/o0")
    assert a != served_input_name("support", "s3://b/raw/2/o0")
    assert a.startswith("support-") and len(a) == len("support-") + 8
    nim = base(hf_repo_ids=["tloen/alpaca-lora-7b"])
    assert list(holder_adapters(nim, {a: "s3://b/raw/1/o0"}).items()) == [
        ("alpaca-lora-7b", {"hf": "tloen/alpaca-lora-7b"}),
        (a, {"uri": "s3://b/raw/1/o0"}),
    ]


# --------------------------------------------------------------------------- pods and holders


def record(
    since: datetime = NOW - timedelta(minutes=10),
    *,
    ttl: timedelta = timedelta(hours=1),
    idle: timedelta = timedelta(minutes=15),
    adapters: dict[str, dict[str, str]] | None = None,
    ended: datetime | None = None,
    served: datetime | None = None,
    execution: dict[str, Any] | None = None,
) -> HolderRecord:
    return HolderRecord(
        since=since,
        until=since + ttl,
        idle_ttl=idle,
        adapters=adapters or {},
        execution=execution or {},
        ended=ended,
        ended_by="abort" if ended else "",
        served=served,
        served_model="meta/llama3-8b-instruct" if served else "",
    )


def shared_pod(
    holders: dict[str, HolderRecord] | None = None,
    *,
    key: str = "k" * 32,
    ready: bool = True,
    created: datetime = NOW - timedelta(hours=1),
    lifetime: timedelta = timedelta(hours=24),
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    identity = DeploymentIdentity(
        name="nim-shared-x", namespace="ns", expires_at=created + lifetime
    )
    pod = render_pod(base(), identity, SETTINGS, shared=SharedServer(key=key, lifetime=lifetime))
    annotations = pod["metadata"]["annotations"]
    for name, r in (holders or {}).items():
        annotations[holder_key(name)] = r.to_annotation()
    annotations.update(extra or {})
    pod["metadata"].update(uid="u1", resourceVersion="42", creationTimestamp=format_time(created))
    pod["status"] = {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": format_time(created)},
            {"type": "Initialized", "status": "True", "lastTransitionTime": format_time(created)},
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "lastTransitionTime": format_time(created + timedelta(minutes=3)),
            },
        ],
        "containerStatuses": [
            {
                "name": "nim",
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": format_time(created)}},
            }
        ],
    }
    return pod


def test_a_running_server_of_the_key_with_life_left_can_take_a_holder() -> None:
    pod = shared_pod({"a": record()})
    args = {"key": "k" * 32, "now": NOW, "ttl": timedelta(hours=2), "policy": POLICY}
    assert unusable(pod, **args) is None
    assert "not this configuration" in str(unusable(shared_pod(key="o" * 32), **args))
    stopped = shared_pod(
        extra={ANNOTATION_STOPPED: StopRecord(IDLE, NOW, "SUCCEEDED", "Ready", "x").to_annotation()}
    )
    assert unusable(stopped, **args) == "it was stopped (idle)"
    deleting = shared_pod()
    deleting["metadata"]["deletionTimestamp"] = format_time(NOW)
    assert unusable(deleting, **args) == "it is being deleted"
    ended = shared_pod()
    ended["status"]["phase"] = "Failed"
    assert unusable(ended, **args) == "it has ended"
    crashing = shared_pod(ready=False)
    crashing["status"]["containerStatuses"][0].update(
        restartCount=5,
        ready=False,
        state={"waiting": {"reason": "CrashLoopBackOff"}},
        lastState={"terminated": {"exitCode": 1, "reason": "Error"}},
    )
    assert "failing (CrashLoop)" in str(unusable(crashing, **args))
    ending = shared_pod(created=NOW - timedelta(hours=23))  # 1h of its 24h lifetime left
    assert "before this ttl would" in str(unusable(ending, **args))
    assert unusable(ending, **{**args, "ttl": timedelta(minutes=30)}) is None


def test_an_adapter_name_is_bound_to_its_first_source_for_the_server_s_life() -> None:
    a = record(NOW - timedelta(minutes=9), adapters={"lora": {"hf": "a/lora"}})
    b = record(NOW - timedelta(minutes=5), adapters={"lora": {"hf": "b/lora"}})
    pod = shared_pod({"a": a})
    assert conflicts(pod, {"lora": {"hf": "a/lora"}, "new": {"uri": "s3://x"}}) == []
    assert conflicts(pod, {"lora": {"hf": "b/lora"}}) == [
        "adapter lora is hf:a/lora on the shared server, not hf:b/lora"
    ]
    # Two holders raced with one name: the older one's source wins, for both sides alike.
    both = shared_pod({"b": b, "a": a})
    view = holder_view(both, "b", endpoint="http://b.ns.svc.cluster.local:8000", now=NOW)
    assert view.verdict is not None and view.verdict.phase is Phase.FAILED
    assert "hf:a/lora" in view.verdict.message
    assert holder_view(both, "a", endpoint="e", now=NOW).verdict is None
    # Kept from holders that are gone: still bound.
    kept = shared_pod(extra={ANNOTATION_ADAPTERS_KEPT: json.dumps({"lora": {"hf": "a/lora"}})})
    assert conflicts(kept, {"lora": {"hf": "b/lora"}})


def test_holders_are_live_until_released_or_past_their_until() -> None:
    pod = shared_pod(
        {
            "live": record(),
            "released": record(ended=NOW - timedelta(minutes=1)),
            "expired": record(NOW - timedelta(hours=2)),
        }
    )
    assert set(live_holders(pod, NOW)) == {"live"}
    assert idle_deadline(pod, NOW) is None and idle_since(pod, NOW) is None


def test_the_idle_deadline_is_the_latest_end_plus_that_holder_s_idle_ttl() -> None:
    one = record(NOW - timedelta(minutes=30), ended=NOW - timedelta(minutes=20))  # idle 15m
    two = record(
        NOW - timedelta(minutes=30), ended=NOW - timedelta(minutes=25), idle=timedelta(hours=1)
    )
    pod = shared_pod({"one": one, "two": two})
    assert idle_since(pod, NOW) == NOW - timedelta(minutes=20)
    assert idle_deadline(pod, NOW) == NOW - timedelta(minutes=25) + timedelta(hours=1)
    # A holder that vanished ends at its until.
    vanished = record(NOW - timedelta(hours=2), ttl=timedelta(minutes=30))
    pod = shared_pod({"vanished": vanished})
    assert idle_deadline(pod, NOW) == NOW - timedelta(hours=1, minutes=30) + timedelta(minutes=15)
    # No holder ever recorded: idle since its creation.
    assert idle_since(shared_pod(), NOW) == NOW - timedelta(hours=1)


def test_a_holder_replaced_by_a_later_attempt_of_its_node_ends_then() -> None:
    node = {"project": "p", "domain": "d", "execution": "e", "node": "n0"}
    first = record(NOW - timedelta(minutes=30), execution={**node, "retry": 0})
    second = record(NOW - timedelta(minutes=10), execution={**node, "retry": 1})
    pod = shared_pod({"attempt-0": first, "attempt-1": second})
    assert set(live_holders(pod, NOW)) == {"attempt-1"}
    patch = compaction(pod, NOW)
    assert patch is not None and patch[holder_key("attempt-0")] is None
    assert holder_key("attempt-1") not in patch


def test_compaction_removes_the_holders_that_are_gone_keeping_bindings_and_deadline() -> None:
    gone = record(
        NOW - timedelta(minutes=40),
        ended=NOW - timedelta(minutes=30),
        adapters={"a": {"hf": "o/a"}},
    )
    live = record(adapters={"b": {"uri": "s3://b"}})
    pod = shared_pod(
        {"gone": gone, "live": live},
        extra={ANNOTATION_IDLE_UNTIL: format_time(NOW - timedelta(hours=5))},
    )
    patch = compaction(pod, NOW)
    assert patch is not None
    assert patch[holder_key("gone")] is None and holder_key("live") not in patch
    assert json.loads(patch[ANNOTATION_ADAPTERS_KEPT]) == {
        "a": {"hf": "o/a"},
        "b": {"uri": "s3://b"},
    }
    assert patch[ANNOTATION_IDLE_UNTIL] == format_time(NOW - timedelta(minutes=15))
    assert patch[ANNOTATION_IDLE_SINCE] == format_time(NOW - timedelta(minutes=30))
    assert compaction(shared_pod({"live": live}), NOW) is None
    # After it, the idle deadline is what the gone holder left.
    pod["metadata"]["annotations"].update({k: v for k, v in patch.items() if v is not None})
    del pod["metadata"]["annotations"][holder_key("gone")]
    live_ended = dataclasses.replace(live, ended=NOW - timedelta(minutes=40))
    pod["metadata"]["annotations"][holder_key("live")] = live_ended.to_annotation()
    assert idle_deadline(pod, NOW) == NOW - timedelta(minutes=15)


# --------------------------------------------------------------------------- holder views


def test_a_holder_sees_its_own_adapters_endpoint_and_served_time() -> None:
    served = NOW - timedelta(minutes=2)
    pod = shared_pod(
        {
            "a": record(adapters={"x": {"hf": "o/x"}}, served=served),
            "b": record(adapters={"y": {"uri": "s3://y"}}),
        },
        extra={ANNOTATION_SERVED_AT: format_time(NOW - timedelta(minutes=50))},
    )
    view = holder_view(pod, "b", endpoint="http://b.ns.svc.cluster.local:8000", now=NOW)
    assert view.verdict is None and view.pod is not None and view.record is not None
    annotations = view.pod["metadata"]["annotations"]
    assert json.loads(annotations[ANNOTATION_ADAPTERS]) == ["y"]
    assert annotations[ANNOTATION_ENDPOINT] == "http://b.ns.svc.cluster.local:8000"
    assert ANNOTATION_SERVED_AT not in annotations  # the server served, not yet this holder
    a = holder_view(pod, "a", endpoint="e", now=NOW)
    assert a.pod is not None and a.pod["metadata"]["annotations"][ANNOTATION_SERVED_AT] == (
        format_time(served)
    )
    assert pod["metadata"]["annotations"][ANNOTATION_SERVED_AT] != format_time(served)  # a copy


def test_a_holder_that_is_gone_is_answered_from_its_record() -> None:
    pod = shared_pod(
        {
            "served": record(ended=NOW, served=NOW - timedelta(minutes=5)),
            "never": record(NOW - timedelta(hours=2)),
        }
    )
    view = holder_view(pod, "served", endpoint="e", now=NOW)
    assert view.verdict is not None and view.verdict.phase is Phase.SUCCEEDED
    view = holder_view(pod, "never", endpoint="e", now=NOW)
    assert view.verdict is not None and view.verdict.phase is Phase.FAILED
    assert view.verdict.reason is Reason.TTL_EXPIRED
    view = holder_view(pod, "unknown", endpoint="e", now=NOW)
    assert view.verdict is not None and view.verdict.phase is Phase.FAILED


def test_a_stopped_server_s_success_is_a_failure_for_a_holder_it_never_served() -> None:
    verdict = StopRecord(TTL, NOW, "SUCCEEDED", "TtlExpired", "served, then stopped")
    pod = shared_pod(
        {"new": record(), "old": record(served=NOW - timedelta(minutes=30))},
        extra={ANNOTATION_STOPPED: verdict.to_annotation()},
    )
    new = holder_view(pod, "new", endpoint="e", now=NOW).pod
    old = holder_view(pod, "old", endpoint="e", now=NOW).pod
    assert new is not None and old is not None
    assert stop_record(new).phase == "FAILED"  # type: ignore[union-attr]
    assert stop_record(old).phase == "SUCCEEDED"  # type: ignore[union-attr]


def test_gpu_seconds_count_from_scheduling_to_now_or_the_stop() -> None:
    pod = shared_pod(created=NOW - timedelta(minutes=10))
    assert gpu_seconds(pod, NOW) == 600.0  # one GPU, 10 minutes
    stop = StopRecord(IDLE, NOW - timedelta(minutes=4), "SUCCEEDED", "Ready", "x")
    pod["metadata"]["annotations"][ANNOTATION_STOPPED] = stop.to_annotation()
    assert gpu_seconds(pod, NOW) == 360.0


# --------------------------------------------------------------------------- the sweep


def decide(pod: dict[str, Any]) -> Any:
    return reap_decision(pod, now=NOW, policy=POLICY, keep_failed=False, retention=RETENTION)


def test_the_sweep_stops_an_idle_shared_server_past_its_deadline_with_a_precondition() -> None:
    ended = NOW - timedelta(minutes=16)
    pod = shared_pod({"a": record(ended=ended, served=NOW - timedelta(minutes=40))})
    pod["metadata"]["annotations"][ANNOTATION_SERVED_AT] = format_time(NOW - timedelta(hours=1))
    decision = decide(pod)
    assert decision.action is Action.STOP and decision.cause == IDLE
    assert decision.precondition == "42"
    assert decision.record.phase == "SUCCEEDED" and "idle for 16m" in decision.record.message


def test_the_sweep_leaves_a_held_or_recently_released_shared_server_running() -> None:
    assert decide(shared_pod({"a": record()})) is None
    recent = shared_pod({"a": record(ended=NOW - timedelta(minutes=5))})
    decision = decide(recent)  # within the idle ttl: only its gone holder's record compacted
    assert decision.action is Action.COMPACT and decision.precondition == "42"


def test_the_sweep_stops_a_shared_server_at_its_lifetime_whatever_its_holders() -> None:
    pod = shared_pod({"a": record()}, created=NOW - timedelta(hours=2), lifetime=timedelta(hours=1))
    decision = decide(pod)
    assert decision.action is Action.STOP and decision.cause == TTL
    assert "lifetime" in decision.message
