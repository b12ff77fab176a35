"""The HTTP trigger API (FastAPI; Mangum adapts it to Lambda): start runs, read a
run's status and its retained frames. Errors always have the protocol's shape
``{"error": {"code", "message"}}``, and the OpenAPI document (served only when
``OPENAPI_ENABLED``) lists every status each operation can answer, no other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import grpc
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import wiring
from .hatchet_adapter import HatchetTrigger, UnknownWorkflowError, UpstreamUnavailableError
from .metrics import RUNS_STARTED, SERVICE_TRIGGER, MetricUnit, function_metrics
from .observability import logger
from .payloads import PayloadError, Payloads
from .protocol import HTTP_STATUS, ErrorCode, ProtocolError, error_body, is_final
from .run_queue import RunQueue
from .settings import TriggerSettings
from .store import RunRecord, Store
from .tokens import RunTokens

MAX_BODY_BYTES = 256 * 1024
metrics = function_metrics(SERVICE_TRIGGER)  # flushed per invocation (functions/trigger)


def _json_text(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    """``value`` if Hatchet can take it as UTF-8 JSON text; ValueError otherwise."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (a lone surrogate is not)") from None
    except ValueError:
        raise ValueError("NaN and Infinity are not JSON numbers") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return value


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(min_length=1, max_length=256)
    input: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("workflow", "input", "metadata")
    @classmethod
    def _utf8_json(cls, value: Any) -> Any:  # noqa: ANN401 - any JSON value
        return _json_text(value)


# -- what the operations answer (the OpenAPI document is generated from these) -----------

_OUT = ConfigDict(populate_by_name=True)


class RunStarted(BaseModel):
    model_config = _OUT
    run_id: str = Field(alias="runId")
    workflow: str
    status: str
    token: str
    expires_at: str = Field(alias="expiresAt")
    websocket_url: str = Field(alias="websocketUrl")


class RunTokenIssued(BaseModel):
    model_config = _OUT
    run_id: str = Field(alias="runId")
    token: str
    expires_at: str = Field(alias="expiresAt")
    websocket_url: str = Field(alias="websocketUrl")


class RunView(BaseModel):
    model_config = _OUT
    run_id: str = Field(alias="runId")
    workflow: str
    status: str
    last_seq: int = Field(alias="lastSeq")
    created_at: str = Field(alias="createdAt")
    updated_at: str = Field(alias="updatedAt")


class FramesPage(BaseModel):
    frames: list[dict[str, Any]]
    next: int
    final: bool


class Health(BaseModel):
    status: Literal["ok"]


def _errors(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error codes: per status, the error shape with
    exactly the codes that status carries on this operation."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(HTTP_STATUS[code], []).append(code.value)
    return {
        status: {
            "description": ", ".join(names),
            "content": {
                "application/json": {
                    "schema": {
                        "title": f"Error{status}",
                        "type": "object",
                        "required": ["error"],
                        "additionalProperties": False,
                        "properties": {
                            "error": {
                                "type": "object",
                                "required": ["code", "message"],
                                "additionalProperties": False,
                                "properties": {
                                    "code": {"type": "string", "enum": names},
                                    "message": {"type": "string"},
                                },
                            }
                        },
                    }
                }
            },
        }
        for status, names in sorted(by_status.items())
    }


# Every operation: a Content-Length over the limit, and a failure of an adapter.
_ANY = (ErrorCode.TOO_LARGE, ErrorCode.INTERNAL)
# The routes that carry the authorizer (template.yaml): only your backends call them.
START_ROUTE_KEY = "POST /runs"
REISSUE_ROUTE_KEY = "POST /runs/{runId}/token"
_AUTH = (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND)


class _TriggerApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's document without its 422 answers: validation errors are 400
        ``bad_request`` here, documented per operation like every other error."""
        schema = super().openapi()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema


# -- errors -----------------------------------------------------------------------------


def _printable(message: str) -> str:
    """A message that encodes as UTF-8 whatever the request held (lone surrogates
    in a rejected key or value are shown escaped)."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(code: ErrorCode, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(code, _printable(message)), status_code=HTTP_STATUS[code], headers=headers
    )


# Starlette's and FastAPI's own HTTP errors (no route, wrong method, unreadable body).
_HTTP_ERROR_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.TOO_LARGE,
}


class _BodyTooLargeError(HTTPException):
    """Raised from ``receive``: FastAPI passes HTTPExceptions on from reading a body."""

    def __init__(self) -> None:
        super().__init__(413, f"request body over {MAX_BODY_BYTES} bytes")


