"""A run followed through its client: frames in order, once each, to the final status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from hatchway.client._connection import FAILING_CODES, Connection, Subscription
from hatchway.client._http import download
from hatchway.client._types import (
    FAILED_STATUSES,
    ConnectionCallback,
    ConnectionState,
    Frame,
    HatchwayError,
    RunFailedError,
    StatusFrame,
    is_final,
)
from hatchway.observability import logger

if TYPE_CHECKING:
    from hatchway.client._client import HatchwayClient

# A by-reference payload is tried this many times (as the JS client): the URL as sent,
# then each time with a URL minted afresh, the later ones after a backoff.
FETCH_ATTEMPTS = 4
# A refresh that fails so can never succeed (the frame is no longer retained...).
FETCH_FATAL_CODES = FAILING_CODES | {"closed"}


class Run:
    """A workflow run: ``frames()`` follows it, ``text()`` and ``result()`` sum it up.

    The run follows its stream once, however many iterations and awaits watch it:
    every frame delivered is kept in ``history`` (in order), ``last_seq`` is the
    highest ``seq`` delivered, ``final`` the final status once it came. It stops
    following (and unsubscribes) when nothing watches it any more.
    ``on_connection`` (optional) is called with each connection state."""

    def __init__(
        self,
        client: HatchwayClient,
        run_id: str,
        token: str,
        websocket_url: str,
        *,
        workflow: str | None = None,
        status: str | None = None,
        expires_at: str | None = None,
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.token = token
        self.websocket_url = websocket_url
        self.workflow = workflow
        self.status = status  # as POST /runs answered; the final status once known
        self.expires_at = expires_at
        self.last_seq = 0
        self.history: list[Frame] = []
        self.final: StatusFrame | None = None
        self.on_connection: ConnectionCallback | None = None
        self._start_after = 0
        self._follower: asyncio.Task[None] | None = None
        self._attached: tuple[Connection, Subscription] | None = None  # the follower's
        self._done: asyncio.Future[StatusFrame] | None = None
        self._queues: set[asyncio.Queue[Frame | BaseException | None]] = set()
        self._waiters = 0

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, status={self.status!r}, last_seq={self.last_seq})"

    def frames(self, after: int | None = None) -> AsyncIterator[Frame]:
        """Each sequenced frame (chunk, file, status, gap) with ``seq > after`` once, in
        order; the iteration ends after the final status. ``after`` defaults to 0 (the
        frames already delivered come first, from ``history``). Chunks sent by
        reference have ``data`` filled in (unless the client's ``fetch_references`` is
        off); a status sent by reference is the whole frame. Cancel the task (or use
        ``asyncio.timeout``) to stop: with nothing else watching, the run unsubscribes.
        Raises HatchwayError when the run cannot be followed (not_found, forbidden,
        unauthorized without ``get_token``)."""
        return self._iterate(after)

    async def text(self) -> str:
        """The whole streamed text: every chunk's ``data`` in seq order, once the run
        ended (whatever its status: ``result()`` tells it). A chunk left by reference
        (``fetch_references`` off) is fetched for it."""
        await self._until_final()
        parts = []
        for frame in self.history:
            if frame.get("type") != "chunk":
                continue
            if "data" not in frame and "url" in frame:
                fetched = await self._fetch(frame)
                if isinstance(fetched, bytes):
                    parts.append(fetched.decode())
                else:  # the refreshed frame came inline
                    parts.append(str(fetched.get("data", "")))
            else:
                parts.append(str(frame.get("data", "")))
        return "".join(parts)

    async def result(self) -> StatusFrame:
        """The final status frame, following the run to it if need be. Raises
        RunFailedError for FAILED, CANCELLED and TIMED_OUT."""
        final = await self._until_final()
        status = str(final.get("status"))
        if status in FAILED_STATUSES:
            error = final.get("error")
            raise RunFailedError(status, None if error is None else str(error), final)
        return final

    async def refresh(self, frame: Frame) -> Frame:
        """The same frame, read again from the run's log with a fresh ``url``
        (``GET /runs/{id}/frames?after=seq-1&limit=1``)."""
        seq = int(frame["seq"])
        page = await self._client.frames_page(self, max(seq - 1, 0), 1)
        frames = page.get("frames") or []
        if not frames or frames[0].get("seq") != seq:
            raise HatchwayError("not_found", f"frame {seq} of run {self.run_id} is not retained")
        fresh: Frame = frames[0]
        return fresh

    def close(self) -> None:
        """Stop following (unsubscribe): iterations end, ``text()`` and ``result()``
        waiting raise HatchwayError("closed"). A later call follows again."""
        for queue in list(self._queues):
            queue.put_nowait(None)
        self._queues.clear()
        if self._done is not None and not self._done.done():
            self._done.set_exception(
                HatchwayError("closed", f"stopped following run {self.run_id}")
            )
        self._detach()

    def notify(self, state: ConnectionState) -> None:
        callback = self.on_connection
        if callback is None:
            return
        try:
            callback(state)
        except Exception:  # noqa: BLE001 - the caller's callback must not stop the stream
            logger.exception("on_connection callback failed", run_id=self.run_id)

    # -- following: one follower task, many watchers ----------------------------------------

    async def _iterate(self, after: int | None) -> AsyncIterator[Frame]:
        queue: asyncio.Queue[Frame | BaseException | None] = asyncio.Queue()
        if not self.history and not self._following():
            self._start_after = after or 0  # nothing delivered yet: subscribe from there
        for frame in self.history:
            if after is None or int(frame["seq"]) > after:
                queue.put_nowait(frame)
        if self.final is not None:
            queue.put_nowait(None)
        else:
            self._queues.add(queue)
            self._ensure_following()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._queues.discard(queue)
            self._stop_if_unwatched()

    async def _until_final(self) -> StatusFrame:
        if self.final is not None:
            return self.final
        self._waiters += 1
        try:
            done = self._ensure_following()
            return await asyncio.shield(done)
        finally:
            self._waiters -= 1
            self._stop_if_unwatched()

    def _following(self) -> bool:
        return self._follower is not None and not self._follower.done()

    def _ensure_following(self) -> asyncio.Future[StatusFrame]:
        loop = asyncio.get_running_loop()
        if self._done is None or self._done.done():
            self._done = loop.create_future()
            self._done.add_done_callback(_retrieve)
        if not self._following():
            self._follower = loop.create_task(self._follow(self._done))
        return self._done

    def _stop_if_unwatched(self) -> None:
        if not self._queues and self._waiters == 0:
            self._detach()

    def _detach(self) -> None:
        """Stop the follower now: its subscription leaves the connection at once (the
        server is told unless another Run of this run still follows it) and the run is
        no longer following, so a call straight after starts a new follow (the old
        task, cancelled, cleans up only what is its own)."""
        follower, self._follower = self._follower, None
        if follower is None or follower.done():
            return
        follower.cancel()
        attached, self._attached = self._attached, None
        if attached is not None:
            connection, sub = attached
            connection.remove(sub)
        self.notify("closed")

    async def _follow(self, done: asyncio.Future[StatusFrame]) -> None:
        attached: tuple[Connection, Subscription] | None = None
        try:  # joining the connection too: whatever fails reaches the watchers
            connection = self._client.connection(self.websocket_url)
            sub = Subscription(self, self.last_seq if self.history else self._start_after)
            connection.add(sub)
            attached = self._attached = (connection, sub)
            await self._pump(sub, done)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - handed to every watcher, raised there
            for queue in list(self._queues):
                queue.put_nowait(error)
            if not done.done():
                done.set_exception(error)
        finally:
            if attached is not None:
                attached[0].remove(attached[1])  # nothing when _detach() removed it already
                if self._attached is attached:
                    self._attached = None
                    self.notify("closed")

    async def _pump(self, sub: Subscription, done: asyncio.Future[StatusFrame]) -> None:
        """The connection's frames for this run, resolved and delivered, to the final."""
        while True:
            item = await sub.queue.get()
            if isinstance(item, HatchwayError):
                raise item
            frame = await self._resolve(item, fetch_chunks=self._client.fetch_references)
            self._deliver(frame, done)
            if is_final(frame):
                return

    def _deliver(self, frame: Frame, done: asyncio.Future[StatusFrame]) -> None:
        self.history.append(frame)
        self.last_seq = max(self.last_seq, int(frame["seq"]))
        final = is_final(frame)
        if final:
            self.final = frame
            self.status = str(frame.get("status"))
        for queue in list(self._queues):
            queue.put_nowait(frame)
            if final:
                queue.put_nowait(None)
        if final and not done.done():
            done.set_result(frame)

    async def _resolve(self, frame: Frame, *, fetch_chunks: bool) -> Frame:
        kind = frame.get("type")
        if kind == "chunk" and "url" in frame and "data" not in frame and fetch_chunks:
            fetched = await self._fetch(frame)
            if not isinstance(fetched, bytes):
                return fetched  # the refreshed frame came inline
            return {**frame, "data": fetched.decode()}
        if kind == "status" and "url" in frame:
            fetched = await self._fetch(frame)
            if not isinstance(fetched, bytes):
                return fetched
            full = json.loads(fetched)
            if not isinstance(full, dict):
                raise HatchwayError("bad_response", f"status {frame['seq']}: not a frame")
            return full
        return frame

    async def _fetch(self, frame: Frame) -> bytes | Frame:
        """A by-reference payload, or the frame itself when /frames gave it back inline.

        Any failed try (a network error, a stall, an expired URL's 403, a 5xx) is tried
        again with a URL minted afresh through /frames, after a backoff from the third
        try on; after FETCH_ATTEMPTS the run fails with ``reference_unavailable``."""
        current = frame
        failure = "no try"
        status: int | None = None
        for attempt in range(FETCH_ATTEMPTS):
            if attempt > 1:
                await self._client.sleep(self._client.backoff.delay(attempt - 2))
            if attempt > 0:
                try:
                    current = await self.refresh(frame)
                except HatchwayError as error:
                    if error.code in FETCH_FATAL_CODES:
                        raise
                    failure = f"refreshing its url: {error}"
                    continue
            url = current.get("url")
            if not isinstance(url, str):
                return current  # the refreshed frame came inline
            session = await self._client.http()
            try:
                status, body = await download(session, url)
            except HatchwayError as error:  # unavailable: the network, a stalled read
                status, failure = None, str(error)
                continue
            if status == 200:
                return body
            failure = f"GET of its url answered {status}"
        raise HatchwayError(
            "reference_unavailable",
            f"run {self.run_id} seq {frame['seq']}: {failure} ({FETCH_ATTEMPTS} tries)",
            status,
        )


def _retrieve(future: asyncio.Future[StatusFrame]) -> None:
    """A failure nobody awaited is not "never retrieved": the watchers got it."""
    if not future.cancelled():
        future.exception()
