"""The demo workflows: what a Hatchway user's streaming tasks look like.

- ``demo-stream`` streams the Anna Karenina opening (the Hatchet streaming
  docs' example) in 10-character chunks with a short pause, then completes;
- ``demo-fail`` streams a few chunks, then raises.

Built by a function, not at import time: ``Hatchet()`` reads its settings
from the environment, which the caller sets first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib import resources
from typing import Any

from hatchet_sdk import Context, Hatchet, Worker
from hatchet_sdk.runnables.workflow import BaseWorkflow
from pydantic import BaseModel, Field

ANNA_KARENINA = resources.files(__package__).joinpath("anna_karenina.txt").read_text("utf-8")


def chunks(text: str, size: int) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


class StreamInput(BaseModel):
    chunk_size: int = Field(default=10, ge=1)
    pause_seconds: float = Field(default=0.05, ge=0, le=10)
    # Hatchet streams are live-only; the docs' example sleeps first so a consumer
    # can attach. Hatchway's relay marks what it missed instead, but a demo
    # that starts a moment later shows the whole text live.
    start_delay_seconds: float = Field(default=1.0, ge=0, le=60)


class FailInput(StreamInput):
    chunks_before_failing: int = Field(default=3, ge=0)
    message: str = "demo-fail failed on purpose"


class DemoFailedError(Exception):
    """Raised by demo-fail: the failure a user's task would report."""


def build_demo_workflows(hatchet: Hatchet) -> list[BaseWorkflow[Any]]:
    @hatchet.task(name="demo-stream", input_validator=StreamInput)
    async def demo_stream(input: StreamInput, ctx: Context) -> dict[str, int]:  # noqa: A002
        await asyncio.sleep(input.start_delay_seconds)
        count = 0
        for chunk in chunks(ANNA_KARENINA, input.chunk_size):
            await ctx.aio_put_stream(chunk)
            count += 1
            await asyncio.sleep(input.pause_seconds)
        return {"chunks": count, "characters": len(ANNA_KARENINA)}

    @hatchet.task(name="demo-fail", input_validator=FailInput)
    async def demo_fail(input: FailInput, ctx: Context) -> dict[str, int]:  # noqa: A002
        await asyncio.sleep(input.start_delay_seconds)
        for chunk in list(chunks(ANNA_KARENINA, input.chunk_size))[: input.chunks_before_failing]:
            await ctx.aio_put_stream(chunk)
            await asyncio.sleep(input.pause_seconds)
        raise DemoFailedError(input.message)

    return [demo_stream, demo_fail]


def demo_worker(hatchet: Hatchet, slots: int = 50) -> Worker:
    return hatchet.worker("hatchway-demo", slots=slots, workflows=build_demo_workflows(hatchet))
