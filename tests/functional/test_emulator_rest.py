"""The emulator's REST catalog, read and driven with the unmodified hatchet-sdk (a real
worker process, the test process as the client): the run list and its filters, the
workflow and worker lists, pushed events and the filters that gate them, task replay
and workflow pause."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import aiohttp
import grpc
import pytest
from hatchet_sdk import (
    BulkCancelReplayOpts,
    Context,
    DefaultFilter,
    EmptyModel,
    Hatchet,
    RunFilter,
    TriggerWorkflowOptions,
)
from hatchet_sdk.clients.rest.exceptions import NotFoundException
from hatchet_sdk.clients.rest.models.v1_task_status import V1TaskStatus
from hatchet_sdk.clients.rest.models.v1_update_filter_request import V1UpdateFilterRequest
from hatchet_sdk.features.cel import CELFailure, CELSuccess

from hatchway_local.hatchet_emulator.schedules import schedules_of
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.rest_workflows import DECLARED_EVENT_KEY, DECLARED_SCOPE, REST_EVENT_KEY
from tests.functional.test_hatchet_emulator import AnyInput, named, result_of, start

pytestmark = pytest.mark.usefixtures("worker")


async def workflow_id(hatchet: Hatchet, name: str) -> str:
    listed = await hatchet.workflows.aio_list(workflow_name=name)
    return next(w.metadata.id for w in listed.rows or [] if w.name == name)


async def settled(emulator: HatchetEmulator, run_ids: list[str], timeout_s: float = 20) -> None:
    async def all_done() -> None:
        for run_id in run_ids:
            await emulator.engine.runs[run_id].done.wait()

    await asyncio.wait_for(all_done(), timeout_s)


async def trigger(
    hatchet: Hatchet, name: str, input_: dict[str, Any], metadata: dict[str, str]
) -> str:
    stub = hatchet.stubs.task(name=name, input_validator=AnyInput, output_validator=dict)
    ref = await stub.aio_run(
        AnyInput(**input_),
        wait_for_result=False,
        options=TriggerWorkflowOptions(additional_metadata=metadata),
    )
    return ref.workflow_run_id


async def runs_of_event(hatchet: Hatchet, event_id: str) -> list[Any]:
    return (await hatchet.runs.aio_list(triggering_event_external_id=event_id)).rows


async def test_run_list_filters_by_workflow_metadata_status_and_time(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    tag = str(uuid4())
    since = datetime.now(UTC)
    dag_run = await trigger(hatchet, "t-dag", {}, {"tag": tag})
    leaf_run = await trigger(hatchet, "t-leaf", {"value": 2}, {"tag": tag})
    await settled(emulator, [dag_run, leaf_run])
    dag_id = await workflow_id(hatchet, "t-dag")

    listed = await hatchet.runs.aio_list(since=since, additional_metadata={"tag": tag})
    assert {r.metadata.id for r in listed.rows} == {dag_run, leaf_run}
    dag_row = next(r for r in listed.rows if r.workflow_id == dag_id)
    assert dag_row.status == V1TaskStatus.COMPLETED
    assert dag_row.output == {
        "first": {"value": 1},
        "left": {"value": 11},
        "right": {"value": 101},
        "last": {"value": 112},
    }
    assert {named(c.display_name) for c in dag_row.children or []} == {
        "first",
        "left",
        "right",
        "last",
    }
    leaf_row = next(r for r in listed.rows if r.workflow_id != dag_id)
    assert leaf_row.output == {"doubled": 4}  # a run of one task is listed as that task

    only_dag = await hatchet.runs.aio_list(
        since=since, workflow_ids=[dag_id], additional_metadata={"tag": tag}
    )
    assert [r.metadata.id for r in only_dag.rows] == [dag_run]
    tasks = await hatchet.runs.aio_list(
        since=since, workflow_ids=[dag_id], additional_metadata={"tag": tag}, only_tasks=True
    )
    assert sorted(named(r.display_name) for r in tasks.rows) == ["first", "last", "left", "right"]
    assert not (
        await hatchet.runs.aio_list(
            since=since, additional_metadata={"tag": tag}, statuses=[V1TaskStatus.FAILED]
        )
    ).rows
    assert not (
        await hatchet.runs.aio_list(
            since=datetime.now(UTC) + timedelta(seconds=5), additional_metadata={"tag": tag}
        )
    ).rows
    page = await hatchet.runs.aio_list(since=since, additional_metadata={"tag": tag}, limit=1)
    assert len(page.rows) == 1
    assert page.pagination is not None
    assert page.pagination.num_pages == 2
    without_payloads = await hatchet.runs.aio_list(
        since=since, additional_metadata={"tag": tag}, include_payloads=False
    )
    assert all(r.output == {} for r in without_payloads.rows)


async def test_run_list_by_parent_task(hatchet: Hatchet) -> None:
    run_id = await start(hatchet, "t-parent")
    await result_of(hatchet, run_id)
    details = await hatchet.runs.aio_get(run_id)
    children = await hatchet.runs.aio_list(
        parent_task_external_id=details.tasks[0].task_external_id
    )
    assert len(children.rows) == 3
    assert {r.parent_task_external_id for r in children.rows} == {details.tasks[0].task_external_id}


async def test_workflows_list_get_and_workers_list(hatchet: Hatchet) -> None:
    listed = await hatchet.workflows.aio_list(workflow_name="t-dag")
    dag = next(w for w in listed.rows or [] if w.name == "t-dag")
    fetched = await hatchet.workflows.aio_get(dag.metadata.id)
    assert fetched.name == "t-dag"
    assert fetched.is_paused is False
    with pytest.raises(NotFoundException):
        await hatchet.workflows.aio_get(str(uuid4()))

    workers = (await hatchet.workers.aio_list()).rows or []
    ours = next(w for w in workers if w.name == "hatchway-test-worker")
    assert ours.status == "ACTIVE"
    assert "t-dag:first" in (ours.actions or [])
    assert (await hatchet.workers.aio_get(ours.metadata.id)).name == ours.name


async def test_pushed_events_are_listed_with_the_runs_they_started(hatchet: Hatchet) -> None:
    tag = str(uuid4())
    since = datetime.now(UTC)
    event = await hatchet.event.aio_push(REST_EVENT_KEY, {"n": 1}, additional_metadata={"t": tag})
    listed = await hatchet.event.aio_list(since=since, keys=[REST_EVENT_KEY])
    row = next(e for e in listed.rows or [] if e.metadata.id == event.event_id)
    assert row.payload == {"n": 1}
    assert row.additional_metadata == {"t": tag}
    assert len(row.triggered_runs or []) == 1
    runs = await runs_of_event(hatchet, event.event_id)
    assert len(runs) == 1
    assert runs[0].additional_metadata["hatchet__event_id"] == event.event_id
    assert runs[0].additional_metadata["hatchet__event_key"] == REST_EVENT_KEY

    wildcard = await hatchet.event.aio_push("t-rest-sub:anything", {"n": 2})
    assert len(await runs_of_event(hatchet, wildcard.event_id)) == 1
    unmatched = await hatchet.event.aio_push("t-rest-other", {"n": 3})
    assert await runs_of_event(hatchet, unmatched.event_id) == []


async def test_filters_crud(hatchet: Hatchet) -> None:
    wf = await workflow_id(hatchet, "t-rest-event")
    scope = str(uuid4())
    created = await hatchet.filters.aio_create(wf, "input.n == 1", scope, {"who": "a"})
    assert (await hatchet.filters.aio_get(created.metadata.id)).expression == "input.n == 1"
    listed = await hatchet.filters.aio_list(workflow_ids=[wf], scopes=[scope])
    assert [f.metadata.id for f in listed.rows or []] == [created.metadata.id]
    updated = await hatchet.filters.aio_update(
        created.metadata.id, V1UpdateFilterRequest(expression="input.n == 2")
    )
    assert updated.expression == "input.n == 2"
    assert updated.payload == {"who": "a"}
    await hatchet.filters.aio_delete(created.metadata.id)
    assert not (await hatchet.filters.aio_list(workflow_ids=[wf], scopes=[scope])).rows
    with pytest.raises(NotFoundException):
        await hatchet.filters.aio_get(created.metadata.id)


async def test_filters_gate_event_runs_by_scope_and_expression(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    """The engine's scope and expression rules (pkg/repository/trigger.go): with filters
    on a workflow, only a scoped event whose filter's expression is true starts it, once
    per such filter. Scoped events are pushed on the engine here: the test speaks of the
    engine's decisions, not of the gRPC push."""
    wf = await workflow_id(hatchet, "t-rest-event")
    scope = str(uuid4())
    filters = [
        await hatchet.filters.aio_create(
            wf, "input.go == true && payload.k == 'a'", scope, {"k": "a"}
        ),
        await hatchet.filters.aio_create(
            wf, "additional_metadata.m == 'yes' && event_key == 't-rest:created'", scope, {}
        ),
        await hatchet.filters.aio_create(wf, "input.missing.field", scope, {}),  # an error
    ]
    engine = emulator.engine
    try:
        both = await engine.push_event(REST_EVENT_KEY, {"go": True}, {"m": "yes"}, scope=scope)
        first = await engine.push_event(REST_EVENT_KEY, {"go": True}, {}, scope=scope)
        neither = await engine.push_event(REST_EVENT_KEY, {"go": False}, {}, scope=scope)
        unscoped = await engine.push_event(REST_EVENT_KEY, {"go": True}, {"m": "yes"})
        other_scope = await engine.push_event(REST_EVENT_KEY, {"go": True}, {}, scope="other")
        counts = [
            len(await runs_of_event(hatchet, e))
            for e in (both, first, neither, unscoped, other_scope)
        ]
        assert counts == [2, 1, 0, 0, 0]
    finally:
        for f in filters:
            await hatchet.filters.aio_delete(f.metadata.id)
    unfiltered = await engine.push_event(REST_EVENT_KEY, {"go": False}, {})
    assert len(await runs_of_event(hatchet, unfiltered)) == 1  # no filters: always triggered


