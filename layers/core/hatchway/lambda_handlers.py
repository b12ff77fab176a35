"""The WebSocket Lambda handlers (the authorizer's is ``authorizer.py``), each built
once per execution environment from its own settings model (validated there, at the cold start).

Each function's ``app.py`` is one line over these: they parse the event with
Powertools' ``APIGatewayWebSocketEvent`` and call the core (``websocket.py``).
Each is traced (``tracing.capture_handler``) and annotates its run (``runId``): the
message's run for a message, the authorizer's (the connection's token) otherwise.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from . import wiring
from .connections import Connections
from .observability import logger
from .protocol import parse_client_message
from .rate_limit import ConnectionRateLimiter
from .settings import (
    ConnectionSettings,
    MessageSettings,
    SubscribeSettings,
    load,
)
from .tracing import annotate_run, capture_handler, tracer
from .websocket import ConnectionLifecycle, WebSocketApi

Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def connect() -> Handler:
    lifecycle = ConnectionLifecycle(wiring.store(load(ConnectionSettings)))

    @logger.inject_lambda_context
    @capture_handler
    def handler(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        connection_id = APIGatewayWebSocketEvent(event).request_context.connection_id
        annotate_run(_authorized_run(event))
        return lifecycle.connect(connection_id, event["requestContext"].get("authorizer"))

    return handler


def disconnect() -> Handler:
    lifecycle = ConnectionLifecycle(wiring.store(load(ConnectionSettings)))

    @logger.inject_lambda_context
    @capture_handler
    def handler(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        annotate_run(_authorized_run(event))
        return lifecycle.disconnect(APIGatewayWebSocketEvent(event).request_context.connection_id)

    return handler


def _message_handler(api: WebSocketApi) -> Handler:
    """The message decides, so a client that sends the wrong thing to any route
    gets the protocol's error frame."""

    @logger.inject_lambda_context
    @capture_handler
    def handler(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        parsed = APIGatewayWebSocketEvent(event)
        body = _body_of(event)
        if not tracer.disabled:  # the message is parsed again only for the trace
            annotate_run(_run_of(body) or _authorized_run(event))
        return api.message(parsed.request_context.connection_id, body)

    return handler


def _authorized_run(event: dict[str, Any]) -> object:
    """The run the connection's token was for (the authorizer's context), if any."""
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    return authorizer.get("runId") if isinstance(authorizer, dict) else None


def _run_of(body: str | bytes | None) -> str | None:
    """The run a subscribe or unsubscribe names, as the core validates it (None for
    anything else: the core answers it; a trace annotation never fails a message)."""
    try:
        request = parse_client_message(body)
    except Exception:  # noqa: BLE001 - a bad message is the core's to answer
        return None
    run_id = getattr(request, "run_id", None)
    return run_id if isinstance(run_id, str) else None


def _body_of(event: dict[str, Any]) -> str | bytes | None:
    """The message as sent: a binary one as bytes (it may not be UTF-8; the core
    answers that), not through a decode that would raise here."""
    body = event.get("body")
    if body is not None and event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body


def subscribe() -> Handler:
    settings = load(SubscribeSettings)
    return _message_handler(
        WebSocketApi(
            wiring.store(settings),
            Connections(settings.management_api_url),
            tokens=lambda: wiring.run_tokens(settings),  # the secret is read on first use
            payloads=wiring.payloads(settings),
            limiter=_limiter(settings),
        )
    )


def message() -> Handler:
    """unsubscribe, ping and ``$default``."""
    settings = load(MessageSettings)
    return _message_handler(
        WebSocketApi(
            wiring.store(settings),
            Connections(settings.management_api_url),
            limiter=_limiter(settings),
        )
    )


def _limiter(settings: MessageSettings) -> ConnectionRateLimiter:
    return ConnectionRateLimiter(settings.message_rate_per_second, settings.message_burst)
