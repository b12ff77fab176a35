"""Following one run: Hatchet events in, sequenced frames out.

The follower holds the run's lease. It turns each Hatchet event into a frame
with the next ``seq``, appends frames to the log in coalesced batches (the log
write comes first: what was received is never lost), then hands them to the
run's subscribers. It resubscribes when Hatchet's stream breaks, marks a
``gap`` where stream events were missed (told by each task's ``event_index``),
and asks Hatchet for the run's status when the stream ends without the run's
final event, so the final status always arrives.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import grpc

from hatchway.hatchet_adapter import HatchetEvent, HatchetEvents
from hatchway.observability import logger
from hatchway.payloads import (
    PayloadError,
    Payloads,
    log_batches,
    offload_frames,
    stream_frame,
)
from hatchway.protocol import (
    FINAL_STATUSES,
    ErrorCode,
    Frame,
    chunk_frame,
    error_frame,
    gap_frame,
    status_frame,
    unsubscribed_frame,
)
from hatchway.store import LeaseLostError, RunRecord, Store, Subscription

from .fanout import ConnectionSender

RESUBSCRIBE_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
BACKLOG_PAGE = 1000  # frames read from the log at a time for a new subscriber
LOG_MAX_BACKOFF_S = 2.0


class LogUnavailableError(Exception):
    """The frame log stayed unwritable past the bound: the run is handed back (its
    queue message released, never deleted), so another try ends its sequence."""


@dataclass
class Subscriber:
    connection_id: str
    cursor: int  # the highest seq handed to its sender
    token_expires_at: int = 0  # epoch seconds; 0: not known (never expires here)
    live: bool = False  # False while its backlog is read from the log
    held: list[Frame] = field(default_factory=list)


class RunFollower:
    def __init__(
        self,
        run: RunRecord,
        *,
        owner: str,
        store: Store,
        hatchet: HatchetEvents,
        executor: Executor,
        sender_for: Callable[[str], ConnectionSender],
        coalesce_s: float,
        payloads: Payloads,
        log_retry_s: float = 60.0,
    ) -> None:
        self.run_id = run.run_id
        self._payloads = payloads  # S3 for large frames
        self.owner = owner
        self._store = store
        self._hatchet = hatchet
        self._executor = executor
        self._sender_for = sender_for
        self._coalesce_s = coalesce_s
        self._log_retry_s = log_retry_s  # how long one append is retried before giving up
        self._following: asyncio.Task[Any] | None = None
        self._failure: BaseException | None = None  # a scheduled flush's, for follow()
        self.logged_seq = run.last_seq  # highest seq in the log
        self._next_seq = run.last_seq + 1
        self.status = run.status
        self._indexes: dict[str, int] = dict(run.stream_indexes or {})
        self._took_over = run.last_seq > 0  # another relay wrote before us
        self._pending: list[Frame] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_lock = asyncio.Lock()
        self.subscribers: dict[str, Subscriber] = {}
        self.finished = asyncio.Event()
        self.lease_lost = False
        self.handing_over = False
        self.log_writes = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    async def _io(self, function: Callable[..., Any], *args: Any) -> Any:  # noqa: ANN401
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- following Hatchet -------------------------------------------------------------

    async def follow(self, events: AsyncIterator[HatchetEvent] | None = None) -> None:
        """Run until the run's final frame is logged (or the lease is lost).

        ``events``: a subscription opened before this relay held the lease (a
        handover); what the previous holder logged already is dropped by index.
        Raises what made a flush fail (LogUnavailableError, PayloadError at the end)."""
        self._following = asyncio.current_task()
        try:
            await self._follow(events)
        except asyncio.CancelledError:
            if self._failure is None:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # we are a task
            raise self._failure from None
        finally:
            self._following = None
        if self._failure is not None:
            raise self._failure

    async def _follow(self, events: AsyncIterator[HatchetEvent] | None) -> None:
        for subscription in await self._io(self._store.subscriptions_of_run, self.run_id):
            if subscription.removed:  # unsubscribed while no relay held the run
                await self.unsubscribe(subscription.connection_id)
            else:
                await self.add_subscriber(subscription)
        attempt = 0
        while not self.final and not self.lease_lost:
            saw_events = False
            stream, events = events or self._hatchet.events(self.run_id), None
            try:
                async for event in stream:
                    saw_events = True
                    attempt = 0
                    self._on_event(event)
                    if event.hangup:
                        break
            except grpc.aio.AioRpcError as error:
                logger.warning(
                    "hatchet subscription broke", run_id=self.run_id, code=str(error.code())
                )
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    await self._end_unknown_run()
                    break
            if not self.final:
                # The stream ended without the run's end: it may have ended meanwhile.
                await self._settle_from_status(missed_events=not saw_events)
            if not self.final:
                await asyncio.sleep(
                    RESUBSCRIBE_BACKOFF_S[min(attempt, len(RESUBSCRIBE_BACKOFF_S) - 1)]
                )
                attempt += 1
        await self.flush()
        self.finished.set()

    def _on_event(self, event: HatchetEvent) -> None:
        if self.handing_over:
            return  # the successor, subscribed before it claimed the run, logs these
        if event.resource == "WORKFLOW_RUN":
            if event.kind in FINAL_STATUSES:
                self._finish(event.kind, event.payload)
            return
        if event.kind in {"STARTED", "STREAM"}:
            self._mark_running()
        if event.kind != "STREAM":
            return  # task-level ends: the run's own event decides
        expected = self._indexes.get(event.resource_id, -1) + 1
        index = event.event_index
        if index is not None:
            if index < expected:
                return  # logged already (a takeover overlaps the previous owner)
            if index > expected:
                missed = index - expected
                self._emit(
                    gap_frame(
                        self.run_id,
                        self._next_seq,
                        f"{missed} chunk(s) streamed while no relay was subscribed are lost",
                    )
                )
            self._indexes[event.resource_id] = index
        self._emit(stream_frame(chunk_frame(self.run_id, self._next_seq, event.payload)))

    def _mark_running(self) -> None:
        if self.status == "QUEUED":
            self.status = "RUNNING"
            self._emit(status_frame(self.run_id, self._next_seq, "RUNNING"))

    def _finish(self, status: str, payload: str) -> None:
        output: Any = None
        error: str | None = None
        if status == "COMPLETED":
            try:
                output = json.loads(payload) if payload else {}
            except ValueError:
                output = payload
        else:
            error = payload or status.lower()
        self.status = status
        self._emit(status_frame(self.run_id, self._next_seq, status, output=output, error=error))

    async def _settle_from_status(self, *, missed_events: bool) -> None:
        try:
            status = await self._hatchet.status(self.run_id)
        except grpc.aio.AioRpcError as error:
            logger.warning("hatchet status unavailable", run_id=self.run_id, code=str(error.code()))
            return
        if not status.done:
            return
        if missed_events or self._took_over:
            # Chunks streamed before we (re)subscribed are gone upstream: say so.
            self._emit(
                gap_frame(
                    self.run_id,
                    self._next_seq,
                    "the run ended while no relay was subscribed: chunks it streamed then are lost",
                )
            )
        if status.status == "QUEUED":
            return
        payload = (
            json.dumps(status.output or {})
            if status.status == "COMPLETED"
            else (status.error or "")
        )
        self._finish(status.status if status.status in FINAL_STATUSES else "FAILED", payload)

    async def _end_unknown_run(self) -> None:
        self._finish("FAILED", "Hatchet does not know this run")

    # -- sequencing and the log --------------------------------------------------------

    def _emit(self, frame: Frame) -> None:
        self._next_seq += 1
        self._pending.append(frame)
        if frame.get("final") or not self._coalesce_s:
            self._schedule_flush(0.0)
        elif self._flush_handle is None:
            self._schedule_flush(self._coalesce_s)

    def _schedule_flush(self, delay: float) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        loop = asyncio.get_running_loop()
        self._flush_handle = loop.call_later(delay, lambda: loop.create_task(self._timed_flush()))

    async def _timed_flush(self) -> None:
        """A flush nobody awaits: its failure must not pass unseen. It stops follow(),
        which raises it, and the relay hands the run back."""
        try:
            await self.flush()
        except Exception as error:  # noqa: BLE001 - recorded and acted on, never lost
            logger.error("flush failed; handing the run back", run_id=self.run_id, error=str(error))
            self._failure = error
            if self._following is not None:
                self._following.cancel()

    async def flush(self) -> None:
        """Append pending frames to the log, then fan them out. Frames too large for a
        message go to S3 first and are logged as references; a failing S3 put is
        retried, and nothing is skipped or reordered meanwhile (later frames wait)."""
        async with self._flush_lock:
            self._flush_handle = None
            if not self._pending or self.lease_lost:
                return
            frames, self._pending = self._pending, []
            indexes = dict(self._indexes)  # what these frames cover, before any await
            try:
                logged = await offload_frames(
                    self.run_id,
                    frames,
                    self._io,
                    payloads=self._payloads,
                    stopped=lambda: self.lease_lost,
                )
            except BaseException as error:  # S3 kept failing, or cancelled: keep them, in order
                self._pending = frames + self._pending
                if isinstance(error, PayloadError) and not self.final:
                    self._schedule_flush(1.0)  # try again; the run's end raises instead
                    return
                raise
            if logged is None:
                return  # the lease went while S3 was retried
            batches = log_batches(logged)  # a DynamoDB item holds at most 400 KB
            for number, batch in enumerate(batches, 1):
                try:
                    await self._append(batch, indexes if number == len(batches) else None)
                except LeaseLostError:
                    logger.warning(
                        "lease lost; another relay writes this run now", run_id=self.run_id
                    )
                    self.lease_lost = True
                    self.finished.set()
                    return
                except BaseException:  # unwritable for too long, or cancelled: keep, in order
                    self._pending = [f for b in batches[number - 1 :] for f in b] + self._pending
                    raise
                self.log_writes += 1
                self.logged_seq = int(batch[-1]["seq"])
                for subscriber in list(self.subscribers.values()):
                    self._deliver(subscriber, batch)

    async def _append(self, batch: list[Frame], indexes: dict[str, int] | None) -> None:
        """One log item, retried through transient errors (a 500, throttling after
        botocore's retries, a timeout) with capped, jittered backoff, for up to
        ``log_retry_s``; then LogUnavailableError. Only a lost lease stops it at once.

        A failed request may still have been applied (answered 500 after it
        committed, by us or by botocore's own retries, which we cannot see): a write
        refused by the fence checks the run's record first, and one already there is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._log_retry_s
        attempt = 0
        while True:
            try:
                try:
                    await self._io(
                        self._store.append_frames, self.run_id, batch, self.owner, indexes
                    )
                except LeaseLostError:
                    if await self._landed(batch):
                        return
                    raise
            except LeaseLostError:
                raise
            except Exception as error:  # any store error but the fence is retried
                attempt += 1
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise LogUnavailableError(
                        f"run {self.run_id}: frame log unwritable for {self._log_retry_s:g}s"
                    ) from error
                delay = min(LOG_MAX_BACKOFF_S, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1)  # noqa: S311
                logger.warning(
                    "log write failed; retrying",
                    run_id=self.run_id,
                    attempt=attempt,
                    error=str(error),
                )
                await asyncio.sleep(min(delay, remaining))
            else:
                return

    async def _landed(self, batch: list[Frame]) -> bool:
        run = await self._io(self._store.get_run, self.run_id)
        return bool(
            run is not None
            and run.lease_owner == self.owner
            and run.last_seq >= int(batch[-1]["seq"])
        )

    def _deliver(self, subscriber: Subscriber, frames: list[Frame]) -> None:
        if not subscriber.live:
            subscriber.held.extend(frames)
            return
        self._hand(subscriber, frames)

    def _hand(self, subscriber: Subscriber, frames: list[Frame]) -> None:
        """Frames past the subscriber's cursor to its sender (unless its token expired)."""
        if subscriber.token_expires_at and time.time() >= subscriber.token_expires_at:
            self._expire(subscriber)
            return
        fresh = [f for f in frames if int(f["seq"]) > subscriber.cursor]
        if fresh:
            subscriber.cursor = int(fresh[-1]["seq"])
            self._sender_for(subscriber.connection_id).send(fresh)

    # -- subscribers -------------------------------------------------------------------

    async def add_subscriber(self, subscription: Subscription) -> None:
        """Backlog from the log (seq > after), then live frames, with no gap or repeat."""
        subscriber = Subscriber(
            subscription.connection_id,
            cursor=subscription.after,
            token_expires_at=subscription.token_expires_at,
        )
        connection_id = subscription.connection_id
        self.subscribers[connection_id] = subscriber

        def still_subscribed() -> bool:  # not unsubscribed, expired or gone meanwhile
            return self.subscribers.get(connection_id) is subscriber

        # The backlog a page at a time, as the connection takes it (live frames are
        # held meanwhile): a long run's log never piles up past the sender's bound.
        while self.logged_seq > subscriber.cursor:
            before = subscriber.cursor
            page = await self._io(
                self._store.read_frames, self.run_id, subscriber.cursor, BACKLOG_PAGE
            )
            if not still_subscribed():
                return
            self._hand(subscriber, page)
            if subscriber.cursor == before or not still_subscribed():
                break
            await self._sender_for(connection_id).wait_for_room()
        if not still_subscribed():
            return
        subscriber.live = True
        held, subscriber.held = subscriber.held, []
        self._deliver(subscriber, held)

    def _expire(self, subscriber: Subscriber) -> None:
        """Its run token expired: nothing more goes to it; it is told how to go on
        (a fresh token from its backend, then subscribe with ``after``)."""
        self.subscribers.pop(subscriber.connection_id, None)
        self._sender_for(subscriber.connection_id).send(
            [
                error_frame(
                    ErrorCode.UNAUTHORIZED,
                    "the run token expired; subscribe again with a fresh token and"
                    f" after={subscriber.cursor}",
                    self.run_id,
                )
            ]
        )
        logger.info(
            "subscriber's token expired", run_id=self.run_id, connection_id=subscriber.connection_id
        )

    def remove_subscriber(self, connection_id: str) -> None:
        self.subscribers.pop(connection_id, None)

    async def unsubscribe(self, connection_id: str) -> None:
        """The client unsubscribed: no frame of this run goes to it from now on, and
        ``unsubscribed`` follows what its sender holds already. Then the tombstone goes."""
        self.subscribers.pop(connection_id, None)
        self._sender_for(connection_id).send([unsubscribed_frame(self.run_id)])
        try:
            await self._io(self._store.forget_subscription, self.run_id, connection_id)
        except Exception as error:  # noqa: BLE001 - it expires by itself (TTL)
            logger.warning("could not delete a tombstone", run_id=self.run_id, error=str(error))

    async def transfer(self, successor: str, lease_s: float, drain_s: float) -> bool:
        """Hand the run to a successor already subscribed to its Hatchet events: stop
        taking events, log the pending ones, let the subscribers' senders post what
        they hold, record how far each got, then pass the lease (False if lost)."""
        self.handing_over = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        await self.flush()
        if self.lease_lost:
            return False
        senders = {c: self._sender_for(c) for c in self.subscribers}
        await asyncio.gather(*(sender.drain(drain_s) for sender in senders.values()))
        for connection_id, subscriber in list(self.subscribers.items()):
            if senders[connection_id].idle:  # all it was handed is posted
                await self._io(
                    self._store.advance_subscription,
                    self.run_id,
                    connection_id,
                    subscriber.cursor,
                )
        transferred = bool(
            await self._io(self._store.transfer_lease, self.run_id, self.owner, successor, lease_s)
        )
        self.lease_lost = True  # from here on the successor writes
        self.finished.set()
        return transferred

    async def hand_over(self) -> None:
        """Stop following: log what was received, release the lease (SIGTERM)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self._failure is None:  # a log that just failed for a minute is not retried
            await self.flush()
        await self._io(self._store.release_lease, self.run_id, self.owner)
