"""The delivery guarantees of docs (DESIGN.md, "Guarantees") under injected faults,
on a local stack of its own with two relay processes: real signals, the
emulators' fault hooks, real WebSocket clients. Every test ends in the same
checker (tests/e2e/faults.py: check_delivery)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import boto3
import pytest
import pytest_asyncio

from hatchway import metrics as m
from hatchway_local.aws_proxy import DYNAMODB_WRITES, AwsProxy
from hatchway_local.demo.workflows import ANNA_KARENINA
from hatchway_local.stack import LocalStack
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Api, Client, text_of, warm_up
from tests.e2e.faults import (
    FAST_STREAM,
    FAULT_RELAY_ENV,
    SLOW_STREAM,
    assert_single_writer_at_a_time,
    check_delivery,
    frames_until,
    log_items,
    next_relay_id,
    run_meta,
    sequenced,
    table,
    text_around_gap,
    wait_for_owner,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

FINAL_WAIT_S = 90  # a bound, not a measure: a fault test that hangs fails here


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    logs = tmp_path_factory.mktemp("fault-stack-logs")
    async with LocalStack(
        REPO_ROOT / "template.yaml",
        http_port=0,
        relays=2,
        relay_env=FAULT_RELAY_ENV,
        log_dir=logs,
    ) as running:
        await warm_up(running)
        yield running


@pytest.fixture
def api(stack: LocalStack) -> Api:
    assert stack.gateway is not None
    return Api(stack.gateway.http_url)


async def watch(
    api: Api, workflow: str = "demo-stream", input_: Any = None
) -> tuple[dict[str, Any], Client]:
    run = await api.start(workflow, input_ if input_ is not None else SLOW_STREAM)
    client = await Client.open(run["websocketUrl"], run["token"])
    await client.subscribe(run)
    return run, client


async def until_final(client: Client, run_id: str) -> None:
    await asyncio.wait_for(client.until_final(run_id), FINAL_WAIT_S)


def connection_ids(stack: LocalStack) -> set[str]:
    assert stack.gateway is not None
    return set(stack.gateway.connections)


async def open_tracked(stack: LocalStack, run: dict[str, Any]) -> tuple[Client, str]:
    """A subscribed client and its API Gateway connection id."""
    before = connection_ids(stack)
    client = await Client.open(run["websocketUrl"], run["token"])
    (connection_id,) = connection_ids(stack) - before
    await client.subscribe(run)
    while not [f for f in client.frames if f.get("type") == "subscribed"]:
        await client.next_frame()
    return client, connection_id


# -- 1. reconnect, late subscriber, after the end ------------------------------------


async def test_a_client_that_reconnects_with_after_continues_exactly_where_it_stopped(
    api: Api,
) -> None:
    run, first = await watch(api)
    await asyncio.wait_for(frames_until(first, run["runId"], 12), FINAL_WAIT_S)
    first.socket.transport.abort()  # mid-stream, without a closing handshake
    last = max(int(f["seq"]) for f in sequenced(first.frames, run["runId"]))

    second = await Client.open(run["websocketUrl"], run["token"])
    try:
        await second.subscribe(run, after=last)
        await until_final(second, run["runId"])
    finally:
        await second.close()

    # The first connection's frames, then the second's, read as one client would.
    sequence = check_delivery(first.frames + second.frames, run["runId"])
    assert min(int(f["seq"]) for f in sequenced(second.frames, run["runId"])) == last + 1
    assert text_of(sequence) == ANNA_KARENINA
    assert sequence[-1]["status"] == "COMPLETED"


async def test_late_and_after_the_end_subscribers_get_everything_from_after(api: Api) -> None:
    run, early = await watch(api, input_=FAST_STREAM)
    try:
        await until_final(early, run["runId"])
    finally:
        await early.close()
    whole = check_delivery(early.frames, run["runId"])
    final_seq = int(whole[-1]["seq"])

    for after in (0, 1, final_seq // 2, final_seq - 1):
        late = await Client.open(run["websocketUrl"], run["token"])
        try:
            await late.subscribe(run, after=after)
            await until_final(late, run["runId"])
        finally:
            await late.close()
        replay = check_delivery(late.frames, run["runId"], after=after, duplicates_allowed=False)
        assert replay == whole[after:]


# -- 2. SIGKILL: takeover within the lease, a gap where chunks were lost -------------


async def test_the_owner_killed_mid_stream_is_taken_over_with_a_gap(
    api: Api, stack: LocalStack
) -> None:
    run, client = await watch(api)
    run_id = run["runId"]
    try:
        owner = await wait_for_owner(stack, run_id)
        await asyncio.wait_for(frames_until(client, run_id, 8), FINAL_WAIT_S)
        killed_at = time.monotonic()
        await stack.stop_relay(owner, signal.SIGKILL)
        stack.start_relay(next_relay_id())  # keep two relays for the next tests
        await until_final(client, run_id)
    finally:
        await client.close()

    sequence = check_delivery(client.frames, run_id, gaps=1)
    before, after = text_around_gap(sequence)
    assert before
    assert after
    assert sequence[-1]["status"] == "COMPLETED"
    writers = assert_single_writer_at_a_time(stack, run_id)
    assert writers[0] == owner
    assert len(writers) == 2
    meta = await asyncio.to_thread(run_meta, stack, run_id)
    assert int(meta["lastSeq"]) == sequence[-1]["seq"]
    gap = next(f for f in sequence if f["type"] == "gap")
    print(  # noqa: T201 - a figure for the closing notes, not an assertion
        f"\nSIGKILL takeover: gap at seq {gap['seq']}, lost "
        f"{len(ANNA_KARENINA) - len(before) - len(after)} characters, "
        f"run ended {time.monotonic() - killed_at:.1f} s after the kill"
    )


async def test_a_relay_killed_between_fan_out_and_log_never_reuses_a_seq(
    api: Api, stack: LocalStack
) -> None:
    """Frames go to subscribers before they are logged. The holder here logs only
    its final status (a commit window of ten minutes), so every chunk a client got
    was unlogged when the relay was killed. The successor starts after the seqs the
    dead relay had reserved, with a gap that names them: the client keeps what it
    saw, no seq ever carries two different frames, and the log (what a late
    subscriber replays) says the same with its gap."""
    assert stack.aws is not None
    lazy = next_relay_id()
    for relay_id in list(stack.relay_processes):  # only the lazy relay takes the run
        await stack.stop_relay(relay_id)
    async with AwsProxy(stack.aws.endpoint_url) as proxy:  # to see it polling: it is up
        stack.start_relay(
            lazy, env={"RELAY_LOG_COMMIT_MS": "600000", "AWS_ENDPOINT_URL": proxy.url}
        )
        await proxy.wait_for("ReceiveMessage")
        run, client = await watch(api)
        run_id = run["runId"]
        try:
            assert await wait_for_owner(stack, run_id) == lazy
            await asyncio.wait_for(frames_until(client, run_id, 12), FINAL_WAIT_S)
            seen_live = max(int(f["seq"]) for f in sequenced(client.frames, run_id))
            logged = await asyncio.to_thread(log_items, stack, run_id)
            await stack.stop_relay(lazy, signal.SIGKILL)
            for _ in range(2):
                stack.start_relay(next_relay_id())
            await until_final(client, run_id)
        finally:
            await client.close()

    assert not logged, f"chunks were logged before the kill: {logged}"  # the fault happened
    # Two gaps: the skipped seqs, then the chunks streamed while no relay was subscribed
    # (the successor says RUNNING again in between: the log never had it).
    sequence = check_delivery(client.frames, run_id, gaps=2)
    gap = next(f for f in sequence if f["type"] == "gap")
    assert gap["skipped"][0] == 1
    assert gap["skipped"][1] >= seen_live  # every seq the client saw live is skipped
    assert text_of(sequence).startswith(ANNA_KARENINA[:55])  # what it saw live it keeps
    assert ANNA_KARENINA.endswith(text_of([f for f in sequence if f["seq"] > gap["seq"]]))

    late = await Client.open(run["websocketUrl"], run["token"])
    try:
        await late.subscribe(run)
        await until_final(late, run_id)
    finally:
        await late.close()
    replay = check_delivery(late.frames, run_id, gaps=2, duplicates_allowed=False)
    seen = {int(f["seq"]): f for f in sequence}
    for frame in replay:  # the same seq is the same frame, live or replayed
        assert seen.get(int(frame["seq"]), frame) == frame
    assert replay[0]["type"] == "gap"  # the log starts at the gap: nothing was logged before
    assert replay == [f for f in sequence if int(f["seq"]) >= int(gap["seq"])]


# -- 3. SIGTERM: handover with no gap -------------------------------------------------


async def test_a_relay_stopped_with_sigterm_hands_its_run_over_without_a_gap(
    api: Api, stack: LocalStack
) -> None:
    run, client = await watch(api)
    run_id = run["runId"]
    try:
        owner = await wait_for_owner(stack, run_id)
        await asyncio.wait_for(frames_until(client, run_id, 8), FINAL_WAIT_S)
        successor = next_relay_id()
        stack.start_relay(successor)  # two others: whichever takes it, no gap
        stopping = time.monotonic()
        exit_code = await stack.stop_relay(owner, signal.SIGTERM, timeout_s=110)
        stopped_s = time.monotonic() - stopping
        await until_final(client, run_id)
    finally:
        await client.close()

    assert exit_code == 0  # it stopped by itself, inside ECS's 120 s: not killed
    sequence = check_delivery(client.frames, run_id, duplicates_allowed=False)
    assert text_of(sequence) == ANNA_KARENINA  # every chunk once, in order
    assert sequence[-1]["status"] == "COMPLETED"
    writers = assert_single_writer_at_a_time(stack, run_id)
    assert writers[0] == owner
    assert len(writers) == 2
    print(f"\nSIGTERM handover: the relay stopped in {stopped_s:.1f} s")  # noqa: T201


class NodeClient:
    """tests/e2e/node_client.mjs: the JS client on Node (with ``ws``) starting a run and
    printing each frame it yields as a JSON line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, api: Api, workflow: str, input_: dict[str, Any]) -> NodeClient:
        client_dir = REPO_ROOT / "clients" / "js"
        if not (client_dir / "dist" / "index.js").is_file():
            pytest.fail("the JS client is not built: run make js (make test does)")
        process = await asyncio.create_subprocess_exec(
            "node",
            str(REPO_ROOT / "tests" / "e2e" / "node_client.mjs"),
            str(client_dir),
            api.base_url,
            workflow,
            json.dumps(input_),
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def until(self, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read lines until one satisfies ``done`` (the client's end is a failure)."""
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), FINAL_WAIT_S)
            assert raw, f"the Node client ended early: {self.lines[-3:]}"
            line = json.loads(raw)
            self.lines.append(line)
            assert "failed" not in line, line
            if done(line):
                return line

    def frames(self) -> list[dict[str, Any]]:
        return [line["frame"] for line in self.lines if "frame" in line]

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


async def test_the_js_client_on_node_streams_exactly_through_a_sigterm_handover(
    api: Api, stack: LocalStack
) -> None:
    node = await NodeClient.start(api, "demo-stream", SLOW_STREAM)
    try:
        run_id = (await node.until(lambda line: "started" in line))["started"]
        owner = await wait_for_owner(stack, run_id)
        await node.until(lambda _line: sum(f["type"] == "chunk" for f in node.frames()) >= 8)
        stack.start_relay(next_relay_id())  # the successor
        exit_code = await stack.stop_relay(owner, signal.SIGTERM, timeout_s=110)
        done = await node.until(lambda line: "done" in line)
        assert await asyncio.wait_for(node.process.wait(), FINAL_WAIT_S) == 0
    finally:
        await node.close()

    assert exit_code == 0
    frames = node.frames()
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))  # once each, in order
    assert not [f for f in frames if f["type"] == "gap"]  # a handover loses nothing
    assert done["text"] == ANNA_KARENINA
    assert frames[-1]["status"] == "COMPLETED"
    assert len(assert_single_writer_at_a_time(stack, run_id)) == 2  # it did change hands


