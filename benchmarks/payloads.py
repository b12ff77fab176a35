"""What large payloads through S3 cost: time and memory measured here against moto
(in its own process), and the AWS bill per chunk computed from list prices.

- offload: one 300 KiB chunk put by the relay's adapter (moto's speed, not S3's);
- presign: one URL minted when a frame is sent (pure CPU, no request);
- put_file: 50 MiB and 200 MiB streamed from a generator, peak Python memory;
- the bill of one chunk sent inline (DynamoDB log + API Gateway) against by
  reference (S3 put + the client's GET), for a few chunk sizes.

Prints figures; asserts nothing (machines here are noisy).
Run: .venv/bin/python benchmarks/payloads.py
"""

from __future__ import annotations

import io
import math
import os
import statistics
import time
import tracemalloc

import boto3

from hatchway.payloads import Payloads
from hatchway.protocol import chunk_frame
from hatchway_local.aws import CREDENTIALS, REGION, MotoServer
from hatchway_local.demo.workflows import DemoFile

# us-east-1 list prices (USD) when this was written; check the pricing pages.
DYNAMODB_WRITE_UNIT = 0.625 / 1e6  # on-demand, per write request unit
S3_PUT = 0.005 / 1000
S3_GET = 0.0004 / 1000
WEBSOCKET_MESSAGE = 1.00 / 1e6  # per message, metered in 32 KB increments


def say(text: str) -> None:
    print(text)  # noqa: T201 - a benchmark prints its figures


def inline_cost(size: int) -> float:
    # The frame log's write is a transaction: 2 write units per KB, rounded up.
    log = 2 * math.ceil(size / 1024) * DYNAMODB_WRITE_UNIT
    return log + math.ceil(size / (32 * 1024)) * WEBSOCKET_MESSAGE


def reference_cost() -> float:
    # A ~300 byte reference in the log and on the socket, one put, one client GET.
    return 2 * DYNAMODB_WRITE_UNIT + WEBSOCKET_MESSAGE + S3_PUT + S3_GET


def main() -> None:
    server = MotoServer()
    endpoint = server.start()
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)
        client.create_bucket(Bucket="bench")
        payloads = Payloads("bench", client=client)

        frames = [chunk_frame("bench-run", n, "x" * 300 * 1024) for n in range(1, 21)]
        samples = []
        for frame in frames:
            started = time.perf_counter()
            logged = payloads.offload("bench-run", [frame])
            samples.append(time.perf_counter() - started)
        say(f"offload of a 300 KiB chunk (moto): median {statistics.median(samples) * 1000:.1f} ms")

        rounds = 2000
        started = time.perf_counter()
        for _ in range(rounds):
            payloads.presign(logged)
        per_url = (time.perf_counter() - started) / rounds
        say(f"presign (one URL, when a frame is sent): {per_url * 1e6:.0f} us")

        for mib in (50, 200):
            source = io.BufferedReader(DemoFile(mib * 1024 * 1024), 1024 * 1024)
            tracemalloc.start()
            started = time.perf_counter()
            stored = payloads.upload(
                "bench-run", source, name="big.bin", content_type="x/y", unique=str(mib)
            )
            elapsed = time.perf_counter() - started
            _now, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            say(
                f"put_file {mib} MiB (moto): {elapsed:.1f} s, "
                f"peak Python memory {peak / 2**20:.1f} MiB, sha256 {stored.sha256[:12]}..."
            )
    finally:
        server.stop()

    say("AWS bill per million chunks (us-east-1 list prices; transfer out is the same both ways):")
    by_reference = reference_cost() * 1e6
    for kib in (8, 32, 64, 120):
        inline = inline_cost(kib * 1024) * 1e6
        say(
            f"  {kib:>3} KiB: inline ${inline:,.2f}, by reference ${by_reference:,.2f}"
            f" ({inline / by_reference:.1f}x)"
        )


if __name__ == "__main__":
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    main()
