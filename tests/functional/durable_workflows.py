"""Durable tasks for tests/functional/test_emulator_durable.py. Each returns what a test
needs to tell a replay from a first run: its invocation count, how long it waited,
the ids its children made."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from hatchet_sdk import (
    Context,
    DurableContext,
    EmptyModel,
    EvictionPolicy,
    Hatchet,
    SleepCondition,
    UserEventCondition,
    or_,
)
from hatchet_sdk.exceptions import NonDeterminismError
from pydantic import BaseModel

EVENT_KEY = "t-durable:event"
NEVER = timedelta(seconds=60)  # a sleep no test waits for


class EventInput(BaseModel):
    scope: str | None = None
    lookback_s: int = 0
    want: int = 0


class SpawnInput(BaseModel):
    n: int = 1
    fail: bool = False


def build_durable_workflows(hatchet: Hatchet) -> list[Any]:
    @hatchet.task(name="t-durable-leaf", input_validator=SpawnInput)
    async def leaf(input_: SpawnInput, _ctx: Context) -> dict[str, Any]:
        if input_.fail:
            raise ValueError(f"leaf {input_.n} failed")
        return {"n": input_.n, "made": str(uuid.uuid4())}

    @hatchet.durable_task(name="t-durable-sleep")
    async def sleep(_input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
        began = time.monotonic()
        slept = await ctx.aio_sleep_for(timedelta(seconds=1))
        return {
            "elapsed": time.monotonic() - began,
            "slept": slept.duration.total_seconds(),
            "invocation": ctx.invocation_count,
        }

    @hatchet.durable_task(name="t-durable-event", input_validator=EventInput)
    async def event(input_: EventInput, ctx: DurableContext) -> dict[str, Any]:
        began = time.monotonic()
        payload = await ctx.aio_wait_for_event(
            EVENT_KEY,
            f"input.n == {input_.want}",
            scope=input_.scope,
            lookback_window=timedelta(seconds=input_.lookback_s) if input_.lookback_s else None,
        )
        return {"payload": payload, "elapsed": time.monotonic() - began}

    @hatchet.durable_task(name="t-durable-or")
    async def either(_input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
        result = await ctx.aio_wait_for(
            "either",
            or_(SleepCondition(NEVER), UserEventCondition(event_key=EVENT_KEY + ":or")),
        )
        return {"result": result}

    @hatchet.durable_task(name="t-durable-spawn", input_validator=SpawnInput)
    async def spawn(input_: SpawnInput, ctx: DurableContext) -> dict[str, Any]:
        first = await leaf.aio_run(SpawnInput(n=1))
        keyed = await leaf.aio_run(SpawnInput(n=2), child_key="k")
        again = await leaf.aio_run(SpawnInput(n=3), child_key="k")  # the same child as "k"
        many = await leaf.aio_run_many(
            [leaf.create_bulk_run_item(SpawnInput(n=4 + i)) for i in range(input_.n)]
        )
        failed = ""
        try:
            await leaf.aio_run(SpawnInput(n=9, fail=True))
        except Exception as error:  # noqa: BLE001 - the child's failure, as the parent sees it
            failed = str(error)
        return {
            "first": first,
            "keyed": keyed,
            "again": again,
            "many": many,
            "failed": failed,
            "invocation": ctx.invocation_count,
        }

    @hatchet.durable_task(name="t-durable-nondeterminism")
    async def nondeterminism(_input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
        try:  # a replay (attempt 2) sleeps for another duration (whole seconds: the SDK's unit) than the log has
            await ctx.aio_sleep_for(timedelta(seconds=ctx.attempt_number))
        except NonDeterminismError as error:
            return {"detected": True, "node": error.node_id, "message": str(error)}
        return {"detected": False, "attempt": ctx.attempt_number}

    @hatchet.durable_task(name="t-durable-memo")
    async def memo(_input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
        now = await ctx.aio_now()
        return {"now": now.isoformat(), "invocation": ctx.invocation_count}

    @hatchet.durable_task(
        name="t-durable-reset",
        eviction_policy=EvictionPolicy(ttl=None, allow_capacity_eviction=False),
    )
    async def reset(_input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
        durations = []
        for _ in range(3):
            began = time.monotonic()
            await ctx.aio_sleep_for(timedelta(seconds=1))
            durations.append(time.monotonic() - began)
        return {"durations": durations}

    @hatchet.durable_task(
        name="t-durable-evict",
        eviction_policy=EvictionPolicy(ttl=timedelta(seconds=1), allow_capacity_eviction=False),
    )
    async def evict(_input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
        began = await ctx.aio_now()
        await ctx.aio_sleep_for(timedelta(seconds=4))
        child = await leaf.aio_run(SpawnInput(n=1))
        return {"began": began.isoformat(), "child": child, "invocation": ctx.invocation_count}

    return [leaf, sleep, event, either, spawn, nondeterminism, memo, reset, evict]
