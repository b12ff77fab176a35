"""RunFollower alone: Hatchet events in, sequenced frames out (fakes for its boundaries)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from hatchway.hatchet_adapter import HatchetEvent, RunStatus
from hatchway.payloads import Payloads
from hatchway.protocol import Frame
from hatchway.relay.run_follower import RunFollower
from hatchway.store import LeaseLostError, RunRecord, Subscription


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
    def __init__(self, owner: str = "me") -> None:
        self.log: list[Frame] = []
        self.owner = owner
        self.indexes: dict[str, int] = {}
        self.released = False

    def append_frames(
        self, _run_id: str, frames: list[Frame], owner: str, indexes: dict[str, int]
    ) -> None:
        if owner != self.owner or frames[0]["seq"] != len(self.log) + 1:
            raise LeaseLostError("fenced")
        self.log.extend(frames)
        self.indexes = indexes

    def read_frames(self, _run_id: str, after: int, _limit: int) -> list[Frame]:
        return [f for f in self.log if f["seq"] > after]

    def subscriptions_of_run(self, _run_id: str) -> list[Subscription]:
        return []

    def release_lease(self, _run_id: str, _owner: str) -> None:
        self.released = True


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

    def send(self, frames: list[Frame]) -> None:
        self.sent.extend(frames)


def follower(
    hatchet: FakeHatchet,
    store: FakeStore,
    last_seq: int = 0,
    indexes: dict[str, int] | None = None,
    status: str = "QUEUED",
    *,
    payloads: Payloads | None = None,
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
            coalesce_s=0.001,
            # no frame here needs S3 unless a test passes its own fake
            payloads=payloads or Payloads("bucket", client=object()),
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
