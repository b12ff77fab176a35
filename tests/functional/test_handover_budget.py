"""A handover spends none of the run's delivery budget: the real relay (``Relay``,
``RunQueue``, ``Store``) on moto's SQS and DynamoDB as template.yaml declares them
(RunQueue redrives to RunDeadLetterQueue after 5 receives). One run is handed
over by SIGTERM's path (``Relay.stop``) from relay to relay more times than
``maxReceiveCount``: each successor receives it as a fresh message, it never
reaches the dead-letter queue, and the last relay still ends it.

Hatchet is a stand-in here (the run's events arrive when the test says): what is
under test is the queue and the lease, not the engine."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest

from hatchway.hatchet_adapter import HatchetEvent, RunStatus
from hatchway.payloads import Payloads
from hatchway.relay.service import Relay
from hatchway.run_queue import RunQueue
from hatchway.settings import RelaySettings
from hatchway.store import Store
from hatchway_local.aws import LocalAws, start_local_aws
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.functional

HANDOVERS = 6  # more than the queue's maxReceiveCount (5)


class Hatchet:
    """A run's Hatchet events as the test emits them, to every open subscription."""

    def __init__(self) -> None:
        self.streams: list[asyncio.Queue[HatchetEvent]] = []

    async def events(
        self, _run_id: str, sent: asyncio.Event | None = None
    ) -> AsyncIterator[HatchetEvent]:
        stream: asyncio.Queue[HatchetEvent] = asyncio.Queue()
        self.streams.append(stream)
        if sent is not None:
            sent.set()
        try:
            while True:
                event = await stream.get()
                yield event
                if event.hangup:
                    return
        finally:
            self.streams.remove(stream)

    async def status(self, _run_id: str) -> RunStatus:
        return RunStatus("RUNNING", False, None, None)

    def emit(self, event: HatchetEvent) -> None:
        for stream in self.streams:
            stream.put_nowait(event)


def chunk(index: int) -> HatchetEvent:
    return HatchetEvent("STEP_RUN", "STREAM", "task", f"chunk {index}", False, index, 0)


@pytest.fixture(scope="module")
def aws() -> Iterator[LocalAws]:
    local = start_local_aws(REPO_ROOT / "template.yaml")
    try:
        yield local
    finally:
        local.stop()


def queue_depth(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def assert_ended_once(store: Store, run_id: str) -> None:
    run = store.get_run(run_id)
    assert run is not None
    assert run.status == "COMPLETED"
    frames = store.read_frames(run_id)
    chunks = [f["data"] for f in frames if f["type"] == "chunk"]
    assert chunks == [f"chunk {n}" for n in range(HANDOVERS + 1)]  # each once, in order
    assert not [f for f in frames if f["type"] == "gap"]  # handovers leave no gap
    assert frames[-1]["final"]


async def test_a_run_handed_over_more_often_than_max_receive_count_never_reaches_the_dlq(
    aws: LocalAws,
) -> None:
    sqs = boto3.client("sqs", **aws.client_kwargs())
    store = Store(aws.table_name, resource=boto3.resource("dynamodb", **aws.client_kwargs()))
    queue_url, dlq_url = aws.queue_url("RunQueue"), aws.queue_url("RunDeadLetterQueue")
    hatchet = Hatchet()
    run_id = uuid.uuid4().hex
    store.create_run(run_id, "demo-stream")
    RunQueue(queue_url, client=sqs).enqueue(run_id)

    def new_relay(n: int) -> Relay:
        settings = RelaySettings.model_construct(
            run_queue_url=queue_url,
            table_name=aws.table_name,
            management_api_url="http://127.0.0.1:9",  # no subscriber: nothing is posted
            payload_bucket=aws.bucket_name("PayloadBucket"),
            hatchet=None,
            relay_id=f"relay-{n}",
            queue_wait_seconds=1,
            handover_grace_ms=50.0,
            handover_seconds=20.0,
            health_file=f"/tmp/hatchway-test-heartbeat-{uuid.uuid4().hex}",  # noqa: S108
        )
        return Relay(
            settings,
            store=store,
            queue=RunQueue(queue_url, client=sqs),
            connections=object(),  # type: ignore[arg-type]
            hatchet=hatchet,  # type: ignore[arg-type]
            payloads=Payloads(settings.payload_bucket),
        )

    async def holds(relay: Relay) -> None:
        while run_id not in relay.runs:  # noqa: ASYNC110 - the relay takes it from SQS
            await asyncio.sleep(0.02)

    async def subscribed() -> None:
        while not hatchet.streams:  # noqa: ASYNC110 - the follower opens its stream
            await asyncio.sleep(0.02)

    relays = [new_relay(0)]
    tasks = [asyncio.create_task(relays[0].run())]
    try:
        await asyncio.wait_for(holds(relays[0]), 30)
        await asyncio.wait_for(subscribed(), 30)
        hatchet.emit(chunk(0))
        for n in range(1, HANDOVERS + 1):
            successor = new_relay(n)
            relays.append(successor)
            tasks.append(asyncio.create_task(successor.run()))
            relays[n - 1].stop()  # SIGTERM: the run is offered, its message re-sent
            await asyncio.wait_for(tasks[n - 1], 60)
            await asyncio.wait_for(holds(successor), 30)
            run = store.get_run(run_id)
            assert run is not None
            assert run.lease_owner == successor.owner  # handed over, not released
            message = successor.runs[run_id].message
            assert message.receive_count == 1, f"handover {n} spent a receive"
            assert queue_depth(sqs, dlq_url) == (0, 0)
            hatchet.emit(chunk(n))

        # After six handovers the run is on the main queue (held by the last relay),
        # its message received once, and the dead-letter queue is empty.
        assert queue_depth(sqs, queue_url) == (0, 1)
        last = relays[-1]
        hatchet.emit(HatchetEvent("WORKFLOW_RUN", "COMPLETED", run_id, "{}", True, None, None))
        await asyncio.wait_for(last.runs[run_id].task, 30)

        assert_ended_once(store, run_id)
        assert queue_depth(sqs, queue_url) == (0, 0)  # the finished run's message is deleted
        assert queue_depth(sqs, dlq_url) == (0, 0)
    finally:
        for relay in relays:
            relay.stop()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)
