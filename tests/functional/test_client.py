"""hatchway.client against a scripted Hatchway (tests/functional/fake_hatchway.py): a
real aiohttp server on 127.0.0.1 with a real WebSocket. Each test scripts what the
server does and asserts what the client sent back (subscribe's `after`, unsubscribe,
GET /frames) as well as what it delivered."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hatchway.client import (
    ConnectionState,
    Frame,
    HatchwayClient,
    HatchwayError,
    Run,
    RunFailedError,
)
from tests.functional.fake_hatchway import FRESH, STALE, FakeHatchway, Received, chunk, final

pytestmark = pytest.mark.functional

WAIT_S = 20  # a bound, not a measure


class Delays:
    """An injected sleep: records each backoff delay, waits no time."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)
        await asyncio.sleep(0)


def client_for(fake: FakeHatchway, **options: Any) -> HatchwayClient:
    options.setdefault("sleep", Delays())
    return HatchwayClient(fake.url, websocket_url=fake.ws_url, **options)


def words_log(run_id: str, words: int) -> list[Frame]:
    return [*(chunk(run_id, n, f"w{n} ") for n in range(1, words + 1)), final(run_id, words + 1)]


async def follow(run: Run, after: int | None = None) -> list[Frame]:
    async with asyncio.timeout(WAIT_S):
        return [frame async for frame in run.frames(after=after)]


def seqs(frames: list[Frame]) -> list[int]:
    return [f["seq"] for f in frames]


def subscribes(fake: FakeHatchway, run_id: str) -> list[tuple[int, int, str]]:
    """(connection, after, token) of each subscribe the client sent for the run."""
    return [
        (r.connection, r.message["after"], r.message["token"])
        for r in fake.messages("subscribe", run_id)
    ]


# -- resume -------------------------------------------------------------------------------


async def test_a_dropped_socket_resumes_with_after_and_no_frame_comes_twice(
    fake: FakeHatchway,
) -> None:
    run_log = words_log("r1", 6)
    fake.add_run("r1", run_log)

    async def script(connection: int, subscribe: dict[str, Any]) -> None:
        if connection == 0:  # three frames one by one, then the gateway drops the socket
            await fake.replay(connection, subscribe, upto=3)
            await fake.drop(connection)
        else:  # the server re-sends the frame at `after` (allowed): the client drops it
            await fake.replay(connection, {**subscribe, "after": subscribe["after"] - 1})

    fake.on_subscribe = script
    async with client_for(fake) as client:
        frames = await follow(client.attach("r1", "token-r1"))

    assert frames == run_log  # 1..7 once each, in order
    assert subscribes(fake, "r1") == [(0, 0, "token-r1"), (1, 3, "token-r1")]
    assert len(fake.sockets) == 2


async def test_reconnects_back_off_with_full_jitter_capped_and_reset_once_open(
    fake: FakeHatchway,
) -> None:
    fake.add_run("r1", words_log("r1", 4))
    fake.refuse_connects = 4

    async def script(connection: int, subscribe: dict[str, Any]) -> None:
        await fake.replay(connection, subscribe, upto=2 if connection == 0 else 0)
        if connection == 0:
            await fake.drop(connection)

    fake.on_subscribe = script
    delays = Delays()
    states: list[ConnectionState] = []
    async with client_for(
        fake,
        random=lambda: 1.0,
        backoff_base_s=0.01,
        backoff_cap_s=0.04,
        fallback_after=100,
        sleep=delays,
    ) as client:
        run = client.attach("r1", "token-r1")
        run.on_connection = states.append
        frames = await follow(run)

    assert seqs(frames) == [1, 2, 3, 4, 5]
    # 4 refused connects: 0.01 * 2**n capped at 0.04; open resets; the drop waits 0.01.
    assert delays.seen == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.01])
    assert len(fake.connect_tokens) == 6
    assert states[0] == "connecting"
    assert states.count("open") == 2
    assert states[-1] == "closed"


