"""Lambda functions run locally: a small pool of execution environments per
function, each a process (``runner.py``) with the function's own environment
variables, code directory and layers on its path.

An environment serves one invocation at a time and is reused (warm starts);
a busy function gets up to ``max_concurrency`` environments. A timed-out
invocation kills its environment, as Lambda does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from typing import Any

from hatchway.observability import logger

from .template import FunctionSpec

_STREAM_LIMIT = 16 * 1024 * 1024  # a response line may carry a large body

# What a function's environment has unless the emulator's own or the caller's
# environment says otherwise: boto3 needs credentials to sign, and the local
# management API checks signatures against these (see ``sigv4``).
LOCAL_DEFAULTS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class InvocationError(Exception):
    """The handler raised, or its environment failed to start."""

    def __init__(self, function: str, error: dict[str, Any]) -> None:
        super().__init__(f"{function}: {error.get('errorType')}: {error.get('errorMessage')}")
        self.error_type = str(error.get("errorType", "Error"))
        self.error_message = str(error.get("errorMessage", ""))


class InvocationTimeoutError(InvocationError):
    def __init__(self, function: str, timeout_s: float) -> None:
        super().__init__(
            function,
            {"errorType": "TimeoutError", "errorMessage": f"timed out after {timeout_s:g}s"},
        )


class _Environment:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def invoke(self, event: dict[str, Any], deadline_ms: int) -> dict[str, Any]:
        assert self.process.stdin is not None  # noqa: S101 - created with pipes
        assert self.process.stdout is not None  # noqa: S101
        request = {"id": str(uuid.uuid4()), "event": event, "deadlineMs": deadline_ms}
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            raise ConnectionError("the execution environment exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class LambdaFunction:
    def __init__(
        self, spec: FunctionSpec, extra_env: dict[str, str], max_concurrency: int = 4
    ) -> None:
        self.spec = spec
        self._extra_env = extra_env
        self._idle: list[_Environment] = []
        self._all: set[_Environment] = set()
        self._slots = asyncio.Semaphore(max_concurrency)

    def _environment_variables(self) -> dict[str, str]:
        path = [str(self.spec.code_uri), *(str(layer) for layer in self.spec.layers)]
        if os.environ.get("PYTHONPATH"):
            path.append(os.environ["PYTHONPATH"])
        # The emulator's own values (its management API, its CA) beat the template's,
        # which name the deployed API Gateway.
        return {
            **LOCAL_DEFAULTS,
            **os.environ,
            **self.spec.environment,
            **self._extra_env,
            "_HANDLER": self.spec.handler,
            "AWS_LAMBDA_FUNCTION_NAME": self.spec.logical_id,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.spec.memory_mb),
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{self.spec.runtime}",
            "PYTHONPATH": os.pathsep.join(path),
            "PYTHONUNBUFFERED": "1",
        }

    async def _start_environment(self) -> _Environment:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hatchway_local.apigw_emulator.runner",
            cwd=self.spec.code_uri,
            env=self._environment_variables(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_STREAM_LIMIT,
        )
        environment = _Environment(process)
        assert process.stdout is not None  # noqa: S101
        hello = await process.stdout.readline()
        status: dict[str, Any] = json.loads(hello) if hello else {}
        if not status.get("ready"):
            await environment.kill()
            error = status.get("error") or {"errorType": "Runtime.ExitError", "errorMessage": ""}
            raise InvocationError(self.spec.logical_id, error)
        self._all.add(environment)
        return environment

    async def invoke(self, event: dict[str, Any]) -> Any:  # noqa: ANN401 - whatever the handler returns
        async with self._slots:
            environment = self._idle.pop() if self._idle else await self._start_environment()
            deadline_ms = int((time.time() + self.spec.timeout_s) * 1000)
            try:
                reply = await asyncio.wait_for(
                    environment.invoke(event, deadline_ms), self.spec.timeout_s
                )
            except TimeoutError:
                await self._discard(environment)
                raise InvocationTimeoutError(self.spec.logical_id, self.spec.timeout_s) from None
            except (ConnectionError, ValueError) as error:
                await self._discard(environment)
                raise InvocationError(
                    self.spec.logical_id,
                    {"errorType": "Runtime.ExitError", "errorMessage": str(error)},
                ) from error
            self._idle.append(environment)
        if "error" in reply:
            raise InvocationError(self.spec.logical_id, reply["error"])
        return reply.get("result")

    async def _discard(self, environment: _Environment) -> None:
        self._all.discard(environment)
        await environment.kill()

    async def close(self) -> None:
        for environment in list(self._all):
            await self._discard(environment)
        self._idle.clear()
        logger.debug("function stopped", function=self.spec.logical_id)
