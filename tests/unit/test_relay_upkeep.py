"""The relay's upkeep alone (fakes for the table and the queue): heartbeats renew
every live run's lease at once and leave finished runs alone; a sender ends with
its connection's last subscription."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from hatchway.relay.fanout import DeliveryStats
from hatchway.relay.service import HeldRun, Relay
from hatchway.run_queue import QueuedRun
from hatchway.settings import RelaySettings


class Table:
    def __init__(self) -> None:
        self.renewed: list[str] = []
        self.lock = threading.Lock()
        self.gate = threading.Barrier(3, timeout=5)  # three renewals must overlap

    def renew_lease(self, run_id: str, _owner: str, _lease_s: float) -> bool:
        self.gate.wait()  # a renewal one at a time would never pass this
        with self.lock:
            self.renewed.append(run_id)
        return True


class Queue:
    def __init__(self) -> None:
        self.extended: list[list[str]] = []

    def extend_many(self, receipts: list[str], _visibility_s: int) -> list[str]:
        self.extended.append(list(receipts))
        return []


class Follower:
    def __init__(self, run_id: str, *, finished: bool = False) -> None:
        self.run_id = run_id
        self.finished = asyncio.Event()
        if finished:
            self.finished.set()
        self.subscribers: dict[str, Any] = {}
        self.renewed_until = 0.0
        self.lease_lost = False

    def lease_renewed(self, until: float) -> None:
        self.renewed_until = until


def relay(table: Table, queue: Queue) -> Relay:
    settings = RelaySettings.model_construct(
        run_queue_url="q", table_name="t", management_api_url="http://x", hatchet=None
    )
    return Relay(
        settings,
        store=table,  # type: ignore[arg-type]
        queue=queue,  # type: ignore[arg-type]
        connections=object(),  # type: ignore[arg-type]
        hatchet=object(),  # type: ignore[arg-type]
        payloads=object(),  # type: ignore[arg-type]
    )


def held(follower: Follower) -> HeldRun:
    task = asyncio.get_running_loop().create_future()
    return HeldRun(follower, QueuedRun(follower.run_id, f"receipt-{follower.run_id}", 1), task)  # type: ignore[arg-type]


async def test_a_beat_renews_live_leases_together_and_skips_finished_runs() -> None:
    table, queue = Table(), Queue()
    upkeep = relay(table, queue)
    followers = [Follower("a"), Follower("b"), Follower("c"), Follower("done", finished=True)]
    for follower in followers:
        upkeep.runs[follower.run_id] = held(follower)
    await upkeep._beat()

    assert sorted(table.renewed) == ["a", "b", "c"]  # together (the barrier), not "done"
    assert queue.extended == [["receipt-a", "receipt-b", "receipt-c"]]  # one batch call
    assert all(f.renewed_until > 0 for f in followers[:3])


class Sender:
    def __init__(self, *, idle: bool) -> None:
        self.idle = idle
        self.closed = False
        self.stats = DeliveryStats(posts=1)

    async def close(self) -> None:
        self.closed = True


async def test_a_sender_ends_with_its_connection_s_last_subscription_once_idle() -> None:
    upkeep = relay(Table(), Queue())
    follower = Follower("a")
    follower.subscribers["still"] = object()
    upkeep.runs["a"] = held(follower)
    senders = {"still": Sender(idle=True), "done": Sender(idle=True), "busy": Sender(idle=False)}
    upkeep.senders.update(senders)  # type: ignore[arg-type]
    await upkeep._end_idle_senders()

    assert set(upkeep.senders) == {"still", "busy"}  # "busy" ends once it posted all
    assert senders["done"].closed
    assert upkeep.delivered.posts == 1  # its figures are kept
