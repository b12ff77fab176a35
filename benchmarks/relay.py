"""Hatchway against the two ways people stream Hatchet runs without it, in one run,
on one machine: the same demo worker, the same Hatchet emulator, the same clients.

- **hatchway**: the local stack. Runs are started with ``POST /runs``; each client
  opens a WebSocket with the run token and subscribes (docs/protocol.md). One relay
  process, its AWS traffic through an ``AwsProxy`` that meters DynamoDB.
- **proxy**: the Hatchet docs' backend-proxy pattern, as an aiohttp app in its own
  process (FastAPI is installed, but no ASGI server to run it: uvicorn is no
  dependency of ours). Each client's request opens its own
  ``hatchet.runs.subscribe_to_stream`` (the real hatchet-sdk) and sends each chunk
  to that client as one WebSocket message (a WebSocket, not the docs'
  ``StreamingResponse``, so every system's clients are the same kind and their
  messages count alike).
- **raw**: a ``websockets`` server in its own process: ONE ``subscribe_to_stream`` per
  run, each chunk ``websockets.broadcast`` to the run's clients. The floor.

Runs are of ``demo-ticks``: each chunk is ``{"n", "sentAt", "pad"}``, stamped with the
wall clock as the worker puts it, so a client's receive time minus ``sentAt`` is its
latency (one machine, one clock). ``pad`` is random base64 (incompressible):
BENCH_RELAY_PAD bytes (200: a progress message or a few tokens) in every scenario but
the token stream, whose pad is one token's size (TOKEN_PAD, 8 bytes: each chunk is
then about 50 bytes of JSON), so its WRU and messages per chunk are those of an LLM's
token stream (the issue's target: at most 0.1 WRU a chunk at 50 chunks/s and 0.25
WebSocket messages a chunk a client). The proxy's and raw server's runs are started
on the Hatchet emulator directly (the relay never sees them).

Scenarios: fan-out (one run, 1 to 1,000 clients), concurrent runs (1 to 500, one
client each, 2 chunks/s), a token stream (50 chunks/s, 8-byte pad), a late subscriber
(joins 1 s after the stream began) and the issue's latency baselines (1 and 100
clients at 40 chunks/s). Fan-out rows are capped at BENCH_RELAY_MAX_DELIVERIES
deliveries a second (4,000: 1,000 clients get 4 chunks/s) so every system can be
asked on two cores.

Scenarios do not bleed into each other: after each Hatchway scenario (and again
before the next one) the bench waits, at most BENCH_RELAY_SETTLE seconds (120), until
every run it started has a final ``status`` in its META item and the relay's run
queue is empty (SQS ApproximateNumberOfMessages and ...NotVisible both 0); the wait
is in the row's meters, and a row that started on an unsettled relay says so.

Per scenario and system: delivered chunks/s, latency p50/p99, lost, duplicated and
reordered chunks (per client, by ``n``), upstream Hatchet subscriptions per run
(counted by the emulator), WebSocket messages per chunk per client, the server's
CPU ms per delivered frame (utime+stime from /proc) and RSS; for Hatchway also CPU
per post (posts counted by the API Gateway emulator), DynamoDB requests, WRU and RRU
per chunk (the relay's only; the Lambda handlers' writes go to moto directly and are
not in them) and $ per million chunks to one client at list prices. CPU is given
twice: over the whole scenario (setup, idle and settling included) and over the
streaming window only (first chunk received to the last, from /proc samples every
0.1 s; /proc counts in 10 ms ticks, so a short window's figure is +-20 ms over its
frames). A second table splits the relay's DynamoDB requests (a second) and units by
operation, as the AwsProxy counted them. Then ratios against proxy and raw, and
moto's own write cost as a table grows (it makes every Hatchway figure on this
machine slower than on AWS).

Clients are asyncio websockets in this process, which also hosts the Hatchet and
API Gateway emulators (the stack's layout). Setup is a pipeline: each run is started
(TRIGGERING at a time) and its clients connect and subscribe as soon as it exists
(CONNECTING at a time), while later runs are still being started. Every run's
``start_delay_seconds`` aims at one instant for the whole scenario, so its runs
stream together: the setup the scenarios before predicted, moved later once this
scenario's own first units (runs started, clients ready) show a slower rate, with a
margin; never below twice the slowest run's own setup so far, never so long that
the task outlives hatchet-sdk's default execution timeout (60 s, then TIMED_OUT):
at most 60 - 5 - the stream's length. When setup takes longer than that (500 runs
here), a run's clients are still ready before its stream, but the runs stream
staggered: the streaming-window table says how many streamed at once at the peak.
A client not ready (``subscribed`` for Hatchway, the
handshake for proxy and raw) when its run's delay ran out counts as not ready: the
row's setup/delay column says ``!N`` (a live-only system then loses the first chunks;
Hatchway replays them, late). Prints figures; asserts nothing.

    make bench-relay                          (over 11 minutes here: see the commit)
    BENCH_RELAY_QUICK=1 make bench-relay      (a tiny version of each, about 1.5 minutes)

Knobs: BENCH_RELAY_SECONDS (stream length per scenario), BENCH_RELAY_FANOUT,
BENCH_RELAY_RUNS (comma lists), BENCH_RELAY_MAX_DELIVERIES, BENCH_RELAY_PAD (bytes
of padding per chunk but the token stream's), BENCH_RELAY_SYSTEMS (e.g.
"hatchway,raw"), BENCH_RELAY_ONLY (scenarios whose name holds one of these
comma-separated words), BENCH_RELAY_DRAIN (seconds a client waits past its run's
stream end), BENCH_RELAY_SETTLE, BENCH_RELAY_MOTO_SIZES; BENCH_LOG_DIR keeps the
processes' logs. To measure another relay than the working tree's (say
the last commit's while the working tree's is mid-change), put its ``layers/core``
first on PYTHONPATH: every process of the stack inherits it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from hatchway_local.aws_proxy import DYNAMODB_WRITES as AWS_WRITES
from hatchway_local.aws_proxy import AwsProxy
from hatchway_local.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("BENCH_RELAY_QUICK") == "1"


def _numbers(name: str, default: str) -> list[int]:
    return [int(part) for part in os.environ.get(name, default).split(",") if part.strip()]


SECONDS = float(os.environ.get("BENCH_RELAY_SECONDS", "1.5" if QUICK else "6"))
FANOUT = _numbers("BENCH_RELAY_FANOUT", "1,10" if QUICK else "1,10,100,1000")
RUNS = _numbers("BENCH_RELAY_RUNS", "1,5" if QUICK else "1,10,100,500")
BASELINE_CLIENTS = 10 if QUICK else 100  # the "100 clients at 40 chunks/s"
MAX_DELIVERIES = float(os.environ.get("BENCH_RELAY_MAX_DELIVERIES", "4000"))
PAD = int(os.environ.get("BENCH_RELAY_PAD", "200"))  # a progress message or a few tokens
TOKEN_PAD = 8  # the token stream's: one token's size
SYSTEMS = os.environ.get("BENCH_RELAY_SYSTEMS", "hatchway,proxy,raw").split(",")
ONLY = [word for word in os.environ.get("BENCH_RELAY_ONLY", "").split(",") if word.strip()]
DRAIN_S = float(os.environ.get("BENCH_RELAY_DRAIN", "30"))
SETTLE_S = float(os.environ.get("BENCH_RELAY_SETTLE", "120"))
MOTO_SIZES = _numbers("BENCH_RELAY_MOTO_SIZES", "100,500" if QUICK else "100,2000,5000")
MOTO_WRITES = 10 if QUICK else 25  # timed writes of each kind per size
CONNECTING = 50  # clients opening at once (the gateway runs $connect 4 at a time)
TRIGGERING = 8  # runs being started at once
# demo-ticks declares no timeout: hatchet-sdk's default execution timeout (60 s) ends
# it, TIMED_OUT, that long after it started; its start delay and stream fit in it.
TASK_TIMEOUT_S = 60.0
TIMEOUT_MARGIN_S = 5.0
DELAY_MARGIN = 1.5  # start delays cover the setup predicted times this
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})

# List prices, us-east-1, as published on 2026-12 (aws.amazon.com/dynamodb/pricing/
# on-demand and aws.amazon.com/api-gateway/pricing WebSocket APIs).
USD_PER_WRU = 0.625 / 1e6  # DynamoDB on-demand, per write request unit
USD_PER_RRU = 0.125 / 1e6  # per read request unit
USD_PER_MESSAGE = 1.00 / 1e6  # API Gateway WebSocket, per message (each 32 KB counts one)
USD_PER_CONNECTION_MINUTE = 0.25 / 1e6
MESSAGE_UNIT = 32 * 1024

DYNAMODB_OPERATIONS = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
        "DescribeTable",
    }
)


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- processes: CPU and memory from /proc --------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def idle_cpu_ms_per_s(pid: int, seconds: float = 3.0) -> float:
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)  # a measurement window, not a wait for readiness
    return (cpu_seconds(pid) - before) * 1000 / seconds


# -- scenarios and what clients see ---------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    runs: int
    clients: int  # per run
    rate: float  # chunks a second per run
    late_s: float | None = None  # the last client of each run joins this late
    pad: int = PAD  # bytes of random base64 in each chunk

    @property
    def count(self) -> int:
        return max(3, round(self.rate * SECONDS))


@dataclass
class Client:
    expected: int
    run_id: str = ""
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    reordered: int = 0
    last_n: int = -1
    latencies: list[float] = field(default_factory=list)
    messages: int = 0
    message_units: int = 0  # 32 KB units, as API Gateway bills them
    frames: int = 0
    opened: float = 0.0  # monotonic
    closed: float = 0.0
    last_receive_ms: float = 0.0  # epoch ms
    first_sent_ms: float = math.inf
    gaps: int = 0
    unconnected: bool = False  # never got connected and subscribed by the deadline
    not_ready: bool = False  # ready only after its run's start delay ran out
    chunk_frames: int = 0  # chunk frames received, repeats included
    first_chunk_at: float = math.inf  # monotonic
    last_chunk_at: float = -math.inf

    def message(self, raw: str | bytes) -> None:
        self.messages += 1
        self.message_units += max(1, math.ceil(len(raw) / MESSAGE_UNIT))

    def chunk(self, data: str, received_ms: float) -> None:
        self.frames += 1
        self.chunk_frames += 1
        now = time.monotonic()
        self.first_chunk_at = min(self.first_chunk_at, now)
        self.last_chunk_at = now
        tick = json.loads(data)
        n = int(tick["n"])
        if n in self.seen:
            self.duplicates += 1
            return
        if n < self.last_n:
            self.reordered += 1
        self.last_n = max(self.last_n, n)
        self.seen.add(n)
        self.latencies.append(received_ms - tick["sentAt"])
        self.first_sent_ms = min(self.first_sent_ms, tick["sentAt"])
        self.last_receive_ms = received_ms

    @property
    def lost(self) -> int:
        return self.expected - len(self.seen)


@dataclass
class Run:
    run_id: str
    started: float  # monotonic, when it was triggered
    token: str = ""
    websocket_url: str = ""
    delay: float = 0.0  # its start_delay_seconds


class System(Protocol):
    name: str

    def pid(self) -> int: ...

    async def start_run(self, ticks: dict[str, Any]) -> Run: ...

    async def open(self, run: Run) -> tuple[ClientConnection, str | bytes | None]:
        """A connected client, ready, and the first message it got while getting ready."""

    async def follow(
        self, socket: ClientConnection, first: str | bytes | None, client: Client
    ) -> None: ...


async def _connect(url: str) -> ClientConnection:
    # No compression on any system: API Gateway negotiates none.
    return await connect(url, open_timeout=120, max_size=None, compression=None)


async def _follow_plain(socket: ClientConnection, client: Client) -> None:
    """proxy and raw: every message is one chunk; the server closes at the run's end."""
    with contextlib.suppress(ConnectionClosed):
        async for raw in socket:
            received = time.time() * 1000
            client.message(raw)
            client.chunk(raw if isinstance(raw, str) else raw.decode(), received)


