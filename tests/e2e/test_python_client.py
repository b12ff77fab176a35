"""hatchway.client on the whole local stack: demo-stream streamed whole with the
Python client while the API Gateway emulator's control API drops its connection."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from hatchway.client import ConnectionState, Frame, HatchwayClient
from hatchway_local.demo.workflows import ANNA_KARENINA
from hatchway_local.stack import LocalStack
from tests.e2e.conftest import Api, assert_complete, text_of, watch_to_end

pytestmark = pytest.mark.e2e

# Slow enough that the stream is still going when the socket is dropped (37 chunks).
STREAM = {"start_delay_seconds": 2.0, "pause_seconds": 0.1}
DROP_AFTER = 5  # frames received before the gateway drops the connection


async def control(stack: LocalStack, method: str, path: str, body: Any = None) -> Any:
    """The emulator's fault-injection control API, over HTTP as any tool would use it."""
    assert stack.gateway is not None
    settings = stack.gateway.control_settings()
    headers = {"Authorization": f"Bearer {settings['APIGW_EMULATOR_TOKEN']}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, settings["APIGW_EMULATOR_CONTROL_URL"] + path, json=body, headers=headers
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def test_the_python_client_streams_demo_stream_whole_across_a_forced_disconnect(
    api: Api, stack: LocalStack
) -> None:
    states: list[ConnectionState] = []
    frames: list[Frame] = []
    async with HatchwayClient(api.base_url) as client:
        run = await client.start("demo-stream", STREAM)
        run.on_connection = states.append
        before = set((await control(stack, "GET", "/connections"))["connections"])
        async with asyncio.timeout(90):
            async for frame in run.frames():
                frames.append(frame)
                if len(frames) == DROP_AFTER:
                    now = set((await control(stack, "GET", "/connections"))["connections"])
                    (ours,) = now - before
                    # Connection ids are base64: "/" and "+" are quoted in the path.
                    path = f"/connections/{quote(ours, safe='')}/disconnect"
                    dropped = await control(stack, "POST", path, {"code": 1001})
                    assert dropped == {"ok": True}
        text = await run.text()
        final = await run.result()

    assert_complete(frames)  # 1..n, each once, in order, final last
    assert frames[DROP_AFTER - 1]["type"] == "chunk"  # dropped mid-stream, not at the end
    assert text_of(frames) == ANNA_KARENINA
    assert text == ANNA_KARENINA
    assert final["status"] == "COMPLETED"
    assert states.count("open") == 2  # it reconnected once, and resumed
    assert "reconnecting" in states
    assert states[-1] == "closed"
    # A plain subscribe after the end replays the same frames.
    replayed = await watch_to_end(
        {"runId": run.run_id, "token": run.token, "websocketUrl": run.websocket_url}
    )
    assert replayed == frames
