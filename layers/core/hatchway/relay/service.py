"""The relay: a long-lived asyncio process that owns many runs at once.

- takes runs from SQS (long poll), one lease per run in DynamoDB so exactly one
  relay writes a run's sequence; a run whose lease another relay holds goes
  back to the queue until that lease could have expired (the takeover path);
- keeps its SQS messages invisible (heartbeat) and its leases fresh while it
  follows their runs; deletes a run's message once its final frame is logged;
- finds new subscribers to all its runs with one query per tick (GSI by owner);
- on SIGTERM hands its runs over: logs what it received, releases the leases,
  makes the messages visible again, drains its senders, well inside ECS's 120 s.

Blocking AWS calls run in a thread pool; the event loop only schedules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hatchway.connections import Connections
from hatchway.hatchet_adapter import HatchetEvents
from hatchway.observability import logger
from hatchway.run_queue import QueuedRun, RunQueue
from hatchway.settings import RelaySettings
from hatchway.store import Store, Subscription

from .fanout import ConnectionSender, DeliveryStats
from .run_follower import RunFollower

SUBSCRIPTION_OVERLAP_MS = 5_000  # re-read this far back: writers' clocks and commits lag


@dataclass
class HeldRun:
    follower: RunFollower
    message: QueuedRun
    task: asyncio.Task[None]


class Relay:
    def __init__(
        self,
        settings: RelaySettings,
        *,
        store: Store,
        queue: RunQueue,
        connections: Connections,
        hatchet: HatchetEvents,
    ) -> None:
        self.settings = settings
        self.owner = (
            settings.relay_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._store = store
        self._queue = queue
        self._connections = connections
        self._hatchet = hatchet
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="relay-io")
        self.runs: dict[str, HeldRun] = {}
        self.senders: dict[str, ConnectionSender] = {}
        self.delivered = DeliveryStats()
        self._stopping = asyncio.Event()
        self._seen: dict[tuple[str, str, int], float] = {}
        self._since_ms = int(time.time() * 1000) - SUBSCRIPTION_OVERLAP_MS

    async def _io(self, function: Any, *args: Any) -> Any:  # noqa: ANN401
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        logger.info("relay started", owner=self.owner)
        loops = [
            asyncio.create_task(self._receive_loop()),
            asyncio.create_task(self._subscription_loop()),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        await self._stopping.wait()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self._hand_over_all()
        logger.info("relay stopped", owner=self.owner, **self.delivered.__dict__)

    def stop(self) -> None:
        self._stopping.set()

    async def _hand_over_all(self) -> None:
        held = list(self.runs.values())
        for run in held:
            run.task.cancel()
        await asyncio.gather(*(r.task for r in held), return_exceptions=True)
        for run in held:
            with contextlib.suppress(Exception):
                await run.follower.hand_over()
                await self._io(self._queue.release, run.message.receipt_handle)
        await asyncio.gather(*(s.drain(10.0) for s in self.senders.values()))
        for sender in self.senders.values():
            self.delivered.add(sender.stats)
            await sender.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- taking runs -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while not self._stopping.is_set():
            room = self.settings.max_runs - len(self.runs)
            if room <= 0:
                await asyncio.sleep(0.5)
                continue
            try:
                messages = await self._io(
                    self._queue.receive,
                    room,
                    self.settings.queue_wait_seconds,
                    self.settings.visibility_seconds,
                )
            except Exception as error:  # noqa: BLE001 - keep polling through transient errors
                logger.warning("queue receive failed", error=str(error))
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                await self._take(message)

    async def _take(self, message: QueuedRun) -> None:
        held = self.runs.get(message.run_id)
        if held is not None:  # our own message came back: keep the newest receipt
            held.message = message
            return
        run = await self._io(
            self._store.acquire_lease, message.run_id, self.owner, self.settings.lease_seconds
        )
        if run is None:
            current = await self._io(self._store.get_run, message.run_id)
            if current is None:
                logger.warning("queued run unknown; dropping its message", run_id=message.run_id)
                await self._io(self._queue.delete, message.receipt_handle)
                return
            if current.final:
                await self._io(self._queue.delete, message.receipt_handle)
                return
            # Another relay holds it: look again when its lease could have lapsed.
            wait_s = max(1, int((current.lease_expires_at - time.time() * 1000) / 1000) + 1)
            await self._io(self._queue.extend, message.receipt_handle, min(wait_s, 43_200))
            return
        if run.final:
            await self._io(self._store.release_lease, run.run_id, self.owner)
            await self._io(self._queue.delete, message.receipt_handle)
            return
        follower = RunFollower(
            run,
            owner=self.owner,
            store=self._store,
            hatchet=self._hatchet,
            executor=self._executor,
            sender_for=self._sender,
            coalesce_s=self.settings.coalesce_ms / 1000,
        )
        task = asyncio.create_task(self._follow(follower))
        self.runs[run.run_id] = HeldRun(follower, message, task)
        logger.info("following run", run_id=run.run_id, last_seq=run.last_seq)

    async def _follow(self, follower: RunFollower) -> None:
        try:
            await follower.follow()
        except Exception:  # noqa: BLE001 - one run's failure must not stop the relay
            logger.exception("following a run failed", run_id=follower.run_id)
            with contextlib.suppress(Exception):
                await follower.hand_over()
            held = self.runs.pop(follower.run_id, None)
            if held is not None:
                await self._io(self._queue.release, held.message.receipt_handle)
            return
        held = self.runs.pop(follower.run_id, None)
        if held is None:
            return
        if follower.final and not follower.lease_lost:
            await self._io(self._queue.delete, held.message.receipt_handle)
            logger.info(
                "run finished",
                run_id=follower.run_id,
                status=follower.status,
                last_seq=follower.logged_seq,
                log_writes=follower.log_writes,
            )

    # -- keeping runs ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = min(self.settings.lease_seconds, self.settings.visibility_seconds) / 3
        while True:
            await asyncio.sleep(interval)
            for run_id, held in list(self.runs.items()):
                try:
                    renewed = await self._io(
                        self._store.renew_lease, run_id, self.owner, self.settings.lease_seconds
                    )
                    await self._io(
                        self._queue.extend,
                        held.message.receipt_handle,
                        self.settings.visibility_seconds,
                    )
                except Exception as error:  # noqa: BLE001 - try again next beat
                    logger.warning("heartbeat failed", run_id=run_id, error=str(error))
                    continue
                if not renewed:
                    logger.warning("lease taken by another relay", run_id=run_id)
                    held.follower.lease_lost = True
                    held.task.cancel()
                    self.runs.pop(run_id, None)

    # -- subscribers -------------------------------------------------------------------

    async def _subscription_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_ms / 1000)
            if not self.runs:
                self._since_ms = int(time.time() * 1000) - SUBSCRIPTION_OVERLAP_MS
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
                key = (subscription.run_id, subscription.connection_id, subscription.created_at)
                if key in self._seen:
                    continue
                self._seen[key] = now
                held = self.runs.get(subscription.run_id)
                if held is not None:
                    await held.follower.add_subscriber(subscription)
            self._since_ms = int(time.time() * 1000) - SUBSCRIPTION_OVERLAP_MS
            self._seen = {k: t for k, t in self._seen.items() if now - t < 60}

    def _sender(self, connection_id: str) -> ConnectionSender:
        sender = self.senders.get(connection_id)
        if sender is None or sender.closed:
            sender = ConnectionSender(
                connection_id, self._connections, self._executor, on_gone=self._connection_gone
            )
            sender.start()
            self.senders[connection_id] = sender
        return sender

    async def _connection_gone(self, connection_id: str) -> None:
        """410 for this connection: remove exactly it, from every run and the table."""
        for held in self.runs.values():
            held.follower.remove_subscriber(connection_id)
        sender = self.senders.pop(connection_id, None)
        if sender is not None:
            self.delivered.add(sender.stats)
        with contextlib.suppress(Exception):
            await self._io(self._store.drop_connection, connection_id)
        logger.info("connection gone", connection_id=connection_id)