class _Guard:
    """Outermost of the app's own layers: a body over the limit is refused whether or
    not it declares its length (chunked requests do not; under Mangum the body
    arrives whole in one message), and an error nobody handled is a 500 in the
    protocol's shape rather than Starlette's plain text."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _error(ErrorCode.TOO_LARGE, _BodyTooLargeError().detail)(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLargeError
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        logger.remove_keys(["run_id"])  # a run's key never outlives its request
        try:
            await self.app(scope, limited_receive, watched_send)
        except _BodyTooLargeError as error:
            if started:
                raise
            await _error(ErrorCode.TOO_LARGE, error.detail)(scope, receive, send)
        except Exception:
            if started:
                raise
            logger.exception("unhandled error", path=scope.get("path"))
            await _error(ErrorCode.INTERNAL, "internal error; try again")(scope, receive, send)


def _answer_errors_in_the_protocols_shape(app: FastAPI) -> None:
    """Every error, ours or the framework's, as ``{"error": {"code", "message"}}``."""

    @app.exception_handler(ProtocolError)
    async def protocol_error(_request: Request, error: ProtocolError) -> JSONResponse:
        return _error(error.code, error.message)

    @app.exception_handler(PayloadError)
    async def payload_error(_request: Request, error: PayloadError) -> JSONResponse:
        logger.error("could not mint payload URLs", error=str(error))
        return _error(ErrorCode.INTERNAL, "payload URLs could not be minted; try again")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        return _error(ErrorCode.BAD_REQUEST, problems)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        code = _HTTP_ERROR_CODES.get(error.status_code, ErrorCode.BAD_REQUEST)
        return _error(code, str(error.detail), headers=error.headers)


def _allow_origins(app: FastAPI, origins: tuple[str, ...]) -> None:
    """CORS for these browser origins. Outermost, so every answer (a 413 from the
    guard too) carries the headers; a preflight reaches the function through the
    $default route, unauthorized."""
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
            max_age=600,
        )


def _through_authorized_route(http: Request, route_key: str, what: str) -> None:
    """Under Lambda, only API Gateway's own route with the authorizer may do this:
    never the open $default catch-all, whatever path variant reached FastAPI through it."""
    event = http.scope.get("aws.event")
    if event is not None and event.get("requestContext", {}).get("routeKey") != route_key:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{what} through {route_key} only")


