"""Events shaped as API Gateway sends them to Lambda: WebSocket CONNECT, MESSAGE
and DISCONNECT, the REQUEST authorizer's, and HTTP API payload format 2.0.
The samples in ``events/`` have these shapes; a test checks they stay in step."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from multidict import MultiMapping

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"


def _request_time(now: datetime) -> str:
    return now.strftime("%d/%b/%Y:%H:%M:%S +0000")


def _epoch_ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


def _single_and_multi(
    items: MultiMapping[str],
) -> tuple[dict[str, str], dict[str, list[str]]]:
    multi: dict[str, list[str]] = {}
    for key, value in items.items():
        multi.setdefault(key, []).append(value)
    return {key: values[-1] for key, values in multi.items()}, multi


@dataclass(frozen=True)
class WebSocketApi:
    api_id: str
    stage: str
    domain_name: str  # host:port here; <apiId>.execute-api.<region>.amazonaws.com on AWS


@dataclass
class ConnectionInfo:
    connection_id: str
    source_ip: str
    user_agent: str
    headers: MultiMapping[str]
    query: MultiMapping[str]
    connected_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    authorizer: dict[str, Any] | None = None


def _websocket_context(
    api: WebSocketApi,
    connection: ConnectionInfo,
    route_key: str,
    event_type: str,
    now: datetime,
) -> dict[str, Any]:
    context: dict[str, Any] = {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": base64.b64encode(uuid.uuid4().bytes[:12]).decode(),
        "requestTime": _request_time(now),
        "messageDirection": "IN",
        "stage": api.stage,
        "connectedAt": _epoch_ms(connection.connected_at),
        "requestTimeEpoch": _epoch_ms(now),
        "identity": {"sourceIp": connection.source_ip, "userAgent": connection.user_agent},
        "requestId": base64.b64encode(uuid.uuid4().bytes[:12]).decode(),
        "domainName": api.domain_name,
        "connectionId": connection.connection_id,
        "apiId": api.api_id,
    }
    if connection.authorizer is not None:
        context["authorizer"] = connection.authorizer
    return context


def websocket_connect_event(api: WebSocketApi, connection: ConnectionInfo) -> dict[str, Any]:
    now = datetime.now(UTC)
    headers, multi_headers = _single_and_multi(connection.headers)
    query, multi_query = _single_and_multi(connection.query)
    event: dict[str, Any] = {
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "requestContext": _websocket_context(api, connection, "$connect", "CONNECT", now),
        "isBase64Encoded": False,
    }
    if query:  # absent, not empty, when the URL has no query string (as on AWS)
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = multi_query
    return event


def websocket_message_event(
    api: WebSocketApi, connection: ConnectionInfo, route_key: str, body: str | bytes
) -> dict[str, Any]:
    now = datetime.now(UTC)
    context = _websocket_context(api, connection, route_key, "MESSAGE", now)
    context["messageId"] = base64.b64encode(uuid.uuid4().bytes[:12]).decode()
    if isinstance(body, bytes):
        return {
            "requestContext": context,
            "body": base64.b64encode(body).decode(),
            "isBase64Encoded": True,
        }
    return {"requestContext": context, "body": body, "isBase64Encoded": False}


def websocket_disconnect_event(
    api: WebSocketApi, connection: ConnectionInfo, status_code: int, reason: str
) -> dict[str, Any]:
    now = datetime.now(UTC)
    context = _websocket_context(api, connection, "$disconnect", "DISCONNECT", now)
    context["disconnectStatusCode"] = status_code
    context["disconnectReason"] = reason
    headers = {"Host": api.domain_name, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
    return {
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
        "requestContext": context,
        "isBase64Encoded": False,
    }


def authorizer_event(api: WebSocketApi, connection: ConnectionInfo) -> dict[str, Any]:
    event = websocket_connect_event(api, connection)
    event["type"] = "REQUEST"
    event["methodArn"] = (
        f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{api.api_id}/{api.stage}/$connect"
    )
    event["stageVariables"] = {}
    return event


def http_api_event(
    *,
    api_id: str,
    domain_name: str,
    route_key: str,
    method: str,
    path: str,
    raw_query: str,
    headers: MultiMapping[str],
    query: MultiMapping[str],
    path_parameters: dict[str, str],
    body: bytes,
    source_ip: str,
) -> dict[str, Any]:
    """HTTP API payload format 2.0: header names lower-cased, repeated ones comma-joined."""
    now = datetime.now(UTC)
    joined_headers: dict[str, str] = {}
    cookies: list[str] = []
    for key, value in headers.items():
        name = key.lower()
        if name == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        joined_headers[name] = (
            f"{joined_headers[name]},{value}" if name in joined_headers else value
        )
    joined_query: dict[str, str] = {}
    for key, value in query.items():
        joined_query[key] = f"{joined_query[key]},{value}" if key in joined_query else value
    try:
        text_body: str | None = body.decode("utf-8") if body else None
        binary = False
    except UnicodeDecodeError:
        text_body, binary = base64.b64encode(body).decode(), True
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": joined_headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": api_id,
            "domainName": domain_name,
            "domainPrefix": domain_name.split(".", maxsplit=1)[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": joined_headers.get("user-agent", ""),
            },
            "requestId": base64.b64encode(uuid.uuid4().bytes[:12]).decode(),
            "routeKey": route_key,
            "stage": "$default",
            "time": _request_time(now),
            "timeEpoch": _epoch_ms(now),
        },
        "isBase64Encoded": binary,
    }
    if cookies:
        event["cookies"] = cookies
    if joined_query:
        event["queryStringParameters"] = joined_query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if text_body is not None:
        event["body"] = text_body
    return event
