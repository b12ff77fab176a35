"""The demo workflows: what a Hatchway user's streaming tasks look like.

- ``demo-stream`` streams the Anna Karenina opening (the Hatchet streaming
  docs' example) in 10-character chunks with a short pause, then completes;
- ``demo-fail`` streams a few chunks, then raises;
- ``demo-file`` puts a file (1 MiB of pseudo-random bytes by default, any size:
  generated as it is read, never held whole) with ``hatchway.worker.aput_file``,
  then completes with its size and sha256;
- ``demo-big-chunk`` streams one 300 KiB chunk (over API Gateway's 128 KB: the
  relay sends it through S3), optionally between small chunks, then completes;
- ``demo-ticks`` streams ``count`` JSON chunks ``{"n", "sentAt", "pad"}`` at a set
  rate, each stamped with the wall clock as it is put (``sentAt``, epoch ms): a
  client on the same machine measures delivery latency from it (benchmarks).

Built by a function, not at import time: ``Hatchet()`` reads its settings
from the environment, which the caller sets first.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

from hatchet_sdk import Context, Hatchet, Worker
from hatchet_sdk.runnables.workflow import BaseWorkflow
from pydantic import BaseModel, Field

from hatchway.payloads import Payloads
from hatchway.worker import aput_file, payloads_from_environment

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


class FileInput(BaseModel):
    size_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024**3)
    name: str = Field(default="demo-file.bin", min_length=1, max_length=255)
    content_type: str = Field(default="application/octet-stream", min_length=1, max_length=255)
    seed: int = 6
    start_delay_seconds: float = Field(default=1.0, ge=0, le=60)


class BigChunkInput(BaseModel):
    size_bytes: int = Field(default=300 * 1024, ge=1, le=3 * 1024 * 1024)  # Hatchet: 4 MB
    chunks_around: int = Field(default=0, ge=0, le=1000)  # small chunks before and after
    start_delay_seconds: float = Field(default=1.0, ge=0, le=60)


class TicksInput(BaseModel):
    count: int = Field(default=100, ge=1, le=100_000)
    rate_per_second: float = Field(default=20.0, gt=0, le=1000)
    pad_bytes: int = Field(default=0, ge=0, le=64 * 1024)  # random text making each chunk larger
    start_delay_seconds: float = Field(default=1.0, ge=0, le=60)


class DemoFile(io.RawIOBase):
    """``size`` pseudo-random bytes from ``seed``, made as they are read (the same
    bytes however they are read): a file of any size in constant memory."""

    BLOCK = 64 * 1024

    def __init__(self, size: int, seed: int = 6) -> None:
        super().__init__()
        self._random = random.Random(seed)  # noqa: S311 - demo content, not secrets
        self._left = size
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer
        if not self._buffer and self._left > 0:
            block = self._random.randbytes(self.BLOCK)[: self._left]
            self._left -= len(block)
            self._buffer = block
        count = min(len(buffer), len(self._buffer))
        buffer[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def big_chunk(size: int) -> str:
    """``size`` ASCII characters (so bytes too): the opening, numbered, over and over."""
    parts: list[str] = []
    length = 0
    number = 0
    while length < size:
        number += 1
        part = f"[{number}] {ANNA_KARENINA}\n"
        parts.append(part)
        length += len(part)
    return "".join(parts)[:size]


class DemoFailedError(Exception):
    """Raised by demo-fail: the failure a user's task would report."""


def build_demo_workflows(hatchet: Hatchet, payloads: Payloads) -> list[BaseWorkflow[Any]]:
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

    @hatchet.task(name="demo-file", input_validator=FileInput)
    async def demo_file(input: FileInput, ctx: Context) -> dict[str, Any]:  # noqa: A002
        await asyncio.sleep(input.start_delay_seconds)
        source = io.BufferedReader(DemoFile(input.size_bytes, input.seed), 1024 * 1024)
        stored = await aput_file(
            ctx, source, payloads=payloads, name=input.name, content_type=input.content_type
        )
        return {"name": stored.name, "size": stored.size, "sha256": stored.sha256}

    @hatchet.task(name="demo-big-chunk", input_validator=BigChunkInput)
    async def demo_big_chunk(input: BigChunkInput, ctx: Context) -> dict[str, int]:  # noqa: A002
        await asyncio.sleep(input.start_delay_seconds)
        for number in range(input.chunks_around):
            await ctx.aio_put_stream(f"before {number + 1}. ")
        await ctx.aio_put_stream(big_chunk(input.size_bytes))
        for number in range(input.chunks_around):
            await ctx.aio_put_stream(f"after {number + 1}. ")
        return {"bytes": input.size_bytes, "chunks": 1 + 2 * input.chunks_around}

    @hatchet.task(name="demo-ticks", input_validator=TicksInput)
    async def demo_ticks(input: TicksInput, ctx: Context) -> dict[str, int]:  # noqa: A002
        await asyncio.sleep(input.start_delay_seconds)
        noise = random.Random(input.count)  # noqa: S311 - filler, not secrets
        started = time.monotonic()
        for number in range(input.count):
            # Random text: the bytes cost what they say, however a link compresses.
            pad = base64.b64encode(noise.randbytes(input.pad_bytes * 3 // 4)).decode()
            tick = {"n": number, "sentAt": time.time() * 1000, "pad": pad}
            await ctx.aio_put_stream(json.dumps(tick, separators=(",", ":")))
            # On a schedule, not after a fixed pause: a slow put does not slow the rate.
            due = started + (number + 1) / input.rate_per_second
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        return {"ticks": input.count}

    return [demo_stream, demo_fail, demo_file, demo_big_chunk, demo_ticks]


def demo_worker(hatchet: Hatchet, slots: int = 50) -> Worker:
    workflows = build_demo_workflows(hatchet, payloads_from_environment())
    return hatchet.worker("hatchway-demo", slots=slots, workflows=workflows)
