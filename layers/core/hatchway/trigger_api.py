"""The HTTP trigger API (FastAPI; Mangum adapts it to Lambda): start runs, read a
run's status and its retained frames. Errors always have the protocol's shape
``{"error": {"code", "message"}}``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from . import wiring
from .hatchet_adapter import HatchetTrigger, UnknownWorkflowError, UpstreamUnavailableError
from .observability import logger
from .payloads import PayloadError, Payloads
from .protocol import HTTP_STATUS, ErrorCode, ProtocolError, error_body, is_final
from .run_queue import RunQueue
from .settings import TriggerSettings
from .store import RunRecord, Store
from .tokens import RunTokens

MAX_BODY_BYTES = 256 * 1024


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(min_length=1, max_length=256)
    input: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _error(code: ErrorCode, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=HTTP_STATUS[code])


def _run_view(run: RunRecord) -> dict[str, Any]:
    return {
        "runId": run.run_id,
        "workflow": run.workflow,
        "status": run.status,
        "lastSeq": run.last_seq,
        "createdAt": _iso(run.created_at),
        "updatedAt": _iso(run.updated_at),
    }


def create_app(
    *,
    store: Store,
    queue: RunQueue,
    tokens: RunTokens,
    hatchet: HatchetTrigger,
    allowed_workflows: frozenset[str],
    websocket_url: str,
    payloads: Payloads,  # mints URLs for offloaded payloads as frames are read
) -> FastAPI:
    app = FastAPI(title="Hatchway", version="1", docs_url=None, redoc_url=None)

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
        code = ErrorCode.NOT_FOUND if error.status_code in (404, 405) else ErrorCode.BAD_REQUEST
        return JSONResponse(error_body(code, str(error.detail)), status_code=error.status_code)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:  # noqa: ANN401
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(ErrorCode.TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    def authorize(run_id: str, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, "Authorization: Bearer <run token> is required"
            )
        tokens.verify(token, run_id)

    async def existing_run(run_id: str) -> RunRecord:
        run = await asyncio.to_thread(store.get_run, run_id)
        if run is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"run {run_id} not found")
        return run

    @app.post("/runs", status_code=201)
    async def start_run(request: RunRequest) -> dict[str, Any]:
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
            logger.warning("hatchet did not answer", error=str(error))
            raise ProtocolError(ErrorCode.UPSTREAM_UNAVAILABLE, "Hatchet did not answer") from None
        run = await asyncio.to_thread(store.create_run, run_id, request.workflow)
        await asyncio.to_thread(queue.enqueue, run_id)
        token = tokens.mint(run_id)
        logger.info("run started", run_id=run_id, workflow=request.workflow)
        return {
            "runId": run_id,
            "workflow": request.workflow,
            "status": run.status,
            "token": token.token,
            "expiresAt": token.expires_at_iso,
            "websocketUrl": websocket_url,
        }

    @app.get("/runs/{run_id}")
    async def get_run(
        run_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        authorize(run_id, authorization)
        return _run_view(await existing_run(run_id))

    @app.get("/runs/{run_id}/frames")
    async def get_frames(
        run_id: str,
        authorization: Annotated[str | None, Header()] = None,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> dict[str, Any]:
        authorize(run_id, authorization)
        await existing_run(run_id)
        frames = await asyncio.to_thread(store.read_frames, run_id, after, limit)
        return {
            "frames": await asyncio.to_thread(payloads.presign, frames),
            "next": int(frames[-1]["seq"]) if frames else after,
            "final": any(is_final(frame) for frame in frames),
        }

    @app.get("/healthz")
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
    )
