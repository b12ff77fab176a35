"""Does a hostile client slow anyone else down? On the local stack, one observer
client watches a run of ``demo-ticks`` (chunks stamped with the wall clock as the
worker puts them) and measures each chunk's latency, put -> received. Four phases,
one run each, in one process so they compare:

- alone: the observer only (the baseline);
- reader: a second, normal client on the same run (the control: what any second
  subscriber costs on this machine, where relay, emulators and clients share
  two cores);
- flood: another connection sends pings as fast as it can (bounded);
- non-reader: another client subscribes to the same run and never reads (a tiny
  receive buffer, so TCP pushes back at once);
- both at once.

Prints latency p50/p99/max per phase and its ratio to the baseline, what the
flooder got back, and whether the non-reader was shed. Asserts nothing: the
machine is shared and noisy (docs/performance.md records a run).

    .venv/bin/python benchmarks/flood.py        (also in make bench)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hatchway_local.apigw_emulator.server import ApiGatewayEmulator
from hatchway_local.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent
TICKS = int(os.environ.get("BENCH_FLOOD_TICKS", "400"))
RATE = float(os.environ.get("BENCH_FLOOD_RATE", "40"))  # chunks a second
PAD = int(os.environ.get("BENCH_FLOOD_PAD", "16384"))  # bytes per chunk: a lot for a non-reader
FLOOD_MAX = int(os.environ.get("BENCH_FLOOD_MESSAGES", "3000"))
# Small bounds, so a non-reader is shed within a phase (defaults: 16 MiB, 120 s).
RELAY_ENV = {"RELAY_SEND_QUEUE_BYTES": str(1024 * 1024), "RELAY_SEND_STALL_SECONDS": "15"}


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def start_run(http_url: str) -> dict[str, Any]:
    ticks = {"count": TICKS, "rate_per_second": RATE, "pad_bytes": PAD, "start_delay_seconds": 2}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{http_url}/runs", json={"workflow": "demo-ticks", "input": ticks}) as answer,
    ):
        body: dict[str, Any] = await answer.json()
        if answer.status != 201:
            raise RuntimeError(f"POST /runs: {answer.status} {body}")
        return body


async def open_client(run: dict[str, Any], **options: Any) -> ClientConnection:  # noqa: ANN401
    return await connect(
        f"{run['websocketUrl']}?token={run['token']}", open_timeout=30, max_size=None, **options
    )


async def subscribe(socket: ClientConnection, run: dict[str, Any]) -> None:
    await socket.send(
        json.dumps({"action": "subscribe", "runId": run["runId"], "token": run["token"]})
    )


async def observe(run: dict[str, Any]) -> list[float]:
    """Each chunk's latency in ms, put -> received, to the run's final status."""
    latencies: list[float] = []
    async with await open_client(run) as socket:
        await subscribe(socket, run)
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), 60))
            received = time.time() * 1000
            for frame in message["frames"] if message.get("type") == "batch" else [message]:
                if frame.get("type") == "chunk":
                    latencies.append(received - json.loads(frame["data"])["sentAt"])
                if frame.get("type") == "status" and frame.get("final"):
                    return latencies


@dataclass
class Flood:
    sent: int = 0
    pongs: int = 0
    limited: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def flood(run: dict[str, Any], tally: Flood) -> None:
    """Pings as fast as the socket takes them, until told to stop (or FLOOD_MAX)."""
    async with await open_client(run) as socket:

        async def read() -> None:
            async for raw in socket:
                frame = json.loads(raw)
                tally.pongs += frame.get("type") == "pong"
                tally.limited += frame.get("code") == "rate_limited"

        reader = asyncio.create_task(read())
        ping = json.dumps({"action": "ping"})
        while not tally.stop.is_set() and tally.sent < FLOOD_MAX:
            await socket.send(ping)
            tally.sent += 1
            await asyncio.sleep(0)
        await tally.stop.wait()  # hear the answers of what it sent
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def reader(run: dict[str, Any], stop: asyncio.Event) -> str:
    """A second, normal subscriber: reads everything."""
    async with await open_client(run) as socket:
        await subscribe(socket, run)
        with contextlib.suppress(ConnectionClosed):
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(socket.recv(), 0.5)
    return ""


def tiny_buffer_socket(url: str) -> socket.socket:
    """A TCP socket whose receive buffer is a few KB: a client that stops reading
    makes the sender wait at once, not after megabytes of kernel buffering."""
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return sock


async def non_reader(run: dict[str, Any], stop: asyncio.Event) -> str:
    """Subscribes, then never reads (its buffers fill; TCP pushes back). How it ended."""
    socket = await open_client(
        run, max_queue=1, sock=await asyncio.to_thread(tiny_buffer_socket, run["websocketUrl"])
    )
    try:
        await subscribe(socket, run)
        await stop.wait()
        # Now read what is there: was it told it was too slow, and closed?
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(10):
                async for raw in socket:
                    message = json.loads(raw)
                    frames = message["frames"] if message.get("type") == "batch" else [message]
                    if any(f.get("code") == "too_slow" for f in frames):
                        return "shed (told too_slow, disconnected)"
        return "shed (disconnected)" if socket.close_code is not None else "still connected"
    finally:
        await socket.close()


async def phase(
    gateway: ApiGatewayEmulator,
    *,
    flooding: bool = False,
    not_reading: bool = False,
    reading: bool = False,
) -> dict[str, Any]:
    run = await start_run(gateway.http_url)
    stop = asyncio.Event()
    tally = Flood()
    tally.stop = stop
    others: list[asyncio.Task[Any]] = []
    if flooding:
        others.append(asyncio.create_task(flood(run, tally)))
    if not_reading:
        others.append(asyncio.create_task(non_reader(run, stop)))
    if reading:
        others.append(asyncio.create_task(reader(run, stop)))
    try:
        latencies = await observe(run)
        # A flood's messages outlive the stream (each is a handler call the emulator
        # queues): the flooder hears every answer before the phase ends.
        await gateway.idle(timeout_s=600)
    finally:
        stop.set()
    results = await asyncio.gather(*others, return_exceptions=True)
    fate = next((r for r in results if isinstance(r, str)), "")
    return {"latencies": latencies, "flood": tally if flooding else None, "non_reader": fate}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    say(f"flood: {TICKS} chunks of {PAD} bytes at {RATE:g}/s per phase; relay {RELAY_ENV}")
    with tempfile.TemporaryDirectory() as scratch:
        logs = os.environ.get("BENCH_LOG_DIR") or scratch  # keep the processes' logs
        async with LocalStack(
            ROOT / "template.yaml",
            http_port=0,
            relay_env=RELAY_ENV,
            log_dir=Path(logs),
        ) as stack:
            assert stack.gateway is not None  # noqa: S101 - started
            gateway = stack.gateway
            await phase(gateway)  # warm every function
            phases = {
                "alone": await phase(gateway),
                "reader": await phase(gateway, reading=True),
                "flood": await phase(gateway, flooding=True),
                "non-reader": await phase(gateway, not_reading=True),
                "both": await phase(gateway, flooding=True, not_reading=True),
            }
    base = statistics.median(phases["alone"]["latencies"])
    base_p99 = percentile(phases["alone"]["latencies"], 0.99)
    control = statistics.median(phases["reader"]["latencies"])
    say(f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores)")
    say()
    say(
        "| phase | chunks | p50 ms | p99 ms | max ms | p50 / alone | p99 / alone"
        " | p50 / reader | other client |"
    )
    say("|---|---|---|---|---|---|---|---|---|")
    for name, result in phases.items():
        values = result["latencies"]
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        other = []
        if result["flood"] is not None:
            tally = result["flood"]
            other.append(
                f"flooder sent {tally.sent}, got {tally.pongs} pongs, {tally.limited} rate_limited"
            )
        if result["non_reader"]:
            other.append(f"non-reader {result['non_reader']}")
        say(
            f"| {name} | {len(values)} | {p50:.1f} | {p99:.1f} | {max(values):.1f}"
            f" | {p50 / base:.2f} | {p99 / base_p99:.2f} | {p50 / control:.2f}"
            f" | {'; '.join(other) or '-'} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
