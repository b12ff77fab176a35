"""Workflows for tests/functional/test_emulator_slots.py, run only by the slot worker
(tests/functional/slot_worker.py): it has few default units, so the tests can tell
what a task's slot cost holds back. Every task reports the worker that ran it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from hatchet_sdk import Context, DurableContext, EmptyModel, Hatchet
from pydantic import BaseModel

SLOT_WORKER_NAME = "hatchway-slot-worker"
SLOT_WORKER_DEFAULT_UNITS = 4  # hatchet.worker(slots=...): its default units
SDK_DURABLE_UNITS = 1000  # what the SDK registers for a worker with durable tasks


class Pause(BaseModel):
    seconds: float = 0.3


def build_slot_workflows(hatchet: Hatchet) -> list[Any]:
    @hatchet.task(name="t-slot-heavy", input_validator=Pause, slot_cost=2)
    async def heavy(input: Pause, ctx: Context) -> dict[str, Any]:  # noqa: A002
        await asyncio.sleep(input.seconds)
        return {"worker": ctx.worker_id}

    @hatchet.task(name="t-slot-whole", slot_cost=SLOT_WORKER_DEFAULT_UNITS)
    async def whole(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
        return {"worker": ctx.worker_id}

    @hatchet.task(name="t-slot-block", input_validator=Pause, slot_cost=SLOT_WORKER_DEFAULT_UNITS)
    async def block(input: Pause, ctx: Context) -> dict[str, Any]:  # noqa: A002
        await asyncio.sleep(input.seconds)  # the tests cancel it
        return {"worker": ctx.worker_id}

    @hatchet.task(name="t-slot-light")
    async def light(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
        return {"worker": ctx.worker_id}

    @hatchet.task(
        name="t-slot-too-big",
        slot_cost=SLOT_WORKER_DEFAULT_UNITS + 1,
        schedule_timeout=timedelta(seconds=1),
    )
    async def too_big(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
        return {"worker": ctx.worker_id}

    @hatchet.durable_task(name="t-slot-durable")
    async def durable(_input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
        return {"worker": ctx.worker_id}

    return [heavy, whole, block, light, too_big, durable]
