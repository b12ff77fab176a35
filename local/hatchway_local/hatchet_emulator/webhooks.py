"""Incoming webhooks (``hatchet.webhooks.*``): the CRUD endpoints and the public receive
endpoint that turns an HTTP request into a pushed event, as Hatchet's engine does in

- api/v1/server/handlers/v1/webhooks/{create,list,get,update,delete}.go, with
  pkg/repository/webhooks.go and pkg/repository/sqlcv1/webhooks.sql (list newest first,
  up to 20000; an update keeps what it is not given, an empty scope expression clears
  it) and the table's constraints in sql/schema/v1-core.sql (names unique per tenant,
  non-empty event key and scope expressions): what the database refuses, the engine
  answers with a bare 500;
- api/v1/server/handlers/v1/webhooks/receive.go: the Slack URL-verification challenge
  (answered before any auth), the auth of the webhook's source (GENERIC, GITHUB and
  LINEAR by their basic, API-key or HMAC auth; SLACK, STRIPE and SVIX by their own
  signature schemes), the body as JSON or form fields, the static payload over it, the
  event key and scope CEL expressions over ``input`` and ``headers``
  (``EvaluateIncomingWebhookExpression``, internal/cel/cel.go) and the event pushed
  with the webhook's name as ``triggeringWebhookName``;
- api/v1/server/oas/transformers/v1/webhooks.go: the V1Webhook and V1WebhookResponse
  shapes;
- api/v1/server/middleware/populator/populator.go: an unknown webhook (or tenant) is
  404 ``{"message": "not found"}`` on every route, the receive route included.

Not emulated: the tenant's incoming-webhook limit (the engine enforces it only with
limits turned on), the receive rate limit, and the validation-failure and CEL-failure
records the engine keeps for its dashboard (they are logged instead).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.typedefs import Handler

from hatchway.observability import logger

from . import expressions, rest_api
from .durable import state_for as durable_state
from .engine import Engine, utcnow
from .errors import EngineError

SOURCE_NAMES = frozenset({"GENERIC", "GITHUB", "STRIPE", "SLACK", "LINEAR", "SVIX"})
_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
    "MD5": hashlib.md5,
}
_ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "HEX": lambda digest: digest.hex().encode(),
    "BASE64": base64.b64encode,
    "BASE64URL": base64.urlsafe_b64encode,
}
# The auth object's fields per auth type, and which of them the repository's validator
# requires to be non-empty (secrets are stored encrypted, so an empty one passes).
_AUTH_FIELDS = {
    "BASIC": ("basic auth", ("username", "password"), ("username",)),
    "API_KEY": ("api key auth", ("headerName", "apiKey"), ("headerName",)),
    "HMAC": (
        "hmac auth",
        ("algorithm", "encoding", "signatureHeaderName", "signingSecret"),
        ("algorithm", "encoding", "signatureHeaderName"),
    ),
}
_NIL_UUID = str(uuid.UUID(int=0))  # ToV1Webhook leaves the id empty on purpose
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(eq=False, slots=True)
class Webhook:
    name: str
    source_name: str
    event_key_expression: str
    auth_type: str
    auth: dict[str, str]
    scope_expression: str | None = None
    static_payload: dict[str, Any] | None = None
    return_event_as_response_payload: bool = True
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


class RefusedError(Exception):
    """A request the engine answers with ``status`` and an error body."""

    def __init__(self, status: int, description: str, *, echo: bool = False) -> None:
        super().__init__(description)
        self.status = status
        self.echo = echo  # echo's own error shape ({"message"}) rather than APIErrors

    def response(self) -> web.Response:
        if self.status == 500:  # the handler returned an error: echo hides it
            logger.warning("webhook request failed", reason=str(self))
            return web.json_response({"message": "Internal Server Error"}, status=500)
        if self.echo:
            return web.json_response({"message": str(self)}, status=self.status)
        return rest_api._error(self.status, str(self))


_NOT_FOUND = RefusedError(404, "not found", echo=True)

_WEBHOOKS: weakref.WeakKeyDictionary[Engine, dict[str, Webhook]] = weakref.WeakKeyDictionary()


def webhooks_of(engine: Engine) -> dict[str, Webhook]:
    """The engine's incoming webhooks by name (made on first use)."""
    return _WEBHOOKS.setdefault(engine, {})


