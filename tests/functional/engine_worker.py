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

from hatchet_sdk import Context, EmptyModel, Hatchet, NonRetryableException
from pydantic import BaseModel

from hatchway.payloads import Payloads
from hatchway_local.demo.workflows import build_demo_workflows

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
        ],
    )
    worker.start()


if __name__ == "__main__":
    main()
