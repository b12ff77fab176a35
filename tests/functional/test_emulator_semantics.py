"""The emulator's run semantics as the real engine has them, checked with the
unmodified hatchet-sdk (a real worker process, the test process as the client):
a failure ends only its branch, a cancelled task only itself, on-failure tasks,
parents that return None, REST run details the SDK can read, and registrations
it cannot carry out refused by name."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import grpc
import pytest
from hatchet_sdk import (
    Context,
    EmptyModel,
    Hatchet,
    UserEventCondition,
)
from hatchet_sdk.clients.rest.models.v1_task_event_type import V1TaskEventType
from hatchet_sdk.clients.rest.models.v1_task_status import V1TaskStatus
from hatchet_sdk.clients.rest.models.v1_workflow_run_details import V1WorkflowRunDetails
from hatchet_sdk.exceptions import FailedTaskRunExceptionGroup

from hatchway_local.hatchet_emulator.engine import Status
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.conftest import RawEvents
from tests.functional.test_hatchet_emulator import (
    cancelled_by_the_limit,
    collect,
    describe,
    named,
    paused_workers,
    result_of,
    start,
)

pytestmark = pytest.mark.usefixtures("worker")


def statuses(details: V1WorkflowRunDetails) -> dict[str, V1TaskStatus]:
    return {named(task.display_name): task.status for task in details.tasks}


async def test_a_permanent_failure_ends_only_its_branch(
    hatchet: Hatchet, raw_events: RawEvents
) -> None:
    run_id = await start(hatchet, "t-branches")
    events = asyncio.create_task(collect(raw_events.subscribe(run_id)))

    with pytest.raises(FailedTaskRunExceptionGroup) as failure:
        await result_of(hatchet, run_id)

    # Only the failure is an error: its cancelled dependent carries none of its own.
    assert [e.exc for e in failure.value.exceptions] == ["doomed fails for good"]
    details = await hatchet.runs.aio_get(run_id)
    assert details.run.status == V1TaskStatus.FAILED
    assert statuses(details) == {
        "doomed": V1TaskStatus.FAILED,
        "after_doomed": V1TaskStatus.CANCELLED,
        "flaky_branch": V1TaskStatus.COMPLETED,  # retried after the failure, and finished
        "slow_branch": V1TaskStatus.COMPLETED,
        "after_slow": V1TaskStatus.COMPLETED,
    }
    outputs = {named(task.display_name): task.output for task in details.tasks}
    assert outputs["after_slow"] == {"parent_ok": True}
    assert outputs["flaky_branch"] == {"attempt": 1}
    assert outputs["doomed"] == {}
    assert outputs["after_doomed"] == {}
    # The run's end comes once, after every branch, and says FAILED with the failure.
    seen = [describe(e) for e in await asyncio.wait_for(events, 30)]
    assert seen[-1] == ("WORKFLOW_RUN", "FAILED", True)
    assert seen.count(("STEP_RUN", "COMPLETED", False)) == 3


async def test_rest_run_details_log_each_attempt_and_give_the_shape(hatchet: Hatchet) -> None:
    run_id = await start(hatchet, "t-branches")
    with pytest.raises(FailedTaskRunExceptionGroup):
        await result_of(hatchet, run_id)

    details = await hatchet.runs.aio_get(run_id)  # parses: every output is an object

    ids = {named(task.display_name): task.metadata.id for task in details.tasks}
    by_task = Counter(
        (event.task_id, event.event_type)
        for event in details.task_events
        if event.event_type in {V1TaskEventType.FAILED, V1TaskEventType.RETRYING}
    )
    assert by_task == {
        (ids["doomed"], V1TaskEventType.FAILED): 1,  # NonRetryable: no retry
        (ids["flaky_branch"], V1TaskEventType.FAILED): 1,
        (ids["flaky_branch"], V1TaskEventType.RETRYING): 1,
    }
    finished = [e for e in details.task_events if e.event_type == V1TaskEventType.FINISHED]
    assert sorted(named(e.task_display_name or "") for e in finished) == [
        "after_slow",
        "flaky_branch",
        "slow_branch",
    ]
    shape = {item.task_name: item for item in details.shape}
    step_ids = {name: item.step_id for name, item in shape.items()}
    assert shape["doomed"].children_step_ids == [step_ids["after_doomed"]]
    assert shape["slow_branch"].children_step_ids == [step_ids["after_slow"]]
    assert shape["after_slow"].children_step_ids == []
    assert shape["doomed"].task_external_id == ids["doomed"]


async def test_run_details_list_only_the_tasks_created_so_far(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    with paused_workers(emulator):  # nothing runs: the dependents cannot exist yet
        run_id = await start(hatchet, "t-branches")
        queued = await hatchet.runs.aio_get_details(run_id)
        rest = await hatchet.runs.aio_get(run_id)  # an unfinished run parses too

    roots = ["doomed", "flaky_branch", "slow_branch"]
    assert sorted(queued.task_runs) == roots
    assert not queued.done
    assert sorted(named(task.display_name) for task in rest.tasks) == roots
    assert all(task.output == {} for task in rest.tasks)
    with pytest.raises(FailedTaskRunExceptionGroup):
        await result_of(hatchet, run_id)
    assert len((await hatchet.runs.aio_get_details(run_id)).task_runs) == 5


async def test_a_task_that_cancels_itself_ends_alone(hatchet: Hatchet) -> None:
    run_id = await start(hatchet, "t-self-cancel")

    # a cancellation is no error (the engine sends none): the result is what completed
    assert await result_of(hatchet, run_id) == {"bystander": {"finished": True}}

    details = await hatchet.runs.aio_get(run_id)
    assert statuses(details) == {
        "quitter": V1TaskStatus.CANCELLED,
        "bystander": V1TaskStatus.COMPLETED,
    }
    assert details.run.status == V1TaskStatus.CANCELLED
    grpc_details = await hatchet.runs.aio_get_details(run_id)
    assert grpc_details.task_runs["bystander"].output == {"finished": True}
    assert grpc_details.task_runs["quitter"].error is None  # cancelled, not failed


async def test_cancelling_a_task_by_its_id_leaves_its_siblings_running(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    with paused_workers(emulator):
        run_id = await start(hatchet, "t-branches")
        details = await hatchet.runs.aio_get_details(run_id)
        await hatchet.runs.aio_cancel(details.task_runs["slow_branch"].external_id)

    with pytest.raises(FailedTaskRunExceptionGroup):
        await result_of(hatchet, run_id)
    final = statuses(await hatchet.runs.aio_get(run_id))
    assert final["slow_branch"] == V1TaskStatus.CANCELLED
    assert final["after_slow"] == V1TaskStatus.CANCELLED  # its dependent follows it
    assert final["flaky_branch"] == V1TaskStatus.COMPLETED


async def test_a_dag_child_of_a_parent_that_returned_none_gets_the_run_input(
    hatchet: Hatchet,
) -> None:
    run_id = await start(hatchet, "t-quiet-parent", {"name": "Levin"})

    result = await result_of(hatchet, run_id)

    assert result == {"after_quiet": {"name": "Levin"}}  # a None output is no output


async def test_the_on_failure_task_runs_after_a_failure_with_its_error(hatchet: Hatchet) -> None:
    run_id = await start(hatchet, "t-on-failure")

    with pytest.raises(FailedTaskRunExceptionGroup) as failure:
        await result_of(hatchet, run_id)

    assert [e.exc for e in failure.value.exceptions] == ["breaks broke"]
    details = await hatchet.runs.aio_get(run_id)
    assert details.run.status == V1TaskStatus.FAILED
    assert statuses(details) == {
        "breaks": V1TaskStatus.FAILED,
        "clean_up-on-failure": V1TaskStatus.COMPLETED,
    }
    on_failure = next(t for t in details.tasks if named(t.display_name) == "clean_up-on-failure")
    assert on_failure.output == {"saw": "breaks broke"}


async def test_the_on_failure_task_is_skipped_when_nothing_fails(hatchet: Hatchet) -> None:
    run_id = await start(hatchet, "t-on-failure-unneeded")

    result = await result_of(hatchet, run_id)

    assert result == {"works": {"worked": True}, "never_needed-on-failure": {"skipped": True}}
    details = await hatchet.runs.aio_get(run_id)
    assert details.run.status == V1TaskStatus.COMPLETED
    skipped = [e for e in details.task_events if e.event_type == V1TaskEventType.SKIPPED]
    assert [named(e.task_display_name or "") for e in skipped] == ["never_needed-on-failure"]


async def test_a_workflow_using_what_is_not_emulated_is_refused_by_name(
    hatchet: Hatchet,
) -> None:
    unsupported = hatchet.workflow(name="t-unsupported")

    @unsupported.task(
        wait_for=[
            UserEventCondition(
                event_key="t-unsupported:go", consider_events_since=datetime.now(UTC)
            )
        ]
    )
    async def step(_input: EmptyModel, _ctx: Context) -> None:
        return None

    with pytest.raises(grpc.RpcError) as refused:
        # what a worker sends when it registers the workflow
        await hatchet._client.admin.aio_put_workflow(unsupported.to_proto())

    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    details = refused.value.details() or ""
    assert "'t-unsupported'" in details
    assert "user-event conditions with consider_events_since (task 'step')" in details
    with pytest.raises(grpc.RpcError):  # and nothing of it was registered
        await start(hatchet, "t-unsupported")


# -- concurrency limits ------------------------------------------------------------------


async def wait_until_running(emulator: HatchetEmulator, run_id: str) -> None:
    """Until the run's first task has started on the worker (the engine has no event for it)."""
    engine = emulator.engine
    while not any(t.status is Status.RUNNING for t in engine.get_run(run_id).tasks.values()):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def spans(hatchet: Hatchet, run_id: str) -> tuple[datetime, datetime]:
    """When the run's first task started and its last task finished, per the REST API."""
    tasks = (await hatchet.runs.aio_get(run_id)).tasks
    starts = [t.started_at for t in tasks if t.started_at is not None]
    ends = [t.finished_at for t in tasks if t.finished_at is not None]
    return min(starts), max(ends)


