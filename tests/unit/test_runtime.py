"""runtime.supervised: a background loop that fails or returns is logged, counted and restarted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nim_agent import metrics
from nim_agent.runtime import loops_failing, supervised


async def test_a_failing_loop_is_logged_counted_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    second = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise ConnectionResetError("dropped mid-body")
        second.set()
        await asyncio.Event().wait()  # runs until cancelled

    before = metrics.LOOP_RESTARTS.labels("test-loop")._value.get()
    with caplog.at_level(logging.ERROR, logger="nim_agent.runtime"):
        task = supervised(loop, "test-loop")
        async with asyncio.timeout(10):  # the first restart comes after 0.5-1 s
            await second.wait()
    assert runs == [0, 1]
    assert metrics.LOOP_RESTARTS.labels("test-loop")._value.get() == before + 1
    assert "background loop test-loop failed: ConnectionResetError: dropped mid-body" in caplog.text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "test-loop" not in loops_failing()


async def test_a_loop_that_returns_is_restarted_too() -> None:
    runs: list[int] = []
    third = asyncio.Event()

    async def loop() -> None:
        runs.append(1)
        if len(runs) == 3:
            third.set()
            await asyncio.Event().wait()

    task = supervised(loop, "returning-loop")
    async with asyncio.timeout(15):
        await third.wait()
    task.cancel()
    assert len(runs) == 3
    assert metrics.LOOP_RESTARTS.labels("returning-loop")._value.get() >= 2
