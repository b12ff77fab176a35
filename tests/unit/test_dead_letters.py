"""The dead-letter consumer's core (``hatchway.dead_letters``) with an in-memory
table: a run over already gets nothing appended, a live holder's lease is respected
(the record is retried), and any other run ends with a gap and Hatchet's status,
posted to its subscribers."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from hatchway.dead_letters import GAP_REASON, DeadLetters, Outcome, handle_batch
from hatchway.hatchet_adapter import RunStatus, UpstreamUnavailableError
from hatchway.protocol import Frame, chunk_frame, status_frame
from hatchway.store import LeaseLostError, LogTail, RunRecord, Subscription


class Table:
    """The Store methods the consumer uses, with the same conditions."""

    def __init__(self, run: RunRecord, frames: list[Frame] | None = None) -> None:
        self.run = run
        self.frames = list(frames or [])
        self.subscriptions: dict[str, Subscription] = {}
        self.appended: list[list[Frame]] = []
        self.dropped: list[str] = []

    def get_run(self, run_id: str) -> RunRecord | None:
        return self.run if run_id == self.run.run_id else None

    def acquire_lease(self, _run_id: str, owner: str, lease_s: float) -> RunRecord | None:
        now = int(time.time() * 1000)
        if self.run.lease_owner not in (None, owner) and self.run.lease_expires_at >= now:
            return None
        self.run = replace(self.run, lease_owner=owner, lease_expires_at=now + int(lease_s * 1000))
        return self.run

    def release_lease(self, _run_id: str, owner: str, logged_seq: int | None = None) -> None:
        if self.run.lease_owner == owner:
            self.run = replace(self.run, lease_owner=None, lease_expires_at=0)
            if logged_seq is not None:
                self.run = replace(self.run, last_seq=logged_seq, reserved_seq=logged_seq)

    def update_run(self, _run_id: str, owner: str, *, last_seq: int, **changes: Any) -> bool:
        if self.run.lease_owner != owner:
            return False
        self.run = replace(self.run, last_seq=last_seq)
        if changes.get("reserved_seq") is not None:
            self.run = replace(self.run, reserved_seq=changes["reserved_seq"])
        if changes.get("status") is not None:
            self.run = replace(self.run, status=changes["status"])
        return True

    def log_tail(self, _run_id: str) -> LogTail:
        if not self.frames:
            return LogTail()
        final = next((f for f in self.frames if f.get("final")), None)
        return LogTail(last_seq=int(self.frames[-1]["seq"]), final=final)

    def append_frames(
        self, _run_id: str, frames: list[Frame], _owner: str, _indexes: Any = None
    ) -> None:
        if any(int(f["seq"]) <= int(self.frames[-1]["seq"]) for f in frames if self.frames):
            raise LeaseLostError("logged already")
        self.appended.append(frames)
        self.frames.extend(frames)

    def read_frames(self, _run_id: str, after: int = 0, limit: int = 1000) -> list[Frame]:
        return [f for f in self.frames if int(f["seq"]) > after][:limit]

    def subscriptions_of_run(self, _run_id: str) -> list[Subscription]:
        return list(self.subscriptions.values())

    def delete_subscription(self, _run_id: str, connection_id: str) -> bool:
        return self.subscriptions.pop(connection_id, None) is not None

    def forget_subscription(self, _run_id: str, connection_id: str) -> None:
        self.subscriptions.pop(connection_id, None)

    def drop_connection(self, connection_id: str) -> list[str]:
        self.dropped.append(connection_id)
        return []


class Posts:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def post(self, connection_id: str, data: str) -> None:
        self.messages.append((connection_id, data))

    def frames_to(self, connection_id: str) -> list[Frame]:
        import json  # noqa: PLC0415

        frames: list[Frame] = []
        for to, data in self.messages:
            if to == connection_id:
                body = json.loads(data)
                frames.extend(body["frames"] if body["type"] == "batch" else [body])
        return frames


class Payloads:
    def offload(self, _run_id: str, frames: list[Frame]) -> list[Frame]:
        return frames

    def presign(self, frames: list[Frame]) -> list[Frame]:
        return frames


RUN = "run-1"


def record(**fields: Any) -> RunRecord:
    base = RunRecord(RUN, "demo-stream", "RUNNING", 0, 0, 0)
    return replace(base, **fields)


def consumer(
    table: Table, status: RunStatus | Exception | None, posts: Posts | None = None
) -> DeadLetters:
    asked: list[str] = []

    def status_of(run_id: str) -> RunStatus | None:
        asked.append(run_id)
        if isinstance(status, Exception):
            raise status
        return status

    dead = DeadLetters(
        table,  # type: ignore[arg-type]
        status_of,
        posts or Posts(),  # type: ignore[arg-type]
        Payloads(),  # type: ignore[arg-type]
        give_up_receive_count=3,
    )
    dead.asked = asked  # type: ignore[attr-defined]
    return dead


def event(*run_ids: str, receive_count: int = 1) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": f"m-{run_id}",
                "body": f'{{"runId": "{run_id}"}}',
                "attributes": {"ApproximateReceiveCount": str(receive_count)},
            }
            for run_id in run_ids
        ]
    }


def subscribe(table: Table, connection_id: str, after: int = 0) -> None:
    table.subscriptions[connection_id] = Subscription(
        RUN, connection_id, after, int(time.time()) + 3600, 0
    )


def test_a_run_whose_log_is_final_gets_nothing_appended_and_its_subscribers_hear_the_end() -> None:
    final = status_frame(RUN, 2, "COMPLETED", output={"ok": True})
    table = Table(record(last_seq=1, reserved_seq=256), [chunk_frame(RUN, 1, "a"), final])
    posts = Posts()
    subscribe(table, "c1", after=1)
    dead = consumer(table, RunStatus("COMPLETED", True, {"ok": True}, None), posts)

    assert dead.end(RUN) is Outcome.ALREADY_FINAL
    assert table.appended == []
    assert dead.asked == []  # type: ignore[attr-defined]  # no need to ask Hatchet
    assert (table.run.status, table.run.last_seq, table.run.lease_owner) == ("COMPLETED", 2, None)
    assert posts.frames_to("c1") == [final]
    assert table.subscriptions == {}


def test_a_run_over_in_the_table_is_left_alone() -> None:
    table = Table(record(status="FAILED", last_seq=3))
    dead = consumer(table, None)
    assert handle_batch(dead, event(RUN)) == {"batchItemFailures": []}
    assert table.appended == []
    assert table.run.lease_owner is None


def test_a_live_relay_s_lease_is_respected_and_the_record_retried() -> None:
    held_until = int(time.time() * 1000) + 30_000
    table = Table(record(lease_owner="relay-a", lease_expires_at=held_until))
    dead = consumer(table, RunStatus("COMPLETED", True, {}, None))

    result = handle_batch(dead, event(RUN, "other-run"))
    assert result == {"batchItemFailures": [{"itemIdentifier": f"m-{RUN}"}]}  # "other": unknown
    assert table.appended == []
    assert table.run.lease_owner == "relay-a"


def test_a_dead_run_ends_with_a_gap_after_its_reserved_seqs_and_hatchet_s_status() -> None:
    lapsed = int(time.time() * 1000) - 1
    table = Table(
        record(last_seq=1, reserved_seq=256, lease_owner="dead-relay", lease_expires_at=lapsed),
        [chunk_frame(RUN, 1, "a"), chunk_frame(RUN, 2, "b")],
    )
    posts = Posts()
    subscribe(table, "c1", after=1)
    dead = consumer(table, RunStatus("COMPLETED", True, {"task": {"n": 2}}, None), posts)

    assert dead.end(RUN) is Outcome.ENDED
    gap, final = table.appended[0]
    assert gap == {
        "type": "gap",
        "runId": RUN,
        "seq": 257,
        "reason": GAP_REASON,
        "skipped": [3, 256],  # the dead relay may have sent these live
    }
    assert final == status_frame(RUN, 258, "COMPLETED", output={"task": {"n": 2}})
    assert (table.run.status, table.run.last_seq, table.run.lease_owner) == ("COMPLETED", 258, None)
    assert posts.frames_to("c1") == [chunk_frame(RUN, 2, "b"), gap, final]  # from its after


@pytest.mark.parametrize(
    ("hatchet", "error"),
    [
        (RunStatus("RUNNING", False, None, None), "Hatchet says it is RUNNING"),
        (None, "Hatchet does not know it"),
    ],
)
def test_a_run_hatchet_does_not_end_is_ended_failed_saying_hatchway_gave_up(
    hatchet: RunStatus | None, error: str
) -> None:
    table = Table(record())
    dead = consumer(table, hatchet)
    assert dead.end(RUN) is Outcome.ENDED
    gap, final = table.appended[0]
    assert (gap["type"], gap["seq"], "skipped" in gap) == ("gap", 1, False)
    assert (final["status"], final["final"]) == ("FAILED", True)
    assert "Hatchway gave up following this run" in final["error"]
    assert error in final["error"]


def test_a_failed_run_keeps_hatchet_s_error() -> None:
    table = Table(record())
    dead = consumer(table, RunStatus("CANCELLED", True, None, "cancelled by a user"))
    dead.end(RUN)
    assert table.appended[0][1] == status_frame(RUN, 2, "CANCELLED", error="cancelled by a user")


def test_hatchet_unavailable_is_retried_then_the_run_is_ended_all_the_same() -> None:
    table = Table(record())
    dead = consumer(table, UpstreamUnavailableError("UNAVAILABLE"))
    assert handle_batch(dead, event(RUN, receive_count=2)) == {
        "batchItemFailures": [{"itemIdentifier": f"m-{RUN}"}]
    }
    assert table.appended == []
    assert table.run.lease_owner is None  # released for the retry

    assert handle_batch(dead, event(RUN, receive_count=3)) == {"batchItemFailures": []}
    final = table.appended[0][1]
    assert final["status"] == "FAILED"
    assert "Hatchet could not be asked" in final["error"]


def test_a_gone_subscriber_is_dropped_and_a_tombstone_forgotten() -> None:
    class Gone(Posts):
        def post(self, connection_id: str, _data: str) -> None:
            from hatchway.connections import StaleConnectionError  # noqa: PLC0415

            raise StaleConnectionError(connection_id)

    table = Table(record())
    subscribe(table, "gone")
    table.subscriptions["left"] = replace(table.subscriptions["gone"], connection_id="left")
    table.subscriptions["left"] = replace(table.subscriptions["left"], removed=True)
    dead = consumer(table, RunStatus("COMPLETED", True, {}, None), Gone())
    assert dead.end(RUN) is Outcome.ENDED
    assert table.dropped == ["gone"]
    assert "left" not in table.subscriptions


def test_a_subscriber_that_cannot_be_told_is_told_on_the_retry_with_nothing_appended_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hatchway import dead_letters  # noqa: PLC0415
    from hatchway.connections import UnavailableError  # noqa: PLC0415

    monkeypatch.setattr(dead_letters.time, "sleep", lambda _s: None)  # the post backoff

    class Down(Posts):
        down = True

        def post(self, connection_id: str, data: str) -> None:
            if self.down:
                raise UnavailableError(connection_id)
            super().post(connection_id, data)

    table = Table(record())
    subscribe(table, "c1")
    posts = Down()
    dead = consumer(table, RunStatus("COMPLETED", True, {}, None), posts)
    assert handle_batch(dead, event(RUN)) == {"batchItemFailures": [{"itemIdentifier": f"m-{RUN}"}]}
    assert table.run.status == "COMPLETED"  # ended all the same
    assert "c1" in table.subscriptions  # kept for the retry

    posts.down = False
    assert handle_batch(dead, event(RUN, receive_count=2)) == {"batchItemFailures": []}
    assert len(table.appended) == 1  # nothing appended the second time
    assert [f["type"] for f in posts.frames_to("c1")] == ["gap", "status"]
    assert table.subscriptions == {}
