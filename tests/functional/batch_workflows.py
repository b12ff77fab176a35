"""Batch tasks for tests/functional/test_emulator_batches.py. Each invocation of a batch
function reports who was in it: ``batch`` (an id of its own), ``size`` and the inputs'
``tags``, so a test can tell which runs went together."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from hatchet_sdk import Context, Hatchet
from hatchet_sdk.runnables.types import BatchMemberId, TaskDefaults
from pydantic import BaseModel

LONG = timedelta(seconds=30)  # an interval the tests never wait for


class Item(BaseModel):
    tag: str = ""
    group: str | int = "g"
    seconds: float = 0.0
    data: str = ""
    bad: bool = False


class Seen(BaseModel):
    batch: str
    size: int
    tags: list[str]
    tag: str = ""
    started: float = 0.0
    ended: float = 0.0
    retry: int = 0


def _seen(tasks: dict[BatchMemberId, Item], **extra: Any) -> Seen:
    return Seen(
        batch=str(uuid.uuid4()),
        size=len(tasks),
        tags=sorted(item.tag for item in tasks.values()),
        **extra,
    )


def build_batch_workflows(hatchet: Hatchet) -> list[Any]:
    @hatchet.batch_task(
        input_validator=Item, name="t-batch-size", batch_max_size=3, batch_max_interval=LONG
    )
    async def by_size(tasks: dict[BatchMemberId, Item], _ctx: Context) -> dict[BatchMemberId, Seen]:
        seen = _seen(tasks)
        return {member: seen.model_copy(update={"tag": item.tag}) for member, item in tasks.items()}

    @hatchet.batch_task(
        input_validator=Item,
        name="t-batch-interval",
        batch_max_size=50,
        batch_max_interval=timedelta(milliseconds=300),
    )
    async def by_interval(
        tasks: dict[BatchMemberId, Item], _ctx: Context
    ) -> dict[BatchMemberId, Seen]:
        seen = _seen(tasks)
        return {member: seen.model_copy(update={"tag": item.tag}) for member, item in tasks.items()}

    @hatchet.batch_task(
        input_validator=Item,
        name="t-batch-keyed",
        batch_max_size=2,
        batch_max_interval=timedelta(milliseconds=300),
        batch_group_key="input.group",
    )
    async def keyed(tasks: dict[BatchMemberId, Item], _ctx: Context) -> dict[BatchMemberId, Seen]:
        seen = _seen(tasks)
        return {member: seen.model_copy(update={"tag": item.tag}) for member, item in tasks.items()}

    @hatchet.batch_task(
        input_validator=Item,
        name="t-batch-broadcast",
        batch_max_size=3,
        batch_max_interval=LONG,
        broadcast_output=True,
    )
    async def broadcast(tasks: dict[BatchMemberId, Item], _ctx: Context) -> Seen:
        return _seen(tasks)

    @hatchet.batch_task(
        input_validator=Item, name="t-batch-per-item", batch_max_size=2, batch_max_interval=LONG
    )
    async def per_item(tasks: dict[BatchMemberId, Item], _ctx: Context) -> dict[BatchMemberId, Any]:
        # an output that is not an object fails that item alone
        return {
            member: "not an object" if item.bad else _seen(tasks, tag=item.tag)
            for member, item in tasks.items()
        }

    attempts: list[int] = []

    # a batch task has no retries of its own: the workflow's task defaults give them
    retrying = hatchet.workflow(
        name="t-batch-retry", input_validator=Item, task_defaults=TaskDefaults(retries=1)
    )

    @retrying.batch_task(batch_max_size=2, batch_max_interval=LONG)
    async def retried(tasks: dict[BatchMemberId, Item], _ctx: Context) -> dict[BatchMemberId, Seen]:
        attempts.append(len(tasks))
        if len(attempts) == 1:
            raise ValueError("the whole first batch fails")
        seen = _seen(tasks, retry=len(attempts) - 1)
        return dict.fromkeys(tasks, seen)

    @hatchet.batch_task(
        input_validator=Item,
        name="t-batch-cancel",
        batch_max_size=2,
        batch_max_interval=LONG,
        broadcast_output=True,
    )
    async def cancels(_tasks: dict[BatchMemberId, Item], ctx: Context) -> Seen | None:
        await ctx.aio_cancel()
        return None

    @hatchet.batch_task(
        input_validator=Item,
        name="t-batch-slow",
        batch_max_size=3,
        batch_max_interval=timedelta(milliseconds=200),
        batch_group_key="input.group",
        batch_group_max_runs=1,
    )
    async def slow(tasks: dict[BatchMemberId, Item], _ctx: Context) -> dict[BatchMemberId, Seen]:
        started = time.time()
        await asyncio.sleep(max(item.seconds for item in tasks.values()))
        seen = _seen(tasks, started=started, ended=time.time())
        return dict.fromkeys(tasks, seen)

    @hatchet.batch_task(
        input_validator=Item,
        name="t-batch-memory",
        batch_max_size=10,
        batch_max_interval=timedelta(milliseconds=500),
    )
    async def memory(tasks: dict[BatchMemberId, Item], _ctx: Context) -> dict[BatchMemberId, Seen]:
        seen = _seen(tasks)
        return dict.fromkeys(tasks, seen)

    return [by_size, by_interval, keyed, broadcast, per_item, retrying, cancels, slow, memory]
