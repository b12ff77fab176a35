"""The engine's state machine, without gRPC: scheduling, events, retries, ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hatchway_local.hatchet_emulator.engine import (
    BROKEN,
    Engine,
    EngineError,
    RunEvent,
    Status,
    TaskSpec,
    WorkflowSpec,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("", None), ("2d", 172800)],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "1x", "s", "5m junk"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    with pytest.raises(EngineError):
        parse_duration(text)


def workflow(name: str = "wf", **tasks: tuple[str, ...]) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks={
            task: TaskSpec(readable_id=task, action=f"{name}:{task}", parents=parents, retries=1)
            for task, parents in (tasks or {"only": ()}).items()
        },
    )


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine("tenant")
    engine.start()
    yield engine
    await engine.close()


def drain(queue: asyncio.Queue[RunEvent | object]) -> list[tuple[str, str, bool]]:
    events = []
    while not queue.empty():
        event = queue.get_nowait()
        assert isinstance(event, RunEvent)
        events.append((event.resource_type, event.event_type, event.hangup))
    return events


async def test_unknown_parents_and_unknown_workflows_are_refused(engine: Engine) -> None:
    with pytest.raises(EngineError, match="unknown parents"):
        engine.put_workflow(workflow(a=("missing",)))
    with pytest.raises(EngineError) as raised:
        await engine.trigger("nope", {})
    assert raised.value.code == "NOT_FOUND"


async def test_tasks_wait_for_a_listening_worker_with_a_free_slot(engine: Engine) -> None:
    engine.put_workflow(workflow())
    worker = engine.register_worker("w", ["wf:only"], slots=1)
    first = await engine.trigger("wf", {})
    second = await engine.trigger("wf", {})
    assert worker.assignments.empty()  # not listening yet

    engine.listener_opened(worker)
    assert worker.assignments.get_nowait().task is first.tasks["only"]
    assert worker.assignments.empty()  # one slot: the second run waits

    engine.task_completed(first.tasks["only"].external_id, '{"ok": true}')
    assert worker.assignments.get_nowait().task is second.tasks["only"]
    assert first.status is Status.COMPLETED


async def test_dag_children_start_when_all_parents_completed(engine: Engine) -> None:
    engine.put_workflow(workflow(a=(), b=("a",), c=("a", "b")))
    worker = engine.register_worker("w", ["wf:a", "wf:b", "wf:c"], slots=5)
    engine.listener_opened(worker)
    run = await engine.trigger("wf", {})

    def next_task() -> str:
        return worker.assignments.get_nowait().task.spec.readable_id

    assert next_task() == "a"
    assert worker.assignments.empty()
    engine.task_completed(run.tasks["a"].external_id, '{"n": 1}')
    assert next_task() == "b"
    assert worker.assignments.empty()
    engine.task_completed(run.tasks["b"].external_id, '{"n": 2}')
    assert next_task() == "c"
    engine.task_completed(run.tasks["c"].external_id, "")  # the task returned None
    assert run.status is Status.COMPLETED
    assert run.output == {"a": {"n": 1}, "b": {"n": 2}}  # a task without output has none


async def test_events_go_to_live_subscribers_only_and_end_with_hangup(engine: Engine) -> None:
    engine.put_workflow(workflow())
    worker = engine.register_worker("w", ["wf:only"], slots=1)
    engine.listener_opened(worker)
    run = await engine.trigger("wf", {})
    task_id = run.tasks["only"].external_id
    engine.put_stream(task_id, b"before anyone listened", None)

    subscription = engine.subscribe_run(run)
    assert subscription is not None
    engine.task_started(task_id)
    engine.task_started(task_id)  # STARTED may come twice: reported once
    engine.put_stream(task_id, b"live", None)
    engine.task_completed(task_id, "{}")

    assert drain(subscription.queue) == [
        ("STEP_RUN", "STARTED", False),
        ("STEP_RUN", "STREAM", False),
        ("STEP_RUN", "COMPLETED", False),
        ("WORKFLOW_RUN", "COMPLETED", True),
    ]
    assert engine.subscribe_run(run) is None  # ended: nothing to send
    assert engine.subscription_count() == 0


async def test_failures_are_retried_then_fail_the_run(engine: Engine) -> None:
    engine.put_workflow(workflow())
    worker = engine.register_worker("w", ["wf:only"], slots=1)
    engine.listener_opened(worker)
    run = await engine.trigger("wf", {})
    task = run.tasks["only"]

    worker.assignments.get_nowait()
    engine.task_failed(task.external_id, "boom", retry_count=0)
    assert worker.assignments.get_nowait().task.retry_count == 1
    engine.task_completed(task.external_id, "{}", retry_count=0)  # stale attempt: ignored
    assert task.status is Status.ASSIGNED
    engine.task_failed(task.external_id, "boom again", retry_count=1)

    assert run.status is Status.FAILED
    assert run.error == "boom again"
    assert run.done.is_set()


async def test_cancel_sends_cancel_to_the_worker_and_ends_the_run(engine: Engine) -> None:
    engine.put_workflow(workflow())
    worker = engine.register_worker("w", ["wf:only"], slots=1)
    engine.listener_opened(worker)
    run = await engine.trigger("wf", {})
    worker.assignments.get_nowait()
    subscription = engine.subscribe_run(run)
    assert subscription is not None

    assert engine.cancel_run(run.run_id) == [run.tasks["only"].external_id]

    assert worker.assignments.get_nowait().kind == "CANCEL_STEP_RUN"
    assert drain(subscription.queue) == [
        ("STEP_RUN", "CANCELLED", False),
        ("WORKFLOW_RUN", "CANCELLED", True),
    ]
    assert not worker.running


async def test_timeout_cancels_the_attempt_and_ends_timed_out() -> None:
    engine = Engine("tenant")
    spec = TaskSpec(readable_id="only", action="wf:only", timeout="50ms")
    engine.put_workflow(WorkflowSpec(name="wf", tasks={"only": spec}))
    worker = engine.register_worker("w", ["wf:only"], slots=1)
    engine.listener_opened(worker)
    run = await engine.trigger("wf", {})
    worker.assignments.get_nowait()

    await asyncio.wait_for(run.done.wait(), 2)
    assert run.status is Status.TIMED_OUT
    assert worker.assignments.get_nowait().kind == "CANCEL_STEP_RUN"
    await engine.close()


async def test_a_lost_worker_gives_its_tasks_back() -> None:
    engine = Engine("tenant", worker_timeout_s=0.2)
    engine.start()
    engine.put_workflow(workflow())
    lost = engine.register_worker("lost", ["wf:only"], slots=1)
    engine.listener_opened(lost)
    run = await engine.trigger("wf", {})
    lost.assignments.get_nowait()
    engine.listener_closed(lost)  # stream gone, and no more heartbeats

    alive = engine.register_worker("alive", ["wf:only"], slots=1)
    engine.listener_opened(alive)
    assignment = await asyncio.wait_for(alive.assignments.get(), 3)
    assert assignment.task is run.tasks["only"]
    assert lost.worker_id not in engine.workers
    await engine.close()


async def test_break_subscriptions_hands_each_a_broken_marker(engine: Engine) -> None:
    engine.put_workflow(workflow())
    run = await engine.trigger("wf", {})
    subscription = engine.subscribe_run(run)
    assert subscription is not None

    assert engine.break_subscriptions(run.run_id) == 1
    assert subscription.queue.get_nowait() is BROKEN
    assert engine.subscription_count(run.run_id) == 0
