"""A relay never takes more than RELAY_MAX_RUNS: it asks the queue for no more runs
than it has room for (the takeovers under way count), and none while it is full,
so one task never starves the others. And a handover gives the run back as a new
message (receive count zero), never by a release that would spend a receive."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from hatchway.relay import service
from hatchway.relay.service import Relay
from hatchway.run_queue import QueuedRun, RunQueue
from hatchway.settings import RelaySettings
from tests.unit.test_relay_upkeep import Follower, held


class CountingQueue:
    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []  # (max_runs asked, runs held then)
        self.called = threading.Event()
        self.relay: Relay | None = None

    def receive(self, max_runs: int, _wait_s: int, _visibility_s: int) -> list[QueuedRun]:
        assert self.relay is not None
        self.asked.append((max_runs, len(self.relay.runs)))
        self.called.set()
        return []


class Watched(Relay):
    """Counts how often the receive loop looked for room."""

    looked = 0
    looked_thrice: asyncio.Event

    @property
    def room(self) -> int:
        self.looked += 1
        if self.looked >= 3:
            self.looked_thrice.set()
        return super().room


def relay(queue: Any, max_runs: int) -> Watched:
    settings = RelaySettings.model_construct(
        run_queue_url="q",
        table_name="t",
        management_api_url="http://x",
        hatchet=None,
        max_runs=max_runs,
        queue_wait_seconds=0,
    )
    made = Watched(
        settings,
        store=object(),  # type: ignore[arg-type]
        queue=queue,
        connections=object(),  # type: ignore[arg-type]
        hatchet=object(),  # type: ignore[arg-type]
        payloads=object(),  # type: ignore[arg-type]
    )
    made.looked_thrice = asyncio.Event()
    return made


async def test_a_full_relay_receives_nothing_and_then_only_what_it_has_room_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "FULL_POLL_S", 0.01)
    queue = CountingQueue()
    full = relay(queue, max_runs=4)
    queue.relay = full
    for run_id in ("a", "b", "c"):
        full.runs[run_id] = held(Follower(run_id))
    taking_over = asyncio.get_running_loop().create_future()
    full._successors["d"] = taking_over  # type: ignore[assignment]  # a takeover under way
    assert full.room == 0
    loop = asyncio.create_task(full._receive_loop())
    try:
        await asyncio.wait_for(full.looked_thrice.wait(), 10)
        assert queue.asked == []  # full: it never asked the queue

        del full.runs["a"]  # one run ended: room for exactly one
        await asyncio.wait_for(asyncio.to_thread(queue.called.wait, 10), 15)
        assert queue.asked[0] == (1, 2)
    finally:
        full.stop()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        taking_over.cancel()


class Sqs:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(**request: Any) -> dict[str, Any]:
            self.calls.append((name, request))
            return {"Messages": []}

        return call


def test_the_queue_asks_for_at_most_ten_and_never_zero() -> None:
    sqs = Sqs()
    queue = RunQueue("q", client=sqs)
    queue.receive(500, 20, 30)
    queue.receive(3, 20, 30)
    queue.receive(0, 20, 30)
    assert [r["MaxNumberOfMessages"] for _, r in sqs.calls] == [10, 3, 1]


def test_a_resend_sends_the_same_body_as_a_new_message_before_deleting_the_old() -> None:
    sqs = Sqs()
    queue = RunQueue("q", client=sqs)
    body = json.dumps({"runId": "r1"})
    queue.resend(QueuedRun("r1", "receipt-1", 4, body))
    assert sqs.calls == [
        ("send_message", {"QueueUrl": "q", "MessageBody": body}),
        ("delete_message", {"QueueUrl": "q", "ReceiptHandle": "receipt-1"}),
    ]
