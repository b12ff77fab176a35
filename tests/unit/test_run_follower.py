"""RunFollower alone: Hatchet events in, sequenced frames out (fakes for its boundaries)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from botocore.exceptions import ClientError

from hatchway.hatchet_adapter import HatchetEvent, RunStatus
from hatchway.payloads import Payloads
from hatchway.protocol import Frame
from hatchway.relay import run_follower as run_follower_module
from hatchway.relay.run_follower import LogUnavailableError, RunFollower
from hatchway.store import LeaseLostError, LogTail, RunRecord, Subscription


def event(
    kind: str,
    resource: str = "STEP_RUN",
    payload: str = "",
    index: int | None = None,
    task: str = "t1",
) -> HatchetEvent:
    hangup = resource == "WORKFLOW_RUN"
    return HatchetEvent(
        resource, kind, task if resource == "STEP_RUN" else "run", payload, hangup, index, 0
    )


class FakeStore:
    """The store's rules that the follower relies on: a log item per first seq (a
    key written twice is refused), seqs reserved and META moved only by the holder."""

    def __init__(self, owner: str = "me") -> None:
        self.log: list[Frame] = []
        self.items: dict[int, tuple[str, int]] = {}  # first seq -> (writer, last seq)
        self.owner = owner
        self.indexes: dict[str, int] = {}
        self.released = False
        self.meta: dict[str, Any] = {}

    def append_frames(
        self, _run_id: str, frames: list[Frame], owner: str, indexes: dict[str, int]
    ) -> None:
        first = int(frames[0]["seq"])
        if first in self.items or (self.log and first <= int(self.log[-1]["seq"])):
            raise LeaseLostError("that seq is logged already")
        self.items[first] = (owner, int(frames[-1]["seq"]))
        self.log.extend(frames)
        self.indexes = indexes

    def frames_item_writer(self, _run_id: str, first_seq: int) -> tuple[str, int] | None:
        return self.items.get(first_seq)

    def log_tail(self, _run_id: str) -> LogTail:
        if not self.log:
            return LogTail()
        final = self.log[-1] if self.log[-1].get("final") else None
        return LogTail(int(self.log[-1]["seq"]), dict(self.indexes) or None, final)

    def update_run(self, _run_id: str, owner: str, **changes: Any) -> bool:
        if owner != self.owner:
            return False
        self.meta.update({k: v for k, v in changes.items() if v is not None})
        return True

    def read_frames(self, _run_id: str, after: int, limit: int) -> list[Frame]:
        return [f for f in self.log if f["seq"] > after][:limit]

    def subscriptions_of_run(self, _run_id: str) -> list[Subscription]:
        return []

    def release_lease(self, _run_id: str, _owner: str, _logged_seq: int | None = None) -> None:
        self.released = True

    def get_run(self, run_id: str) -> RunRecord:
        return RunRecord(run_id, "wf", "RUNNING", len(self.log), 0, 0, self.owner, 0, None)


class FlakyStore(FakeStore):
    """Every ``every``-th append fails as DynamoDB does under load (a 500 after
    botocore's retries); ``applied`` makes the failed request land all the same
    (the error came back after the write). ``down`` fails every append."""

    def __init__(self, every: int = 5, *, applied: bool = False) -> None:
        super().__init__()
        self.every = every
        self.applied = applied
        self.calls = 0
        self.failures = 0
        self.down = False

    def append_frames(
        self, run_id: str, frames: list[Frame], owner: str, indexes: dict[str, int]
    ) -> None:
        self.calls += 1
        if self.down or self.calls % self.every == 0:
            self.failures += 1
            if self.applied and not self.down:
                super().append_frames(run_id, frames, owner, indexes)
            raise ClientError(
                {"Error": {"Code": "InternalServerError", "Message": "try again"}},
                "TransactWriteItems",
            )
        super().append_frames(run_id, frames, owner, indexes)


class FakeHatchet:
    """Each subscription plays the next script: a list of events, ending with an
    exception to raise (a broken stream) or not (a normal end)."""

    def __init__(self, scripts: list[list[Any]], status: RunStatus | None = None) -> None:
        self.scripts = scripts
        self.final_status = status or RunStatus("RUNNING", False, None, None)
        self.subscriptions = 0

    async def events(self, _run_id: str) -> AsyncIterator[HatchetEvent]:
        script = self.scripts[min(self.subscriptions, len(self.scripts) - 1)]
        self.subscriptions += 1
        for item in script:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def status(self, _run_id: str) -> RunStatus:
        return self.final_status


class Unavailable(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
        )


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[Frame] = []

    def send(self, frames: list[Frame], received_at: float | None = None) -> None:  # noqa: ARG002
        self.sent.extend(frames)

    async def wait_for_room(self) -> None:
        pass


def follower(
    hatchet: FakeHatchet,
    store: FakeStore,
    last_seq: int = 0,
    indexes: dict[str, int] | None = None,
    status: str = "QUEUED",
    *,
    payloads: Payloads | None = None,
    log_retry_s: float = 60.0,
) -> tuple[RunFollower, FakeSender]:
    sender = FakeSender()
    run = RunRecord("r1", "wf", status, last_seq, 0, 0, "me", 0, indexes)
    return (
        RunFollower(
            run,
            owner="me",
            store=store,
            hatchet=hatchet,  # type: ignore[arg-type]
            executor=ThreadPoolExecutor(2),
            sender_for=lambda _c: sender,  # type: ignore[arg-type,return-value]
            log_commit_s=0.001,
            # no frame here needs S3 unless a test passes its own fake
            payloads=payloads or Payloads("bucket", client=object()),
            log_retry_s=log_retry_s,
        ),
        sender,
    )


def kinds(frames: list[Frame]) -> list[str]:
    return [f"{f['type']}:{f.get('status') or f.get('data') or ''}" for f in frames]


async def test_events_become_one_contiguous_sequence() -> None:
    store = FakeStore()
    hatchet = FakeHatchet(
        [
            [
                event("STREAM", payload="a", index=0),
                event("STARTED"),
                event("STREAM", payload="b", index=1),
                event("COMPLETED"),
                event("COMPLETED", "WORKFLOW_RUN", '{"t1": {"ok": true}}'),
            ]
        ]
    )
    run, _ = follower(hatchet, store)
    await run.follow()

    assert [f["seq"] for f in store.log] == [1, 2, 3, 4]
    assert kinds(store.log) == ["status:RUNNING", "chunk:a", "chunk:b", "status:COMPLETED"]
    assert store.log[-1]["output"] == {"t1": {"ok": True}}
    assert store.log[-1]["final"] is True


async def test_a_broken_stream_is_resubscribed_and_missed_chunks_make_a_gap() -> None:
    store = FakeStore()
    hatchet = FakeHatchet(
        [
            [event("STARTED"), event("STREAM", payload="a", index=0), Unavailable()],
            [
                event("STREAM", payload="a", index=0),
                event("STREAM", payload="d", index=3),
                event("FAILED", "WORKFLOW_RUN", "boom"),
            ],
        ]
    )
    run, _ = follower(hatchet, store)
    await run.follow()

    assert hatchet.subscriptions == 2
    assert kinds(store.log) == ["status:RUNNING", "chunk:a", "gap:", "chunk:d", "status:FAILED"]
    assert "2 chunk(s)" in store.log[2]["reason"]
    assert store.log[-1]["error"] == "boom"


async def test_a_takeover_continues_the_sequence_and_drops_what_was_logged() -> None:
    store = FakeStore()
    store.log = [{"type": "status", "seq": 1}, {"type": "chunk", "seq": 2}]
    hatchet = FakeHatchet(
        [
            [
                event("STREAM", payload="x", index=0),
                event("STREAM", payload="y", index=1),
                event("COMPLETED", "WORKFLOW_RUN", "{}"),
            ]
        ]
    )
    run, _ = follower(hatchet, store, last_seq=2, indexes={"t1": 0}, status="RUNNING")
    await run.follow()

    assert kinds(store.log[2:]) == ["chunk:y", "status:COMPLETED"]
    assert [f["seq"] for f in store.log] == [1, 2, 3, 4]


async def test_a_run_that_ended_unwatched_still_ends_its_sequence() -> None:
    store = FakeStore()
    hatchet = FakeHatchet([[]], RunStatus("COMPLETED", True, {"t1": 1}, None))
    run, _ = follower(hatchet, store)
    await run.follow()

    assert kinds(store.log) == ["gap:", "status:COMPLETED"]
    assert store.log[-1]["output"] == {"t1": 1}


async def test_losing_the_lease_stops_writing() -> None:
    store = FakeStore(owner="someone-else")
    hatchet = FakeHatchet([[event("STARTED"), event("COMPLETED", "WORKFLOW_RUN", "{}")]])
    run, _ = follower(hatchet, store)
    await run.follow()

    assert run.lease_lost
    assert store.log == []


async def test_subscribers_get_backlog_then_live_without_repeats() -> None:
    store = FakeStore()
    hatchet = FakeHatchet([[event("STARTED"), event("STREAM", payload="a", index=0)]])
    run, sender = follower(hatchet, store)
    events = hatchet.events("r1")
    run._on_event(await anext(events))  # STARTED
    run._on_event(await anext(events))  # chunk "a"
    await run.flush()
    await run.add_subscriber(Subscription("r1", "c1", after=1, token_expires_at=0, created_at=0))
    run._on_event(event("COMPLETED", "WORKFLOW_RUN", "{}"))
    await run.flush()

    assert [f["seq"] for f in sender.sent] == [2, 3]


# -- a frame log that fails: nothing received is lost (issue: hardening, item 1) -------


def streamed(chunks: int) -> list[Any]:
    return [
        *(event("STREAM", payload=f"c{n} ", index=n) for n in range(chunks)),
        event("COMPLETED", "WORKFLOW_RUN", "{}"),
    ]


class PacedHatchet(FakeHatchet):
    """Events a few milliseconds apart, so the coalescing timer flushes many times
    while the stream goes on (the flushes nobody awaits)."""

    async def events(self, run_id: str) -> AsyncIterator[HatchetEvent]:
        async for item in super().events(run_id):
            await asyncio.sleep(0.003)
            yield item


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_follower_module, "LOG_MAX_BACKOFF_S", 0.01)


@pytest.mark.usefixtures("fast_backoff")
@pytest.mark.parametrize("applied", [False, True], ids=["refused", "applied-then-500"])
async def test_failing_log_writes_are_retried_in_order_and_nothing_is_lost(applied: bool) -> None:
    store = FlakyStore(every=3, applied=applied)
    run, sender = follower(PacedHatchet([streamed(40)]), store)
    run.subscribers["c1"] = run_follower_module.Subscriber("c1", cursor=0, live=True)
    await run.follow()

    assert store.failures >= 5
    assert [f["seq"] for f in store.log] == list(range(1, 43))  # no seq twice, none missing
    assert "".join(f.get("data", "") for f in store.log) == "".join(f"c{n} " for n in range(40))
    assert store.log[-1]["final"] is True
    assert not any(f["type"] == "gap" for f in store.log)
    assert sender.sent == store.log  # each frame reached the subscriber once, in order
    assert not run.lease_lost


@pytest.mark.usefixtures("fast_backoff")
async def test_a_burst_of_errors_on_the_final_flush_still_logs_the_final_status() -> None:
    store = FlakyStore(every=10**6)
    hatchet = FakeHatchet([streamed(5)])
    run, _ = follower(hatchet, store)
    original = store.append_frames
    burst = iter(range(6))

    def failing_at_the_end(*args: Any) -> None:
        if any(f.get("final") for f in args[1]) and next(burst, None) is not None:
            raise ClientError({"Error": {"Code": "ThrottlingException"}}, "TransactWriteItems")
        original(*args)

    store.append_frames = failing_at_the_end  # type: ignore[method-assign]
    await run.follow()
    assert store.log[-1]["final"] is True
    assert [f["seq"] for f in store.log] == list(range(1, len(store.log) + 1))


@pytest.mark.usefixtures("fast_backoff")
async def test_a_log_down_past_the_bound_hands_the_run_back_keeping_every_frame() -> None:
    store = FlakyStore(every=10**6)
    store.down = True
    run, _ = follower(FakeHatchet([streamed(3)]), store, log_retry_s=0.2)
    with pytest.raises(LogUnavailableError):
        await run.follow()  # the relay then releases the run's message, never deletes it
    assert store.log == []
    assert [f["seq"] for f in run._unlogged] == [1, 2, 3, 4, 5]  # kept, in order
    assert run._unlogged[-1]["final"] is True


@pytest.mark.usefixtures("fast_backoff")
async def test_a_timed_flush_that_fails_stops_the_follower_instead_of_dying_unseen() -> None:
    store = FlakyStore(every=10**6)
    endless = [event("STREAM", payload=f"c{n}", index=n) for n in range(10_000)]
    run, _ = follower(PacedHatchet([endless]), store, log_retry_s=0.1)
    store.down = True
    with pytest.raises(LogUnavailableError):
        await asyncio.wait_for(run.follow(), 30)  # not the 30 s of an endless stream
    assert store.log == []


# -- run tokens expire: the relay stops streaming (issue: hardening, item 6) ----------


async def test_a_subscriber_whose_token_expired_gets_unauthorized_and_nothing_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_000.0]
    monkeypatch.setattr(run_follower_module.time, "time", lambda: clock[0])
    store = FakeStore()
    hatchet = FakeHatchet([[]])
    run, sender = follower(hatchet, store, status="RUNNING")
    await run.add_subscriber(
        Subscription("r1", "c1", after=0, token_expires_at=1_010, created_at=0)
    )
    run._on_event(event("STREAM", payload="a", index=0))
    await run.flush()
    clock[0] = 1_010.0  # the token's expiry
    run._on_event(event("STREAM", payload="b", index=1))
    run._on_event(event("COMPLETED", "WORKFLOW_RUN", "{}"))
    await run.flush()

    assert [f.get("data") for f in sender.sent if f["type"] == "chunk"] == ["a"]
    assert sender.sent[-1]["type"] == "error"
    assert sender.sent[-1]["code"] == "unauthorized"
    assert sender.sent[-1]["runId"] == "r1"
    assert "after=1" in sender.sent[-1]["message"]
    assert "c1" not in run.subscribers
    assert [f["seq"] for f in store.log] == [1, 2, 3]  # the log itself goes on


# -- a new subscriber's backlog, a page at a time --------------------------------------


class SlowRoomSender(FakeSender):
    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    async def wait_for_room(self) -> None:
        self.waits += 1
        await asyncio.sleep(0)


async def test_a_long_backlog_is_handed_over_a_page_at_a_time_in_order() -> None:
    store = FakeStore()
    store.log = [run_follower_module.chunk_frame("r1", seq, "x") for seq in range(1, 2501)]
    hatchet = FakeHatchet([[]])
    run, _ = follower(hatchet, store, last_seq=2500, status="RUNNING")
    sender = SlowRoomSender()
    run._sender_for = lambda _connection_id: sender  # type: ignore[assignment,return-value]
    await run.add_subscriber(Subscription("r1", "c1", after=0, token_expires_at=0, created_at=0))

    assert [f["seq"] for f in sender.sent] == list(range(1, 2501))
    assert sender.waits >= 2  # it waited for the connection between pages


async def test_unsubscribed_during_the_backlog_read_gets_nothing_after_it() -> None:
    store = FakeStore()
    store.log = [run_follower_module.chunk_frame("r1", seq, "x") for seq in range(1, 11)]
    hatchet = FakeHatchet([[]])
    run, sender = follower(hatchet, store, last_seq=10, status="RUNNING")
    reading = asyncio.Event()
    release = asyncio.Event()
    read_frames = store.read_frames

    def slow_read(run_id: str, after: int, limit: int) -> list[Frame]:
        reading.set()
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return read_frames(run_id, after, limit)

    loop = asyncio.get_running_loop()
    store.read_frames = slow_read  # type: ignore[method-assign]
    store.forget_subscription = lambda *_: None  # type: ignore[attr-defined]
    adding = asyncio.create_task(
        run.add_subscriber(Subscription("r1", "c1", after=0, token_expires_at=0, created_at=0))
    )
    await reading.wait()
    await run.unsubscribe("c1")
    release.set()
    await adding

    assert sender.sent == [{"type": "unsubscribed", "runId": "r1"}]


# -- fan-out before the log (issue: the relay's hot path) ------------------------------


async def test_a_successor_of_a_holder_that_died_starts_after_its_reserved_seqs() -> None:
    store = FakeStore()
    store.log = [{"type": "status", "seq": 1}, {"type": "chunk", "seq": 2}]
    hatchet = FakeHatchet(
        [[event("STREAM", payload="z", index=5), event("COMPLETED", "WORKFLOW_RUN", "{}")]]
    )
    run, _ = follower(hatchet, store, last_seq=2, indexes={"t1": 1}, status="RUNNING")
    run._run = RunRecord("r1", "wf", "RUNNING", 2, 0, 0, "me", 0, {"t1": 1}, reserved_seq=256)
    await run.follow()

    gap = store.log[2]
    assert (gap["type"], gap["seq"], gap["skipped"]) == ("gap", 257, [3, 256])
    assert "3 chunk(s)" in gap["reason"]  # the chunks missed upstream, said by the same gap
    assert kinds(store.log[3:]) == ["chunk:z", "status:COMPLETED"]
    assert [f["seq"] for f in store.log[3:]] == [258, 259]
    assert store.meta["reserved_seq"] >= 259  # reserved before it was sent


async def test_frames_reach_subscribers_before_the_log_and_a_new_one_gets_them_from_memory() -> (
    None
):
    store = FakeStore()
    hatchet = FakeHatchet([[]])
    run, sender = follower(hatchet, store, status="RUNNING")
    run._log_commit_s = 3600  # nothing is logged until the end
    live = run_follower_module.Subscriber("c0", cursor=0, live=True)
    run.subscribers["c0"] = live
    await run._open()
    run._on_event(event("STREAM", payload="a", index=0))
    run._on_event(event("STREAM", payload="b", index=1))
    assert [f.get("data") for f in sender.sent] == ["a", "b"]  # sent, not logged
    assert store.log == []
    late = FakeSender()
    run._sender_for = lambda c: late if c == "c1" else sender  # type: ignore[assignment,return-value]
    await run.add_subscriber(Subscription("r1", "c1", after=0, token_expires_at=0, created_at=0))
    assert [f.get("data") for f in late.sent] == ["a", "b"]
    run._on_event(event("COMPLETED", "WORKFLOW_RUN", "{}"))
    await run.flush()
    assert [f["seq"] for f in store.log] == [1, 2, 3]  # one group commit
    assert len(store.items) == 1
    assert [f["seq"] for f in late.sent] == [1, 2, 3]


async def test_past_its_lease_a_holder_sends_and_logs_nothing_and_gives_the_run_up() -> None:
    store = FakeStore()
    run, sender = follower(FakeHatchet([[]]), store, status="RUNNING")
    run.subscribers["c0"] = run_follower_module.Subscriber("c0", cursor=0, live=True)
    await run._open()
    run.lease_until = 0.0  # heartbeats failed: a successor may hold the run by now
    run._on_event(event("STREAM", payload="a", index=0))
    run._on_event(event("COMPLETED", "WORKFLOW_RUN", "{}"))
    await run.flush()

    assert sender.sent == []
    assert store.log == []
    assert run.lease_lost  # so the relay never deletes the run's message