def _hatchet_refused(workflow: str, error: UpstreamUnavailableError) -> ProtocolError:
    """What a failed TriggerWorkflow means for the caller. Only a Hatchet that did not
    answer (unreachable, timed out) is 502; an input it rejects is the caller's 400;
    its rate and resource limits are 429; the rest (our token or namespace refused,
    an engine fault) is this deployment's 500."""
    cause = error.__cause__
    code, details = None, ""
    if isinstance(cause, grpc.aio.AioRpcError):
        code, details = cause.code(), (cause.details() or "")[:500]
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return ProtocolError(ErrorCode.BAD_REQUEST, f"Hatchet refused the run: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        logger.warning("hatchet refused a run: limits", workflow=workflow, error=str(error))
        return ProtocolError(ErrorCode.RATE_LIMITED, "Hatchet's limits are reached; try later")
    if code in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        logger.warning("hatchet did not answer", workflow=workflow, error=str(error))
        return ProtocolError(ErrorCode.UPSTREAM_UNAVAILABLE, "Hatchet did not answer")
    logger.error("hatchet refused a run", workflow=workflow, error=str(error))
    return ProtocolError(ErrorCode.INTERNAL, "Hatchet could not start the run")


# -- the app ----------------------------------------------------------------------------


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _run_view(run: RunRecord) -> dict[str, Any]:
    return {
        "runId": run.run_id,
        "workflow": run.workflow,
        "status": run.status,
        "lastSeq": run.last_seq,
        "createdAt": _iso(run.created_at),
        "updatedAt": _iso(run.updated_at),
    }


RunId = Annotated[str, Path(alias="runId")]
Authorization = Annotated[str | None, Header()]


def create_app(
    *,
    store: Store,
    queue: RunQueue,
    tokens: RunTokens,
    hatchet: HatchetTrigger,
    allowed_workflows: frozenset[str],
    websocket_url: str,
    payloads: Payloads,  # mints URLs for offloaded payloads as frames are read
    openapi: bool = False,  # serve the OpenAPI document at /openapi.json
    cors_origins: tuple[str, ...] = (),  # browser origins allowed to call the API
) -> FastAPI:
    app = _TriggerApp(
        title="Hatchway",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if openapi else None,
    )
    app.add_middleware(_Guard)
    _allow_origins(app, cors_origins)

    _answer_errors_in_the_protocols_shape(app)

    async def authorize(run_id: str, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, "Authorization: Bearer <run token> is required"
            )
        # Off the loop: now and then the key ring is re-read from Secrets Manager.
        await asyncio.to_thread(tokens.verify, token, run_id)

    async def existing_run(run_id: str) -> RunRecord:
        logger.append_keys(run_id=run_id)  # this request's lines name the run
        run = await asyncio.to_thread(store.get_run, run_id)
        if run is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"run {run_id} not found")
        return run

    @app.post(
        "/runs",
        status_code=201,
        response_model=RunStarted,
        responses=_errors(
            ErrorCode.BAD_REQUEST,
            ErrorCode.FORBIDDEN,
            ErrorCode.UNKNOWN_WORKFLOW,
            ErrorCode.RATE_LIMITED,
            ErrorCode.UPSTREAM_UNAVAILABLE,
            *_ANY,
        ),
    )
    async def start_run(request: RunRequest, http: Request) -> dict[str, Any]:
        _through_authorized_route(http, START_ROUTE_KEY, "runs are started")
        if request.workflow not in allowed_workflows:
            raise ProtocolError(
                ErrorCode.UNKNOWN_WORKFLOW, f"workflow {request.workflow!r} cannot be started here"
            )
        try:
            run_id = await hatchet.start(request.workflow, request.input, request.metadata)
        except UnknownWorkflowError:
            raise ProtocolError(
                ErrorCode.UNKNOWN_WORKFLOW, f"Hatchet has no workflow {request.workflow!r}"
            ) from None
        except UpstreamUnavailableError as error:
            raise _hatchet_refused(request.workflow, error) from None
        run = await asyncio.to_thread(store.create_run, run_id, request.workflow)
        await asyncio.to_thread(queue.enqueue, run_id)
        token = await asyncio.to_thread(tokens.mint, run_id)
        logger.append_keys(run_id=run_id)  # the rest of this request's lines
        logger.info("run started", run_id=run_id, workflow=request.workflow)
        metrics.add_metric(name=RUNS_STARTED, unit=MetricUnit.Count, value=1)
        return {
            "runId": run_id,
            "workflow": request.workflow,
            "status": run.status,
            "token": token.token,
            "expiresAt": token.expires_at_iso,
            "websocketUrl": websocket_url,
        }

    @app.post(
        "/runs/{runId}/token",
        status_code=201,
        response_model=RunTokenIssued,
        responses=_errors(ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, *_ANY),
    )
    async def issue_token(run_id: RunId, http: Request) -> dict[str, Any]:
        """A fresh run token for a run your backend started: what a client's getToken
        asks for when the one it had expired while it was away."""
        _through_authorized_route(http, REISSUE_ROUTE_KEY, "run tokens are issued")
        await existing_run(run_id)
        token = await asyncio.to_thread(tokens.mint, run_id)
        logger.info("run token issued", run_id=run_id)
        return {
            "runId": run_id,
            "token": token.token,
            "expiresAt": token.expires_at_iso,
            "websocketUrl": websocket_url,
        }

    @app.get("/runs/{runId}", response_model=RunView, responses=_errors(*_AUTH, *_ANY))
    async def get_run(run_id: RunId, authorization: Authorization = None) -> dict[str, Any]:
        await authorize(run_id, authorization)
        return _run_view(await existing_run(run_id))

    @app.get(
        "/runs/{runId}/frames",
        response_model=FramesPage,
        responses=_errors(ErrorCode.BAD_REQUEST, *_AUTH, *_ANY),
    )
    async def get_frames(
        run_id: RunId,
        authorization: Authorization = None,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> dict[str, Any]:
        await authorize(run_id, authorization)
        await existing_run(run_id)
        frames = await asyncio.to_thread(store.read_frames, run_id, after, limit)
        return {
            "frames": await asyncio.to_thread(payloads.presign, frames),
            "next": int(frames[-1]["seq"]) if frames else after,
            "final": any(is_final(frame) for frame in frames),
        }

    @app.get("/healthz", responses={200: {"model": Health}, **_errors(*_ANY)})
    async def healthz() -> JSONResponse:
        try:
            await asyncio.to_thread(store.ping)
        except Exception as error:  # noqa: BLE001 - any failure means unhealthy
            logger.warning("table unreachable", error=str(error))
            return _error(ErrorCode.INTERNAL, "the table cannot be reached")
        return JSONResponse({"status": "ok"})

    return app


def build_app(settings: TriggerSettings) -> FastAPI:
    """The trigger function's app, every adapter from its settings."""
    return create_app(
        store=wiring.store(settings),
        queue=RunQueue(settings.run_queue_url),
        tokens=wiring.run_tokens(settings, settings.token_ttl_seconds),
        hatchet=HatchetTrigger(settings.hatchet),
        allowed_workflows=settings.workflow_allow_list,
        websocket_url=settings.websocket_url,
        payloads=wiring.payloads(settings),
        openapi=settings.openapi_enabled,
        cors_origins=settings.cors_origins,
    )
