"""Durable tasks as the real engine runs them (see hatchet_emulator/durable.py), with the
unmodified hatchet-sdk: a real worker process runs tests/functional/durable_workflows.py,
the test process triggers runs, pushes events and replays as a client does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hatchet_sdk import Hatchet
from hatchet_sdk.clients.rest.api.task_api import TaskApi

from hatchway_local.hatchet_emulator.durable import state_for
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.durable_workflows import EVENT_KEY
from tests.functional.test_hatchet_emulator import result_of, start

pytestmark = pytest.mark.usefixtures("worker")


async def run(hatchet: Hatchet, workflow: str, input_: dict[str, Any] | None = None) -> Any:
    run_id = await start(hatchet, workflow, input_)
    return run_id, (await result_of(hatchet, run_id))[workflow]


async def replay(hatchet: Hatchet, run_id: str, workflow: str) -> Any:
    await hatchet.runs.aio_replay(run_id)
    await asyncio.sleep(0.5)  # the replay is queued before the result is asked for
    return (await result_of(hatchet, run_id))[workflow]


async def running(emulator: HatchetEmulator, run_id: str) -> None:
    async def started() -> None:
        run = emulator.engine.runs.get(run_id)
        while run is None or run.status.value != "RUNNING":
            await asyncio.sleep(0.05)
            run = emulator.engine.runs.get(run_id)

    await asyncio.wait_for(started(), 10)


async def test_durable_sleep_waits_and_a_replay_takes_it_from_the_log(hatchet: Hatchet) -> None:
    run_id, first = await run(hatchet, "t-durable-sleep")
    assert first["elapsed"] >= 1.0
    assert first["slept"] == 1.0
    assert first["invocation"] == 1

    again = await replay(hatchet, run_id, "t-durable-sleep")
    assert again["invocation"] == 2  # a new invocation replays from the event log
    assert again["elapsed"] < 0.5  # the sleep was satisfied already


async def test_durable_event_wait_gets_the_matching_event(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-durable-event", {"want": 7})
    await running(emulator, run_id)
    await asyncio.sleep(0.5)
    await hatchet.event.aio_push(EVENT_KEY, {"n": 6})  # the expression does not hold
    await asyncio.sleep(0.3)
    assert not emulator.engine.runs[run_id].status.is_final
    await hatchet.event.aio_push(EVENT_KEY, {"n": 7})
    result = (await result_of(hatchet, run_id))["t-durable-event"]
    assert result["payload"] == {"n": 7}


async def test_durable_event_scope_and_lookback(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    await hatchet.event.aio_push(EVENT_KEY, {"n": 1}, scope="s-1")
    await asyncio.sleep(0.2)
    # pushed before the wait: found through the lookback, in its scope only
    _, found = await run(hatchet, "t-durable-event", {"want": 1, "scope": "s-1", "lookback_s": 30})
    assert found["payload"] == {"n": 1}
    assert found["elapsed"] < 1.0

    other = await start(hatchet, "t-durable-event", {"want": 1, "scope": "s-2", "lookback_s": 30})
    await running(emulator, other)
    await asyncio.sleep(1.0)
    assert not emulator.engine.runs[other].status.is_final  # another scope's event
    await hatchet.event.aio_push(EVENT_KEY, {"n": 1}, scope="s-1")
    await asyncio.sleep(0.5)
    assert not emulator.engine.runs[other].status.is_final
    await hatchet.event.aio_push(EVENT_KEY, {"n": 1}, scope="s-2")
    assert (await result_of(hatchet, other))["t-durable-event"]["payload"] == {"n": 1}


async def test_durable_or_group_completes_on_either_condition(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-durable-or")
    await running(emulator, run_id)
    await asyncio.sleep(0.5)
    await hatchet.event.aio_push(EVENT_KEY + ":or", {"hello": "there"})
    result = (await result_of(hatchet, run_id))["t-durable-or"]["result"]
    # only what met the group, by action and readable data key
    assert result == {"CREATE": {EVENT_KEY + ":or": [{"hello": "there"}]}}


async def test_durable_children_are_memoized_across_a_replay(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id, first = await run(hatchet, "t-durable-spawn", {"n": 3})
    assert first["first"]["n"] == 1
    assert first["keyed"]["n"] == 2
    assert first["again"] == first["keyed"]  # the same child key is the same child
    assert [child["n"] for child in first["many"]] == [4, 5, 6]
    assert "leaf 9 failed" in first["failed"]
    (task,) = emulator.engine.runs[run_id].tasks.values()
    children = [
        r for r in emulator.engine.runs.values() if r.parent_task_external_id == task.external_id
    ]
    assert len(children) == 6  # 1, the keyed one, 3 in bulk, the failing one

    again = await replay(hatchet, run_id, "t-durable-spawn")
    assert again["invocation"] == 2
    for name in ("first", "keyed", "again", "many", "failed"):
        assert again[name] == first[name]  # the same children, not spawned again
    children = [
        r for r in emulator.engine.runs.values() if r.parent_task_external_id == task.external_id
    ]
    assert len(children) == 6


async def test_a_replay_that_diverges_from_the_log_is_a_non_determinism_error(
    hatchet: Hatchet,
) -> None:
    run_id, first = await run(hatchet, "t-durable-nondeterminism")
    assert first == {"detected": False, "attempt": 1}
    again = await replay(hatchet, run_id, "t-durable-nondeterminism")
    assert again["detected"] is True, again
    assert again["node"] == 1
    assert "non-determinism error" in again["message"]
    assert "expected: sleep(1s)" in again["message"]
    assert "received: sleep(2s)" in again["message"]


async def test_memo_returns_the_stored_value_on_replay(hatchet: Hatchet) -> None:
    run_id, first = await run(hatchet, "t-durable-memo")
    again = await replay(hatchet, run_id, "t-durable-memo")
    assert again["invocation"] == 2
    assert again["now"] == first["now"]


async def test_replay_reset_from_a_node_runs_it_and_what_follows_again(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id, first = await run(hatchet, "t-durable-reset")
    assert all(d >= 1.0 for d in first["durations"])
    response = await hatchet.runs.aio_reset_durable_task(run_id, node_id=2, branch_id=1)
    assert (response.node_id, response.branch_id) == (2, 2)
    await asyncio.sleep(0.5)
    began = time.monotonic()
    reset = (await result_of(hatchet, run_id))["t-durable-reset"]
    assert reset["durations"][0] < 0.5  # node 1 comes from branch 1's log
    assert all(d >= 1.0 for d in reset["durations"][1:])  # nodes 2 and 3 anew
    assert time.monotonic() - began >= 1.5

    # a branch off branch 2: node 1 resolves to branch 1, node 2 to branch 2, 3 is new
    response = await hatchet.runs.aio_reset_durable_task(run_id, node_id=3, branch_id=2)
    assert response.branch_id == 3
    await asyncio.sleep(0.5)
    again = (await result_of(hatchet, run_id))["t-durable-reset"]
    assert again["durations"][0] < 0.5
    assert again["durations"][1] < 0.5
    assert again["durations"][2] >= 1.0


async def test_an_evicted_task_leaves_its_slot_and_is_restored_when_its_wait_ends(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-durable-evict")
    await running(emulator, run_id)
    (task,) = emulator.engine.runs[run_id].tasks.values()
    state = state_for(emulator.engine)

    async def evicted() -> None:
        while not state.is_evicted(task):  # noqa: ASYNC110 - the engine has no event for it
            await asyncio.sleep(0.05)

    await asyncio.wait_for(evicted(), 10)  # its eviction TTL is 1 s
    assert all(task.external_id not in w.running for w in emulator.engine.workers.values())
    details = await hatchet.runs.aio_get_details(run_id)
    assert [t.is_evicted for t in details.task_runs.values()] == [True]

    result = (await result_of(hatchet, run_id))["t-durable-evict"]
    assert result["invocation"] == 2  # restored when the sleep ended, replayed the log
    assert result["child"]["n"] == 1


async def test_rest_restore_queues_an_evicted_task_again(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-durable-evict")
    await running(emulator, run_id)
    (task,) = emulator.engine.runs[run_id].tasks.values()
    state = state_for(emulator.engine)

    async def evicted() -> None:
        while not state.is_evicted(task):  # noqa: ASYNC110 - the engine has no event for it
            await asyncio.sleep(0.05)

    await asyncio.wait_for(evicted(), 10)

    def restore() -> bool:  # the SDK's REST call is blocking: off the emulator's loop
        with hatchet.runs.client() as client:
            return bool(TaskApi(client).v1_task_restore(task=task.external_id).requeued)

    assert await asyncio.to_thread(restore)
    assert not state.is_evicted(task)
    result = (await result_of(hatchet, run_id))["t-durable-evict"]
    assert result["invocation"] >= 2
