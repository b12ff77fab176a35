"""A run followed through its client: frames in order, once each, to the final status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from hatchway.client._connection import Subscription
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

FETCH_ATTEMPTS = 3  # a by-reference payload: a 403 refreshes the URL, a 5xx waits a moment


class Run:
    """A workflow run: ``frames()`` follows it, ``text()`` and ``result()`` sum it up.

    ``last_seq`` is the highest ``seq`` delivered; ``on_connection`` (optional) is
    called with each connection state while the run is followed."""

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
        self.on_connection: ConnectionCallback | None = None
        self.final: StatusFrame | None = None

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, status={self.status!r}, last_seq={self.last_seq})"

    def frames(self, after: int | None = None) -> AsyncIterator[Frame]:
        """Each sequenced frame (chunk, file, status, gap) with ``seq > after`` once, in
        order; the iteration ends after the final status. Chunks sent by reference have
        ``data`` filled in (unless the client's ``fetch_references`` is off); a status
        sent by reference is the whole frame. Cancel the task (or ``asyncio.timeout``)
        to stop: the run unsubscribes. Raises HatchwayError when the run cannot be
        followed (not_found, forbidden, unauthorized without ``get_token``)."""
        return self._follow(after or 0, fetch_chunks=self._client.fetch_references)

    async def text(self) -> str:
        """The whole streamed text: every chunk's ``data`` from seq 1, in order, to the
        final status (whatever the status: ``result()`` tells it)."""
        parts = [
            str(frame["data"])
            async for frame in self._follow(0, fetch_chunks=True)
            if frame.get("type") == "chunk"
        ]
        return "".join(parts)

    async def result(self) -> StatusFrame:
        """The final status frame, following the run to it if need be (from
        ``last_seq``). Raises RunFailedError for FAILED, CANCELLED and TIMED_OUT."""
        if self.final is None:
            async for _ in self._follow(self.last_seq, fetch_chunks=False):
                pass
        final = self.final
        if final is None:  # pragma: no cover - _follow ends only at the final status
            raise HatchwayError("internal", f"run {self.run_id} ended without a final status")
        status = str(final.get("status"))
        if status in FAILED_STATUSES:
            error = final.get("error")
            raise RunFailedError(status, None if error is None else str(error), final)
        return final

    async def refresh(self, frame: Frame) -> Frame:
        """The same frame, read again from the run's log with a fresh ``url``
        (``GET /runs/{id}/frames?after=seq-1&limit=1``)."""
        seq = int(frame["seq"])
        page = await self._client.frames_page(self, seq - 1, 1)
        frames = page.get("frames") or []
        if not frames or frames[0].get("seq") != seq:
            raise HatchwayError("not_found", f"frame {seq} of run {self.run_id} is not retained")
        fresh: Frame = frames[0]
        return fresh

    def notify(self, state: ConnectionState) -> None:
        callback = self.on_connection
        if callback is None:
            return
        try:
            callback(state)
        except Exception:  # noqa: BLE001 - the caller's callback must not stop the stream
            logger.exception("on_connection callback failed", run_id=self.run_id)

    async def _follow(self, after: int, *, fetch_chunks: bool) -> AsyncIterator[Frame]:
        connection = self._client.connection(self.websocket_url)
        sub = Subscription(self, after)
        connection.add(sub)
        try:
            while True:
                item = await sub.queue.get()
                if isinstance(item, HatchwayError):
                    raise item
                frame = await self._resolve(item, fetch_chunks=fetch_chunks)
                self.last_seq = max(self.last_seq, int(frame["seq"]))
                if is_final(frame):
                    self.final = frame
                    self.status = str(frame.get("status"))
                yield frame
                if is_final(frame):
                    return
        finally:
            connection.remove(sub)
            self.notify("closed")

    async def _resolve(self, frame: Frame, *, fetch_chunks: bool) -> Frame:
        kind = frame.get("type")
        if kind == "chunk" and "url" in frame and "data" not in frame and fetch_chunks:
            body = await self._fetch(frame)
            return {**frame, "data": body.decode()}
        if kind == "status" and "url" in frame:
            full = json.loads(await self._fetch(frame))
            if not isinstance(full, dict):
                raise HatchwayError("bad_response", f"status {frame['seq']}: not a frame")
            return full
        return frame

    async def _fetch(self, frame: Frame) -> bytes:
        """A by-reference payload; an expired URL (403) is refreshed through /frames."""
        current = frame
        status = 0
        for attempt in range(FETCH_ATTEMPTS):
            status, body = await download(await self._client.http(), str(current["url"]))
            if status == 200:
                return body
            if status == 403:
                current = await self.refresh(frame)
            elif status >= 500:
                await self._client.sleep(self._client.backoff.delay(attempt))
            else:
                break
        raise HatchwayError(
            "reference_unavailable",
            f"run {self.run_id} seq {frame['seq']}: GET of its url answered {status}",
            status,
        )
