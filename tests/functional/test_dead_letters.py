"""A run whose message lands in the dead-letter queue is ended honestly: the DLQ
consumer's handler (``functions/dlq_consumer``'s, built from its settings) takes a
real SQS message from moto's RunDeadLetterQueue, asks the Hatchet emulator for the
run's status (a real hatchet-sdk worker ran it to completion), appends a gap and
the final status to the run's log, and posts both to a WebSocket subscriber that
had subscribed while the run's (now dead) relay held it, through the API Gateway
emulator's @connections: the subscriber does not hang."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import pytest_asyncio
from hatchet_sdk import Hatchet
from pydantic import BaseModel, ConfigDict
from websockets.asyncio.client import ClientConnection, connect

from hatchway import dead_letters
from hatchway.dead_letters import GAP_REASON
from hatchway.protocol import chunk_frame, status_frame
from hatchway.store import Store
from hatchway.tokens import RunTokens, secret_key_ring
from hatchway_local.apigw_emulator.server import ApiGatewayEmulator
from hatchway_local.apigw_emulator.template import TemplateReader
from hatchway_local.aws import LocalAws, start_local_aws
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from hatchway_local.stack import LOCAL_PARAMETERS
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.functional

TEMPLATE = REPO_ROOT / "template.yaml"
DEAD_RELAY = "relay-that-died"


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


@dataclass
class Stack:
    aws: LocalAws
    gateway: ApiGatewayEmulator
    env: dict[str, str]
    store: Store


@dataclass
class Context:  # what Powertools' inject_lambda_context reads of a LambdaContext
    function_name: str = "DlqConsumerFunction"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:dlq"
    aws_request_id: str = "request-1"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(emulator: HatchetEmulator) -> AsyncIterator[Stack]:
    aws = await asyncio.to_thread(start_local_aws, TEMPLATE)
    try:
        env = {
            **aws.environment(),
            "TABLE_NAME": aws.table_name,
            "RUN_QUEUE_URL": aws.queue_url("RunQueue"),
            "TOKEN_SECRET_ARN": aws.secret_arn("TokenSigningSecret"),
            "PAYLOAD_BUCKET": aws.bucket_name("PayloadBucket"),
            **emulator.settings(),
        }
        api = TemplateReader(TEMPLATE, dict(LOCAL_PARAMETERS)).api()
        async with ApiGatewayEmulator(api, extra_env=env) as gateway:
            store = Store(
                aws.table_name, resource=boto3.resource("dynamodb", **aws.client_kwargs())
            )
            yield Stack(aws, gateway, {**env, **gateway.settings()}, store)
    finally:
        await asyncio.to_thread(aws.stop)


async def completed_run(hatchet: Hatchet) -> str:
    """A run Hatchet knows as COMPLETED (the worker ran it)."""
    leaf = hatchet.stubs.task(name="t-leaf", input_validator=AnyInput, output_validator=dict)
    ref = await leaf.aio_run(AnyInput(value=21), wait_for_result=False)
    assert await hatchet.runs.get_run_ref(ref.workflow_run_id).aio_result() == {
        "t-leaf": {"doubled": 42}
    }
    return str(ref.workflow_run_id)


async def frames_until_final(client: ClientConnection) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not (frames and frames[-1].get("final")):
        message = json.loads(await client.recv())
        frames.extend(message["frames"] if message["type"] == "batch" else [message])
    return frames


@pytest.mark.usefixtures("worker")
async def test_a_dead_lettered_run_ends_with_a_gap_and_its_status_and_its_subscriber_sees_both(
    stack: Stack,
    hatchet: Hatchet,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in stack.env.items():  # the function's environment, in this process
        monkeypatch.setenv(name, value)
    run_id = await completed_run(hatchet)
    store = stack.store

    # The run as a relay left it when it died: the lease (still live while the
    # subscriber arrives), a block of seqs reserved, one chunk logged.
    store.create_run(run_id, "t-leaf")
    assert store.acquire_lease(run_id, DEAD_RELAY, 300) is not None
    assert store.update_run(run_id, DEAD_RELAY, last_seq=0, reserved_seq=256, status="RUNNING")
    store.append_frames(run_id, [chunk_frame(run_id, 1, "leaf 21")], DEAD_RELAY)

    token = RunTokens(secret_key_ring(stack.env["TOKEN_SECRET_ARN"])).mint(run_id).token
    async with connect(f"{stack.gateway.websocket_url}?token={token}", max_size=None) as client:
        await client.send(json.dumps({"action": "subscribe", "runId": run_id, "token": token}))
        subscribed = json.loads(await client.recv())
        assert (subscribed["type"], subscribed["status"]) == ("subscribed", "RUNNING")

        # `subscribed` is posted before the subscription is stored: wait for the item.
        async def stored() -> None:
            while not store.subscriptions_of_run(run_id):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.02)

        await asyncio.wait_for(stored(), 10)
        (subscription,) = store.subscriptions_of_run(run_id)
        assert subscription.after == 0

        # The relay is gone (its lease lapses) and its run's message went to the DLQ.
        table = boto3.resource("dynamodb", **stack.aws.client_kwargs()).Table(stack.aws.table_name)
        table.update_item(
            Key={"pk": f"RUN#{run_id}", "sk": "META"},
            UpdateExpression="SET leaseExpiresAt = :past",
            ExpressionAttributeValues={":past": 1},
        )
        sqs = boto3.client("sqs", **stack.aws.client_kwargs())
        dlq_url = stack.aws.queue_url("RunDeadLetterQueue")
        sqs.send_message(QueueUrl=dlq_url, MessageBody=json.dumps({"runId": run_id}))
        received = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=1, MessageSystemAttributeNames=["All"]
        )["Messages"]
        event = {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m["Attributes"],
                    "eventSource": "aws:sqs",
                }
                for m in received
            ]
        }

        def consume() -> dict[str, Any]:  # as Lambda runs it: built once, then invoked
            handler = dead_letters.handler()
            return handler(event, Context())  # type: ignore[arg-type]

        assert await asyncio.to_thread(consume) == {"batchItemFailures": []}
        ended = [
            r for r in caplog.records if r.getMessage() == "run ended from the dead-letter queue"
        ]
        assert [r.levelname for r in ended] == ["ERROR"]  # what an alarm keys on
        frames = await asyncio.wait_for(frames_until_final(client), 30)

    # The client is gone: its $disconnect runs before the test's end (not in teardown).
    async def disconnected() -> None:
        while not any(i.function == "WsDisconnectFunction" for i in stack.gateway.invocations):  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    await asyncio.wait_for(disconnected(), 10)
    await stack.gateway.idle()

    gap = {
        "type": "gap",
        "runId": run_id,
        "seq": 257,
        "reason": GAP_REASON,
        "skipped": [2, 256],  # what the dead relay may have sent and never logged
    }
    final = status_frame(run_id, 258, "COMPLETED", output={"t-leaf": {"doubled": 42}})
    assert store.read_frames(run_id) == [chunk_frame(run_id, 1, "leaf 21"), gap, final]
    run = store.get_run(run_id)
    assert run is not None
    assert (run.status, run.last_seq, run.lease_owner) == ("COMPLETED", 258, None)
    # The subscriber got the log from its after: the chunk, the gap and the end.
    assert frames == [chunk_frame(run_id, 1, "leaf 21"), gap, final]
    assert store.subscriptions_of_run(run_id) == []

    # A second delivery of the same dead letter (at-least-once) changes nothing.
    def again() -> dict[str, Any]:
        return dead_letters.handler()(event, Context())  # type: ignore[arg-type]

    assert await asyncio.to_thread(again) == {"batchItemFailures": []}
    assert len(store.read_frames(run_id)) == 3


@pytest.mark.parametrize("sample", ["dlq_consumer", "dlq_consumer_not_a_run"])
async def test_the_sample_events_through_the_handler_are_dropped_when_there_is_nothing_to_end(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, sample: str
) -> None:
    """events/'s samples (``sam local invoke DlqConsumerFunction -e``): a run the table
    does not have (expired) and a message that names no run are dropped, not retried."""
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    text = (REPO_ROOT / "events" / f"{sample}.json").read_text()
    event = json.loads(text.replace("RUN_ID", str(uuid.uuid4())))  # no such run

    def consume() -> dict[str, Any]:
        return dead_letters.handler()(event, Context())  # type: ignore[arg-type]

    assert await asyncio.to_thread(consume) == {"batchItemFailures": []}