async def test_backoff_is_random_times_the_capped_ceiling(fake: FakeHatchway) -> None:
    fake.add_run("r1", words_log("r1", 1))
    fake.refuse_connects = 3
    delays = Delays()
    async with client_for(
        fake,
        random=lambda: 0.5,
        backoff_base_s=1.0,
        backoff_cap_s=3.0,
        fallback_after=100,
        sleep=delays,
    ) as client:
        await follow(client.attach("r1", "token-r1"))
    assert delays.seen == pytest.approx([0.5, 1.0, 1.5])


# -- what the run carries ---------------------------------------------------------------------


async def test_a_gap_is_surfaced_in_order(fake: FakeHatchway) -> None:
    gap = {"type": "gap", "runId": "r1", "seq": 6, "reason": "relay lost", "skipped": [3, 5]}
    run_log = [chunk("r1", 1, "a"), chunk("r1", 2, "b"), gap, chunk("r1", 7, "c"), final("r1", 8)]
    fake.add_run("r1", run_log)
    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        frames = await follow(run)
        text = await run.text()
    assert frames == run_log
    assert frames[2] == gap
    assert text == "abc"


async def test_a_by_reference_chunk_is_fetched_and_an_expired_url_asked_again(
    fake: FakeHatchway,
) -> None:
    big = "ß" * 100_000
    whole_final = final("r1", 4, output={"words": 2, "big": "o" * 10})
    file_frame = {
        "type": "file",
        "runId": "r1",
        "seq": 3,
        "name": "report.txt",
        "contentType": "text/plain",
        "size": 5,
        "sha256": "ab" * 32,
        "url": fake.blob_url("report", b"hello"),
        "expiresAt": "2099-01-01T00:00:00Z",
    }
    fake.add_run(
        "r1",
        [
            chunk("r1", 1, "small "),
            {
                "type": "chunk",
                "runId": "r1",
                "seq": 2,
                "size": len(big.encode()),
                "url": fake.blob_url("big", big.encode()),  # expired: 403 until refreshed
                "expiresAt": "2000-01-01T00:00:00Z",
            },
            file_frame,
            {
                "type": "status",
                "runId": "r1",
                "seq": 4,
                "status": "COMPLETED",
                "final": True,
                "size": 99,
                "url": fake.blob_url("final", json.dumps(whole_final).encode(), sig=FRESH),
            },
        ],
    )
    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        frames = await follow(run)
        result = await run.result()

    assert frames[1]["data"] == big
    assert frames[2] == file_frame  # files are passed as they are: url, size, sha256
    assert frames[3] == whole_final
    assert result == whole_final
    assert fake.downloads == [("big", STALE, 403), ("big", FRESH, 200), ("final", FRESH, 200)]
    assert [(r["after"], r["limit"], r["token"]) for r in fake.frame_requests] == [
        (1, 1, "token-r1")
    ]


async def test_references_are_left_alone_without_fetch_references(fake: FakeHatchway) -> None:
    reference = {"type": "chunk", "runId": "r1", "seq": 1, "size": 3}
    fake.add_run("r1", [{**reference, "url": fake.blob_url("c", b"abc")}, final("r1", 2)])
    async with client_for(fake, fetch_references=False) as client:
        run = client.attach("r1", "token-r1")
        frames = await follow(run)
        fresh = await run.refresh(frames[0])
        text = await run.text()  # text() needs the data: it fetches regardless
    assert "data" not in frames[0]
    assert fresh["url"].endswith(f"?sig={FRESH}")
    assert text == "abc"
    assert fake.downloads == [("c", STALE, 403), ("c", FRESH, 200)]


