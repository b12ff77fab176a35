"""What the fault suite shares: its own local stack (two relays, leases of seconds),
the one delivery checker every fault test uses, and views of the frame log."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import boto3
from boto3.dynamodb.conditions import Key

from hatchway.store import decode_frames
from hatchway_local.demo.workflows import ANNA_KARENINA
from hatchway_local.stack import LocalStack
from tests.e2e.conftest import Client

# Short leases so a takeover happens within seconds; a quick handover for SIGTERM.
FAULT_RELAY_ENV = {
    "RELAY_LEASE_SECONDS": "3",
    "RELAY_VISIBILITY_SECONDS": "3",
    "RELAY_HANDOVER_SECONDS": "15",
    "RELAY_HANDOVER_GRACE_MS": "300",
    "RELAY_QUEUE_WAIT_SECONDS": "1",
}
# 73 chunks of 5 characters, one every 150 ms: about 11 s, long enough for a fault
# to land mid-stream and a takeover to finish before the run does.
SLOW_STREAM = {"start_delay_seconds": 1.0, "pause_seconds": 0.15, "chunk_size": 5}
FAST_STREAM = {"start_delay_seconds": 0.5, "pause_seconds": 0.01, "chunk_size": 5}

_relay_numbers = itertools.count(3)  # relay-1 and relay-2 start with the stack


def sequenced(received: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [f for f in received if f.get("runId") == run_id and "seq" in f]


def check_delivery(
    received: list[dict[str, Any]],
    run_id: str,
    *,
    after: int = 0,
    gaps: int = 0,
    duplicates_allowed: bool = True,
) -> list[dict[str, Any]]:
    """The checker of every fault test, per client: after dropping ``seq <= last``
    (a frame may be re-sent across a reconnect or a relay change), the frames are
    ``after+1 .. final`` contiguous and in order, nothing follows the final status,
    and there are exactly ``gaps`` gap frames (where a loss was injected).
    Returns the run's sequence as the client processed it."""
    last = after
    kept: list[dict[str, Any]] = []
    for frame in sequenced(received, run_id):
        seq = int(frame["seq"])
        if seq <= last:
            assert duplicates_allowed, f"seq {seq} sent again after {last}"
            continue
        if seq != last + 1:  # only a gap may skip seqs, and it names them
            skipped = frame.get("skipped") if frame["type"] == "gap" else None
            assert skipped, f"after seq {last} came {seq}: a frame was skipped"
            assert skipped[0] <= last + 1, f"the gap at {seq} skips {skipped}, after {last}"
            assert skipped[1] == seq - 1, f"the gap at {seq} skips {skipped}"
        assert not (kept and kept[-1]["type"] == "status" and kept[-1]["final"]), (
            f"seq {seq} came after the final status"
        )
        kept.append(frame)
        last = seq
    assert kept, "no frame of the run arrived"
    assert (kept[-1]["type"], kept[-1].get("final")) == ("status", True), kept[-1]
    found = [f for f in kept if f["type"] == "gap"]
    assert len(found) == gaps, f"expected {gaps} gap frame(s), got {found}"
    return kept


def text_around_gap(sequence: list[dict[str, Any]]) -> tuple[str, str]:
    """The text before and after the one gap: what came is a prefix and a suffix
    of the whole, so only the chunks at the gap are missing (none twice, none moved)."""
    (gap_at,) = [i for i, f in enumerate(sequence) if f["type"] == "gap"]
    before = "".join(f["data"] for f in sequence[:gap_at] if f["type"] == "chunk")
    after = "".join(f["data"] for f in sequence[gap_at:] if f["type"] == "chunk")
    assert ANNA_KARENINA.startswith(before), before
    assert ANNA_KARENINA.endswith(after), after
    assert len(before) + len(after) < len(ANNA_KARENINA)  # something was lost there
    return before, after


def table(stack: LocalStack) -> Any:
    assert stack.aws is not None
    return boto3.resource("dynamodb", **stack.aws.client_kwargs()).Table(stack.aws.table_name)


def run_meta(stack: LocalStack, run_id: str) -> dict[str, Any]:
    item = table(stack).get_item(Key={"pk": f"RUN#{run_id}", "sk": "META"}, ConsistentRead=True)
    return dict(item["Item"])


def log_items(stack: LocalStack, run_id: str) -> list[dict[str, Any]]:
    """The run's frame-log items in key order: (first seq, last seq, writer)."""
    items = table(stack).query(
        KeyConditionExpression=Key("pk").eq(f"RUN#{run_id}") & Key("sk").begins_with("F#"),
        ConsistentRead=True,
    )["Items"]
    return [
        {
            "first": int(decode_frames(run_id, item["frames"])[0]["seq"]),
            "last": int(item["lastSeq"]),
            "writer": item["writer"],
        }
        for item in items
    ]


def assert_single_writer_at_a_time(stack: LocalStack, run_id: str) -> list[str]:
    """No seq was written twice, none skipped, and writers followed one another
    (a writer never came back after another had written). The writers, in order."""
    items = log_items(stack, run_id)
    expected_first, writer = 1, None
    for item in items:
        # Only a successor of a relay that died skips seqs: those it had reserved.
        assert item["first"] == expected_first or (
            item["first"] > expected_first and item["writer"] != writer
        ), items
        expected_first, writer = item["last"] + 1, item["writer"]
    writers = [w for w, _ in itertools.groupby(item["writer"] for item in items)]
    assert len(writers) == len(set(writers)), f"writers interleaved: {writers}"
    return writers


async def wait_for_owner(stack: LocalStack, run_id: str, timeout_s: float = 30) -> str:
    async def owner() -> str:
        while True:
            meta = await asyncio.to_thread(run_meta, stack, run_id)
            # It follows the run once it has reserved seqs (META's lastSeq moves lazily).
            if meta.get("leaseOwner") and meta.get("reservedSeq", 0) > 0:
                return str(meta["leaseOwner"])
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(owner(), timeout_s)


async def frames_until(client: Client, run_id: str, chunks: int) -> None:
    """Read until the client has ``chunks`` chunk frames of the run."""
    while sum(1 for f in sequenced(client.frames, run_id) if f["type"] == "chunk") < chunks:
        await client.next_frame()


def next_relay_id() -> str:
    return f"relay-{next(_relay_numbers)}"