async def test_a_workflows_default_filter_gates_its_events(hatchet: Hatchet) -> None:
    wf = await workflow_id(hatchet, "t-rest-declared-filter")
    [declared] = (await hatchet.filters.aio_list(workflow_ids=[wf])).rows or []
    assert declared.is_declarative
    assert (declared.scope, declared.expression) == (DECLARED_SCOPE, "input.go == true")
    go = await hatchet.event.aio_push(DECLARED_EVENT_KEY, {"go": True}, scope=DECLARED_SCOPE)
    stay = await hatchet.event.aio_push(DECLARED_EVENT_KEY, {"go": False}, scope=DECLARED_SCOPE)
    unscoped = await hatchet.event.aio_push(DECLARED_EVENT_KEY, {"go": True})
    [run] = await runs_of_event(hatchet, go.event_id)
    assert await result_of(hatchet, run.metadata.id) == {"echo_declared": {"d": 1}}
    assert await runs_of_event(hatchet, stay.event_id) == []
    assert await runs_of_event(hatchet, unscoped.event_id) == []


async def test_a_new_version_replaces_only_the_declarative_filters(hatchet: Hatchet) -> None:
    """What the engine keeps when a workflow registers again (pkg/repository/workflow.go):
    declared filters replace the declared ones, none declared leaves them, and filters
    made over REST stay. Registered as a worker would, without running anything."""
    name = f"t-declared-{uuid4()}"

    async def register(*filters: DefaultFilter) -> None:
        workflow = hatchet.workflow(name=name, on_events=["t-declared"], default_filters=[*filters])

        @workflow.task()
        async def step(_input: EmptyModel, _ctx: Context) -> None:
            return None

        await hatchet._client.admin.aio_put_workflow(workflow.to_proto())

    async def listed() -> dict[str, tuple[str, bool]]:
        rows = (await hatchet.filters.aio_list(workflow_ids=[wf])).rows or []
        return {f.metadata.id: (f.expression, bool(f.is_declarative)) for f in rows}

    first = DefaultFilter(expression="input.v == 1", scope="s", payload={})
    await register(first)
    wf = await workflow_id(hatchet, name)
    made = await hatchet.filters.aio_create(wf, "input.v == 0", "s", {})
    [first_id] = [i for i, (_, declarative) in (await listed()).items() if declarative]
    await register(first)  # unchanged: the same filter, the same id
    assert await listed() == {
        first_id: ("input.v == 1", True),
        made.metadata.id: ("input.v == 0", False),
    }
    await register()  # declares none: the declared filter stays
    assert first_id in await listed()
    await register(DefaultFilter(expression="input.v == 2", scope="s", payload={}))
    after = await listed()
    assert first_id not in after
    assert after[made.metadata.id] == ("input.v == 0", False)
    assert sorted(after.values()) == [("input.v == 0", False), ("input.v == 2", True)]