class Hatchway:
    name = "hatchway"

    def __init__(self, stack: LocalStack, relay_pid: int, http: aiohttp.ClientSession) -> None:
        assert stack.gateway is not None  # noqa: S101 - started
        self.stack = stack
        self.gateway = stack.gateway
        self.relay_pid = relay_pid
        self.http = http

    def pid(self) -> int:
        return self.relay_pid

    async def start_run(self, ticks: dict[str, Any]) -> Run:
        started = time.monotonic()
        async with self.http.post(
            f"{self.gateway.http_url}/runs", json={"workflow": "demo-ticks", "input": ticks}
        ) as answer:
            body: dict[str, Any] = await answer.json()
            if answer.status != 201:
                raise RuntimeError(f"POST /runs: {answer.status} {body}")
        return Run(body["runId"], started, body["token"], body["websocketUrl"])

    async def open(self, run: Run) -> tuple[ClientConnection, str | bytes | None]:
        socket = await _connect(f"{run.websocket_url}?token={run.token}")
        await socket.send(
            json.dumps({"action": "subscribe", "runId": run.run_id, "token": run.token})
        )
        # Ready once the relay has it: the subscription is acknowledged.
        while True:
            raw = await socket.recv()
            message = json.loads(raw)
            if message.get("type") in ("subscribed", "batch", "chunk", "error"):
                return socket, raw

    async def follow(
        self, socket: ClientConnection, first: str | bytes | None, client: Client
    ) -> None:
        def take(raw: str | bytes) -> bool:
            received = time.time() * 1000
            client.message(raw)
            message = json.loads(raw)
            frames = message["frames"] if message.get("type") == "batch" else [message]
            for frame in frames:
                kind = frame.get("type")
                if kind == "chunk":
                    client.chunk(frame["data"], received)
                elif kind == "gap":
                    client.gaps += 1
                elif kind == "status":
                    client.frames += 1
                    if frame.get("final"):
                        return True
            return False

        if first is not None and take(first):
            return
        with contextlib.suppress(ConnectionClosed):
            async for raw in socket:
                if take(raw):
                    return


