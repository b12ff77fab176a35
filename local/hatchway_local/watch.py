"""``hatchway watch``: start a workflow (or attach to a run) through the HTTP API
and print what it streams as it arrives, then its final status: a Hatchway
client in a few dozen lines, following docs/protocol.md. It resumes with ``after``
when the connection drops, so it shows what Hatchway guarantees."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class WatchError(Exception):
    """The API refused (the message is its error)."""


@dataclass
class Watched:
    run_id: str
    token: str
    websocket_url: str
    last_seq: int = 0
    status: str | None = None


async def start_run(base_url: str, workflow: str, input_: dict[str, Any]) -> Watched:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base_url}/runs", json={"workflow": workflow, "input": input_}) as response,
    ):
        body = await response.json()
        if response.status != 201:
            error = body.get("error", {})
            raise WatchError(f"{response.status} {error.get('code')}: {error.get('message')}")
    return Watched(body["runId"], body["token"], body["websocketUrl"])


def _frames(message: str) -> list[dict[str, Any]]:
    data = json.loads(message)
    frames: list[dict[str, Any]] = data["frames"] if data.get("type") == "batch" else [data]
    return frames


def _show(frame: dict[str, Any], out: TextIO, err: TextIO) -> None:
    kind = frame.get("type")
    if kind == "chunk":
        if "url" in frame:
            out.write(f"\n[chunk of {frame.get('size')} bytes: {frame['url']}]\n")
        else:
            out.write(frame["data"])
    elif kind == "file":
        out.write(f"\n[file {frame.get('name')} ({frame.get('size')} bytes): {frame.get('url')}]\n")
    elif kind == "gap":
        err.write(f"\n[gap: {frame.get('reason')}]\n")
    elif kind == "status" and frame.get("final"):
        detail = frame.get("error") or (
            f"(the frame is at {frame['url']})"
            if "url" in frame
            else json.dumps(frame.get("output"))
        )
        err.write(f"\n[{frame['status']}] {detail}\n")
    elif kind == "error":
        err.write(f"\n[error {frame.get('code')}: {frame.get('message')}]\n")
    out.flush()


async def watch(run: Watched, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> str:
    """Follow the run to its final status (returned), reconnecting with ``after``."""
    attempt = 0
    while run.status is None:
        try:
            async with connect(f"{run.websocket_url}?token={run.token}") as socket:
                await socket.send(
                    json.dumps(
                        {
                            "action": "subscribe",
                            "runId": run.run_id,
                            "token": run.token,
                            "after": run.last_seq,
                        }
                    )
                )
                async for message in socket:
                    attempt = 0
                    for frame in _frames(str(message)):
                        if frame.get("type") == "error":
                            _show(frame, out, err)
                            raise WatchError(str(frame.get("message")))
                        seq = frame.get("seq")
                        if seq is None or seq <= run.last_seq:
                            continue  # not of the sequence, or seen before a reconnect
                        run.last_seq = int(seq)
                        _show(frame, out, err)
                        if frame.get("type") == "status" and frame.get("final"):
                            run.status = str(frame["status"])
                            return run.status
        except (ConnectionClosed, OSError) as error:
            delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
            err.write(f"\n[connection lost ({error}); resuming after seq {run.last_seq}]\n")
            attempt += 1
            await asyncio.sleep(delay)
    return run.status