async def test_a_by_reference_download_that_breaks_off_is_tried_again_with_a_fresh_url(
    fake: FakeHatchway,
) -> None:
    reference = {"type": "chunk", "runId": "r1", "seq": 1, "size": 3}
    fake.add_run("r1", [{**reference, "url": fake.blob_url("c", b"abc", FRESH)}, final("r1", 2)])
    fake.break_downloads = 2  # the network fails twice, then the download goes through
    delays = Delays()
    async with client_for(fake, random=lambda: 1.0, backoff_base_s=0.01, sleep=delays) as client:
        run = client.attach("r1", "token-r1")
        frames = await follow(run)
    assert frames[0]["data"] == "abc"
    assert fake.downloads == [("c", FRESH, 0), ("c", FRESH, 0), ("c", FRESH, 200)]
    assert [(r["after"], r["limit"]) for r in fake.frame_requests] == [(0, 1), (0, 1)]
    assert delays.seen == pytest.approx([0.01])  # the second retry waited a backoff


async def test_a_by_reference_payload_that_never_comes_fails_with_reference_unavailable(
    fake: FakeHatchway,
) -> None:
    reference = {"type": "chunk", "runId": "r1", "seq": 1, "size": 3}
    fake.add_run("r1", [{**reference, "url": fake.blob_url("c", b"abc", FRESH)}, final("r1", 2)])
    fake.break_downloads = 4
    delays = Delays()
    async with client_for(fake, random=lambda: 1.0, backoff_base_s=0.01, sleep=delays) as client:
        run = client.attach("r1", "token-r1")
        with pytest.raises(HatchwayError) as raised:
            await follow(run)
    assert raised.value.code == "reference_unavailable"
    assert fake.downloads == [("c", FRESH, 0)] * 4
    assert len(fake.frame_requests) == 3  # a fresh url before each try after the first
    assert delays.seen == pytest.approx([0.01, 0.02])
    assert run.history == []  # nothing after the frame it could not fetch either


async def test_a_refreshed_frame_that_comes_back_inline_is_used_as_it_is(
    fake: FakeHatchway,
) -> None:
    whole_final = final("r1", 2, output={"big": "o" * 10})
    log = [
        {"type": "chunk", "runId": "r1", "seq": 1, "size": 7, "url": fake.blob_url("c", b"?")},
        {
            "type": "status",
            "runId": "r1",
            "seq": 2,
            "status": "COMPLETED",
            "final": True,
            "size": 99,
            "url": fake.blob_url("final", b"?"),
        },
    ]  # both URLs expired: 403, and /frames answers the frames inline
    fake.add_run("r1", log).http_frames = {1: chunk("r1", 1, "inline "), 2: whole_final}
    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        frames = await follow(run)
        result = await run.result()
    assert frames == [chunk("r1", 1, "inline "), whole_final]
    assert result == whole_final
    assert fake.downloads == [("c", STALE, 403), ("final", STALE, 403)]


async def test_text_uses_a_refreshed_chunk_that_comes_back_inline(fake: FakeHatchway) -> None:
    reference = {"type": "chunk", "runId": "r1", "seq": 1, "size": 7}
    fake.add_run(
        "r1", [{**reference, "url": fake.blob_url("c", b"?")}, final("r1", 2)]
    ).http_frames = {1: chunk("r1", 1, "inline")}
    async with client_for(fake, fetch_references=False) as client:
        run = client.attach("r1", "token-r1")
        async with asyncio.timeout(WAIT_S):
            assert await run.text() == "inline"
    assert fake.downloads == [("c", STALE, 403)]


# -- tokens and refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_unauthorized_asks_get_token_and_resubscribes_with_after(
    fake: FakeHatchway, kind: str
) -> None:
    run = fake.add_run("r1", words_log("r1", 4), token="old")

    async def script(connection: int, subscribe: dict[str, Any]) -> None:
        if subscribe["token"] == "old":  # the token expires mid-stream
            await fake.replay(connection, subscribe, upto=2)
            run.tokens = set()
            message = "the run token has expired; subscribe again with after=2"
            await fake.send(
                connection,
                {"type": "error", "code": "unauthorized", "runId": "r1", "message": message},
            )
        else:
            await fake.replay(connection, subscribe)

    fake.on_subscribe = script
    asked: list[str] = []

    def sync_token(run_id: str) -> str:
        asked.append(run_id)
        run.tokens.add("new")
        return "new"

    async def async_token(run_id: str) -> str:
        await asyncio.sleep(0)
        return sync_token(run_id)

    get_token = sync_token if kind == "sync" else async_token
    async with client_for(fake, get_token=get_token) as client:
        followed = client.attach("r1", "old")
        frames = await follow(followed)

    assert seqs(frames) == [1, 2, 3, 4, 5]
    assert asked == ["r1"]
    assert subscribes(fake, "r1") == [(0, 0, "old"), (0, 2, "new")]
    assert followed.token == "new"