async def test_a_deleted_workflow_is_gone_with_its_crons_and_its_name_is_free(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    name = f"t-deleted-{uuid4()}"

    async def register() -> str:
        workflow = hatchet.workflow(name=name, on_crons=["0 9 * * *"])

        @workflow.task()
        async def step(_input: EmptyModel, _ctx: Context) -> None:
            return None

        await hatchet._client.admin.aio_put_workflow(workflow.to_proto())
        return await workflow_id(hatchet, name)

    first = await register()
    crons = schedules_of(emulator.engine).crons.values()
    assert [c.workflow for c in crons if c.workflow == name] == [name]
    await hatchet.workflows.aio_delete(first)
    with pytest.raises(NotFoundException):
        await hatchet.workflows.aio_get(first)
    assert name not in [w.name for w in (await hatchet.workflows.aio_list()).rows or []]
    assert not [c for c in crons if c.workflow == name]
    with pytest.raises(grpc.RpcError) as refused:
        await start(hatchet, name)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert await register() != first  # the name makes a new workflow


async def test_filter_payload_reaches_the_task(hatchet: Hatchet, emulator: HatchetEmulator) -> None:
    wf = await workflow_id(hatchet, "t-rest-event")
    scope = str(uuid4())
    f = await hatchet.filters.aio_create(wf, "true", scope, {"filter_id": "1"})
    try:
        event = await hatchet.event.aio_push(REST_EVENT_KEY, {}, scope=scope)
        runs = await runs_of_event(hatchet, event.event_id)
        assert len(runs) == 1
        assert await result_of(hatchet, runs[0].metadata.id) == {"echo_filter": {"filter_id": "1"}}
    finally:
        await hatchet.filters.aio_delete(f.metadata.id)


async def test_replay_reruns_a_failed_task_with_a_higher_retry_count(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-rest-first-try-fails")
    await settled(emulator, [run_id])
    assert (await hatchet.runs.aio_get_status(run_id)) == V1TaskStatus.FAILED
    await hatchet.runs.aio_replay(run_id)
    assert await result_of(hatchet, run_id) == {"t-rest-first-try-fails": {"attempt": 2}}
    row = next(r for r in (await hatchet.runs.aio_list()).rows if r.metadata.id == run_id)
    assert (row.status, row.retry_count, row.attempt) == (V1TaskStatus.COMPLETED, 1, 2)


async def test_a_replay_decides_a_cancel_condition_again_on_the_new_parent_output(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-rest-cancel-until-replayed")
    await settled(emulator, [run_id])
    assert (await hatchet.runs.aio_get_status(run_id)) == V1TaskStatus.CANCELLED
    await hatchet.runs.aio_replay(run_id)
    assert await result_of(hatchet, run_id) == {
        "decide": {"cancel": False},
        "after_decide": {"ran": "yes"},
    }


async def test_replaying_a_task_reruns_its_dependents_only(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-rest-chain")
    await settled(emulator, [run_id])
    details = await hatchet.runs.aio_get(run_id)
    by_name = {named(t.display_name): t for t in details.tasks}
    assert by_name["middle"].status == V1TaskStatus.FAILED
    assert by_name["tail"].status == V1TaskStatus.CANCELLED
    await hatchet.runs.aio_replay(by_name["middle"].task_external_id)
    assert await result_of(hatchet, run_id) == {
        "head": {"retry": 0},  # not below the replayed task: not run again
        "middle": {"retry": 1},
        "tail": {"retry": 1},
    }


async def test_bulk_replay_by_filter(hatchet: Hatchet, emulator: HatchetEmulator) -> None:
    tag = str(uuid4())
    since = datetime.now(UTC)
    run_ids = [await trigger(hatchet, "t-rest-first-try-fails", {}, {"b": tag}) for _ in range(3)]
    await settled(emulator, run_ids)
    wf = await workflow_id(hatchet, "t-rest-first-try-fails")
    await hatchet.runs.aio_bulk_replay(
        BulkCancelReplayOpts(
            filters=RunFilter(since=since, workflow_ids=[wf], additional_metadata={"b": tag})
        )
    )
    results = await asyncio.gather(*[result_of(hatchet, run_id) for run_id in run_ids])
    assert results == [{"t-rest-first-try-fails": {"attempt": 2}}] * 3


async def test_paused_workflow_holds_runs_and_cancels_them_after_the_queue_ttl(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    wf = await workflow_id(hatchet, "t-rest-pausable")
    paused = await hatchet.workflows.aio_pause(wf, timedelta(seconds=1))
    assert paused.is_paused is True
    try:
        run_id = await start(hatchet, "t-rest-pausable")
        await asyncio.sleep(0.3)
        assert (await hatchet.runs.aio_get_status(run_id)) == V1TaskStatus.QUEUED
        await settled(emulator, [run_id], timeout_s=5)
        details = await hatchet.runs.aio_get(run_id)
        assert details.run.status == V1TaskStatus.CANCELLED
    finally:
        await hatchet.workflows.aio_unpause(wf)

    await hatchet.workflows.aio_pause(wf, timedelta(minutes=10))
    try:
        held = await start(hatchet, "t-rest-pausable")
        await asyncio.sleep(0.5)
        assert (await hatchet.runs.aio_get_status(held)) == V1TaskStatus.QUEUED
    finally:
        unpaused = await hatchet.workflows.aio_unpause(wf)
    assert unpaused.is_paused is False
    assert await result_of(hatchet, held) == {"t-rest-pausable": {"result": "done"}}


async def test_cel_debug_evaluates_a_filter_expression(hatchet: Hatchet) -> None:
    holds = await hatchet.cel.aio_debug(
        "input.k == 'v' && additional_metadata.m == 'd' && payload.f == 'p'",
        {"k": "v"},
        additional_metadata={"m": "d"},
        filter_payload={"f": "p"},
    )
    assert isinstance(holds.result, CELSuccess)
    assert holds.result.output is True
    fails = await hatchet.cel.aio_debug("input.k == 'v'", {"k": "other"})
    assert isinstance(fails.result, CELSuccess)
    assert fails.result.output is False
    missing = await hatchet.cel.aio_debug("input.k == 'v'", {})
    assert isinstance(missing.result, CELFailure)
    assert "input.k" in missing.result.error
    not_boolean = await hatchet.cel.aio_debug("input.k", {"k": 1})
    assert isinstance(not_boolean.result, CELFailure)


async def test_what_is_not_served_answers_a_json_error_naming_it(hatchet: Hatchet) -> None:
    bearer = {"Authorization": f"Bearer {hatchet.config.token}"}
    unserved = f"{hatchet.config.server_url}/api/v1/tenants/{hatchet.tenant_id}/no-such-thing"
    async with aiohttp.ClientSession(headers=bearer) as session:
        async with session.get(unserved) as response:
            assert response.status == 404
            [error] = (await response.json())["errors"]
            assert (
                "no-such-thing is not served by the Hatchway Hatchet emulator"
                in (error["description"])
            )
        workflows = f"{hatchet.config.server_url}/api/v1/workflows/{uuid4()}"
        async with session.put(workflows) as response:  # a path served, not for this method
            assert response.status == 405
            assert "PUT" in (await response.json())["errors"][0]["description"]