class Served:
    """proxy or raw: a server process of this file's own (``serve <kind>``)."""

    def __init__(self, name: str, stack: LocalStack, log_dir: Path) -> None:
        assert stack.hatchet is not None  # noqa: S101 - the emulator, not a real Hatchet
        self.name = name
        self.engine = stack.hatchet.engine
        self.settings = stack.hatchet_settings
        self.log_dir = log_dir
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    def pid(self) -> int:
        assert self.process is not None  # noqa: S101
        return self.process.pid

    async def start(self) -> None:
        log = (self.log_dir / f"{self.name}-server.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "serve",
            self.name,
            env={**os.environ, **self.settings, "PYTHONUNBUFFERED": "1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        log.close()
        assert self.process.stdout is not None  # noqa: S101
        # Ready when it says where it listens (it binds first).
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if not line.startswith(b"listening "):
            raise RuntimeError(f"the {self.name} server did not start; see its log")
        self.url = f"ws://127.0.0.1:{int(line.split()[1])}"

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 15)

    async def start_run(self, ticks: dict[str, Any]) -> Run:
        started = time.monotonic()
        run = await self.engine.trigger("demo-ticks", ticks)
        return Run(run.run_id, started)

    async def open(self, run: Run) -> tuple[ClientConnection, str | bytes | None]:
        return await _connect(f"{self.url}/runs/{run.run_id}"), None

    async def follow(
        self, socket: ClientConnection, first: str | bytes | None, client: Client
    ) -> None:
        del first  # the server sends nothing before the chunks
        await _follow_plain(socket, client)


# -- the servers (run as `python benchmarks/relay.py serve proxy|raw`) ---------------------


async def serve_proxy() -> None:
    """The docs' proxy: every request its own subscribe_to_stream, chunks passed on."""
    from aiohttp import web  # noqa: PLC0415 - only the server process needs these
    from hatchet_sdk import Hatchet  # noqa: PLC0415

    hatchet = Hatchet()

    async def stream(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(compress=False)
        await socket.prepare(request)
        async for chunk in hatchet.runs.subscribe_to_stream(request.match_info["run_id"]):
            await socket.send_str(chunk)
        await socket.close()
        return socket

    app = web.Application()
    app.router.add_get("/runs/{run_id}", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    say(f"listening {runner.addresses[0][1]}")
    await asyncio.Event().wait()


async def serve_raw() -> None:
    """One subscribe_to_stream per run, broadcast to all of its clients."""
    from hatchet_sdk import Hatchet  # noqa: PLC0415 - only the server process needs these
    from websockets.asyncio.server import ServerConnection, broadcast, serve  # noqa: PLC0415

    hatchet = Hatchet()
    clients: dict[str, set[ServerConnection]] = {}
    pumps: dict[str, asyncio.Task[None]] = {}

    async def pump(run_id: str) -> None:
        async for chunk in hatchet.runs.subscribe_to_stream(run_id):
            broadcast(clients[run_id], chunk)
        for socket in list(clients.pop(run_id, ())):
            await socket.close()
        pumps.pop(run_id, None)

    async def handler(socket: ServerConnection) -> None:
        assert socket.request is not None  # noqa: S101 - handshake done
        run_id = socket.request.path.rpartition("/")[2]
        clients.setdefault(run_id, set()).add(socket)
        if run_id not in pumps:
            pumps[run_id] = asyncio.create_task(pump(run_id))
        await socket.wait_closed()
        clients.get(run_id, set()).discard(socket)

    async with serve(handler, "127.0.0.1", 0, compression=None, backlog=2048) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        say(f"listening {port}")
        await asyncio.Event().wait()


# -- one scenario on one system -------------------------------------------------------------


@dataclass(frozen=True)
class Meters:
    """Hatchway's counters: the gateway's @connections POSTs and the relay's DynamoDB."""

    posts: int = 0  # answered 200
    refused: int = 0  # answered otherwise (429 to a client that does not read, 410 gone)
    dynamodb: int = 0  # requests
    wru: float = 0.0
    rru: float = 0.0
    operations: dict[str, int] = field(default_factory=dict)  # DynamoDB requests, per operation
    units: dict[str, float] = field(default_factory=dict)  # WRU (writes) or RRU (reads), per op

    def __sub__(self, other: Meters) -> Meters:
        return Meters(
            self.posts - other.posts,
            self.refused - other.refused,
            self.dynamodb - other.dynamodb,
            self.wru - other.wru,
            self.rru - other.rru,
            _minus(self.operations, other.operations),
            _minus(self.units, other.units),
        )


def _minus[N: (int, float)](after: dict[str, N], before: dict[str, N]) -> dict[str, N]:
    return {op: value - before.get(op, 0) for op, value in after.items() if value != before.get(op)}


@dataclass(frozen=True)
class Settled:
    """How the wait for a quiet relay ended: its runs final, its queue empty."""

    seconds: float
    runs_left: int = 0  # runs whose META has no final status yet
    queued: int = 0  # ApproximateNumberOfMessages
    in_flight: int = 0  # ApproximateNumberOfMessagesNotVisible

    @property
    def ok(self) -> bool:
        return not (self.runs_left or self.queued or self.in_flight)

    def __str__(self) -> str:
        if self.ok:
            return f"{self.seconds:.1f} s"
        return (
            f"NOT after {self.seconds:.0f} s: {self.runs_left} runs not final,"
            f" queue {self.queued} + {self.in_flight} in flight"
        )


@dataclass
class Samples:
    """A server's CPU seconds and the gateway's posts, sampled while a scenario runs."""

    times: list[float] = field(default_factory=list)  # monotonic
    cpu: list[float] = field(default_factory=list)
    posts: list[float] = field(default_factory=list)

    def add(self, cpu: float, posts: int) -> None:
        self.times.append(time.monotonic())
        self.cpu.append(cpu)
        self.posts.append(posts)

    def at(self, values: list[float], when: float) -> float:
        """Linear between the samples around ``when``; the nearest end outside them."""
        index = bisect.bisect_left(self.times, when)
        if index == 0:
            return values[0]
        if index == len(self.times):
            return values[-1]
        t0, t1 = self.times[index - 1], self.times[index]
        share = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
        return values[index - 1] + share * (values[index] - values[index - 1])


@dataclass
class Schedule:
    """When a scenario's runs begin to stream: one instant for all of them (``target``),
    first the setup the scenarios before predicted, moved later once this scenario's
    own first units show a slower rate; a run's delay never drops below twice the
    slowest run's own setup so far (trigger to its last client ready)."""

    began: float
    units: int  # runs + their clients
    target: float  # monotonic
    longest: float  # the longest delay a run may get
    done: int = 0  # units set up: runs started, clients ready
    slowest_run_s: float = 0.0

    def delay(self) -> float:
        now = time.monotonic()
        enough = min(self.units, max(16, self.units // 20))  # the first few
        if self.done >= enough:
            projected = (now - self.began) / self.done * self.units
            self.target = max(self.target, self.began + 1.5 + DELAY_MARGIN * projected)
        floor = max(1.5, 2 * self.slowest_run_s)
        return round(min(self.longest, max(floor, self.target - now)), 2)

    def ready(self, run: Run, at: float) -> None:
        self.done += 1
        self.slowest_run_s = max(self.slowest_run_s, at - run.started)


@dataclass
class Result:
    scenario: Scenario
    system: str
    clients: list[Client]
    upstream_per_run: float
    setup_s: float
    delays: list[float]
    cpu_s: float
    rss_mb: float
    wall_s: float
    window_s: float = math.nan  # first chunk received to the last
    window_cpu_s: float = math.nan
    window_posts: float = math.nan
    meters: Meters = field(default_factory=Meters)
    table_items: int = 0
    before: Settled | None = None  # the wait for the runs before this scenario's
    settled: Settled | None = None  # the wait for this scenario's own runs
    gateway_busy: bool = False  # handler calls still in flight 60 s after the clients ended

    @property
    def delivered(self) -> int:
        return sum(len(c.seen) for c in self.clients)

    @property
    def latencies(self) -> list[float]:
        return [value for c in self.clients for value in c.latencies]

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.clients)

    @property
    def window_frames(self) -> int:
        return sum(c.chunk_frames for c in self.clients)

    @property
    def chunks_produced(self) -> int:
        return self.scenario.runs * self.scenario.count

    @property
    def peak_streaming(self) -> int:
        """The most runs streaming at once (a run: its first chunk received to its last)."""
        spans: dict[str, list[float]] = {}
        for c in self.clients:
            if c.chunk_frames:
                span = spans.setdefault(c.run_id, [c.first_chunk_at, c.last_chunk_at])
                span[0], span[1] = min(span[0], c.first_chunk_at), max(span[1], c.last_chunk_at)
        edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
        return max(itertools.accumulate(step for _, step in edges), default=0)

    @property
    def not_ready(self) -> int:
        return sum(c.not_ready or c.unconnected for c in self.clients)


@dataclass
class Bench:
    stack: LocalStack
    aws_proxy: AwsProxy
    systems: dict[str, System]
    # Seconds of setup per run and per client, learnt as scenarios grow, so a run's
    # start delay covers its clients' connecting (a live-only system loses the rest).
    per_unit_s: dict[str, float] = field(
        default_factory=lambda: {"hatchway": 0.03, "proxy": 0.006, "raw": 0.006}
    )
    results: list[Result] = field(default_factory=list)
    pending: set[str] = field(default_factory=set)  # Hatchway runs not seen final yet
    settled_last: bool = True  # the last wait ended with a quiet relay
    _dynamodb: Any = None
    _sqs: Any = None

    def meters(self) -> Meters:
        assert self.stack.gateway is not None  # noqa: S101 - started
        posts = self.stack.gateway.posts
        operations = {op: self.aws_proxy.counts[op] for op in DYNAMODB_OPERATIONS}
        return Meters(
            posts=posts[200],
            refused=sum(posts.values()) - posts[200],
            dynamodb=sum(operations.values()),
            wru=self.aws_proxy.capacity.wru,
            rru=self.aws_proxy.capacity.rru,
            operations={op: n for op, n in operations.items() if n},
            units=dict(self.aws_proxy.capacity.per_operation),
        )

    # -- a quiet relay between scenarios --------------------------------------------------

    def _quiet_now(self) -> tuple[int, int, set[str]]:
        """The run queue's depth (visible, in flight) and which pending runs are final.
        Straight to moto, not through the relay's AwsProxy: not in any row's meters."""
        import boto3  # noqa: PLC0415 - only the moto parts need it

        aws = self.stack.aws
        assert aws is not None  # noqa: S101 - started
        if self._sqs is None:
            self._sqs = boto3.client("sqs", **aws.client_kwargs())
            self._dynamodb = boto3.client("dynamodb", **aws.client_kwargs())
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=aws.queue_url("RunQueue"),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        queued = int(attributes["ApproximateNumberOfMessages"])
        in_flight = int(attributes["ApproximateNumberOfMessagesNotVisible"])
        final: set[str] = set()
        if not queued and not in_flight:  # META is read only once the queue is drained
            ids = sorted(self.pending)
            for start in range(0, len(ids), 100):
                keys = [
                    {"pk": {"S": f"RUN#{i}"}, "sk": {"S": "META"}} for i in ids[start : start + 100]
                ]
                request: dict[str, Any] = {
                    aws.table_name: {
                        "Keys": keys,
                        "ConsistentRead": True,
                        "ProjectionExpression": "pk, #s",
                        "ExpressionAttributeNames": {"#s": "status"},
                    }
                }
                while request:
                    answer = self._dynamodb.batch_get_item(RequestItems=request)
                    for item in answer["Responses"].get(aws.table_name, []):
                        if item.get("status", {}).get("S") in FINAL_STATUSES:
                            final.add(item["pk"]["S"].removeprefix("RUN#"))
                    request = answer.get("UnprocessedKeys") or {}
        return queued, in_flight, final

    async def settle(self, timeout_s: float = SETTLE_S, *, give_up: bool = False) -> Settled:
        """Until every pending run is final in META and the run queue is empty, at most
        ``timeout_s``; with ``give_up``, runs still pending then are forgotten (the row
        says so), else the next wait waits for them again."""
        began = time.monotonic()
        while True:
            queued, in_flight, final = await asyncio.to_thread(self._quiet_now)
            self.pending -= final
            waited = time.monotonic() - began
            if not (self.pending or queued or in_flight) or waited >= timeout_s:
                settled = Settled(waited, len(self.pending), queued, in_flight)
                self.settled_last = settled.ok
                if give_up:
                    self.pending.clear()
                return settled
            await asyncio.sleep(1.0)  # a polling period

    # -- one scenario ------------------------------------------------------------------------

    async def measure(self, scenario: Scenario, system: System) -> Result:
        assert self.stack.hatchet is not None  # noqa: S101 - started
        assert self.stack.gateway is not None  # noqa: S101
        hatchway = system.name == "hatchway"
        # Normally at once: the scenario before waited for its own runs already.
        before = None
        if hatchway:
            before = await self.settle(5.0 if self.settled_last else SETTLE_S, give_up=True)
        units = scenario.runs + scenario.runs * scenario.clients
        meters_before = self.meters()
        pid = system.pid()
        cpu_before = cpu_seconds(pid)
        began = time.monotonic()
        schedule = Schedule(
            began,
            units,
            target=began + 1.5 + DELAY_MARGIN * self.per_unit_s[system.name] * units,
            longest=TASK_TIMEOUT_S - TIMEOUT_MARGIN_S - scenario.count / scenario.rate,
        )
        samples = Samples()
        rss = [rss_mb(pid)]

        async def sample() -> None:
            for tick in itertools.count():
                samples.add(
                    cpu_seconds(pid), self.stack.gateway.posts[200] if self.stack.gateway else 0
                )
                if tick % 5 == 0:
                    rss.append(rss_mb(pid))
                await asyncio.sleep(0.1)  # a sampling period

        sampler = asyncio.create_task(sample())
        try:
            runs, clients, ready = await self.set_up_and_follow(scenario, system, schedule)
        finally:
            sampler.cancel()
        samples.add(cpu_seconds(pid), self.stack.gateway.posts[200])
        settled = None
        gateway_busy = False
        if hatchway:
            try:
                await self.stack.gateway.idle(timeout_s=60)  # the $disconnect calls are done
            except TimeoutError:  # said in the row, not fatal: the figures so far stand
                gateway_busy = True
            self.pending.update(r.run_id for r in runs)
            settled = await self.settle()
        setup = (max(ready) - began) if ready else 0.0
        if len(ready) >= 20:  # a small scenario's setup is fixed costs, not per client
            self.per_unit_s[system.name] = setup / units
        opened = self.stack.hatchet.engine.subscriptions_opened
        result = Result(
            scenario,
            system.name,
            clients,
            upstream_per_run=sum(opened[r.run_id] for r in runs) / len(runs),
            setup_s=setup,
            delays=[r.delay for r in runs],
            cpu_s=cpu_seconds(pid) - cpu_before,
            rss_mb=max(rss),
            wall_s=time.monotonic() - began,
            before=before,
            settled=settled,
            gateway_busy=gateway_busy,
        )
        streamed = [c for c in clients if c.chunk_frames]
        if streamed:
            first = min(c.first_chunk_at for c in streamed)
            last = max(c.last_chunk_at for c in streamed)
            result.window_s = last - first
            result.window_cpu_s = samples.at(samples.cpu, last) - samples.at(samples.cpu, first)
            result.window_posts = samples.at(samples.posts, last) - samples.at(samples.posts, first)
        if hatchway:
            result.meters = self.meters() - meters_before
            result.table_items = await asyncio.to_thread(self.table_items)
        return result

    async def set_up_and_follow(
        self, scenario: Scenario, system: System, schedule: Schedule
    ) -> tuple[list[Run], list[Client], list[float]]:
        """Start every run and, as each exists, connect its clients, then follow them all
        to their run's end (bounded); the runs, the clients, when each was ready."""
        triggering = asyncio.Semaphore(TRIGGERING)
        connecting = asyncio.Semaphore(CONNECTING)
        length = scenario.count / scenario.rate
        runs: list[Run] = []
        ready: list[float] = []

        async def client(run: Run, *, late: bool) -> Client:
            record = Client(expected=scenario.count, run_id=run.run_id)
            # The run's stream ends by its own start + delay + length.
            deadline = run.started + run.delay + length + DRAIN_S
            if late and scenario.late_s is not None:
                # Joins late_s after the run's stream began (its start delay is known).
                began = run.started + run.delay + scenario.late_s
                await asyncio.sleep(max(0.0, began - time.monotonic()))
            try:
                # Bounded: a client whose connect or subscribe is never answered (a
                # handler timed out) gives up at the deadline and has lost everything.
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())), connecting:
                    socket, first_message = await system.open(run)
            except (TimeoutError, OSError, InvalidHandshake, ConnectionClosed):
                record.unconnected = True
                return record
            record.opened = time.monotonic()
            if not late:
                ready.append(record.opened)
                schedule.ready(run, record.opened)
                record.not_ready = record.opened - run.started > run.delay
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                        await system.follow(socket, first_message, record)
            finally:
                record.closed = time.monotonic()
                await socket.close()
            return record

        async def one_run() -> list[Client]:
            async with triggering:
                delay = schedule.delay()
                ticks = {
                    "count": scenario.count,
                    "rate_per_second": scenario.rate,
                    "pad_bytes": scenario.pad,
                    "start_delay_seconds": delay,
                }
                run = await system.start_run(ticks)
            run.delay = delay
            runs.append(run)
            schedule.done += 1
            late = scenario.late_s is not None
            return await asyncio.gather(
                *(
                    client(run, late=late and index == scenario.clients - 1)
                    for index in range(scenario.clients)
                )
            )

        per_run = await asyncio.gather(*(one_run() for _ in range(scenario.runs)))
        return runs, [c for clients in per_run for c in clients], ready

    def table_items(self) -> int:
        assert self.stack.aws is not None  # noqa: S101
        return scan_count(_boto(self.stack.aws.endpoint_url), self.stack.aws.table_name)


def _boto(endpoint: str) -> Any:  # noqa: ANN401 - boto3 carries no types here
    import boto3  # noqa: PLC0415 - only the moto parts need it

    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's
    )


def scan_count(client: Any, table: str) -> int:  # noqa: ANN401
    total, start = 0, None
    while True:
        page = client.scan(
            TableName=table, Select="COUNT", **({"ExclusiveStartKey": start} if start else {})
        )
        total += int(page["Count"])
        start = page.get("LastEvaluatedKey")
        if not start:
            return total


# -- moto's own write cost ------------------------------------------------------------------


def moto_write_costs(endpoint: str) -> list[tuple[int, dict[str, float]]]:
    """ms per PutItem, UpdateItem and TransactWriteItems (one Put) at each table size,
    on a table of its own in the same moto."""
    client = _boto(endpoint)
    table = "bench-relay-moto-writes"
    client.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    pad = "x" * PAD
    have = 0
    rows: list[tuple[int, dict[str, float]]] = []
    for size in sorted(MOTO_SIZES):
        while have < size:  # fill with batches of 25, as fast as moto takes them
            batch = [
                {
                    "PutRequest": {
                        "Item": {
                            "pk": {"S": f"run#{n % 50}"},
                            "sk": {"S": f"f#{n:08d}"},
                            "pad": {"S": pad},
                        }
                    }
                }
                for n in range(have, min(size, have + 25))
            ]
            client.batch_write_item(RequestItems={table: batch})
            have += len(batch)
        timings: dict[str, float] = {}
        kinds: dict[str, Callable[[int, int], object]] = {
            "PutItem": lambda size, n: client.put_item(
                TableName=table,
                Item={"pk": {"S": "timed"}, "sk": {"S": f"p#{size}#{n}"}, "pad": {"S": pad}},
            ),
            "UpdateItem": lambda _size, n: client.update_item(
                TableName=table,
                Key={"pk": {"S": "timed"}, "sk": {"S": "meta"}},
                UpdateExpression="SET lastSeq = :n",
                ExpressionAttributeValues={":n": {"N": str(n)}},
            ),
            "TransactWriteItems": lambda size, n: client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {
                                "pk": {"S": "timed"},
                                "sk": {"S": f"t#{size}#{n}"},
                                "pad": {"S": pad},
                            },
                        }
                    }
                ]
            ),
        }
        for kind, write in kinds.items():
            began = time.perf_counter()
            for n in range(MOTO_WRITES):
                write(size, n)
            timings[kind] = (time.perf_counter() - began) * 1000 / MOTO_WRITES
        have += 2 * MOTO_WRITES + 1
        rows.append((have, timings))
    client.delete_table(TableName=table)
    return rows


