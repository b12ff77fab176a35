"""Delivery to one connection: its own queue and sender task, so one slow, gone
or throttled connection never delays another (websockets' broadcast advice).

Coalescing adapts to the traffic: the first frames after a quiet spell go out at
once; after that a connection gets at most one message per ``interval_s`` (the
coalescing window, ``RELAY_COALESCE_MS``), holding every frame that queued up
meanwhile, packed under the 128 KB message limit. API Gateway bills per message,
so a busy stream costs a message per window, not one per chunk. Posts go over
the relay's async management API client, on the event loop. Frames whose payload is in
S3 get their presigned URL here, as they leave (``hatchway.payloads``). 429 backs off with jitter
and retries the same message: nothing is lost and order is kept. 410 ends the
sender and reports the connection gone, exactly that one.

A connection that cannot keep up is shed, never waited for: when more than
``max_queued_bytes`` wait for it, or no post got through for ``stall_s``, it is
told with a ``too_slow`` error frame (best effort) and disconnected; it resumes
with ``after`` like any reconnecting client. Its memory and its place in the
relay are freed, and no other connection waits on it meanwhile.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, fields
from typing import Protocol

from hatchway import metrics as m
from hatchway.connections import (
    DeliveryError,
    StaleConnectionError,
    ThrottledError,
    UnavailableError,
)
from hatchway.observability import logger
from hatchway.payloads import PayloadError, Payloads, has_references
from hatchway.protocol import ErrorCode, Frame, error_frame, pack_messages

MAX_BACKOFF_S = 5.0
STALL_S = 120.0  # no post through for this long (429s, timeouts): shed
MAX_QUEUED_BYTES = 16 * 1024 * 1024  # frames waiting for one connection: shed beyond
FRAME_OVERHEAD_BYTES = 100  # a frame's JSON around its data, for the estimate


class ManagementApi(Protocol):
    """What a sender needs of the management API (``AsyncConnections``)."""

    async def post(self, connection_id: str, data: str | bytes) -> None: ...

    async def close(self, connection_id: str) -> None: ...


@dataclass
class DeliveryStats:
    """What delivery costs: API Gateway bills per message and per 32 KB frame."""

    posts: int = 0
    frames: int = 0
    bytes: int = 0
    throttled: int = 0
    gone: int = 0
    failed: int = 0
    unavailable: int = 0  # 5xx or no answer, retried
    shed: int = 0  # connections disconnected because they could not keep up

    def add(self, other: DeliveryStats) -> None:
        for counter in fields(self):
            setattr(self, counter.name, getattr(self, counter.name) + getattr(other, counter.name))


@dataclass
class ConnectionSender:
    connection_id: str
    connections: ManagementApi
    executor: Executor  # for minting URLs (signing may fetch credentials)
    on_gone: Callable[[str], Awaitable[None]]
    payloads: Payloads  # mints URLs for references as frames leave
    max_queued_bytes: int = MAX_QUEUED_BYTES
    stall_s: float = STALL_S
    interval_s: float = 0.0  # at most one message per window while busy
    metrics: m.RelayMetrics | None = None  # the relay's counters (posts, 410s, 429s, lag)
    # Told of each batch posted: its frames, messages and 32 KB message units (a run's cost).
    on_posted: Callable[[list[Frame], int, int], None] | None = None
    _last_post: float = float("-inf")
    stats: DeliveryStats = field(default_factory=DeliveryStats)
    _queue: asyncio.Queue[tuple[list[Frame], int, float | None]] = field(
        default_factory=asyncio.Queue
    )
    _task: asyncio.Task[None] | None = None
    _shedding: asyncio.Task[None] | None = None
    queued_bytes: int = 0  # about what waits in the queue (data plus a frame's overhead)
    closed: bool = False
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _received_at: float | None = None  # the oldest Hatchet receipt in the batch being sent

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def send(self, frames: list[Frame], received_at: float | None = None) -> None:
        """``received_at``: when the oldest frame's Hatchet event was received
        (monotonic), for the delivery lag; None for a backlog."""
        if not frames or self.closed:
            return
        size = estimate_bytes(frames)
        self._queue.put_nowait((frames, size, received_at))
        self.queued_bytes += size
        if self.queued_bytes > self.max_queued_bytes:
            self._shed(f"{self.queued_bytes} bytes were waiting for it")

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._busy

    _busy: bool = False

    async def drain(self, timeout_s: float) -> None:
        """Wait until everything queued was posted (or the timeout passed)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.closed and not self.idle and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - shutdown only
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.closed = True
        self._drop_queue()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _shed(self, why: str) -> None:
        """Stop sending to this connection: tell it (best effort), disconnect it,
        report it gone. Runs apart from the sender task, which may be mid-post."""
        if self.closed:
            return
        self.closed = True
        self.stats.shed += 1
        self._drop_queue()
        logger.warning(
            "connection shed: it cannot keep up", connection_id=self.connection_id, why=why
        )
        self._shedding = asyncio.get_running_loop().create_task(self._disconnect(why))

    async def _disconnect(self, why: str) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        message = pack_messages(
            [
                error_frame(
                    ErrorCode.TOO_SLOW,
                    f"this connection could not keep up ({why}): reconnect and subscribe"
                    " with after = the last seq you processed",
                )
            ]
        )[0]
        try:
            await self._best_effort(self.connections.post(self.connection_id, message))
            await self._best_effort(self.connections.close(self.connection_id))
        finally:
            await self.on_gone(self.connection_id)

    async def _best_effort(self, call: Awaitable[None]) -> None:
        try:
            await asyncio.wait_for(call, self.stall_s)
        except (DeliveryError, TimeoutError) as error:  # gone already, or still not reading
            logger.info("shedding", connection_id=self.connection_id, error=repr(error))
        except Exception as error:  # noqa: BLE001 - e.g. the session closed: it is gone anyway
            logger.warning("shedding failed", connection_id=self.connection_id, error=str(error))

    def _drop_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self.queued_bytes = 0
        self._room.set()

    def _take(self, entry: tuple[list[Frame], int, float | None]) -> list[Frame]:
        frames, size, received_at = entry
        self.queued_bytes -= size
        if self.queued_bytes <= self.max_queued_bytes // 2:
            self._room.set()
        oldest = self._received_at
        if received_at is not None and (oldest is None or received_at < oldest):
            self._received_at = received_at  # the oldest in the batch
        return frames

    async def wait_for_room(self) -> None:
        """Until at most half the bound waits (or the sender closed): a backlog is
        handed over a page at a time, as the connection takes it, never past the bound."""
        while not self.closed and self.queued_bytes > self.max_queued_bytes // 2:
            self._room.clear()
            await self._room.wait()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frames = self._take(await self._queue.get())
            self._busy = True
            try:
                wait = self._last_post + self.interval_s - loop.time()
                if wait > 0:  # busy: this window's frames go together
                    await asyncio.sleep(wait)
                while not self._queue.empty():  # coalesce what queued up meanwhile
                    frames = frames + self._take(self._queue.get_nowait())
                if has_references(frames):  # URLs are minted now, as the frames leave
                    presigned = await self._presign(loop, frames)
                    if presigned is None:
                        continue
                    frames = presigned
                try:
                    messages = pack_messages(frames)
                except ValueError as error:  # an oversized frame: a bug upstream of us
                    logger.error(
                        "frame too large to send",
                        connection_id=self.connection_id,
                        error=str(error),
                    )
                    self.stats.failed += 1
                    continue
                self._last_post = loop.time()
                for message in messages:
                    if not await self._post(loop, message):
                        return
                self.stats.frames += len(frames)
                self._posted(frames, messages)
            except Exception:  # noqa: BLE001 - a bug must not silence this connection unseen
                logger.exception("sending failed", connection_id=self.connection_id)
                self.stats.failed += 1
            finally:
                self._busy = False
                self._received_at = None

    def _posted(self, frames: list[Frame], messages: list[str]) -> None:
        received_at = self._received_at  # reset by _run once the batch is done
        if self.metrics is not None and received_at is not None:
            self.metrics.lag((time.monotonic() - received_at) * 1000)
        if self.on_posted is not None:
            units = sum(m.message_units(len(message.encode())) for message in messages)
            self.on_posted(frames, len(messages), units)

    async def _presign(
        self, loop: asyncio.AbstractEventLoop, frames: list[Frame]
    ) -> list[Frame] | None:
        """The frames with fresh URLs (signing may fetch credentials: off the loop).
        Retried like a throttled post; None once that took too long (logged)."""
        attempt = 0
        waited = 0.0
        while True:
            try:
                return await loop.run_in_executor(self.executor, self.payloads.presign, frames)
            except PayloadError as error:
                delay = min(MAX_BACKOFF_S, 0.05 * 2**attempt) * random.uniform(0.5, 1.5)  # noqa: S311
                attempt += 1
                waited += delay
                if waited > self.stall_s or self.closed:
                    logger.error(
                        "could not mint URLs", connection_id=self.connection_id, error=str(error)
                    )
                    self.stats.failed += 1
                    return None
                await asyncio.sleep(delay)

    async def _post(self, loop: asyncio.AbstractEventLoop, message: str) -> bool:
        """True once posted; False when the connection is gone or shed (the sender stops)."""
        attempt = 0
        first_try = loop.time()
        while True:
            try:
                await self.connections.post(self.connection_id, message)
            except StaleConnectionError:
                self.stats.gone += 1
                self._count(m.POSTS_410)
                await self._gone()
                return False
            except (ThrottledError, UnavailableError) as error:  # retried as it is: in order
                if isinstance(error, ThrottledError):
                    self.stats.throttled += 1
                    self._count(m.POSTS_429)
                else:
                    self.stats.unavailable += 1
                delay = min(MAX_BACKOFF_S, 0.05 * 2**attempt) * random.uniform(0.5, 1.5)  # noqa: S311
                attempt += 1
                if loop.time() - first_try > self.stall_s:
                    self._shed(f"no post got through for {self.stall_s:g} s: {error}")
                    return False
                await asyncio.sleep(delay)
                continue
            except DeliveryError as error:
                self.stats.failed += 1
                logger.error("post failed", connection_id=self.connection_id, error=str(error))
                return True  # not retryable (413/403): skip this message, keep the connection
            self.stats.posts += 1
            self.stats.bytes += len(message.encode())
            self._count(m.POSTS)
            return True

    def _count(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.add(name)

    async def _gone(self) -> None:
        self.closed = True
        await self.on_gone(self.connection_id)


def estimate_bytes(frames: list[Frame]) -> int:
    """About how many bytes ``frames`` take as JSON, without encoding them."""
    return sum(len(frame.get("data") or "") + FRAME_OVERHEAD_BYTES for frame in frames)
