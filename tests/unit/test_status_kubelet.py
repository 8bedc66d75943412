"""`nim_agent.status.classify` over pod lives recorded on a real kubelet.

The fixtures in tests/unit/fixtures/kubelet/ are what the API server showed of NIM pods on the
local control plane's real node (kubelet v1.37, containerd 1.6, runc; the NIM stand-in image):
every version of the pod and of its events, sanitised (see `tests.lives`, which records them
while tests/integration/test_kubelet_lives.py runs each life through the connector). Here every
version is classified again, offline, as of the moment it was seen, with the policy the connector
had: the table gives the verdicts each life must go through, in order (a verdict repeated by
consecutive versions counted once), and what the last one must say.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from nim_agent.status import Classification, Reason, StatusPolicy, classify, policy_for
from tests.lives import FIXTURES, frames, moment

ENDPOINT = "http://nim-life.flyte.svc.cluster.local:8000"


def load(life: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{life}.json").read_text())
    return doc


def policy_of(doc: Mapping[str, Any]) -> StatusPolicy:
    p = doc["policy"]
    return StatusPolicy(
        crashloop_restart_threshold=p["crashloop_restart_threshold"],
        unhealthy_window=timedelta(seconds=p["unhealthy_window_s"]),
        serving_window=timedelta(seconds=p["serving_window_s"]),
    )


def verdicts(doc: Mapping[str, Any], log: str | None = None) -> list[tuple[float, Classification]]:
    """Each pod version of the life, classified as of the moment it was seen."""
    base = policy_of(doc)
    out = []
    for at, pod, events in frames(doc):
        result = classify(
            pod,
            events=events,
            now=moment(at),
            policy=policy_for(pod, base),
            endpoint=ENDPOINT,
            log_tail=doc["logs"].get(log) if log else None,
        )
        out.append((at, result))
    return out


def steps(results: Sequence[tuple[float, Classification]]) -> list[str]:
    """``PHASE/Reason`` of each verdict, consecutive repeats counted once."""
    seen: list[str] = []
    for _, r in results:
        step = f"{r.phase.value}/{r.reason.value}"
        if not seen or seen[-1] != step:
            seen.append(step)
    return seen


@dataclass(frozen=True)
class Life:
    life: str
    steps: Sequence[str]  # the verdicts in order, consecutive repeats once
    has: Sequence[str] = ()  # fragments of the last verdict's message
    log: str | None = None  # the fixture's log given as the log tail


def life(name: str, steps: str, *has: str, log: str | None = None) -> Any:
    return pytest.param(Life(name, steps.split(), has, log), id=name)


# Recorded on the real node by tests/integration/test_kubelet_lives.py (NIM_AGENT_RECORD_LIVES=1).
LIVES: list[Any] = [
    life(
        "ready",
        "QUEUED/Queued INITIALIZING/ContainerCreating INITIALIZING/InitContainerRunning "
        "INITIALIZING/ContainerCreating RUNNING/LoadingModel RUNNING/NotReady SUCCEEDED/Ready",
        "NIM server ready at",
    ),
    life(
        "crash-loop",
        "QUEUED/Queued INITIALIZING/ContainerCreating RUNNING/LoadingModel RUNNING/Restarting "
        "RUNNING/LoadingModel RUNNING/Restarting FAILED/CrashLoop",
        "crash-looping: 2 restarts, last exit code 3 (Error)",
        "exiting with code 3 (STANDIN_EXIT_CODE)",
        log="nim (previous)",
    ),
    life(
        "oom-killed",
        "QUEUED/Queued INITIALIZING/ContainerCreating RUNNING/LoadingModel FAILED/OOMKilled",
        "killed for exceeding its memory limit of 96Mi (OOMKilled, exit code 137): raise `mem`",
        log="nim (previous)",
    ),
    life(
        "missing-secret",
        "QUEUED/Queued INITIALIZING/ContainerCreating FAILED/MissingSecret",
        'secret "no-such-secret" not found',
    ),
    life(
        "image-tag-missing",
        "QUEUED/Queued INITIALIZING/ContainerCreating INITIALIZING/PullingImage "
        "FAILED/ImagePullError",
        "Cannot pull image",
        "code = NotFound",
    ),
    life(
        "lora-unknown-repo",
        "QUEUED/Queued INITIALIZING/ContainerCreating INITIALIZING/InitContainerRunning "
        "INITIALIZING/Restarting INITIALIZING/InitContainerRunning INITIALIZING/Restarting "
        "FAILED/InitContainerFailed",
        "Init container lora-downloader failed after 2 restarts",
        "standin/no-such-adapter: repository not found",
        log="lora-downloader (previous)",
    ),
    life(
        "lora-bad-token",
        "QUEUED/Queued INITIALIZING/ContainerCreating INITIALIZING/InitContainerRunning "
        "INITIALIZING/Restarting INITIALIZING/InitContainerRunning INITIALIZING/Restarting "
        "FAILED/InitContainerFailed",
        "refused the token in HF_TOKEN",
        log="lora-downloader (previous)",
    ),
    life(
        "startup-probe-kill",
        "QUEUED/Queued INITIALIZING/ContainerCreating RUNNING/LoadingModel FAILED/StartupTimeout",
        "did not pass its startup probe in time",
        "Startup probe failed: HTTP probe failed with statuscode: 503",
        log="nim (previous)",
    ),
    life(
        "readiness-flap",
        "QUEUED/Queued INITIALIZING/ContainerCreating RUNNING/LoadingModel RUNNING/NotReady "
        "SUCCEEDED/Ready SUCCEEDED/ServingInterrupted SUCCEEDED/Ready",
        "NIM server ready at",
    ),
    life(
        "unhealthy-stopped",
        "QUEUED/Queued INITIALIZING/ContainerCreating RUNNING/LoadingModel RUNNING/NotReady "
        "SUCCEEDED/Ready SUCCEEDED/ServingInterrupted",
        "has served since",
        "nim-agent stopped the server (unhealthy: unready for 15s",
    ),
    # Offline, before served-at reached the pod, the first Ready reads SUCCEEDED, then NotReady:
    # the connector (which records served-at) was killed right after; the kubelet ended the pod
    # at its activeDeadlineSeconds, and served-at had never been written.
    life(
        "deadline-no-connector",
        "QUEUED/Queued WAITING_FOR_RESOURCES/Unschedulable INITIALIZING/ContainerCreating "
        "RUNNING/LoadingModel RUNNING/NotReady SUCCEEDED/Ready RUNNING/NotReady FAILED/TtlExpired",
        "the kubelet stopped it (activeDeadlineSeconds)",
    ),
]


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("case", LIVES)
def test_classify_follows_each_life_the_kubelet_went_through(case: Life) -> None:
    doc = load(case.life)
    results = verdicts(doc, case.log)
    assert steps(results) == list(case.steps)
    last = results[-1][1]
    for fragment in case.has:
        assert fragment in last.message, last.message


def test_every_recorded_life_is_in_the_table() -> None:
    assert sorted(p.values[0].life for p in LIVES) == fixture_names()


@pytest.mark.parametrize("life", fixture_names())
def test_no_state_of_a_real_kubelet_is_left_unrecognised(life: str) -> None:
    for at, result in verdicts(load(life)):
        assert result.reason is not Reason.UNKNOWN, (at, result.message)


@pytest.mark.parametrize("life", fixture_names())
def test_the_last_verdict_is_what_the_connector_answered(life: str) -> None:
    doc = load(life)
    final = doc["connector"][-1]
    _, last = verdicts(doc)[-1]
    assert (last.phase.value, last.reason.value) == (final["phase"], final["reason"])


_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.mark.parametrize("life", fixture_names())
def test_fixtures_hold_no_uids_and_no_words_of_the_machine_they_ran_on(life: str) -> None:
    text = (FIXTURES / f"{life}.json").read_text()
    assert not _UID.search(text)
    for word in ("nim-real-0", "/work/", "/root/", "t-test-", ":standin-"):
        assert word not in text, word
    doc = load(life)
    assert doc["pods"][0]["metadata"]["creationTimestamp"] == "2026-01-01T00:00:00Z"
    assert all(item["at"] >= -5 for item in doc["pods"] + doc["events"])
