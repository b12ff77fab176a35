"""X-Ray through Powertools Tracer (hatchway.tracing): off by itself here (no Lambda
variables), so every handler runs untraced without an error; on, each function's
handler is one subsegment annotated with the run it knows (a fake provider stands
for the X-Ray recorder), and no response is recorded (the trigger's hold tokens)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aws_lambda_powertools import Tracer

from hatchway import authorizer, dead_letters, lambda_handlers, tracing
from hatchway.observability import logger
from hatchway.tokens import RunTokens
from hatchway_local.packaging import function_environment
from tests.conftest import REPO_ROOT
from tests.unit.test_dead_letters import RUN, Table, consumer, event, record

KEY = "k" * 48


@dataclass
class Context:  # what Powertools' inject_lambda_context reads of a LambdaContext
    function_name: str = "f"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:f"
    aws_request_id: str = "request-1"


@dataclass
class Subsegment:
    name: str
    annotations: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def put_annotation(self, key: str, value: Any) -> None:
        self.annotations[key] = value

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        self.metadata[f"{namespace}.{key}"] = value


@dataclass
class Recorder:
    """The X-Ray recorder's surface that Tracer uses: subsegments and annotations on
    the innermost open one."""

    subsegments: list[Subsegment] = field(default_factory=list)
    open: list[Subsegment] = field(default_factory=list)

    @contextmanager
    def in_subsegment(self, name: str) -> Iterator[Subsegment]:
        subsegment = Subsegment(name)
        self.subsegments.append(subsegment)
        self.open.append(subsegment)
        try:
            yield subsegment
        finally:
            self.open.pop()

    def put_annotation(self, key: str, value: Any) -> None:
        self.open[-1].put_annotation(key, value)

    def named(self, name: str) -> Subsegment:
        (found,) = [s for s in self.subsegments if s.name == name]
        return found


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Tracing on, as on Lambda, into a fake recorder."""
    fake = Recorder()
    monkeypatch.setattr(tracing.tracer, "disabled", False)
    monkeypatch.setattr(tracing.tracer, "provider", fake)
    return fake


def test_tracing_is_off_outside_lambda_and_every_call_is_harmless() -> None:
    assert tracing.tracer.disabled  # no LAMBDA_TASK_ROOT: the tests, the local stack
    tracing.annotate_run(RUN)
    with tracing.run_subsegment("## dead letter", RUN):
        pass

    @tracing.capture_handler
    def handler(_event: dict[str, Any], _context: Any) -> dict[str, Any]:
        return {"ok": True}

    assert handler({}, Context()) == {"ok": True}


