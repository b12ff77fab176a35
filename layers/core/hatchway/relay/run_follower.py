"""Following one run: Hatchet events in, sequenced frames out.

The follower holds the run's lease. It turns each Hatchet event into a frame
with the next ``seq`` and hands it to the run's subscribers at once (their
senders coalesce per connection). The log is written behind, in group commits
(every ``log_commit_s`` or ``log_commit_bytes``, at once for the final status),
one conditional PutItem each. Seqs are reserved ahead in the run's META, a block
at a time: a relay that dies before logging what it sent live leaves a hole of
at most its reservation, and its successor starts after it with a ``gap`` frame
that says which seqs were skipped, so no seq ever names two different frames.

It resubscribes when Hatchet's stream breaks, marks a ``gap`` where stream
events were missed (told by each task's ``event_index``), and asks Hatchet for
the run's status when the stream ends without the run's final event, so the
final status always arrives.
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

from hatchway import metrics as m
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
    Frame,
    chunk_frame,
    gap_frame,
    status_frame,
    token_expired_frame,
    unsubscribed_frame,
)
from hatchway.store import LeaseLostError, RunRecord, Store, Subscription

from .fanout import ConnectionSender, estimate_bytes

RESUBSCRIBE_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
BACKLOG_PAGE = 1000  # frames read from the log at a time for a new subscriber
LOG_MAX_BACKOFF_S = 2.0
LEASE_MARGIN_S = 2.0  # a holder stops sending and logging this long before its lease ends


SKIPPED_REASON = (
    "the relay that held this run stopped before logging frames it may have sent: they are lost"
)


def lease_deadline(renewed_at: float, lease_s: float) -> float:
    """Until when (monotonic) a holder that asked for its lease at ``renewed_at`` may
    send and log: a margin before the lease ends (a quarter of short test leases)."""
    return renewed_at + lease_s - min(LEASE_MARGIN_S, lease_s / 4)


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
        payloads: Payloads,
        lease_s: float = 30.0,
        log_commit_s: float = 0.25,
        log_commit_bytes: int = 64 * 1024,
        seq_block: int = 256,
        log_retry_s: float = 60.0,
        metrics: m.RelayMetrics | None = None,
    ) -> None:
        self.run_id = run.run_id
        self.metrics = metrics or m.RelayMetrics()
        self._payloads = payloads  # S3 for large frames
        self.owner = owner
        self._store = store
        self._hatchet = hatchet
        self._executor = executor
        self._sender_for = sender_for
        self._run = run
        self._log_commit_s = log_commit_s
        self._log_commit_bytes = log_commit_bytes
        self._seq_block = seq_block
        self._lease_s = lease_s
        self._log_retry_s = log_retry_s  # how long one write is retried before giving up
        self._following: asyncio.Task[Any] | None = None
        self._failure: BaseException | None = None  # a scheduled commit's, for follow()
        # Sequencing starts where the log and the reservations say (``_open``).
        self.logged_seq = run.last_seq  # highest seq in the log
        self._next_seq = run.last_seq + 1
        self._reserved = 0  # the highest seq we may sequence (reserved in META)
        self.status = run.status
        self._indexes: dict[str, int] = dict(run.stream_indexes or {})
        self._logged_indexes: dict[str, int] = dict(self._indexes)  # as of logged_seq
        self._index_marks: list[tuple[int, str, int]] = []  # (seq, task, index) unlogged
        self._took_over = run.last_seq > 0  # another relay wrote before us
        self._skipped: tuple[int, int] | None = None  # seqs a dead holder may have sent
        # The lease as this process knows it (monotonic): past it, nothing is sent or
        # logged, since a successor may have taken the run (renewals move it).
        self.lease_until = lease_deadline(time.monotonic(), lease_s)
        self._pending: list[Frame] = []  # sequenced, waiting for S3 or a reservation
        self._unlogged: list[Frame] = []  # sent to subscribers, not yet in the log
        self._unlogged_bytes = 0
        self._preparing: asyncio.Task[None] | None = None  # S3 puts in flight
        self._reserving: asyncio.Task[None] | None = None  # the next block of seqs
        self._commit_handle: asyncio.TimerHandle | None = None
        self._commit_lock = asyncio.Lock()
        self.subscribers: dict[str, Subscriber] = {}
        self.finished = asyncio.Event()
        self.lease_lost = False
        self.handing_over = False
        # What this run cost here (its "run finished" line): messages are counted
        # by the relay as its senders post them (``messages``, ``message_units``).
        self.log_writes = 0
        self.chunks = 0
        self.bytes_logged = 0
        self.write_units = 0
        self.messages = 0
        self.message_units = 0
        self._emitted_at: dict[int, float] = {}  # seq -> when sequenced (monotonic)

    def lease_renewed(self, until: float) -> None:
        """The heartbeat renewed the lease: frames held because it was about to
        lapse (a slow table) go out now."""
        self.lease_until = until
        self._release()

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
        Raises what made a commit fail (LogUnavailableError, PayloadError at the end)."""
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

    async def _open(self) -> None:
        """Start the sequence where the log ends, after any seqs a previous holder
        reserved (it may have sent them live and died before logging them: a gap
        says which were skipped). A log that holds the run's end ends it here."""
        tail = await self._io(self._store.log_tail, self.run_id)
        run = self._run
        self.logged_seq = max(tail.last_seq, run.last_seq)
        if tail.stream_indexes is not None:
            self._indexes = dict(tail.stream_indexes)
            self._logged_indexes = dict(tail.stream_indexes)
        if tail.final is not None:  # logged, and META not moved before its holder died
            self.status = str(tail.final["status"])
            self._next_seq = self.logged_seq + 1
            await self._update_run(status=self.status)
            return
        start = max(self.logged_seq, run.reserved_seq)
        self._next_seq = start + 1
        self._took_over = start > 0
        try:
            await self._reserve()
        except LeaseLostError:
            self._lost_lease()
            return
        if start > self.logged_seq:  # said by the first gap, or before the first frame
            self._skipped = (self.logged_seq + 1, start)

    async def _follow(self, events: AsyncIterator[HatchetEvent] | None) -> None:
        await self._open()
        if self.final or self.lease_lost:
            self.finished.set()
            return
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
        self.chunks += 1
        self._emit(stream_frame(chunk_frame(self.run_id, self._next_seq, event.payload)))
        if index is not None:  # logged with the item that holds this chunk's seq
            self._index_marks.append((self._next_seq - 1, event.resource_id, index))

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

    # -- sequencing, fan-out and the log -----------------------------------------------

    def _emit(self, frame: Frame) -> None:
        if self._skipped is not None:
            skipped, self._skipped = self._skipped, None
            if frame["type"] == "gap":
                frame["skipped"] = list(skipped)
                frame["reason"] = f"{frame['reason']}; {SKIPPED_REASON}"
            else:
                self._emit(gap_frame(self.run_id, self._next_seq, SKIPPED_REASON, skipped))
                frame["seq"] = self._next_seq
        if frame["type"] == "gap":
            self.metrics.add(m.GAPS)
        self._emitted_at[self._next_seq] = time.monotonic()
        self._next_seq += 1
        self._pending.append(frame)
        self._release()

    def _release(self) -> None:
        """Send what is sequenced to the subscribers now, in order, as far as it may
        go: a frame too large for a message waits for S3 (and the frames after it),
        a frame past the reservation waits for the next one, and nothing goes once
        the lease may have lapsed."""
        if self._preparing is not None or self.lease_lost:
            return
        ready: list[Frame] = []
        received_at: float | None = None
        while self._pending and time.monotonic() < self.lease_until:
            frame = self._pending[0]
            if int(frame["seq"]) > self._reserved:
                self._reserve_ahead()
                break
            if self._payloads.needs_offload(frame):
                self._preparing = self._background(self._offload(), "_preparing")
                break
            ready.append(frame := self._pending.pop(0))
            at = self._emitted_at.pop(int(frame["seq"]), None)
            if received_at is None:
                received_at = at
        if ready:
            self._publish(ready, received_at)

    def _background(self, work: Any, slot: str) -> asyncio.Task[None]:  # noqa: ANN401 - a coroutine
        """``work`` as a task held in ``slot``; when it is done, sending goes on."""

        async def then_release() -> None:
            try:
                await work
            except Exception as error:  # noqa: BLE001 - recorded and acted on, never lost
                setattr(self, slot, None)
                self._fail(error)
                return
            setattr(self, slot, None)
            self._release()

        return asyncio.get_running_loop().create_task(then_release())

    async def _offload(self) -> None:
        """The pending frames with S3 references for the large ones (retried)."""
        count = len(self._pending)
        while True:
            try:
                logged = await offload_frames(
                    self.run_id,
                    self._pending[:count],
                    self._io,
                    payloads=self._payloads,
                    stopped=lambda: self.lease_lost,
                )
            except PayloadError:
                if self.final:
                    raise  # the run's end waits no longer: it is handed back
                await asyncio.sleep(1.0)  # S3 kept failing: try again, nothing skipped
                continue
            if logged is not None:
                self._pending[:count] = logged
            return

    async def _reserve(self) -> None:
        """Reserve the next block of seqs in META (lazily moving lastSeq with it)."""
        reserved = max(self._reserved, self._next_seq - 1) + self._seq_block
        if not await self._update_run(reserved_seq=reserved):
            raise LeaseLostError(f"run {self.run_id}: lease lost")
        self._reserved = reserved

    def _publish(self, frames: list[Frame], received_at: float | None = None) -> None:
        """``received_at``: when the oldest of ``frames`` was sequenced (its Hatchet
        event received), for the delivery lag measured at its post."""
        for subscriber in list(self.subscribers.values()):
            self._deliver(subscriber, frames, received_at)
        self._unlogged.extend(frames)
        self._unlogged_bytes += estimate_bytes(frames)
        if self._reserved - int(frames[-1]["seq"]) < self._seq_block // 2:
            self._reserve_ahead()
        if self.final or self._unlogged_bytes >= self._log_commit_bytes:
            self._schedule_commit(0.0)
        elif self._commit_handle is None:
            self._schedule_commit(self._log_commit_s)

    def _reserve_ahead(self) -> None:
        """Before the block runs out, so sending seldom waits for it."""
        if self._reserving is None and not self.lease_lost:
            self._reserving = self._background(self._reserve(), "_reserving")

    def _schedule_commit(self, delay: float) -> None:
        if self._commit_handle is not None:
            self._commit_handle.cancel()
        loop = asyncio.get_running_loop()
        self._commit_handle = loop.call_later(delay, lambda: loop.create_task(self._timed_commit()))

    async def _timed_commit(self) -> None:
        """A commit nobody awaits: its failure must not pass unseen."""
        try:
            await self._commit()
        except Exception as error:  # noqa: BLE001 - recorded and acted on, never lost
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        """Stop following: follow() raises it, and the relay hands the run back."""
        logger.error("the log failed; handing the run back", run_id=self.run_id, error=str(error))
        if isinstance(error, LeaseLostError):
            self._lost_lease()
            return
        self._failure = error
        if self._following is not None:
            self._following.cancel()

    def _lost_lease(self) -> None:
        if not self.lease_lost:
            self.metrics.add(m.LEASE_LOSSES)
        logger.warning("lease lost; another relay writes this run now", run_id=self.run_id)
        self.lease_lost = True
        self.finished.set()

    async def flush(self) -> None:
        """Send and log everything sequenced so far (S3 puts and reservations first)."""
        while self._pending and not self.lease_lost:
            self._release()
            waiting = [t for t in (self._preparing, self._reserving) if t is not None]
            if not waiting:
                if self._pending:  # the lease may have lapsed: a successor ends the run
                    self._lost_lease()
                    break
                continue
            await asyncio.gather(*waiting, return_exceptions=True)
            if self._failure is not None:
                raise self._failure
        while self._unlogged and not self.lease_lost:  # frames sent during a commit too
            await self._commit()

    async def _commit(self) -> None:
        """One group commit of what was sent: an item per 400 KB, in order."""
        async with self._commit_lock:
            if self._commit_handle is not None:
                self._commit_handle.cancel()
                self._commit_handle = None
            frames = list(self._unlogged)
            for batch in log_batches(frames):
                if self.lease_lost:
                    return
                last = int(batch[-1]["seq"])
                indexes = dict(self._logged_indexes)
                indexes.update({task: i for seq, task, i in self._index_marks if seq <= last})
                try:
                    await self._append(batch, indexes)
                except LeaseLostError:
                    self._lost_lease()
                    return
                self.log_writes += 1
                size = estimate_bytes(batch)
                self.bytes_logged += size
                self.write_units += m.write_units(size)
                metrics = self.metrics
                metrics.add(m.LOG_WRITES)
                metrics.add(m.FRAMES_LOGGED, len(batch))
                metrics.add(m.BYTES_LOGGED, size)
                self.logged_seq = last
                self._logged_indexes = indexes
                self._index_marks = [m for m in self._index_marks if m[0] > last]
                del self._unlogged[: len(batch)]
                self._unlogged_bytes -= estimate_bytes(batch)
                status = next((f for f in reversed(batch) if f["type"] == "status"), None)
                if status is not None and not await self._update_run(status=str(status["status"])):
                    self._lost_lease()
                    return
            if self._unlogged and self._commit_handle is None:
                self._schedule_commit(0.0 if self.final else self._log_commit_s)

    async def _update_run(self, **changes: Any) -> bool:  # noqa: ANN401
        if time.monotonic() >= self.lease_until:
            return False
        result: bool = await self._retrying(
            lambda: self._store.update_run(
                self.run_id, self.owner, last_seq=self.logged_seq, **changes
            )
        )
        return result

    async def _append(self, batch: list[Frame], indexes: dict[str, int]) -> None:
        """One log item. Only a lost lease stops it at once (or a lease this process
        can no longer vouch for). A failed request may still have been applied
        (answered 500 after it committed, by us or botocore's own retries, which we
        cannot see): a write refused because its key is taken is done if we wrote it."""
        first, last = int(batch[0]["seq"]), int(batch[-1]["seq"])

        def append() -> None:
            if time.monotonic() >= self.lease_until:
                raise LeaseLostError(f"run {self.run_id}: the lease may have lapsed")
            try:
                self._store.append_frames(self.run_id, batch, self.owner, indexes)
            except LeaseLostError:
                if self._store.frames_item_writer(self.run_id, first) != (self.owner, last):
                    raise

        await self._retrying(append)

    async def _retrying(self, call: Callable[[], Any]) -> Any:  # noqa: ANN401
        """``call`` (a blocking store write) retried through transient errors (a 500,
        throttling after botocore's retries, a timeout) with capped, jittered backoff
        for up to ``log_retry_s``; then LogUnavailableError. LeaseLostError raises."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._log_retry_s
        attempt = 0
        while True:
            try:
                return await self._io(call)
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

    def _deliver(
        self, subscriber: Subscriber, frames: list[Frame], received_at: float | None = None
    ) -> None:
        if not subscriber.live:
            subscriber.held.extend(frames)
            return
        self._hand(subscriber, frames, received_at)

    def _hand(
        self, subscriber: Subscriber, frames: list[Frame], received_at: float | None = None
    ) -> None:
        """Frames past the subscriber's cursor to its sender (unless its token expired)."""
        if subscriber.token_expires_at and time.time() >= subscriber.token_expires_at:
            self._expire(subscriber)
            return
        fresh = [f for f in frames if int(f["seq"]) > subscriber.cursor]
        if fresh:
            subscriber.cursor = int(fresh[-1]["seq"])
            # received_at None: a backlog or held frames, no live lag to measure
            self._sender_for(subscriber.connection_id).send(fresh, received_at=received_at)

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
        # What was sent live but is not logged yet is here, in memory (no await
        # between the log's last page and this: nothing moves in between).
        subscriber.live = True
        self._hand(subscriber, self._unlogged)
        held, subscriber.held = subscriber.held, []
        self._deliver(subscriber, held)

    def _expire(self, subscriber: Subscriber) -> None:
        """Its run token expired: nothing more goes to it; it is told how to go on
        (a fresh token from its backend, then subscribe with ``after``)."""
        self.subscribers.pop(subscriber.connection_id, None)
        self._sender_for(subscriber.connection_id).send(
            [token_expired_frame(self.run_id, subscriber.cursor)]
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
        await self.flush()
        if self.lease_lost or not self._all_logged:
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
            await self._io(
                self._store.transfer_lease,
                self.run_id,
                self.owner,
                successor,
                lease_s,
                self.logged_seq,
            )
        )
        self.lease_lost = True  # from here on the successor writes
        self.finished.set()
        return transferred

    async def hand_over(self) -> None:
        """Stop following: log what was received, release the lease (SIGTERM). When
        all it sequenced is logged, the next holder goes on from there without a gap;
        otherwise it starts after the reserved seqs, with a gap."""
        self.handing_over = True
        if self._failure is None:  # a log that just failed for a minute is not retried
            await self.flush()
        await self._io(
            self._store.release_lease,
            self.run_id,
            self.owner,
            self.logged_seq if self._all_logged else None,
        )

    @property
    def _all_logged(self) -> bool:
        return not self._pending and not self._unlogged
