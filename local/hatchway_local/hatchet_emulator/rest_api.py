"""The REST side of the emulator: the endpoints hatchet-sdk calls over HTTP, and
the fault-injection control API (``/_emulator/...``) that tests use when the
emulator runs in another process.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiMapping

from . import affinity, durable_api, webhooks
from .engine import (
    Engine,
    Status,
    TaskEvent,
    TaskRun,
    Worker,
    WorkflowRun,
    WorkflowSpec,
    parse_duration,
    utcnow,
)
from .errors import EngineError
from .event_filters import EventFilter, PushedEvent
from .expressions import evaluate as evaluate_expression
from .grpc_api import bearer_matches, run_status_name
from .schedules import schedules_of
from .schedules_rest import routes as schedule_routes

if TYPE_CHECKING:
    from .server import HatchetEmulator

EMULATOR_KEY: web.AppKey[HatchetEmulator] = web.AppKey("emulator")

_HTTP_STATUS = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"errors": [{"description": message}]}, status=status)


@web.middleware
async def _auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    emulator = request.app[EMULATOR_KEY]
    public = request.match_info.handler in webhooks.PUBLIC_HANDLERS
    if not public and not bearer_matches(request.headers.get("Authorization", ""), emulator.token):
        return _error(401, "invalid or missing token")
    unmatched = request.match_info.http_exception
    if unmatched is not None:  # a JSON error, which the SDK's client can read, names the gap
        return _error(
            unmatched.status,
            f"{request.method} {request.path} is not served by the Hatchway Hatchet emulator",
        )
    try:
        response: web.StreamResponse = await handler(request)
    except EngineError as error:
        return _error(_HTTP_STATUS.get(error.code, 400), str(error))
    except json.JSONDecodeError as error:  # a body that is not JSON, as the engine's 400
        return _error(400, f"invalid JSON body: {error}")
    return response


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def display_name(name: str, created: datetime) -> str:
    """The engine names a task "<readable id>-<unix ms>" and a run "<workflow>-<unix ms>"
    (pkg/repository/task.go, trigger.go): tests match a prefix."""
    return f"{name}-{int(created.timestamp() * 1000)}"


def _duration_ms(started: datetime | None, finished: datetime | None) -> int | None:
    if started is None or finished is None:
        return None
    return int((finished - started).total_seconds() * 1000)


def _step_id(run: WorkflowRun, readable_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run.workflow.workflow_id}/{readable_id}"))


def _meta(resource_id: str, created: datetime, updated: datetime | None) -> dict[str, str]:
    return {
        "id": resource_id,
        "createdAt": created.isoformat(),
        "updatedAt": (updated or created).isoformat(),
    }


def _task_summary(task: TaskRun, tenant_id: str) -> dict[str, Any]:
    """A V1TaskSummary as the engine's transformer builds it: ``output`` is always an
    object ({} until the task completed), ``errorMessage`` a string ("" when none)."""
    run = task.run
    created = task.created_at or run.created_at
    duration = _duration_ms(task.started_at, task.finished_at)
    return {
        "metadata": _meta(task.external_id, created, task.finished_at),
        "taskExternalId": task.external_id,
        "taskId": 0,
        "taskInsertedAt": created.isoformat(),
        "displayName": display_name(task.spec.readable_id, created),
        "stepId": _step_id(run, task.spec.readable_id),
        "actionId": task.spec.action,
        "status": run_status_name(task.status),
        "retryCount": task.retry_count,
        "attempt": task.retry_count + 1,
        "tenantId": tenant_id,
        "workflowId": run.workflow.workflow_id,
        "workflowVersionId": run.workflow.version_id,
        "workflowRunExternalId": run.run_id,
        "input": run.input,
        "output": task.output_object() or {},
        "errorMessage": task.error if task.failed and task.error else "",
        "additionalMetadata": run.additional_metadata,
        "createdAt": created.isoformat(),
        "startedAt": _iso(task.started_at),
        "finishedAt": _iso(task.finished_at),
        "duration": duration,
        "type": "TASK",
        "numSpawnedChildren": 0,
        "isDurable": False,
    }


def _task_event(event: TaskEvent) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "taskId": event.task.external_id,
        "timestamp": event.at.isoformat(),
        "eventType": event.event_type,
        "message": event.message,
        "errorMessage": event.error or "",
        "output": event.output,
        "workerId": event.worker_id,
        "taskDisplayName": display_name(
            event.task.spec.readable_id, event.task.created_at or event.task.run.created_at
        ),
        "retryCount": event.retry_count,
        "attempt": event.retry_count + 1,
    }


def _shape(run: WorkflowRun) -> list[dict[str, Any]]:
    """Each step with the steps that depend on it, as GetWorkflowShape gives them."""
    return [
        {
            "taskExternalId": task.external_id,
            "stepId": _step_id(run, name),
            "taskName": name,
            "childrenStepIds": [
                _step_id(run, child.spec.readable_id)
                for child in run.tasks.values()
                if name in child.spec.parents
            ],
        }
        for name, task in run.tasks.items()
        if not task.spec.on_failure
    ]


def _run_details(run: WorkflowRun, tenant_id: str) -> dict[str, Any]:
    duration = _duration_ms(run.started_at, run.finished_at)
    return {
        "run": {
            "metadata": _meta(run.run_id, run.created_at, run.finished_at),
            "status": run_status_name(run.status),
            "tenantId": tenant_id,
            "displayName": display_name(run.workflow.name, run.created_at),
            "workflowId": run.workflow.workflow_id,
            "workflowVersionId": run.workflow.version_id,
            "input": run.input,
            "output": run.output if run.status is Status.COMPLETED else {},
            "errorMessage": run.error or "",
            "additionalMetadata": run.additional_metadata,
            "createdAt": run.created_at.isoformat(),
            "startedAt": _iso(run.started_at),
            "finishedAt": _iso(run.finished_at),
            "duration": duration,
            "parentTaskExternalId": run.parent_task_external_id,
        },
        "taskEvents": [_task_event(event) for event in run.task_events],
        "shape": _shape(run),
        "tasks": [_task_summary(task, tenant_id) for task in run.created_tasks],
    }


# -- SDK endpoints ---------------------------------------------------------------------


async def get_run(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR_KEY]
    run = emulator.engine.get_run(request.match_info["run_id"])
    return web.json_response(_run_details(run, emulator.tenant_id))


async def get_run_status(request: web.Request) -> web.Response:
    run = request.app[EMULATOR_KEY].engine.get_run(request.match_info["run_id"])
    return web.json_response(run_status_name(run.status))


async def cancel_tasks(request: web.Request) -> web.Response:
    body = await request.json()
    engine = request.app[EMULATOR_KEY].engine
    cancelled = engine.cancel_tasks(_ids_or_filter(engine, body))
    return web.json_response({"ids": cancelled})


async def patch_worker(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR_KEY]
    body = await request.json()
    worker = emulator.engine.get_worker(request.match_info["worker_id"])
    if "isPaused" in body:
        worker = emulator.engine.set_paused(worker.worker_id, paused=bool(body["isPaused"]))
    return web.json_response(
        {
            "metadata": {
                "id": worker.worker_id,
                "createdAt": worker.registered_at.isoformat(),
                "updatedAt": worker.registered_at.isoformat(),
            },
            "name": worker.name,
            "type": "SELFHOSTED",
            "status": "PAUSED" if worker.paused else "ACTIVE",
        }
    )


async def get_worker(request: web.Request) -> web.Response:
    engine = request.app[EMULATOR_KEY].engine
    return web.json_response(_worker(engine.get_worker(request.match_info["worker_id"])))


async def list_workers(request: web.Request) -> web.Response:
    engine = request.app[EMULATOR_KEY].engine
    rows = [_worker(worker) for worker in engine.workers.values()]
    return web.json_response({"rows": rows, "pagination": _pagination(len(rows), len(rows), 0)})


async def list_runs(request: web.Request) -> web.Response:
    """``V1WorkflowRunList`` (api/v1/server/handlers/v1/workflow-runs/list.go): whole runs
    newest first (a run of one task shown as that task, a DAG with its tasks as
    ``children``), or with ``only_tasks`` the tasks themselves."""
    emulator = request.app[EMULATOR_KEY]
    query = request.query
    limit, offset = _int(query, "limit", 50), _int(query, "offset", 0)
    payloads = _bool(query, "include_payloads")
    only_tasks = _bool(query, "only_tasks")
    runs = _matching_runs(emulator.engine, query, only_tasks=only_tasks)
    statuses = set(query.getall("statuses", []))
    rows: list[dict[str, Any]]
    if only_tasks:
        worker_id = query.get("worker_id")
        tasks = [
            task
            for run in runs
            for task in run.created_tasks
            if (not statuses or run_status_name(task.status) in statuses)
            and (worker_id is None or task.worker_id == worker_id)
        ]
        tasks.sort(key=lambda task: task.created_at or task.run.created_at, reverse=True)
        rows = [_payloads(_listed_task(task, emulator.tenant_id), payloads) for task in tasks]
    else:
        rows = [
            _payloads(_run_row(run, emulator.tenant_id), payloads)
            for run in runs
            if not statuses or _run_row_status(run) in statuses
        ]
    return web.json_response(
        {"rows": rows[offset : offset + limit], "pagination": _pagination(len(rows), limit, offset)}
    )


async def list_run_external_ids(request: web.Request) -> web.Response:
    engine = request.app[EMULATOR_KEY].engine
    statuses = set(request.query.getall("statuses", []))
    runs = _matching_runs(engine, request.query, only_tasks=False)
    return web.json_response(
        [run.run_id for run in runs if not statuses or _run_row_status(run) in statuses]
    )


async def replay_tasks(request: web.Request) -> web.Response:
    body = await request.json()
    engine = request.app[EMULATOR_KEY].engine
    return web.json_response({"ids": engine.replay(_ids_or_filter(engine, body))})


async def list_workflows(request: web.Request) -> web.Response:
    engine = request.app[EMULATOR_KEY].engine
    limit, offset = _int(request.query, "limit", 50), _int(request.query, "offset", 0)
    name = (request.query.get("name") or "").lower()
    rows = [_workflow(w, engine) for w in engine.workflows.values() if name in w.name.lower()]
    return web.json_response(
        {"rows": rows[offset : offset + limit], "pagination": _pagination(len(rows), limit, offset)}
    )


async def get_workflow(request: web.Request) -> web.Response:
    engine = request.app[EMULATOR_KEY].engine
    workflow = engine.workflow_by_id(request.match_info["workflow_id"])
    return web.json_response(_workflow(workflow, engine))


async def delete_workflow(request: web.Request) -> web.Response:
    """204, as ``WorkflowDelete`` (api/v1/server/handlers/workflows/delete.go)."""
    engine = request.app[EMULATOR_KEY].engine
    workflow = engine.delete_workflow(request.match_info["workflow_id"])
    schedules_of(engine).forget_workflow(workflow.name)
    return web.Response(status=204)


async def update_workflow(request: web.Request) -> web.Response:
    """Pause (with its queue TTL) or unpause; runs its crons and schedules start while it
    is paused wait with the rest of its queue."""
    engine = request.app[EMULATOR_KEY].engine
    workflow = engine.workflow_by_id(request.match_info["workflow_id"])
    body = await request.json()
    pause = body.get("pause")
    schedules = schedules_of(engine)
    if isinstance(pause, dict) and pause.get("action") == "pause":
        ttl = pause.get("pausedWorkflowQueueTTL")
        engine.pause_workflow(workflow.name, parse_duration(ttl) if ttl else None)
        schedules.pause(
            workflow.name,
            pause.get("pausedWorkflowCronRunQueueBehavior") or "QUEUE",
            pause.get("pausedWorkflowScheduledRunQueueBehavior") or "QUEUE",
        )
    elif isinstance(pause, dict) and pause.get("action") == "unpause":
        engine.unpause_workflow(workflow.name)
        schedules.resume(workflow.name)
    return web.json_response(_workflow(workflow, engine))


async def list_events(request: web.Request) -> web.Response:
    """``V1EventList`` (api/v1/server/handlers/v1/events/list.go): newest first, since a
    day ago unless given; every metadata ``k:v`` pair must match."""
    emulator = request.app[EMULATOR_KEY]
    engine, query = emulator.engine, request.query
    limit, offset = _int(query, "limit", 50), _int(query, "offset", 0)
    since = _time(query, "since") or utcnow() - timedelta(days=1)
    until = _time(query, "until")
    keys, ids, scopes = (set(query.getall(n, [])) for n in ("keys", "eventIds", "scopes"))
    workflow_ids = set(query.getall("workflowIds", []))
    statuses = set(query.getall("workflowRunStatuses", []))
    pairs = _kv_pairs(query.getall("additionalMetadata", []))
    rows = []
    for event in reversed(engine.events):
        runs = _event_runs(engine, event)
        if (
            event.seen_at < since
            or (until is not None and event.seen_at > until)
            or (keys and event.key not in keys)
            or (ids and event.event_id not in ids)
            or (scopes and event.scope not in scopes)
            or (workflow_ids and not any(r.workflow.workflow_id in workflow_ids for r in runs))
            or (statuses and not any(run_status_name(r.status) in statuses for r in runs))
            or any(event.additional_metadata.get(k) != v for k, v in pairs)
        ):
            continue
        rows.append(_event(event, runs, emulator.tenant_id))
    return web.json_response(
        {"rows": rows[offset : offset + limit], "pagination": _pagination(len(rows), limit, offset)}
    )


async def get_event(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR_KEY]
    event_id = request.match_info["event_id"]
    for event in emulator.engine.events:
        if event.event_id == event_id:
            runs = _event_runs(emulator.engine, event)
            return web.json_response(_event(event, runs, emulator.tenant_id))
    raise EngineError("NOT_FOUND", f"event {event_id!r} not found")


async def create_filter(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR_KEY]
    body = await request.json()
    for name in ("workflowId", "expression", "scope"):
        if not isinstance(body.get(name), str):
            raise EngineError("INVALID_ARGUMENT", f"{name} is required")
    event_filter = emulator.engine.create_filter(
        body["workflowId"], body["scope"], body["expression"], body.get("payload") or {}
    )
    return web.json_response(_filter(event_filter, emulator.tenant_id))


async def debug_cel(request: web.Request) -> web.Response:
    """``hatchet.cel.debug``: an event filter's expression over a made-up input, metadata
    and filter payload; a failure is a 200 with ``ERROR`` (handlers/v1/cel/debug.go)."""
    body = await request.json()
    if not isinstance(body, dict):
        raise EngineError("INVALID_ARGUMENT", "the body must be a JSON object")
    if not isinstance(body.get("expression"), str) or not isinstance(body.get("input"), dict):
        raise EngineError("INVALID_ARGUMENT", "expression and input are required")
    variables = {
        "input": body["input"],
        "additional_metadata": body.get("additionalMetadata") or {},
        "payload": body.get("filterPayload") or {},
    }
    try:
        output = evaluate_expression(body["expression"], variables)
    except EngineError as error:
        return web.json_response({"status": "ERROR", "error": str(error)})
    if not isinstance(output, bool):
        return web.json_response({"status": "ERROR", "error": f"{output!r} is not a boolean"})
    return web.json_response({"status": "SUCCESS", "output": output})


async def list_filters(request: web.Request) -> web.Response:
    """``V1FilterList`` (handlers/v1/filters/list.go): newest first, up to 20000; its
    page numbers start at 0 (``ToV1FilterList``)."""
    emulator = request.app[EMULATOR_KEY]
    limit, offset = _int(request.query, "limit", 20000) or 1, _int(request.query, "offset", 0)
    workflow_ids = set(request.query.getall("workflowIds", []))
    scopes = set(request.query.getall("scopes", []))
    matching = [
        f
        for f in reversed(emulator.engine.event_filters.values())
        if (not workflow_ids or f.workflow_id in workflow_ids) and (not scopes or f.scope in scopes)
    ]
    rows = [_filter(f, emulator.tenant_id) for f in matching[offset : offset + limit]]
    pagination = {
        "current_page": offset // limit,
        "next_page": offset // limit + 1,
        "num_pages": math.ceil(len(matching) / limit),
    }
    return web.json_response({"rows": rows, "pagination": pagination})


async def get_filter(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR_KEY]
    event_filter = emulator.engine.get_filter(request.match_info["filter_id"])
    return web.json_response(_filter(event_filter, emulator.tenant_id))


async def update_filter(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR_KEY]
    body = await request.json()
    event_filter = emulator.engine.update_filter(
        request.match_info["filter_id"],
        scope=body.get("scope"),
        expression=body.get("expression"),
        payload=body.get("payload"),
    )
    return web.json_response(_filter(event_filter, emulator.tenant_id))


async def delete_filter(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR_KEY]
    event_filter = emulator.engine.delete_filter(request.match_info["filter_id"])
    return web.json_response(_filter(event_filter, emulator.tenant_id))


# -- catalog views ---------------------------------------------------------------------


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    try:
        return max(int(query.get(name, default)), 0)
    except ValueError as error:
        raise EngineError("INVALID_ARGUMENT", f"{name} must be an integer") from error


def _bool(query: Mapping[str, str], name: str) -> bool:
    return str(query.get(name, "false")).lower() == "true"


def _time(source: Mapping[str, Any], name: str) -> datetime | None:
    text = source.get(name)
    if not text:
        return None
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError as error:
        raise EngineError("INVALID_ARGUMENT", f"{name} must be an RFC 3339 time") from error
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _kv_pairs(values: Iterable[str]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, item = value.partition(":")
        if not sep:
            raise EngineError("INVALID_ARGUMENT", f"invalid additional metadata filter: {value}")
        pairs.append((key, item))
    return pairs


def _pagination(total: int, limit: int, offset: int) -> dict[str, int]:
    """``PaginationResponse`` as the run and event transformers compute it."""
    limit = limit or 1
    current = offset // limit + 1
    return {
        "current_page": current,
        "next_page": current + 1,
        "num_pages": math.ceil(total / limit),
    }


def _metadata_matches(run: WorkflowRun, pairs: list[tuple[str, str]], operator: str) -> bool:
    """One pair, or the AND operator: all must match; several pairs default to any
    (``additionalMetadataOperator`` in handlers/v1/workflow-runs/list.go)."""
    if not pairs:
        return True
    hits = [run.additional_metadata.get(key) == value for key, value in pairs]
    return all(hits) if len(pairs) == 1 or operator == "AND" else any(hits)


def _matching_runs(
    engine: Engine, query: MultiMapping[str], *, only_tasks: bool
) -> list[WorkflowRun]:
    since, until = _time(query, "since"), _time(query, "until")
    workflow_ids = set(query.getall("workflow_ids", []))
    pairs = _kv_pairs(query.getall("additional_metadata", []))
    operator = str(query.get("additional_metadata_operator", "OR")).upper()
    parent = None if only_tasks else query.get("parent_task_external_id")  # as list.go
    event_id = query.get("triggering_event_external_id")
    runs = [
        run
        for run in engine.runs.values()
        if (since is None or run.created_at >= since)
        and (until is None or run.created_at <= until)
        and (not workflow_ids or run.workflow.workflow_id in workflow_ids)
        and (parent is None or parent in _parent_ids(engine, run))
        and (event_id is None or run.additional_metadata.get("hatchet__event_id") == event_id)
        and _metadata_matches(run, pairs, operator)
    ]
    runs.sort(key=lambda run: run.created_at, reverse=True)
    return runs


def _parent_ids(engine: Engine, run: WorkflowRun) -> tuple[str | None, ...]:
    """The ids a child run's parent task goes by: its own, and its run's when that run is a
    standalone task (on the real engine a standalone task's run id is its task id)."""
    parent_run = engine.runs.get(run.parent_run_id or "")
    standalone = parent_run is not None and len(parent_run.tasks) == 1
    return (run.parent_task_external_id, run.parent_run_id if standalone else None)


def _ids_or_filter(engine: Engine, body: dict[str, Any]) -> list[str]:
    """A bulk cancel or replay body's ids, or the runs its filter selects; not both
    (``ReplayTasks`` in internal/services/admin/v1/server.go)."""
    ids = [str(external_id) for external_id in body.get("externalIds") or []]
    task_filter = body.get("filter")
    if ids and task_filter:
        raise EngineError("INVALID_ARGUMENT", "cannot provide both external ids and filter")
    if not isinstance(task_filter, dict):
        return ids
    since, until = _time(task_filter, "since"), _time(task_filter, "until")
    statuses = set(task_filter.get("statuses") or [])
    workflow_ids = set(task_filter.get("workflowIds") or [])
    pairs = _kv_pairs(task_filter.get("additionalMetadata") or [])
    return [
        run.run_id
        for run in engine.runs.values()
        if (since is None or run.created_at >= since)
        and (until is None or run.created_at <= until)
        and (not statuses or _run_row_status(run) in statuses)
        and (not workflow_ids or run.workflow.workflow_id in workflow_ids)
        and all(run.additional_metadata.get(key) == value for key, value in pairs)
    ]


def _single_task(run: WorkflowRun) -> TaskRun | None:
    """The task of a run of one task (the engine's TASK kind: one step besides on-failure)."""
    regular = [task for task in run.tasks.values() if not task.spec.on_failure]
    return regular[0] if len(regular) == 1 else None


def _run_row_status(run: WorkflowRun) -> str:
    task = _single_task(run)
    return run_status_name(task.status if task is not None else run.status)


def _listed_task(task: TaskRun, tenant_id: str) -> dict[str, Any]:
    row = _task_summary(task, tenant_id)
    row["workflowName"] = task.run.workflow.name
    row["parentTaskExternalId"] = task.run.parent_task_external_id
    return row


def _run_row(run: WorkflowRun, tenant_id: str) -> dict[str, Any]:
    """A run as ``WorkflowRunDataToV1TaskSummary`` shows it (type DAG either way), with
    the run's id, which runs.get and replay take."""
    task = _single_task(run)
    if task is not None:
        row = _listed_task(task, tenant_id)
    else:
        row = _task_summary(next(iter(run.tasks.values())), tenant_id)
        duration = _duration_ms(run.started_at, run.finished_at)
        row |= {
            "taskExternalId": run.run_id,
            "taskInsertedAt": run.created_at.isoformat(),
            "displayName": display_name(run.workflow.name, run.created_at),
            "stepId": str(uuid.UUID(int=0)),
            "actionId": "",
            "status": run_status_name(run.status),
            "retryCount": 0,
            "attempt": 1,
            "output": run.output if run.status is Status.COMPLETED else {},
            "errorMessage": run.error or "",
            "createdAt": run.created_at.isoformat(),
            "startedAt": _iso(run.started_at),
            "finishedAt": _iso(run.finished_at),
            "duration": duration,
            "workflowName": run.workflow.name,
            "parentTaskExternalId": run.parent_task_external_id,
            "children": [_listed_task(t, tenant_id) for t in run.created_tasks],
        }
    row["metadata"] = _meta(run.run_id, run.created_at, run.created_at)
    row["workflowRunExternalId"] = run.run_id
    row["type"] = "DAG"
    return row


def _payloads(row: dict[str, Any], include: bool) -> dict[str, Any]:
    """Without ``include_payloads`` (the engine's default) input and output are {}."""
    if not include:
        for summary in [row, *(row.get("children") or [])]:
            summary |= {"input": {}, "output": {}, "payloadsRestricted": True}
    return row


def _workflow(workflow: WorkflowSpec, engine: Engine) -> dict[str, Any]:
    created = _catalog_created(engine)
    version = {
        "metadata": _meta(workflow.version_id, created, created),
        "version": workflow.version_id,
        "order": 1,
        "workflowId": workflow.workflow_id,
    }
    return {
        "metadata": _meta(workflow.workflow_id, created, created),
        "name": workflow.name,
        "description": "",
        "tenantId": engine.tenant_id,
        "isPaused": workflow.name in engine.paused_workflows,
        "versions": [version],
        "tags": [],
    }


_CATALOG_CREATED: dict[int, datetime] = {}


def _catalog_created(engine: Engine) -> datetime:
    """One creation time for every workflow: the engine keeps none of its own."""
    return _CATALOG_CREATED.setdefault(id(engine), utcnow())


def _worker(worker: Worker) -> dict[str, Any]:
    status = "PAUSED" if worker.paused else "ACTIVE" if worker.listeners > 0 else "INACTIVE"
    registered = worker.registered_at.isoformat()
    silent_s = max(asyncio.get_running_loop().time() - worker.last_seen, 0.0)
    return {
        "metadata": {"id": worker.worker_id, "createdAt": registered, "updatedAt": registered},
        "name": worker.name,
        "type": "SELFHOSTED",
        "status": status,
        "actions": sorted(worker.actions),
        "lastHeartbeatAt": (utcnow() - timedelta(seconds=silent_s)).isoformat(),
        "slotConfig": {  # per slot type (buildWorkerSlotConfig)
            slot_type: {"limit": limit, "available": worker.available(slot_type)}
            for slot_type, limit in worker.slot_config.items()
        },
        "labels": affinity.rest_labels(worker, registered),
    }


def _event_runs(engine: Engine, event: PushedEvent) -> list[WorkflowRun]:
    return [engine.runs[run_id] for run_id, _ in event.triggered if run_id in engine.runs]


def _event(event: PushedEvent, runs: list[WorkflowRun], tenant_id: str) -> dict[str, Any]:
    counts = dict.fromkeys(("running", "queued", "succeeded", "failed", "cancelled"), 0)
    for run in runs:
        status = run_status_name(run.status)
        counts["succeeded" if status == "COMPLETED" else status.lower()] += 1
    seen = event.seen_at.isoformat()
    webhook = {"triggeringWebhookName": event.triggering_webhook_name}
    return {
        "metadata": {"id": event.event_id, "createdAt": seen, "updatedAt": seen},
        "key": event.key,
        "tenantId": tenant_id,
        "workflowRunSummary": counts,
        "additionalMetadata": event.additional_metadata,
        "payload": event.payload,
        "scope": event.scope,
        "seenAt": seen,
        "triggeredRuns": [
            {"workflowRunId": run_id, "filterId": filter_id}
            for run_id, filter_id in event.triggered
        ],
    } | (webhook if event.triggering_webhook_name else {})


def _filter(event_filter: EventFilter, tenant_id: str) -> dict[str, Any]:
    return {
        "metadata": {
            "id": event_filter.filter_id,
            "createdAt": event_filter.created_at.isoformat(),
            "updatedAt": event_filter.updated_at.isoformat(),
        },
        "tenantId": tenant_id,
        "workflowId": event_filter.workflow_id,
        "scope": event_filter.scope,
        "expression": event_filter.expression,
        "payload": event_filter.payload,
        "isDeclarative": event_filter.is_declarative,
    }


# -- control API for fault tests -------------------------------------------------------


async def control_state(request: web.Request) -> web.Response:
    engine = request.app[EMULATOR_KEY].engine
    return web.json_response(
        {
            "runs": len(engine.runs),
            "workers": len(engine.workers),
            "subscriptions": engine.subscription_count(),
        }
    )


async def control_run(request: web.Request) -> web.Response:
    engine = request.app[EMULATOR_KEY].engine
    run = engine.get_run(request.match_info["run_id"])
    return web.json_response(
        {
            "runId": run.run_id,
            "workflow": run.workflow.name,
            "status": run.status.value,
            "subscriptions": engine.subscription_count(run.run_id),
            "tasks": {
                name: {
                    "externalId": t.external_id,
                    "status": t.status.value,
                    "retryCount": t.retry_count,
                }
                for name, t in run.tasks.items()
            },
        }
    )


async def control_break(request: web.Request) -> web.Response:
    engine = request.app[EMULATOR_KEY].engine
    broken = engine.break_subscriptions(request.match_info.get("run_id"))
    return web.json_response({"broken": broken})


async def control_subscription_faults(request: web.Request) -> web.Response:
    body = await request.json()
    engine = request.app[EMULATOR_KEY].engine
    if "refuseForSeconds" in body:
        engine.refuse_subscriptions(
            float(body["refuseForSeconds"]), str(body.get("code", "UNAVAILABLE"))
        )
    if "delaySeconds" in body:
        engine.delay_subscriptions(float(body["delaySeconds"]), float(body.get("forSeconds", 3600)))
    return web.json_response({"ok": True})


async def control_clear_faults(request: web.Request) -> web.Response:
    request.app[EMULATOR_KEY].engine.clear_faults()
    return web.json_response({"ok": True})


async def list_rate_limits(request: web.Request) -> web.Response:
    """``hatchet.rate_limits.list`` (rate_limits.py)."""
    query = request.query
    listed = request.app[EMULATOR_KEY].engine.rate_limits.list(
        utcnow(),
        search=query.get("search"),
        order_by=query.get("orderByField"),
        direction=query.get("orderByDirection"),
        offset=_int(query, "offset", 0),
        limit=_int(query, "limit", 50),
    )
    return web.json_response(listed)


async def control_restart(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    request.app[EMULATOR_KEY].schedule_restart(float(body.get("downForSeconds", 0)))
    return web.json_response({"restarting": True}, status=202)


def build_rest_app(emulator: HatchetEmulator) -> web.Application:
    app = web.Application(middlewares=[_auth_and_errors])
    app[EMULATOR_KEY] = emulator
    app.add_routes(
        [
            web.get("/api/v1/stable/workflow-runs/{run_id}", get_run),
            web.get("/api/v1/stable/workflow-runs/{run_id}/status", get_run_status),
            web.post("/api/v1/stable/tenants/{tenant_id}/tasks/cancel", cancel_tasks),
            web.post("/api/v1/stable/tenants/{tenant_id}/tasks/replay", replay_tasks),
            web.get("/api/v1/stable/tenants/{tenant_id}/workflow-runs", list_runs),
            web.get(
                "/api/v1/stable/tenants/{tenant_id}/workflow-runs/external-ids",
                list_run_external_ids,
            ),
            web.get("/api/v1/tenants/{tenant_id}/workflows", list_workflows),
            web.get("/api/v1/workflows/{workflow_id}", get_workflow),
            web.patch("/api/v1/workflows/{workflow_id}", update_workflow),
            web.delete("/api/v1/workflows/{workflow_id}", delete_workflow),
            web.get("/api/v1/stable/tenants/{tenant_id}/events", list_events),
            web.get("/api/v1/stable/tenants/{tenant_id}/events/{event_id}", get_event),
            web.post("/api/v1/stable/tenants/{tenant_id}/filters", create_filter),
            web.get("/api/v1/stable/tenants/{tenant_id}/filters", list_filters),
            web.post("/api/v1/stable/tenants/{tenant_id}/cel/debug", debug_cel),
            web.get("/api/v1/stable/tenants/{tenant_id}/filters/{filter_id}", get_filter),
            web.patch("/api/v1/stable/tenants/{tenant_id}/filters/{filter_id}", update_filter),
            web.delete("/api/v1/stable/tenants/{tenant_id}/filters/{filter_id}", delete_filter),
            web.get("/api/v1/tenants/{tenant_id}/worker", list_workers),
            web.get("/api/v1/tenants/{tenant_id}/rate-limits", list_rate_limits),
            web.get("/api/v1/workers/{worker_id}", get_worker),
            web.patch("/api/v1/workers/{worker_id}", patch_worker),
            web.get("/_emulator/state", control_state),
            web.get("/_emulator/runs/{run_id}", control_run),
            web.post("/_emulator/break-subscriptions", control_break),
            web.post("/_emulator/runs/{run_id}/break-subscriptions", control_break),
            web.post("/_emulator/faults/subscriptions", control_subscription_faults),
            web.delete("/_emulator/faults", control_clear_faults),
            web.post("/_emulator/restart", control_restart),
        ]
    )
    app.add_routes(schedule_routes())  # crons and scheduled runs (schedules_rest.py)
    app.add_routes(webhooks.routes())  # incoming webhooks (webhooks.py)
    app.add_routes(durable_api.rest_routes(lambda request: request.app[EMULATOR_KEY].engine))
    return app