def _engine(request: web.Request) -> Engine:
    return request.app[rest_api.EMULATOR_KEY].engine


def _webhook(request: web.Request) -> Webhook:
    webhook = webhooks_of(_engine(request)).get(request.match_info["webhook"])
    if webhook is None:
        raise _NOT_FOUND
    return webhook


def _shape(webhook: Webhook, tenant_id: str) -> dict[str, Any]:
    """``ToV1Webhook``: no secrets, a nil id, the static payload only when set."""
    shape: dict[str, Any] = {
        "metadata": {
            "id": _NIL_UUID,
            "createdAt": webhook.created_at.isoformat(),
            "updatedAt": webhook.updated_at.isoformat(),
        },
        "tenantId": tenant_id,
        "name": webhook.name,
        "sourceName": webhook.source_name,
        "eventKeyExpression": webhook.event_key_expression,
        "authType": webhook.auth_type,
        "returnEventAsResponsePayload": webhook.return_event_as_response_payload,
    }
    if webhook.scope_expression is not None:
        shape["scopeExpression"] = webhook.scope_expression
    if webhook.static_payload is not None:  # an empty one is stored, and shown
        shape["staticPayload"] = webhook.static_payload
    return shape


async def _json(request: web.Request) -> object:
    try:
        return json.loads(await request.read())
    except ValueError as error:  # echo's binder
        raise RefusedError(400, f"Syntax error: {error}", echo=True) from error


# -- CRUD --------------------------------------------------------------------------------


