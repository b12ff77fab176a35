"""Slot types in the engine's scheduler, without gRPC: what a worker offers per type,
what a task asks, and that a task runs only where all of it fits. Semantics:
hatchet_emulator/worker_slots.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hatchway_local.hatchet_emulator import worker_slots
from hatchway_local.hatchet_emulator.engine import (
    Engine,
    EngineError,
    Status,
    TaskRun,
    TaskSpec,
    Worker,
    WorkflowSpec,
)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine("tenant")
    engine.start()
    yield engine
    await engine.close()


def asking(requests: dict[str, int], *, name: str = "wf", durable: bool = False) -> WorkflowSpec:
    slots = worker_slots.requests(requests, durable=durable)
    task = TaskSpec(readable_id="only", action=f"{name}:only", durable=durable, slot_requests=slots)
    return WorkflowSpec(name=name, tasks={"only": task})


def assigned(worker: Worker) -> list[TaskRun]:
    tasks = []
    while not worker.assignments.empty():
        tasks.append(worker.assignments.get_nowait().task)
    return tasks


@pytest.mark.parametrize(
    ("asked", "durable", "stored"),
    [
        ({}, False, (("default", 1),)),
        ({}, True, (("durable", 1),)),
        ({"gpu": 2, "default": 1}, False, (("default", 1), ("gpu", 2))),
        ({"gpu": 0, "default": -1}, True, (("default", 1),)),  # nothing left: one default
        ({"gpu": 0, "durable": 1}, True, (("durable", 1),)),
    ],
)
def test_requests_as_the_engine_stores_them(
    asked: dict[str, int], durable: bool, stored: worker_slots.Units
) -> None:
    assert worker_slots.requests(asked, durable=durable) == stored


async def test_a_worker_has_its_slot_config_or_its_slots_or_100_default_units(
    engine: Engine,
) -> None:
    assert engine.register_worker("a", []).slot_config == {"default": 100}
    assert engine.register_worker("b", [], slots=3).slot_config == {"default": 3}
    configured = engine.register_worker("c", [], slot_config={"default": 2, "gpu": 1})
    assert configured.slot_config == {"default": 2, "gpu": 1}
    with pytest.raises(EngineError) as refused:
        engine.register_worker("d", [], slots=3, slot_config={"default": 2})
    assert refused.value.code == "INVALID_ARGUMENT"


async def test_two_units_of_a_type_run_two_tasks_asking_one_and_the_rest_wait(
    engine: Engine,
) -> None:
    engine.put_workflow(asking({"gpu": 1}))
    worker = engine.register_worker("w", ["wf:only"], slot_config={"default": 10, "gpu": 2})
    engine.listener_opened(worker)
    runs = [await engine.trigger("wf", {}) for _ in range(4)]

    first = assigned(worker)
    assert len(first) == 2  # ten default units do not stand in for a third gpu unit
    assert worker.available("gpu") == 0
    assert worker.available("default") == 10  # a task holds only what it asks
    engine.task_completed(first[0].external_id, "{}")
    (third,) = assigned(worker)  # one unit freed: one more runs
    engine.task_failed(first[1].external_id, "boom", should_not_retry=True)
    (fourth,) = assigned(worker)  # an attempt that fails frees its units too
    engine.task_completed(third.external_id, "{}")
    engine.task_completed(fourth.external_id, "{}")
    assert worker.available("gpu") == 2
    assert [run.status for run in runs].count(Status.COMPLETED) == 3


async def test_a_task_goes_only_to_a_worker_with_every_type_it_asks(engine: Engine) -> None:
    engine.put_workflow(asking({"gpu": 1, "default": 2}))
    cpu_only = engine.register_worker("cpu", ["wf:only"], slot_config={"default": 50})
    small = engine.register_worker("small", ["wf:only"], slot_config={"default": 1, "gpu": 4})
    engine.listener_opened(cpu_only)
    engine.listener_opened(small)
    run = await engine.trigger("wf", {})
    assert not assigned(cpu_only)  # no gpu units at all
    assert not assigned(small)  # gpu, but one default unit of the two asked
    assert run.tasks["only"].status is Status.QUEUED

    fits = engine.register_worker("fits", ["wf:only"], slot_config={"default": 2, "gpu": 1})
    engine.listener_opened(fits)
    assert assigned(fits) == [run.tasks["only"]]  # all of it on one worker


async def test_a_task_no_worker_can_fit_waits_until_its_schedule_timeout(engine: Engine) -> None:
    task = TaskSpec(
        readable_id="only",
        action="wf:only",
        schedule_timeout="100ms",
        slot_requests=worker_slots.requests({"gpu": 1}, durable=False),
    )
    engine.put_workflow(WorkflowSpec(name="wf", tasks={"only": task}))
    worker = engine.register_worker("w", ["wf:only"], slots=5)
    engine.listener_opened(worker)
    run = await engine.trigger("wf", {})
    await asyncio.wait_for(run.done.wait(), 5)
    assert not assigned(worker)
    assert run.tasks["only"].status is Status.CANCELLED
    assert run.tasks["only"].cancel_reason == "SCHEDULING_TIMED_OUT"


async def test_durable_tasks_hold_durable_units_not_default_ones(engine: Engine) -> None:
    engine.put_workflow(asking({}, name="plain"))
    engine.put_workflow(asking({}, name="durable", durable=True))
    worker = engine.register_worker(
        "w", ["plain:only", "durable:only"], slot_config={"default": 1, "durable": 1}
    )
    engine.listener_opened(worker)
    await engine.trigger("plain", {})
    await engine.trigger("durable", {})
    await engine.trigger("plain", {})
    first = assigned(worker)
    assert sorted(t.run.workflow.name for t in first) == ["durable", "plain"]  # one of each

    engine.release_slot(next(t for t in first if t.spec.durable).external_id)
    assert not assigned(worker)  # a durable unit freed does not run a default task
    engine.release_slot(next(t for t in first if not t.spec.durable).external_id)
    assert [t.run.workflow.name for t in assigned(worker)] == ["plain"]
