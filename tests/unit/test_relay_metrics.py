"""The relay's metrics as it prints them: a run followed through the relay's own
code (Relay, RunFollower, ConnectionSender over fakes for the table, the queue,
Hatchet and the management API), its EMF lines read back from stdout, and its
"run finished" line's costs. The template's alarms are checked against what this
emits (``test_observability_template.py``)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hatchway import metrics as m
from hatchway.connections import ThrottledError
from hatchway.payloads import Payloads
from hatchway.relay import service
from hatchway.relay.service import Relay
from hatchway.run_queue import QueuedRun
from hatchway.settings import RelaySettings
from hatchway.store import RunRecord, Subscription
from tests.unit.test_run_follower import FakeHatchet, FakeStore, event


class Store(FakeStore):
    def subscriptions_of_run(self, run_id: str) -> list[Subscription]:
        return [Subscription(run_id, "c1", 0, 0, 0)]

    def renew_lease(self, _run_id: str, _owner: str, _lease_s: float) -> bool:
        return True


class Queue:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, receipt: str) -> None:
        self.deleted.append(receipt)

    def extend_many(self, _receipts: list[str], _visibility_s: int) -> list[str]:
        return []


class Connections:
    """Throttles the first post (a 429, retried), then takes every one."""

    def __init__(self) -> None:
        self.posted: list[Any] = []
        self.throttled = False

    async def post(self, connection_id: str, data: str) -> None:
        if not self.throttled:
            self.throttled = True
            raise ThrottledError(connection_id)
        self.posted.append(json.loads(data))

    async def close(self, _connection_id: str) -> None:
        pass


def emf_lines(out: str) -> list[dict[str, Any]]:
    documents = []
    for line in out.splitlines():
        if line.startswith("{"):
            document = json.loads(line)
            if "_aws" in document:
                documents.append(document)
    return documents


def emitted(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each metric printed: its namespace, dimension sets, unit and values."""
    found: dict[str, dict[str, Any]] = {}
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for definition in directive["Metrics"]:
                value = document[definition["Name"]]
                entry = found.setdefault(
                    definition["Name"],
                    {
                        "namespace": directive["Namespace"],
                        "dimensions": directive["Dimensions"],
                        "unit": definition["Unit"],
                        "values": [],
                        "dimension_values": {d: document[d] for d in directive["Dimensions"][0]},
                    },
                )
                entry["values"] += value if isinstance(value, list) else [value]
    return found