def relay_log(stack: LocalStack, relay_id: str) -> list[dict[str, Any]]:
    """A relay's output, each JSON line (logs and EMF metrics) parsed."""
    assert stack.log_dir is not None
    lines = (stack.log_dir / f"{relay_id}.log").read_text(errors="replace").splitlines()
    parsed = []
    for line in lines:
        with contextlib.suppress(ValueError):
            parsed.append(json.loads(line))
    return [entry for entry in parsed if isinstance(entry, dict)]


def emitted_total(entries: list[dict[str, Any]], name: str) -> float:
    """A metric's sum over EMF lines (a value is a number, or a list of them)."""
    total = 0.0
    for entry in entries:
        value = entry.get(name, 0)
        total += sum(value) if isinstance(value, list) else value
    return total


async def test_a_runs_finished_line_and_the_relays_metrics_count_what_the_client_saw(
    api: Api, stack: LocalStack
) -> None:
    """What operators read (docs/operations.md): the "run finished" line's chunks and
    messages are what the client got; at the relay's stop its EMF metrics carry the
    names the alarms and scaling use, with this run in them."""
    run, client = await watch(api, input_=FAST_STREAM)
    run_id = run["runId"]
    try:
        owner = await wait_for_owner(stack, run_id)
        await until_final(client, run_id)
        messages = 0
        for raw in client.messages:
            frames = raw["frames"] if raw.get("type") == "batch" else [raw]
            messages += any(f.get("runId") == run_id and "seq" in f for f in frames)
    finally:
        await client.close()
    chunks = sum(1 for f in sequenced(client.frames, run_id) if f["type"] == "chunk")

    async def finished_line() -> dict[str, Any]:
        while True:
            for entry in relay_log(stack, owner):
                if entry.get("message") == "run finished" and entry.get("run_id") == run_id:
                    return entry
            await asyncio.sleep(0.1)

    line = await asyncio.wait_for(finished_line(), FINAL_WAIT_S)
    assert line["chunks"] == chunks > 0
    assert line["messages"] == messages  # the subscribe function sent none of these
    assert line["log_writes"] >= 1
    assert line["usd_per_chunk"] > 0

    stack.start_relay(next_relay_id())  # keep two relays for the next tests
    assert await stack.stop_relay(owner, signal.SIGTERM, timeout_s=110) == 0
    emitted = [e for e in relay_log(stack, owner) if "_aws" in e]
    assert emitted, "no EMF at the relay's stop"
    names = {
        metric["Name"]
        for entry in emitted
        for directive in entry["_aws"]["CloudWatchMetrics"]
        for metric in directive["Metrics"]
    }
    assert {m.RUNS_FINISHED, m.POSTS, m.FRAMES_LOGGED, m.DELIVERY_LAG_MS} <= names
    assert all(e["service"] == "relay" for e in emitted)
    assert emitted_total(emitted, m.RUNS_FINISHED) >= 1
    assert emitted_total(emitted, m.POSTS) >= messages


