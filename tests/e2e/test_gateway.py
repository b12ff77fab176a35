"""The product's first whole path, on the local stack, with real clients."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from hatchway_local.demo.workflows import ANNA_KARENINA
from hatchway_local.stack import LocalStack
from tests.e2e.conftest import LIVE_STREAM, Api, Client, assert_complete, text_of, watch_to_end

pytestmark = pytest.mark.e2e


async def test_demo_stream_arrives_whole_in_order_and_completes(api: Api) -> None:
    run = await api.start("demo-stream", LIVE_STREAM)
    assert run["status"] == "QUEUED"
    client = await Client.open(run["websocketUrl"], run["token"])
    try:
        await client.subscribe(run)
        frames = await asyncio.wait_for(client.until_final(run["runId"]), 60)
    finally:
        await client.close()

    subscribed = client.frames[0]
    assert (subscribed["type"], subscribed["runId"]) == ("subscribed", run["runId"])
    assert subscribed["lastSeq"] < len(frames) // 2  # the stream arrived live, not as a replay
    assert_complete(frames)
    assert text_of(frames) == ANNA_KARENINA
    assert (frames[0]["type"], frames[0]["status"]) == ("status", "RUNNING")
    assert frames[-1]["status"] == "COMPLETED"
    assert frames[-1]["output"] == {"demo-stream": {"chunks": 37, "characters": len(ANNA_KARENINA)}}


async def test_demo_fail_ends_failed_with_its_error(api: Api) -> None:
    run = await api.start("demo-fail", LIVE_STREAM)
    frames = await watch_to_end(run)

    assert_complete(frames)
    assert frames[-1]["status"] == "FAILED"
    assert "demo-fail failed on purpose" in frames[-1]["error"]
    assert text_of(frames) == ANNA_KARENINA[:30]


async def test_two_clients_on_one_run_both_receive_everything(api: Api) -> None:
    run = await api.start("demo-stream", LIVE_STREAM)
    clients = [await Client.open(run["websocketUrl"], run["token"]) for _ in range(2)]
    try:
        for client in clients:
            await client.subscribe(run)
        first, second = await asyncio.wait_for(
            asyncio.gather(*(c.until_final(run["runId"]) for c in clients)), 60
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients))

    assert_complete(first)
    assert first == second


async def test_a_client_that_comes_after_the_end_gets_the_full_replay(api: Api) -> None:
    run = await api.start("demo-stream", LIVE_STREAM)
    live_frames = await watch_to_end(run)

    late = await Client.open(run["websocketUrl"], run["token"])
    try:
        await late.subscribe(run)
        replayed = await asyncio.wait_for(late.until_final(run["runId"]), 30)
        resumed = await watch_to_end(run, after=20, timeout_s=30)
    finally:
        await late.close()

    assert late.frames[0]["type"] == "subscribed"
    assert late.frames[0]["status"] == "COMPLETED"
    assert replayed == live_frames
    assert resumed == live_frames[20:]

    status, body = await api.request(
        "GET", f"/runs/{run['runId']}/frames?after=0", token=run["token"]
    )
    assert status == 200
    assert body["frames"] == live_frames
    assert body["final"] is True
    assert body["next"] == live_frames[-1]["seq"]


@pytest.mark.parametrize("token", ["", "not-a-token"])
async def test_a_connection_without_a_valid_token_is_refused(stack: LocalStack, token: str) -> None:
    assert stack.gateway is not None
    with pytest.raises(InvalidStatus) as refused:
        await Client.open(stack.gateway.websocket_url, token)
    assert refused.value.response.status_code == 401


async def test_each_bad_input_gets_its_error_and_the_connection_keeps_working(api: Api) -> None:
    run = await api.start("demo-stream", {"start_delay_seconds": 0, "pause_seconds": 0})
    other = await api.start("demo-stream", {"start_delay_seconds": 0, "pause_seconds": 0})
    client = await Client.open(run["websocketUrl"], run["token"])
    cases = [
        ("this is not json", "bad_request"),
        ({"action": "dance"}, "bad_request"),
        ({"action": "subscribe", "runId": run["runId"]}, "bad_request"),
        (
            {"action": "subscribe", "runId": run["runId"], "token": run["token"], "after": -3},
            "bad_request",
        ),
        ({"action": "subscribe", "runId": run["runId"], "token": "forged"}, "unauthorized"),
        ({"action": "subscribe", "runId": run["runId"], "token": other["token"]}, "forbidden"),
        ({"action": "subscribe", "runId": "no-such-run", "token": run["token"]}, "forbidden"),
    ]
    try:
        for message, code in cases:
            await client.send(message)
            frame = await asyncio.wait_for(client.next_frame(), 20)
            assert frame["type"] == "error", (message, frame)
            assert frame["code"] == code, (message, frame)
            await client.send({"action": "ping"})
            assert await asyncio.wait_for(client.next_frame(), 20) == {"type": "pong"}
        await client.send({"action": "unsubscribe", "runId": run["runId"]})
        assert await asyncio.wait_for(client.next_frame(), 20) == {
            "type": "unsubscribed",
            "runId": run["runId"],
        }
    finally:
        await client.close()


async def test_http_api_errors_have_the_protocol_shape(api: Api) -> None:
    run = await api.start("demo-stream", {"start_delay_seconds": 0, "pause_seconds": 0})
    cases = [
        ("POST", "/runs", {"workflow": "rm-rf"}, None, None, 404, "unknown_workflow"),
        ("POST", "/runs", None, None, b"{not json", 400, "bad_request"),
        ("POST", "/runs", {"workflow": 7}, None, None, 400, "bad_request"),
        ("POST", "/runs", None, None, b"x" * (300 * 1024), 413, "too_large"),
        ("GET", f"/runs/{run['runId']}", None, None, None, 401, "unauthorized"),
        ("GET", f"/runs/{run['runId']}", None, "forged", None, 401, "unauthorized"),
        ("GET", "/runs/someone-elses", None, run["token"], None, 403, "forbidden"),
        ("GET", "/nowhere", None, None, None, 404, "not_found"),
    ]
    for method, path, body, token, raw, status, code in cases:
        got_status, got = await api.request(method, path, body, token=token, raw=raw)
        assert (got_status, got["error"]["code"]) == (status, code), (method, path, got)
        assert got["error"]["message"]

    status, body = await api.request("GET", f"/runs/{run['runId']}", token=run["token"])
    assert status == 200
    assert set(body) == {"runId", "workflow", "status", "lastSeq", "createdAt", "updatedAt"}
    assert (await api.request("GET", "/healthz"))[0] == 200


async def test_after_unsubscribed_no_frame_of_that_run_arrives(api: Api) -> None:
    """The relay drops the subscriber at once and says ``unsubscribed`` itself, after
    the frames it had sent: nothing of the run follows, while another client on the
    same run goes on to the end."""
    run = await api.start(
        "demo-stream", {"start_delay_seconds": 1.0, "pause_seconds": 0.03, "chunk_size": 5}
    )
    leaving = await Client.open(run["websocketUrl"], run["token"])
    staying = await Client.open(run["websocketUrl"], run["token"])
    try:
        await leaving.subscribe(run)
        await staying.subscribe(run)
        while sum(1 for f in leaving.frames if f.get("type") == "chunk") < 3:
            await asyncio.wait_for(leaving.next_frame(), 30)
        await leaving.send({"action": "unsubscribe", "runId": run["runId"]})
        while not any(f.get("type") == "unsubscribed" for f in leaving.frames):
            await asyncio.wait_for(leaving.next_frame(), 30)
        whole = await asyncio.wait_for(staying.until_final(run["runId"]), 60)
        # Whatever the relay still had for the leaving client would have come by now.
        await leaving.send({"action": "ping"})
        while not any(f.get("type") == "pong" for f in leaving.frames):
            await asyncio.wait_for(leaving.next_frame(), 30)
    finally:
        await asyncio.gather(leaving.close(), staying.close())

    assert_complete(whole)
    at = next(i for i, f in enumerate(leaving.frames) if f["type"] == "unsubscribed")
    after = [f for f in leaving.frames[at + 1 :] if f.get("runId") == run["runId"]]
    assert after == [], f"{len(after)} frame(s) of the run after unsubscribed"
    before = [f for f in leaving.frames[:at] if "seq" in f]
    assert [f["seq"] for f in before] == list(range(1, len(before) + 1))
    assert len(before) < len(whole)  # it left mid-stream


FLOOD = 400


async def test_a_flood_of_messages_is_rate_limited_and_the_connection_stays(api: Api) -> None:
    """400 pings at once: about the burst is answered, the excess dropped with a
    rate_limited error now and then (not one per message), and later the
    connection works. (Each execution environment keeps its own bucket.)"""
    run = await api.start("demo-stream", {"start_delay_seconds": 0, "pause_seconds": 0})
    flooder = await Client.open(run["websocketUrl"], run["token"])
    try:
        await asyncio.gather(*(flooder.send({"action": "ping"}) for _ in range(FLOOD)))
        # The gateway runs each message's function; wait until they all ran.
        while True:
            try:
                await asyncio.wait_for(flooder.next_frame(), 5)
            except TimeoutError:
                break
        pongs = [f for f in flooder.frames if f["type"] == "pong"]
        limited = [f for f in flooder.frames if f.get("code") == "rate_limited"]
        dropped = FLOOD - len(pongs)
        assert limited, "no rate_limited error"
        assert dropped > FLOOD / 4, f"only {dropped} of {FLOOD} dropped"
        assert len(limited) * 5 < dropped  # told now and then, not message by message
        await asyncio.sleep(2.5)  # the bucket refills: a time the protocol promises
        flooder.frames.clear()
        await flooder.send({"action": "ping"})
        assert await asyncio.wait_for(flooder.next_frame(), 20) == {"type": "pong"}
    finally:
        await flooder.close()
