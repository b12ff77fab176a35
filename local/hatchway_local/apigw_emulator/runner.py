"""One Lambda execution environment: a process that imports a handler once and
invokes it for each event it reads, as the Lambda runtime does.

Protocol, one JSON object per line: stdin gets ``{"id", "event", "deadlineMs"}``;
the original stdout answers ``{"id", "result"}`` or ``{"id", "error"}``. Anything
the handler prints goes to stderr, like a function's logs.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import uuid
from typing import Any, TextIO


class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
        self.function_name = name
        self.function_version = "$LATEST"
        region = os.environ.get("AWS_REGION", "us-east-1")
        self.invoked_function_arn = f"arn:aws:lambda:{region}:123456789012:function:{name}"
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = f"local/{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)


def _error(error: BaseException) -> dict[str, Any]:
    return {
        "errorType": type(error).__name__,
        "errorMessage": str(error),
        "stackTrace": traceback.format_exception(error),
    }


def _reply(channel: TextIO, message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def main() -> None:
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the handler's prints are logs
    module_name, _, function_name = os.environ["_HANDLER"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name.replace("/", ".")), function_name)
    except Exception as error:  # noqa: BLE001 - reported to the caller as an init error
        _reply(channel, {"ready": False, "error": _error(error)})
        return
    _reply(channel, {"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        context = LambdaContext(request["id"], request["deadlineMs"])
        try:
            result = handler(request["event"], context)
            _reply(channel, {"id": request["id"], "result": json.loads(json.dumps(result))})
        except Exception as error:  # noqa: BLE001 - a failed invocation, as Lambda reports it
            traceback.print_exception(error, file=sys.stderr)
            _reply(channel, {"id": request["id"], "error": _error(error)})


if __name__ == "__main__":
    main()
