"""Whatever a client sends, it gets one answer in the protocol's shape, under the
message limit, and its connection stays open (property-based, on the local stack:
real WebSocket, the API Gateway emulator, the real handlers and table)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.protocol import MAX_MESSAGE_BYTES
from tests.e2e.conftest import Api, Client

ANSWERS = {"error", "pong", "unsubscribed", "subscribed"}
CODES = {"bad_request", "unauthorized", "forbidden", "not_found", "too_large", "rate_limited"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Near-valid messages, where the handlers do the most: known actions, odd fields.
field_values = (
    json_values
    | st.text(min_size=100, max_size=6000)
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.sampled_from(["\ud800", "\udfff", "$connect", "$disconnect", "run-1"])
)
messages = st.fixed_dictionaries(
    {"action": st.sampled_from(["subscribe", "unsubscribe", "ping", "dance", "$connect"])},
    optional={"runId": field_values, "token": field_values, "after": field_values},
)
bodies = (
    messages.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=200)
    | st.integers(min_value=1, max_value=6000).map(lambda depth: "[" * depth + "]" * depth)
).filter(lambda body: body.strip() != "")  # an empty text frame selects no route


# Under the per-connection burst (WS_MESSAGE_BURST, 20): over it, messages are
# dropped by design (flood control, tested apart), so each connection sends fewer.
PER_CONNECTION = 15


class Session:
    client: Client | None = None
    run: dict[str, Any] | None = None
    sent = 0  # on the current connection
    clients: list[Client] = []  # noqa: RUF012 - the one session's state


async def client_for(api: Api) -> Client:
    if Session.run is None:
        Session.run = await api.start("demo-stream", {"start_delay_seconds": 0, "pause_seconds": 0})
    if Session.client is None or Session.sent >= PER_CONNECTION:
        Session.client = await Client.open(Session.run["websocketUrl"], Session.run["token"])
        Session.clients.append(Session.client)
        Session.sent = 0
    return Session.client


def check_answer(raw: str | bytes) -> dict[str, Any]:
    assert isinstance(raw, str), "answers are text"
    assert len(raw.encode()) <= MAX_MESSAGE_BYTES
    frame = json.loads(raw)
    assert isinstance(frame, dict), frame
    assert frame.get("type") in ANSWERS, frame
    if frame["type"] == "error":
        assert frame.get("code") in CODES, frame
        assert isinstance(frame.get("message"), str), frame
    return frame


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
async def test_every_message_gets_one_bounded_answer_and_the_connection_stays(
    api: Api, body: str
) -> None:
    client = await client_for(api)
    await client.send(body)
    Session.sent += 1
    check_answer(await asyncio.wait_for(client.socket.recv(), 30))


async def test_after_all_that_the_connections_are_open_and_nothing_extra_came(api: Api) -> None:
    assert Session.clients, "the property test ran first"
    try:
        for client in Session.clients:
            await client.send({"action": "ping"})
            # The next answer is the pong: no message got a second one meanwhile.
            answer = check_answer(await asyncio.wait_for(client.socket.recv(), 30))
            assert answer == {"type": "pong"}
    finally:
        for client in Session.clients:
            await client.close()
        Session.clients.clear()
        Session.client = None
