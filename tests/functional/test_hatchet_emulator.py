"""The Hatchet engine emulator against the unmodified hatchet-sdk: a real worker
process runs the tasks, the test process is the client."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from hatchet_sdk import Hatchet
from hatchet_sdk.clients.rest.models.v1_task_status import V1TaskStatus
from hatchet_sdk.contracts import dispatcher_pb2
from hatchet_sdk.exceptions import FailedTaskRunExceptionGroup
from pydantic import BaseModel, ConfigDict

from hatchway_local.demo.workflows import ANNA_KARENINA, chunks
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.conftest import RawEvents

pytestmark = pytest.mark.usefixtures("worker")

FAST_STREAM = {"start_delay_seconds": 0.5, "pause_seconds": 0.005}


def describe(event: Any) -> tuple[str, str, bool]:
    return (
        dispatcher_pb2.ResourceType.Name(event.resource_type).removeprefix("RESOURCE_TYPE_"),
        dispatcher_pb2.ResourceEventType.Name(event.event_type).removeprefix(
            "RESOURCE_EVENT_TYPE_"
        ),
        event.hangup,
    )


async def collect(call: Any) -> list[Any]:
    return [event async for event in call]


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


async def start(hatchet: Hatchet, workflow: str, input_: dict[str, Any] | None = None) -> str:
    """Trigger a workflow by name, as a client without its code does (a stub)."""
    stub = hatchet.stubs.task(name=workflow, input_validator=AnyInput, output_validator=dict)
    ref = await stub.aio_run(AnyInput(**(input_ or {})), wait_for_result=False)
    return ref.workflow_run_id


async def start_watched(
    hatchet: Hatchet,
    emulator: HatchetEmulator,
    workflow: str,
    subscribe: Callable[[str], AsyncIterator[Any]],
    input_: dict[str, Any] | None = None,
) -> tuple[str, asyncio.Task[list[Any]]]:
    """Start a run with every worker paused until ``subscribe(run_id)`` is attached:
    events are live-only, and on a loaded machine the first ones (STARTED, a first
    failure, a first chunk) could otherwise pass before the subscriber."""
    with paused_workers(emulator):
        run_id = await start(hatchet, workflow, input_)
        subscriber = asyncio.create_task(collect(subscribe(run_id)))
        while emulator.engine.subscription_count(run_id) == 0:  # noqa: ASYNC110 - the engine has no event for it
            await asyncio.sleep(0.01)
    return run_id, subscriber


@contextlib.contextmanager
def paused_workers(emulator: HatchetEmulator) -> Iterator[None]:
    """Every worker takes nothing new inside the block (queued tasks wait), then resumes."""
    workers = list(emulator.engine.workers)
    for worker_id in workers:
        emulator.engine.set_paused(worker_id, paused=True)
    try:
        yield
    finally:
        for worker_id in workers:
            emulator.engine.set_paused(worker_id, paused=False)


def named(display_name: str) -> str:
    """A task's or run's name: the engine displays it as "<name>-<unix ms>"."""
    name, _, stamp = display_name.rpartition("-")
    assert stamp.isdigit(), display_name
    return name


async def result_of(hatchet: Hatchet, run_id: str) -> Any:
    """The run's result keyed by task name, as the SDK returns it for any run id."""
    return await hatchet.runs.get_run_ref(run_id).aio_result()


async def cancelled_by_the_limit(hatchet: Hatchet, run_id: str) -> bool:
    """A run a concurrency limit cancelled: its result has no output (the engine sends a
    cancelled task no error, so aio_result does not raise), REST says CANCELLED, and its
    task events say why."""
    result = await result_of(hatchet, run_id)
    details = await hatchet.runs.aio_get(run_id)
    reasons = [e.message for e in details.task_events if e.event_type.value == "CANCELLED"]
    return (
        result == {}
        and details.run.status == V1TaskStatus.CANCELLED
        and any("CANCELLED_BY_CONCURRENCY_LIMIT" in r for r in reasons)
    )


