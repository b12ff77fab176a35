"""The store's lease, fencing and handover rules on moto's DynamoDB (the table as
template.yaml declares it): the single-writer guarantee rests on these conditions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import boto3
import pytest

from hatchway.protocol import chunk_frame
from hatchway.store import LeaseLostError, Store
from hatchway_local.aws import LocalAws, start_local_aws
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.functional


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    aws: LocalAws = start_local_aws(REPO_ROOT / "template.yaml")
    try:
        yield Store(aws.table_name, resource=boto3.resource("dynamodb", **aws.client_kwargs()))
    finally:
        aws.stop()


def new_run(store: Store) -> str:
    run_id = uuid.uuid4().hex
    store.create_run(run_id, "demo-stream")
    return run_id


def test_one_holder_at_a_time_and_every_seq_written_once(store: Store) -> None:
    run_id = new_run(store)
    assert store.acquire_lease(run_id, "a", 30) is not None
    assert store.acquire_lease(run_id, "b", 30) is None  # a duplicate message: no second writer
    assert not store.update_run(run_id, "b", last_seq=0, reserved_seq=256)  # only the holder
    assert store.update_run(run_id, "a", last_seq=0, reserved_seq=256)
    store.append_frames(run_id, [chunk_frame(run_id, 1, "x")], "a", {"task": 0})
    with pytest.raises(LeaseLostError):  # the same seq twice: never
        store.append_frames(run_id, [chunk_frame(run_id, 1, "y")], "a")
    assert store.frames_item_writer(run_id, 1) == ("a", 1)  # a retry tells its own write
    assert store.frames_item_writer(run_id, 2) is None
    tail = store.log_tail(run_id)
    assert (tail.last_seq, tail.stream_indexes, tail.final) == (1, {"task": 0}, None)
    assert store.read_frames(run_id) == [chunk_frame(run_id, 1, "x")]
    run = store.get_run(run_id)
    assert run is not None
    assert (run.reserved_seq, run.status) == (256, "QUEUED")  # META moves lazily
    assert store.update_run(run_id, "a", last_seq=1, status="RUNNING")
    run = store.get_run(run_id)
    assert run is not None
    assert (run.last_seq, run.reserved_seq, run.status) == (1, 256, "RUNNING")


def test_an_expired_lease_is_taken_over_after_the_seqs_its_holder_reserved(store: Store) -> None:
    run_id = new_run(store)
    assert store.acquire_lease(run_id, "a", 0.001) is not None
    assert store.update_run(run_id, "a", last_seq=0, reserved_seq=256)
    time.sleep(0.01)  # past its expiry (ms): not a timing claim
    taken = store.acquire_lease(run_id, "b", 30)
    assert taken is not None
    assert (taken.lease_owner, taken.reserved_seq) == ("b", 256)  # b starts after 256
    assert not store.update_run(run_id, "a", last_seq=3, reserved_seq=512)
    assert not store.renew_lease(run_id, "a", 30)


def test_a_handover_passes_the_lease_only_to_the_relay_that_claimed_it(store: Store) -> None:
    run_id = new_run(store)
    store.acquire_lease(run_id, "a", 30)
    store.update_run(run_id, "a", last_seq=0, reserved_seq=256)
    assert not store.claim_handover(run_id, "b")  # nothing offered yet
    assert not store.offer_handover(run_id, "b")  # only the holder offers
    assert store.offer_handover(run_id, "a")
    assert store.claim_handover(run_id, "b")
    assert not store.claim_handover(run_id, "c")  # one successor
    assert not store.transfer_lease(run_id, "a", "c", 30, 5)  # not the one that claimed
    assert not store.transfer_lease(run_id, "c", "b", 30, 5)  # not the holder
    run = store.get_run(run_id)
    assert run is not None
    assert (run.lease_owner, run.handover_from, run.successor) == ("a", "a", "b")

    assert store.transfer_lease(run_id, "a", "b", 30, 5)
    run = store.get_run(run_id)
    assert run is not None
    assert (run.lease_owner, run.handover_from, run.successor) == ("b", None, None)
    # All was logged: the successor goes on from seq 6, with no gap.
    assert (run.last_seq, run.reserved_seq) == (5, 5)
    assert not store.update_run(run_id, "a", last_seq=5)


def test_a_log_written_as_plain_json_reads_as_before(store: Store) -> None:
    run_id = new_run(store)
    frames = [chunk_frame(run_id, 1, "a"), chunk_frame(run_id, 2, "b")]
    store._table.put_item(  # an item as the log wrote them before compression
        Item={
            "pk": f"RUN#{run_id}",
            "sk": "F#0000000001",
            "frames": json.dumps(frames),
            "lastSeq": 2,
            "writer": "a",
        }
    )
    store.acquire_lease(run_id, "a", 30)
    store.append_frames(run_id, [chunk_frame(run_id, 3, "c" * 5000)], "a")
    assert [f["seq"] for f in store.read_frames(run_id, after=1)] == [2, 3]
    assert store.log_tail(run_id).last_seq == 3


def test_a_subscription_cursor_only_moves_forward(store: Store) -> None:
    run_id = new_run(store)
    store.put_subscription(run_id, "conn=", 3, 2_000_000_000, "a")
    store.advance_subscription(run_id, "conn=", 7)
    store.advance_subscription(run_id, "conn=", 5)  # an older report changes nothing
    store.advance_subscription(run_id, "gone=", 9)  # an unknown subscription is not created
    assert [(s.connection_id, s.after) for s in store.subscriptions_of_run(run_id)] == [
        ("conn=", 7)
    ]