def _typed(body: dict[str, Any], what: str, *, with_auth: bool = True) -> None:
    """What decoding the body into the engine's request struct refuses."""
    for name in ("name", "sourceName", "eventKeyExpression", "scopeExpression"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise RefusedError(400, f"failed to parse {what}: {name} must be a string")
    if body.get("staticPayload") is not None and not isinstance(body["staticPayload"], dict):
        raise RefusedError(400, f"failed to parse {what}: staticPayload must be an object")
    flag = body.get("returnEventAsResponsePayload")
    if flag is not None and not isinstance(flag, bool):
        message = f"failed to parse {what}: returnEventAsResponsePayload must be a bool"
        raise RefusedError(400, message)
    auth = body.get("auth") if with_auth else None  # an update has no auth to decode
    if auth is not None and not isinstance(auth, dict):
        raise RefusedError(400, f"failed to parse {what}: auth must be an object")
    for name, value in (auth or {}).items():
        if value is not None and not isinstance(value, str):
            raise RefusedError(400, f"failed to parse {what}: auth.{name} must be a string")


def _new_webhook(body: object) -> Webhook:
    """``constructCreateOpts`` (400 with its reason) then the repository (500)."""
    prefix = "failed to construct webhook create params: "
    if not isinstance(body, dict):
        raise RefusedError(
            400, prefix + "failed to get discriminator: failed to unmarshal request body"
        )
    if "authType" not in body:
        raise RefusedError(
            400,
            prefix + "failed to get discriminator: authType field is missing in the request body",
        )
    auth_type = body["authType"]
    if not isinstance(auth_type, str):  # the engine's type assertion panics
        raise RefusedError(500, "authType is not a string")
    if not auth_type:
        raise RefusedError(400, prefix + "failed to get discriminator: invalid auth type: ")
    if auth_type not in _AUTH_FIELDS:
        raise RefusedError(400, prefix + f"unsupported auth type: {auth_type}")
    what, names, required = _AUTH_FIELDS[auth_type]
    try:
        _typed(body, what)
    except RefusedError as refused:
        raise RefusedError(400, prefix + str(refused)) from None
    given = body.get("auth") or {}
    auth = {name: given.get(name) or "" for name in names}
    name = body.get("name") or ""
    source = body.get("sourceName") or ""
    expression = body.get("eventKeyExpression") or ""
    scope = body.get("scopeExpression")
    if not name or any(not auth[n] for n in required):
        raise RefusedError(500, "the repository's validation failed")
    if source not in SOURCE_NAMES:
        raise RefusedError(500, f"invalid source name {source!r}")
    if auth_type == "HMAC" and (
        auth["algorithm"] not in _ALGORITHMS or auth["encoding"] not in _ENCODINGS
    ):
        raise RefusedError(500, "invalid HMAC algorithm or encoding")
    if not expression or scope == "":
        raise RefusedError(500, "the event key and scope expressions must not be empty")
    flag = body.get("returnEventAsResponsePayload")
    return Webhook(
        name=name,
        source_name=source,
        event_key_expression=expression,
        auth_type=auth_type,
        auth=auth,
        scope_expression=scope,
        static_payload=body.get("staticPayload"),
        return_event_as_response_payload=True if flag is None else flag,
    )


async def create_webhook(request: web.Request) -> web.Response:
    engine = _engine(request)
    webhook = _new_webhook(await _json(request))
    webhooks = webhooks_of(engine)
    if webhook.name in webhooks:  # the table's primary key
        raise RefusedError(500, f"a webhook named {webhook.name!r} exists")
    webhooks[webhook.name] = webhook
    return web.json_response(_shape(webhook, engine.tenant_id))


def _query_int(request: web.Request, name: str, least: int) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    if not _INTEGER.fullmatch(text):
        raise RefusedError(400, f"Invalid format for parameter {name}: {text!r}", echo=True)
    value = int(text)
    if value < least:  # ListWebhooksOpts: limit min=1, offset min=0
        raise RefusedError(400, "failed to list webhooks")
    return value


async def list_webhooks(request: web.Request) -> web.Response:
    engine = _engine(request)
    limit = _query_int(request, "limit", 1)
    offset = _query_int(request, "offset", 0) or 0
    sources = set(request.query.getall("sourceNames", []))
    names = set(request.query.getall("webhookNames", []))
    if not sources <= SOURCE_NAMES:
        raise RefusedError(400, "failed to list webhooks")
    matching = sorted(
        (
            w
            for w in webhooks_of(engine).values()
            if (not sources or w.source_name in sources) and (not names or w.name in names)
        ),
        key=lambda w: w.created_at,
        reverse=True,
    )
    page = matching[offset : offset + (limit if limit is not None else 20000)]
    return web.json_response({"rows": [_shape(w, engine.tenant_id) for w in page]})


async def get_webhook(request: web.Request) -> web.Response:
    return web.json_response(_shape(_webhook(request), _engine(request).tenant_id))


async def update_webhook(request: web.Request) -> web.Response:
    webhook = _webhook(request)
    body = await _json(request)
    if not isinstance(body, dict):
        raise RefusedError(400, "Unmarshal type error: the body must be an object", echo=True)
    try:
        _typed(body, "update", with_auth=False)
    except RefusedError as refused:
        raise RefusedError(400, str(refused), echo=True) from None
    expression = body.get("eventKeyExpression")
    if expression == "":  # CHECK (LENGTH(event_key_expression) > 0)
        raise RefusedError(400, "failed to update webhook")
    if expression is not None:
        webhook.event_key_expression = expression
    scope = body.get("scopeExpression")
    if scope is not None:  # NULLIF(COALESCE(...), ''): an empty one clears it
        webhook.scope_expression = scope or None
    if body.get("staticPayload") is not None:
        webhook.static_payload = body["staticPayload"]
    if body.get("returnEventAsResponsePayload") is not None:
        webhook.return_event_as_response_payload = body["returnEventAsResponsePayload"]
    webhook.updated_at = utcnow()
    return web.json_response(_shape(webhook, _engine(request).tenant_id))


async def delete_webhook(request: web.Request) -> web.Response:
    webhook = _webhook(request)
    del webhooks_of(_engine(request))[webhook.name]
    return web.json_response(_shape(webhook, _engine(request).tenant_id))


# -- receive: auth -----------------------------------------------------------------------


def _same(given: str, expected: str) -> bool:
    """Constant-time, on the bytes as they came (aiohttp keeps undecodable bytes escaped)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _sign(payload: bytes, secret: str, algorithm: str, encoding: str) -> str:
    if algorithm not in _ALGORITHMS or encoding not in _ENCODINGS:
        raise RefusedError(500, f"unsupported HMAC algorithm or encoding: {algorithm} {encoding}")
    digest = hmac.new(secret.encode(), payload, _ALGORITHMS[algorithm]).digest()
    return _ENCODINGS[encoding](digest).decode()


def _strip(signature: str) -> str:
    for prefix in ("sha1=", "sha256=", "sha512=", "md5="):  # one TrimPrefix each, in order
        signature = signature.removeprefix(prefix)
    return signature


def _signatures_match(provided: str, expected: str) -> bool:
    return _same(_strip(provided.strip()), _strip(expected.strip()))


def _secret(webhook: Webhook) -> str:
    """The HMAC signing secret; a webhook made with another auth type has none, and the
    engine fails decrypting it."""
    if webhook.auth_type != "HMAC":
        raise RefusedError(500, "failed to decrypt HMAC signing secret")
    return webhook.auth["signingSecret"]


def _hmac_setting(webhook: Webhook, name: str) -> str:
    return webhook.auth.get(name, "") if webhook.auth_type == "HMAC" else ""


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """Go's ``Request.BasicAuth``."""
    if len(header) < 6 or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


def _validate_generic(webhook: Webhook, body: bytes, request: web.Request) -> None:
    auth = webhook.auth
    if webhook.auth_type == "BASIC":
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials is None:
            raise RefusedError(403, "missing or invalid authorization header")
        username_ok = _same(credentials[0], auth["username"])
        password_ok = _same(credentials[1], auth["password"])
        if not (username_ok and password_ok):
            raise RefusedError(403, "invalid basic auth credentials")
    elif webhook.auth_type == "API_KEY":
        header = auth["headerName"]
        key = request.headers.get(header, "")
        if not key:
            raise RefusedError(403, f"missing or invalid api key header: {header}")
        if not _same(key, auth["apiKey"]):
            raise RefusedError(403, f"invalid api key: {header}")
    else:
        header = auth["signatureHeaderName"]
        signature = request.headers.get(header, "")
        if not signature:
            raise RefusedError(403, f"missing or invalid signature header: {header}")
        expected = _sign(body, auth["signingSecret"], auth["algorithm"], auth["encoding"])
        if not _signatures_match(signature, expected):
            raise RefusedError(403, "invalid HMAC signature")


def _validate_slack(webhook: Webhook, body: bytes, request: web.Request) -> None:
    stamp = request.headers.get("X-Slack-Request-Timestamp", "")
    if not stamp:
        raise RefusedError(403, "missing or invalid timestamp header: X-Slack-Request-Timestamp")
    if not _INTEGER.fullmatch(stamp.strip()):
        raise RefusedError(403, "Invalid timestamp in header")
    timestamp = int(stamp.strip())
    if timestamp < time.time() - 5 * 60:  # only a stale one is refused, not a future one
        raise RefusedError(403, "timestamp in header is out of range")
    secret = _secret(webhook)
    digest = _sign(
        f"v0:{timestamp}:".encode() + body,
        secret,
        _hmac_setting(webhook, "algorithm"),
        _hmac_setting(webhook, "encoding"),
    )
    header = _hmac_setting(webhook, "signatureHeaderName")
    signature = request.headers.get(header, "") if header else ""
    if not signature:
        raise RefusedError(403, f"missing or invalid signature header: {header}")
    if not _signatures_match(signature, f"v0={digest}"):
        raise RefusedError(403, "invalid HMAC signature")


def _validate_stripe(webhook: Webhook, body: bytes, request: web.Request) -> None:
    header = _hmac_setting(webhook, "signatureHeaderName")
    value = request.headers.get(header, "") if header else ""
    missing = RefusedError(400, f"missing or invalid signature header: {header}")
    if not value:
        raise missing
    parts: dict[str, str] = {}
    for item in value.split(","):
        pieces = item.split("=")
        if len(pieces) != 2:
            raise RefusedError(400, f"invalid signature header format: {header}")
        parts[pieces[0].strip()] = pieces[1].strip()
    stamp, signature = parts.get("t", ""), parts.get("v1", "")
    if not stamp or not signature:
        raise missing
    if not _INTEGER.fullmatch(stamp):
        raise RefusedError(400, "Invalid timestamp in signature header")
    if int(stamp) < time.time() - 10 * 60:
        raise RefusedError(400, "timestamp in signature header is out of range")
    secret = _secret(webhook)
    algorithm, encoding = _hmac_setting(webhook, "algorithm"), _hmac_setting(webhook, "encoding")
    if algorithm not in _ALGORITHMS or encoding not in _ENCODINGS:
        raise RefusedError(403, "failed to compute HMAC signature")  # 403 here, as on the engine
    expected = _sign(f"{stamp}.".encode() + body, secret, algorithm, encoding)
    if not _signatures_match(signature, expected):
        raise RefusedError(403, "invalid HMAC signature")


def _validate_svix(webhook: Webhook, body: bytes, request: web.Request) -> None:
    secret = _secret(webhook)
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError) as error:
        raise RefusedError(500, f"failed to decode SVIX signing secret: {error}") from error
    headers = request.headers
    names = ("svix-id", "svix-signature", "svix-timestamp")
    values = [headers.get(n, "") for n in names]
    if not all(values):
        values = [headers.get(n.replace("svix-", "webhook-"), "") for n in names]
        if not all(values):
            raise RefusedError(400, "missing or invalid headers")
    message_id, signatures, stamp = values
    if not _INTEGER.fullmatch(stamp):
        raise RefusedError(400, "invalid timestamp header: invalid headers")
    timestamp, now = int(stamp), time.time()
    if now - timestamp > 5 * 60:
        raise RefusedError(400, "invalid timestamp header: message too old")
    if timestamp > now + 5 * 60:
        raise RefusedError(400, "invalid timestamp header: message too new")
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for versioned in signatures.split(" "):
        pieces = versioned.split(",")
        if (
            len(pieces) >= 2
            and pieces[0] == "v1"
            and hmac.compare_digest(pieces[1].encode("utf-8", "surrogateescape"), expected)
        ):
            return
    raise RefusedError(403, "invalid SVIX signature")


