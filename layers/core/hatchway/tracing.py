"""X-Ray tracing of the Lambda functions (Powertools Tracer, aws-xray-sdk in CoreLayer).

The template turns X-Ray on (``Tracing: Active``); each function's handler is
wrapped in :data:`capture_handler` and, where it knows the run, annotates it as
``runId`` (searchable: ``annotation.runId = "..."``). Only botocore is patched:
every AWS call a function makes (DynamoDB, SQS, S3, @connections, Secrets
Manager) is a subsegment; ``patch_all`` would import a dozen libraries' patchers
at every cold start.

Off by itself outside Lambda (no ``LAMBDA_TASK_ROOT``: the tests, the local stack,
a relay), and wherever ``POWERTOOLS_TRACE_DISABLED=true``: then every call here is
a no-op. Responses are never recorded (``capture_response=False``): the trigger's
hold run tokens. Its own module: the relay and workers never import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, cast

from aws_lambda_powertools import Tracer

RUN_ID: Final = "runId"  # the annotation naming a run
MAX_RUN_ID: Final = 128  # the protocol's longest run id: a longer path segment is no run

tracer = Tracer(service="hatchway", patch_modules=("botocore",))


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
