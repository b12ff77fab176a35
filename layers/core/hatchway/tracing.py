"""X-Ray tracing of the Lambda functions (Powertools Tracer, aws-xray-sdk in CoreLayer).

The template turns X-Ray on (``Tracing: Active``); each function's handler is
wrapped in :data:`capture_handler` and, where it knows the run, annotates it as
``runId`` (searchable: ``annotation.runId = "..."``). Only botocore is patched:
every AWS call a function makes (DynamoDB, SQS, S3, @connections, Secrets
Manager) is a subsegment; ``patch_all`` would import a dozen libraries' patchers
at every cold start.

Off outside Lambda (no ``LAMBDA_TASK_ROOT``: the tests, the local stack), under
``sam local``, and wherever ``POWERTOOLS_TRACE_DISABLED=true``, as Powertools itself
decides: then the tracer has a provider that records nothing and aws-xray-sdk's
recorder is never imported (outside Lambda it would build two X-Ray API clients for
its sampler at import, 150-250 ms of every local cold start). Responses are never
recorded (``capture_response=False``): the trigger's hold run tokens. Its own
module: the relay and workers never import it.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final, cast

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

RUN_ID: Final = "runId"  # the annotation naming a run
MAX_RUN_ID: Final = 128  # the protocol's longest run id: a longer path segment is no run
SERVICE: Final = "hatchway"
TRUE: Final = frozenset({"1", "y", "yes", "t", "true", "on"})  # Powertools' truthy values


def tracing_on() -> bool:
    """Whether X-Ray records, decided as Powertools' Tracer decides it: in Lambda
    (``LAMBDA_TASK_ROOT``), not in ``sam local`` or Chalice's local mode, and not
    switched off with ``POWERTOOLS_TRACE_DISABLED``."""
    if os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in TRUE:
        return False
    emulated = os.environ.get("AWS_SAM_LOCAL") or os.environ.get("AWS_CHALICE_CLI_MODE")
    return bool(os.environ.get("LAMBDA_TASK_ROOT")) and not emulated


class _NoSegment(BaseSegment):
    """A subsegment that records nothing."""

    def close(self, end_time: int | None = None) -> None:
        pass

    def add_subsegment(self, subsegment: Any) -> None:  # noqa: ANN401 - Powertools' signature
        pass

    def remove_subsegment(self, subsegment: Any) -> None:  # noqa: ANN401 - Powertools' signature
        pass

    def put_annotation(self, key: str, value: Any) -> None:  # noqa: ANN401 - Powertools' signature
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:  # noqa: ANN401
        pass

    def add_exception(
        self,
        exception: BaseException,
        stack: list[traceback.StackSummary],
        remote: bool = False,
    ) -> None:
        pass


class _Untraced(BaseProvider):
    """The provider while tracing is off: no aws-xray-sdk recorder at all."""

    @contextmanager
    def in_subsegment(self, name: str | None = None, **_kwargs: Any) -> Iterator[BaseSegment]:  # noqa: ANN401
        del name  # Powertools passes it by keyword
        yield _NoSegment()

    @asynccontextmanager
    async def in_subsegment_async(
        self,
        name: str | None = None,
        **_kwargs: Any,  # noqa: ANN401
    ) -> AsyncIterator[BaseSegment]:
        del name
        yield _NoSegment()

    def put_annotation(self, key: str, value: Any) -> None:  # noqa: ANN401 - Powertools' signature
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:  # noqa: ANN401
        pass

    def patch(self, modules: Sequence[str]) -> None:
        pass

    def patch_all(self) -> None:
        pass


if tracing_on():
    tracer = Tracer(service=SERVICE, patch_modules=("botocore",))
else:
    tracer = Tracer(service=SERVICE, disabled=True, auto_patch=False, provider=_Untraced())


def capture_handler[HandlerT: Callable[..., Any]](handler: HandlerT) -> HandlerT:
    """``tracer.capture_lambda_handler`` without the response as metadata."""
    return cast("HandlerT", tracer.capture_lambda_handler(handler, capture_response=False))


def annotate_run(run_id: object) -> None:
    """Annotate the current (handler) subsegment with the run, if ``run_id`` names one."""
    if isinstance(run_id, str) and 0 < len(run_id) <= MAX_RUN_ID:
        tracer.put_annotation(RUN_ID, run_id)


@contextmanager
def run_subsegment(name: str, run_id: str) -> Iterator[None]:
    """A subsegment for one run's work in a batch (several runs, one handler)."""
    if tracer.disabled:
        yield
        return
    with tracer.provider.in_subsegment(name=name) as subsegment:
        subsegment.put_annotation(key=RUN_ID, value=run_id)
        yield
