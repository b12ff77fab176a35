"""The relay: a long-lived asyncio process that owns many runs at once.

- takes runs from SQS (long poll), one lease per run in DynamoDB so exactly one
  relay writes a run's sequence; a run whose lease another relay holds goes
  back to the queue until that lease could have expired (the takeover path);
- keeps its SQS messages invisible (heartbeat) and its leases fresh while it
  follows their runs; deletes a run's message once its final frame is logged;
- finds new subscribers to all its runs with one query per tick (GSI by owner);
- on SIGTERM hands its runs over without a gap: it offers each run and re-sends
  its message (a new message: a handover spends none of the run's receives, which
  are for failures); another relay takes the message, subscribes to the run's
  Hatchet events, then claims the run; only then does the stopping relay log what
  it holds and pass the lease, and the successor drops what was logged already by
  each task's ``event_index``. A run nobody claims in time is released (the next
  relay marks a gap). All well inside ECS's 120 s stop timeout;
- never holds more than ``RELAY_MAX_RUNS``: it asks the queue for no more runs
  than it has room for (counting the takeovers under way) and stops receiving when full;
- touches a heartbeat file while its loops are healthy (``relay/health.py``), for
  the container's health check.

Blocking AWS calls run in a thread pool; the event loop only schedules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hatchway import metrics as m
from hatchway.hatchet_adapter import HatchetEvent, HatchetEvents
from hatchway.observability import logger
from hatchway.payloads import Payloads
from hatchway.protocol import Frame
from hatchway.run_queue import QueuedRun, RunQueue
from hatchway.settings import RelaySettings
from hatchway.store import RunRecord, Store, Subscription

from .fanout import ConnectionSender, DeliveryStats, ManagementApi
from .health import touch
from .run_follower import RunFollower, lease_deadline

SENDER_SWEEP_S = 1.0  # how often idle senders are looked for (not every poll tick)
SUBSCRIPTION_OVERLAP_MS = 5_000  # re-read this far back: writers' clocks and commits lag
HANDOVER_POLL_S = 0.1  # how often both sides of a handover look at the run
FULL_POLL_S = 0.5  # how often a relay at RELAY_MAX_RUNS looks for room again
UNHEALTHY_FAILURES = 3  # a loop that failed this often in a row: no heartbeat


@dataclass
class HeldRun:
    follower: RunFollower
    message: QueuedRun
    task: asyncio.Task[None]
    handing_over: bool = False  # offered to a successor: its message is no longer ours


class Relay:
    def __init__(
        self,
        settings: RelaySettings,
        *,
        store: Store,
        queue: RunQueue,
        connections: ManagementApi,
        hatchet: HatchetEvents,
        payloads: Payloads,
        metrics: m.RelayMetrics | None = None,
    ) -> None:
        self.settings = settings
        # Counted in memory, printed as EMF every metrics_flush_s and at the stop.
        self.metrics = metrics or m.RelayMetrics()
        self.metrics_flush_s = m.FLUSH_S
        self._payloads = payloads
        self.owner = (
            settings.relay_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._store = store
        self._queue = queue
        self._connections = connections
        self._hatchet = hatchet
        # The table, the queue and S3 (boto3, blocking). Posts are async, on the loop.
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="relay-io")
        self.runs: dict[str, HeldRun] = {}
        self.senders: dict[str, ConnectionSender] = {}
        self._finishing: dict[str, RunFollower] = {}  # finished, its last posts counted
        self._swept_at = float("-inf")
        self.delivered = DeliveryStats()
        self._stopping = asyncio.Event()
        self._successors: dict[str, asyncio.Task[None]] = {}
        self._seen: dict[tuple[str, str, int, bool], float] = {}
        self._since_ms = int(time.time() * 1000) - SUBSCRIPTION_OVERLAP_MS
        # Messages received by a long poll still running when the relay stopped, or
        # by a takeover cancelled by the stop: given back (re-sent) before it exits.
        self._orphan_poll: asyncio.Future[list[QueuedRun]] | None = None
        self._abandoned: list[QueuedRun] = []
        self.loop_failures: dict[str, int] = {}  # consecutive failures per loop

    async def _io(self, function: Any, *args: Any) -> Any:  # noqa: ANN401
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        logger.info("relay started", owner=self.owner)
        failures = self.loop_failures
        metrics = self.metrics
        receiving = asyncio.create_task(
            _supervised("receive", self._receive_loop, failures, metrics)
        )
        # Leases stay fresh and subscribers keep arriving while runs are handed over.
        keeping = [
            asyncio.create_task(
                _supervised("subscriptions", self._subscription_loop, failures, metrics)
            ),
            asyncio.create_task(_supervised("heartbeat", self._heartbeat_loop, failures, metrics)),
            asyncio.create_task(_supervised("health", self._health_loop, failures, metrics)),
            asyncio.create_task(_supervised("metrics", self._metrics_loop, failures, metrics)),
        ]
        await self._stopping.wait()
        started = time.monotonic()
        receiving.cancel()
        for successor in list(self._successors.values()):
            successor.cancel()
        await asyncio.gather(receiving, *self._successors.values(), return_exceptions=True)
        await asyncio.gather(self._hand_over_all(), self._give_back_strays())
        for task in keeping:
            task.cancel()
        await asyncio.gather(*keeping, return_exceptions=True)
        await self._close_senders()
        stop_seconds = time.monotonic() - started
        logger.info(
            "relay stopped",
            owner=self.owner,
            stop_seconds=round(stop_seconds, 3),
            **self.delivered.__dict__,
        )
        metrics.handover_seconds = stop_seconds
        self._flush_metrics()

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_flush_s)
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        try:
            self.metrics.flush()
        except Exception as error:  # noqa: BLE001 - metrics must never stop the relay
            logger.warning("printing metrics failed", error=str(error))

    def stop(self) -> None:
        self._stopping.set()

    async def _hand_over_all(self) -> None:
        held = list(self.runs.values())
        results = await asyncio.gather(*(self._hand_over(r) for r in held), return_exceptions=True)
        for run, result in zip(held, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("handover failed", run_id=run.follower.run_id, error=str(result))

    async def _give_back(self, message: QueuedRun) -> None:
        """Hand a run's message back on purpose (not a failure): re-sent as a new
        message, so the give-back spends none of the run's receives before the DLQ.
        If even the send fails, released (one receive spent), never lost."""
        try:
            await self._io(self._queue.resend, message)
        except Exception as error:  # noqa: BLE001 - released instead: it costs a receive
            logger.warning(
                "re-sending a run's message failed; releasing it",
                run_id=message.run_id,
                error=str(error),
            )
            await self._io(self._queue.release, message.receipt_handle)

    async def _give_back_strays(self) -> None:
        """Messages this relay received but will never follow, now that it stops: a
        long poll that was still out when it stopped (it may even hold a run just
        re-sent for a handover) and takeovers the stop cancelled."""
        strays, self._abandoned = self._abandoned, []
        if self._orphan_poll is not None:
            try:
                strays += await asyncio.wait_for(
                    self._orphan_poll, self.settings.queue_wait_seconds + 5
                )
            except Exception as error:  # noqa: BLE001 - they come back when their visibility ends
                logger.warning("a receive out at the stop failed", error=str(error))
        for message in strays:
            try:
                await self._give_back(message)
            except Exception as error:  # noqa: BLE001 - it comes back when its visibility ends
                logger.warning("giving a run back failed", run_id=message.run_id, error=str(error))

    async def _hand_over(self, held: HeldRun) -> None:
        """Offer the run; pass it to the first relay that claims it, else release it."""
        follower = held.follower
        run_id = follower.run_id
        offered = await self._io(self._store.offer_handover, run_id, self.owner)
        held.handing_over = True
        await self._give_back(held.message)  # a new message: the successor receives it
        deadline = time.monotonic() + self.settings.handover_seconds
        while offered and not follower.finished.is_set() and time.monotonic() < deadline:
            run = await self._io(self._store.get_run, run_id)
            if run is None or run.final or run.lease_owner != self.owner:
                break
            if run.successor:
                transferred = await follower.transfer(
                    run.successor, self.settings.lease_seconds, drain_s=5.0
                )
                held.task.cancel()
                await asyncio.gather(held.task, return_exceptions=True)
                self.metrics.add(m.RUNS_HANDED_OVER)
                logger.info(
                    "run handed over",
                    run_id=run_id,
                    successor=run.successor,
                    transferred=transferred,
                    last_seq=follower.logged_seq,
                )
                return
            await asyncio.sleep(HANDOVER_POLL_S)
        held.task.cancel()
        await asyncio.gather(held.task, return_exceptions=True)
        if not follower.final:
            await follower.hand_over()
            self.metrics.add(m.RUNS_HANDED_OVER)
            logger.info("run released without a successor", run_id=run_id)

    async def _close_senders(self) -> None:
        senders = list(self.senders.values())  # a 410 meanwhile removes from the map
        await asyncio.gather(*(s.drain(10.0) for s in senders))
        for sender in senders:
            self.delivered.add(sender.stats)
            await sender.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- taking runs -------------------------------------------------------------------

    @property
    def room(self) -> int:
        """How many more runs this relay may take: RELAY_MAX_RUNS less those it
        follows and those it is taking over (each becomes a run it follows)."""
        return self.settings.max_runs - len(self.runs) - len(self._successors)

    async def _receive_loop(self) -> None:
        while not self._stopping.is_set():
            room = self.room
            if room <= 0:  # full: the queue keeps the runs for relays with room
                await asyncio.sleep(FULL_POLL_S)
                continue
            poll = asyncio.get_running_loop().run_in_executor(
                self._executor,
                self._queue.receive,
                room,  # at most this many (and ten, SQS's limit)
                self.settings.queue_wait_seconds,
                self.settings.visibility_seconds,
            )
            try:
                messages = await asyncio.shield(poll)
            except asyncio.CancelledError:
                self._orphan_poll = poll  # what it brings back is given back at the stop
                raise
            except Exception as error:  # noqa: BLE001 - keep polling through transient errors
                logger.warning("queue receive failed", error=str(error))
                await asyncio.sleep(1.0)
                continue
            # A batch's runs are taken at once (a burst of 500 runs must not wait on
            # one lease write after another); a run's duplicates only after its first.
            first: dict[str, QueuedRun] = {}
            again = [m for m in messages if first.setdefault(m.run_id, m) is not m]
            await asyncio.gather(*(self._try_to_take(m) for m in first.values()))
            for message in again:
                await self._try_to_take(message)

    async def _try_to_take(self, message: QueuedRun) -> None:
        try:
            await self._take(message)
        except Exception as error:  # noqa: BLE001 - the message comes back by itself
            logger.warning("taking a run failed", run_id=message.run_id, error=str(error))

    async def _take(self, message: QueuedRun) -> None:
        held = self.runs.get(message.run_id)
        if held is not None:  # our own message came back: keep the newest receipt
            held.message = message
            return
        if message.run_id in self._successors:
            return  # a duplicate of a message we are taking over with
        run = await self._io(
            self._store.acquire_lease, message.run_id, self.owner, self.settings.lease_seconds
        )
        if run is None:
            await self._held_elsewhere(message)
            return
        if run.final:
            await self._io(self._store.release_lease, run.run_id, self.owner)
            await self._io(self._queue.delete, message.receipt_handle)
            return
        self._start_following(run, message)

    async def _held_elsewhere(self, message: QueuedRun) -> None:
        """The run's lease is another relay's (or the run is gone or over)."""
        current = await self._io(self._store.get_run, message.run_id)
        if current is None:
            logger.warning("queued run unknown; dropping its message", run_id=message.run_id)
            await self._io(self._queue.delete, message.receipt_handle)
        elif current.final:
            await self._io(self._queue.delete, message.receipt_handle)
        elif current.handover_from and current.handover_from == current.lease_owner:
            task = asyncio.create_task(self._succeed(message))
            self._successors[message.run_id] = task
            task.add_done_callback(lambda _: self._successors.pop(message.run_id, None))
        else:  # a duplicate, or its holder died: look again when the lease could have lapsed
            wait_s = max(1, int((current.lease_expires_at - time.time() * 1000) / 1000) + 1)
            await self._io(self._queue.extend, message.receipt_handle, min(wait_s, 43_200))

    def _start_following(
        self, run: RunRecord, message: QueuedRun, events: AsyncIterator[HatchetEvent] | None = None
    ) -> None:
        follower = RunFollower(
            run,
            owner=self.owner,
            store=self._store,
            hatchet=self._hatchet,
            executor=self._executor,
            sender_for=self._sender,
            payloads=self._payloads,
            lease_s=self.settings.lease_seconds,
            log_commit_s=self.settings.log_commit_ms / 1000,
            log_commit_bytes=self.settings.log_commit_bytes,
            seq_block=self.settings.seq_block,
            log_retry_s=self.settings.log_retry_seconds,
            metrics=self.metrics,
        )
        self.metrics.add(m.RUNS_TAKEN)
        task = asyncio.create_task(self._follow(follower, events))
        self.runs[run.run_id] = HeldRun(follower, message, task)
        logger.info(
            "following run",
            run_id=run.run_id,
            last_seq=run.last_seq,
            receive_count=message.receive_count,
        )
        if message.receive_count > 1:
            # Only failures spend receives (a handover re-sends): this run's holder
            # failed before. Five and the run goes to the dead-letter queue.
            logger.warning(
                "run received again after a failure",
                run_id=run.run_id,
                receive_count=message.receive_count,
            )

    async def _succeed(self, message: QueuedRun) -> None:
        """Take over a run its holder offers: subscribe to its Hatchet events first,
        then claim it, then wait for the lease; the events that arrived meanwhile
        are followed from the log's position (what was logged is dropped by index)."""
        run_id = message.run_id
        lease_s = self.settings.lease_seconds
        await self._io(
            self._queue.extend,
            message.receipt_handle,
            int(self.settings.handover_seconds + lease_s) + 1,
        )
        sent = asyncio.Event()
        buffered: asyncio.Queue[HatchetEvent | BaseException | None] = asyncio.Queue()
        pump = asyncio.create_task(_pump(self._hatchet.events(run_id, sent), buffered))
        try:
            await asyncio.wait_for(sent.wait(), 10)
            await asyncio.sleep(self.settings.handover_grace_ms / 1000)  # reaching the engine
            run = None
            if await self._io(self._store.claim_handover, run_id, self.owner):
                deadline = time.monotonic() + self.settings.handover_seconds + lease_s
                while time.monotonic() < deadline:
                    current = await self._io(self._store.get_run, run_id)
                    if current is None or current.final:
                        break
                    if current.lease_owner == self.owner or not current.lease_held(
                        int(time.time() * 1000)
                    ):
                        run = await self._io(self._store.acquire_lease, run_id, self.owner, lease_s)
                        break
                    await asyncio.sleep(HANDOVER_POLL_S)
        except Exception as error:  # noqa: BLE001 - e.g. Hatchet unreachable: the message comes back
            logger.warning("taking over a handed-over run failed", run_id=run_id, error=str(error))
            run = None
        except BaseException:
            pump.cancel()
            self._abandoned.append(message)  # the relay stops: given back, not left hidden
            raise
        if run is None or run.final:
            pump.cancel()
            # Look at it again through the usual path (which deletes it if the run is over);
            # the message may be gone already if its old holder deleted it.
            with contextlib.suppress(Exception):
                await self._io(self._queue.release, message.receipt_handle)
            return
        logger.info("run taken over", run_id=run_id, last_seq=run.last_seq)
        self._start_following(run, message, _drain(buffered, pump))

    async def _follow(
        self, follower: RunFollower, events: AsyncIterator[HatchetEvent] | None = None
    ) -> None:
        try:
            await follower.follow(events)
        except Exception:  # noqa: BLE001 - one run's failure must not stop the relay
            self.metrics.add(m.RELAY_ERRORS)
            logger.exception("following a run failed; handing it back", run_id=follower.run_id)
            with contextlib.suppress(Exception):
                await follower.hand_over()
            held = self.runs.pop(follower.run_id, None)
            if held is not None:
                # Released, never deleted: another relay (or a later try) ends the
                # sequence. If even that fails, the message's visibility lapses by itself.
                try:
                    await self._io(self._queue.release, held.message.receipt_handle)
                except Exception as error:  # noqa: BLE001
                    logger.warning(
                        "releasing the run's message failed; it returns when its visibility ends",
                        run_id=follower.run_id,
                        error=str(error),
                    )
            return
        held = self.runs.pop(follower.run_id, None)
        if held is None:
            return
        if follower.final and not follower.lease_lost:
            try:
                await self._io(self._queue.delete, held.message.receipt_handle)
            except Exception as error:  # noqa: BLE001 - it comes back; the run is final: deleted then
                logger.warning(
                    "deleting a finished run's message failed",
                    run_id=follower.run_id,
                    error=str(error),
                )
            self.metrics.add(m.RUNS_FINISHED)
            # Its last frames' posts, counted to it, before its line says what it cost.
            senders = [self.senders.get(c) for c in follower.subscribers]
            self._finishing[follower.run_id] = follower
            try:
                await asyncio.gather(
                    *(
                        s.drain(self.settings.coalesce_ms / 1000 + 2.0)
                        for s in senders
                        if s is not None
                    )
                )
            finally:
                self._finishing.pop(follower.run_id, None)
            logger.info("run finished", **run_finished_fields(follower))

    # -- keeping runs ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = min(self.settings.lease_seconds, self.settings.visibility_seconds) / 3
        while True:
            await asyncio.sleep(interval)
            await self._beat()

    async def _beat(self) -> None:
        """Renew every live run's lease at once (not one after another: a slow table
        must not let the last leases lapse), then keep their messages invisible, ten
        to an SQS call. Runs that finished meanwhile are left alone."""
        self.metrics.gauge_active_runs(len(self.runs))
        held = [h for h in self.runs.values() if not h.follower.finished.is_set()]
        lease_s = self.settings.lease_seconds
        started = time.monotonic()
        renewals = await asyncio.gather(
            *(
                self._io(self._store.renew_lease, h.follower.run_id, self.owner, lease_s)
                for h in held
            ),
            return_exceptions=True,
        )
        keep: list[HeldRun] = []
        for run, renewed in zip(held, renewals, strict=True):
            run_id = run.follower.run_id
            if isinstance(renewed, BaseException):
                logger.warning("lease renewal failed", run_id=run_id, error=str(renewed))
            elif renewed:
                run.follower.lease_renewed(lease_deadline(started, lease_s))
                keep.append(run)
            elif not run.handing_over and self.runs.get(run_id) is run:
                logger.warning("lease taken by another relay", run_id=run_id)
                if not run.follower.lease_lost:
                    self.metrics.add(m.LEASE_LOSSES)
                run.follower.lease_lost = True
                run.task.cancel()
                self.runs.pop(run_id, None)
        # Its message is the successor's once a run is handed over; a finished run's is deleted.
        keep = [h for h in keep if not h.follower.finished.is_set() and not h.handing_over]
        if not keep:
            return
        try:
            failed = await self._io(
                self._queue.extend_many,
                [h.message.receipt_handle for h in keep],
                self.settings.visibility_seconds,
            )
        except Exception as error:  # noqa: BLE001 - try again next beat
            logger.warning("keeping messages invisible failed", error=str(error))
            return
        if failed:
            logger.info(
                "messages not extended (deleted or handed over meanwhile)", count=len(failed)
            )

    # -- health ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """No loop keeps failing (the event loop itself runs: this is asked on it)."""
        return all(n < UNHEALTHY_FAILURES for n in self.loop_failures.values())

    async def _health_loop(self) -> None:
        """The heartbeat a container health check reads (``hatchway-relay --health``):
        touched from the event loop, so a blocked loop or one whose loops keep
        failing goes stale, and ECS replaces the task."""
        while True:
            await self._health_beat()
            await asyncio.sleep(self.settings.health_interval_seconds)

    async def _health_beat(self) -> bool:
        """Touch the heartbeat if the relay is healthy; whether it did."""
        if not self.healthy:
            return False
        try:
            await self._io(touch, self.settings.health_file)
        except OSError as error:
            logger.warning("the heartbeat file cannot be written", error=str(error))
            return False
        return True

    # -- subscribers -------------------------------------------------------------------

    async def _subscription_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_ms / 1000)
            if not self.runs:
                self._since_ms = int(time.time() * 1000) - SUBSCRIPTION_OVERLAP_MS
                await self._end_idle_senders()
                continue
            try:
                found: list[Subscription] = await self._io(
                    self._store.subscriptions_since, self.owner, self._since_ms
                )
            except Exception as error:  # noqa: BLE001
                logger.warning("subscription poll failed", error=str(error))
                continue
            now = time.monotonic()
            for subscription in found:
                key = (
                    subscription.run_id,
                    subscription.connection_id,
                    subscription.created_at,
                    subscription.removed,
                )
                if key in self._seen:
                    continue
                held = self.runs.get(subscription.run_id)
                if held is None:
                    self._seen[key] = now
                    continue
                try:
                    if subscription.removed:
                        await held.follower.unsubscribe(subscription.connection_id)
                    else:
                        await held.follower.add_subscriber(subscription)
                except Exception as error:  # noqa: BLE001 - not seen yet: the next poll retries it
                    logger.warning(
                        "adding a subscriber failed; retrying",
                        run_id=subscription.run_id,
                        connection_id=subscription.connection_id,
                        error=str(error),
                    )
                    held.follower.remove_subscriber(subscription.connection_id)
                    continue
                self._seen[key] = now
            self._since_ms = int(time.time() * 1000) - SUBSCRIPTION_OVERLAP_MS
            self._seen = {k: t for k, t in self._seen.items() if now - t < 60}
            await self._end_idle_senders()

    async def _end_idle_senders(self) -> None:
        """A sender ends with its connection's last subscription here, once it has
        posted all it holds: a relay serving connections for days keeps no task or
        queue for each one it ever served."""
        now = time.monotonic()
        if now - self._swept_at < SENDER_SWEEP_S:
            return
        self._swept_at = now
        subscribed = {c for held in self.runs.values() for c in held.follower.subscribers}
        for connection_id, sender in list(self.senders.items()):
            if connection_id in subscribed or sender.closed or not sender.idle:
                continue
            del self.senders[connection_id]
            self.delivered.add(sender.stats)
            await sender.close()

    def _sender(self, connection_id: str) -> ConnectionSender:
        sender = self.senders.get(connection_id)
        # A closed sender stays until its connection is reported gone (410, or shed
        # and disconnected): frames for it are dropped, never sent by a new sender
        # after its too_slow. The connection resumes with after on a new id.
        if sender is None:
            sender = ConnectionSender(
                connection_id,
                self._connections,
                self._executor,
                on_gone=self._connection_gone,
                payloads=self._payloads,
                max_queued_bytes=self.settings.send_queue_bytes,
                stall_s=self.settings.send_stall_seconds,
                interval_s=self.settings.coalesce_ms / 1000,
                metrics=self.metrics,
                on_posted=self._posted,
            )
            sender.start()
            self.senders[connection_id] = sender
        return sender

    def _posted(self, frames: list[Frame], messages: int, units: int) -> None:
        """A sender posted ``frames`` in ``messages``: counted to each run they carry
        (a message holding frames of several runs counts for each)."""
        for run_id in {frame.get("runId") for frame in frames}:
            held = self.runs.get(str(run_id))
            follower = held.follower if held is not None else self._finishing.get(str(run_id))
            if follower is not None:
                follower.messages += messages
                follower.message_units += units

    async def _connection_gone(self, connection_id: str) -> None:
        """410 for this connection: remove exactly it, from every run and the table."""
        for held in self.runs.values():
            held.follower.remove_subscriber(connection_id)
        sender = self.senders.pop(connection_id, None)
        if sender is not None:
            self.delivered.add(sender.stats)
            await sender.close()
        with contextlib.suppress(Exception):
            await self._io(self._store.drop_connection, connection_id)
        logger.info("connection gone", connection_id=connection_id)


