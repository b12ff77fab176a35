"""Slot costs and slot types through the unmodified hatchet-sdk, run by a worker with
four default units and the SDK's durable units (tests/functional/slot_worker.py).
Semantics: worker_slots.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hatchet_sdk import Hatchet

from hatchway_local.hatchet_emulator.engine import Status, WorkflowRun
from hatchway_local.hatchet_emulator.engine import Worker as EngineWorker
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.slot_worker import slot_worker
from tests.functional.slot_workflows import SDK_DURABLE_UNITS, SLOT_WORKER_DEFAULT_UNITS
from tests.functional.test_hatchet_emulator import result_of, start

pytestmark = pytest.mark.usefixtures("worker")

_ENDS = frozenset({"FINISHED", "FAILED", "CANCELLED", "TIMED_OUT"})


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def slots(
    emulator: HatchetEmulator, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EngineWorker]:
    log = tmp_path_factory.mktemp("slot-worker") / "worker.log"
    async with slot_worker(emulator, Path(log)) as worker:
        yield worker


async def running(emulator: HatchetEmulator, run_id: str) -> WorkflowRun:
    """The run once its task has started on the worker."""
    run = emulator.engine.get_run(run_id)
    while not any(t.status is Status.RUNNING for t in run.tasks.values()):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return run


def most_assigned_at_once(runs: list[WorkflowRun]) -> int:
    """The most of these runs' tasks that held a worker's units at one time, by the
    engine's own event log (assignment to end), not by the worker's clock."""
    events = sorted((event.event_id, event.event_type) for run in runs for event in run.task_events)
    held = most = 0
    for _, event_type in events:
        held += event_type == "ASSIGNED"
        held -= event_type in _ENDS
        most = max(most, held)
    return most


async def test_the_worker_has_its_default_units_and_the_sdks_durable_units(
    hatchet: Hatchet, slots: EngineWorker
) -> None:
    listed = await hatchet.workers.aio_get(slots.worker_id)
    config = listed.slot_config or {}
    assert {kind: c.limit for kind, c in config.items()} == {
        "default": SLOT_WORKER_DEFAULT_UNITS,
        "durable": SDK_DURABLE_UNITS,
    }


async def test_tasks_costing_two_units_run_two_at_a_time_on_four_and_none_fail(
    hatchet: Hatchet, emulator: HatchetEmulator, slots: EngineWorker
) -> None:
    run_ids = [await start(hatchet, "t-slot-heavy", {"seconds": 0.3}) for _ in range(6)]
    results = await asyncio.gather(*(result_of(hatchet, run_id) for run_id in run_ids))

    assert all(r["t-slot-heavy"]["worker"] == slots.worker_id for r in results)
    runs = [emulator.engine.get_run(run_id) for run_id in run_ids]
    assert all(run.status is Status.COMPLETED for run in runs)
    # the durable units do not count: only 4 default units, 2 per task
    assert most_assigned_at_once(runs) <= 2
    assert slots.available("default") == SLOT_WORKER_DEFAULT_UNITS  # all given back


async def test_a_task_waits_while_another_holds_every_default_unit_and_durable_ones_run(
    hatchet: Hatchet, emulator: HatchetEmulator, slots: EngineWorker
) -> None:
    blocker = await start(hatchet, "t-slot-block", {"seconds": 60})
    await running(emulator, blocker)
    light = await start(hatchet, "t-slot-light")

    # a durable task holds a durable unit: it runs while the default ones are all held
    durable = await result_of(hatchet, await start(hatchet, "t-slot-durable"))
    assert durable["t-slot-durable"]["worker"] == slots.worker_id
    listed = await hatchet.workers.aio_get(slots.worker_id)
    config = listed.slot_config or {}
    assert config["default"].available == 0
    assert emulator.engine.get_run(light).tasks["t-slot-light"].status is Status.QUEUED

    await hatchet.runs.aio_cancel(blocker)  # its four units come back: the light task runs
    assert (await result_of(hatchet, light))["t-slot-light"]["worker"] == slots.worker_id
    assert emulator.engine.get_run(blocker).status is Status.CANCELLED


async def test_a_task_costing_every_unit_of_the_worker_runs_there(
    hatchet: Hatchet, slots: EngineWorker
) -> None:
    result = await result_of(hatchet, await start(hatchet, "t-slot-whole"))
    assert result["t-slot-whole"]["worker"] == slots.worker_id


async def test_a_task_costing_more_than_any_worker_has_is_never_assigned_and_times_out(
    hatchet: Hatchet, emulator: HatchetEmulator, slots: EngineWorker
) -> None:
    run_id = await start(hatchet, "t-slot-too-big")
    run = emulator.engine.get_run(run_id)
    await asyncio.wait_for(run.done.wait(), 60)

    task = run.tasks["t-slot-too-big"]
    assert task.status is Status.CANCELLED
    assert task.cancel_reason == "SCHEDULING_TIMED_OUT"
    assert "ASSIGNED" not in [event.event_type for event in run.task_events]
    assert slots.available("default") == SLOT_WORKER_DEFAULT_UNITS
