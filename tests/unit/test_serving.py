"""`nim_agent.serving`: GET /v1/models of a real NIM stand-in process, over the direct route.

The stand-in (devcluster/standin/nim_standin.py) runs as a local process; the pod handed to the
probe is a plain dict whose endpoint annotation points at it, as the renderer writes it for a
Service. What the server was asked is read from the stand-in's own request log. The pod-proxy
route needs an API server: tests/integration/test_serving_proxy.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nim_agent import serving
from nim_agent.contract import ANNOTATION_ENDPOINT
from nim_agent.serving import ModelsProbe, route_for
from tests.standins import Process, start_nim, wait_for

ADAPTER_FILES = {"adapter_config.json": "{}", "adapter_model.safetensors": "weights"}


def make_adapter(root: Path, name: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for file, text in ADAPTER_FILES.items():
        (folder / file).write_text(text)


def pod_for(url: str, uid: str = "uid-1") -> dict[str, Any]:
    """A NIM pod as the probe reads it: uid, and the endpoint annotation (here the stand-in)."""
    return {"metadata": {"uid": uid, "annotations": {ANNOTATION_ENDPOINT: url}}}


def models_requests(nim: Process) -> int:
    return nim.log().count('"GET /v1/models')


def ready(nim: Process) -> None:
    wait_for(lambda: "is ready to serve" in nim.log(), 30, "the stand-in to be ready")


@pytest.fixture
def nim(tmp_path: Path) -> Iterator[Process]:
    loras = tmp_path / "loras"
    make_adapter(loras, "support-lora")
    make_adapter(loras, "math-lora")
    proc = start_nim(
        tmp_path,
        NIM_PEFT_SOURCE=str(loras),
        STANDIN_STARTUP_SECONDS="0.2",
        STANDIN_REJECT_ADAPTERS="math-lora",
    )
    try:
        ready(proc)
        yield proc
    finally:
        proc.stop()


async def test_the_direct_route_reads_the_servers_model_list(nim: Process) -> None:
    probe = ModelsProbe(route="direct", timeout=10)
    reply = await probe.models(None, pod_for(nim.url))  # type: ignore[arg-type]
    assert reply is not None and reply.models is not None, reply
    assert reply.models.base == ("meta/llama3-8b-instruct",)
    # The stand-in refuses math-lora as NIM refuses an adapter it cannot load: not listed.
    assert dict(reply.models.adapters) == {"support-lora": "meta/llama3-8b-instruct"}
    assert reply.problem == "" and reply.seconds > 0


async def test_polls_closer_than_the_minimum_interval_reuse_the_answer(nim: Process) -> None:
    probe = ModelsProbe(route="direct", timeout=10)
    pod = pod_for(nim.url)
    before = models_requests(nim)
    first = await probe.models(None, pod)  # type: ignore[arg-type]
    again = [await probe.models(None, pod) for _ in range(5)]  # type: ignore[arg-type]
    assert all(r is first for r in again)
    assert models_requests(nim) - before == 1
    probe._answers[pod["metadata"]["uid"]] = (time.monotonic() - serving.MIN_INTERVAL, first)
    assert await probe.models(None, pod) is not first  # type: ignore[arg-type]
    assert models_requests(nim) - before == 2


async def test_answers_are_kept_per_pod_uid(nim: Process) -> None:
    probe = ModelsProbe(route="direct", timeout=10)
    before = models_requests(nim)
    await probe.models(None, pod_for(nim.url, uid="a"))  # type: ignore[arg-type]
    await probe.models(None, pod_for(nim.url, uid="b"))  # type: ignore[arg-type]
    assert models_requests(nim) - before == 2


async def test_a_slow_server_does_not_hold_the_poll_and_is_asked_once(tmp_path: Path) -> None:
    slow = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0.2", STANDIN_MODELS_DELAY_SECONDS="2.5")
    try:
        ready(slow)
        probe = ModelsProbe(route="direct", timeout=20)
        pod = pod_for(slow.url)
        started = time.monotonic()
        first = await probe.models(None, pod)  # type: ignore[arg-type]
        waited = time.monotonic() - started
        assert first is None  # still running: the poll answers without it
        assert waited < serving.WAIT + 1.0  # margin for a loaded machine; WAIT is the bound
        second = await probe.models(None, pod)  # type: ignore[arg-type]  # joins the same request
        deadline = time.monotonic() + 20
        while second is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            second = await probe.models(None, pod)  # type: ignore[arg-type]
        assert second is not None and second.models is not None
        assert second.seconds >= 2.5
        assert models_requests(slow) == 1
    finally:
        slow.stop()


async def test_a_request_that_outlives_the_timeout_is_a_problem_saying_so(tmp_path: Path) -> None:
    slow = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0.2", STANDIN_MODELS_DELAY_SECONDS="5")
    try:
        ready(slow)
        probe = ModelsProbe(route="direct", timeout=0.5)
        reply = await probe.models(None, pod_for(slow.url))  # type: ignore[arg-type]
        assert reply is not None and reply.models is None
        assert reply.problem == "no answer within 0.5s"
    finally:
        slow.stop()


async def test_a_server_still_loading_answers_503_with_its_words(tmp_path: Path) -> None:
    loading = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="600")
    try:
        probe = ModelsProbe(route="direct", timeout=10)
        reply = await probe.models(None, pod_for(loading.url))  # type: ignore[arg-type]
        assert reply is not None and reply.models is None
        assert reply.problem.startswith("HTTP 503: ")
    finally:
        loading.stop()


async def test_nothing_listening_is_a_connection_problem(tmp_path: Path) -> None:
    gone = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0.2")
    url = gone.url
    gone.stop()
    reply = await ModelsProbe(route="direct", timeout=5).models(None, pod_for(url))  # type: ignore[arg-type]
    assert reply is not None and reply.models is None
    assert "ClientConnectorError" in reply.problem


async def test_a_pod_without_an_endpoint_is_a_problem_not_an_error() -> None:
    reply = await ModelsProbe(route="direct", timeout=5).models(None, {"metadata": {"uid": "x"}})  # type: ignore[arg-type]
    assert reply is not None and reply.problem == "the pod has no endpoint annotation"


@pytest.mark.parametrize(
    ("setting", "in_cluster", "route"),
    [
        ("auto", True, "direct"),
        ("auto", False, "proxy"),
        ("direct", False, "direct"),
        ("proxy", True, "proxy"),
        ("off", True, "off"),
    ],
)
def test_auto_is_direct_in_a_pod_and_the_proxy_outside(
    setting: str, in_cluster: bool, route: str
) -> None:
    assert route_for(setting, in_cluster=in_cluster) == route


def test_a_probe_takes_only_a_real_route() -> None:
    with pytest.raises(ValueError, match="auto"):
        ModelsProbe(route="auto", timeout=1)