_VALIDATORS = {
    "SLACK": _validate_slack,
    "STRIPE": _validate_stripe,
    "SVIX": _validate_svix,
    "GITHUB": _validate_generic,
    "LINEAR": _validate_generic,
    "GENERIC": _validate_generic,
}


# -- receive: payload, expressions, event ------------------------------------------------


def _challenge(webhook: Webhook, body: bytes) -> str | None:
    """Slack's URL verification: a JSON body with a non-empty ``challenge``."""
    if webhook.source_name != "SLACK":
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    challenge = parsed.get("challenge") if isinstance(parsed, dict) else None
    return challenge if isinstance(challenge, str) and challenge else None


def _form(webhook: Webhook, body: bytes) -> dict[str, Any]:
    text = body.decode("utf-8", "replace")
    if ";" in text or _BAD_ESCAPE.search(text):  # what Go's url.ParseQuery refuses
        raise RefusedError(400, "Failed to parse form data")
    fields: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        fields.setdefault(key, value)  # the first value of each field
    if webhook.source_name == "SLACK" and fields.get("payload"):
        try:  # an interactive payload: JSON in the 'payload' field
            parsed = json.loads(fields["payload"])
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise RefusedError(400, "Failed to unmarshal payload parameter as JSON")
        return parsed
    if webhook.source_name in ("SLACK", "GENERIC"):
        return fields
    raise RefusedError(
        400, f"form-encoded requests are not supported for webhook source: {webhook.source_name}"
    )


