"""Concurrency beyond the first three strategies, with the unmodified SDK against the
emulator: CANCEL_QUEUED_EXCEPT_NEWEST and _OLDEST, a max-runs CEL expression, a
tenant-scoped limit two workflows share, and the deprecated strategies refused as the
engine's validation refuses them. Orderings come from the REST API's start and finish
times, concurrency from the engine's state, never from how long something took."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc
import pytest
from hatchet_sdk import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    EmptyModel,
    Hatchet,
)
from hatchet_sdk.clients.rest.models.v1_task_status import V1TaskStatus
from hatchet_sdk.contracts.v1.workflows_pb2 import (
    ConcurrencyLimitStrategy as ConcurrencyLimitProto,
)
from hatchet_sdk.exceptions import FailedTaskRunExceptionGroup

from hatchway_local.hatchet_emulator.engine import Status
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.test_hatchet_emulator import cancelled_by_the_limit, result_of, start

pytestmark = pytest.mark.usefixtures("worker")


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


def running(emulator: HatchetEmulator, run_id: str) -> bool:
    return any(t.status is Status.RUNNING for t in emulator.engine.get_run(run_id).tasks.values())


async def span(hatchet: Hatchet, run_id: str) -> tuple[datetime, datetime]:
    tasks = (await hatchet.runs.aio_get(run_id)).tasks
    starts = [t.started_at for t in tasks if t.started_at is not None]
    ends = [t.finished_at for t in tasks if t.finished_at is not None]
    return min(starts), max(ends)


async def queue_behind_a_runner(
    hatchet: Hatchet, emulator: HatchetEmulator, workflow: str
) -> tuple[str, list[str]]:
    """A long runner on key "A", then three more for "A" while it runs."""
    runner = await start(hatchet, workflow, {"group": "A", "seconds": 3})
    await until(lambda: running(emulator, runner))
    queued = [await start(hatchet, workflow, {"group": "A"}) for _ in range(3)]
    return runner, queued


async def test_cancel_queued_except_newest_keeps_the_runner_and_the_newest_queued(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    runner, (b, c, d) = await queue_behind_a_runner(hatchet, emulator, "t-conc-except-newest")

    assert await cancelled_by_the_limit(hatchet, b)
    assert await cancelled_by_the_limit(hatchet, c)
    await result_of(hatchet, d)
    await result_of(hatchet, runner)  # never cancelled: only the queue is trimmed
    assert (await span(hatchet, runner))[1] <= (await span(hatchet, d))[0]


async def test_cancel_queued_except_oldest_keeps_the_oldest_queued(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    runner, (b, c, d) = await queue_behind_a_runner(hatchet, emulator, "t-conc-except-oldest")

    assert await cancelled_by_the_limit(hatchet, c)
    assert await cancelled_by_the_limit(hatchet, d)
    await result_of(hatchet, b)
    await result_of(hatchet, runner)
    assert (await span(hatchet, runner))[1] <= (await span(hatchet, b))[0]


async def test_a_max_runs_expression_gives_each_key_the_limit_its_input_computes(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    premium = [
        await start(hatchet, "t-conc-dynamic", {"group": "P", "tier": "premium", "seconds": 1})
        for _ in range(3)
    ]
    free = [
        await start(hatchet, "t-conc-dynamic", {"group": "F", "tier": "free", "seconds": 0.5})
        for _ in range(2)
    ]
    # two premium runs at once: with the static max_runs of 1 this never happens
    await until(lambda: sum(running(emulator, run_id) for run_id in premium) == 2)

    for run_id in premium + free:
        await result_of(hatchet, run_id)
    p1, p2, p3 = [await span(hatchet, run_id) for run_id in premium]
    f1, f2 = [await span(hatchet, run_id) for run_id in free]
    assert p3[0] >= min(p1[1], p2[1])  # the third waited for one of the two slots
    assert f2[0] >= f1[1]  # the free tier's limit is 1


async def test_a_tenant_scoped_limit_is_one_limit_across_workflows(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    first = await start(hatchet, "t-conc-shared-a", {"group": "S", "seconds": 1})
    await until(lambda: running(emulator, first))
    second = await start(hatchet, "t-conc-shared-b", {"group": "S"})
    elsewhere = await start(hatchet, "t-conc-shared-b", {"group": "T"})

    for run_id in (first, second, elsewhere):
        await result_of(hatchet, run_id)
    a, b, t = [await span(hatchet, run_id) for run_id in (first, second, elsewhere)]
    assert a[1] <= b[0]  # another workflow's run of the same key waited for the slot
    assert t[0] < a[1]  # another key did not


@pytest.mark.parametrize("strategy", ["DROP_NEWEST", "QUEUE_NEWEST"])
async def test_the_deprecated_strategies_fail_the_engines_validation(
    hatchet: Hatchet, strategy: str
) -> None:
    name = f"t-conc-{strategy.lower()}"
    deprecated = hatchet.workflow(
        name=name,
        concurrency=ConcurrencyExpression(
            expression="'all'",
            max_runs=1,
            limit_strategy=ConcurrencyLimitStrategy.QUEUE_NEWEST,
        ),
    )

    @deprecated.task()
    async def step(_input: EmptyModel, _ctx: Context) -> None:
        return None

    proto = deprecated.to_proto()
    # the SDK's enum has no DROP_NEWEST; the proto it sends does
    proto.concurrency.limit_strategy = ConcurrencyLimitProto.Value(strategy)
    with pytest.raises(grpc.RpcError) as refused:
        await hatchet._client.admin.aio_put_workflow(proto)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "Validation failed" in details
    assert f"got {strategy}" in details
    with pytest.raises(grpc.RpcError):  # and nothing of it was registered
        await start(hatchet, name)


async def test_a_max_runs_expression_the_input_cannot_satisfy_fails_the_task(
    hatchet: Hatchet,
) -> None:
    run_id = await start(hatchet, "t-conc-dynamic", {"group": "X"})  # no tier

    with pytest.raises(FailedTaskRunExceptionGroup) as failed:
        await result_of(hatchet, run_id)
    assert "input.tier == 'premium' ? 2 : 1" in str(failed.value.exceptions[0])
    assert (await hatchet.runs.aio_get(run_id)).run.status == V1TaskStatus.FAILED


async def test_workflows_ordering_tenant_scoped_limits_inconsistently_are_refused(
    hatchet: Hatchet,
) -> None:
    def chain(name: str, *limits: str) -> Any:
        workflow = hatchet.workflow(name=name)

        @workflow.task(
            concurrency=[
                ConcurrencyExpression(
                    expression="'all'",
                    max_runs=1,
                    limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN,
                    name=limit,
                    is_tenant_scoped=True,
                )
                for limit in limits
            ]
        )
        async def step(_input: EmptyModel, _ctx: Context) -> None:
            return None

        return workflow.to_proto()

    await hatchet._client.admin.aio_put_workflow(chain("t-conc-chain-ab", "t-first", "t-second"))
    with pytest.raises(grpc.RpcError) as refused:
        await hatchet._client.admin.aio_put_workflow(
            chain("t-conc-chain-ba", "t-second", "t-first")
        )

    assert refused.value.code() == grpc.StatusCode.UNKNOWN
    assert "ordered inconsistently" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError):  # and nothing of it was registered
        await start(hatchet, "t-conc-chain-ba")
