"""Worker labels and desired worker labels (affinity), and sticky assignment, with two
real worker processes: the session's test worker (no labels) and a side worker with
labels (tests/functional/scheduling_worker.py). Semantics: affinity.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hatchet_sdk import Hatchet, WorkerLabel
from hatchet_sdk.labels import DesiredWorkerLabel

from hatchway_local.hatchet_emulator.engine import Status, Worker
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.scheduling_worker import side_worker
from tests.functional.scheduling_workflows import SIDE_LABELS
from tests.functional.test_hatchet_emulator import result_of, start

pytestmark = pytest.mark.usefixtures("worker")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def side(
    emulator: HatchetEmulator, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    log = tmp_path_factory.mktemp("side-worker") / "worker.log"
    async with side_worker(emulator, Path(log)) as worker:
        yield worker


def main_worker(emulator: HatchetEmulator) -> Worker:
    return next(
        w
        for w in emulator.engine.workers.values()
        if w.name == "hatchway-test-worker" and w.listeners
    )


async def workers_of(hatchet: Hatchet, run_id: str) -> dict[str, str]:
    result = await result_of(hatchet, run_id)
    return {task: output["worker"] for task, output in result.items()}


async def test_registered_labels_are_listed_with_the_worker(hatchet: Hatchet, side: Worker) -> None:
    details = await hatchet.workers.aio_get(side.worker_id)
    labels = {label.key: label.value for label in details.labels or []}
    assert labels == {key: str(value) for key, value in SIDE_LABELS.items()}


async def test_a_required_label_keeps_tasks_off_workers_without_it(
    hatchet: Hatchet, side: Worker
) -> None:
    # The test worker has no "memory" label: every run goes to the side worker (512 < 1024).
    run_ids = [await start(hatchet, "t-affinity") for _ in range(6)]
    for run_id in run_ids:
        assert await workers_of(hatchet, run_id) == {"t-affinity": side.worker_id}


async def test_weights_prefer_a_worker_and_a_lower_rank_takes_over_when_it_is_busy(
    hatchet: Hatchet, emulator: HatchetEmulator, side: Worker
) -> None:
    main = main_worker(emulator)
    # Through the dispatcher, as ctx.upsert_worker_labels does: the test worker now meets
    # the required label too, but not the weighted one.
    await hatchet._client.dispatcher.async_upsert_worker_labels(
        main.worker_id, {"memory": 256, "model": "other"}
    )
    run_ids = [await start(hatchet, "t-affinity") for _ in range(4)]
    assert [await workers_of(hatchet, r) for r in run_ids] == [{"t-affinity": side.worker_id}] * 4
    emulator.engine.set_paused(side.worker_id, paused=True)  # the preferred one is unavailable
    try:
        run_id = await start(hatchet, "t-affinity")
        assert await workers_of(hatchet, run_id) == {"t-affinity": main.worker_id}
    finally:
        emulator.engine.set_paused(side.worker_id, paused=False)


async def test_labels_given_at_trigger_route_every_task_of_the_run(
    hatchet: Hatchet, emulator: HatchetEmulator, side: Worker
) -> None:
    main = main_worker(emulator)
    await asyncio.to_thread(  # the sync client, off the loop the emulator runs on
        hatchet._client.dispatcher.upsert_worker_labels,
        main.worker_id,
        [WorkerLabel(key="pool", value="main")],
    )
    workflow = hatchet.workflow(name="t-affinity-runtime")
    targets = ["side", "main", "side", "main", "main", "side"]
    refs = await workflow.aio_run_many_no_wait(
        [
            workflow.create_bulk_run_item(
                desired_worker_labels=[DesiredWorkerLabel(key="pool", value=pool, required=True)]
            )
            for pool in targets
        ]
    )
    expected = {"side": side.worker_id, "main": main.worker_id}
    for ref, pool in zip(refs, targets, strict=True):
        assert set((await workers_of(hatchet, ref.workflow_run_id)).values()) == {expected[pool]}


async def test_a_required_label_no_worker_has_waits_in_the_queue(
    hatchet: Hatchet, emulator: HatchetEmulator, side: Worker
) -> None:
    workflow = hatchet.workflow(name="t-affinity-runtime")
    label = DesiredWorkerLabel(key="pool", value="nowhere", required=True)
    ref = (
        await workflow.aio_run_many_no_wait(
            [workflow.create_bulk_run_item(desired_worker_labels=[label])]
        )
    )[0]
    await asyncio.sleep(1.0)
    run = emulator.engine.get_run(ref.workflow_run_id)
    assert run.tasks["runtime_first"].status is Status.QUEUED
    # A worker that gains the label takes it.
    await hatchet._client.dispatcher.async_upsert_worker_labels(side.worker_id, {"pool": "nowhere"})
    assert set((await workers_of(hatchet, ref.workflow_run_id)).values()) == {side.worker_id}
    await hatchet._client.dispatcher.async_upsert_worker_labels(side.worker_id, {"pool": "side"})


async def sticky_run(
    hatchet: Hatchet, emulator: HatchetEmulator, side: Worker, strategy: str
) -> tuple[Any, Worker]:
    """A sticky run whose first task runs on the side worker; while it runs, the side
    worker is paused (it takes nothing new) and the test worker is free."""
    main = main_worker(emulator)
    emulator.engine.set_paused(main.worker_id, paused=True)
    try:
        run_id = await start(hatchet, f"t-sticky-{strategy}")
        run = emulator.engine.get_run(run_id)
        while run.tasks["sticky_first"].status is Status.QUEUED:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert run.tasks["sticky_first"].worker_id == side.worker_id
        emulator.engine.set_paused(side.worker_id, paused=True)
    finally:
        emulator.engine.set_paused(main.worker_id, paused=False)
    return run, main


async def test_hard_sticky_tasks_wait_for_the_worker_of_the_first(
    hatchet: Hatchet, emulator: HatchetEmulator, side: Worker
) -> None:
    run, _main = await sticky_run(hatchet, emulator, side, "hard")
    try:
        await asyncio.sleep(2.0)  # the first task is done; the others may only go to its worker
        assert run.tasks["sticky_first"].status is Status.COMPLETED
        assert run.tasks["sticky_second"].status is Status.QUEUED
        assert run.tasks["sticky_third"].status is Status.QUEUED
    finally:
        emulator.engine.set_paused(side.worker_id, paused=False)
    assert set((await workers_of(hatchet, run.run_id)).values()) == {side.worker_id}


async def test_soft_sticky_tasks_go_elsewhere_when_their_worker_is_unavailable(
    hatchet: Hatchet, emulator: HatchetEmulator, side: Worker
) -> None:
    run, main = await sticky_run(hatchet, emulator, side, "soft")
    try:
        workers = await workers_of(hatchet, run.run_id)
    finally:
        emulator.engine.set_paused(side.worker_id, paused=False)
    assert workers == {
        "sticky_first": side.worker_id,
        "sticky_second": main.worker_id,
        "sticky_third": main.worker_id,
    }
    # With its worker free, a soft sticky run stays on it.
    emulator.engine.set_paused(main.worker_id, paused=True)
    try:
        run_id = await start(hatchet, "t-sticky-soft")
        while emulator.engine.get_run(run_id).tasks["sticky_first"].status is Status.QUEUED:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    finally:
        emulator.engine.set_paused(main.worker_id, paused=False)
    assert set((await workers_of(hatchet, run_id)).values()) == {side.worker_id}
