"""ConnectionSender alone: one connection's queue, its retries, and shedding a
connection that cannot keep up (a fake management API stands in for API Gateway)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hatchway.connections import DeliveryError, ThrottledError, UnavailableError
from hatchway.payloads import Payloads
from hatchway.protocol import chunk_frame
from hatchway.relay.fanout import ConnectionSender


class FakeConnections:
    """The async management API: posts land in ``posted``; ``refuse`` makes posts
    raise; ``block`` makes them hang (a client that does not read) until released."""

    def __init__(self) -> None:
        self.posted: list[Any] = []
        self.closed: list[str] = []
        self.refuse: type[DeliveryError] | None = None
        self.block = asyncio.Event()
        self.block.set()
        self.blocked_once = asyncio.Event()

    async def post(self, connection_id: str, data: str) -> None:
        if not self.block.is_set():
            self.blocked_once.set()
            await asyncio.wait_for(self.block.wait(), 10)
        if self.refuse is not None:
            raise self.refuse(connection_id)
        self.posted.append(json.loads(data))

    async def close(self, connection_id: str) -> None:
        self.closed.append(connection_id)


def frames_of(posted: list[Any]) -> list[Any]:
    return [f for message in posted for f in message.get("frames", [message])]


async def sender_for(
    connections: FakeConnections, gone: list[str], **limits: Any
) -> ConnectionSender:
    async def on_gone(connection_id: str) -> None:
        gone.append(connection_id)

    sender = ConnectionSender(
        "c1",
        connections,  # type: ignore[arg-type]
        ThreadPoolExecutor(4),
        on_gone=on_gone,
        payloads=Payloads.__new__(Payloads),  # never called: no references here
        **limits,
    )
    sender.start()
    return sender


async def until(condition: Any, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - a condition on state the test reads
            await asyncio.sleep(0.01)


async def test_frames_go_out_in_order_through_5xx_and_throttling() -> None:
    connections = FakeConnections()
    gone: list[str] = []
    sender = await sender_for(connections, gone)
    connections.refuse = UnavailableError
    sender.send([chunk_frame("r1", 1, "a")])
    await until(lambda: sender.stats.unavailable >= 2)
    connections.refuse = ThrottledError
    sender.send([chunk_frame("r1", 2, "b")])
    await until(lambda: sender.stats.throttled >= 2)
    connections.refuse = None
    await until(lambda: len(frames_of(connections.posted)) == 2)
    assert [f["seq"] for f in frames_of(connections.posted)] == [1, 2]
    assert gone == []
    await sender.close()


async def test_a_connection_that_does_not_read_is_shed_past_its_queue_bound() -> None:
    connections = FakeConnections()
    connections.block.clear()  # the client stopped reading: posts hang
    gone: list[str] = []
    sender = await sender_for(connections, gone, max_queued_bytes=64 * 1024)
    sender.send([chunk_frame("r1", 1, "first")])
    await asyncio.wait_for(connections.blocked_once.wait(), 10)
    for seq in range(2, 200):
        sender.send([chunk_frame("r1", seq, "x" * 1000)])
    connections.block.set()
    await until(lambda: gone == ["c1"])
    assert sender.closed
    assert sender.stats.shed == 1
    assert sender.queued_bytes == 0  # its memory is freed
    errors = [f for f in frames_of(connections.posted) if f.get("type") == "error"]
    assert [e["code"] for e in errors] == ["too_slow"]
    assert "after" in errors[0]["message"]
    assert connections.closed == ["c1"]
    sender.send([chunk_frame("r1", 500, "late")])  # nothing more is taken
    assert sender.queued_bytes == 0


async def test_a_connection_whose_posts_never_get_through_is_shed_after_the_stall_bound() -> None:
    connections = FakeConnections()
    connections.refuse = ThrottledError
    gone: list[str] = []
    sender = await sender_for(connections, gone, stall_s=0.3)
    sender.send([chunk_frame("r1", 1, "a")])
    await until(lambda: gone == ["c1"])
    assert sender.stats.shed == 1
    assert connections.closed == ["c1"]


async def test_a_big_backlog_that_drains_is_not_shed() -> None:
    connections = FakeConnections()
    gone: list[str] = []
    sender = await sender_for(connections, gone, max_queued_bytes=512 * 1024)
    for seq in range(1, 2001):  # ~200 KB at once: a replay, within the bound
        sender.send([chunk_frame("r1", seq, "y" * 10)])
    await until(lambda: len(frames_of(connections.posted)) == 2000)
    assert gone == []
    assert [f["seq"] for f in frames_of(connections.posted)] == list(range(1, 2001))
    await sender.close()


async def test_a_busy_connection_gets_one_message_per_window_and_a_quiet_one_at_once() -> None:
    connections = FakeConnections()
    gone: list[str] = []
    sender = await sender_for(connections, gone, interval_s=0.2)
    sender.send([chunk_frame("r1", 1, "first")])  # quiet until now: it goes alone, at once
    await until(lambda: len(connections.posted) == 1)
    for seq in range(2, 11):  # nine more within the window: one message, in order
        sender.send([chunk_frame("r1", seq, "x")])
    await until(lambda: len(frames_of(connections.posted)) == 10)
    assert len(connections.posted) == 2
    assert connections.posted[0]["seq"] == 1
    assert [f["seq"] for f in connections.posted[1]["frames"]] == list(range(2, 11))
    await sender.close()