SUPERVISOR_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


SUPERVISOR_HEALED_S = 60.0  # a loop that ran this long before failing starts a new count


def run_finished_fields(follower: RunFollower) -> dict[str, Any]:
    """What a run cost here, for its "run finished" line: chunks, messages posted
    (and their 32 KB units), log writes, bytes logged (estimated) and the cost per
    chunk at list prices (messages and log writes; ``hatchway.metrics``)."""
    return {
        "run_id": follower.run_id,
        "status": follower.status,
        "last_seq": follower.logged_seq,
        "chunks": follower.chunks,
        "messages": follower.messages,
        "message_units": follower.message_units,
        "log_writes": follower.log_writes,
        "bytes": follower.bytes_logged,
        "write_units": follower.write_units,
        "usd_per_chunk": m.usd_per_chunk(
            chunks=follower.chunks,
            message_units=follower.message_units,
            write_units=follower.write_units,
        ),
    }


async def _supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    failures: dict[str, int] | None = None,
    metrics: m.RelayMetrics | None = None,
) -> None:
    """Run one of the relay's background loops; if it ever raises, log it and start
    it again (with backoff): a loop that died unseen would stop the relay taking runs,
    keeping leases or finding subscribers while it looked alive. ``failures`` counts
    each loop's failures in a row (the health check reads it)."""
    counts = failures if failures is not None else {}
    counts[name] = 0
    while True:
        started = time.monotonic()
        try:
            await loop()
        except Exception:  # noqa: BLE001 - logged and restarted, never lost
            if time.monotonic() - started >= SUPERVISOR_HEALED_S:
                counts[name] = 0
            failed = counts[name]
            logger.exception("relay loop failed; restarting it", loop=name, failures=failed)
            if metrics is not None:
                metrics.add(m.RELAY_ERRORS)
            counts[name] = failed + 1
            await asyncio.sleep(SUPERVISOR_BACKOFF_S[min(failed, len(SUPERVISOR_BACKOFF_S) - 1)])
        else:
            return


async def _pump(
    events: AsyncIterator[HatchetEvent], into: asyncio.Queue[HatchetEvent | BaseException | None]
) -> None:
    """Read a subscription ahead of its follower (events arriving during a handover)."""
    try:
        async for event in events:
            into.put_nowait(event)
    except Exception as error:  # noqa: BLE001 - handed to the follower, which resubscribes
        into.put_nowait(error)
        return
    into.put_nowait(None)


async def _drain(
    buffered: asyncio.Queue[HatchetEvent | BaseException | None], pump: asyncio.Task[None]
) -> AsyncIterator[HatchetEvent]:
    try:
        while (item := await buffered.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        pump.cancel()