async def follow_one_run() -> tuple[Relay, Connections, Queue]:
    """One run through the relay: taken, streamed to a subscriber (one 429 on the
    way), logged, finished; then a heartbeat and a flush."""
    store = Store()
    chunks = [event("STREAM", payload=f"chunk {i}", index=i) for i in range(5)]
    hatchet = FakeHatchet(
        [[event("STARTED"), *chunks, event("COMPLETED", "WORKFLOW_RUN", '{"ok": true}')]]
    )
    connections, queue = Connections(), Queue()
    settings = RelaySettings.model_construct(
        run_queue_url="q",
        table_name="t",
        management_api_url="http://x",
        hatchet=None,
        relay_id="me",  # FakeStore's lease holder
        coalesce_ms=0.0,
        log_commit_ms=1.0,
    )
    relay = Relay(
        settings,
        store=store,  # type: ignore[arg-type]
        queue=queue,  # type: ignore[arg-type]
        connections=connections,
        hatchet=hatchet,  # type: ignore[arg-type]
        payloads=Payloads("bucket", client=object()),
    )
    relay._executor = ThreadPoolExecutor(4)
    run = RunRecord("r1", "wf", "QUEUED", 0, 0, 0, relay.owner, 0, None)
    relay._start_following(run, QueuedRun("r1", "receipt-1", 1))
    await asyncio.wait_for(relay.runs["r1"].task, 10)
    await relay._beat()  # the ActiveRuns gauge
    return relay, connections, queue


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the relay logs with its logger (the lines' fields)."""
    lines: list[dict[str, Any]] = []

    def info(message: str, **fields: Any) -> None:
        lines.append({"message": message, **fields})

    monkeypatch.setattr(service.logger, "info", info)
    return lines


async def test_the_relay_prints_its_metrics_as_emf_in_one_namespace_and_dimension(
    capsys: pytest.CaptureFixture[str], logged: list[dict[str, Any]]
) -> None:
    relay, connections, queue = await follow_one_run()
    assert queue.deleted == ["receipt-1"]
    capsys.readouterr()
    relay.metrics.flush()
    found = emitted(emf_lines(capsys.readouterr().out))

    for name in (*m.COUNTERS, m.DELIVERY_LAG_MS, m.ACTIVE_RUNS):
        assert found[name]["namespace"] == m.NAMESPACE
        assert found[name]["dimensions"] == [[m.DIMENSION]]
        assert found[name]["dimension_values"] == {m.DIMENSION: m.SERVICE_RELAY}
    assert found[m.RUNS_TAKEN]["values"] == [1]
    assert found[m.RUNS_FINISHED]["values"] == [1]
    assert found[m.POSTS_429]["values"] == [1]
    assert found[m.POSTS]["values"] == [len(connections.posted)]
    assert found[m.FRAMES_LOGGED]["values"] == [7]  # RUNNING, 5 chunks, COMPLETED
    assert found[m.LOG_WRITES]["values"][0] >= 1
    assert found[m.BYTES_LOGGED]["unit"] == "Bytes"
    assert found[m.ACTIVE_RUNS]["values"] == [0]
    lags = found[m.DELIVERY_LAG_MS]["values"]
    assert lags
    assert all(0 <= lag < 10_000 for lag in lags)
    assert found[m.DELIVERY_LAG_MS]["unit"] == "Milliseconds"

    finished = next(line for line in logged if line["message"] == "run finished")
    assert finished["run_id"] == "r1"
    assert finished["chunks"] == 5
    assert finished["messages"] == len(connections.posted)
    assert finished["log_writes"] == found[m.LOG_WRITES]["values"][0]
    assert finished["bytes"] == found[m.BYTES_LOGGED]["values"][0]
    expected = (
        finished["message_units"] * m.USD_PER_MESSAGE + finished["write_units"] * m.USD_PER_WRU
    ) / 5
    assert finished["usd_per_chunk"] == pytest.approx(expected)
    assert finished["usd_per_chunk"] > 0

    relay.metrics.flush()  # counters start again from zero, and still print
    again = emitted(emf_lines(capsys.readouterr().out))
    assert again[m.RUNS_TAKEN]["values"] == [0]
    assert m.DELIVERY_LAG_MS not in again


def test_delivery_lag_keeps_a_bounded_uniform_sample() -> None:
    metrics = m.RelayMetrics()
    for ms in range(10 * m.MAX_LAG_SAMPLES):
        metrics.lag(float(ms))
    assert len(metrics.lags_ms) == m.MAX_LAG_SAMPLES
    assert max(metrics.lags_ms) > m.MAX_LAG_SAMPLES  # later values replace earlier ones


def test_the_dlq_consumer_counts_runs_dead_lettered_as_emf(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hatchway import dead_letters  # noqa: PLC0415 - the function's own module
    from tests.unit.test_dead_letters import RUN, Table, consumer, event, record  # noqa: PLC0415

    dead = consumer(Table(record(status="FAILED", last_seq=3)), None)
    dead_letters.metrics.clear_metrics()  # what other tests' batches counted
    capsys.readouterr()
    assert dead_letters.handle_batch(dead, event(RUN)) == {"batchItemFailures": []}
    dead_letters.metrics.flush_metrics()
    found = emitted(emf_lines(capsys.readouterr().out))
    assert found[m.RUNS_DEAD_LETTERED]["values"] == [1]
    assert found[m.RUNS_DEAD_LETTERED]["namespace"] == m.NAMESPACE
    assert found[m.RUNS_DEAD_LETTERED]["dimension_values"] == {m.DIMENSION: m.SERVICE_DLQ_CONSUMER}


def test_a_stop_s_handover_seconds_print_once(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = m.RelayMetrics()
    metrics.handover_seconds = 2.5  # what Relay.run sets at its stop
    capsys.readouterr()
    metrics.flush()
    found = emitted(emf_lines(capsys.readouterr().out))
    assert found[m.HANDOVER_SECONDS]["values"] == [2.5]
    assert found[m.HANDOVER_SECONDS]["unit"] == "Seconds"
    metrics.flush()
    assert m.HANDOVER_SECONDS not in emitted(emf_lines(capsys.readouterr().out))