# -- 4. the Hatchet subscription breaks ----------------------------------------------


def take_hatchet_subscription_down(stack: LocalStack, run_id: str, seconds: float) -> int:
    """Break the run's open subscriptions and refuse new ones for ``seconds``; how many broke."""
    assert stack.hatchet is not None
    stack.hatchet.engine.refuse_subscriptions(seconds)
    return stack.hatchet.engine.break_subscriptions(run_id)


async def test_a_broken_hatchet_subscription_is_resumed_with_a_gap_for_what_was_missed(
    api: Api, stack: LocalStack
) -> None:
    assert stack.hatchet is not None
    run, client = await watch(api)
    run_id = run["runId"]
    try:
        await asyncio.wait_for(frames_until(client, run_id, 8), FINAL_WAIT_S)
        # Refused for 1.5 s (about ten chunks at one per 150 ms), then broken.
        assert take_hatchet_subscription_down(stack, run_id, 1.5) >= 1
        await until_final(client, run_id)
    finally:
        stack.hatchet.engine.clear_faults()
        await client.close()

    sequence = check_delivery(client.frames, run_id, gaps=1)
    text_around_gap(sequence)
    assert sequence[-1]["status"] == "COMPLETED"


async def test_a_run_that_ended_while_the_subscription_was_down_still_ends(
    api: Api, stack: LocalStack
) -> None:
    assert stack.hatchet is not None
    run, client = await watch(api)
    run_id = run["runId"]
    try:
        await asyncio.wait_for(frames_until(client, run_id, 4), FINAL_WAIT_S)
        # Down for longer than the rest of the run (about 10 s).
        take_hatchet_subscription_down(stack, run_id, 20)
        await until_final(client, run_id)
    finally:
        stack.hatchet.engine.clear_faults()
        await client.close()

    sequence = check_delivery(client.frames, run_id, gaps=1)
    _before, after = text_around_gap(sequence)
    assert after == ""  # the run ended while nobody was subscribed
    assert sequence[-1]["status"] == "COMPLETED"  # asked of Hatchet, never lost
    assert sequence[-1]["output"] == {
        "demo-stream": {"chunks": len(ANNA_KARENINA) // 5 + 1, "characters": len(ANNA_KARENINA)}
    }


async def test_an_engine_restart_is_survived(api: Api, stack: LocalStack) -> None:
    assert stack.hatchet is not None
    run, client = await watch(api)
    run_id = run["runId"]
    try:
        await asyncio.wait_for(frames_until(client, run_id, 6), FINAL_WAIT_S)
        await stack.hatchet.restart(down_for_s=1.0)
        await until_final(client, run_id)
    finally:
        await client.close()

    # Whether chunks are lost depends on the worker: the SDK retries what it streams
    # while the engine is down. Either all of them came and no gap, or a gap marks
    # exactly where they were lost.
    by_seq = {int(f["seq"]): f for f in sequenced(client.frames, run_id)}  # re-sent: same seq
    lost = text_of([by_seq[seq] for seq in sorted(by_seq)]) != ANNA_KARENINA
    sequence = check_delivery(client.frames, run_id, gaps=1 if lost else 0)
    if lost:
        text_around_gap(sequence)
    else:
        assert text_of(sequence) == ANNA_KARENINA
    assert sequence[-1]["status"] == "COMPLETED"


# -- 5. 429 from the management API --------------------------------------------------


async def test_throttling_backs_off_and_delivers_everything_in_order(
    api: Api, stack: LocalStack
) -> None:
    assert stack.gateway is not None
    runs = [await api.start("demo-stream", SLOW_STREAM) for _ in range(2)]
    throttled, throttled_id = await open_tracked(stack, runs[0])
    other, _ = await open_tracked(stack, runs[1])
    try:
        await asyncio.wait_for(frames_until(other, runs[1]["runId"], 1), FINAL_WAIT_S)
        stack.gateway.throttle(for_seconds=60, connection_id=throttled_id)
        before_throttle = len(sequenced(throttled.frames, runs[0]["runId"]))
        # The other connection's run streams to its end while this one gets only 429s.
        await until_final(other, runs[1]["runId"])
        assert len(sequenced(throttled.frames, runs[0]["runId"])) == before_throttle
        stack.gateway.throttle(for_seconds=0, connection_id=throttled_id)
        await until_final(throttled, runs[0]["runId"])
        # And everyone at once, for a while.
        third = await api.start("demo-stream", FAST_STREAM)
        clients = [await open_tracked(stack, third) for _ in range(3)]
        stack.gateway.throttle(for_seconds=2.0)
        for client, _ in clients:
            await until_final(client, third["runId"])
    finally:
        stack.gateway.throttle()
        await asyncio.gather(throttled.close(), other.close())

    for client, run in ((throttled, runs[0]), (other, runs[1])):
        assert text_of(check_delivery(client.frames, run["runId"])) == ANNA_KARENINA
    for client, _ in clients:
        assert text_of(check_delivery(client.frames, third["runId"])) == ANNA_KARENINA
        await client.close()


# -- 6. gone and slow connections ----------------------------------------------------


async def test_a_gone_connection_is_removed_alone_and_a_slow_one_delays_nobody(
    api: Api, stack: LocalStack
) -> None:
    assert stack.gateway is not None
    run = await api.start("demo-stream", SLOW_STREAM)
    run_id = run["runId"]
    gone, gone_id = await open_tracked(stack, run)
    slow, slow_id = await open_tracked(stack, run)
    healthy, healthy_id = await open_tracked(stack, run)
    try:
        await asyncio.wait_for(frames_until(healthy, run_id, 2), FINAL_WAIT_S)
        # Gone without $disconnect: only the relay's 410 can tell.
        assert await stack.gateway.disconnect(gone_id, 1006, "lost", notify=False)
        assert stack.gateway.set_latency(slow_id, 6.0)
        await until_final(healthy, run_id)
        slow_had = len(sequenced(slow.frames, run_id))
        await until_final(slow, run_id)
        # Before the clients close (their $disconnect would clean up too).
        gone_items = await asyncio.to_thread(items_of_connection, stack, gone_id)
        others = await asyncio.to_thread(items_of_connection, stack, slow_id, healthy_id)
    finally:
        await asyncio.gather(slow.close(), healthy.close(), gone.close())

    assert text_of(check_delivery(healthy.frames, run_id)) == ANNA_KARENINA
    assert text_of(check_delivery(slow.frames, run_id)) == ANNA_KARENINA
    # When the healthy client had it all, the slow one was still seconds behind.
    assert slow_had < len(sequenced(healthy.frames, run_id))
    assert gone_items == set()  # the 410 removed the connection and its subscription
    assert others == {  # and nothing else
        (f"RUN#{run_id}", f"SUB#{slow_id}"),
        (f"RUN#{run_id}", f"SUB#{healthy_id}"),
        (f"CONN#{slow_id}", "META"),
        (f"CONN#{healthy_id}", "META"),
    }


def items_of_connection(stack: LocalStack, *connection_ids: str) -> set[tuple[str, str]]:
    """The table's items about these connections: their META and subscriptions."""
    found = set()
    for item in table(stack).scan(ConsistentRead=True)["Items"]:
        for connection_id in connection_ids:
            if item["pk"] == f"CONN#{connection_id}" or item["sk"] == f"SUB#{connection_id}":
                found.add((item["pk"], item["sk"]))
    return found


# -- 7. SQS delivers a run twice -----------------------------------------------------


async def test_a_run_delivered_again_by_sqs_keeps_a_single_writer(
    api: Api, stack: LocalStack
) -> None:
    assert stack.aws is not None
    run, client = await watch(api)
    run_id = run["runId"]
    sqs = boto3.client("sqs", **stack.aws.client_kwargs())
    queue_url = stack.aws.queue_url("RunQueue")
    try:
        owner = await wait_for_owner(stack, run_id)
        for _ in range(3):  # the other relay (and the owner) receive it again
            await asyncio.to_thread(
                sqs.send_message, QueueUrl=queue_url, MessageBody=json.dumps({"runId": run_id})
            )
            await asyncio.sleep(1.0)
        await until_final(client, run_id)
    finally:
        await client.close()

    sequence = check_delivery(client.frames, run_id, duplicates_allowed=False)
    assert text_of(sequence) == ANNA_KARENINA
    assert assert_single_writer_at_a_time(stack, run_id) == [owner]


# -- 8. a frame log that fails writes ------------------------------------------------


async def test_a_store_that_fails_writes_loses_nothing(api: Api, stack: LocalStack) -> None:
    """One relay whose DynamoDB fails 1 in 5 writes (some of them after they were
    applied, as a timeout after the commit), then refuses the run's final status in
    META ten times in a row: more than botocore's own retries. Every frame and the final status
    still arrive, with no gap, and the log holds each seq once."""
    assert stack.aws is not None
    async with AwsProxy(stack.aws.endpoint_url) as proxy:
        for relay_id in list(stack.relay_processes):  # only the faulty relay takes runs
            await stack.stop_relay(relay_id)
        proxy.fail_every(5, DYNAMODB_WRITES, landed_every=3)
        proxy.fail_burst(10, "UpdateItem", when=rb"COMPLETED")
        faulty = next_relay_id()
        stack.start_relay(faulty, env={"AWS_ENDPOINT_URL": proxy.url})
        try:
            await proxy.wait_for("ReceiveMessage")  # it polls the queue: it is up
            run, client = await watch(api)
            try:
                await until_final(client, run["runId"])
            finally:
                await client.close()
        finally:
            await stack.stop_relay(faulty)
            for _ in range(2):
                stack.start_relay(next_relay_id())

    run_id = run["runId"]
    sequence = check_delivery(client.frames, run_id, gaps=0)
    assert text_of(sequence) == ANNA_KARENINA
    assert sequence[-1]["status"] == "COMPLETED"
    assert assert_single_writer_at_a_time(stack, run_id) == [faulty]
    assert run_meta(stack, run_id)["status"] == "COMPLETED"
    # The faults did happen: writes failed, some after landing, and the final burst.
    assert proxy.failures["PutItem"] >= 1  # log items
    assert proxy.failures["UpdateItem"] >= 10
    assert sum(proxy.landed.values()) >= 1
    assert proxy.burst_left() == 0