@pytest.mark.parametrize(
    ("variables", "on"),
    [
        ({}, False),  # the tests, the local stack
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),  # Lambda
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "0"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),  # sam local
    ],
)
def test_tracing_is_on_where_powertools_would_trace(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], on: bool
) -> None:
    for name in ("LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED", "AWS_SAM_LOCAL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert tracing.tracing_on() is on
    assert bool(Tracer._is_tracer_disabled()) is not on  # Powertools' own rule


def authorizer_handler(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TOKEN_SIGNING_KEY", KEY)
    monkeypatch.delenv("TOKEN_SECRET_ARN", raising=False)
    return authorizer.handler()


def test_the_authorizer_annotates_the_token_s_run_and_records_no_response(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = authorizer_handler(monkeypatch)
    token = RunTokens(KEY).mint(RUN).token
    allowed = handler({"queryStringParameters": {"token": token}, "methodArn": "arn"}, Context())
    assert allowed["principalId"] == RUN
    (subsegment,) = recorder.subsegments
    assert subsegment.name == "## authorize"
    assert subsegment.annotations[tracing.RUN_ID] == RUN
    assert not [key for key in subsegment.metadata if "response" in key]  # no token in X-Ray


def test_a_refused_token_names_no_run(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = authorizer_handler(monkeypatch)
    with pytest.raises(PermissionError):
        handler({"queryStringParameters": {"token": "forged"}, "methodArn": "arn"}, Context())
    (subsegment,) = recorder.subsegments
    assert tracing.RUN_ID not in subsegment.annotations


class Api:
    def __init__(self) -> None:
        self.bodies: list[Any] = []

    def message(self, _connection_id: str, body: str | bytes | None) -> dict[str, Any]:
        self.bodies.append(body)
        return {"statusCode": 200}


def ws_event(body: str | None, authorized_run: str | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"connectionId": "c1", "routeKey": "subscribe"}
    if authorized_run:
        context["authorizer"] = {"runId": authorized_run, "principalId": authorized_run}
    return {"requestContext": context, "body": body, "isBase64Encoded": False}


@pytest.mark.parametrize(
    ("body", "authorized", "annotated"),
    [
        (
            json.dumps({"action": "subscribe", "runId": "r-2", "token": "t", "after": 0}),
            "r-1",
            "r-2",
        ),
        (json.dumps({"action": "unsubscribe", "runId": "r-3"}), None, "r-3"),
        (json.dumps({"action": "ping"}), "r-1", "r-1"),  # the connection's run
        ("[" * 5000, None, None),  # hostile: the core answers it, the trace names nothing
        ('{"action": "subscribe", "runId": "' + "x" * 500 + '"}', None, None),
        (None, None, None),
    ],
)
def test_a_message_annotates_the_run_it_names_else_the_connection_s(
    recorder: Recorder, body: str | None, authorized: str | None, annotated: str | None
) -> None:
    api = Api()
    handler = lambda_handlers._message_handler(api)  # type: ignore[arg-type]
    assert handler(ws_event(body, authorized), Context()) == {"statusCode": 200}
    assert api.bodies == [body]  # the core got the message as sent
    (subsegment,) = recorder.subsegments
    assert subsegment.annotations.get(tracing.RUN_ID) == annotated


def test_messages_are_not_parsed_twice_when_tracing_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parse(_body: object) -> None:
        raise AssertionError("parsed for a trace that is off")

    monkeypatch.setattr(lambda_handlers, "parse_client_message", parse)
    api = Api()
    handler = lambda_handlers._message_handler(api)  # type: ignore[arg-type]
    assert handler(ws_event('{"action": "ping"}'), Context()) == {"statusCode": 200}


def test_each_dead_letter_is_a_subsegment_annotated_with_its_run(recorder: Recorder) -> None:
    dead = consumer(Table(record(status="FAILED", last_seq=3)), None)
    assert dead_letters.handle_batch(dead, event(RUN, "run-unknown")) == {"batchItemFailures": []}
    annotated = [s.annotations[tracing.RUN_ID] for s in recorder.subsegments]
    assert annotated == [RUN, "run-unknown"]
    assert {s.name for s in recorder.subsegments} == {"## dead letter"}


def test_annotate_run_takes_only_what_can_be_a_run_id(recorder: Recorder) -> None:
    with recorder.in_subsegment("## handler") as subsegment:
        for value in (None, "", 7, {"runId": "r"}, "x" * (tracing.MAX_RUN_ID + 1)):
            tracing.annotate_run(value)
        assert subsegment.annotations == {}
        tracing.annotate_run("r-1")
        assert subsegment.annotations == {tracing.RUN_ID: "r-1"}


def test_the_trigger_annotates_the_run_its_request_named_or_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in function_environment().items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location(
        "trigger_app_under_test", REPO_ROOT / "functions" / "trigger" / "app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert app.run_of({"pathParameters": {"runId": "r-path"}}) == "r-path"  # GET /runs/{runId}
    logger.append_keys(run_id="r-started")  # what POST /runs does once the run is started
    try:
        assert app.run_of({"rawPath": "/runs"}) == "r-started"
    finally:
        logger.remove_keys(["run_id"])
    assert app.run_of({"rawPath": "/healthz"}) is None