def _payload(webhook: Webhook, body: bytes, request: web.Request) -> dict[str, Any]:
    if "application/x-www-form-urlencoded" in request.headers.get("Content-Type", ""):
        payload = _form(webhook, body)
    else:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = []
        if parsed is not None and not isinstance(parsed, dict):
            raise RefusedError(400, "failed to unmarshal request body")
        payload = parsed or {}  # JSON null: an empty payload
    # The engine drops its own path parameters' names from the payload.
    payload.pop("tenant", None)
    payload.pop("v1-webhook", None)
    return payload | (webhook.static_payload or {})  # the static payload wins


class ExpressionError(Exception):
    def __init__(self, message: str, *, not_a_string: bool = False) -> None:
        super().__init__(message)
        self.not_a_string = not_a_string


def _evaluate(expression: str, payload: dict[str, Any], headers: dict[str, str]) -> str:
    try:
        value = expressions.evaluate(expression, {"input": payload, "headers": headers})
    except EngineError as error:  # it does not parse, or fails
        raise ExpressionError(str(error)) from error
    if not isinstance(value, str):
        message = f"expression did not evaluate to a string: got {type(value).__name__}"
        raise ExpressionError(message, not_a_string=True)
    return value


def _key_and_scope(
    webhook: Webhook, payload: dict[str, Any], request: web.Request
) -> tuple[str, str | None]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower() != "host":  # Go keeps the host out of the header map
            headers.setdefault(name.lower(), value)
    try:
        key = _evaluate(webhook.event_key_expression, payload, headers)
    except ExpressionError as error:
        logger.warning("webhook event key failed", webhook=webhook.name, error=str(error))
        if error.not_a_string:
            raise RefusedError(400, "Event key expression must evaluate to a string") from error
        # The engine's message for any other failure, as its key is then always empty.
        raise RefusedError(400, "Event key evaluated to an empty string") from error
    if not webhook.scope_expression:
        return key, None
    try:
        return key, _evaluate(webhook.scope_expression, payload, headers)
    except ExpressionError as error:
        logger.warning("webhook scope failed", webhook=webhook.name, error=str(error))
        raise RefusedError(400, "Failed to evaluate scope expression") from error