async def test_unauthorized_without_get_token_fails_the_run(fake: FakeHatchway) -> None:
    fake.add_run("r1", words_log("r1", 2))
    fake.add_run("r2", words_log("r2", 2))
    async with client_for(fake) as client:
        with pytest.raises(HatchwayError) as raised:
            await follow(client.attach("r2", "token-r1"))  # a valid token, another run's
    assert raised.value.code == "unauthorized"


async def test_a_run_that_does_not_exist_fails_with_not_found(fake: FakeHatchway) -> None:
    fake.add_run("r1", words_log("r1", 2))
    async with client_for(fake) as client:
        with pytest.raises(HatchwayError) as raised:
            await follow(client.attach("nope", "token-r1"))
    assert raised.value.code == "not_found"


# -- the HTTP fallback ------------------------------------------------------------------------------


async def test_failed_connects_fall_back_to_http_then_the_websocket_again(
    fake: FakeHatchway,
) -> None:
    run_log = words_log("r1", 6)
    fake.add_run("r1", run_log).http_upto = 4  # what the log holds while the socket is down

    async def script(connection: int, subscribe: dict[str, Any]) -> None:
        await fake.replay(connection, subscribe, upto=2 if connection == 0 else 0)
        if connection == 0:
            fake.refuse_connects = 3
            await fake.drop(connection)

    fake.on_subscribe = script
    states: list[ConnectionState] = []
    async with client_for(fake, fallback_after=3) as client:
        run = client.attach("r1", "token-r1")
        run.on_connection = states.append
        frames = await follow(run)

    assert frames == run_log
    # after=2 gave 3..4 (next 4, not final); after=4 was empty: back to the WebSocket
    assert [(r["after"], r["token"]) for r in fake.frame_requests] == [
        (2, "token-r1"),
        (4, "token-r1"),
    ]
    assert subscribes(fake, "r1") == [(0, 0, "token-r1"), (1, 4, "token-r1")]
    assert len(fake.connect_tokens) == 5  # open, 3 refused, open
    assert states.count("fallback") == 1
    assert states.index("fallback") < len(states) - 1 - states[::-1].index("open")
    assert states[-1] == "closed"


# -- one socket, many runs; stopping ---------------------------------------------------------------


async def test_two_runs_share_one_socket(fake: FakeHatchway) -> None:
    logs = {run_id: words_log(run_id, 3) for run_id in ("r1", "r2")}
    for run_id, run_log in logs.items():
        fake.add_run(run_id, run_log)
    held: list[Received] = []

    async def hold(connection: int, subscribe: dict[str, Any]) -> None:
        held.append(Received(connection, subscribe))

    fake.on_subscribe = hold
    async with client_for(fake) as client:
        tasks = [asyncio.create_task(follow(client.attach(r, f"token-{r}"))) for r in logs]
        await fake.until(lambda: len(held) == 2)
        for subscribe in held:  # both are subscribed before either frame is sent
            await fake.replay(subscribe.connection, subscribe.message)
        results = await asyncio.gather(*tasks)

    assert results == list(logs.values())
    assert len(fake.sockets) == 1
    assert sorted((r.connection, r.message["runId"], r.message["token"]) for r in held) == [
        (0, "r1", "token-r1"),
        (0, "r2", "token-r2"),
    ]


