"""``hatchway watch``: start a workflow (or attach to a run) through the HTTP API and
print what it streams as it arrives, then its final status. It is built on
``hatchway.client``, so it resumes with ``after`` when the connection drops, falls
back to ``GET /runs/{id}/frames`` when the WebSocket cannot connect, and fetches
chunks sent by reference: it shows what Hatchway guarantees.

Chunks go to stdout as they arrive; files, gaps, statuses and connection changes go
to stderr."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from hatchway.client import ConnectionCallback, ConnectionState, Frame, HatchwayClient, Run
from hatchway.observability import logger


def show(frame: Frame, out: TextIO, err: TextIO) -> None:
    kind = frame.get("type")
    if kind == "chunk":
        if "data" in frame:
            out.write(str(frame["data"]))
            out.flush()
        else:  # not fetched (fetch_references off)
            err.write(f"\n[chunk of {frame.get('size')} bytes: {frame.get('url')}]\n")
    elif kind == "file":
        err.write(
            f"\n[file {frame.get('name')} ({frame.get('size')} bytes, "
            f"sha256 {frame.get('sha256')}): {frame.get('url')}]\n"
        )
    elif kind == "gap":
        skipped = frame.get("skipped")
        lost = f", seqs {skipped[0]}..{skipped[1]} lost" if skipped else ""
        err.write(f"\n[gap at seq {frame.get('seq')}: {frame.get('reason')}{lost}]\n")
    elif kind == "status":
        if frame.get("final"):
            detail = frame.get("error") or json.dumps(frame.get("output"))
            err.write(f"\n[{frame.get('status')}] {detail}\n")
        else:
            err.write(f"\n[{frame.get('status')}]\n")
    err.flush()


def connection_printer(err: TextIO) -> ConnectionCallback:
    last: list[ConnectionState] = []

    def changed(state: ConnectionState) -> None:
        if state == "closed" or (last and last[-1] == state):
            return  # "closed": the run ended (its status says how) or watch stopped
        last[:] = [state]
        err.write(f"\n[connection {state}]\n")
        err.flush()

    return changed


async def watch(
    run: Run, *, after: int = 0, out: TextIO | None = None, err: TextIO | None = None
) -> str:
    """Follow the run from ``after`` to its final status (returned), printing it."""
    out = out or sys.stdout
    err = err or sys.stderr
    run.on_connection = connection_printer(err)
    status = ""
    async for frame in run.frames(after=after):
        show(frame, out, err)
        if frame.get("type") == "status" and frame.get("final"):
            status = str(frame.get("status"))
    return status


async def watch_command(
    base_url: str,
    workflow: str,
    input_: dict[str, Any],
    *,
    run_id: str | None = None,
    token: str | None = None,
    websocket_url: str | None = None,
    after: int = 0,
    err: TextIO | None = None,
) -> str:
    """Start ``workflow`` (or attach to ``run_id``) and watch it; its final status."""
    err = err or sys.stderr
    if "POWERTOOLS_LOG_LEVEL" not in os.environ:  # the client's reconnect notes: see [connection]
        logger.setLevel("WARNING")
    async with HatchwayClient(base_url, websocket_url=websocket_url) as client:
        if run_id is not None and token is not None:
            run = client.attach(run_id, token, websocket_url)
        else:
            run = await client.start(workflow, input_)
            err.write(f"[run {run.run_id}]\n")
        return await watch(run, after=after)
