"""The WebSocket Lambda handlers, built once per execution environment.

Each function's ``app.py`` is one line over these: they parse the event with
Powertools' ``APIGatewayWebSocketEvent`` and call the core (``websocket.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from .observability import logger
from .settings import settings
from .websocket import WebSocketApi
from .wiring import websocket_api

Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def _api() -> WebSocketApi:
    return websocket_api(settings())


def authorizer() -> Handler:
    api = _api()

    @logger.inject_lambda_context
    def handler(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        return api.authorize(event)

    return handler


def connect() -> Handler:
    api = _api()

    @logger.inject_lambda_context
    def handler(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        connection_id = APIGatewayWebSocketEvent(event).request_context.connection_id
        return api.connect(connection_id, event["requestContext"].get("authorizer"))

    return handler


def disconnect() -> Handler:
    api = _api()

    @logger.inject_lambda_context
    def handler(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        return api.disconnect(APIGatewayWebSocketEvent(event).request_context.connection_id)

    return handler


def message() -> Handler:
    """subscribe, unsubscribe, ping and $default: the message decides, so a client
    that sends the wrong thing to any route gets the protocol's error frame."""
    api = _api()

    @logger.inject_lambda_context
    def handler(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        parsed = APIGatewayWebSocketEvent(event)
        return api.message(parsed.request_context.connection_id, parsed.decoded_body)

    return handler
