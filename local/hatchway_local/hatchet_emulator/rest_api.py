"""The REST side of the emulator: the endpoints hatchet-sdk calls over HTTP, and
the fault-injection control API (``/_emulator/...``) that tests use when the
emulator runs in another process.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .engine import Status, TaskEvent, TaskRun, WorkflowRun
from .errors import EngineError
from .grpc_api import bearer_matches, run_status_name

if TYPE_CHECKING:
    from .server import HatchetEmulator

EMULATOR_KEY: web.AppKey[HatchetEmulator] = web.AppKey("emulator")

_HTTP_STATUS = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"errors": [{"description": message}]}, status=status)


@web.middleware
async def _auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    emulator = request.app[EMULATOR_KEY]
    if not bearer_matches(request.headers.get("Authorization", ""), emulator.token):
        return _error(401, "invalid or missing token")
    try:
        response: web.StreamResponse = await handler(request)
    except EngineError as error:
        return _error(_HTTP_STATUS.get(error.code, 400), str(error))
    return response


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
    duration = None
    if task.started_at is not None and task.finished_at is not None:
        duration = int((task.finished_at - task.started_at).total_seconds() * 1000)
    return {
        "metadata": _meta(task.external_id, created, task.finished_at),
        "taskExternalId": task.external_id,
        "taskId": 0,
        "taskInsertedAt": created.isoformat(),
        "displayName": task.spec.readable_id,
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
        "taskDisplayName": event.task.spec.readable_id,
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
    duration = None
    if run.started_at is not None and run.finished_at is not None:
        duration = int((run.finished_at - run.started_at).total_seconds() * 1000)
    return {
        "run": {
            "metadata": _meta(run.run_id, run.created_at, run.finished_at),
            "status": run_status_name(run.status),
            "tenantId": tenant_id,
            "displayName": run.workflow.name,
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
    cancelled = engine.cancel_tasks(list(body.get("externalIds") or []))
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
    return app