async def test_early_subscriber_receives_the_whole_text_in_order(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    _, subscriber = await start_watched(
        hatchet, emulator, "demo-stream", hatchet.runs.subscribe_to_stream, FAST_STREAM
    )
    received = await asyncio.wait_for(subscriber, 60)

    assert received == list(chunks(ANNA_KARENINA, 10))
    assert "".join(received) == ANNA_KARENINA


async def test_events_carry_indexes_and_end_with_a_run_hangup(
    hatchet: Hatchet, raw_events: RawEvents, emulator: HatchetEmulator
) -> None:
    run_id, subscriber = await start_watched(
        hatchet, emulator, "demo-stream", raw_events.subscribe, FAST_STREAM
    )
    events = await asyncio.wait_for(subscriber, 60)

    kinds = [describe(e) for e in events]
    # STARTED travels through another worker process than the chunks, so it may
    # trail the first chunks (as on the real engine); it comes once, before the end.
    assert kinds.count(("STEP_RUN", "STARTED", False)) == 1
    assert kinds[-2] == ("STEP_RUN", "COMPLETED", False)
    assert kinds[-1] == ("WORKFLOW_RUN", "COMPLETED", True)
    streams = [e for e in events if describe(e)[1] == "STREAM"]
    assert [e.event_index for e in streams] == list(range(len(list(chunks(ANNA_KARENINA, 10)))))
    assert {e.workflow_run_id for e in events} == {run_id}


async def test_completed_run_reports_result_status_and_details(hatchet: Hatchet) -> None:
    run_id = await start(hatchet, "demo-stream", {"start_delay_seconds": 0, "pause_seconds": 0})
    result = await result_of(hatchet, run_id)

    assert result == {"demo-stream": {"chunks": 37, "characters": len(ANNA_KARENINA)}}
    assert await hatchet.runs.aio_get_status(run_id) == V1TaskStatus.COMPLETED
    details = await hatchet.runs.aio_get(run_id)
    assert details.run.status == V1TaskStatus.COMPLETED
    assert named(details.run.display_name) == "demo-stream"
    grpc_details = await hatchet.runs.aio_get_details(run_id)
    assert grpc_details.done
    assert grpc_details.task_runs["demo-stream"].output == {"chunks": 37, "characters": 361}


async def test_failed_run_raises_its_error_and_ends_failed(
    hatchet: Hatchet, raw_events: RawEvents
) -> None:
    run_id = await start(hatchet, "demo-fail", {"start_delay_seconds": 0.5, "pause_seconds": 0})
    events = await collect(raw_events.subscribe(run_id))

    assert [describe(e) for e in events if describe(e)[1] == "STREAM"] == [
        ("STEP_RUN", "STREAM", False)
    ] * 3
    assert describe(events[-2]) == ("STEP_RUN", "FAILED", False)
    assert "demo-fail failed on purpose" in events[-2].event_payload
    assert describe(events[-1]) == ("WORKFLOW_RUN", "FAILED", True)
    assert "demo-fail failed on purpose" in events[-1].event_payload
    assert await hatchet.runs.aio_get_status(run_id) == V1TaskStatus.FAILED
    with pytest.raises(FailedTaskRunExceptionGroup, match="failed"):
        await result_of(hatchet, run_id)


async def test_cancelled_run_stops_its_task_and_ends_cancelled(
    emulator: HatchetEmulator, hatchet: Hatchet, raw_events: RawEvents
) -> None:
    run_id = await start(hatchet, "t-ticks", {"ticks": 600, "pause_seconds": 0.05})
    call = raw_events.subscribe(run_id)
    seen: list[Any] = []
    async for event in call:
        seen.append(event)
        if describe(event)[1] == "STREAM":
            break
    await hatchet.runs.aio_cancel(run_id)
    seen += await collect(call)

    assert describe(seen[-2]) == ("STEP_RUN", "CANCELLED", False)
    assert describe(seen[-1]) == ("WORKFLOW_RUN", "CANCELLED", True)
    assert await hatchet.runs.aio_get_status(run_id) == V1TaskStatus.CANCELLED
    # The worker got CANCEL_STEP_RUN: its slot is free again and the ticks stop.
    task = emulator.engine.get_run(run_id).tasks["t-ticks"]
    await asyncio.sleep(0.5)
    assert all(task.external_id not in w.running for w in emulator.engine.workers.values())


async def test_execution_timeout_ends_the_run_timed_out(
    hatchet: Hatchet, raw_events: RawEvents
) -> None:
    run_id = await start(hatchet, "t-timeout")
    events = await collect(raw_events.subscribe(run_id))

    assert describe(events[-2]) == ("STEP_RUN", "TIMED_OUT", False)
    assert describe(events[-1]) == ("WORKFLOW_RUN", "TIMED_OUT", True)
    assert events[-1].event_payload == "Task exceeded timeout of 1s"
    # The v1 REST API has no TIMED_OUT status: a timed-out run reads as FAILED there.
    assert await hatchet.runs.aio_get_status(run_id) == V1TaskStatus.FAILED


async def test_late_subscriber_gets_no_chunks(hatchet: Hatchet, raw_events: RawEvents) -> None:
    run_id = await start(hatchet, "demo-stream", {"start_delay_seconds": 0, "pause_seconds": 0})
    await result_of(hatchet, run_id)

    assert [chunk async for chunk in hatchet.runs.subscribe_to_stream(run_id)] == []
    assert await collect(raw_events.subscribe(run_id)) == []


async def test_unknown_run_is_not_found_after_a_short_wait(raw_events: RawEvents) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(raw_events.subscribe(str(uuid.uuid4())))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_subscriber_that_comes_just_before_the_run_exists_is_served(
    hatchet: Hatchet, raw_events: RawEvents, emulator: HatchetEmulator
) -> None:
    run_id = str(uuid.uuid4())
    call = raw_events.subscribe(run_id)  # the engine waits a moment for unknown runs
    await asyncio.sleep(0.1)
    workflow = emulator.engine.workflows["demo-stream"]
    run = await emulator.engine.trigger(
        workflow.name, {"start_delay_seconds": 0.2, "pause_seconds": 0}
    )
    assert run.run_id != run_id
    with pytest.raises(grpc.aio.AioRpcError):  # a different id: still NOT_FOUND
        await collect(call)


async def test_dag_tasks_run_in_dependency_order_with_parent_outputs(hatchet: Hatchet) -> None:
    result = await result_of(hatchet, await start(hatchet, "t-dag"))

    assert result == {
        "first": {"value": 1},
        "left": {"value": 11},
        "right": {"value": 101},
        "last": {"value": 112},
    }


async def test_child_runs_are_spawned_and_awaited(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-parent")
    result = await result_of(hatchet, run_id)

    assert result == {"t-parent": {"children": [2, 4, 6]}}
    children = [r for r in emulator.engine.runs.values() if r.parent_run_id == run_id]
    assert sorted(r.input["value"] for r in children) == [1, 2, 3]
    assert {r.child_index for r in children} == {0, 1, 2}


async def test_failed_attempts_are_retried_until_one_succeeds(
    hatchet: Hatchet, raw_events: RawEvents, emulator: HatchetEmulator
) -> None:
    run_id, subscriber = await start_watched(hatchet, emulator, "t-retry", raw_events.subscribe)
    events = await asyncio.wait_for(subscriber, 60)

    failures = [e for e in events if describe(e) == ("STEP_RUN", "FAILED", False)]
    assert [e.retry_count for e in failures] == [0, 1]
    assert describe(events[-1]) == ("WORKFLOW_RUN", "COMPLETED", True)
    assert await result_of(hatchet, run_id) == {"t-retry": {"retry_count": 2}}


async def test_non_retryable_failure_is_not_retried(
    hatchet: Hatchet, raw_events: RawEvents, emulator: HatchetEmulator
) -> None:
    _, subscriber = await start_watched(hatchet, emulator, "t-non-retryable", raw_events.subscribe)
    events = await asyncio.wait_for(subscriber, 60)

    assert [describe(e) for e in events if describe(e)[1] == "FAILED"] == [
        ("STEP_RUN", "FAILED", False),
        ("WORKFLOW_RUN", "FAILED", True),
    ]


async def test_sync_tasks_stream_too(hatchet: Hatchet, emulator: HatchetEmulator) -> None:
    _, subscriber = await start_watched(
        hatchet, emulator, "t-sync-stream", hatchet.runs.subscribe_to_stream
    )
    received = await asyncio.wait_for(subscriber, 60)
    assert received == [f"sync {n}" for n in range(20)]


async def test_bulk_trigger_starts_every_run(hatchet: Hatchet) -> None:
    leaf = hatchet.stubs.task(name="t-leaf", input_validator=AnyInput, output_validator=dict)
    refs = await leaf.aio_run_many_no_wait(
        [leaf.create_bulk_run_item(AnyInput(value=v)) for v in range(5)]
    )
    results = await asyncio.gather(*(result_of(hatchet, ref.workflow_run_id) for ref in refs))
    assert sorted(r["t-leaf"]["doubled"] for r in results) == [0, 2, 4, 6, 8]


async def test_wrong_token_is_refused(emulator: HatchetEmulator) -> None:
    raw = RawEvents(emulator, token="not-the-token")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(raw.subscribe(str(uuid.uuid4())))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await raw.close()
