"""A real hatchet-sdk worker with one workflow per engine feature the tests check.

Run as a subprocess (``python -m tests.functional.engine_worker``) with the
emulator's HATCHET_CLIENT_* settings in its environment, exactly as a user's
worker would run.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from hatchet_sdk import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    EmptyModel,
    Hatchet,
    NonRetryableException,
    ParentCondition,
    SleepCondition,
    UserEventCondition,
    or_,
)
from pydantic import BaseModel

from hatchway.payloads import Payloads
from hatchway_local.demo.workflows import build_demo_workflows
from tests.functional.batch_workflows import build_batch_workflows
from tests.functional.concurrency_workflows import build_concurrency_workflows
from tests.functional.durable_workflows import build_durable_workflows
from tests.functional.rate_limit_workflows import build_rate_limit_workflows
from tests.functional.rest_workflows import build_rest_workflows
from tests.functional.scheduling_workflows import build_scheduling_workflows
from tests.functional.webhook_workflows import build_webhook_workflows

hatchet = Hatchet()


class LeafInput(BaseModel):
    value: int


class TickInput(BaseModel):
    ticks: int = 300
    pause_seconds: float = 0.1


dag = hatchet.workflow(name="t-dag")


@dag.task()
async def first(_input: EmptyModel, _ctx: Context) -> dict[str, int]:
    return {"value": 1}


@dag.task(parents=[first])
async def left(_input: EmptyModel, ctx: Context) -> dict[str, int]:
    return {"value": ctx.task_output(first)["value"] + 10}


@dag.task(parents=[first])
def right(_input: EmptyModel, ctx: Context) -> dict[str, int]:  # a sync task, run in a thread
    return {"value": ctx.task_output(first)["value"] + 100}


@dag.task(parents=[left, right])
async def last(_input: EmptyModel, ctx: Context) -> dict[str, int]:
    return {"value": ctx.task_output(left)["value"] + ctx.task_output(right)["value"]}


@hatchet.task(name="t-leaf", input_validator=LeafInput)
async def leaf(input: LeafInput, ctx: Context) -> dict[str, int]:  # noqa: A002
    await ctx.aio_put_stream(f"leaf {input.value}")
    return {"doubled": input.value * 2}


@hatchet.task(name="t-parent")
async def parent(_input: EmptyModel, _ctx: Context) -> dict[str, Any]:
    results = await asyncio.gather(*(leaf.aio_run(LeafInput(value=v)) for v in (1, 2, 3)))
    return {"children": [r["doubled"] for r in results]}


@hatchet.task(name="t-retry", retries=2)
async def flaky(_input: EmptyModel, ctx: Context) -> dict[str, int]:
    if ctx.retry_count < 2:
        raise RuntimeError(f"attempt {ctx.retry_count} fails")
    return {"retry_count": ctx.retry_count}


@hatchet.task(name="t-non-retryable", retries=3)
async def hopeless(_input: EmptyModel, _ctx: Context) -> None:
    raise NonRetryableException("no point in retrying")


@hatchet.task(name="t-ticks", input_validator=TickInput, execution_timeout=timedelta(minutes=5))
async def ticks(input: TickInput, ctx: Context) -> dict[str, int]:  # noqa: A002
    for tick in range(input.ticks):
        await ctx.aio_put_stream(f"tick {tick}")
        await asyncio.sleep(input.pause_seconds)
    return {"ticks": input.ticks}


@hatchet.task(name="t-timeout", execution_timeout=timedelta(seconds=1))
async def too_slow(_input: EmptyModel, ctx: Context) -> None:
    await ctx.aio_put_stream("started")
    await asyncio.sleep(30)


@hatchet.task(name="t-sync-stream")
def sync_stream(_input: EmptyModel, ctx: Context) -> dict[str, int]:
    for n in range(20):
        ctx.put_stream(f"sync {n}")
        time.sleep(0.005)
    return {"chunks": 20}


# -- a failure ends only its branch (the engine's DAG rules) -------------------------

branches = hatchet.workflow(name="t-branches")


@branches.task(retries=3)
async def doomed(_input: EmptyModel, _ctx: Context) -> None:
    raise NonRetryableException("doomed fails for good")


@branches.task(retries=1)
async def flaky_branch(_input: EmptyModel, ctx: Context) -> dict[str, int]:
    if ctx.retry_count == 0:
        raise RuntimeError("flaky_branch fails its first attempt")
    return {"attempt": ctx.retry_count}


@branches.task()
async def slow_branch(_input: EmptyModel, _ctx: Context) -> dict[str, bool]:
    await asyncio.sleep(1)
    return {"ok": True}


@branches.task(parents=[doomed])
async def after_doomed(_input: EmptyModel, _ctx: Context) -> dict[str, bool]:
    return {"ran": True}  # never: its parent failed


@branches.task(parents=[slow_branch])
async def after_slow(_input: EmptyModel, ctx: Context) -> dict[str, bool]:
    return {"parent_ok": ctx.task_output(slow_branch)["ok"]}


# -- cancelling one task cancels that task ------------------------------------------

self_cancelling = hatchet.workflow(name="t-self-cancel")


@self_cancelling.task()
async def quitter(_input: EmptyModel, ctx: Context) -> dict[str, bool]:
    await ctx.aio_cancel()
    await asyncio.sleep(30)
    return {"cancelled": False}


@self_cancelling.task()
async def bystander(_input: EmptyModel, _ctx: Context) -> dict[str, bool]:
    await asyncio.sleep(1)
    return {"finished": True}


# -- a parent that returns None -----------------------------------------------------


class NamedInput(BaseModel):
    name: str


quiet_parent = hatchet.workflow(name="t-quiet-parent", input_validator=NamedInput)


@quiet_parent.task()
async def quiet(_input: NamedInput, _ctx: Context) -> None:
    return None


@quiet_parent.task(parents=[quiet])
async def after_quiet(input: NamedInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
    return {"name": input.name}


# -- on-failure tasks ---------------------------------------------------------------

with_on_failure = hatchet.workflow(name="t-on-failure")


@with_on_failure.task()
async def breaks(_input: EmptyModel, _ctx: Context) -> None:
    raise NonRetryableException("breaks broke")


@with_on_failure.on_failure_task()
async def clean_up(_input: EmptyModel, ctx: Context) -> dict[str, str]:
    error = ctx.get_task_run_error(breaks)
    return {"saw": error.exc if error else "no error"}


fine_with_on_failure = hatchet.workflow(name="t-on-failure-unneeded")


@fine_with_on_failure.task()
async def works(_input: EmptyModel, _ctx: Context) -> dict[str, bool]:
    return {"worked": True}


@fine_with_on_failure.on_failure_task()
async def never_needed(_input: EmptyModel, _ctx: Context) -> dict[str, bool]:
    return {"ran": True}


# -- concurrency limits -------------------------------------------------------------


class GroupInput(BaseModel):
    group: str
    seconds: float = 0.5


def one_per_group(strategy: ConcurrencyLimitStrategy) -> ConcurrencyExpression:
    return ConcurrencyExpression(expression="input.group", max_runs=1, limit_strategy=strategy)


async def hold(input: GroupInput) -> dict[str, str]:  # noqa: A002
    await asyncio.sleep(input.seconds)
    return {"group": input.group}


round_robin = hatchet.workflow(
    name="t-conc-rr",
    input_validator=GroupInput,
    concurrency=one_per_group(ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN),
)


@round_robin.task()
async def rr_step(input: GroupInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
    return await hold(input)


@round_robin.task(parents=[rr_step])
async def rr_after(input: GroupInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
    return await hold(input)  # the run's slot is held until its last task ends


cancel_in_progress = hatchet.workflow(
    name="t-conc-cancel-in-progress",
    input_validator=GroupInput,
    concurrency=one_per_group(ConcurrencyLimitStrategy.CANCEL_IN_PROGRESS),
)


@cancel_in_progress.task()
async def cip_step(input: GroupInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
    return await hold(input)


cancel_newest = hatchet.workflow(name="t-conc-cancel-newest", input_validator=GroupInput)


@cancel_newest.task(concurrency=[one_per_group(ConcurrencyLimitStrategy.CANCEL_NEWEST)])
async def newest_step(input: GroupInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
    return await hold(input)


# -- conditions ---------------------------------------------------------------------


class Number(BaseModel):
    n: int


conditioned = hatchet.workflow(name="t-conditions")


@conditioned.task()
async def pick(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=5)


@conditioned.task(parents=[pick], wait_for=[SleepCondition(timedelta(seconds=1))])
async def after_a_nap(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=1)


@conditioned.task(parents=[pick], skip_if=[ParentCondition(parent=pick, expression="output.n > 3")])
async def skipped_when_big(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=100)  # never: pick's n is 5


@conditioned.task(
    parents=[pick], skip_if=[ParentCondition(parent=pick, expression="output.n > 10")]
)
async def kept_when_small(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=10)


@conditioned.task(
    parents=[pick],
    wait_for=[
        or_(
            SleepCondition(timedelta(minutes=5)),
            UserEventCondition(event_key="t-conditions:go", expression="input.ok == true"),
        )
    ],
)
async def on_the_event(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=1000)


@conditioned.task(
    parents=[pick],
    wait_for=[SleepCondition(timedelta(minutes=5))],
    skip_if=[UserEventCondition(event_key="t-conditions:skip")],
)
async def skipped_by_event(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=10_000)  # never: the skip event comes first


@conditioned.task(
    parents=[after_a_nap, skipped_when_big, kept_when_small, on_the_event, skipped_by_event]
)
async def total(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
    parents = [after_a_nap, skipped_when_big, kept_when_small, on_the_event, skipped_by_event]
    return {
        "sum": sum(ctx.task_output(p).n for p in parents if not ctx.was_skipped(p)),
        "skipped": sorted(p.name for p in parents if ctx.was_skipped(p)),
    }


cancelled_by_condition = hatchet.workflow(name="t-cancel-if")


@cancelled_by_condition.task()
async def measure(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=2)


@cancelled_by_condition.task(
    parents=[measure], cancel_if=[ParentCondition(parent=measure, expression="output.n > 1")]
)
async def too_much(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=0)  # never


@cancelled_by_condition.task(parents=[too_much])
async def after_too_much(_input: EmptyModel, _ctx: Context) -> Number:
    return Number(n=0)  # never: its parent was cancelled


def main() -> None:
    worker = hatchet.worker(
        "hatchway-test-worker",
        slots=20,
        workflows=[
            *build_demo_workflows(hatchet, Payloads("no-bucket-here")),  # demo-file is not run here
            dag,
            leaf,
            parent,
            flaky,
            hopeless,
            ticks,
            too_slow,
            sync_stream,
            branches,
            self_cancelling,
            quiet_parent,
            with_on_failure,
            fine_with_on_failure,
            round_robin,
            cancel_in_progress,
            cancel_newest,
            conditioned,
            cancelled_by_condition,
            *build_rest_workflows(hatchet),
            *build_scheduling_workflows(hatchet),
            *build_batch_workflows(hatchet),
            *build_durable_workflows(hatchet),
            *build_rate_limit_workflows(hatchet),
            *build_webhook_workflows(hatchet),
            *build_concurrency_workflows(hatchet),
        ],
    )
    worker.start()


if __name__ == "__main__":
    main()
