"""The client's frames, states and errors (docs/protocol.md's shapes, as dicts)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

# A frame exactly as docs/protocol.md has it on the wire: a JSON object, camelCase keys.
Frame = dict[str, Any]
ChunkFrame = Frame  # {"type": "chunk", "runId", "seq", "data"} or by reference: url, size, ...
FileFrame = Frame  # {"type": "file", "runId", "seq", "name", "contentType", "size", "sha256", ...}
StatusFrame = Frame  # {"type": "status", "runId", "seq", "status", "final", "output"?, "error"?}
GapFrame = Frame  # {"type": "gap", "runId", "seq", "reason", "skipped"?: [first, last]}

ConnectionState = Literal["connecting", "open", "reconnecting", "fallback", "closed"]
ConnectionCallback = Callable[[ConnectionState], None]
# A fresh run token for a run id, sync or async (your backend mints it).
TokenSource = Callable[[str], str | Awaitable[str]]
Sleep = Callable[[float], Awaitable[None]]

FAILED_STATUSES = frozenset({"FAILED", "CANCELLED", "TIMED_OUT"})


def is_final(frame: Frame) -> bool:
    return frame.get("type") == "status" and frame.get("final") is True


class HatchwayError(Exception):
    """The API or the WebSocket refused, or Hatchway could not be reached.

    ``code`` is the protocol's error code (``unauthorized``, ``not_found``, ...) or one
    of the client's own (``unavailable``, ``closed``, ``bad_response``); ``status`` is
    the HTTP status when there was one."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class RunFailedError(Exception):
    """The run ended FAILED, CANCELLED or TIMED_OUT (``status``); ``error`` is the final
    status frame's error text, ``frame`` the whole frame."""

    def __init__(self, status: str, error: str | None, frame: StatusFrame) -> None:
        super().__init__(f"run {frame.get('runId')} {status}: {error or 'no error given'}")
        self.status = status
        self.error = error
        self.frame = frame
