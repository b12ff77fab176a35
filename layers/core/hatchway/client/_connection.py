"""One WebSocket per URL, shared by every run a client follows there.

The connection connects with the ``?token=`` of one active run and subscribes each
run with its own token and ``after`` = the highest ``seq`` it received, on every
(re)open. Frames with ``seq <= after`` are dropped, so each reaches its run once, in
order. Several Run objects of one run id may follow it through one client: each is a
subscription of its own and gets every frame; the server is told ``unsubscribe`` when
the last of them leaves. Drops are retried with full-jitter capped exponential
backoff; after ``fallback_after`` consecutive failed connects every run catches up
over ``GET /runs/{id}/frames`` before the WebSocket is tried again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from yarl import URL

from hatchway.client._backoff import Backoff
from hatchway.client._types import ConnectionState, Frame, HatchwayError, Sleep, is_final
from hatchway.observability import logger

if TYPE_CHECKING:
    from hatchway.client._run import Run

PAGE_LIMIT = 500  # frames per GET /runs/{id}/frames page in the fallback
PING_INTERVAL_S = 240.0  # below API Gateway's 10-minute idle timeout
# The run can never be followed as asked: it fails with the server's error.
FAILING_CODES = frozenset({"not_found", "forbidden", "bad_request", "too_large"})
MAX_UNAUTHORIZED_STREAK = 3  # renewed tokens refused in a row, no frame between: give up
RATE_LIMIT_RETRY_S = 1.0  # messages over the rate are dropped unanswered


class Owner(Protocol):
    """What a connection needs from its client."""

    backoff: Backoff
    sleep: Sleep
    fallback_after: int

    async def http(self) -> aiohttp.ClientSession: ...

    async def renew_token(self, run: Run) -> bool: ...

    async def frames_page(self, run: Run, after: int, limit: int) -> dict[str, Any]: ...


class Subscription:
    """One run followed on a connection: what it received, queued for its reader."""

    def __init__(self, run: Run, after: int) -> None:
        self.run = run
        self.received = after  # the highest seq queued: the next subscribe's `after`
        self.queue: asyncio.Queue[Frame | HatchwayError] = asyncio.Queue()
        self.renewing = False
        self.unauthorized_streak = 0


class Connection:
    def __init__(self, owner: Owner, url: str) -> None:
        self.owner = owner
        self.url = url
        self.state: ConnectionState = "closed"
        self.opens = 0  # WebSocket connections opened so far
        self._subs: dict[str, list[Subscription]] = {}  # by run id, never an empty list
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        # Runs whose latest subscribe the open socket answered `subscribed` for (the
        # rate_limited retry sends the others again).
        self._confirmed: set[str] = set()
        self._rate_retry: asyncio.Task[None] | None = None

    # -- runs join and leave -------------------------------------------------------------

    def add(self, sub: Subscription) -> None:
        if self._closed:
            raise HatchwayError("closed", "the client is closed")
        self._subs.setdefault(sub.run.run_id, []).append(sub)
        if self.state != "closed":
            sub.run.notify(self.state)
        if self._ws is not None and not self._ws.closed:
            self._spawn(self._subscribe(self._ws, sub))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._supervise())

    def remove(self, sub: Subscription) -> None:
        """The reader stopped (final status, error, cancelled): unsubscribe if it was
        still on and no other subscription follows its run."""
        if self._drop(sub):
            self._spawn(self._unsubscribe(sub.run.run_id))

    async def close(self) -> None:
        self._closed = True
        for sub in self._all():
            self._fail(sub, HatchwayError("closed", "the client was closed"))
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()

    # -- the socket's life -----------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            await self._keep_connected()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a bug of ours: the runs fail, not hang
            logger.exception("connection failed", url=self.url)
            for sub in self._all():
                self._fail(sub, HatchwayError("internal", f"the connection failed: {error!r}"))
            self._set_state("closed")

    async def _keep_connected(self) -> None:
        retry = 0  # retries since the socket was last open: the backoff's exponent
        failures = 0  # consecutive failed connects: the fallback's counter
        first = True
        while self._subs and not self._closed:
            if not first:
                self._set_state("reconnecting")
                await self.owner.sleep(self.owner.backoff.delay(retry))
                retry += 1
                if not self._subs:
                    break
            else:
                self._set_state("connecting")
            first = False
            ws = await self._connect()
            if ws is None:
                failures += 1
                if failures >= self.owner.fallback_after:
                    await self._fall_back()
                continue
            retry = failures = 0
            try:
                await self._serve(ws)
            finally:
                self._ws = None
                if not ws.closed:
                    await ws.close()
        self._set_state("closed")

    async def _connect(self) -> aiohttp.ClientWebSocketResponse | None:
        sub = self._all()[0]
        url = URL(self.url).update_query(token=sub.run.token)
        session = await self.owner.http()
        try:
            return await session.ws_connect(url, max_msg_size=0, autoping=True)
        except aiohttp.WSServerHandshakeError as error:
            logger.info("websocket refused", url=self.url, status=error.status)
            if error.status in (401, 403):
                sub.unauthorized_streak += 1
                if sub.unauthorized_streak > MAX_UNAUTHORIZED_STREAK or not await self._renew(sub):
                    refused = HatchwayError("unauthorized", "$connect refused the run token", 401)
                    self._fail(sub, refused)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            logger.info("websocket connect failed", url=self.url, error=repr(error))
        return None

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._confirmed.clear()
        self.opens += 1
        self._set_state("open")
        for sub in self._all():
            await self._subscribe(ws, sub)
        if not self._subs:
            return
        pinger = self._spawn(self._ping(ws))
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    try:
                        self._on_message(str(message.data))
                    except Exception:  # noqa: BLE001 - one bad message must not end the socket
                        logger.exception("message handling failed", url=self.url)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    logger.info("websocket error", url=self.url, error=repr(ws.exception()))
                    break
        except (aiohttp.ClientError, OSError) as error:
            logger.info("websocket lost", url=self.url, error=repr(error))
        finally:
            pinger.cancel()
        logger.debug("websocket closed", url=self.url, code=ws.close_code)

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(PING_INTERVAL_S)
            await self._send(ws, {"action": "ping"})

    async def _fall_back(self) -> None:
        """Catch every run up over HTTP, then let the WebSocket be tried again."""
        self._set_state("fallback")
        for sub in self._all():
            await self._catch_up(sub)

    async def _catch_up(self, sub: Subscription) -> None:
        renewed = False
        while self._has(sub):
            try:
                page = await self.owner.frames_page(sub.run, sub.received, PAGE_LIMIT)
            except HatchwayError as error:
                if error.code == "unauthorized" and not renewed and await self._renew(sub):
                    renewed = True
                    continue
                if error.code in FAILING_CODES or error.code == "unauthorized":
                    self._fail(sub, error)
                else:
                    logger.info("fallback failed", run_id=sub.run.run_id, error=str(error))
                return
            frames = page.get("frames") or []
            for frame in frames:
                self._deliver(sub.run.run_id, frame)
            if page.get("final") or not frames:
                return

    # -- messages ----------------------------------------------------------------------------

    def _on_message(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            logger.warning("not JSON from the server", url=self.url, text=text[:200])
            return
        if not isinstance(message, dict):
            return
        frames = message.get("frames") if message.get("type") == "batch" else [message]
        for frame in frames if isinstance(frames, list) else []:
            if isinstance(frame, dict):
                self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        run_id = frame.get("runId")
        kind = frame.get("type")
        if isinstance(frame.get("seq"), int) and isinstance(run_id, str):
            self._deliver(run_id, frame)
        elif kind == "subscribed" and isinstance(run_id, str) and run_id in self._subs:
            self._confirmed.add(run_id)
        elif kind == "error":
            self._on_error(frame)

    def _deliver(self, run_id: str, frame: Frame) -> None:
        seq = frame.get("seq")
        if not isinstance(seq, int):
            return
        for sub in list(self._subs.get(run_id, ())):  # none: not followed here
            if seq <= sub.received:
                continue  # a frame re-sent across a reconnect (or for another Run's after)
            sub.received = seq
            sub.unauthorized_streak = 0
            sub.queue.put_nowait(frame)
            if is_final(frame):  # nothing follows it: the run leaves the socket
                self._drop(sub)
                self._close_if_idle()

    def _on_error(self, frame: Frame) -> None:
        code = str(frame.get("code"))
        message = str(frame.get("message", ""))
        run_id = frame.get("runId")
        subs = list(self._subs.get(run_id, ())) if isinstance(run_id, str) else []
        if code == "rate_limited" and (self._rate_retry is None or self._rate_retry.done()):
            self._rate_retry = self._spawn(self._resubscribe_unconfirmed())
        if not subs:
            logger.info("server error", url=self.url, code=code, detail=message)
            return
        self._confirmed.discard(str(run_id))  # the server ended or refused its subscription
        for sub in subs:
            self._on_run_error(sub, code, message)

    def _on_run_error(self, sub: Subscription, code: str, message: str) -> None:
        run_id = sub.run.run_id
        if code == "unauthorized":
            sub.unauthorized_streak += 1
            if sub.unauthorized_streak > MAX_UNAUTHORIZED_STREAK:
                self._fail(sub, HatchwayError(code, message))
            elif not sub.renewing:
                self._spawn(self._renew_and_resubscribe(sub, message))
        elif code in FAILING_CODES:
            self._fail(sub, HatchwayError(code, message))
        else:
            logger.warning("subscription error", run_id=run_id, code=code, detail=message)
            if code == "internal":
                self._spawn(self._resubscribe_later(sub))

    async def _renew_and_resubscribe(self, sub: Subscription, message: str) -> None:
        if not await self._renew(sub):
            self._fail(sub, HatchwayError("unauthorized", message))
            return
        ws = self._ws
        if ws is not None and not ws.closed and self._has(sub):
            await self._subscribe(ws, sub)

    async def _resubscribe_later(self, sub: Subscription) -> None:
        await self.owner.sleep(self.owner.backoff.delay(1))
        ws = self._ws
        if ws is not None and not ws.closed and self._has(sub):
            await self._subscribe(ws, sub)

    async def _resubscribe_unconfirmed(self) -> None:
        await self.owner.sleep(RATE_LIMIT_RETRY_S)
        self._rate_retry = None  # a rate_limited from here on is retried again
        ws = self._ws
        if ws is None or ws.closed:
            return  # a reopen subscribes them all
        for sub in self._all():
            if sub.run.run_id not in self._confirmed:
                await self._subscribe(ws, sub)

    async def _renew(self, sub: Subscription) -> bool:
        """A fresh token for the run from the client's get_token: False without one."""
        sub.renewing = True
        try:
            return await self.owner.renew_token(sub.run)
        except Exception as error:  # noqa: BLE001 - the caller's callback: the run fails
            self._fail(sub, HatchwayError("unauthorized", f"get_token failed: {error!r}"))
            return False
        finally:
            sub.renewing = False

    # -- sending -------------------------------------------------------------------------------

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse, sub: Subscription) -> None:
        message = {
            "action": "subscribe",
            "runId": sub.run.run_id,
            "token": sub.run.token,
            "after": sub.received,
        }
        self._confirmed.discard(sub.run.run_id)  # until this one is answered `subscribed`
        await self._send(ws, message)

    async def _unsubscribe(self, run_id: str) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            await self._send(ws, {"action": "unsubscribe", "runId": run_id})
        self._close_if_idle()

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        try:
            await ws.send_str(json.dumps(message))
        except (aiohttp.ClientError, OSError, RuntimeError) as error:
            # Closing: the supervisor reconnects and subscribes again.
            logger.info("send failed", url=self.url, error=repr(error))

    # -- helpers ---------------------------------------------------------------------------------

    def _all(self) -> list[Subscription]:
        return [sub for subs in self._subs.values() for sub in subs]

    def _has(self, sub: Subscription) -> bool:
        return any(s is sub for s in self._subs.get(sub.run.run_id, ()))

    def _drop(self, sub: Subscription) -> bool:
        """Forget the subscription: True when it was the last of its run here."""
        run_id = sub.run.run_id
        subs = self._subs.get(run_id, [])
        if not any(s is sub for s in subs):
            return False
        subs[:] = [s for s in subs if s is not sub]
        if subs:
            return False
        del self._subs[run_id]
        self._confirmed.discard(run_id)
        return True

    def _fail(self, sub: Subscription, error: HatchwayError) -> None:
        self._drop(sub)
        sub.queue.put_nowait(error)
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        ws = self._ws
        if not self._subs and ws is not None and not ws.closed:
            self._spawn(self._close_idle(ws))

    async def _close_idle(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if not self._subs and not ws.closed:  # still idle: no run joined in between
            await ws.close()

    def _set_state(self, state: ConnectionState) -> None:
        self.state = state
        for sub in self._all():
            sub.run.notify(state)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
