"""The REST endpoints of crons and scheduled runs (``hatchet.cron.*``,
``hatchet.scheduled.*``), over ``schedules``; shapes as the engine's transformers give
them (api/v1/server/oas/transformers/workflow.go: ``ToCronWorkflowsFromSQLC``,
``ToScheduledWorkflowsFromSQLC``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from . import rest_api
from .engine import Engine
from .errors import EngineError
from .grpc_api import run_status_name
from .schedules import Cron, Scheduled, schedules_of

_PREFIX = "/api/v1/tenants/{tenant_id}/workflows"


def _engine(request: web.Request) -> Engine:
    return request.app[rest_api.EMULATOR_KEY].engine


def _meta(item_id: str, created: datetime) -> dict[str, str]:
    return {"id": item_id, "createdAt": created.isoformat(), "updatedAt": created.isoformat()}


def _workflow_ids(engine: Engine, name: str) -> tuple[str, str]:
    workflow = engine.workflows.get(name)
    return (workflow.workflow_id, workflow.version_id) if workflow else ("", "")


def _cron(engine: Engine, cron: Cron) -> dict[str, Any]:
    workflow_id, version_id = _workflow_ids(engine, cron.workflow)
    return {
        "metadata": _meta(cron.cron_id, cron.created_at),
        "tenantId": engine.tenant_id,
        "workflowVersionId": version_id,
        "workflowId": workflow_id,
        "workflowName": cron.workflow,
        "cron": cron.expression,
        "name": cron.name,
        "input": cron.input,
        "additionalMetadata": cron.additional_metadata,
        "enabled": cron.enabled,
        "method": cron.method,
        "priority": cron.priority,
    }


_RUN_STATUS = {"COMPLETED": "SUCCEEDED", "QUEUED": "QUEUED", "RUNNING": "RUNNING"}


def _scheduled_status(engine: Engine, scheduled: Scheduled) -> str:
    run = engine.runs.get(scheduled.run_id or "")
    if run is None:
        return "SCHEDULED"
    status = run_status_name(run.status)
    return _RUN_STATUS.get(status, status)


def _scheduled(engine: Engine, scheduled: Scheduled) -> dict[str, Any]:
    workflow_id, version_id = _workflow_ids(engine, scheduled.workflow)
    run = engine.runs.get(scheduled.run_id or "")
    row: dict[str, Any] = {
        "metadata": _meta(scheduled.schedule_id, scheduled.created_at),
        "tenantId": engine.tenant_id,
        "workflowVersionId": version_id,
        "workflowId": workflow_id,
        "workflowName": scheduled.workflow,
        "triggerAt": scheduled.trigger_at.isoformat(),
        "input": scheduled.input,
        "additionalMetadata": scheduled.additional_metadata,
        "method": scheduled.method,
        "priority": scheduled.priority,
    }
    if run is not None:
        row |= {
            "workflowRunId": run.run_id,
            "workflowRunCreatedAt": run.created_at.isoformat(),
            "workflowRunName": rest_api.display_name(run.workflow.name, run.created_at),
            "workflowRunStatus": _scheduled_status(engine, scheduled),
        }
    return row


def _page(request: web.Request, rows: list[dict[str, Any]]) -> web.Response:
    limit = rest_api._int(request.query, "limit", 50)
    offset = rest_api._int(request.query, "offset", 0)
    return web.json_response(
        {
            "rows": rows[offset : offset + limit],
            "pagination": rest_api._pagination(len(rows), limit, offset),
        }
    )


def _metadata_holds(metadata: dict[str, Any], request: web.Request) -> bool:
    pairs = rest_api._kv_pairs(request.query.getall("additionalMetadata", []))
    return all(str(metadata.get(key)) == value for key, value in pairs)


async def _body(request: web.Request) -> dict[str, Any]:
    body = await request.json()
    if not isinstance(body, dict):
        raise EngineError("INVALID_ARGUMENT", "the body must be a JSON object")
    return body


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name) or {}
    if not isinstance(value, dict):
        raise EngineError("INVALID_ARGUMENT", f"{name} must be a JSON object")
    return value


def _when(body: dict[str, Any]) -> datetime:
    when = rest_api._time(body, "triggerAt")
    if when is None:
        raise EngineError("INVALID_ARGUMENT", "triggerAt is required")
    return when


# -- crons -------------------------------------------------------------------------------


async def create_cron(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await _body(request)
    for name in ("cronName", "cronExpression"):
        if not isinstance(body.get(name), str):
            raise EngineError("INVALID_ARGUMENT", f"{name} is required")
    cron = schedules_of(engine).create_cron(
        request.match_info["workflow"],
        body["cronExpression"],
        _object(body, "input"),
        _object(body, "additionalMetadata"),
        body["cronName"],
        body.get("priority"),
    )
    return web.json_response(_cron(engine, cron))


async def list_crons(request: web.Request) -> web.Response:
    engine = _engine(request)
    query = request.query
    crons = [
        cron
        for cron in schedules_of(engine).crons.values()
        if (
            "workflowId" not in query
            or _workflow_ids(engine, cron.workflow)[0] == query["workflowId"]
        )
        and ("workflowName" not in query or cron.workflow == query["workflowName"])
        and ("cronName" not in query or cron.name == query["cronName"])
        and _metadata_holds(cron.additional_metadata, request)
    ]
    crons.sort(key=lambda cron: cron.created_at, reverse=True)
    return _page(request, [_cron(engine, cron) for cron in crons])


async def get_cron(request: web.Request) -> web.Response:
    engine = _engine(request)
    return web.json_response(_cron(engine, schedules_of(engine).get_cron(request.match_info["id"])))


async def delete_cron(request: web.Request) -> web.Response:
    schedules_of(_engine(request)).delete_cron(request.match_info["id"])
    return web.Response(status=204)


async def update_cron(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await _body(request)
    cron = schedules_of(engine).get_cron(request.match_info["id"])
    if isinstance(body.get("enabled"), bool):
        cron = schedules_of(engine).set_enabled(cron.cron_id, enabled=body["enabled"])
    return web.json_response(_cron(engine, cron))


async def trigger_cron(request: web.Request) -> web.Response:
    schedules = schedules_of(_engine(request))
    run = await schedules.trigger_cron(schedules.get_cron(request.match_info["id"]))
    return web.json_response({"externalId": run.run_id})


# -- scheduled runs ----------------------------------------------------------------------


async def create_scheduled(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await _body(request)
    scheduled = schedules_of(engine).schedule(
        request.match_info["workflow"],
        _when(body),
        _object(body, "input"),
        _object(body, "additionalMetadata"),
        body.get("priority"),
    )
    return web.json_response(_scheduled(engine, scheduled))


async def list_scheduled(request: web.Request) -> web.Response:
    engine = _engine(request)
    query = request.query
    statuses = set(query.getall("statuses", []))
    items = [
        s
        for s in schedules_of(engine).scheduled.values()
        if (
            "workflowId" not in query or _workflow_ids(engine, s.workflow)[0] == query["workflowId"]
        )
        and (not statuses or _scheduled_status(engine, s) in statuses)
        and _metadata_holds(s.additional_metadata, request)
    ]
    items.sort(key=lambda s: s.trigger_at)
    return _page(request, [_scheduled(engine, s) for s in items])


async def get_scheduled(request: web.Request) -> web.Response:
    engine = _engine(request)
    scheduled = schedules_of(engine).get_scheduled(request.match_info["id"])
    return web.json_response(_scheduled(engine, scheduled))


async def delete_scheduled(request: web.Request) -> web.Response:
    schedules_of(_engine(request)).delete_scheduled(request.match_info["id"])
    return web.Response(status=204)


async def update_scheduled(request: web.Request) -> web.Response:
    engine = _engine(request)
    scheduled = schedules_of(engine).reschedule(
        request.match_info["id"], _when(await _body(request))
    )
    return web.json_response(_scheduled(engine, scheduled))


async def trigger_scheduled(request: web.Request) -> web.Response:
    schedules = schedules_of(_engine(request))
    scheduled = schedules.get_scheduled(request.match_info["id"])
    if scheduled.timer is not None:
        scheduled.timer.cancel()
        scheduled.timer = None
    run = await schedules.trigger_scheduled(scheduled)
    return web.json_response({"externalId": run.run_id})


async def bulk_delete_scheduled(request: web.Request) -> web.Response:
    schedules = schedules_of(_engine(request))
    ids = [str(i) for i in (await _body(request)).get("scheduledWorkflowRunIds") or []]
    deleted, errors = [], []
    for schedule_id in ids:
        try:
            deleted.append(schedules.delete_scheduled(schedule_id).schedule_id)
        except EngineError as error:
            errors.append({"id": schedule_id, "error": str(error)})
    return web.json_response({"deletedIds": deleted, "errors": errors})


async def bulk_update_scheduled(request: web.Request) -> web.Response:
    schedules = schedules_of(_engine(request))
    updated, errors = [], []
    for update in (await _body(request)).get("updates") or []:
        schedule_id = str(update.get("id"))
        try:
            updated.append(schedules.reschedule(schedule_id, _when(update)).schedule_id)
        except EngineError as error:
            errors.append({"id": schedule_id, "error": str(error)})
    return web.json_response({"updatedIds": updated, "errors": errors})


def routes() -> list[web.RouteDef]:
    return [
        web.get(f"{_PREFIX}/crons", list_crons),
        web.get(f"{_PREFIX}/crons/{{id}}", get_cron),
        web.delete(f"{_PREFIX}/crons/{{id}}", delete_cron),
        web.patch(f"{_PREFIX}/crons/{{id}}", update_cron),
        web.post(f"{_PREFIX}/crons/{{id}}", trigger_cron),
        web.get(f"{_PREFIX}/scheduled", list_scheduled),
        web.post(f"{_PREFIX}/scheduled/bulk-delete", bulk_delete_scheduled),
        web.post(f"{_PREFIX}/scheduled/bulk-update", bulk_update_scheduled),
        web.get(f"{_PREFIX}/scheduled/{{id}}", get_scheduled),
        web.delete(f"{_PREFIX}/scheduled/{{id}}", delete_scheduled),
        web.patch(f"{_PREFIX}/scheduled/{{id}}", update_scheduled),
        web.post(f"{_PREFIX}/scheduled/{{id}}", trigger_scheduled),
        web.post(f"{_PREFIX}/{{workflow}}/crons", create_cron),
        web.post(f"{_PREFIX}/{{workflow}}/scheduled", create_scheduled),
    ]