async def test_cancelling_the_iteration_unsubscribes(fake: FakeHatchway) -> None:
    fake.add_run("r1", [chunk("r1", 1, "first")])  # a run that goes on
    fake.add_run("r2", [chunk("r2", 1, "other")])
    got_one = {"r1": asyncio.Event(), "r2": asyncio.Event()}  # each run's own
    states: list[ConnectionState] = []

    async def consume(run: Run) -> None:
        async for _ in run.frames():
            got_one[run.run_id].set()

    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        run.on_connection = states.append
        other = client.attach("r2", "token-r2")
        keeps = asyncio.create_task(consume(other))
        async with asyncio.timeout(WAIT_S):
            await got_one["r2"].wait()
        task = asyncio.create_task(consume(run))
        async with asyncio.timeout(WAIT_S):
            await got_one["r1"].wait()  # r1 is cancelled mid-stream, after its first frame
        assert seqs(run.history) == [1]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fake.until(lambda: len(fake.messages("unsubscribe", "r1")) == 1)
        assert fake.messages("unsubscribe", "r2") == []  # the other run stays subscribed
        assert not fake.sockets[0].closed
        keeps.cancel()
        with pytest.raises(asyncio.CancelledError):
            await keeps
        await fake.until(lambda: len(fake.messages("unsubscribe", "r2")) == 1)
        await fake.until(lambda: fake.sockets[0].closed)  # the socket closes once idle

    assert states[-1] == "closed"
    assert len(fake.sockets) == 1


# -- summaries and starting -----------------------------------------------------------------------


async def test_result_raises_run_failed_error_on_failed(fake: FakeHatchway) -> None:
    failed = final("r1", 2, "FAILED", error="boom")
    fake.add_run("r1", [chunk("r1", 1, "partial"), failed])
    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        with pytest.raises(RunFailedError) as raised:
            await run.result()
        assert await run.text() == "partial"  # text() does not judge the status
    assert raised.value.status == "FAILED"
    assert raised.value.error == "boom"
    assert raised.value.frame == failed


async def test_start_text_and_result(fake: FakeHatchway) -> None:
    fake.workflows["demo-stream"] = [
        chunk("", 1, "Hello, "),
        chunk("", 2, "world"),
        final("", 3, output={"ok": True}),
    ]
    async with client_for(fake) as client:
        run = await client.start("demo-stream", {"words": 2}, metadata={"user": "u1"})
        text = await run.text()
        result = await run.result()  # known already: no second follow
        with pytest.raises(HatchwayError) as refused:
            await client.start("nope")
    assert text == "Hello, world"
    assert result["output"] == {"ok": True}
    assert run.last_seq == 3
    assert run.websocket_url == fake.ws_url
    assert len(fake.messages("subscribe", run.run_id)) == 1
    assert (refused.value.code, refused.value.status) == ("unknown_workflow", 404)


# -- one run, many watchers; refusals in a row; the rate -------------------------------------------


async def test_watchers_of_one_run_share_one_subscription(fake: FakeHatchway) -> None:
    run_log = words_log("r1", 3)
    fake.add_run("r1", run_log)
    held: list[Received] = []

    async def hold(connection: int, subscribe: dict[str, Any]) -> None:
        held.append(Received(connection, subscribe))

    fake.on_subscribe = hold
    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        first, second = (asyncio.create_task(follow(run)) for _ in range(2))
        text = asyncio.create_task(run.text())
        await fake.until(lambda: len(held) == 1)
        await fake.replay(held[0].connection, held[0].message)
        assert await first == await second == run_log
        assert await text == "w1 w2 w3 "
        assert await follow(run, after=2) == run_log[2:]  # from history, no new subscribe
    assert len(fake.messages("subscribe")) == 1


async def test_a_token_refused_again_and_again_fails_the_run(fake: FakeHatchway) -> None:
    fake.add_run("r1", words_log("r1", 2))
    fake.add_run("r2", words_log("r2", 2))  # its token opens the socket, not r1's stream
    asked: list[str] = []

    def stale_token(run_id: str) -> str:
        asked.append(run_id)
        return "token-r2"

    async with client_for(fake, get_token=stale_token) as client:
        with pytest.raises(HatchwayError) as raised:
            await follow(client.attach("r1", "token-r2"))
    assert raised.value.code == "unauthorized"
    assert asked == ["r1"] * 3  # then it stops asking
    assert len(fake.messages("subscribe", "r1")) == 4


