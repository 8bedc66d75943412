"""`classify` of a Ready server under the ``/v1/models`` check: one table of check outcomes.

Each case is a Ready pod (Ready 100 s after its creation at T0), what the check knows (nothing
asked yet, a request in flight, a model list, a failure), and the time of the poll. The model
lists are what `nim_agent.serving` hands over after reading a real answer; the NIM stand-in and
the cluster tests produce them for real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nim_agent.contract import (
    ANNOTATION_ADAPTERS,
    ANNOTATION_SERVED_AT,
    ANNOTATION_SERVED_MODEL,
    NIMEndpoint,
)
from nim_agent.models import ModelList, ModelsReply
from nim_agent.status import Phase, Reason, ServingCheck, StatusPolicy, classify

T0 = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)
READY_AT = 100  # seconds after creation
ENDPOINT = "http://llama3-8b-a1b2c3.flyte.svc.cluster.local:8000"
BASE = "meta/llama3-8b-instruct"
POLICY = StatusPolicy(serving_window=timedelta(minutes=5))
WINDOW_END = READY_AT + 5 * 60


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ready_pod(
    adapters: Sequence[str] = (),
    *,
    served_at: float | None = None,
    served_model: str = "",
    model_name: str = "",
) -> dict[str, Any]:
    """A NIM pod Ready since READY_AT, asked to serve `adapters`."""
    annotations = {}
    if adapters:
        annotations[ANNOTATION_ADAPTERS] = '["' + '","'.join(adapters) + '"]'
    if served_at is not None:
        annotations[ANNOTATION_SERVED_AT] = ts(served_at)
        annotations[ANNOTATION_SERVED_MODEL] = served_model
    env = [{"name": "NIM_SERVED_MODEL_NAME", "value": model_name}] if model_name else []
    return {
        "metadata": {
            "name": "llama3-8b-a1b2c3",
            "namespace": "flyte",
            "uid": "0b7c6f1e-0000-4000-8000-000000000002",
            "creationTimestamp": ts(0),
            "annotations": annotations,
        },
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "nim", "env": env}]},
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts(5)},
                {"type": "Ready", "status": "True", "lastTransitionTime": ts(READY_AT)},
            ],
            "containerStatuses": [
                {
                    "name": "nim",
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": ts(20)}},
                }
            ],
        },
    }


def listed(*adapters: str, base: str = BASE, at: float = READY_AT + 2) -> ModelsReply:
    """An answer listing `base` and `adapters` (children of `base`)."""
    models = ModelList(base=(base,), adapters=dict.fromkeys(adapters, base))
    return ModelsReply(at=T0 + timedelta(seconds=at), models=models, seconds=0.01)


def failed(problem: str, at: float = READY_AT + 2) -> ModelsReply:
    return ModelsReply(at=T0 + timedelta(seconds=at), problem=problem, seconds=5.0)


NOT_ASKED = ServingCheck()
IN_FLIGHT = ServingCheck(asked=True)


def asked(reply: ModelsReply) -> ServingCheck:
    return ServingCheck(reply=reply, asked=True)


@dataclass(frozen=True)
class Case:
    pod: Mapping[str, Any]
    check: ServingCheck | None
    phase: Phase
    reason: Reason
    has: Sequence[str] = ()
    now: float = READY_AT + 3
    models_request: bool = False
    served: bool = False  # the result asks for the served annotations to be written


CASES = [
    pytest.param(
        Case(
            ready_pod(["support-lora"]),
            None,
            Phase.SUCCEEDED,
            Reason.READY,
            ["ready at"],
            served=True,  # the first Ready is recorded: from then on it has served
        ),
        id="without a check (serving_check off), Ready is SUCCEEDED",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora"]),
            NOT_ASKED,
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            ["checking that it serves: GET " + ENDPOINT + "/v1/models", "FAILED after 5m"],
            models_request=True,
        ),
        id="Ready, not asked yet: RUNNING, and the caller is to ask",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora"]),
            IN_FLIGHT,
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            ["asking GET", "ready for 3s"],
        ),
        id="asked, no answer yet: RUNNING, nothing more to ask this poll",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora", "math-lora"]),
            asked(listed("support-lora", "math-lora")),
            Phase.SUCCEEDED,
            Reason.READY,
            [f"serving at {ENDPOINT}", f"lists {BASE} and adapters support-lora, math-lora"],
            served=True,
        ),
        id="the base model and every adapter listed: SUCCEEDED, to be recorded on the pod",
    ),
    pytest.param(
        Case(ready_pod(), asked(listed()), Phase.SUCCEEDED, Reason.READY, [BASE], served=True),
        id="no adapters asked: the base model is enough",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora", "math-lora"]),
            asked(listed("support-lora")),
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            ["does not list adapter math-lora yet", f"it lists {BASE} + adapters support-lora"],
        ),
        id="an adapter missing within the window: RUNNING naming it",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora", "math-lora"]),
            asked(listed("support-lora", at=WINDOW_END)),
            Phase.FAILED,
            Reason.ADAPTERS_MISSING,
            ["ready for 5m", "does not list adapter math-lora", "adapter_config.json"],
            now=WINDOW_END,
        ),
        id="an adapter still missing at the end of the window: FAILED naming it",
    ),
    pytest.param(
        Case(
            ready_pod(["a", "b"]),
            asked(listed(at=WINDOW_END + 30)),
            Phase.FAILED,
            Reason.ADAPTERS_MISSING,
            ["does not list adapters a, b"],
            now=WINDOW_END + 30,
        ),
        id="several adapters missing: all named",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora"]),
            asked(failed("HTTP 503: model is loading")),
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            ["GET " + ENDPOINT + "/v1/models failed: HTTP 503: model is loading", "retrying"],
        ),
        id="the request failed within the window: RUNNING with the server's words",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora"]),
            asked(failed("no answer within 5s (pod proxy)", at=WINDOW_END + 1)),
            Phase.FAILED,
            Reason.NOT_SERVING,
            ["does not answer with a model list (no answer within 5s (pod proxy))", "pods/proxy"],
            now=WINDOW_END + 1,
        ),
        id="no model list by the end of the window: FAILED naming the route to check",
    ),
    pytest.param(
        Case(
            ready_pod(),
            IN_FLIGHT,
            Phase.FAILED,
            Reason.NOT_SERVING,
            ["has not answered within the serving window (5m)"],
            now=WINDOW_END,
        ),
        id="still no answer at the end of the window: FAILED",
    ),
    pytest.param(
        Case(
            ready_pod(),
            NOT_ASKED,
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            ["checking that it serves"],
            now=WINDOW_END + 60,
            models_request=True,
        ),
        id="past the window but not asked yet: ask before judging",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora"], model_name="meta/llama-3.1-8b-instruct"),
            asked(listed("support-lora")),
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            ["does not list the base model meta/llama-3.1-8b-instruct (NIM_SERVED_MODEL_NAME)"],
        ),
        id="NIM_SERVED_MODEL_NAME set: that model must be the one listed",
    ),
    pytest.param(
        Case(
            ready_pod(model_name="meta/llama-3.1-8b-instruct"),
            asked(listed(at=WINDOW_END)),
            Phase.FAILED,
            Reason.NOT_SERVING,
            ["does not list the base model meta/llama-3.1-8b-instruct", "NIM_SERVED_MODEL_NAME"],
            now=WINDOW_END,
        ),
        id="another base model at the end of the window: FAILED",
    ),
    pytest.param(
        Case(
            ready_pod(),
            asked(ModelsReply(at=T0, models=ModelList())),
            Phase.RUNNING,
            Reason.VERIFYING_SERVING,
            ["does not list a base model yet (it lists nothing"],
        ),
        id="an empty model list",
    ),
    pytest.param(
        Case(
            ready_pod(["support-lora"], served_at=READY_AT + 2, served_model=BASE),
            NOT_ASKED,
            Phase.SUCCEEDED,
            Reason.READY,
            ["verified at 2026-11-02T12:01:42Z"],
            now=READY_AT + 3600,
        ),
        id="served-at on the pod: SUCCEEDED without asking, however late",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_classify_under_the_serving_check(case: Case) -> None:
    result = classify(
        case.pod,
        now=T0 + timedelta(seconds=case.now),
        policy=POLICY,
        endpoint=ENDPOINT,
        serving=case.check,
    )
    assert (result.phase, result.reason) == (case.phase, case.reason), result.message
    for fragment in case.has:
        assert fragment in result.message
    assert result.models_request == case.models_request
    assert (result.served is not None) == case.served
    assert (result.outputs is not None) == (case.phase is Phase.SUCCEEDED)


def test_every_serving_reason_is_in_the_table() -> None:
    reasons = {p.values[0].reason for p in CASES}
    assert {Reason.VERIFYING_SERVING, Reason.ADAPTERS_MISSING, Reason.NOT_SERVING} <= reasons


def test_the_first_verification_gives_the_annotations_to_record() -> None:
    reply = listed("support-lora", at=READY_AT + 2)
    result = classify(
        ready_pod(["support-lora"]),
        now=T0 + timedelta(seconds=READY_AT + 3),
        policy=POLICY,
        endpoint=ENDPOINT,
        serving=asked(reply),
    )
    assert result.served == {
        ANNOTATION_SERVED_AT: "2026-11-02T12:01:42Z",  # when the server answered
        ANNOTATION_SERVED_MODEL: BASE,
    }


def test_a_missing_adapter_failure_shows_the_servers_log_lines_naming_it() -> None:
    pod, now = ready_pod(["x"]), T0 + timedelta(seconds=WINDOW_END)
    check = asked(listed(at=WINDOW_END))
    first = classify(pod, now=now, policy=POLICY, endpoint=ENDPOINT, serving=check)
    assert first.log_request is not None and first.log_request.container == "nim"
    assert first.log_request.lines >= 1000  # the reason is at start-up, before the access log
    access = [f'10.244.0.1 - "GET /v1/models HTTP/1.1" 200 ({i})' for i in range(100)]
    why = "ERROR failed to load LoRA adapter 'x' from /opt/nim/loras/x: no adapter_config.json"
    tail = "\n".join(["INFO starting", why, *access])
    second = classify(pod, now=now, policy=POLICY, endpoint=ENDPOINT, serving=check, log_tail=tail)
    assert second.message.endswith("Log lines naming x:\n" + why)


def test_without_a_line_naming_the_adapter_the_last_lines_are_shown() -> None:
    pod, now = ready_pod(["x"]), T0 + timedelta(seconds=WINDOW_END)
    check = asked(listed(at=WINDOW_END))
    tail = "\n".join(f"line {i}" for i in range(30))
    result = classify(pod, now=now, policy=POLICY, endpoint=ENDPOINT, serving=check, log_tail=tail)
    last = "\n".join(f"line {i}" for i in range(10, 30))
    assert result.message.endswith("Last log lines:\n" + last)


@pytest.mark.parametrize(
    ("pod", "check", "model"),
    [
        pytest.param(ready_pod(["a", "b"]), asked(listed("a", "b")), BASE, id="verified now"),
        pytest.param(
            ready_pod(["a", "b"], served_at=READY_AT, served_model="meta/x"),
            NOT_ASKED,
            "meta/x",
            id="verified before: the recorded model",
        ),
        pytest.param(
            ready_pod(["a", "b"], model_name="meta/y"), None, "meta/y", id="not checked: the env"
        ),
        pytest.param(ready_pod(["a", "b"]), None, "", id="not checked, no env: unknown"),
    ],
)
def test_a_typed_endpoint_carries_the_urls_the_served_model_and_the_adapters(
    pod: dict[str, Any], check: ServingCheck | None, model: str
) -> None:
    result = classify(
        pod,
        now=T0 + timedelta(seconds=READY_AT + 3),
        policy=POLICY,
        endpoint=ENDPOINT,
        serving=check,
        typed=True,
    )
    assert result.outputs == {
        "endpoint": NIMEndpoint(
            base_url=ENDPOINT,
            openai_base_url=ENDPOINT + "/v1",
            model=model,
            adapters=["a", "b"],
        )
    }


def test_the_plain_endpoint_is_the_url_string() -> None:
    result = classify(
        ready_pod(), now=T0 + timedelta(seconds=200), policy=POLICY, endpoint=ENDPOINT
    )
    assert result.outputs == {"endpoint": ENDPOINT}


def test_a_server_that_is_not_ready_is_never_asked() -> None:
    pod = ready_pod()
    pod["status"]["conditions"][-1]["status"] = "False"
    pod["status"]["containerStatuses"][0]["ready"] = False
    result = classify(
        pod, now=T0 + timedelta(seconds=200), policy=POLICY, endpoint=ENDPOINT, serving=NOT_ASKED
    )
    assert result.phase is Phase.RUNNING and not result.models_request