# -- the report -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else math.nan


def _f(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def usd_per_million(result: Result) -> float:
    """Per million chunks delivered to one client: the relay's DynamoDB units, the
    messages (32 KB units) and the connection minutes. Not in it: Lambda, SQS, the
    relay's compute, the handlers' own writes."""
    minutes = sum(c.closed - c.opened for c in result.clients) / 60
    units = sum(c.message_units for c in result.clients)
    usd = (
        result.meters.wru * USD_PER_WRU
        + result.meters.rru * USD_PER_RRU
        + units * USD_PER_MESSAGE
        + minutes * USD_PER_CONNECTION_MINUTE
    )
    return usd / max(1, result.delivered) * 1e6


def pct(result: Result | None, q: float) -> float:
    return percentile(result.latencies, q) if result is not None else math.nan


def cpu_per_frame_ms(result: Result | None) -> float:
    return result.cpu_s * 1000 / max(1, result.frames) if result is not None else math.nan


def stream_cpu_per_frame_ms(result: Result | None) -> float:
    """Over the streaming window only: its CPU over the chunk frames received in it."""
    if result is None or not result.window_frames:
        return math.nan
    return result.window_cpu_s * 1000 / result.window_frames


def stream_cpu_per_post_ms(result: Result) -> float:
    if not result.window_posts or math.isnan(result.window_posts):
        return math.nan
    return result.window_cpu_s * 1000 / result.window_posts


def delays_text(result: Result) -> str:
    low, high = min(result.delays), max(result.delays)
    return f"{low:.1f}" if high - low < 0.05 else f"{low:.1f}-{high:.1f}"


def scenario_text(result: Result) -> str:
    """The scenario's name, and a warning when it started on a relay still busy."""
    name = result.scenario.name
    if result.before is not None and not result.before.ok:
        name += f" (!runs before: {result.before})"
    if result.gateway_busy:
        name += " (!gateway: handler calls in flight 60 s after)"
    if result.settled is not None and not result.settled.ok:
        name += f" (!own runs: {result.settled})"
    return name


def chunks_per_second(result: Result) -> float:
    """Deliveries a second while streaming: per client, its chunks over the time from
    the first one's put to the last one's arrival (plus one chunk's interval), summed.
    A client that lags gets fewer a second; runs that start apart do not dilute it."""
    interval = 1 / result.scenario.rate
    return sum(
        len(c.seen) / ((c.last_receive_ms - c.first_sent_ms) / 1000 + interval)
        for c in result.clients
        if c.seen
    )


def row(result: Result) -> str:
    latencies = result.latencies
    produced = result.chunks_produced
    messages = sum(c.messages for c in result.clients)
    hatchway = result.system == "hatchway"
    late_setup = f" !{result.not_ready}" if result.not_ready else ""
    gaps = sum(c.gaps for c in result.clients)
    unconnected = sum(c.unconnected for c in result.clients)
    cells = [
        scenario_text(result),
        result.system,
        _f(chunks_per_second(result), 0),
        _f(statistics.median(latencies) if latencies else math.nan),
        _f(percentile(latencies, 0.99)),
        str(sum(c.lost for c in result.clients))
        + (f" ({gaps} gaps)" if gaps else "")
        + (f" ({unconnected} never connected)" if unconnected else ""),
        str(sum(c.duplicates for c in result.clients)),
        str(sum(c.reordered for c in result.clients)),
        _f(result.upstream_per_run, 2),
        _f(messages / max(1, result.delivered), 2),
        f"{result.setup_s:.1f}/{delays_text(result)}{late_setup}",
        _f(cpu_per_frame_ms(result), 3),
        _f(result.cpu_s * 1000 / max(1, result.meters.posts), 3) if hatchway else "-",
        _f(stream_cpu_per_frame_ms(result), 3),
        _f(stream_cpu_per_post_ms(result), 3) if hatchway else "-",
        _f(result.rss_mb, 0),
        _f(result.meters.dynamodb / produced, 2) if hatchway else "-",
        _f(result.meters.wru / produced, 2) if hatchway else "-",
        _f(result.meters.rru / produced, 2) if hatchway else "-",
        f"{usd_per_million(result):.2f}" if hatchway and result.delivered else "-",
        str(result.table_items) if hatchway else "-",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| scenario | system | chunks/s | p50 ms | p99 ms | lost | dup | reord | upstream subs/run"
    " | msgs/chunk/client | setup/delay s | CPU ms/frame | CPU ms/post"
    " | stream CPU ms/frame | stream CPU ms/post | RSS MB"
    " | DDB req/chunk | WRU/chunk | RRU/chunk | $/1M chunks | table items |"
)


# The operations' order in the table; any other the relay makes follows them.
OPERATION_ORDER = ("PutItem", "UpdateItem", "Query", "GetItem", "DeleteItem", "BatchWriteItem")


def dynamodb_table(results: list[Result]) -> list[str]:
    """The relay's DynamoDB requests a second (over the scenario's wall time, its
    settling included) and units by operation: WRU for writes, RRU for reads."""
    rows = [r for r in results if r.system == "hatchway"]
    seen = {op for r in rows for op in r.meters.operations}
    operations = [op for op in OPERATION_ORDER if op in seen]
    operations += sorted(seen - set(OPERATION_ORDER))
    lines = [
        "| scenario | wall s | settled in | DDB req/s | WRU/s | "
        + " | ".join(f"{op} req/s | {op} {'WRU' if _writes(op) else 'RRU'}" for op in operations)
        + " |",
        "|" + "---|" * (5 + 2 * len(operations)),
    ]
    for r in rows:
        wall = max(r.wall_s, 1e-9)
        cells = [
            scenario_text(r),
            f"{r.wall_s:.1f}",
            str(r.settled) if r.settled is not None else "-",
            f"{r.meters.dynamodb / wall:.1f}",
            f"{r.meters.wru / wall:.1f}",
        ]
        for op in operations:
            cells.append(f"{r.meters.operations.get(op, 0) / wall:.1f}")
            cells.append(f"{r.meters.units.get(op, 0.0):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _writes(operation: str) -> bool:
    return operation in AWS_WRITES


def window_table(results: list[Result]) -> list[str]:
    lines = [
        "| scenario | system | window s | CPU ms in window | chunk frames | posts"
        " | stream CPU ms/frame | stream CPU ms/post | whole CPU ms/frame | whole CPU s"
        " | peak runs streaming |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        hatchway = r.system == "hatchway"
        lines.append(
            f"| {r.scenario.name} | {r.system} | {_f(r.window_s, 2)}"
            f" | {_f(r.window_cpu_s * 1000, 0)} | {r.window_frames}"
            f" | {_f(r.window_posts, 0) if hatchway else '-'}"
            f" | {_f(stream_cpu_per_frame_ms(r), 3)}"
            f" | {_f(stream_cpu_per_post_ms(r), 3) if hatchway else '-'}"
            f" | {_f(cpu_per_frame_ms(r), 3)} | {r.cpu_s:.2f}"
            f" | {r.peak_streaming}/{r.scenario.runs} |"
        )
    return lines


def _ratio(a: float, b: float) -> str:
    return "-" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}"


def ratios(results: list[Result]) -> list[str]:
    by = {(r.scenario.name, r.system): r for r in results}
    lines = [
        "| scenario | p50 hatchway/proxy | p99 hatchway/proxy | p50 hatchway/raw"
        " | p99 hatchway/raw | CPU/frame hatchway/proxy | CPU/frame hatchway/raw"
        " | stream CPU/frame hatchway/proxy | stream CPU/frame hatchway/raw"
        " | chunks/s hatchway/raw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r.scenario.name for r in results):
        h, p, w = by.get((name, "hatchway")), by.get((name, "proxy")), by.get((name, "raw"))
        if h is None:
            continue
        rate_w = chunks_per_second(w) if w is not None else math.nan
        lines.append(
            f"| {name} | {_ratio(pct(h, 0.5), pct(p, 0.5))} | {_ratio(pct(h, 0.99), pct(p, 0.99))}"
            f" | {_ratio(pct(h, 0.5), pct(w, 0.5))} | {_ratio(pct(h, 0.99), pct(w, 0.99))}"
            f" | {_ratio(cpu_per_frame_ms(h), cpu_per_frame_ms(p))}"
            f" | {_ratio(cpu_per_frame_ms(h), cpu_per_frame_ms(w))}"
            f" | {_ratio(stream_cpu_per_frame_ms(h), stream_cpu_per_frame_ms(p))}"
            f" | {_ratio(stream_cpu_per_frame_ms(h), stream_cpu_per_frame_ms(w))}"
            f" | {_ratio(chunks_per_second(h), rate_w)} |"
        )
    return lines


# -- main -----------------------------------------------------------------------------------


def scenarios() -> list[Scenario]:
    found: list[Scenario] = []
    for clients in FANOUT:
        rate = min(40.0, MAX_DELIVERIES / clients)
        found.append(Scenario(f"fan-out {clients} @{rate:g}/s", 1, clients, rate))
    found.extend(Scenario(f"{runs} runs x1 @2/s", runs, 1, 2.0) for runs in RUNS)
    found.append(Scenario(f"tokens 1 @50/s pad {TOKEN_PAD}", 1, 1, 50.0, pad=TOKEN_PAD))
    found.append(Scenario("late join 1+1 @10/s", 1, 2, 10.0, late_s=1.0))
    # The latency baselines; fan-out rows already at 40/s stand for them.
    for clients in (1, BASELINE_CLIENTS):
        if not any(s.clients == clients and s.rate == 40.0 and s.runs == 1 for s in found):
            found.append(Scenario(f"latency {clients} @40/s", 1, clients, 40.0))
    if ONLY:
        found = [s for s in found if any(word.strip() in s.name for word in ONLY)]
    return found


async def main() -> None:
    began = time.monotonic()
    # SIGTERM (timeout, a CI) unwinds like Ctrl-C: the stack stops its processes.
    main_task = asyncio.current_task()
    assert main_task is not None  # noqa: S101 - run by asyncio.run
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    plan = scenarios()
    slots = max(50, max(s.runs for s in plan) + 20)
    os.environ["HATCHWAY_DEMO_SLOTS"] = str(slots)  # the stack's worker inherits it
    say(
        f"relay bench{' (QUICK)' if QUICK else ''}: {len(plan)} scenarios x {SYSTEMS},"
        f" {SECONDS:g} s of stream each, chunks of {PAD} bytes padding (the token stream's"
        f" {TOKEN_PAD}: a token); worker slots {slots};"
        f" load average {os.getloadavg()[0]:.2f} (2 cores)"
    )
    with tempfile.TemporaryDirectory() as scratch:
        logs = Path(os.environ.get("BENCH_LOG_DIR") or scratch)
        await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
        relay_env = {"RELAY_MAX_RUNS": str(slots + 100)}
        async with LocalStack(
            ROOT / "template.yaml", http_port=0, relays=0, relay_env=relay_env, log_dir=logs
        ) as stack:
            assert stack.aws is not None  # noqa: S101 - started
            async with (
                AwsProxy(stack.aws.endpoint_url, meter_capacity=True) as aws_proxy,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=TRIGGERING)) as http,
            ):
                relay = stack.start_relay("relay-bench", env={"AWS_ENDPOINT_URL": aws_proxy.url})
                await aws_proxy.wait_for("ReceiveMessage")  # the relay is up: it polls its queue
                systems: dict[str, System] = {"hatchway": Hatchway(stack, relay.pid, http)}
                served = [Served(name, stack, logs) for name in ("proxy", "raw") if name in SYSTEMS]
                for server in served:
                    await server.start()
                    systems[server.name] = server
                bench = Bench(stack, aws_proxy, systems)
                try:
                    # Warm every function environment the gateway will run (4 of each).
                    await bench.measure(Scenario("warm-up", 1, 8, 20.0), systems["hatchway"])
                    idle = await idle_cpu_ms_per_s(relay.pid)
                    say(f"relay idle: {idle:.1f} CPU ms/s (in every Hatchway row's CPU)")
                    for scenario in plan:
                        for name in SYSTEMS:
                            result = await bench.measure(scenario, systems[name])
                            bench.results.append(result)
                            say(f"  {row(result)}")
                            if result.settled is not None:
                                say(f"    settled: {result.settled}; DDB: {op_summary(result)}")
                finally:
                    for server in served:
                        await server.close()
                    await stack.stop_relay("relay-bench")  # before its AWS proxy goes
            say()
            say(f"moto's write cost as a table grows ({MOTO_WRITES} writes of each kind per size):")
            moto = await asyncio.to_thread(moto_write_costs, stack.aws.endpoint_url)
    report(bench.results, moto, time.monotonic() - began)


def report(results: list[Result], moto: list[tuple[int, dict[str, float]]], wall: float) -> None:
    say()
    say(f"wall time {wall:.0f} s; load average at the end {os.getloadavg()[0]:.2f} (2 cores)")
    say()
    say(HEADER)
    say("|" + "---|" * (HEADER.count(" | ") + 1))
    for result in results:
        say(row(result))
    say()
    say("Ratios (below 1: Hatchway lower):")
    say()
    for line in ratios(results):
        say(line)
    say()
    say(
        "The relay's DynamoDB by operation (requests a second over the scenario's wall time,"
        " settling included; units as the AwsProxy sized them):"
    )
    say()
    for line in dynamodb_table(results):
        say(line)
    say()
    say(
        "The streaming window (first chunk received to the last): each system's CPU in it"
        " (/proc, 10 ms ticks), against the whole scenario's:"
    )
    say()
    for line in window_table(results):
        say(line)
    say()
    say("| table items | PutItem ms | UpdateItem ms | TransactWriteItems ms |")
    say("|---|---|---|---|")
    for items, timings in moto:
        say(
            f"| {items} | {timings['PutItem']:.1f} | {timings['UpdateItem']:.1f}"
            f" | {timings['TransactWriteItems']:.1f} |"
        )


def op_summary(result: Result) -> str:
    wall = max(result.wall_s, 1e-9)
    return ", ".join(
        f"{op} {n / wall:.1f}/s {result.meters.units.get(op, 0.0):.1f}"
        f" {'WRU' if _writes(op) else 'RRU'}"
        for op, n in sorted(result.meters.operations.items(), key=lambda item: -item[1])
    )


def serve(kind: str) -> None:
    asyncio.run(serve_proxy() if kind == "proxy" else serve_raw())


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        with contextlib.suppress(KeyboardInterrupt):
            serve(sys.argv[2])
    else:
        asyncio.run(main())
