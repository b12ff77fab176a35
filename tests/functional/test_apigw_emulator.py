"""The API Gateway emulator with real WebSocket clients (websockets), a real boto3
management-API client, and a template whose handlers run as Lambda would run them."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import pytest_asyncio
from aws_lambda_powertools.utilities.data_classes import (
    APIGatewayProxyEventV2,
    APIGatewayWebSocketEvent,
)
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hatchway_local.apigw_emulator.server import ApiGatewayEmulator
from hatchway_local.apigw_emulator.template import TemplateReader

TEMPLATE = Path(__file__).with_name("apigw_app") / "template.yaml"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway() -> AsyncIterator[ApiGatewayEmulator]:
    async with ApiGatewayEmulator(TemplateReader(TEMPLATE).api(), max_concurrency=8) as running:
        yield running


def management(gateway: ApiGatewayEmulator, retries: int = 1) -> Any:
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=gateway.management_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            retries={"max_attempts": retries, "mode": "standard"}, max_pool_connections=32
        ),
    )


async def open_client(
    gateway: ApiGatewayEmulator, token: str = "allow-ana", **query: str
) -> ClientConnection:
    params = "&".join(f"{k}={v}" for k, v in {"token": token, **query}.items())
    return await connect(f"{gateway.websocket_url}?{params}", max_size=None)


async def connection_id_of(gateway: ApiGatewayEmulator, before: set[str]) -> str:
    for _ in range(100):
        new = set(gateway.connections) - before
        if new:
            return new.pop()
        await asyncio.sleep(0.01)
    raise AssertionError("no new connection registered")


async def connected(
    gateway: ApiGatewayEmulator, token: str = "allow-ana"
) -> tuple[ClientConnection, str]:
    before = set(gateway.connections)
    client = await open_client(gateway, token)
    return client, await connection_id_of(gateway, before)


def invocations_of(gateway: ApiGatewayEmulator, function: str) -> list[dict[str, Any]]:
    return [i.event for i in gateway.invocations if i.function == function]


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - the handler runs in another process
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


async def test_connect_and_disconnect_events_have_the_documented_shape(
    gateway: ApiGatewayEmulator,
) -> None:
    client, connection_id = await connected(gateway, "allow-bob")
    await client.close(code=1000, reason="bye")

    authorizer = next(
        e
        for e in invocations_of(gateway, "AuthorizerFunction")[::-1]
        if e["queryStringParameters"]["token"] == "allow-bob"
    )
    assert authorizer["type"] == "REQUEST"
    assert authorizer["methodArn"].endswith("/test/$connect")
    connect_event = next(
        e
        for e in invocations_of(gateway, "ConnectFunction")
        if e["requestContext"]["connectionId"] == connection_id
    )
    event = APIGatewayWebSocketEvent(connect_event)
    context = event.request_context
    assert (context.route_key, context.event_type, context.stage) == ("$connect", "CONNECT", "test")
    assert context.domain_name == f"127.0.0.1:{gateway.tls_port}"
    assert context.connection_id == connection_id
    assert context.api_id
    assert context.request_id
    assert context.extended_request_id
    assert context.connected_at <= context.request_time_epoch
    assert context.identity.source_ip == "127.0.0.1"
    assert event.query_string_parameters == {"token": "allow-bob"}
    assert event.multi_value_query_string_parameters == {"token": ["allow-bob"]}
    assert connect_event["requestContext"]["authorizer"] == {"user": "bob", "principalId": "bob"}
    assert event.headers["Sec-WebSocket-Version"] == "13"

    await wait_for(
        lambda: any(
            e["requestContext"]["connectionId"] == connection_id
            for e in invocations_of(gateway, "DisconnectFunction")
        )
    )
    disconnect = APIGatewayWebSocketEvent(
        next(
            e
            for e in invocations_of(gateway, "DisconnectFunction")
            if e["requestContext"]["connectionId"] == connection_id
        )
    )
    assert disconnect.request_context.event_type == "DISCONNECT"
    assert disconnect.request_context.route_key == "$disconnect"
    assert disconnect.request_context.disconnect_status_code == 1000
    assert disconnect.request_context.disconnect_reason


@pytest.mark.parametrize(
    ("token", "query", "status"),
    [("deny", {}, 403), ("garbage", {}, 401), ("", {}, 401), ("allow-ana", {"refuse": "1"}, 403)],
)
async def test_refused_upgrades_answer_with_the_status(
    gateway: ApiGatewayEmulator, token: str, query: dict[str, str], status: int
) -> None:
    url = gateway.websocket_url + (
        "?" + "&".join(f"{k}={v}" for k, v in {"token": token, **query}.items() if v)
        if token or query
        else ""
    )
    before = set(gateway.connections)
    with pytest.raises(InvalidStatus) as refused:
        await connect(url)
    assert refused.value.response.status_code == status
    assert set(gateway.connections) == before


async def test_messages_are_routed_by_action_with_default_as_fallback(
    gateway: ApiGatewayEmulator,
) -> None:
    client, _ = await connected(gateway)
    try:
        await client.send(json.dumps({"action": "echo", "message": "hi"}))
        assert await client.recv() == "test:hi"  # via the management API, from the handler
        await client.send("not json at all")
        assert await client.recv() == "hello, default: not json at all"  # route response
        await client.send(json.dumps({"action": "nope"}))
        assert await client.recv() == 'hello, default: {"action": "nope"}'
        await client.send(json.dumps({"action": "slow"}))  # exceeds its 1 s timeout
        error = json.loads(await client.recv())
        assert error["message"] == "Internal server error"
        assert error["connectionId"]
    finally:
        await client.close()


async def test_gone_connections_answer_410_and_live_ones_answer_get(
    gateway: ApiGatewayEmulator,
) -> None:
    client, connection_id = await connected(gateway)
    api = management(gateway)
    info = await asyncio.to_thread(api.get_connection, ConnectionId=connection_id)
    assert info["Identity"]["SourceIp"] == "127.0.0.1"
    await client.close()
    await wait_for(lambda: connection_id not in gateway.connections)

    for target in (connection_id, "NeverExisted0A="):
        with pytest.raises(ClientError) as gone:
            await asyncio.to_thread(api.post_to_connection, ConnectionId=target, Data=b"x")
        assert gone.value.response["Error"]["Code"] == "GoneException"
        assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410


async def test_messages_over_128_kb_are_refused_413(gateway: ApiGatewayEmulator) -> None:
    client, connection_id = await connected(gateway)
    api = management(gateway)
    try:
        with pytest.raises(ClientError) as too_large:
            await asyncio.to_thread(
                api.post_to_connection, ConnectionId=connection_id, Data=b"x" * (129 * 1024)
            )
        assert too_large.value.response["Error"]["Code"] == "PayloadTooLargeException"
        assert too_large.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
        await asyncio.to_thread(
            api.post_to_connection, ConnectionId=connection_id, Data=b"y" * (128 * 1024)
        )
        assert await client.recv() == "y" * (128 * 1024)
    finally:
        await client.close()


async def test_unsigned_callers_are_forbidden(gateway: ApiGatewayEmulator) -> None:
    client, connection_id = await connected(gateway)
    try:
        request = urllib.request.Request(  # noqa: S310 - loopback
            # Quoted as boto3 does: an id may hold "/" or "+" (it is base64).
            f"{gateway.management_url}/@connections/{urllib.parse.quote(connection_id, safe='')}",
            data=b"x",
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as forbidden:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
        assert forbidden.value.code == 403
    finally:
        await client.close()


def raw_management_call(
    gateway: ApiGatewayEmulator, connection_id: str, headers: dict[str, str], data: bytes = b"x"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{gateway.management_url}/@connections/{urllib.parse.quote(connection_id, safe='')}",
        data=data,
        method="POST",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, dict(response.headers), {}
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


async def test_forged_signatures_are_refused_and_real_ones_accepted(
    gateway: ApiGatewayEmulator,
) -> None:
    client, connection_id = await connected(gateway)
    host = urllib.parse.urlsplit(gateway.management_url).netloc
    forged = {
        "Host": host,
        "X-Amz-Date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential=testing/{datetime.now(UTC):%Y%m%d}/us-east-1/"
            f"execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature={'0' * 64}"
        ),
    }
    try:
        status, headers, body = await asyncio.to_thread(
            raw_management_call, gateway, connection_id, forged
        )
        assert status == 403
        assert headers["x-amzn-ErrorType"] == "InvalidSignatureException"
        assert body["message"].startswith("The request signature we calculated does not match")
        just_the_prefix = {"Authorization": "AWS4-HMAC-SHA256"}
        assert (
            await asyncio.to_thread(raw_management_call, gateway, connection_id, just_the_prefix)
        )[0] == 403

        for key, secret, service, error in (
            ("testing", "not-the-secret", "execute-api", "InvalidSignatureException"),
            ("AKIAUNKNOWN", "testing", "execute-api", "UnrecognizedClientException"),
            ("testing", "testing", "s3", "InvalidSignatureException"),  # another service's scope
        ):
            request = AWSRequest(
                method="POST",
                url=f"{gateway.management_url}/@connections/{urllib.parse.quote(connection_id, safe='')}",
                data=b"forged",
            )
            SigV4Auth(Credentials(key, secret), service, "us-east-1").add_auth(request)
            signed = dict(request.headers.items())
            status, headers, _ = await asyncio.to_thread(
                raw_management_call, gateway, connection_id, signed, b"forged"
            )
            assert (status, headers["x-amzn-ErrorType"]) == (403, error), (key, secret, service)

        # boto3 with the local credentials (as every handler and relay signs): accepted.
        await asyncio.to_thread(
            management(gateway).post_to_connection, ConnectionId=connection_id, Data=b"signed"
        )
        assert await asyncio.wait_for(client.recv(), 5) == "signed"  # and nothing forged before
        with pytest.raises(ClientError) as wrong_secret:
            await asyncio.to_thread(
                boto3.client(
                    "apigatewaymanagementapi",
                    endpoint_url=gateway.management_url,
                    region_name="us-east-1",
                    aws_access_key_id="testing",
                    aws_secret_access_key="guessed",
                ).post_to_connection,
                ConnectionId=connection_id,
                Data=b"x",
            )
        assert wrong_secret.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        await client.close()


async def test_a_message_cannot_select_the_lifecycle_routes(gateway: ApiGatewayEmulator) -> None:
    """Route selection only picks $connect and $disconnect for API Gateway itself: a
    message whose action names them goes to $default."""
    client, connection_id = await connected(gateway)

    def lifecycle_calls() -> int:
        return sum(
            e["requestContext"]["connectionId"] == connection_id
            for function in ("ConnectFunction", "DisconnectFunction")
            for e in invocations_of(gateway, function)
        )

    try:
        assert lifecycle_calls() == 1  # its own $connect
        for action in ("$connect", "$disconnect"):
            message = json.dumps({"action": action})
            await client.send(message)
            assert await asyncio.wait_for(client.recv(), 10) == f"hello, default: {message}"
        assert lifecycle_calls() == 1
        assert connection_id in gateway.connections
    finally:
        await client.close()


async def test_a_binary_frame_closes_the_connection_with_1003(
    gateway: ApiGatewayEmulator,
) -> None:
    client, connection_id = await connected(gateway)
    await client.send(b"\x00\x01binary")
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.recv(), 10)
    assert client.close_code == 1003
    await wait_for(
        lambda: any(
            e["requestContext"]["connectionId"] == connection_id
            and e["requestContext"]["disconnectStatusCode"] == 1003
            for e in invocations_of(gateway, "DisconnectFunction")
        )
    )
    assert not [
        e
        for e in invocations_of(gateway, "DefaultFunction")
        if e["requestContext"]["connectionId"] == connection_id
    ]


def control(
    gateway: ApiGatewayEmulator, method: str, path: str, token: str | None, body: object = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{urllib.parse.urlsplit(gateway.management_url).netloc}/_emulator{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}"} if token is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_the_control_api_wants_this_emulators_token(gateway: ApiGatewayEmulator) -> None:
    client, connection_id = await connected(gateway)
    quoted = urllib.parse.quote(connection_id, safe="")
    try:
        for token in (None, "", "guessed"):
            for method, path, body in (
                ("GET", "/connections", None),
                ("POST", f"/connections/{quoted}/disconnect", {}),
                ("POST", "/faults/throttle", {"share": 1.0}),
            ):
                status, _ = await asyncio.to_thread(control, gateway, method, path, token, body)
                assert status == 401, (token, path)
        assert connection_id in gateway.connections
        assert gateway.faults.throttle_share == 0.0
        near_miss = gateway.control_token[:-1]
        assert (await asyncio.to_thread(control, gateway, "GET", "/connections", near_miss))[
            0
        ] == 401

        status, listing = await asyncio.to_thread(
            control, gateway, "GET", "/connections", gateway.control_token
        )
        assert status == 200
        assert connection_id in listing["connections"]
        assert gateway.control_settings() == {
            "APIGW_EMULATOR_CONTROL_URL": f"http://127.0.0.1:{gateway.port}/_emulator",
            "APIGW_EMULATOR_TOKEN": gateway.control_token,
        }
        assert "APIGW_EMULATOR_TOKEN" not in gateway.settings()  # what handlers get
        # Each emulator has its own token.
        async with ApiGatewayEmulator(TemplateReader(TEMPLATE).api()) as other:
            assert other.control_token != gateway.control_token
    finally:
        await client.close()


async def test_a_thousand_posts_arrive_as_a_thousand_messages_in_order(
    gateway: ApiGatewayEmulator,
) -> None:
    client, connection_id = await connected(gateway)
    api = management(gateway)

    def post_all() -> None:
        for n in range(1000):
            api.post_to_connection(ConnectionId=connection_id, Data=json.dumps({"n": n}).encode())

    try:
        poster = asyncio.create_task(asyncio.to_thread(post_all))
        received = [json.loads(await client.recv()) for _ in range(1000)]
        await poster
        assert received == [{"n": n} for n in range(1000)]
    finally:
        await client.close()


async def test_posts_to_200_connections_at_once_all_arrive(gateway: ApiGatewayEmulator) -> None:
    clients = [await connected(gateway, f"allow-user{n}") for n in range(200)]
    api = management(gateway)
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            posts = [
                asyncio.get_running_loop().run_in_executor(
                    pool,
                    lambda cid=cid: api.post_to_connection(ConnectionId=cid, Data=cid.encode()),
                )
                for _, cid in clients
            ]
            await asyncio.gather(*posts)
        received = await asyncio.gather(*(client.recv() for client, _ in clients))
        assert list(received) == [cid for _, cid in clients]
    finally:
        await asyncio.gather(*(client.close() for client, _ in clients))


async def test_throttling_answers_429_then_recovers(gateway: ApiGatewayEmulator) -> None:
    client, connection_id = await connected(gateway)
    api = management(gateway)
    try:
        gateway.throttle(share=1.0)
        with pytest.raises(ClientError) as throttled:
            await asyncio.to_thread(api.post_to_connection, ConnectionId=connection_id, Data=b"a")
        assert throttled.value.response["Error"]["Code"] == "LimitExceededException"
        assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        gateway.throttle(share=0.0)
        await asyncio.to_thread(api.post_to_connection, ConnectionId=connection_id, Data=b"b")
        assert await client.recv() == "b"
    finally:
        gateway.throttle(share=0.0)
        await client.close()


async def test_throttling_one_connection_leaves_the_others_alone(
    gateway: ApiGatewayEmulator,
) -> None:
    (throttled, throttled_id), (other, other_id) = (
        await connected(gateway),
        await connected(gateway),
    )
    api = management(gateway)
    try:
        assert gateway.throttle(for_seconds=30, connection_id=throttled_id)
        with pytest.raises(ClientError) as refused:
            await asyncio.to_thread(api.post_to_connection, ConnectionId=throttled_id, Data=b"a")
        assert refused.value.response["Error"]["Code"] == "LimitExceededException"
        await asyncio.to_thread(api.post_to_connection, ConnectionId=other_id, Data=b"b")
        assert await other.recv() == "b"
        assert gateway.throttle(for_seconds=0, connection_id=throttled_id)
        await asyncio.to_thread(api.post_to_connection, ConnectionId=throttled_id, Data=b"c")
        assert await throttled.recv() == "c"
        assert not gateway.throttle(for_seconds=1, connection_id="unknown=")
    finally:
        await asyncio.gather(throttled.close(), other.close())


async def test_latency_on_one_connection_does_not_hold_up_another(
    gateway: ApiGatewayEmulator,
) -> None:
    (slow, slow_id), (fast, fast_id) = await connected(gateway), await connected(gateway)
    api = management(gateway)
    gateway.set_latency(slow_id, 2.0)
    try:
        slow_post = asyncio.create_task(
            asyncio.to_thread(api.post_to_connection, ConnectionId=slow_id, Data=b"slow")
        )
        await asyncio.sleep(0.1)
        await asyncio.to_thread(api.post_to_connection, ConnectionId=fast_id, Data=b"fast")
        assert await fast.recv() == "fast"
        assert not slow_post.done()  # still held by its injected latency
        await slow_post
        assert await slow.recv() == "slow"
    finally:
        await asyncio.gather(slow.close(), fast.close())


async def test_forced_disconnect_closes_the_client_and_runs_disconnect(
    gateway: ApiGatewayEmulator,
) -> None:
    client, connection_id = await connected(gateway)
    assert await gateway.disconnect(connection_id, 1001, "Going away")
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.close_code == 1001
    await wait_for(
        lambda: any(
            e["requestContext"]["connectionId"] == connection_id
            and e["requestContext"]["disconnectStatusCode"] == 1001
            for e in invocations_of(gateway, "DisconnectFunction")
        )
    )


async def test_a_lost_disconnect_closes_the_client_without_the_handler(
    gateway: ApiGatewayEmulator,
) -> None:
    client, connection_id = await connected(gateway)
    assert await gateway.disconnect(connection_id, 1006, "lost", notify=False)
    with pytest.raises(ConnectionClosed):
        await client.recv()
    api = management(gateway)
    with pytest.raises(ClientError) as gone:  # the relay learns of it from a 410
        await asyncio.to_thread(api.post_to_connection, ConnectionId=connection_id, Data=b"x")
    assert gone.value.response["Error"]["Code"] == "GoneException"
    await asyncio.sleep(0.3)
    assert not [
        e
        for e in invocations_of(gateway, "DisconnectFunction")
        if e["requestContext"]["connectionId"] == connection_id
    ]


async def test_http_api_routes_reach_the_handler_with_payload_format_2(
    gateway: ApiGatewayEmulator,
) -> None:
    def get(path: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            with urllib.request.urlopen(gateway.http_url + path, timeout=10) as response:  # noqa: S310
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    status, body, _ = await asyncio.to_thread(get, "/hello/world?x=1&x=2")
    assert status == 200
    assert json.loads(body) == {"hello": "world", "query": {"x": "1,2"}}
    event = APIGatewayProxyEventV2(invocations_of(gateway, "HttpFunction")[-1])
    assert event.version == "2.0"
    assert event.route_key == "GET /hello/{name}"
    assert event.raw_path == "/hello/world"
    assert event.raw_query_string == "x=1&x=2"
    assert event.request_context.http.method == "GET"
    assert event.path_parameters == {"name": "world"}

    request = urllib.request.Request(gateway.http_url + "/echo", data=b"ping", method="POST")  # noqa: S310
    response = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    assert (response.status, response.read(), response.headers["x-echo"]) == (201, b"ping", "yes")
    assert (await asyncio.to_thread(get, "/nowhere"))[0] == 404


async def test_idle_connections_are_closed_and_disconnect_runs() -> None:
    api = TemplateReader(TEMPLATE).api()
    async with ApiGatewayEmulator(api, idle_timeout_s=1.0) as short_idle:
        client, connection_id = await connected(short_idle)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), 10)
        assert client.close_code == 1001
        await wait_for(
            lambda: any(
                e["requestContext"]["connectionId"] == connection_id
                for e in invocations_of(short_idle, "DisconnectFunction")
            )
        )


async def test_a_client_that_does_not_read_gets_posts_refused_429_until_it_reads(
    gateway: ApiGatewayEmulator,
) -> None:
    """As on AWS, a slow consumer's buffer fills: posts to it answer 429
    LimitExceededException (never hang), and succeed again once it has read."""
    before = set(gateway.connections)
    host, port = gateway.websocket_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    tiny = socket.socket()  # a few KB of receive buffer: TCP pushes back at once
    tiny.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await asyncio.to_thread(tiny.connect, (host, int(port)))
    client = await connect(
        f"{gateway.websocket_url}?token=allow-ana",
        max_size=None,
        max_queue=1,
        ping_interval=None,  # it must not close itself for want of pongs it cannot read
        sock=tiny,
    )
    connection_id = await connection_id_of(gateway, before)
    client.transport.pause_reading()  # it stops reading
    api = management(gateway)
    chunk = b"z" * (120 * 1024)
    try:
        refused = None
        for posted in range(1, 400):  # noqa: B007 - reported below; at most ~47 MB
            try:
                await asyncio.to_thread(
                    api.post_to_connection, ConnectionId=connection_id, Data=chunk
                )
            except ClientError as error:
                refused = error.response["Error"]["Code"]
                break
        assert refused == "LimitExceededException", f"{posted} posts all accepted"
        client.transport.resume_reading()  # now it reads
        while gateway.connections[connection_id].buffered_bytes() > 0:
            await asyncio.wait_for(client.recv(), 10)
        await asyncio.to_thread(api.post_to_connection, ConnectionId=connection_id, Data=b"again")
    finally:
        await client.close()
