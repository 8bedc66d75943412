"""The on-pod contract: what nim-agent writes on its objects reads back the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nim_agent.contract import (
    ANNOTATION_DELETION_CAUSE,
    ANNOTATION_EXPIRES_AT,
    deletion_cause,
    deletion_cause_value,
    deployment_of_endpoint,
    endpoint_for,
    expires_at,
    format_duration,
    format_time,
    is_ours,
    parse_duration,
    parse_time,
    same_deployment,
)
from nim_agent.render import DeploymentIdentity, ExecutionIdentity, render_pod
from tests.configs import simulated_nim

MOMENT = datetime(2026, 11, 2, 12, 0, 5, tzinfo=UTC)


def pod_with(**annotations: str) -> dict[str, Any]:
    return {"metadata": {"annotations": annotations}}


def rendered(execution: str = "e1", **labels: str) -> dict[str, Any]:
    identity = DeploymentIdentity.for_execution(
        ExecutionIdentity("p", "d", execution, "n0"), "ns", expires_at=MOMENT
    )
    return render_pod(simulated_nim("ready", labels=labels or None), identity)


def test_a_time_written_on_the_pod_reads_back_as_the_same_moment() -> None:
    assert format_time(MOMENT) == "2026-11-02T12:00:05Z"
    assert parse_time(format_time(MOMENT)) == MOMENT
    assert expires_at(rendered()) == MOMENT


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-11-02T12:00:05Z", MOMENT),
        ("2026-11-02T12:00:05+00:00", MOMENT),
        ("2026-11-02T12:00:05", MOMENT),  # no zone: UTC
        ("2026-11-02T13:00:05+01:00", MOMENT),
        ("not a time", None),
        ("", None),
        (None, None),
        (1700000000, None),
    ],
)
def test_times_are_read_tolerantly(text: object, moment: datetime | None) -> None:
    assert parse_time(text) == moment


def test_an_unreadable_expiry_is_no_expiry() -> None:
    assert expires_at(pod_with(**{ANNOTATION_EXPIRES_AT: "soon"})) is None
    assert expires_at({}) is None
    assert expires_at(None) is None


@pytest.mark.parametrize(
    ("seconds", "exact", "compact"),
    [
        (0, "0s", "0s"),
        (45, "45s", "45s"),
        (192, "3m12s", "3m12s"),
        (3600, "1h", "1h"),
        (3905, "1h5m5s", "1h5m"),
        (7205, "2h5s", "2h"),
        (-30, "0s", "0s"),
    ],
)
def test_durations_exact_for_settings_and_compact_for_progress(
    seconds: int, exact: str, compact: str
) -> None:
    delta = timedelta(seconds=seconds)
    assert format_duration(delta) == exact
    assert format_duration(delta, exact=False) == compact
    if seconds >= 0:
        assert parse_duration(exact) == delta


def test_the_deletion_cause_written_on_a_pod_reads_back() -> None:
    value = deletion_cause_value("ttl", "ttl expired at 2026-11-02T12:00:05Z")
    assert deletion_cause(pod_with(**{ANNOTATION_DELETION_CAUSE: value})) == value
    assert value.startswith("ttl: ")
    assert deletion_cause_value("abort") == "abort"
    assert len(deletion_cause_value("failure", "x" * 5000)) == 1000
    assert deletion_cause(rendered()) is None


def test_ownership_is_the_managed_by_label() -> None:
    assert is_ours(rendered())
    assert not is_ours({"metadata": {"labels": {"app.kubernetes.io/managed-by": "helm"}}})
    assert not is_ours({"metadata": {"labels": None}})
    assert not is_ours(None)


def test_the_same_deployment_is_ours_with_the_same_identity_whatever_its_simulated_life() -> None:
    assert same_deployment(rendered("e1"), rendered("e1"))
    assert same_deployment(rendered("e1", **{"nim-agent.dev/simulate": "oom"}), rendered("e1"))
    assert not same_deployment(rendered("e1"), rendered("e2"))
    foreign = rendered("e1")
    foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "someone"
    assert not same_deployment(foreign, rendered("e1"))


def test_an_endpoint_names_its_deployment() -> None:
    url = endpoint_for("nim-e1-n0-0-ab12", "flyte", 8000)
    assert url == "http://nim-e1-n0-0-ab12.flyte.svc.cluster.local:8000"
    assert deployment_of_endpoint(url) == ("nim-e1-n0-0-ab12", "flyte")
    assert deployment_of_endpoint("http://nim-x.flyte.svc:8000/") == ("nim-x", "flyte")
    assert deployment_of_endpoint("https://example.com") is None
