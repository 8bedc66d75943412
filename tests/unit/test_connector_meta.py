"""NIMMetadata: what flytepropeller stores between calls, and what garbage decodes to."""

from __future__ import annotations

import pytest

from nim_agent.connector import NIMMetadata


def test_metadata_round_trips_through_bytes() -> None:
    meta = NIMMetadata(
        namespace="ns", name="nim-a-1", endpoint="http://nim-a-1.ns.svc.cluster.local:8000"
    )
    assert NIMMetadata.decode(meta.encode()) == meta
    typed = NIMMetadata(namespace="ns", name="nim-a-1", typed=True)
    assert NIMMetadata.decode(typed.encode()) == typed


def test_metadata_of_an_older_connector_without_typed_decodes_as_a_plain_endpoint() -> None:
    meta = NIMMetadata.decode(b'{"namespace": "ns", "name": "x", "endpoint": "", "local": false}')
    assert not meta.error and meta.typed is False


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty bytes"),
        pytest.param(b"\xff\xfe", id="not utf-8"),
        pytest.param(b"[1, 2]", id="a JSON list"),
        pytest.param(b'{"namespace": "ns"}', id="no name"),
        pytest.param(b'{"namespace": "ns", "name": 3}', id="a number as name"),
        pytest.param(b'{"namespace": "ns", "name": "x", "pod": "y"}', id="an unknown key"),
        pytest.param(b'{"namespace": "ns", "name": "x", "local": "yes"}', id="local not a bool"),
        pytest.param(b'{"namespace": "ns", "name": "x", "typed": 1}', id="typed not a bool"),
        pytest.param(b"null", id="JSON null"),
        pytest.param(b'{"namespace": "ns", "name": "%"}', id="a name the API cannot take"),
        pytest.param(b'{"namespace": "NS", "name": "x"}', id="a namespace that is not a DNS label"),
    ],
)
def test_garbage_resource_meta_decodes_to_an_error_not_an_exception(data: bytes) -> None:
    meta = NIMMetadata.decode(data)
    assert meta.error.startswith("resource_meta is not a nim-agent deployment reference")


def test_an_api_outage_is_answered_with_the_last_known_state() -> None:
    from flyteidl.core.execution_pb2 import TaskExecution
    from flytekit.extend.backend.base_connector import Resource

    from nim_agent.connector import _LastKnown

    meta = NIMMetadata(namespace="ns", name="nim-a-1", endpoint="http://x")
    last = _LastKnown(capacity=1)
    unknown = last.answer(meta, "connection refused")
    assert unknown.phase == TaskExecution.RUNNING
    assert "connection refused" in unknown.message

    last.remember(meta, Resource(phase=TaskExecution.INITIALIZING, message="Pulling image."))
    bridged = last.answer(meta, "connection refused")
    assert bridged.phase == TaskExecution.INITIALIZING
    assert bridged.message.startswith("Pulling image.")
    assert "last known state" in bridged.message

    other = NIMMetadata(namespace="ns", name="nim-b-2")
    last.remember(other, Resource(phase=TaskExecution.SUCCEEDED, message="ready"))
    assert last.answer(meta, "x").phase == TaskExecution.RUNNING  # evicted: capacity 1
