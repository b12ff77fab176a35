"""Every sample in events/ through its handler, as `sam local invoke -e` would run
it: the function's code, layer and environment from template.yaml, in its own
process, against moto and the emulators. Also: the samples have the shapes the
API Gateway emulator sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import jwt
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from hatchway_local.apigw_emulator.lambda_runtime import InvocationError, LambdaFunction
from hatchway_local.apigw_emulator.server import ApiGatewayEmulator
from hatchway_local.apigw_emulator.template import TemplateReader
from hatchway_local.aws import LocalAws, start_local_aws
from hatchway_local.hatchet_emulator.engine import TaskSpec, WorkflowSpec
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from hatchway_local.packaging import FUNCTIONS
from hatchway_local.stack import LOCAL_PARAMETERS
from tests.conftest import REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"
EVENTS = REPO_ROOT / "events"


@dataclass
class Invoker:
    aws: LocalAws
    gateway: ApiGatewayEmulator
    env: dict[str, str]
    functions: dict[str, LambdaFunction]
    run_id: str = ""
    token: str = ""

    def event(self, name: str, connection_id: str | None = None) -> dict[str, Any]:
        text = (EVENTS / f"{name}.json").read_text()
        text = text.replace("RUN_TOKEN", self.token).replace("RUN_ID", self.run_id)
        event: dict[str, Any] = json.loads(text)
        if connection_id is not None:
            event["requestContext"]["connectionId"] = connection_id
        return event

    async def invoke(self, function: str, name: str, connection_id: str | None = None) -> Any:
        return await self.functions[function].invoke(self.event(name, connection_id))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def invoker() -> AsyncIterator[Invoker]:
    aws = await asyncio.to_thread(start_local_aws, TEMPLATE)
    async with HatchetEmulator() as hatchet:
        # The trigger only needs Hatchet to know the workflow; no worker runs it here.
        hatchet.engine.put_workflow(
            WorkflowSpec(
                "demo-stream", {"demo-stream": TaskSpec("demo-stream", "demo-stream:demo-stream")}
            )
        )
        api = TemplateReader(TEMPLATE, dict(LOCAL_PARAMETERS)).api()
        env = {
            **aws.environment(),
            "TABLE_NAME": aws.table_name,
            "RUN_QUEUE_URL": aws.queue_url("RunQueue"),
            "TOKEN_SECRET_ARN": aws.secret_arn("TokenSigningSecret"),
            **hatchet.settings(),
        }
        async with ApiGatewayEmulator(api, extra_env=env) as gateway:
            env = {**env, **gateway.settings()}
            functions = {name: LambdaFunction(spec, env) for name, spec in api.functions.items()}
            try:
                invoker = Invoker(aws, gateway, env, functions)
                # Every sample but the trigger's refers to one real run and its token.
                started = await invoker.invoke("TriggerFunction", "trigger_post_runs")
                assert started["statusCode"] == 201, started
                created = body(started)
                invoker.run_id, invoker.token = created["runId"], created["token"]
                yield invoker
            finally:
                for function in functions.values():
                    await function.close()
    await asyncio.to_thread(aws.stop)


def body(result: dict[str, Any]) -> Any:
    return json.loads(result["body"])


async def test_trigger_events(invoker: Invoker) -> None:
    started = await invoker.invoke("TriggerFunction", "trigger_post_runs")
    assert started["statusCode"] == 201
    assert body(started)["workflow"] == "demo-stream"

    unknown = await invoker.invoke("TriggerFunction", "trigger_post_runs_unknown_workflow")
    assert (unknown["statusCode"], body(unknown)["error"]["code"]) == (404, "unknown_workflow")
    not_json = await invoker.invoke("TriggerFunction", "trigger_post_runs_not_json")
    assert (not_json["statusCode"], body(not_json)["error"]["code"]) == (400, "bad_request")
    # Only the route with the authorizer starts runs, never the open catch-all.
    fallback = await invoker.invoke("TriggerFunction", "trigger_post_runs_default_route")
    assert (fallback["statusCode"], body(fallback)["error"]["code"]) == (403, "forbidden")

    run = await invoker.invoke("TriggerFunction", "trigger_get_run")
    assert run["statusCode"] == 200
    assert body(run)["runId"] == invoker.run_id
    # A fresh token for the run (a client's getToken), also only through its route.
    issued = await invoker.invoke("TriggerFunction", "trigger_post_run_token")
    assert issued["statusCode"] == 201, issued
    assert body(issued)["runId"] == invoker.run_id
    claims = jwt.decode(body(issued)["token"], options={"verify_signature": False})
    assert claims["sub"] == invoker.run_id
    assert body(issued)["expiresAt"]
    reissued = await invoker.invoke("TriggerFunction", "trigger_post_run_token_default_route")
    assert (reissued["statusCode"], body(reissued)["error"]["code"]) == (403, "forbidden")
    frames = await invoker.invoke("TriggerFunction", "trigger_get_frames")
    assert body(frames) == {"frames": [], "next": 0, "final": False}
    assert (await invoker.invoke("TriggerFunction", "trigger_healthz"))["statusCode"] == 200

    queued = boto3.client("sqs", **invoker.aws.client_kwargs()).receive_message(
        QueueUrl=invoker.aws.queue_url("RunQueue"), MaxNumberOfMessages=10
    )
    assert {"runId": invoker.run_id} in [
        json.loads(message["Body"]) for message in queued["Messages"]
    ]


async def test_authorizer_and_connect_events(invoker: Invoker) -> None:
    policy = await invoker.invoke("WsAuthorizerFunction", "ws_authorizer")
    assert policy["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert policy["context"]["runId"] == invoker.run_id
    with pytest.raises(InvocationError, match="Unauthorized"):
        await invoker.invoke("WsAuthorizerFunction", "ws_authorizer_bad_token")

    assert (await invoker.invoke("WsConnectFunction", "ws_connect"))["statusCode"] == 200
    table = boto3.resource("dynamodb", **invoker.aws.client_kwargs()).Table(invoker.aws.table_name)
    stored = table.get_item(Key={"pk": "CONN#L0SM9cOFvHcCIhw=", "sk": "META"})["Item"]
    assert stored["runId"] == invoker.run_id
    refused = await invoker.invoke("WsConnectFunction", "ws_connect_without_authorizer")
    assert refused["statusCode"] == 401

    assert (await invoker.invoke("WsDisconnectFunction", "ws_disconnect"))["statusCode"] == 200
    assert "Item" not in table.get_item(Key={"pk": "CONN#L0SM9cOFvHcCIhw=", "sk": "META"})


async def open_connection(invoker: Invoker) -> tuple[ClientConnection, str]:
    before = set(invoker.gateway.connections)
    client = await connect(f"{invoker.gateway.websocket_url}?token={invoker.token}")
    for _ in range(200):
        new = set(invoker.gateway.connections) - before
        if new:
            return client, new.pop()
        await asyncio.sleep(0.02)
    raise AssertionError("connection not registered")


@pytest.mark.parametrize(
    ("function", "event", "expected"),
    [
        (
            "WsSubscribeFunction",
            "ws_subscribe",
            {"type": "subscribed", "status": "QUEUED", "lastSeq": 0},
        ),
        (
            "WsSubscribeFunction",
            "ws_subscribe_bad_token",
            {"type": "error", "code": "unauthorized"},
        ),
        (
            "WsSubscribeFunction",
            "ws_subscribe_missing_field",
            {"type": "error", "code": "bad_request"},
        ),
        ("WsUnsubscribeFunction", "ws_unsubscribe", {"type": "unsubscribed"}),
        ("WsPingFunction", "ws_ping", {"type": "pong"}),
        ("WsDefaultFunction", "ws_default_not_json", {"type": "error", "code": "bad_request"}),
        (
            "WsDefaultFunction",
            "ws_default_unknown_action",
            {"type": "error", "code": "bad_request"},
        ),
        (
            "WsDefaultFunction",
            "ws_default_binary_not_utf8",
            {"type": "error", "code": "bad_request"},
        ),
    ],
)
async def test_message_events_answer_on_the_connection(
    invoker: Invoker, function: str, event: str, expected: dict[str, Any]
) -> None:
    client, connection_id = await open_connection(invoker)
    try:
        result = await invoker.invoke(function, event, connection_id)
        assert result["statusCode"] == 200
        frame = json.loads(await asyncio.wait_for(client.recv(), 10))
        assert {key: frame.get(key) for key in expected} == expected
    finally:
        await client.close()


def shape(value: Any, depth: int = 2) -> Any:
    if isinstance(value, dict) and depth:
        return {
            key: shape(item, depth - 1)
            for key, item in value.items()
            if key not in {"headers", "multiValueHeaders"}
        }
    return type(value).__name__


async def test_samples_have_the_shapes_the_emulator_sends(invoker: Invoker) -> None:
    client, _ = await open_connection(invoker)
    await client.send(json.dumps({"action": "ping"}))
    await client.recv()
    await client.close()
    await asyncio.sleep(0.5)  # $disconnect runs after the close
    sent = {}
    for invocation in invoker.gateway.invocations:
        context = invocation.event.get("requestContext", {})
        key = (
            invocation.event.get("type")
            or context.get("eventType")
            or invocation.event.get("version")
        )
        sent.setdefault(key, invocation.event)
    pairs = {
        "REQUEST": "ws_authorizer",
        "CONNECT": "ws_connect",
        "MESSAGE": "ws_ping",
        "DISCONNECT": "ws_disconnect",
    }
    for kind, sample in pairs.items():
        assert shape(json.loads((EVENTS / f"{sample}.json").read_text())) == shape(sent[kind]), (
            sample
        )


def test_every_function_has_samples() -> None:
    names = {path.stem for path in Path(EVENTS).glob("*.json")}
    for function in FUNCTIONS:
        assert any(name.startswith(function) for name in names), function
