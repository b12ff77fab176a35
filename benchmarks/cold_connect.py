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


async def connect_and_subscribe(run: dict[str, str]) -> tuple[float, float]:
    """Seconds to the open socket and to ``subscribed``. Reads on to the run's final
    frame, so the subscribe invocation (its replay) is over before the next sample."""
    started = time.perf_counter()
    async with connect(f"{run['websocketUrl']}?token={run['token']}", open_timeout=30) as socket:
        opened = time.perf_counter() - started
        await socket.send(
            json.dumps({"action": "subscribe", "runId": run["runId"], "token": run["token"]})
        )
        subscribed = 0.0
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), 30))
            frames = message["frames"] if message.get("type") == "batch" else [message]
            if not subscribed and any(frame.get("type") == "subscribed" for frame in frames):
                subscribed = time.perf_counter() - started
            if any(frame.get("type") == "error" for frame in frames):
                raise RuntimeError(f"subscribe answered {message}")
            if any(frame.get("final") for frame in frames):
                return opened, subscribed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hatchway-bench-logs-") as logs:
        async with LocalStack(ROOT / "template.yaml", http_port=0, log_dir=Path(logs)) as stack:
            assert stack.gateway is not None  # noqa: S101 - started
            run = await start_run(stack.gateway.http_url)
            gateway = stack.gateway
            warm = (0.0, 0.0)
            for _ in range(3):  # the run ends meanwhile; the last sample is warm
                await gateway.idle()
                warm = await connect_and_subscribe(run)
            cold = []
            for _ in range(SAMPLES):
                await gateway.idle()  # else a busy environment makes the next one cold too
                await gateway.cool_down(*COLD_PATH)
                cold.append(await connect_and_subscribe(run))
    say(f"WebSocket connect + subscribe on the local stack ({SAMPLES} samples, a finished run)")
    for name, values in (
        ("open socket (authorizer + $connect)", [opened for opened, _ in cold]),
        ("subscribed (+ subscribe)", [subscribed for _, subscribed in cold]),
    ):
        say(
            f"  cold, {name}: p50 {statistics.median(values) * 1000:.0f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.0f} ms"
        )
    say("  target: subscribed p99 < 1500 ms with all three functions cold")
    say(f"  warm, for scale: open {warm[0] * 1000:.0f} ms, subscribed {warm[1] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
