"""Hatchway's wire protocol, version 1 (the spec: docs/protocol.md).

Frames are plain JSON-ready dicts: they are stored in the frame log and sent
as they are, so a replay is byte-for-byte what the live stream sent. Client
messages are validated with pydantic models.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_MESSAGE_BYTES = 128 * 1024  # API Gateway's WebSocket message limit
# A client message is small (the largest is a subscribe with its token): anything
# bigger, deeper or longer is refused before it costs a table read.
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024
MAX_CLIENT_DEPTH = 8
MAX_TOKEN_CHARS = 4096
MAX_SEQ = 10**10 - 1  # the frame log's sort keys hold ten digits (store.SEQ_DIGITS)
MAX_ECHO_CHARS = 128  # a client's value quoted back in an error, at most
MAX_ERROR_MESSAGE_CHARS = 1024
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
RUN_STATUSES = frozenset({"QUEUED", "RUNNING", *FINAL_STATUSES})

Frame = dict[str, Any]


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNKNOWN_WORKFLOW = "unknown_workflow"
    TOO_LARGE = "too_large"
    INVALID = "invalid"
    RATE_LIMITED = "rate_limited"
    TOO_SLOW = "too_slow"  # WebSocket only: the connection could not keep up and is closed
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    INTERNAL = "internal"


HTTP_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNKNOWN_WORKFLOW: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.INVALID: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_SLOW: 429,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.INTERNAL: 500,
}


class ProtocolError(Exception):
    """A request Hatchway refuses; becomes an ``error`` frame or an HTTP error body."""

    def __init__(self, code: ErrorCode, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.run_id = run_id


# -- client -> server ------------------------------------------------------------------

_CLIENT = ConfigDict(populate_by_name=True, extra="ignore", str_strip_whitespace=True)


class SubscribeMessage(BaseModel):
    model_config = _CLIENT
    action: Literal["subscribe"]
    run_id: str = Field(alias="runId", min_length=1, max_length=128)
    token: str = Field(min_length=1)  # too long: unauthorized, not bad_request (below)
    after: int = Field(default=0, ge=0, le=MAX_SEQ)


class UnsubscribeMessage(BaseModel):
    model_config = _CLIENT
    action: Literal["unsubscribe"]
    run_id: str = Field(alias="runId", min_length=1, max_length=128)


class PingMessage(BaseModel):
    model_config = _CLIENT
    action: Literal["ping"]


ClientMessage = Annotated[
    SubscribeMessage | UnsubscribeMessage | PingMessage, Field(discriminator="action")
]
_CLIENT_MESSAGE: TypeAdapter[SubscribeMessage | UnsubscribeMessage | PingMessage] = TypeAdapter(
    ClientMessage
)


def _echo(value: Any) -> str:  # noqa: ANN401 - whatever the client sent
    """A client's value for an error message: quoted, bounded, valid Unicode."""
    text = repr(value)
    if len(text) > MAX_ECHO_CHARS:
        text = text[: MAX_ECHO_CHARS - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _run_id_of(data: dict[str, Any]) -> str | None:
    """The runId to put on an error frame: only one that could be a run's."""
    run_id = data.get("runId")
    if isinstance(run_id, str) and 0 < len(run_id) <= 128:
        return run_id
    return None


def _too_deep(value: Any, limit: int) -> bool:  # noqa: ANN401 - any JSON value
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def parse_client_message(
    body: str | bytes | None,
) -> SubscribeMessage | UnsubscribeMessage | PingMessage:
    """Validate a client message; every way it can be wrong is a ``bad_request``
    (a token too long to be one is ``unauthorized``, a message too big ``too_large``).
    ``bytes``: a binary message, which must still be UTF-8 JSON text."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "message is not UTF-8 text") from None
    if body is None or not body.strip():
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty message")
    try:
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "message is not valid Unicode") from None
    if size > MAX_CLIENT_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message over {MAX_CLIENT_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "message is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "message must be a JSON object")
    if _too_deep(data, MAX_CLIENT_DEPTH):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"message nested over {MAX_CLIENT_DEPTH} deep")
    try:  # "\ud800" is valid JSON but no text: it could be neither stored nor sent
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "message is not valid Unicode") from None
    run_id = _run_id_of(data)
    action = data.get("action")
    if action not in ("subscribe", "unsubscribe", "ping"):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"unknown action {_echo(action)}: use subscribe, unsubscribe or ping",
            run_id=run_id,
        )
    token = data.get("token")
    if action == "subscribe" and isinstance(token, str) and len(token) > MAX_TOKEN_CHARS:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "the token is not a run token", run_id=run_id)
    try:
        return _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'message'}: {e['msg']}"
            for e in error.errors()
        )
        raise ProtocolError(ErrorCode.BAD_REQUEST, problems, run_id=run_id) from None


# -- server -> client ------------------------------------------------------------------


def chunk_frame(run_id: str, seq: int, data: str) -> Frame:
    return {"type": "chunk", "runId": run_id, "seq": seq, "data": data}


def status_frame(
    run_id: str,
    seq: int,
    status: str,
    *,
    output: Any = None,  # noqa: ANN401 - a task's output is any JSON value
    error: str | None = None,
) -> Frame:
    frame: Frame = {
        "type": "status",
        "runId": run_id,
        "seq": seq,
        "status": status,
        "final": status in FINAL_STATUSES,
    }
    if output is not None:
        frame["output"] = output
    if error is not None:
        frame["error"] = error
    return frame


def gap_frame(run_id: str, seq: int, reason: str, skipped: tuple[int, int] | None = None) -> Frame:
    """``skipped``: the seqs ``(first, last)`` just before this one that no frame in
    the log carries (a relay died before logging frames it may have sent live)."""
    frame: Frame = {"type": "gap", "runId": run_id, "seq": seq, "reason": reason}
    if skipped is not None:
        frame["skipped"] = list(skipped)
    return frame


def subscribed_frame(run_id: str, status: str, last_seq: int) -> Frame:
    return {"type": "subscribed", "runId": run_id, "status": status, "lastSeq": last_seq}


def unsubscribed_frame(run_id: str) -> Frame:
    return {"type": "unsubscribed", "runId": run_id}


def pong_frame() -> Frame:
    return {"type": "pong"}


def error_frame(code: ErrorCode, message: str, run_id: str | None = None) -> Frame:
    if len(message) > MAX_ERROR_MESSAGE_CHARS:  # always far under the message limit
        message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    frame: Frame = {"type": "error", "code": code.value, "message": message}
    if run_id is not None:
        frame["runId"] = run_id
    return frame


def token_expired_frame(run_id: str, after: int) -> Frame:
    """What a subscriber whose run token expired is told: how to go on, with no loss."""
    return error_frame(
        ErrorCode.UNAUTHORIZED,
        f"the run token expired; subscribe again with a fresh token and after={after}",
        run_id,
    )


def error_body(code: ErrorCode, message: str) -> dict[str, Any]:
    """The HTTP API's error shape."""
    return {"error": {"code": code.value, "message": message}}


def is_final(frame: Frame) -> bool:
    return frame.get("type") == "status" and bool(frame.get("final"))


def encode(value: Any) -> str:  # noqa: ANN401 - any JSON value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def pack_messages(frames: list[Frame], limit: int = MAX_MESSAGE_BYTES) -> list[str]:
    """Frames in order as WebSocket messages of at most ``limit`` bytes: a lone frame
    goes as itself, several as ``{"type": "batch", "frames": [...]}``.

    A frame that alone exceeds the limit is a caller's bug (large payloads go to
    S3 before they get here): ValueError.
    """
    messages: list[str] = []
    pending: list[str] = []
    pending_bytes = 0
    overhead = len('{"type":"batch","frames":[]}')

    def flush() -> None:
        if len(pending) == 1:
            messages.append(pending[0])
        elif pending:
            messages.append('{"type":"batch","frames":[' + ",".join(pending) + "]}")

    for frame in frames:
        encoded = encode(frame)
        size = len(encoded.encode())
        if size > limit:
            raise ValueError(f"frame seq {frame.get('seq')} is {size} bytes, over {limit}")
        if pending and pending_bytes + size + 1 + overhead > limit:
            flush()
            pending, pending_bytes = [], 0
        pending.append(encoded)
        pending_bytes += size + 1
    flush()
    return messages
