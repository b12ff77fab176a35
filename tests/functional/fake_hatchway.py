"""A scripted Hatchway for the Python client's tests: a real aiohttp server on
127.0.0.1 (port 0) with the WebSocket API, POST /runs, GET /runs/{id}/frames and
presigned-like URLs that answer 403 until the client asks /frames for a fresh one.

Every connection, message, HTTP call and download is recorded; tests wait on them
with :meth:`FakeHatchway.until` (an event per change, no sleeping)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

Frame = dict[str, Any]
OnSubscribe = Callable[[int, dict[str, Any]], Awaitable[None]]

STALE = "stale"  # the signature of every URL sent over the WebSocket
FRESH = "fresh"  # the signature /frames mints: the only one a download accepts


def chunk(run_id: str, seq: int, data: str) -> Frame:
    return {"type": "chunk", "runId": run_id, "seq": seq, "data": data}


def final(run_id: str, seq: int, status: str = "COMPLETED", **extra: Any) -> Frame:
    return {"type": "status", "runId": run_id, "seq": seq, "status": status, "final": True, **extra}


@dataclass
class FakeRun:
    run_id: str
    log: list[Frame]
    tokens: set[str]  # the tokens valid now
    http_upto: int | None = None  # /frames serves seqs up to this (None: the whole log)
    http_frames: dict[int, Frame] = field(default_factory=dict)  # /frames serves these instead


@dataclass
class Received:
    connection: int  # index into FakeHatchway.sockets
    message: dict[str, Any]


@dataclass
class FakeHatchway:
    runs: dict[str, FakeRun] = field(default_factory=dict)
    workflows: dict[str, list[Frame]] = field(default_factory=dict)  # POST /runs templates
    blobs: dict[str, bytes] = field(default_factory=dict)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    connect_tokens: list[str] = field(default_factory=list)  # every upgrade's ?token=
    received: list[Received] = field(default_factory=list)
    frame_requests: list[dict[str, Any]] = field(default_factory=list)  # GET /frames
    downloads: list[tuple[str, str, int]] = field(default_factory=list)  # key, sig, status
    refuse_connects: int = 0  # the next upgrades answered 503
    break_downloads: int = 0  # the next downloads lose their connection (recorded status 0)
    on_subscribe: OnSubscribe | None = None  # None: replay the log from `after`
    url: str = ""
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/prod"

    async def start(self) -> FakeHatchway:
        app = web.Application()
        app.add_routes(
            [
                web.get("/prod", self._websocket),
                web.post("/runs", self._start_run),
                web.get("/runs/{run_id}/frames", self._frames),
                web.get("/blobs/{key}", self._blob),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        for socket in self.sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- scripting -----------------------------------------------------------------------

    def add_run(self, run_id: str, log: list[Frame], token: str | None = None) -> FakeRun:
        run = FakeRun(run_id, log, {token or f"token-{run_id}"})
        self.runs[run_id] = run
        return run

    def blob_url(self, key: str, body: bytes, sig: str = STALE) -> str:
        self.blobs[key] = body
        return f"{self.url}/blobs/{key}?sig={sig}"

    async def send(self, connection: int, message: Frame) -> None:
        await self.sockets[connection].send_str(json.dumps(message))

    async def replay(self, connection: int, subscribe: dict[str, Any], upto: int = 0) -> None:
        """What the real subscribe does: ``subscribed``, then the frames after ``after``
        (up to ``upto`` when given) in one batch."""
        run = self.runs[subscribe["runId"]]
        after = int(subscribe.get("after") or 0)
        frames = [f for f in run.log if f["seq"] > after and (not upto or f["seq"] <= upto)]
        await self.send(
            connection,
            {"type": "subscribed", "runId": run.run_id, "status": "RUNNING", "lastSeq": after},
        )
        if frames:
            await self.send(connection, {"type": "batch", "frames": frames})

    async def drop(self, connection: int) -> None:
        await self.sockets[connection].close(code=1001, message=b"Going away")

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
        """Wait for the recorded state to satisfy ``predicate`` (woken by each change)."""
        async with asyncio.timeout(timeout_s):
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()

    def messages(self, action: str, run_id: str | None = None) -> list[Received]:
        return [
            r
            for r in self.received
            if r.message.get("action") == action
            and (run_id is None or r.message.get("runId") == run_id)
        ]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the WebSocket API ------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token", "")
        self.connect_tokens.append(token)
        self._notify()
        if self.refuse_connects > 0:
            self.refuse_connects -= 1
            return web.Response(status=503, text="Service Unavailable")
        if not any(token in run.tokens for run in self.runs.values()):
            return web.Response(status=401, text="Unauthorized")
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        index = len(self.sockets)
        self.sockets.append(socket)
        self._notify()
        try:
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                self.received.append(Received(index, data))
                self._notify()
                await self._answer(index, data)
        finally:
            self._notify()
        return socket

    async def _answer(self, index: int, data: dict[str, Any]) -> None:
        action = data.get("action")
        if action == "ping":
            await self.send(index, {"type": "pong"})
        elif action == "unsubscribe":
            await self.send(index, {"type": "unsubscribed", "runId": data["runId"]})
        elif action == "subscribe":
            run = self.runs.get(data["runId"])
            if run is None:
                message = f"run {data['runId']} not found"
                await self.send(
                    index,
                    {
                        "type": "error",
                        "code": "not_found",
                        "message": message,
                        "runId": data["runId"],
                    },
                )
            elif data.get("token") not in run.tokens:
                await self.send(
                    index,
                    {
                        "type": "error",
                        "code": "unauthorized",
                        "message": "the run token is not valid",
                        "runId": run.run_id,
                    },
                )
            elif self.on_subscribe is not None:
                await self.on_subscribe(index, data)
            else:
                await self.replay(index, data)

    # -- the HTTP API --------------------------------------------------------------------------

    async def _start_run(self, request: web.Request) -> web.Response:
        body = await request.json()
        template = self.workflows.get(body.get("workflow"))
        if template is None:
            return _error(
                404, "unknown_workflow", f"workflow {body.get('workflow')!r} is not allowed"
            )
        run_id = f"run-{next(self._ids)}"
        run = self.add_run(run_id, [{**frame, "runId": run_id} for frame in template])
        self._notify()
        return web.json_response(
            {
                "runId": run_id,
                "workflow": body["workflow"],
                "status": "QUEUED",
                "token": next(iter(run.tokens)),
                "expiresAt": "2099-01-01T00:00:00Z",
                "websocketUrl": self.ws_url,
            },
            status=201,
        )

    async def _frames(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", "500"))
        self.frame_requests.append(
            {"runId": run_id, "after": after, "limit": limit, "token": token}
        )
        self._notify()
        run = self.runs.get(run_id)
        if run is None:
            return _error(404, "not_found", f"run {run_id} not found")
        if scheme != "Bearer" or token not in run.tokens:
            return _error(401, "unauthorized", "the run token is not valid")
        frames = [
            self._presign(run.http_frames.get(f["seq"], f))
            for f in run.log
            if f["seq"] > after and (run.http_upto is None or f["seq"] <= run.http_upto)
        ][:limit]
        return web.json_response(
            {
                "frames": frames,
                "next": frames[-1]["seq"] if frames else after,
                "final": any(f["type"] == "status" and f["final"] for f in frames),
            }
        )

    def _presign(self, frame: Frame) -> Frame:
        url = frame.get("url")
        if isinstance(url, str) and "/blobs/" in url:
            return {**frame, "url": url.split("?", 1)[0] + f"?sig={FRESH}"}
        return frame

    async def _blob(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        sig = request.query.get("sig", "")
        if self.break_downloads > 0:  # the network breaks in the middle of the body
            self.break_downloads -= 1
            self.downloads.append((key, sig, 0))
            self._notify()
            broken = web.StreamResponse(headers={"Content-Length": "1000"})
            await broken.prepare(request)
            await broken.write(b"partial")
            assert request.transport is not None
            request.transport.abort()
            return broken
        ok = key in self.blobs and sig == FRESH
        self.downloads.append((key, sig, 200 if ok else 403))
        self._notify()
        if not ok:
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        return web.Response(body=self.blobs[key])


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