async def test_a_connect_refused_again_and_again_fails_the_run(fake: FakeHatchway) -> None:
    fake.add_run("r1", words_log("r1", 2))
    async with client_for(
        fake, get_token=lambda _run_id: "expired-too", fallback_after=100
    ) as client:
        with pytest.raises(HatchwayError) as raised:
            await follow(client.attach("r1", "expired"))
    assert (raised.value.code, raised.value.status) == ("unauthorized", 401)
    assert fake.connect_tokens == ["expired", *["expired-too"] * 3]


async def test_a_refused_connect_asks_get_token(fake: FakeHatchway) -> None:
    fake.add_run("r1", words_log("r1", 2), token="fresh")

    async with client_for(fake, get_token=lambda _run_id: "fresh") as client:
        frames = await follow(client.attach("r1", "expired"))
    assert seqs(frames) == [1, 2, 3]
    assert fake.connect_tokens == ["expired", "fresh"]


async def test_subscribes_dropped_over_the_rate_are_sent_again(fake: FakeHatchway) -> None:
    fake.add_run("r1", words_log("r1", 2))
    dropped: list[int] = []

    async def over_the_rate(connection: int, subscribe: dict[str, Any]) -> None:
        if not dropped:  # dropped unanswered, and the client is told once
            dropped.append(connection)
            await fake.send(
                connection,
                {"type": "error", "code": "rate_limited", "message": "slow down"},
            )
        else:
            await fake.replay(connection, subscribe)

    fake.on_subscribe = over_the_rate
    async with client_for(fake) as client:
        frames = await follow(client.attach("r1", "token-r1"))
    assert seqs(frames) == [1, 2, 3]
    assert subscribes(fake, "r1") == [(0, 0, "token-r1"), (0, 0, "token-r1")]


@pytest.mark.parametrize("code", ["unauthorized", "internal"])
async def test_a_resubscribe_dropped_over_the_rate_is_sent_again(
    fake: FakeHatchway, code: str
) -> None:
    run = fake.add_run("r1", words_log("r1", 4), token="old")

    async def script(connection: int, subscribe: dict[str, Any]) -> None:
        sent = len(fake.messages("subscribe", "r1"))  # this one included
        if sent == 1:  # subscribed (confirmed), two frames, then the server ends it
            await fake.replay(connection, subscribe, upto=2)
            if code == "unauthorized":
                run.tokens = set()
            await fake.send(
                connection, {"type": "error", "code": code, "runId": "r1", "message": "again"}
            )
        elif sent == 2:  # the subscribe again is dropped over the rate
            await fake.send(
                connection, {"type": "error", "code": "rate_limited", "message": "slow down"}
            )
        else:
            await fake.replay(connection, subscribe)

    fake.on_subscribe = script

    def get_token(_run_id: str) -> str:
        run.tokens.add("new")
        return "new"

    async with client_for(fake, get_token=get_token) as client:
        frames = await follow(client.attach("r1", "old"))
    assert seqs(frames) == [1, 2, 3, 4, 5]
    token = "new" if code == "unauthorized" else "old"
    assert subscribes(fake, "r1") == [(0, 0, "old"), (0, 2, token), (0, 2, token)]


async def test_run_close_ends_the_iteration_and_unsubscribes(fake: FakeHatchway) -> None:
    fake.add_run("r1", [chunk("r1", 1, "first")])  # a run that goes on
    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        frames = run.frames()
        assert (await anext(frames))["seq"] == 1
        waiting = asyncio.create_task(run.result())
        await asyncio.sleep(0)  # result() is waiting on the same follow
        run.close()
        with pytest.raises(StopAsyncIteration):
            await anext(frames)
        with pytest.raises(HatchwayError) as raised:
            await waiting
        await fake.until(lambda: len(fake.messages("unsubscribe", "r1")) == 1)
    assert raised.value.code == "closed"
    assert len(fake.messages("subscribe", "r1")) == 1


