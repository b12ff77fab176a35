"""hatchway.payloads alone (a fake S3 client) and the run follower's offload path."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from hatchway import payloads as payloads_module
from hatchway.payloads import (
    LOG_ITEM_BYTES,
    PayloadError,
    Payloads,
    StoredFile,
    log_batches,
    offload_frames,
    stream_frame,
)
from hatchway.protocol import Frame, chunk_frame, encode, pack_messages, status_frame
from hatchway.relay.fanout import ConnectionSender
from tests.unit.test_run_follower import FakeHatchet, FakeStore, event, follower

SHA = "ab" * 32


class FakeS3:
    """put_object and generate_presigned_url as boto3's S3 client has them; the next
    ``failures`` puts raise SlowDown."""

    def __init__(self, failures: int = 0) -> None:
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.failures = failures
        self.attempts = 0
        self.signed: list[tuple[str, int]] = []

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, ContentType: str) -> None:  # noqa: N803
        assert Bucket == "bucket"
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "x"}}, "PutObject")
        self.objects[Key] = Body
        self.content_types[Key] = ContentType

    def generate_presigned_url(
        self,
        operation: str,
        *,
        Params: dict[str, str],  # noqa: N803 - boto3's names
        ExpiresIn: int,  # noqa: N803
    ) -> str:
        assert operation == "get_object"
        self.signed.append((Params["Key"], ExpiresIn))
        return f"https://s3.example/{Params['Bucket']}/{Params['Key']}?n={len(self.signed)}"


def adapter(s3: FakeS3 | None = None, **kwargs: Any) -> Payloads:
    return Payloads("bucket", client=s3 or FakeS3(), **kwargs)


# -- file references -------------------------------------------------------------------


def reference(run_id: str = "r1", **changes: Any) -> str:
    stored = StoredFile(f"runs/{run_id}/files/u1/a.bin", "a.bin", "image/png", 5, SHA)
    data = json.loads(stored.reference())
    data.update(changes)
    return encode(data)


def test_a_file_reference_becomes_a_file_frame() -> None:
    frame = stream_frame(chunk_frame("r1", 4, reference()))
    assert frame == {
        "type": "file",
        "runId": "r1",
        "seq": 4,
        "name": "a.bin",
        "contentType": "image/png",
        "size": 5,
        "sha256": SHA,
        "s3Key": "runs/r1/files/u1/a.bin",
    }


@pytest.mark.parametrize(
    "payload",
    [
        "plain text",
        '{"some": "json"}',
        '{"$hatchway": "file/v2", "key": "runs/r1/files/u/x"}',
        reference("other-run"),  # never another run's objects
        reference(key="runs/r1/chunks/0000000001-aa.txt"),
        reference(key="runs/r1/files/../../r2/files/u/x"),
        reference(sha256="not-hex"),
        reference(size=-1),
        reference(size=True),
        reference(name=""),
        '{"$hatchway": "file/v1", broken',
    ],
)
def test_anything_else_stays_a_chunk(payload: str) -> None:
    chunk = chunk_frame("r1", 4, payload)
    assert stream_frame(chunk) is chunk


# -- offload ---------------------------------------------------------------------------


def test_small_frames_stay_and_large_ones_go_to_s3_as_references() -> None:
    s3 = FakeS3()
    big_text = "é" * 70_000  # 140,000 bytes of UTF-8
    frames = [
        chunk_frame("r1", 1, "small"),
        chunk_frame("r1", 2, big_text),
        status_frame("r1", 3, "COMPLETED", output={"blob": "x" * 130_000}),
    ]
    logged = adapter(s3).offload("r1", frames)

    assert logged[0] is frames[0]
    assert logged[1] == {
        "type": "chunk",
        "runId": "r1",
        "seq": 2,
        "size": 140_000,
        "s3Key": logged[1]["s3Key"],
    }
    assert logged[1]["s3Key"].startswith("runs/r1/chunks/0000000002-")
    assert s3.objects[logged[1]["s3Key"]].decode() == big_text
    assert s3.content_types[logged[1]["s3Key"]] == "text/plain; charset=utf-8"
    # A status too large to send keeps what clients follow the run by.
    status = logged[2]
    assert {k: status[k] for k in ("type", "seq", "status", "final")} == {
        "type": "status",
        "seq": 3,
        "status": "COMPLETED",
        "final": True,
    }
    assert "output" not in status
    assert json.loads(s3.objects[status["s3Key"]]) == frames[2]
    # Every logged frame fits one message once it carries a URL.
    pack_messages(adapter(s3).presign(logged))


def test_the_limit_is_the_encoded_size() -> None:
    payloads = adapter(offload_bytes=2000)
    assert not payloads.needs_offload(chunk_frame("r1", 1, "a" * 1900))
    assert payloads.needs_offload(chunk_frame("r1", 1, "a" * 2000))
    assert payloads.needs_offload(chunk_frame("r1", 1, "\x00" * 400))  # escaped: 6 bytes each
    logged = payloads.offload("r1", [chunk_frame("r1", 1, "a" * 5000)])
    assert not payloads.needs_offload(logged[0])  # a reference is never offloaded again


def test_a_retried_put_writes_the_same_key() -> None:
    s3 = FakeS3()
    frames = [chunk_frame("r1", 7, "z" * 200_000)]
    first = adapter(s3).offload("r1", frames)
    second = adapter(s3).offload("r1", frames)
    assert first == second
    assert len(s3.objects) == 1


# -- URLs ------------------------------------------------------------------------------


def test_presign_mints_a_url_per_send_and_hides_the_key() -> None:
    s3 = FakeS3()
    payloads = adapter(s3, url_ttl_s=600)
    logged = payloads.offload(
        "r1", [chunk_frame("r1", 1, "a"), chunk_frame("r1", 2, "b" * 200_000)]
    )
    before = datetime.now(UTC).replace(microsecond=0)
    first = payloads.presign(logged)
    second = payloads.presign(logged)

    assert first[0] is logged[0]
    assert "s3Key" not in first[1]
    assert first[1]["url"] != second[1]["url"]  # minted each time a frame is sent
    assert s3.signed[0] == (logged[1]["s3Key"], 600)
    expires = datetime.fromisoformat(first[1]["expiresAt"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=600) <= expires <= before + timedelta(seconds=601)
    assert "s3Key" in logged[1]  # the logged frames are not changed
    frames = [chunk_frame("r1", 1, "a")]
    assert payloads.presign(frames) is frames


def test_a_url_signed_by_expiring_credentials_says_when_it_dies() -> None:
    class Session:
        _expiry_time = datetime.now(UTC) + timedelta(seconds=120)

    payloads = adapter(url_ttl_s=900)
    payloads._credentials = Session()
    _url, expires_at = payloads.url("runs/r1/chunks/x")
    expires = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    assert expires <= Session._expiry_time


def test_no_bucket_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="PAYLOAD_BUCKET"):
        Payloads("", client=FakeS3()).offload("r1", [chunk_frame("r1", 1, "x" * 200_000)])


# -- log items -------------------------------------------------------------------------


def test_log_batches_keep_items_under_dynamodb_s_limit_and_the_order() -> None:
    frames = [chunk_frame("r1", n, "x" * 110_000) for n in range(1, 8)]
    batches = log_batches(frames)
    assert [f for batch in batches for f in batch] == frames
    assert all(len(encode(batch).encode()) < LOG_ITEM_BYTES for batch in batches)
    assert len(batches) > 1
    small = [chunk_frame("r1", n, "abc") for n in range(1, 100)]
    assert log_batches(small) == [small]
    assert log_batches([]) == []


# -- retries ---------------------------------------------------------------------------


async def run_io(function: Any, *args: Any) -> Any:
    return function(*args)


async def test_offload_retries_s3_failures_then_succeeds() -> None:
    s3 = FakeS3(failures=3)
    frames = [chunk_frame("r1", 1, "x" * 200_000)]
    logged = await offload_frames("r1", frames, run_io, payloads=adapter(s3))
    assert logged is not None
    assert "s3Key" in logged[0]
    assert s3.attempts == 4


async def test_offload_gives_up_after_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payloads_module, "OFFLOAD_MAX_BACKOFF_S", 0.01)
    frames = [chunk_frame("r1", 1, "x" * 200_000)]
    with pytest.raises(PayloadError):
        await offload_frames("r1", frames, run_io, payloads=adapter(FakeS3(10**6), retry_s=0.2))


async def test_offload_stops_when_the_lease_is_gone() -> None:
    frames = [chunk_frame("r1", 1, "x" * 200_000)]
    result = await offload_frames(
        "r1", frames, run_io, payloads=adapter(FakeS3(10**6)), stopped=lambda: True
    )
    assert result is None


async def test_no_large_frame_no_s3_call() -> None:
    s3 = FakeS3()
    frames = [chunk_frame("r1", 1, "x")]
    assert await offload_frames("r1", frames, run_io, payloads=adapter(s3)) is frames
    assert s3.attempts == 0


# -- the relay's sender ---------------------------------------------------------------


async def test_the_sender_mints_urls_as_frames_leave_and_packs_them_under_the_limit() -> None:
    posted: list[str] = []

    class Connections:
        async def post(self, _connection_id: str, message: str) -> None:
            posted.append(message)

    async def gone(_connection_id: str) -> None:
        raise AssertionError("not gone")

    payloads = adapter()
    logged = payloads.offload(
        "r1", [chunk_frame("r1", n, "x" * 150_000 if n % 2 else "y") for n in range(1, 7)]
    )
    sender = ConnectionSender(
        "c1",
        Connections(),
        ThreadPoolExecutor(1),
        on_gone=gone,
        payloads=payloads,  # type: ignore[arg-type]
    )
    sender.start()
    sender.send(logged)
    await sender.drain(5)
    await sender.close()

    received: list[Frame] = []
    for message in posted:
        assert len(message.encode()) <= 128 * 1024
        data = json.loads(message)
        received.extend(data["frames"] if data["type"] == "batch" else [data])
    assert [f["seq"] for f in received] == [1, 2, 3, 4, 5, 6]
    assert all("url" in f and "s3Key" not in f for f in received[0::2])
    assert [f["data"] for f in received[1::2]] == ["y", "y", "y"]
    assert sender.stats.failed == 0


# -- the follower ----------------------------------------------------------------------


def texts(frames: list[Frame]) -> list[str]:
    return [
        f"{f['type']}:{f.get('data') or f.get('status') or f.get('name') or 'ref'}" for f in frames
    ]


async def test_the_follower_logs_a_big_chunk_by_reference_in_order_through_s3_failures() -> None:
    s3 = FakeS3(failures=2)
    store = FakeStore()
    big = "B" * 300_000
    hatchet = FakeHatchet(
        [
            [
                event("STREAM", payload="a", index=0),
                event("STREAM", payload=big, index=1),
                event("STREAM", payload="c", index=2),
                event("STREAM", payload=reference(), index=3),
                event("COMPLETED", "WORKFLOW_RUN", "{}"),
            ]
        ]
    )
    run, _ = follower(hatchet, store, payloads=adapter(s3))
    await run.follow()

    assert [f["seq"] for f in store.log] == [1, 2, 3, 4, 5, 6]
    assert texts(store.log) == [
        "status:RUNNING",
        "chunk:a",
        "chunk:ref",
        "chunk:c",
        "file:a.bin",
        "status:COMPLETED",
    ]
    assert s3.objects[store.log[2]["s3Key"]] == big.encode()
    assert s3.attempts == 3  # two failures, then the put
    assert store.indexes == {"t1": 3}


async def test_s3_down_at_the_run_s_end_keeps_every_frame_for_a_later_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(payloads_module, "OFFLOAD_MAX_BACKOFF_S", 0.01)
    store = FakeStore()
    hatchet = FakeHatchet(
        [
            [
                event("STREAM", payload="a", index=0),
                event("STREAM", payload="B" * 300_000, index=1),
                event("COMPLETED", "WORKFLOW_RUN", "{}"),
            ]
        ]
    )
    run, _ = follower(hatchet, store, payloads=adapter(FakeS3(failures=10**6), retry_s=0.2))
    with pytest.raises(PayloadError):
        await run.follow()  # the relay hands the run over; nothing was logged out of order

    # What came before the big chunk went out and was logged; it and what follows wait.
    assert texts(store.log) == ["status:RUNNING", "chunk:a"]
    assert texts(run._pending) == ["chunk:" + "B" * 300_000, "status:COMPLETED"]
