"""The emulator's fault hooks do what they say, with a real worker and client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from hatchet_sdk import Hatchet

from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.conftest import stop_process_group
from tests.functional.conftest import (
    RawEvents,
    client_for,
    start_worker,
    wait_for_worker,
)
from tests.functional.test_hatchet_emulator import collect, describe, result_of, start

pytestmark = pytest.mark.usefixtures("worker")


async def read_until_stream(call: Any) -> list[Any]:
    seen = []
    async for event in call:
        seen.append(event)
        if describe(event)[1] == "STREAM":
            return seen
    return seen


async def test_break_subscriptions_ends_open_streams_unavailable_and_the_run_goes_on(
    emulator: HatchetEmulator, hatchet: Hatchet, raw_events: RawEvents
) -> None:
    run_id = await start(hatchet, "t-ticks", {"ticks": 60, "pause_seconds": 0.02})
    call = raw_events.subscribe(run_id)
    before = await read_until_stream(call)

    assert emulator.engine.break_subscriptions(run_id) == 1
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(call)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    after = await collect(raw_events.subscribe(run_id))  # resubscribing works
    first_index = before[-1].event_index
    later = [e.event_index for e in after if describe(e)[1] == "STREAM"]
    assert later
    assert min(later) > first_index
    assert describe(after[-1]) == ("WORKFLOW_RUN", "COMPLETED", True)


async def test_refused_subscriptions_fail_for_the_window_then_work(
    emulator: HatchetEmulator, hatchet: Hatchet, raw_events: RawEvents
) -> None:
    run_id = await start(hatchet, "t-ticks", {"ticks": 40, "pause_seconds": 0.05})
    emulator.engine.refuse_subscriptions(0.5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(raw_events.subscribe(run_id))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    await asyncio.sleep(0.6)
    events = await collect(raw_events.subscribe(run_id))
    assert describe(events[-1]) == ("WORKFLOW_RUN", "COMPLETED", True)


async def test_delayed_subscription_misses_what_streamed_meanwhile(
    emulator: HatchetEmulator, hatchet: Hatchet, raw_events: RawEvents
) -> None:
    emulator.engine.delay_subscriptions(1.0, for_seconds=1.0)
    try:
        run_id = await start(hatchet, "t-ticks", {"ticks": 80, "pause_seconds": 0.025})
        events = await collect(raw_events.subscribe(run_id))
    finally:
        emulator.engine.clear_faults()

    indexes = [e.event_index for e in events if describe(e)[1] == "STREAM"]
    assert 0 not in indexes  # live-only: what streamed while we waited is gone
    assert describe(events[-1]) == ("WORKFLOW_RUN", "COMPLETED", True)


@pytest_asyncio.fixture(loop_scope="session")
async def own_emulator(tmp_path: Path) -> AsyncIterator[tuple[HatchetEmulator, Hatchet]]:
    """An emulator of this test's own, with its own worker: restarting it must not
    disturb the session's."""
    async with HatchetEmulator(unknown_run_wait_s=1.0) as emulator:
        process = start_worker(emulator.settings(), tmp_path / "worker.log")
        try:
            await wait_for_worker(emulator)
            yield emulator, client_for(emulator)
        finally:
            await asyncio.to_thread(stop_process_group, process)


async def test_restart_keeps_runs_and_ports_and_the_worker_reconnects(
    own_emulator: tuple[HatchetEmulator, Hatchet],
) -> None:
    emulator, hatchet = own_emulator
    ports = (emulator.grpc_port, emulator.rest_port)
    run_id = await start(hatchet, "t-ticks", {"ticks": 60, "pause_seconds": 0.05})
    raw = RawEvents(emulator)
    try:
        call = raw.subscribe(run_id)
        await read_until_stream(call)

        await emulator.restart(down_for_s=1.0)

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(call)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (emulator.grpc_port, emulator.rest_port) == ports
        assert emulator.engine.get_run(run_id).status.value in {"RUNNING", "COMPLETED"}
        assert await result_of(hatchet, run_id) == {"t-ticks": {"ticks": 60}}
        # A task started after the restart runs too: the worker listens again.
        assert await result_of(hatchet, await start(hatchet, "t-leaf", {"value": 4})) == {
            "t-leaf": {"doubled": 8}
        }
    finally:
        await raw.close()