async def test_a_call_right_after_run_close_follows_again(fake: FakeHatchway) -> None:
    fake.add_run("r1", [chunk("r1", 1, "a")])  # a run that goes on
    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        frames = run.frames()
        assert (await anext(frames))["seq"] == 1
        run.close()
        fake.runs["r1"].log.append(final("r1", 2))
        assert seqs(await follow(run, after=1)) == [2]  # straight after close(): a new follow
        with pytest.raises(StopAsyncIteration):
            await anext(frames)  # the iteration close() ended stays ended
        assert await run.text() == "a"
        assert seqs(run.history) == [1, 2]
    assert [after for _, after, _ in subscribes(fake, "r1")] == [0, 1]
    assert len(fake.messages("unsubscribe", "r1")) == 1
    assert len(fake.sockets) == 1  # the socket, idle a moment, was kept for the new follow


async def test_a_call_right_after_the_last_watcher_left_follows_again(fake: FakeHatchway) -> None:
    fake.add_run("r1", [chunk("r1", 1, "a")])  # a run that goes on
    async with client_for(fake) as client:
        run = client.attach("r1", "token-r1")
        frames = run.frames()
        assert (await anext(frames))["seq"] == 1
        await frames.aclose()  # nothing watches the run any more: it stops following
        fake.runs["r1"].log.append(final("r1", 2))
        async with asyncio.timeout(WAIT_S):
            assert await run.text() == "a"  # straight after: a new follow, from seq 1
    assert [after for _, after, _ in subscribes(fake, "r1")] == [0, 1]


async def test_two_run_objects_of_one_run_on_one_client_both_get_every_frame(
    fake: FakeHatchway,
) -> None:
    run_log = words_log("r1", 2)
    fake.add_run("r1", run_log)
    async with client_for(fake) as client:
        first, second = client.attach("r1", "token-r1"), client.attach("r1", "token-r1")
        async with asyncio.timeout(WAIT_S):
            texts = await asyncio.gather(first.text(), second.text())
    assert texts == ["w1 w2 ", "w1 w2 "]
    assert first.history == second.history == run_log
    assert len(fake.sockets) == 1


async def test_the_server_is_told_unsubscribe_when_the_last_run_object_leaves(
    fake: FakeHatchway,
) -> None:
    fake.add_run("r1", [chunk("r1", 1, "a")])  # a run that goes on
    async with client_for(fake) as client:
        first, second = client.attach("r1", "token-r1"), client.attach("r1", "token-r1")
        first_frames, second_frames = first.frames(), second.frames()
        async with asyncio.timeout(WAIT_S):
            assert (await anext(first_frames))["seq"] == 1
            assert (await anext(second_frames))["seq"] == 1
            await first_frames.aclose()  # the other Run still follows r1
            await fake.send(0, chunk("r1", 2, "b"))
            assert (await anext(second_frames))["seq"] == 2
            await second_frames.aclose()  # the last one leaves: unsubscribe
        await fake.until(lambda: fake.sockets[0].closed)  # after the unsubscribe, in order
    assert len(fake.messages("unsubscribe", "r1")) == 1
    assert seqs(first.history) == [1]
    assert seqs(second.history) == [1, 2]


async def test_following_through_a_closed_client_raises_closed(fake: FakeHatchway) -> None:
    fake.add_run("r1", words_log("r1", 2))
    client = client_for(fake)
    run = client.attach("r1", "token-r1")
    await client.close()
    for follows in (run.text, run.result, lambda: follow(run)):
        with pytest.raises(HatchwayError) as raised:
            async with asyncio.timeout(WAIT_S):
                await follows()
        assert raised.value.code == "closed"
    assert fake.connect_tokens == []