async def _receive(request: web.Request) -> web.Response:
    engine = _engine(request)
    tenant = request.match_info["tenant_id"]
    try:
        uuid.UUID(tenant)
    except ValueError:
        raise RefusedError(400, "invalid tenant id", echo=True) from None
    if tenant != engine.tenant_id:
        raise _NOT_FOUND
    webhook = _webhook(request)
    body = await request.read()
    challenge = _challenge(webhook, body)
    if challenge is not None:
        return web.json_response({"challenge": challenge})
    try:
        _VALIDATORS[webhook.source_name](webhook, body, request)
    except RefusedError as refused:
        logger.info("webhook request refused", webhook=webhook.name, reason=str(refused))
        raise
    payload = _payload(webhook, body, request)
    key, scope = _key_and_scope(webhook, payload, request)
    event_id = await engine.push_event(
        key, payload, {}, scope=scope, triggering_webhook_name=webhook.name
    )
    # What a pushed event also does: meet waiting user-event conditions (grpc_api._push).
    engine.match_user_event(key, payload, scope or "")
    durable_state(engine).match_user_event(key, payload, scope or "")
    if not webhook.return_event_as_response_payload:
        return web.Response(status=204)
    event = next(e for e in reversed(engine.events) if e.event_id == event_id)
    seen = event.seen_at.isoformat()
    return web.json_response(
        {
            "message": "ok",
            "event": {  # ToV1WebhookResponse: no metadata was given, so none is shown
                "metadata": {"id": event.event_id, "createdAt": seen, "updatedAt": seen},
                "key": event.key,
                "tenantId": engine.tenant_id,
                "payload": event.payload,
            },
        }
    )


def _answering_refusals(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Handler:
    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except RefusedError as refused:
            return refused.response()

    return answer


receive_webhook = _answering_refusals(_receive)

# The receive endpoint is public: the webhook's own auth stands in for the bearer token.
PUBLIC_HANDLERS = frozenset({receive_webhook})

_PREFIX = "/api/v1/stable/tenants/{tenant_id}/webhooks"


def routes() -> list[web.RouteDef]:
    return [
        web.get(_PREFIX, _answering_refusals(list_webhooks)),
        web.post(_PREFIX, _answering_refusals(create_webhook)),
        web.get(f"{_PREFIX}/{{webhook}}", _answering_refusals(get_webhook)),
        web.patch(f"{_PREFIX}/{{webhook}}", _answering_refusals(update_webhook)),
        web.delete(f"{_PREFIX}/{{webhook}}", _answering_refusals(delete_webhook)),
        web.post(f"{_PREFIX}/{{webhook}}", receive_webhook),
    ]
