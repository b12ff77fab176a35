"""The whole local stack for end-to-end tests: moto, the Hatchet engine emulator,
a real hatchet-sdk worker, the API Gateway emulator running template.yaml's
handlers, and a relay process; driven by real HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from hatchway_local.stack import LocalStack
from tests.conftest import REPO_ROOT

# Slow enough that a subscriber attached right after POST /runs sees it all live;
# the relay needs a moment to take the run from the queue.
LIVE_STREAM = {"start_delay_seconds": 2.0, "pause_seconds": 0.02}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    async with LocalStack(REPO_ROOT / "template.yaml", http_port=0, log_dir=logs) as running:
        await warm_up(running)
        yield running


async def warm_up(stack: LocalStack) -> None:
    """One run end to end, so every function has a warm execution environment (as a
    deployed API has): the tests then see steady-state timing, not cold starts."""
    assert stack.gateway is not None
    api = Api(stack.gateway.http_url)
    run = await api.start("demo-stream", {"start_delay_seconds": 0, "pause_seconds": 0})
    client = await Client.open(run["websocketUrl"], run["token"])
    await client.send({"action": "ping"})
    await client.send({"action": "unsubscribe", "runId": run["runId"]})
    await client.send("warm up $default")
    await client.subscribe(run)
    await client.until_final(run["runId"])
    await client.close()


@dataclass
class Api:
    base_url: str

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method,
                self.base_url + path,
                json=body if raw is None else None,
                data=raw,
                headers=headers,
            ) as response,
        ):
            return response.status, await response.json(content_type=None)

    async def start(self, workflow: str, input_: dict[str, Any] | None = None) -> dict[str, Any]:
        status, body = await self.request(
            "POST", "/runs", {"workflow": workflow, "input": input_ or {}}
        )
        assert status == 201, body
        return dict(body)


@pytest.fixture
def api(stack: LocalStack) -> Api:
    assert stack.gateway is not None
    return Api(stack.gateway.http_url)


@dataclass
class Client:
    """A WebSocket client that keeps every frame it received, in order."""

    socket: ClientConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # as received

    @classmethod
    async def open(cls, url: str, token: str) -> Client:
        return cls(await connect(f"{url}?token={token}", max_size=None))

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.socket.send(message if isinstance(message, str) else json.dumps(message))

    async def subscribe(self, run: dict[str, Any], after: int = 0) -> None:
        await self.send(
            {"action": "subscribe", "runId": run["runId"], "token": run["token"], "after": after}
        )

    async def next_frame(self) -> dict[str, Any]:
        while True:
            before = len(self.frames)
            message = json.loads(await self.socket.recv())
            self.messages.append(message)
            self.frames.extend(message["frames"] if message.get("type") == "batch" else [message])
            if len(self.frames) > before:
                return self.frames[before]

    async def until_final(self, run_id: str) -> list[dict[str, Any]]:
        """Frames of the run until its final status (a frame may come twice: drop seq <= last)."""
        last = 0
        sequence: list[dict[str, Any]] = []
        index = 0
        while True:
            while index >= len(self.frames):
                await self.next_frame()
            frame = self.frames[index]
            index += 1
            if frame.get("runId") != run_id or "seq" not in frame or frame["seq"] <= last:
                continue
            sequence.append(frame)
            last = frame["seq"]
            if frame["type"] == "status" and frame["final"]:
                return sequence

    async def close(self) -> None:
        await self.socket.close()


async def watch_to_end(
    run: dict[str, Any], after: int = 0, timeout_s: float = 60
) -> list[dict[str, Any]]:
    """A new client subscribes to the run with ``after``; the run's frames to its end."""
    client = await Client.open(run["websocketUrl"], run["token"])
    try:
        await client.subscribe(run, after=after)
        return await asyncio.wait_for(client.until_final(run["runId"]), timeout_s)
    finally:
        await client.close()


def assert_complete(frames: list[dict[str, Any]], *, gaps_allowed: bool = False) -> None:
    """The checker every delivery test uses: 1..n contiguous, in order, final last."""
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1]["type"] == "status"
    assert frames[-1]["final"] is True
    assert not any(f["type"] == "status" and f["final"] for f in frames[:-1])
    if not gaps_allowed:
        assert [f for f in frames if f["type"] == "gap"] == []


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"] for f in frames if f["type"] == "chunk")
