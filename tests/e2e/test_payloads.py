"""Large payloads through S3, on the local stack with real clients: chunks over the
message limit and files a task puts arrive by reference, every URL downloads the
exact bytes, URLs are minted when a frame is sent, the bucket is private, and an
S3 failure during offload is retried without losing or reordering anything."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import boto3
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from hatchway.payloads import IN_MEMORY_PARTS, PART_BYTES, UPLOAD_THREADS, Payloads
from hatchway.store import decode_frames
from hatchway.worker import put_file
from hatchway_local.demo.workflows import DemoFile, big_chunk
from hatchway_local.stack import LocalStack
from tests.e2e.conftest import Api, Client, assert_complete

pytestmark = pytest.mark.e2e

# Slow enough that a subscriber attached right after POST /runs sees it all live.
START = {"start_delay_seconds": 2.0}
BIG = 300 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def download(url: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(URL(url, encoded=True)) as response,  # the signed URL exactly as minted
    ):
        return response.status, await response.read()


def signed_at(url: str) -> tuple[datetime, int]:
    """When a presigned URL was signed (X-Amz-Date) and for how long (X-Amz-Expires)."""
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # SigV4
    date = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return date, int(query["X-Amz-Expires"][0])


def expires_at(frame: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(frame["expiresAt"].replace("Z", "+00:00"))


def assert_by_reference(frame: dict[str, Any], ttl_s: int = 900) -> None:
    """A frame by reference as docs/protocol.md has it: url, size, expiresAt; the URL's
    expiry is the configured one and expiresAt says when that is."""
    assert {"url", "size", "expiresAt"} <= set(frame)
    assert "data" not in frame
    assert "s3Key" not in frame  # the log's reference never reaches clients
    signed, expires_s = signed_at(frame["url"])
    assert expires_s == ttl_s
    assert frame["expiresAt"].endswith("Z")
    assert timedelta(0) <= signed + timedelta(seconds=ttl_s) - expires_at(frame)
    assert signed + timedelta(seconds=ttl_s) - expires_at(frame) <= timedelta(seconds=1)


async def run_to_the_end(
    api: Api, workflow: str, input_: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = await api.start(workflow, input_)
    client = await Client.open(run["websocketUrl"], run["token"])
    try:
        await client.subscribe(run)
        frames = await asyncio.wait_for(client.until_final(run["runId"]), 90)
    finally:
        await client.close()
    assert_complete(frames)
    assert frames[-1]["status"] == "COMPLETED", frames[-1]
    return run, frames


def log_items(stack: LocalStack, run_id: str) -> list[dict[str, Any]]:
    assert stack.aws is not None
    table = boto3.resource("dynamodb", **stack.aws.client_kwargs()).Table(stack.aws.table_name)
    items = table.query(
        KeyConditionExpression="pk = :pk AND begins_with(sk, :f)",
        ExpressionAttributeValues={":pk": f"RUN#{run_id}", ":f": "F#"},
    )["Items"]
    return [f for item in items for f in decode_frames(run_id, item["frames"])]


# -- demo-big-chunk and demo-file through a plain WebSocket client ---------------------


async def test_a_chunk_over_the_limit_arrives_by_reference_in_its_place(
    api: Api, stack: LocalStack
) -> None:
    run, frames = await run_to_the_end(api, "demo-big-chunk", {**START, "chunks_around": 3})

    chunks = [f for f in frames if f["type"] == "chunk"]
    assert [f.get("data") for f in chunks] == [
        "before 1. ",
        "before 2. ",
        "before 3. ",
        None,
        "after 1. ",
        "after 2. ",
        "after 3. ",
    ]
    big = chunks[3]
    assert_by_reference(big)
    assert big["size"] == BIG
    status, body = await download(big["url"])
    assert status == 200
    assert sha256(body) == sha256(big_chunk(BIG).encode())
    assert frames[-1]["output"] == {"demo-big-chunk": {"bytes": BIG, "chunks": 7}}
    # The log keeps a reference (DynamoDB items hold 400 KB), never a URL.
    (logged,) = [f for f in log_items(stack, run["runId"]) if f["seq"] == big["seq"]]
    assert logged["s3Key"].startswith(f"runs/{run['runId']}/chunks/")
    assert "url" not in logged
    assert "data" not in logged


async def test_demo_file_arrives_as_a_file_frame_with_its_size_and_sha256(api: Api) -> None:
    _run, frames = await run_to_the_end(api, "demo-file", START)

    (file,) = [f for f in frames if f["type"] == "file"]
    assert_by_reference(file)
    expected = io.BufferedReader(DemoFile(1024 * 1024), 1 << 20).read()
    assert (file["name"], file["contentType"]) == ("demo-file.bin", "application/octet-stream")
    assert (file["size"], file["sha256"]) == (len(expected), sha256(expected))
    status, body = await download(file["url"])
    assert status == 200
    assert sha256(body) == file["sha256"]
    assert frames[-1]["output"] == {
        "demo-file": {"name": "demo-file.bin", "size": len(expected), "sha256": sha256(expected)}
    }
    assert not [f for f in frames if f["type"] == "chunk"]  # the reference is not a chunk


async def test_a_50_mb_file_goes_through_put_file_and_hatchet_to_the_client(api: Api) -> None:
    size = 50 * 1024 * 1024  # far beyond Hatchet's 4 MB gRPC limit
    _run, frames = await run_to_the_end(api, "demo-file", {**START, "size_bytes": size, "seed": 50})

    (file,) = [f for f in frames if f["type"] == "file"]
    expected = hashlib.sha256()
    source = DemoFile(size, 50)
    while block := source.read(1 << 20):
        expected.update(block)
    assert (file["size"], file["sha256"]) == (size, expected.hexdigest())
    status, body = await download(file["url"])
    assert status == 200
    assert sha256(body) == file["sha256"]


@dataclass
class FakeContext:
    """What put_file needs of a hatchet-sdk Context."""

    workflow_run_id: str
    streamed: list[str] = field(default_factory=list)

    def put_stream(self, data: str | bytes) -> None:
        self.streamed.append(str(data))

    async def aio_put_stream(self, data: str | bytes) -> None:
        self.streamed.append(str(data))


async def test_put_file_streams_50_mb_in_flat_memory(stack: LocalStack) -> None:
    assert stack.aws is not None
    payloads = Payloads(
        stack.aws.bucket_name("PayloadBucket"),
        client=boto3.client("s3", **stack.aws.client_kwargs()),
    )
    size = 50 * 1024 * 1024
    context = FakeContext("flat-memory-run")
    source = io.BufferedReader(DemoFile(size, 7), 1024 * 1024)

    tracemalloc.start()
    try:
        started = time.perf_counter()
        stored = await asyncio.to_thread(
            put_file, context, source, name="big.bin", payloads=payloads
        )
        elapsed = time.perf_counter() - started
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(  # noqa: T201 - the figure, for people
        f"\nput_file: {size / 2**20:.0f} MiB in {elapsed:.1f} s, "
        f"peak Python memory {peak / 2**20:.1f} MiB"
    )
    # Bounded by the parts in flight, not by the file: well under its size.
    assert peak < PART_BYTES * (IN_MEMORY_PARTS + UPLOAD_THREADS + 1) < size
    assert stored.size == size
    (reference,) = context.streamed
    assert len(reference) < 1024
    assert json.loads(reference)["sha256"] == stored.sha256
    head = payloads.client.head_object(Bucket=payloads.bucket, Key=stored.key)
    assert head["ContentLength"] == size
    assert "-" in head["ETag"]  # a multipart upload: ETag "<md5 of part md5s>-<parts>"


# -- replays mint new URLs; the bucket is private --------------------------------------


async def test_a_replayed_frame_carries_a_new_url(api: Api) -> None:
    run, live = await run_to_the_end(api, "demo-big-chunk", START)
    (live_big,) = [f for f in live if f["type"] == "chunk"]

    await asyncio.sleep(1.1)  # a later second: a URL minted now must differ
    subscribed_at = datetime.now(UTC).replace(microsecond=0)
    late = await Client.open(run["websocketUrl"], run["token"])
    try:
        await late.subscribe(run)
        replayed = await asyncio.wait_for(late.until_final(run["runId"]), 30)
    finally:
        await late.close()
    (replayed_big,) = [f for f in replayed if f["type"] == "chunk"]
    assert replayed_big["seq"] == live_big["seq"]
    assert replayed_big["url"] != live_big["url"]
    assert signed_at(replayed_big["url"])[0] >= subscribed_at  # minted when it was sent
    assert_by_reference(replayed_big)
    assert expires_at(replayed_big) > expires_at(live_big)

    status, body = await api.request("GET", f"/runs/{run['runId']}/frames", token=run["token"])
    assert status == 200
    (read_big,) = [f for f in body["frames"] if f["type"] == "chunk"]
    assert_by_reference(read_big)
    assert signed_at(read_big["url"])[0] >= subscribed_at

    for frame in (live_big, replayed_big, read_big):
        status, content = await download(frame["url"])
        assert status == 200
        assert sha256(content) == sha256(big_chunk(BIG).encode())


async def test_the_bucket_refuses_public_access(api: Api, stack: LocalStack) -> None:
    assert stack.aws is not None
    _run, frames = await run_to_the_end(api, "demo-big-chunk", START)
    (big,) = [f for f in frames if f["type"] == "chunk"]
    unsigned = big["url"].split("?", 1)[0]

    status, _body = await download(unsigned)
    assert status == 403  # the object exists (the signed URL works) but not for anyone
    async with aiohttp.ClientSession() as http, http.put(unsigned, data=b"defaced") as put:
        assert put.status == 403
    status, body = await download(big["url"])
    assert (status, sha256(body)) == (200, sha256(big_chunk(BIG).encode()))

    s3 = boto3.client("s3", **stack.aws.client_kwargs())
    bucket = stack.aws.bucket_name("PayloadBucket")
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (lifecycle,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle["Expiration"]["Days"] == 1  # FrameRetentionDays: frames live 86400 s


# -- S3 failing during offload ---------------------------------------------------------


@dataclass
class FlakyS3:
    """A proxy in front of moto that fails the next ``fail_puts`` puts of offloaded
    chunks with 503 SlowDown, as S3 does under load; everything else passes through."""

    upstream: str
    fail_puts: int = 0
    failed: int = 0
    passed_puts: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None
    _http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        is_offload = request.method == "PUT" and "/chunks/" in request.path
        if is_offload and self.fail_puts > 0:
            self.fail_puts -= 1
            self.failed += 1
            return web.Response(
                status=503,
                content_type="application/xml",
                text="<Error><Code>SlowDown</Code><Message>injected</Message></Error>",
            )
        assert self._http is not None
        skip = {"host", "content-length", "transfer-encoding", "expect", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with self._http.request(
            request.method,
            URL(self.upstream + request.path_qs, encoded=True),
            headers=headers,
            data=body,
        ) as response:
            content = await response.read()
            self.passed_puts += is_offload
            kept = {
                k: v
                for k, v in response.headers.items()
                if k.lower() not in {"content-length", "transfer-encoding", "connection"}
            }
            return web.Response(status=response.status, body=content, headers=kept)


@pytest_asyncio.fixture(loop_scope="session")
async def flaky_relay(stack: LocalStack) -> AsyncIterator[FlakyS3]:
    """The stack's relay swapped for one whose S3 is the flaky proxy (and whose URLs
    live 120 s); the usual relay is back afterwards."""
    assert stack.aws is not None
    assert stack.log_dir is not None
    proxy = FlakyS3(stack.aws.endpoint_url)
    await proxy.start()
    usual = list(stack.relay_processes)
    for relay_id in usual:
        await stack.stop_relay(relay_id)
    extra = {"AWS_ENDPOINT_URL_S3": proxy.url, "PAYLOAD_URL_TTL_SECONDS": "120"}
    stack.relay_env.update(extra)
    try:
        stack.start_relay("relay-flaky-s3")
        await wait_until_ready(stack, "relay-flaky-s3")
        yield proxy
    finally:
        for key in extra:
            stack.relay_env.pop(key, None)
        await stack.stop_relay("relay-flaky-s3")
        for relay_id in usual:
            stack.start_relay(relay_id)
        await proxy.close()


async def wait_until_ready(stack: LocalStack, relay_id: str, timeout_s: float = 60) -> None:
    assert stack.log_dir is not None
    log = stack.log_dir / f"{relay_id}.log"
    deadline = time.monotonic() + timeout_s
    while not (log.exists() and "ready" in log.read_text("utf-8", "replace").splitlines()):
        assert time.monotonic() < deadline, f"{relay_id} did not start"
        await asyncio.sleep(0.1)


async def test_an_s3_failure_during_offload_is_retried_without_loss_or_reordering(
    api: Api, flaky_relay: FlakyS3
) -> None:
    # boto3 tries each put 3 times; 5 failures also take the relay's own retry.
    flaky_relay.fail_puts = 5
    _run, frames = await run_to_the_end(api, "demo-big-chunk", {**START, "chunks_around": 20})

    assert flaky_relay.failed == 5
    assert flaky_relay.passed_puts == 1
    chunks = [f for f in frames if f["type"] == "chunk"]
    expected = (
        [f"before {n}. " for n in range(1, 21)] + [None] + [f"after {n}. " for n in range(1, 21)]
    )
    assert [f.get("data") for f in chunks] == expected  # nothing lost, nothing reordered
    big = chunks[20]
    assert_by_reference(big, ttl_s=120)  # this relay's configured URL lifetime
    status, body = await download(big["url"])
    assert status == 200
    assert sha256(body) == sha256(big_chunk(BIG).encode())
