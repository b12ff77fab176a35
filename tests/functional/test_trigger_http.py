"""The trigger API over HTTP (issue 11, item 4): body limits however the body
travels, input Hatchet cannot take, wrong methods, Hatchet's gRPC refusals and an
OpenAPI document that says exactly what the API answers (checked by schemathesis).

Two ways in, both with real adapters (moto in server mode, the Hatchet engine
emulator): real HTTP through the API Gateway emulator, which runs the trigger's
handler (Mangum) as Lambda would, and the ASGI app in this process, where a chunked
body reaches the app chunk by chunk as a streaming server delivers it. The
emulators run on an event loop of their own thread, so the tests are plain
blocking clients.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import grpc
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import ASGIClient
from schemathesis.specs.openapi import checks

from hatchway.hatchet_adapter import HatchetTrigger, UpstreamUnavailableError
from hatchway.payloads import Payloads
from hatchway.run_queue import RunQueue
from hatchway.settings import HatchetSettings, TriggerSettings
from hatchway.store import Store
from hatchway.tokens import RunTokens
from hatchway.trigger_api import MAX_BODY_BYTES, build_app, create_app
from hatchway_local.apigw_emulator.server import ApiGatewayEmulator
from hatchway_local.apigw_emulator.template import TemplateReader
from hatchway_local.aws import LocalAws, start_local_aws
from hatchway_local.hatchet_emulator.engine import TaskSpec, WorkflowSpec
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.functional

TEMPLATE = REPO_ROOT / "template.yaml"
WORKFLOW = "demo-stream"
PARAMETERS = {"AllowedWorkflows": WORKFLOW}  # the template's, as a deploy names it
SIGNING_KEY = "k" * 40


class LoopThread:
    """An event loop in a thread of its own, for servers that live on a loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run[T](self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Backend:
    aws: LocalAws
    hatchet: HatchetEmulator
    gateway: ApiGatewayEmulator

    @property
    def url(self) -> str:
        return self.gateway.http_url

    def hatchet_settings(self, **overrides: str) -> HatchetSettings:
        values = {
            key.removeprefix("HATCHET_CLIENT_").lower(): value
            for key, value in self.hatchet.settings().items()
        }
        return HatchetSettings(**{**values, **overrides})

    def app(self, hatchet: HatchetTrigger | None = None, *, openapi: bool = False) -> Any:
        """The trigger's ASGI app in this process, on the same moto and emulator."""
        kwargs = self.aws.client_kwargs()
        return create_app(
            store=Store(self.aws.table_name, resource=boto3.resource("dynamodb", **kwargs)),
            queue=RunQueue(self.aws.queue_url("RunQueue"), client=boto3.client("sqs", **kwargs)),
            tokens=RunTokens(SIGNING_KEY),
            hatchet=hatchet or HatchetTrigger(self.hatchet_settings()),
            allowed_workflows=frozenset({WORKFLOW}),
            websocket_url="wss://example.test/prod",
            payloads=Payloads(
                self.aws.bucket_name("PayloadBucket"), client=boto3.client("s3", **kwargs)
            ),
            openapi=openapi,
        )


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    loop = LoopThread()
    aws = start_local_aws(TEMPLATE, parameters=PARAMETERS)

    async def start() -> tuple[HatchetEmulator, ApiGatewayEmulator]:
        hatchet = HatchetEmulator()
        await hatchet.start()
        # The trigger only needs Hatchet to know the workflow; no worker runs it here.
        hatchet.engine.put_workflow(
            WorkflowSpec(WORKFLOW, {WORKFLOW: TaskSpec(WORKFLOW, f"{WORKFLOW}:{WORKFLOW}")})
        )
        env = {
            **aws.environment(),
            "TABLE_NAME": aws.table_name,
            "RUN_QUEUE_URL": aws.queue_url("RunQueue"),
            "TOKEN_SECRET_ARN": aws.secret_arn("TokenSigningSecret"),
            "OPENAPI_ENABLED": "true",
            **hatchet.settings(),
        }
        gateway = ApiGatewayEmulator(TemplateReader(TEMPLATE, PARAMETERS).api(), extra_env=env)
        await gateway.start()
        return hatchet, gateway

    async def stop(hatchet: HatchetEmulator, gateway: ApiGatewayEmulator) -> None:
        await gateway.close()
        await hatchet.close()

    try:
        hatchet, gateway = loop.run(start())
        try:
            yield Backend(aws, hatchet, gateway)
        finally:
            loop.run(stop(hatchet, gateway))
    finally:
        aws.stop()
        loop.close()


def error_of(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def chunked_post(url: str, path: str, chunks: list[bytes]) -> tuple[int, dict[str, Any]]:
    """POST with Transfer-Encoding: chunked (no Content-Length) over a real socket."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request(
            "POST",
            path,
            body=iter(chunks),
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def body_of(size: int) -> bytes:
    """A valid POST /runs body of exactly ``size`` bytes."""
    head, tail = b'{"workflow": "' + WORKFLOW.encode() + b'", "input": {"pad": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def in_chunks(body: bytes, size: int = 16 * 1024) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


# -- body limit ---------------------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413_over_http(backend: Backend) -> None:
    status, answer = chunked_post(backend.url, "/runs", in_chunks(body_of(MAX_BODY_BYTES + 1)))
    assert status == 413
    assert answer["error"]["code"] == "too_large"

    status, answer = chunked_post(backend.url, "/runs", in_chunks(body_of(MAX_BODY_BYTES)))
    assert status == 201, answer  # the limit itself is allowed


def test_a_declared_length_over_the_limit_is_413_over_http(backend: Backend) -> None:
    response = requests.post(
        f"{backend.url}/runs",
        data=body_of(MAX_BODY_BYTES + 1),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert error_of(response) == (413, "too_large")


def test_a_streamed_body_over_the_limit_is_413_in_process(backend: Backend) -> None:
    """Chunk by chunk, as a streaming ASGI server delivers a chunked body."""
    with ASGIClient(backend.app()) as client:
        chunks = in_chunks(body_of(4 * MAX_BODY_BYTES))
        response = client.post(
            "/runs", data=(chunk for chunk in chunks), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in {name.lower() for name in response.request.headers}
        assert error_of(response) == (413, "too_large")

        fits = client.post(
            "/runs",
            data=(chunk for chunk in in_chunks(body_of(MAX_BODY_BYTES))),
            headers={"Content-Type": "application/json"},
        )
        assert fits.status_code == 201, fits.text


# -- input Hatchet cannot take ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{"workflow": "demo-stream", "input": {"text": "\\ud800"}}',
        '{"workflow": "demo-stream", "input": {"deep": [{"text": "ok \\udfff"}]}}',
        '{"workflow": "demo-stream", "input": {"\\ud800": 1}}',
        '{"workflow": "demo-stream", "metadata": {"key": "\\udbff"}}',
        '{"workflow": "demo-stream", "metadata": {"\\ud800": "value"}}',
        '{"workflow": "demo-stream", "metadata": {"\\ud800": 1}}',  # wrong type, odd key
        '{"workflow": "demo-\\ud800"}',
        '{"workflow": "demo-stream", "input": {"n": NaN}}',
        '{"workflow": "demo-stream", "input": {"n": 1e999}}',
    ],
)
def test_input_that_is_not_utf8_json_is_400(backend: Backend, body: str) -> None:
    response = requests.post(
        f"{backend.url}/runs",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert error_of(response) == (400, "bad_request"), response.text
    response.content.decode("utf-8")  # the answer itself is UTF-8


def test_a_surrogate_pair_is_text(backend: Backend) -> None:
    response = requests.post(
        f"{backend.url}/runs",
        data=b'{"workflow": "demo-stream", "input": {"text": "\\ud83d\\ude00"}}',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 201, response.text


class RefusingHatchet(HatchetTrigger):
    """Hatchet answers TriggerWorkflow with ``code``, as the adapter reports it."""

    def __init__(self, settings: HatchetSettings, code: grpc.StatusCode) -> None:
        super().__init__(settings, attempts=1)
        self.code = code

    async def start(self, *_args: object) -> str:
        error = grpc.aio.AioRpcError(
            self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="refused"
        )
        raise UpstreamUnavailableError(f"{self.code.name}: refused") from error


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, (400, "bad_request")),
        (grpc.StatusCode.OUT_OF_RANGE, (400, "bad_request")),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, (429, "rate_limited")),
        (grpc.StatusCode.UNAVAILABLE, (502, "upstream_unavailable")),
        (grpc.StatusCode.DEADLINE_EXCEEDED, (502, "upstream_unavailable")),
        (grpc.StatusCode.INTERNAL, (500, "internal")),
        (grpc.StatusCode.UNKNOWN, (500, "internal")),
        (grpc.StatusCode.PERMISSION_DENIED, (500, "internal")),
        (grpc.StatusCode.FAILED_PRECONDITION, (500, "internal")),
    ],
)
def test_hatchet_refusals_by_grpc_code(
    backend: Backend, code: grpc.StatusCode, expected: tuple[int, str]
) -> None:
    app = backend.app(RefusingHatchet(backend.hatchet_settings(), code))
    with ASGIClient(app) as client:
        assert error_of(client.post("/runs", json={"workflow": WORKFLOW})) == expected


def test_real_hatchet_refusals(backend: Backend) -> None:
    """The emulator refusing our token is this deployment's fault (500); a Hatchet
    that does not answer at all is the one 502."""
    wrong_token = backend.hatchet_settings()
    claims_token = backend.hatchet.token.rsplit(".", 1)[0] + ".bm90LXRoZS1zaWduYXR1cmU"
    refused = backend.app(HatchetTrigger(wrong_token.model_copy(update={"token": claims_token})))
    gone = backend.app(
        HatchetTrigger(backend.hatchet_settings(host_port="127.0.0.1:9"), attempts=1)
    )
    with ASGIClient(refused) as client:
        assert error_of(client.post("/runs", json={"workflow": WORKFLOW})) == (500, "internal")
    with ASGIClient(gone) as client:
        answer = client.post("/runs", json={"workflow": WORKFLOW})
        assert error_of(answer) == (502, "upstream_unavailable")


# -- a fresh run token ---------------------------------------------------------------------


def test_a_backend_gets_a_fresh_token_for_a_run_it_started(backend: Backend) -> None:
    started = requests.post(f"{backend.url}/runs", json={"workflow": WORKFLOW}, timeout=30).json()
    issued = requests.post(f"{backend.url}/runs/{started['runId']}/token", timeout=30)
    assert issued.status_code == 201
    fresh = issued.json()
    assert set(fresh) == {"runId", "token", "expiresAt", "websocketUrl"}
    assert fresh["runId"] == started["runId"]
    assert fresh["websocketUrl"] == started["websocketUrl"]
    auth = {"Authorization": f"Bearer {fresh['token']}"}
    run = requests.get(f"{backend.url}/runs/{started['runId']}", headers=auth, timeout=30)
    assert run.status_code == 200
    unknown = requests.post(f"{backend.url}/runs/no-such-run/token", timeout=30)
    assert error_of(unknown) == (404, "not_found")


# -- wrong methods, unknown paths ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/runs", "POST"),
        ("DELETE", "/runs", "POST"),
        ("POST", "/runs/some-run", "GET"),
        ("PUT", "/runs/some-run/frames", "GET"),
        ("GET", "/runs/some-run/token", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_a_wrong_method_is_405_with_allow(
    backend: Backend, method: str, path: str, allow: str
) -> None:
    response = requests.request(method, f"{backend.url}{path}", timeout=30)
    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["Allow"] == allow


def test_an_unknown_path_is_404(backend: Backend) -> None:
    response = requests.get(f"{backend.url}/nowhere", timeout=30)
    assert error_of(response) == (404, "not_found")


# -- the OpenAPI document -----------------------------------------------------------------


def _in_process_settings(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The trigger's settings for an app built in this process, on the backend's AWS."""
    for name, value in {**backend.aws.environment(), **backend.hatchet.settings()}.items():
        monkeypatch.setenv(name, value)
    return {
        "TABLE_NAME": backend.aws.table_name,
        "RUN_QUEUE_URL": backend.aws.queue_url("RunQueue"),
        "TOKEN_SIGNING_KEY": SIGNING_KEY,
        "PAYLOAD_BUCKET": backend.aws.bucket_name("PayloadBucket"),
        "ALLOWED_WORKFLOWS": WORKFLOW,
        "WEBSOCKET_URL": "wss://example.test/prod",
    }


def test_openapi_is_off_by_default(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _in_process_settings(backend, monkeypatch)
    off = TriggerSettings(**base)
    assert off.openapi_enabled is False
    with ASGIClient(build_app(off)) as client:
        assert error_of(client.get("/openapi.json")) == (404, "not_found")
        assert error_of(client.get("/docs")) == (404, "not_found")
    with ASGIClient(build_app(TriggerSettings(**base, OPENAPI_ENABLED="true"))) as client:
        assert client.get("/openapi.json").json()["info"]["title"] == "Hatchway"


def test_openapi_documents_the_statuses_the_api_answers(backend: Backend) -> None:
    document = requests.get(f"{backend.url}/openapi.json", timeout=30).json()
    statuses = {
        (method.upper(), path): sorted(operation["responses"])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    assert statuses == {
        ("POST", "/runs"): ["201", "400", "403", "404", "413", "429", "500", "502"],
        ("POST", "/runs/{runId}/token"): ["201", "403", "404", "413", "500"],
        ("GET", "/runs/{runId}"): ["200", "401", "403", "404", "413", "500"],
        ("GET", "/runs/{runId}/frames"): ["200", "400", "401", "403", "404", "413", "500"],
        ("GET", "/healthz"): ["200", "413", "500"],
    }
    assert "422" not in json.dumps(document)
    not_found = document["paths"]["/runs"]["post"]["responses"]["404"]
    schema = not_found["content"]["application/json"]["schema"]
    assert schema["properties"]["error"]["properties"]["code"]["enum"] == ["unknown_workflow"]


# -- schemathesis: the API against its own document ---------------------------------------


@dataclass
class Fuzz:
    schema: Any
    client: ASGIClient
    run_id: str
    token: str


@pytest.fixture(scope="module")
def fuzz(backend: Backend) -> Iterator[Fuzz]:
    """The app in this process (the API Gateway emulator's own router answers some
    odd paths itself, a newline in a path for one), with its real adapters."""
    with ASGIClient(backend.app(openapi=True)) as client:
        document = client.get("/openapi.json").json()
        # A random workflow name is a 404 (negative cases still send those): as a
        # client of this deployment, positive cases name its workflow, so 201 and the
        # calls to Hatchet, the table and the queue are exercised too.
        workflow = document["components"]["schemas"]["RunRequest"]["properties"]["workflow"]
        workflow["enum"] = [WORKFLOW]
        schema = schemathesis.openapi.from_dict(document)
        schema.config.update(base_url=client.base_url)
        started = client.post("/runs", json={"workflow": WORKFLOW})
        assert started.status_code == 201, started.text
        yield Fuzz(schema, client, started.json()["runId"], started.json()["token"])


CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,  # data the document rules out is a 4xx
    checks.positive_data_acceptance,  # data it allows is never a 400
]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/runs"),
        ("GET", "/runs/{runId}"),
        ("GET", "/runs/{runId}/frames"),
        ("GET", "/healthz"),
    ],
)
def test_the_api_keeps_to_its_openapi_document(fuzz: Fuzz, method: str, path: str) -> None:
    """No 5xx, no status the document does not list, every answer in its schema; for
    data that fits the document, data that does not, and (for a run's routes) with a
    real run and its token."""
    operation = fuzz.schema[path][method]
    cases = [operation.as_strategy(mode) for mode in GenerationMode]
    if "{runId}" in path:
        cases.append(
            operation.as_strategy(
                path_parameters={"runId": fuzz.run_id},
                headers={"Authorization": f"Bearer {fuzz.token}"},
            )
        )

    @given(case=strategies.one_of(cases))
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def keeps_to_it(case: schemathesis.Case) -> None:
        case.call_and_validate(session=fuzz.client, checks=CHECKS)

    keeps_to_it()


def test_cors_lets_a_frontends_origin_read_runs_and_nothing_else(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frontend on its own origin reads GET /runs/{id} and /frames with a run token:
    the preflight is answered for the allowed origin only, and every answer (errors
    too) carries the header the browser needs; with no origins set, none does."""
    base = _in_process_settings(backend, monkeypatch)
    app_origin = "https://app.example"
    preflight = {
        "Origin": app_origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    settings = TriggerSettings(**base, CORS_ALLOW_ORIGINS=f"{app_origin}, https://other.example")
    with ASGIClient(build_app(settings)) as client:
        answer = client.options("/runs/r-1/frames", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == app_origin
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        refused = client.options(
            "/runs/r-1", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in refused.headers
        unauthorized = client.get("/runs/r-1", headers={"Origin": app_origin})
        assert error_of(unauthorized) == (401, "unauthorized")
        assert unauthorized.headers["access-control-allow-origin"] == app_origin
    with ASGIClient(build_app(TriggerSettings(**base))) as client:
        answer = client.get("/runs/r-1", headers={"Origin": app_origin})
        assert "access-control-allow-origin" not in answer.headers