async def test_round_robin_runs_one_run_per_key_at_a_time_and_keys_apart(
    hatchet: Hatchet,
) -> None:
    runs = [
        await start(hatchet, "t-conc-rr", {"group": group, "seconds": 0.3})
        for group in ("A", "A", "A", "B")
    ]

    results = await asyncio.gather(*(result_of(hatchet, run_id) for run_id in runs))

    assert [r["rr_after"]["group"] for r in results] == ["A", "A", "A", "B"]
    a1, a2, a3, b = [await spans(hatchet, run_id) for run_id in runs]
    # A's runs hold the one slot of key "A" from their first task to their last: in turn.
    assert a1[1] <= a2[0]
    assert a2[1] <= a3[0]
    assert b[0] < a1[1]  # key "B" has a slot of its own: it did not wait for A's runs


async def test_cancel_in_progress_cancels_the_older_run_of_a_key(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    older = await start(hatchet, "t-conc-cancel-in-progress", {"group": "A", "seconds": 30})
    await wait_until_running(emulator, older)
    other_key = await start(hatchet, "t-conc-cancel-in-progress", {"group": "B", "seconds": 0})
    newer = await start(hatchet, "t-conc-cancel-in-progress", {"group": "A", "seconds": 0})

    assert await result_of(hatchet, newer) == {"cip_step": {"group": "A"}}
    assert await result_of(hatchet, other_key) == {"cip_step": {"group": "B"}}
    assert await cancelled_by_the_limit(hatchet, older)


async def test_cancel_newest_at_task_level_cancels_the_newcomer(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    first = await start(hatchet, "t-conc-cancel-newest", {"group": "A", "seconds": 1})
    await wait_until_running(emulator, first)
    newcomer = await start(hatchet, "t-conc-cancel-newest", {"group": "A", "seconds": 0})

    assert await cancelled_by_the_limit(hatchet, newcomer)
    assert await result_of(hatchet, first) == {"newest_step": {"group": "A"}}
    # The slot is free again once the first run ended: the next newcomer runs.
    later = await start(hatchet, "t-conc-cancel-newest", {"group": "A", "seconds": 0})
    assert await result_of(hatchet, later) == {"newest_step": {"group": "A"}}


# -- conditions --------------------------------------------------------------------------


async def wait_until_waiting(emulator: HatchetEmulator, run_id: str, *tasks: str) -> None:
    """Until these tasks wait for their conditions (an event pushed before is not theirs)."""
    run = emulator.engine.get_run(run_id)
    while not all(run.tasks[name].waiting for name in tasks):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def test_conditions_wait_for_sleeps_and_events_and_skip_on_parent_output_or_events(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-conditions")
    await wait_until_waiting(emulator, run_id, "on_the_event", "skipped_by_event")

    await hatchet.event.aio_push("t-conditions:go", {"ok": False})  # its expression says no
    await hatchet.event.aio_push("t-conditions:skip", {})
    await asyncio.sleep(0.2)
    assert emulator.engine.get_run(run_id).tasks["on_the_event"].waiting
    await hatchet.event.aio_push("t-conditions:go", {"ok": True})
    result = await result_of(hatchet, run_id)

    assert result["skipped_when_big"] == {"skipped": True}
    assert result["skipped_by_event"] == {"skipped": True}
    assert result["total"] == {
        "sum": 1 + 10 + 1000,
        "skipped": ["skipped_by_event", "skipped_when_big"],
    }
    tasks = {named(t.display_name): t for t in (await hatchet.runs.aio_get(run_id)).tasks}
    picked, napped = tasks["pick"].finished_at, tasks["after_a_nap"].started_at
    assert picked is not None
    assert napped is not None
    assert (napped - picked).total_seconds() >= 1  # it slept its second after its parent


async def test_cancel_if_cancels_the_task_and_its_dependents_without_an_error(
    hatchet: Hatchet,
) -> None:
    run_id = await start(hatchet, "t-cancel-if")

    result = await result_of(hatchet, run_id)  # nothing failed: no exception

    assert result == {"measure": {"n": 2}}
    details = await hatchet.runs.aio_get_details(run_id)
    assert details.status.name == "CANCELLED"
    assert {name: t.status.name for name, t in details.task_runs.items()} == {
        "measure": "COMPLETED",
        "too_much": "CANCELLED",
        "after_too_much": "CANCELLED",
    }
