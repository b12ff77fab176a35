"""Batch tasks as the real engine runs them (see hatchet_emulator/batches.py), with the
unmodified hatchet-sdk: a real worker process runs tests/functional/batch_workflows.py,
the test process triggers runs as a client without their code does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hatchet_sdk import Hatchet
from hatchet_sdk.clients.rest.models.v1_task_status import V1TaskStatus
from hatchet_sdk.exceptions import FailedTaskRunExceptionGroup

from hatchway_local.hatchet_emulator import batches
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.test_hatchet_emulator import result_of, start

pytestmark = pytest.mark.usefixtures("worker")


async def run_all(hatchet: Hatchet, workflow: str, inputs: list[dict[str, Any]]) -> list[Any]:
    """Start the runs at once, and return what each returned (or raised)."""
    run_ids = await asyncio.gather(*(start(hatchet, workflow, item) for item in inputs))
    return await asyncio.gather(
        *(result_of(hatchet, run_id) for run_id in run_ids), return_exceptions=True
    )


def outputs(results: list[Any], task: str) -> list[dict[str, Any]]:
    return [result[task] for result in results]


async def test_a_full_batch_goes_to_the_worker_at_once(hatchet: Hatchet) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    results = outputs(
        await run_all(hatchet, "t-batch-size", [{"tag": t} for t in "abc"]), "t-batch-size"
    )

    assert loop.time() - began < 10  # its interval is 30 s: the size flushed it
    assert len({r["batch"] for r in results}) == 1
    assert [(r["size"], r["tags"], r["tag"]) for r in results] == [
        (3, ["a", "b", "c"], tag)
        for tag in "abc"  # each run gets its own item's output
    ]


async def test_an_unfilled_batch_flushes_when_its_interval_elapses(hatchet: Hatchet) -> None:
    results = outputs(
        await run_all(hatchet, "t-batch-interval", [{"tag": "x"}, {"tag": "y"}]),
        "t-batch-interval",
    )

    assert [(r["size"], r["tags"], r["tag"]) for r in results] == [
        (2, ["x", "y"], "x"),
        (2, ["x", "y"], "y"),
    ]


async def test_a_batch_holds_tasks_of_one_key_only(hatchet: Hatchet) -> None:
    inputs = [{"tag": f"{g}{i}", "group": g} for g in ("red", "blue") for i in range(2)]

    results = outputs(await run_all(hatchet, "t-batch-keyed", inputs), "t-batch-keyed")

    assert [r["tags"] for r in results] == [["red0", "red1"]] * 2 + [["blue0", "blue1"]] * 2
    assert len({r["batch"] for r in results}) == 2


async def test_a_key_that_is_not_a_string_fails_only_its_task(hatchet: Hatchet) -> None:
    good, bad = await run_all(
        hatchet, "t-batch-keyed", [{"tag": "fine", "group": "g"}, {"tag": "odd", "group": 7}]
    )

    assert isinstance(bad, FailedTaskRunExceptionGroup)
    assert str(bad.exceptions[0].exc) == (
        "failed to parse batch group key expression (input.group): "
        "expected string output for batch key, got int"
    )
    assert good["t-batch-keyed"]["tags"] == ["fine"]  # flushed alone at its interval


async def test_a_broadcast_output_goes_to_every_task(hatchet: Hatchet) -> None:
    results = outputs(
        await run_all(hatchet, "t-batch-broadcast", [{"tag": t} for t in "pqr"]),
        "t-batch-broadcast",
    )

    assert results[0] == results[1] == results[2]
    assert results[0]["tags"] == ["p", "q", "r"]


async def test_one_item_can_fail_while_the_others_of_its_batch_complete(
    hatchet: Hatchet,
) -> None:
    fine, broken = await run_all(
        hatchet, "t-batch-per-item", [{"tag": "fine"}, {"tag": "broken", "bad": True}]
    )

    assert fine["t-batch-per-item"]["tags"] == ["broken", "fine"]
    assert isinstance(broken, FailedTaskRunExceptionGroup)
    assert "must return either a dictionary" in str(broken.exceptions[0].exc)


async def test_a_failed_batch_is_retried_in_a_later_batch(hatchet: Hatchet) -> None:
    results = outputs(
        await run_all(hatchet, "t-batch-retry", [{"tag": "one"}, {"tag": "two"}]), "retried"
    )

    # the worker's second invocation: both tasks were retried, together again
    assert [(r["retry"], r["tags"]) for r in results] == [(1, ["one", "two"])] * 2


async def test_a_batch_that_cancels_itself_ends_its_runs_cancelled_without_an_error(
    hatchet: Hatchet,
) -> None:
    run_ids = await asyncio.gather(*(start(hatchet, "t-batch-cancel", {}) for _ in range(2)))

    # like a task cancelled by a request, each carries no error: the SDK returns no output
    assert [await result_of(hatchet, run_id) for run_id in run_ids] == [{}, {}]
    for run_id in run_ids:
        assert (await hatchet.runs.aio_get(run_id)).run.status == V1TaskStatus.CANCELLED


async def test_a_batch_takes_one_slot_and_a_key_runs_max_runs_batches_at_once(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    inputs = [{"tag": f"a{i}", "group": "a", "seconds": 1.0} for i in range(6)]
    inputs.append({"tag": "b0", "group": "b", "seconds": 1.0})
    run_ids = await asyncio.gather(*(start(hatchet, "t-batch-slow", item) for item in inputs))

    async def two_batches_run() -> list[str]:
        while len(emulator.engine.batches.active) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return [b.key for b in emulator.engine.batches.active.values()]

    keys = await asyncio.wait_for(two_batches_run(), 10)
    assert sorted(keys) == ["a", "b"]  # key a waits: batch_group_max_runs=1
    worker = next(w for w in emulator.engine.workers.values() if w.running)
    batch_slots = [s for s in worker.running if s.startswith("batch:")]
    assert len(batch_slots) == 2  # a batch of three holds one slot
    assert not {t.external_id for b in emulator.engine.batches.active.values() for t in b.tasks} & (
        worker.running.keys()
    )

    results = outputs([await result_of(hatchet, r) for r in run_ids], "t-batch-slow")
    a_batches = sorted({(r["started"], r["ended"]) for r in results[:6]})
    assert [r["size"] for r in results[:6]] == [3] * 6
    assert len(a_batches) == 2
    assert a_batches[0][1] <= a_batches[1][0]  # one after the other
    b_started = results[6]["started"]
    assert a_batches[0][0] - 0.5 < b_started < a_batches[0][1]  # b did not wait for a


async def test_a_buffer_over_four_megabytes_flushes_what_fits(hatchet: Hatchet) -> None:
    big = "x" * 1_500_000  # two fit under the limit, the third goes over it
    results = outputs(
        await run_all(hatchet, "t-batch-memory", [{"tag": t, "data": big} for t in "uvw"]),
        "t-batch-memory",
    )

    assert sorted(r["size"] for r in results) == [1, 2, 2]
    assert len({r["batch"] for r in results}) == 2


def test_the_engine_defaults_fill_in_what_the_sdk_leaves_out() -> None:
    class Message:
        batch_max_size = 0
        broadcast_output = False

        @staticmethod
        def HasField(_name: str) -> bool:  # noqa: N802 - the protobuf method
            return False

    config = batches.BatchConfig.from_proto(Message())
    assert config == batches.BatchConfig(
        max_size=1, max_interval_ms=1000, group_key="'default'", max_runs=100
    )
