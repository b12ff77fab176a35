"""A WebSocket connect plus subscribe on the local stack with every function on
that path cold (the authorizer, $connect, subscribe): what a browser waits for
after an idle spell or a deploy. Each sample ends the three functions' execution
environments first (the API Gateway emulator starts a fresh process per
environment, importing the function from its layer as Lambda does), then times
`connect(?token)` -> `subscribed`. Prints p50/p99 of SAMPLES; asserts nothing.

    make bench   (or: .venv/bin/python benchmarks/cold_connect.py)
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from websockets.asyncio.client import connect

from hatchway_local.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = int(os.environ.get("BENCH_COLD_CONNECTS", "20"))
COLD_PATH = ("WsAuthorizerFunction", "WsConnectFunction", "WsSubscribeFunction")


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def start_run(http_url: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{http_url}/runs", json={"workflow": "demo-stream"}) as response,
    ):
        body: dict[str, str] = await response.json()
        if response.status != 201:
            raise RuntimeError(f"POST /runs: {response.status} {body}")
        return body


async def connect_and_subscribe(run: dict[str, str]) -> float:
    started = time.perf_counter()
    async with connect(f"{run['websocketUrl']}?token={run['token']}", open_timeout=30) as socket:
        await socket.send(
            json.dumps({"action": "subscribe", "runId": run["runId"], "token": run["token"]})
        )
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), 30))
            frames = message["frames"] if message.get("type") == "batch" else [message]
            if any(frame.get("type") == "subscribed" for frame in frames):
                return time.perf_counter() - started
            if any(frame.get("type") == "error" for frame in frames):
                raise RuntimeError(f"subscribe answered {message}")


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hatchway-bench-logs-") as logs:
        async with LocalStack(ROOT / "template.yaml", http_port=0, log_dir=Path(logs)) as stack:
            assert stack.gateway is not None  # noqa: S101 - started
            run = await start_run(stack.gateway.http_url)
            warm = [await connect_and_subscribe(run) for _ in range(3)][-1]
            cold = []
            for _ in range(SAMPLES):
                await stack.gateway.cool_down(*COLD_PATH)
                cold.append(await connect_and_subscribe(run))
    cold.sort()
    p99 = cold[min(len(cold) - 1, round(0.99 * (len(cold) - 1)))]
    say(f"WebSocket connect + subscribe on the local stack ({SAMPLES} samples)")
    say(
        f"  all three functions cold: p50 {statistics.median(cold) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {cold[-1] * 1000:.0f} ms (target: p99 < 1500 ms)"
    )
    say(f"  warm, for scale: {warm * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
