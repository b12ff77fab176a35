"""Delivery to one connection: its own queue and sender task, so one slow, gone
or throttled connection never delays another (websockets' broadcast advice).

Frames queued while a post is in flight go out together in the next post
(coalescing), packed under the 128 KB message limit. Frames whose payload is in
S3 get their presigned URL here, as they leave (``hatchway.payloads``). 429 backs off with jitter
and retries the same message: nothing is lost and order is kept. 410 ends the
sender and reports the connection gone, exactly that one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from hatchway.connections import (
    Connections,
    DeliveryError,
    StaleConnectionError,
    ThrottledError,
    UnavailableError,
)
from hatchway.observability import logger
from hatchway.payloads import PayloadError, Payloads, has_references
from hatchway.protocol import Frame, pack_messages

MAX_BACKOFF_S = 5.0
GIVE_UP_AFTER_S = 120.0  # a connection throttled this long is treated as gone


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

    def add(self, other: DeliveryStats) -> None:
        for name in ("posts", "frames", "bytes", "throttled", "gone", "failed", "unavailable"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ConnectionSender:
    connection_id: str
    connections: Connections
    executor: Executor
    on_gone: Callable[[str], Awaitable[None]]
    payloads: Payloads  # mints URLs for references as frames leave
    stats: DeliveryStats = field(default_factory=DeliveryStats)
    _queue: asyncio.Queue[list[Frame]] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    closed: bool = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def send(self, frames: list[Frame]) -> None:
        if frames and not self.closed:
            self._queue.put_nowait(frames)

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
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frames = await self._queue.get()
            self._busy = True
            try:
                while not self._queue.empty():  # coalesce what queued up meanwhile
                    frames = frames + self._queue.get_nowait()
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
                for message in messages:
                    if not await self._post(loop, message):
                        return
                self.stats.frames += len(frames)
            finally:
                self._busy = False

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
                if waited > GIVE_UP_AFTER_S or self.closed:
                    logger.error(
                        "could not mint URLs", connection_id=self.connection_id, error=str(error)
                    )
                    self.stats.failed += 1
                    return None
                await asyncio.sleep(delay)

    async def _post(self, loop: asyncio.AbstractEventLoop, message: str) -> bool:
        """True once posted; False when the connection is gone (the sender stops)."""
        attempt = 0
        waited = 0.0
        while True:
            try:
                await loop.run_in_executor(
                    self.executor, self.connections.post, self.connection_id, message
                )
            except StaleConnectionError:
                self.stats.gone += 1
                await self._gone()
                return False
            except (ThrottledError, UnavailableError) as error:  # retried as it is: in order
                if isinstance(error, ThrottledError):
                    self.stats.throttled += 1
                else:
                    self.stats.unavailable += 1
                delay = min(MAX_BACKOFF_S, 0.05 * 2**attempt) * random.uniform(0.5, 1.5)  # noqa: S311
                attempt += 1
                waited += delay
                if waited > GIVE_UP_AFTER_S:
                    logger.warning(
                        "connection throttled or unreachable too long",
                        connection_id=self.connection_id,
                        error=str(error),
                    )
                    await self._gone()
                    return False
                await asyncio.sleep(delay)
                continue
            except DeliveryError as error:
                self.stats.failed += 1
                logger.error("post failed", connection_id=self.connection_id, error=str(error))
                return True  # not retryable (413/403): skip this message, keep the connection
            self.stats.posts += 1
            self.stats.bytes += len(message.encode())
            return True

    async def _gone(self) -> None:
        self.closed = True
        await self.on_gone(self.connection_id)
