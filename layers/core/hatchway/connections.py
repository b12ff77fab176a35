"""The API Gateway management API adapter: post to a connection, with the errors
turned into the project's own (410 -> StaleConnectionError, ...).
This is the blocking client, for the Lambda functions (a message or two per
invocation); the relay's hot path has its own (``hatchway.relay.management_api``).
"""

from __future__ import annotations

import random
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .protocol import Frame, pack_messages


class DeliveryError(Exception):
    """A post that did not reach its connection."""


class StaleConnectionError(DeliveryError):
    """410 Gone: the connection no longer exists. Remove exactly that connection."""


class ThrottledError(DeliveryError):
    """429: the account's throttle or the client's buffer is full. Back off, then retry."""


class UnavailableError(DeliveryError):
    """5xx, or the endpoint could not be reached: the post may be retried as it is."""


class PayloadTooLargeError(DeliveryError):
    """413: the message was over 128 KB (a bug: messages are packed under the limit)."""


_ERRORS: dict[str, type[DeliveryError]] = {
    "GoneException": StaleConnectionError,
    "LimitExceededException": ThrottledError,
    "TooManyRequestsException": ThrottledError,
    "PayloadTooLargeException": PayloadTooLargeError,
}


class Connections:
    def __init__(self, endpoint_url: str | None = None, client: Any = None, pool: int = 50) -> None:  # noqa: ANN401
        # Retries are ours: a 429 must back off per connection without blocking others.
        self._client = client or boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint_url or None,
            # A post to a client that does not read must not hold a thread for long:
            # it times out, is retried, and a connection that stays stuck is shed.
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                max_pool_connections=pool,
                connect_timeout=5,
                read_timeout=10,
            ),
        )

    def close(self, connection_id: str) -> None:
        """Disconnect a client (DELETE @connections/{id}); API Gateway then sends
        ``$disconnect``. Gone already is fine."""
        try:
            self._client.delete_connection(ConnectionId=connection_id)
        except ClientError as error:
            status = _status(error)
            if status != 410:
                raise DeliveryError(f"{connection_id}: close failed ({status})") from error
        except BotoCoreError as error:
            raise UnavailableError(f"{connection_id}: {error}") from error

    def post(self, connection_id: str, data: str | bytes) -> None:
        try:
            self._client.post_to_connection(
                ConnectionId=connection_id, Data=data.encode() if isinstance(data, str) else data
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = _status(error)
            raise error_for(status, code)(f"{connection_id}: {code or status}") from error
        except BotoCoreError as error:  # no answer at all (connection refused, timeout)
            raise UnavailableError(f"{connection_id}: {error}") from error


def post_frames(
    connections: Connections,
    connection_id: str,
    frames: list[Frame],
    *,
    attempts: int = 5,
    retry_on: tuple[type[DeliveryError], ...] = (ThrottledError,),
) -> None:
    """``frames`` to one connection, packed into messages under API Gateway's limit,
    in order, from a Lambda function (blocking). A refusal in ``retry_on`` is tried
    again with jittered backoff, up to ``attempts``; any other raises at once."""
    for message in pack_messages(frames):
        for attempt in range(attempts):
            try:
                connections.post(connection_id, message)
                break
            except retry_on:
                if attempt == attempts - 1:
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))  # noqa: S311


def error_for(status: int, code: str) -> type[DeliveryError]:
    return _ERRORS.get(code) or {410: StaleConnectionError, 429: ThrottledError}.get(
        status, UnavailableError if status >= 500 else DeliveryError
    )


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
