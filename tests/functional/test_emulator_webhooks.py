"""Incoming webhooks: made, read, changed and deleted with the unmodified hatchet-sdk
(``hatchet.webhooks``), and called over real HTTP (aiohttp) as a third party would, on
the public receive endpoint; what a request becomes is read back through the SDK (the
events list, the runs it started, their results), run by the real test worker.
Semantics: hatchet_emulator/webhooks.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from hatchet_sdk import Hatchet
from hatchet_sdk.clients.rest.exceptions import ApiException, NotFoundException
from hatchet_sdk.clients.rest.models.v1_webhook import V1Webhook
from hatchet_sdk.clients.rest.models.v1_webhook_api_key_auth import V1WebhookAPIKeyAuth
from hatchet_sdk.clients.rest.models.v1_webhook_auth_type import V1WebhookAuthType
from hatchet_sdk.clients.rest.models.v1_webhook_basic_auth import V1WebhookBasicAuth
from hatchet_sdk.clients.rest.models.v1_webhook_hmac_algorithm import V1WebhookHMACAlgorithm
from hatchet_sdk.clients.rest.models.v1_webhook_hmac_auth import V1WebhookHMACAuth
from hatchet_sdk.clients.rest.models.v1_webhook_hmac_encoding import V1WebhookHMACEncoding
from hatchet_sdk.clients.rest.models.v1_webhook_source_name import V1WebhookSourceName

from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.test_hatchet_emulator import result_of
from tests.functional.webhook_workflows import SCOPED_EVENT_KEY, WANTED_SCOPE

pytestmark = pytest.mark.usefixtures("worker")

ECHO_KEY = "'t-webhook:' + input.type"
BASIC = V1WebhookBasicAuth(username="user", password="secret")
HMAC_SECRET = "signing-secret"


def url(hatchet: Hatchet, name: str) -> str:
    return f"{hatchet.config.server_url}/api/v1/stable/tenants/{hatchet.tenant_id}/webhooks/{name}"


@asynccontextmanager
async def webhook(
    hatchet: Hatchet,
    auth: V1WebhookBasicAuth | V1WebhookAPIKeyAuth | V1WebhookHMACAuth = BASIC,
    source: V1WebhookSourceName = V1WebhookSourceName.GENERIC,
    event_key: str = ECHO_KEY,
    **options: Any,
) -> AsyncIterator[V1Webhook]:
    made = await hatchet.webhooks.aio_create(source, f"wh-{uuid4()}", event_key, auth, **options)
    try:
        yield made
    finally:
        await hatchet.webhooks.aio_delete(made.name)


def basic(user: str = "user", password: str = "secret") -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(user, password)}


async def post(target: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST as a third party: the raw body, no bearer token."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(target, data=body, headers=all_headers) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else None


def signed(body: bytes, algorithm: str = "SHA256", encoding: str = "HEX") -> str:
    digest = hmac.new(HMAC_SECRET.encode(), body, getattr(hashlib, algorithm.lower())).digest()
    if encoding == "HEX":
        return digest.hex()
    encode = base64.b64encode if encoding == "BASE64" else base64.urlsafe_b64encode
    return encode(digest).decode()


async def events_of(hatchet: Hatchet, name: str) -> list[Any]:
    listed = await hatchet.event.aio_list(limit=1000)
    return [e for e in listed.rows or [] if e.triggering_webhook_name == name]


async def runs_of_event(hatchet: Hatchet, event_id: str) -> list[Any]:
    return (await hatchet.runs.aio_list(triggering_event_external_id=event_id)).rows


async def test_an_accepted_request_becomes_an_event_that_starts_a_run(hatchet: Hatchet) -> None:
    body = json.dumps({"type": "order", "id": 7}).encode()
    async with webhook(hatchet) as made:
        status, answer = await post(url(hatchet, made.name), body, basic())
        assert status == 200
        assert answer["message"] == "ok"
        assert answer["event"]["key"] == "t-webhook:order"
        assert answer["event"]["payload"] == {"type": "order", "id": 7}
        [event] = await events_of(hatchet, made.name)
        assert event.metadata.id == answer["event"]["metadata"]["id"]
        assert event.key == "t-webhook:order"
        assert event.payload == {"type": "order", "id": 7}
        [run] = await runs_of_event(hatchet, event.metadata.id)
        assert run.additional_metadata["hatchet__event_id"] == event.metadata.id
        assert run.additional_metadata["hatchet__event_key"] == "t-webhook:order"
        result = await result_of(hatchet, run.workflow_run_external_id)
        assert result["t-webhook-echo"] == {"type": "order", "id": 7}


@pytest.mark.parametrize(
    ("auth", "headers", "description"),
    [
        (BASIC, basic(password="wrong"), "invalid basic auth credentials"),
        (BASIC, basic(user="other"), "invalid basic auth credentials"),
        (BASIC, {}, "missing or invalid authorization header"),
        (
            V1WebhookAPIKeyAuth(headerName="X-Api-Key", apiKey="k-123"),
            {"X-Api-Key": "k-12"},
            "invalid api key: X-Api-Key",
        ),
        (
            V1WebhookAPIKeyAuth(headerName="X-Api-Key", apiKey="k-123"),
            {},
            "missing or invalid api key header: X-Api-Key",
        ),
        (
            V1WebhookHMACAuth(
                algorithm=V1WebhookHMACAlgorithm.SHA256,
                encoding=V1WebhookHMACEncoding.HEX,
                signatureHeaderName="X-Signature",
                signingSecret=HMAC_SECRET,
            ),
            {"X-Signature": "0" * 64},
            "invalid HMAC signature",
        ),
        (
            V1WebhookHMACAuth(
                algorithm=V1WebhookHMACAlgorithm.SHA256,
                encoding=V1WebhookHMACEncoding.HEX,
                signatureHeaderName="X-Signature",
                signingSecret=HMAC_SECRET,
            ),
            {},
            "missing or invalid signature header: X-Signature",
        ),
    ],
    ids=[
        "wrong-password",
        "wrong-user",
        "no-credentials",
        "wrong-key",
        "no-key",
        "wrong-signature",
        "no-signature",
    ],
)
async def test_a_wrong_credential_is_refused_with_403_and_starts_nothing(
    hatchet: Hatchet,
    auth: V1WebhookBasicAuth | V1WebhookAPIKeyAuth | V1WebhookHMACAuth,
    headers: dict[str, str],
    description: str,
) -> None:
    async with webhook(hatchet, auth) as made:
        status, answer = await post(url(hatchet, made.name), b'{"type": "refused"}', headers)
        assert status == 403
        assert answer == {"errors": [{"description": description}]}
        assert await events_of(hatchet, made.name) == []  # no event: no run either


@pytest.mark.parametrize(
    ("algorithm", "encoding", "prefix"),
    [
        ("SHA1", "HEX", ""),
        ("SHA256", "BASE64", ""),
        ("SHA512", "BASE64URL", ""),
        ("MD5", "HEX", ""),
        ("SHA256", "HEX", "sha256="),  # GitHub's X-Hub-Signature-256
    ],
)
async def test_hmac_signatures_of_each_algorithm_and_encoding_are_accepted(
    hatchet: Hatchet, algorithm: str, encoding: str, prefix: str
) -> None:
    auth = V1WebhookHMACAuth(
        algorithm=V1WebhookHMACAlgorithm(algorithm),
        encoding=V1WebhookHMACEncoding(encoding),
        signatureHeaderName="X-Hub-Signature-256",
        signingSecret=HMAC_SECRET,
    )
    body = json.dumps({"type": "signed", "algorithm": algorithm}).encode()
    async with webhook(hatchet, auth, V1WebhookSourceName.GITHUB) as made:
        header = {"X-Hub-Signature-256": prefix + signed(body, algorithm, encoding)}
        status, answer = await post(url(hatchet, made.name), body, header)
        assert status == 200, answer
        [run] = await runs_of_event(hatchet, answer["event"]["metadata"]["id"])
        result = await result_of(hatchet, run.workflow_run_external_id)
        assert result["t-webhook-echo"] == {"type": "signed", "algorithm": algorithm}


async def test_webhooks_crud_round_trip(hatchet: Hatchet, emulator: HatchetEmulator) -> None:
    name = f"wh-crud-{uuid4()}"
    made = await hatchet.webhooks.aio_create(
        V1WebhookSourceName.LINEAR,
        name,
        ECHO_KEY,
        V1WebhookAPIKeyAuth(headerName="X-Key", apiKey="k"),
        scope_expression="input.team",
        static_payload={"origin": "linear"},
    )
    assert made.name == name
    assert made.auth_type == V1WebhookAuthType.API_KEY
    assert made.tenant_id == emulator.tenant_id
    assert made.scope_expression == "input.team"
    assert made.static_payload == {"origin": "linear"}
    assert made.return_event_as_response_payload is True
    assert (await hatchet.webhooks.aio_get(name)).model_dump() == made.model_dump()
    listed = await hatchet.webhooks.aio_list(
        webhook_names=[name], source_names=[V1WebhookSourceName.LINEAR]
    )
    assert [w.name for w in listed.rows or []] == [name]
    other_source = await hatchet.webhooks.aio_list(
        webhook_names=[name], source_names=[V1WebhookSourceName.STRIPE]
    )
    assert other_source.rows == []
    with pytest.raises(ApiException) as duplicate:  # the table's key: the engine answers 500
        await hatchet.webhooks.aio_create(V1WebhookSourceName.GENERIC, name, ECHO_KEY, BASIC)
    assert duplicate.value.status == 500

    updated = await hatchet.webhooks.aio_update(
        name, scope_expression="input.project", return_event_as_response_payload=False
    )
    assert updated.event_key_expression == ECHO_KEY  # kept: not given
    assert updated.scope_expression == "input.project"
    assert updated.static_payload == {"origin": "linear"}
    assert updated.return_event_as_response_payload is False
    cleared = await hatchet.webhooks.aio_update(name, scope_expression="")
    assert cleared.scope_expression is None  # an empty expression clears it

    deleted = await hatchet.webhooks.aio_delete(name)
    assert deleted.name == name
    with pytest.raises(NotFoundException):
        await hatchet.webhooks.aio_get(name)
    status, answer = await post(url(hatchet, name), b"{}", {"X-Key": "k"})
    assert (status, answer) == (404, {"message": "not found"})


async def test_static_payload_wins_and_a_204_when_the_event_is_not_returned(
    hatchet: Hatchet,
) -> None:
    body = json.dumps({"type": "merged", "source": "caller"}).encode()
    options = {"static_payload": {"source": "static"}, "return_event_as_response_payload": False}
    async with webhook(hatchet, **options) as made:
        status, answer = await post(url(hatchet, made.name), body, basic())
        assert (status, answer) == (204, None)
        [event] = await events_of(hatchet, made.name)
        assert event.payload == {"type": "merged", "source": "static"}
        [run] = await runs_of_event(hatchet, event.metadata.id)
        result = await result_of(hatchet, run.workflow_run_external_id)
        assert result["t-webhook-echo"] == {"type": "merged", "source": "static"}


async def test_the_scope_expression_gates_runs_through_the_workflows_filters(
    hatchet: Hatchet,
) -> None:
    options = {"scope_expression": "headers['x-scope']"}
    async with webhook(hatchet, event_key=f"'{SCOPED_EVENT_KEY}'", **options) as made:
        target = url(hatchet, made.name)
        status, wanted = await post(target, b"{}", {"X-Scope": WANTED_SCOPE} | basic())
        assert status == 200
        status, other = await post(target, b"{}", {"X-Scope": "someone-else"} | basic())
        assert status == 200
        status, missing = await post(target, b"{}", basic())
        assert (status, missing) == (
            400,
            {"errors": [{"description": "Failed to evaluate scope expression"}]},
        )
        scopes = {e.metadata.id: e.scope for e in await events_of(hatchet, made.name)}
        assert scopes == {
            wanted["event"]["metadata"]["id"]: WANTED_SCOPE,
            other["event"]["metadata"]["id"]: "someone-else",
        }
        [run] = await runs_of_event(hatchet, wanted["event"]["metadata"]["id"])
        result = await result_of(hatchet, run.workflow_run_external_id)
        assert result["gated"] == {"gated": "ran"}
        assert await runs_of_event(hatchet, other["event"]["metadata"]["id"]) == []


def slack_auth() -> V1WebhookHMACAuth:
    return V1WebhookHMACAuth(
        algorithm=V1WebhookHMACAlgorithm.SHA256,
        encoding=V1WebhookHMACEncoding.HEX,
        signatureHeaderName="X-Slack-Signature",
        signingSecret=HMAC_SECRET,
    )


async def test_slack_challenge_and_signed_requests(hatchet: Hatchet) -> None:
    slack_key = "'t-webhook:' + input.event.type"
    async with webhook(hatchet, slack_auth(), V1WebhookSourceName.SLACK, slack_key) as made:
        target = url(hatchet, made.name)
        # URL verification is answered before any auth, and is no event.
        status, answer = await post(target, b'{"type": "url_verification", "challenge": "c-1"}')
        assert (status, answer) == (200, {"challenge": "c-1"})
        assert await events_of(hatchet, made.name) == []

        body = json.dumps({"event": {"type": "app_mention", "text": "hi"}}).encode()
        now = str(int(time.time()))
        signature = "v0=" + signed(f"v0:{now}:".encode() + body)
        headers = {"X-Slack-Request-Timestamp": now, "X-Slack-Signature": signature}
        status, answer = await post(target, body, headers)
        assert status == 200
        assert answer["event"]["key"] == "t-webhook:app_mention"

        stale = str(int(time.time()) - 600)
        stale_headers = {
            "X-Slack-Request-Timestamp": stale,
            "X-Slack-Signature": "v0=" + signed(f"v0:{stale}:".encode() + body),
        }
        status, answer = await post(target, body, stale_headers)
        assert (status, answer) == (
            403,
            {"errors": [{"description": "timestamp in header is out of range"}]},
        )
        assert len(await events_of(hatchet, made.name)) == 1


async def test_stripe_signatures(hatchet: Hatchet) -> None:
    auth = V1WebhookHMACAuth(
        algorithm=V1WebhookHMACAlgorithm.SHA256,
        encoding=V1WebhookHMACEncoding.HEX,
        signatureHeaderName="Stripe-Signature",
        signingSecret=HMAC_SECRET,
    )
    body = json.dumps({"type": "payment_intent.succeeded"}).encode()
    async with webhook(hatchet, auth, V1WebhookSourceName.STRIPE) as made:
        target, now = url(hatchet, made.name), int(time.time())
        good = f"t={now},v1={signed(f'{now}.'.encode() + body)}"
        status, answer = await post(target, body, {"Stripe-Signature": good})
        assert status == 200
        assert answer["event"]["key"] == "t-webhook:payment_intent.succeeded"
        forged = f"t={now},v1={signed(b'other')}"
        status, answer = await post(target, body, {"Stripe-Signature": forged})
        assert (status, answer) == (403, {"errors": [{"description": "invalid HMAC signature"}]})
        old = now - 3600
        stale = f"t={old},v1={signed(f'{old}.'.encode() + body)}"
        status, answer = await post(target, body, {"Stripe-Signature": stale})
        assert status == 400
        assert answer["errors"][0]["description"] == "timestamp in signature header is out of range"
        assert len(await events_of(hatchet, made.name)) == 1


async def test_form_bodies_and_bad_requests(hatchet: Hatchet) -> None:
    async with webhook(hatchet) as made:
        target = url(hatchet, made.name)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, answer = await post(target, b"type=form&who=a+b&who=c", form | basic())
        assert status == 200
        assert answer["event"]["payload"] == {"type": "form", "who": "a b"}  # first value
        status, answer = await post(target, b"not json", basic())
        assert (status, answer) == (
            400,
            {"errors": [{"description": "failed to unmarshal request body"}]},
        )
        status, answer = await post(target, b'{"kind": "no type"}', basic())
        assert (status, answer) == (
            400,
            {"errors": [{"description": "Event key evaluated to an empty string"}]},
        )
        elsewhere = target.replace(hatchet.tenant_id, str(uuid4()))
        assert await post(elsewhere, b"{}", basic()) == (404, {"message": "not found"})
        # The CRUD routes, unlike the receive route, need the bearer token.
        async with aiohttp.ClientSession() as session, session.get(target) as response:
            assert response.status == 401
    async with webhook(hatchet, event_key="input.count") as made:
        status, answer = await post(url(hatchet, made.name), b'{"count": 3}', basic())
        assert (status, answer) == (
            400,
            {"errors": [{"description": "Event key expression must evaluate to a string"}]},
        )


async def test_svix_signatures(hatchet: Hatchet) -> None:
    key = b"svix-signing-key"
    auth = V1WebhookHMACAuth(
        algorithm=V1WebhookHMACAlgorithm.SHA256,
        encoding=V1WebhookHMACEncoding.BASE64,
        signatureHeaderName="svix-signature",
        signingSecret="whsec_" + base64.b64encode(key).decode(),
    )
    body = json.dumps({"type": "svix"}).encode()
    async with webhook(hatchet, auth, V1WebhookSourceName.SVIX) as made:
        target, now = url(hatchet, made.name), int(time.time())

        def headers(stamp: int, message: bytes) -> dict[str, str]:
            digest = hmac.new(key, f"msg-1.{stamp}.".encode() + message, hashlib.sha256)
            signature = base64.b64encode(digest.digest()).decode()
            return {"webhook-id": "msg-1", "webhook-timestamp": str(stamp)} | {
                "webhook-signature": f"v1,{'A' * 44} v1,{signature}"  # any listed one may match
            }

        status, answer = await post(target, body, headers(now, body))
        assert status == 200
        assert answer["event"]["key"] == "t-webhook:svix"
        status, answer = await post(target, body, headers(now, b"tampered"))
        assert (status, answer) == (403, {"errors": [{"description": "invalid SVIX signature"}]})
        status, answer = await post(target, body, headers(now - 3600, body))
        assert (status, answer) == (
            400,
            {"errors": [{"description": "invalid timestamp header: message too old"}]},
        )
        assert len(await events_of(hatchet, made.name)) == 1


async def test_a_create_or_list_the_engine_refuses(hatchet: Hatchet) -> None:
    target = f"{hatchet.config.server_url}/api/v1/stable/tenants/{hatchet.tenant_id}/webhooks"
    bearer = {"Authorization": f"Bearer {hatchet.config.token}"}
    body = {"sourceName": "GENERIC", "name": f"wh-{uuid4()}", "eventKeyExpression": "'k'"}
    async with aiohttp.ClientSession(headers=bearer) as session:
        async with session.post(target, json=body) as response:
            assert response.status == 400
            assert await response.json() == {
                "errors": [
                    {
                        "description": "failed to construct webhook create params: failed to "
                        "get discriminator: authType field is missing in the request body"
                    }
                ]
            }
        async with session.post(target, json=body | {"authType": "OAUTH"}) as response:
            assert response.status == 400
        async with session.get(target, params={"limit": "0"}) as response:
            assert response.status == 400
            assert await response.json() == {"errors": [{"description": "failed to list webhooks"}]}
    assert (await hatchet.webhooks.aio_list(webhook_names=[body["name"]])).rows == []
