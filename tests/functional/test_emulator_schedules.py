"""Cron triggers and scheduled runs through the SDK's hatchet.cron and
hatchet.scheduled clients (REST) and workflow.schedule (gRPC), run by the real
test worker. Semantics:
schedules.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import grpc
import pytest
from hatchet_sdk import Context, EmptyModel, Hatchet
from hatchet_sdk.clients.rest.exceptions import NotFoundException

from hatchway_local.hatchet_emulator.engine import WorkflowRun
from hatchway_local.hatchet_emulator.schedules import schedules_of
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.scheduling_workflows import CRON_EXPRESSION, GreetingInput
from tests.functional.test_hatchet_emulator import result_of

pytestmark = pytest.mark.usefixtures("worker")


async def workflow_id(hatchet: Hatchet, name: str) -> str:
    listed = await hatchet.workflows.aio_list(workflow_name=name)
    return next(w.metadata.id for w in listed.rows or [] if w.name == name)


async def test_a_declared_cron_is_listed_and_runs_with_its_input(hatchet: Hatchet) -> None:
    crons = await hatchet.cron.aio_list(workflow_id=await workflow_id(hatchet, "t-cron"))
    declared = [c for c in crons.rows or [] if c.method.value == "DEFAULT"]
    assert len(declared) == 1  # registered by two workers, declared once
    assert declared[0].cron == CRON_EXPRESSION
    assert declared[0].input == {"name": "cron"}
    with hatchet.cron.client() as client:
        triggered = await asyncio.to_thread(
            hatchet.cron._wa(client).workflow_cron_trigger,
            tenant=hatchet.tenant_id,
            cron_workflow=declared[0].metadata.id,
        )
    result = (await result_of(hatchet, triggered.external_id))["t-cron"]
    assert result["hello"] == "cron"
    assert result["metadata"]["hatchet__cron_expression"] == CRON_EXPRESSION
    assert "hatchet__cron_name" not in result["metadata"]


async def test_a_cron_fires_on_its_schedule_with_its_metadata(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    tag = str(uuid4())
    cron = await hatchet.cron.aio_create(
        "t-cron", f"daily-{tag}", "0 9 * * *", {"name": "api"}, {"tag": tag}
    )
    assert cron.enabled
    assert cron.method.value == "API"
    assert cron.name == f"daily-{tag}"
    assert (await hatchet.cron.aio_get(cron.metadata.id)).cron == "0 9 * * *"
    assert [
        c.metadata.id for c in (await hatchet.cron.aio_list(cron_name=f"daily-{tag}")).rows or []
    ] == [cron.metadata.id]
    # The tick at 09:00 UTC, without waiting for it: what the timer calls.
    schedules = schedules_of(emulator.engine)
    at = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    schedules._fire_cron(schedules.get_cron(cron.metadata.id), at)
    runs = []
    while not runs:
        runs = [r for r in emulator.engine.runs.values() if r.additional_metadata.get("tag") == tag]
        await asyncio.sleep(0.05)
    result = (await result_of(hatchet, runs[0].run_id))["t-cron"]
    assert result["hello"] == "api"
    assert result["metadata"] == {
        "tag": tag,
        "hatchet__cron_expression": "0 9 * * *",
        "hatchet__cron_name": f"daily-{tag}",
        "hatchet__cron_scheduled_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    await hatchet.cron.aio_delete(cron.metadata.id)
    with pytest.raises(NotFoundException):
        await hatchet.cron.aio_get(cron.metadata.id)


async def test_a_cron_with_a_seconds_field_fires_every_second(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    tag = str(uuid4())
    cron = await hatchet.cron.aio_create("t-cron", f"s-{tag}", "* * * * * *", {}, {"tag": tag})
    try:
        runs: list[WorkflowRun] = []
        while len(runs) < 2:
            runs = [
                r for r in emulator.engine.runs.values() if r.additional_metadata.get("tag") == tag
            ]
            await asyncio.sleep(0.1)
        fired = sorted(r.additional_metadata["hatchet__cron_scheduled_at"] for r in runs)
        assert len(set(fired)) == len(fired)  # one run per second
    finally:
        await hatchet.cron.aio_delete(cron.metadata.id)
    seven = hatchet.workflow(name=f"t-seven-{tag}")  # the SDK refuses it itself: send it raw

    @seven.task()
    async def step(_input: EmptyModel, _ctx: Context) -> None:
        return None

    proto = seven.to_proto()
    proto.cron_triggers.append("* * * * * * *")
    with pytest.raises(grpc.RpcError) as refused:
        await hatchet._client.admin.aio_put_workflow(proto)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "six" in (refused.value.details() or "")


async def test_a_paused_workflow_that_drops_skips_crons_and_holds_schedules(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    """With DROP, a cron that comes due fires nothing while the workflow is paused, and a
    scheduled run whose time came starts only once it is unpaused."""
    tag = str(uuid4())
    wf = await workflow_id(hatchet, "t-cron")
    schedules = schedules_of(emulator.engine)

    def tagged() -> list[WorkflowRun]:
        return [r for r in emulator.engine.runs.values() if r.additional_metadata.get("tag") == tag]

    await hatchet.workflows.aio_pause(
        wf,
        timedelta(minutes=5),
        paused_workflow_cron_run_queue_behavior="DROP",
        paused_workflow_scheduled_run_queue_behavior="DROP",
    )
    try:
        cron = await hatchet.cron.aio_create("t-cron", f"p-{tag}", "0 9 * * *", {}, {"tag": tag})
        schedules._fire_cron(schedules.get_cron(cron.metadata.id), datetime.now(UTC))
        await hatchet.cron.aio_delete(cron.metadata.id)
        soon = datetime.now(UTC) + timedelta(seconds=0.2)
        scheduled = await hatchet.scheduled.aio_create("t-cron", soon, {}, {"tag": tag})
        held = schedules.get_scheduled(scheduled.metadata.id)
        while held.timer is not None:  # noqa: ASYNC110 - until its time came
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)  # a run it started would exist by now
        assert tagged() == []
    finally:
        await hatchet.workflows.aio_unpause(wf)
    while not tagged():  # noqa: ASYNC110 - the held schedule starts on unpause
        await asyncio.sleep(0.05)
    [run] = tagged()
    assert (await hatchet.scheduled.aio_get(scheduled.metadata.id)).workflow_run_id == run.run_id
    assert (await result_of(hatchet, run.run_id))["t-cron"]["metadata"] == {"tag": tag}


async def test_a_scheduled_run_starts_at_its_time(hatchet: Hatchet) -> None:
    tag = str(uuid4())
    trigger_at = datetime.now(UTC) + timedelta(seconds=1.5)
    scheduled = await hatchet.scheduled.aio_create(
        "t-cron", trigger_at, {"name": "later"}, {"tag": tag}
    )
    fetched = await hatchet.scheduled.aio_get(scheduled.metadata.id)
    assert fetched.workflow_run_id is None
    assert abs((fetched.trigger_at - trigger_at).total_seconds()) < 0.01
    while (await hatchet.scheduled.aio_get(scheduled.metadata.id)).workflow_run_id is None:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    started = datetime.now(UTC)
    assert started >= trigger_at
    fetched = await hatchet.scheduled.aio_get(scheduled.metadata.id)
    result = (await result_of(hatchet, fetched.workflow_run_id))["t-cron"]
    assert result == {"hello": "later", "metadata": {"tag": tag}}
    listed = await hatchet.scheduled.aio_list(additional_metadata={"tag": tag})
    assert [s.metadata.id for s in listed.rows or []] == [scheduled.metadata.id]


async def test_a_deleted_or_rescheduled_run_does_not_start_at_the_old_time(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.5)
    deleted = await hatchet.scheduled.aio_create("t-cron", soon, {}, {})
    moved = await hatchet.scheduled.aio_create("t-cron", soon, {}, {})
    await hatchet.scheduled.aio_delete(deleted.metadata.id)
    later = datetime.now(UTC) + timedelta(hours=1)
    await hatchet.scheduled.aio_update(moved.metadata.id, later)
    await asyncio.sleep(1.0)
    assert (await hatchet.scheduled.aio_get(moved.metadata.id)).workflow_run_id is None
    with pytest.raises(NotFoundException):
        await hatchet.scheduled.aio_get(deleted.metadata.id)
    await hatchet.scheduled.aio_delete(moved.metadata.id)


async def test_workflow_schedule_over_grpc_makes_a_scheduled_run(hatchet: Hatchet) -> None:
    tag = str(uuid4())
    trigger_at = datetime.now(UTC) + timedelta(seconds=1)
    greeter = hatchet.workflow(name="t-cron", input_validator=GreetingInput)
    version = await greeter.aio_schedule(
        trigger_at, GreetingInput(name="grpc"), additional_metadata={"tag": tag}
    )
    assert version.workflow_id == await workflow_id(hatchet, "t-cron")
    [made] = version.scheduled_workflows
    assert abs((made.trigger_at.ToDatetime(tzinfo=UTC) - trigger_at).total_seconds()) < 0.01
    while (await hatchet.scheduled.aio_get(made.id)).workflow_run_id is None:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    run_id = (await hatchet.scheduled.aio_get(made.id)).workflow_run_id
    assert run_id is not None
    result = (await result_of(hatchet, run_id))["t-cron"]
    assert result == {"hello": "grpc", "metadata": {"tag": tag}}


async def test_scheduling_an_unknown_workflow_is_not_found(hatchet: Hatchet) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        await hatchet.workflow(name="t-no-such-workflow").aio_schedule(datetime.now(UTC))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
