"""Hatchet's gRPC services (Dispatcher, EventsService, WorkflowService, v1 AdminService)
served over the emulated engine.

Handlers are registered generically from the service descriptors in
``contracts``; a method without an implementation answers UNIMPLEMENTED, so an
SDK feature the emulator lacks fails loudly instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2
from grpc_status import rpc_status

from hatchway.observability import logger

from . import affinity, batches, contracts, worker_slots
from .concurrency import ConcurrencyLimit
from .conditions import Condition
from .durable import state_for as durable_state
from .durable_api import DurableServices
from .engine import (
    BROKEN,
    Assignment,
    Engine,
    EventSubscription,
    RunEvent,
    Status,
    TaskRun,
    TaskSpec,
    WorkflowRun,
    WorkflowSpec,
    parse_duration,
    utcnow,
)
from .errors import EngineError
from .expressions import check as check_expression
from .idempotency import BulkIdempotencyCollisionError, IdempotencyCollisionError, IdempotencyConfig
from .rate_limits import RateLimitSpec
from .schedules import check_cron, schedules_of

# The engine version GetVersion reports. hatchet-sdk 1.43 gates features on it:
# below v0.78.23 workers fall back to a legacy registration that it fails on
# purpose; v0.111.0 enables retry_after_ms on failures, which the engine honours.
ENGINE_VERSION = "v0.111.0"

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def _loads(text: str | bytes, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError as error:
        raise EngineError("INVALID_ARGUMENT", f"not valid JSON: {error}") from error


def _stamp(message: Any, field: str, when: datetime) -> None:
    getattr(message, field).FromDatetime(when)


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


class HatchetServices:
    """The gRPC face of one ``Engine``; ``handlers()`` plugs it into a grpc.aio server."""

    def __init__(self, engine: Engine, token: str) -> None:
        self.engine = engine
        self._token = token
        self._m = contracts.message
        self.durable = DurableServices(engine)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        implementations: dict[str, dict[str, Any]] = {
            "Dispatcher": {
                "Register": self.register,
                "Listen": self.listen,
                "ListenV2": self.listen,
                "Heartbeat": self.heartbeat,
                "SubscribeToWorkflowEvents": self.subscribe_to_workflow_events,
                "SubscribeToWorkflowRuns": self.subscribe_to_workflow_runs,
                "SendStepActionEvent": self.send_step_action_event,
                "SendGroupKeyActionEvent": self._ack("ActionEventResponse"),
                "SendBatchActionEvent": self.send_batch_action_event,
                "PutOverridesData": self._ack("OverridesDataResponse"),
                "Unsubscribe": self.unsubscribe,
                "RefreshTimeout": self.refresh_timeout,
                "ReleaseSlot": self.release_slot,
                "UpsertWorkerLabels": self.upsert_worker_labels,
                "GetVersion": self.get_version,
            },
            "EventsService": {
                "Push": self.push_event,
                "BulkPush": self.bulk_push_events,
                "PutLog": self._ack("PutLogResponse"),
                "PutStreamEvent": self.put_stream_event,
            },
            "WorkflowService": {
                "TriggerWorkflow": self.trigger_workflow,
                "BulkTriggerWorkflow": self.bulk_trigger_workflow,
                "ScheduleWorkflow": self.schedule_workflow,
                "PutRateLimit": self.put_rate_limit,
            },
            "v1.AdminService": {
                "PutWorkflow": self.put_workflow,
                "CancelTasks": self.cancel_tasks,
                "TriggerWorkflowRun": self.trigger_workflow_run,
                "GetRunDetails": self.get_run_details,
            },
            "v1.V1Dispatcher": self.durable.implementations(),
        }
        return [self._service_handler(name, impls) for name, impls in implementations.items()]

    # -- plumbing ----------------------------------------------------------------------

    def _service_handler(self, service_name: str, impls: dict[str, Any]) -> grpc.GenericRpcHandler:
        service = contracts.service(service_name)
        method_handlers = {}
        for method in service.methods:
            request = contracts.message(method.input_type.full_name)
            response = contracts.message(method.output_type.full_name)
            streaming = method.server_streaming
            impl = impls.get(method.name) or self._unimplemented(method.full_name, streaming)
            wrapped = self._guard_stream(impl) if streaming else self._guard_unary(impl)
            if method.client_streaming and streaming:
                make = grpc.stream_stream_rpc_method_handler
            elif streaming:
                make = grpc.unary_stream_rpc_method_handler
            elif method.client_streaming:
                make = grpc.stream_unary_rpc_method_handler
            else:
                make = grpc.unary_unary_rpc_method_handler
            method_handlers[method.name] = make(
                wrapped,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(service.full_name, method_handlers)

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if not bearer_matches(str(metadata.get("authorization", "")), self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing token")

    async def _abort(self, context: grpc.aio.ServicerContext, error: EngineError) -> None:
        code = getattr(grpc.StatusCode, error.code)
        details = self._error_details(error)
        if not details:
            await context.abort(code, str(error))
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        status = status_pb2.Status(code=code.value[0], message=str(error), details=packed)
        await context.abort_with_status(rpc_status.to_status(status))

    def _error_details(self, error: EngineError) -> list[Any]:
        """The ``grpc-status-details-bin`` the SDK unpacks from an idempotency collision."""
        if isinstance(error, IdempotencyCollisionError):
            return [self._collision(error)]
        if isinstance(error, BulkIdempotencyCollisionError):
            return [
                self._m("v1.BulkTriggerIdempotencyCollisionError")(
                    successful_workflow_run_external_ids=error.successful_run_ids,
                    collisions=[self._collision(c) for c in error.collisions],
                )
            ]
        return []

    def _collision(self, error: IdempotencyCollisionError) -> Any:
        return self._m("v1.IdempotencyCollisionError")(
            existing_run_external_id=error.existing_run_id,
            colliding_run_external_id=error.colliding_run_id,
        )

    def _guard_unary(self, impl: Unary) -> Unary:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._authorize(context)
            try:
                return await impl(request, context)
            except EngineError as error:
                await self._abort(context, error)

        return handler

    def _guard_stream(self, impl: Streaming) -> Streaming:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._authorize(context)
            try:
                async for response in impl(request, context):
                    yield response
            except EngineError as error:
                await self._abort(context, error)

        return handler

    @staticmethod
    def _unimplemented(name: str, streaming: bool) -> Any:
        message = f"{name} is not implemented by the Hatchway Hatchet emulator"

        async def unary(_request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

        async def stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield  # pragma: no cover - makes this an async generator

        return stream if streaming else unary

    def _ack(self, response_name: str) -> Unary:
        async def ack(_request: Any, _context: grpc.aio.ServicerContext) -> Any:
            return self._m(response_name)()

        return ack

    # -- Dispatcher: workers -----------------------------------------------------------

    async def get_version(self, _request: Any, _context: grpc.aio.ServicerContext) -> Any:
        return self._m("GetVersionResponse")(version=ENGINE_VERSION)

    async def register(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        worker = self.engine.register_worker(
            request.worker_name,
            list(request.actions),
            slots=_optional(request, "slots"),
            slot_config=dict(request.slot_config),
        )
        labels = affinity.labels_from_proto(request.labels)
        self.engine.upsert_worker_labels(worker.worker_id, labels)
        return self._m("WorkerRegisterResponse")(
            tenant_id=self.engine.tenant_id, worker_id=worker.worker_id, worker_name=worker.name
        )

    async def listen(self, request: Any, _context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        worker = self.engine.get_worker(request.worker_id)
        self.engine.listener_opened(worker)
        try:
            while True:
                assignment = await worker.assignments.get()
                yield self._assigned_action(assignment)
        finally:
            self.engine.listener_closed(worker)

    def _assigned_action(self, assignment: Assignment) -> Any:
        if assignment.batch is not None:  # each item's payload as its own action's would be
            return batches.start_batch_action(
                self._m,
                self.engine.tenant_id,
                assignment.batch,
                lambda t: self._assigned_action(Assignment("START_STEP_RUN", t)).action_payload,
            )
        task = assignment.task
        run = task.run
        payload = {"input": run.input, "parents": self._parent_outputs(task)}
        # The filter payload of the filter that started the run, and what met the task's
        # conditions (by readable data key).
        payload["triggers"] = {**self.engine.triggers_of(run), **task.trigger_data}
        if task.spec.on_failure:
            payload["step_run_errors"] = {
                failed.spec.readable_id: failed.error or "" for failed in run.failures
            }
        action = self._m("AssignedAction")(
            tenant_id=self.engine.tenant_id,
            workflow_run_id=run.run_id,
            job_id=run.workflow.workflow_id,
            job_name=run.workflow.name,
            job_run_id=run.run_id,
            task_id=task.spec.readable_id,
            task_run_external_id=task.external_id,
            action_id=task.spec.action,
            action_type=contracts.enum_value("ActionType", assignment.kind),
            action_payload=json.dumps(payload),
            task_name=task.spec.readable_id,
            retry_count=task.retry_count,
            additional_metadata=json.dumps(run.additional_metadata),
            priority=run.priority,
            workflow_id=run.workflow.workflow_id,
            workflow_version_id=run.workflow.version_id,
        )
        if run.parent_run_id is not None:
            action.parent_workflow_run_id = run.parent_run_id
        if run.child_index is not None:
            action.child_workflow_index = run.child_index
        if run.child_key is not None:
            action.child_workflow_key = run.child_key
        if task.spec.durable and assignment.kind == "START_STEP_RUN":  # a new invocation
            action.durable_task_invocation_count = durable_state(self.engine).invocation_started(
                task
            )
        _stamp(action, "task_inserted_at", run.created_at)
        return action

    @staticmethod
    def _parent_outputs(task: TaskRun) -> dict[str, Any]:
        """Parents' output objects; like the engine's dispatcher, a parent that returned
        nothing is left out (the SDK's payload model needs an object for each one)."""
        run = task.run
        names = (
            [t.spec.readable_id for t in run.tasks.values() if t is not task]
            if task.spec.on_failure
            else task.spec.parents
        )
        outputs = {name: run.tasks[name].output_object() for name in names}
        return {name: output for name, output in outputs.items() if output is not None}

    async def heartbeat(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        self.engine.heartbeat(request.worker_id)
        return self._m("HeartbeatResponse")()

    async def unsubscribe(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        self.engine.remove_worker(request.worker_id)
        return self._m("WorkerUnsubscribeResponse")(
            tenant_id=self.engine.tenant_id, worker_id=request.worker_id
        )

    async def upsert_worker_labels(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        labels = affinity.labels_from_proto(request.labels)
        self.engine.upsert_worker_labels(request.worker_id, labels)
        return self._m("UpsertWorkerLabelsResponse")(
            tenant_id=self.engine.tenant_id, worker_id=request.worker_id
        )

    async def send_step_action_event(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        kind = contracts.enum_name("StepActionEventType", request.event_type)
        retry_count = _optional(request, "retry_count")
        external_id = request.task_run_external_id
        if kind == "STEP_EVENT_TYPE_STARTED":
            self.engine.task_started(external_id, retry_count)
        elif kind == "STEP_EVENT_TYPE_COMPLETED":
            self.engine.task_completed(external_id, request.event_payload, retry_count)
        elif kind == "STEP_EVENT_TYPE_FAILED":
            self.engine.task_failed(
                external_id,
                request.event_payload,
                retry_count,
                should_not_retry=bool(_optional(request, "should_not_retry")),
                retry_after_s=(_optional(request, "retry_after_ms") or 0) / 1000,
            )
        elif kind == "STEP_EVENT_TYPE_CANCELLED":
            self.engine.task_cancelled_by_worker(external_id, retry_count)
        return self._m("ActionEventResponse")(
            tenant_id=self.engine.tenant_id, worker_id=request.worker_id
        )

    async def send_batch_action_event(
        self, request: Any, _context: grpc.aio.ServicerContext
    ) -> Any:
        items = [
            batches.ItemEvent(
                item.task_run_external_id,
                item.event_payload,
                should_not_retry=bool(_optional(item, "should_not_retry")),
                retry_after_ms=_optional(item, "retry_after_ms") or 0,
            )
            for item in request.items
        ]
        kind = contracts.enum_name("StepActionEventType", request.event_type)
        self.engine.batches.event(request.batch_id, kind, items)
        return self._m("ActionEventResponse")(
            tenant_id=self.engine.tenant_id, worker_id=request.worker_id
        )

    async def refresh_timeout(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        timeout_at = self.engine.refresh_timeout(
            request.task_run_external_id, request.increment_timeout_by
        )
        response = self._m("RefreshTimeoutResponse")()
        _stamp(response, "timeout_at", timeout_at)
        return response

    async def release_slot(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        self.engine.release_slot(request.task_run_external_id)
        return self._m("ReleaseSlotResponse")()

    # -- Dispatcher: subscriptions -----------------------------------------------------

    async def subscribe_to_workflow_events(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        refuse_code, delay = self.engine.subscription_fault()
        if delay:
            await asyncio.sleep(delay)
        if refuse_code is not None:
            raise EngineError(refuse_code, "subscriptions are refused (fault injection)")
        subscription: EventSubscription | None
        run_id = _optional(request, "workflow_run_id")
        if run_id:
            run = await self.engine.wait_for_run(run_id, self.engine.unknown_run_wait_s)
            if run is None:
                raise EngineError("NOT_FOUND", f"workflow run {run_id!r} not found")
            subscription = self.engine.subscribe_run(run)
        elif request.HasField("additional_meta_key"):
            subscription = self.engine.subscribe_metadata(
                request.additional_meta_key, request.additional_meta_value
            )
        else:
            raise EngineError(
                "INVALID_ARGUMENT", "workflow_run_id or additional_meta_key is required"
            )
        if subscription is None:
            return  # the run already ended: the real engine sends nothing and closes
        try:
            while True:
                event = await subscription.queue.get()
                if event is BROKEN:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "subscription broken")
                assert isinstance(event, RunEvent)  # noqa: S101 - narrows the union for mypy
                yield self._workflow_event(event)
                if event.hangup and subscription.run_id is not None:
                    return
        finally:
            self.engine.unsubscribe(subscription)

    def _workflow_event(self, event: RunEvent) -> Any:
        message = self._m("WorkflowEvent")(
            workflow_run_id=event.run_id,
            resource_type=contracts.enum_value(
                "ResourceType", f"RESOURCE_TYPE_{event.resource_type}"
            ),
            event_type=contracts.enum_value(
                "ResourceEventType", f"RESOURCE_EVENT_TYPE_{event.event_type}"
            ),
            resource_id=event.resource_id,
            event_payload=event.payload,
            hangup=event.hangup,
        )
        _stamp(message, "event_timestamp", event.at)
        if event.event_index is not None:
            message.event_index = event.event_index
        if event.retry_count is not None:
            message.retry_count = event.retry_count
        if event.task_retries is not None:
            message.task_retries = event.task_retries
        return message

    async def subscribe_to_workflow_runs(
        self, request_iterator: AsyncIterator[Any], _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        finished: asyncio.Queue[WorkflowRun] = asyncio.Queue()
        watchers: set[asyncio.Task[None]] = set()

        async def watch(run_id: str) -> None:
            run = await self.engine.wait_for_run(run_id, self.engine.unknown_run_wait_s)
            if run is None:
                logger.warning("subscription to an unknown run", run_id=run_id)
                return
            await run.done.wait()
            finished.put_nowait(run)

        async def read_requests() -> None:
            async for request in request_iterator:
                watcher = asyncio.create_task(watch(request.workflow_run_id))
                watchers.add(watcher)
                watcher.add_done_callback(watchers.discard)

        reader = asyncio.create_task(read_requests())
        try:
            while True:
                yield self._workflow_run_event(await finished.get())
        finally:
            reader.cancel()
            for watcher in list(watchers):
                watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _workflow_run_event(self, run: WorkflowRun) -> Any:
        event = self._m("WorkflowRunEvent")(
            workflow_run_id=run.run_id,
            event_type=contracts.enum_value(
                "WorkflowRunEventType", "WORKFLOW_RUN_EVENT_TYPE_FINISHED"
            ),
        )
        _stamp(event, "event_timestamp", run.finished_at or run.created_at)
        for task in run.created_tasks:
            result = event.results.add(
                task_run_external_id=task.external_id,
                task_name=task.spec.readable_id,
                job_run_id=run.run_id,
            )
            if task.status is Status.COMPLETED:
                result.output = task.output or ""
            elif task.failed:
                result.error = task.error or ""
            elif task.status is Status.CANCELLED:
                # the engine's cancelled output events carry no message, so a cancelled task
                # answers an empty error, which the SDK's aio_result does not raise for
                # (NewCancelledTaskOutputEvent in pkg/repository/output.go; the dispatcher)
                result.error = ""
        return event

    # -- events ------------------------------------------------------------------------

    async def put_stream_event(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        self.engine.put_stream(
            request.task_run_external_id, request.message, _optional(request, "event_index")
        )
        return self._m("PutStreamEventResponse")()

    async def push_event(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        return await self._push(request)

    async def bulk_push_events(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        return self._m("Events")(events=[await self._push(event) for event in request.events])

    async def _push(self, request: Any) -> Any:
        metadata = _loads(_optional(request, "additional_metadata") or "", {})
        payload = _loads(request.payload, {})
        scope = _optional(request, "scope") or ""
        event_id = await self.engine.push_event(
            request.key, payload, metadata, scope=scope, priority=_optional(request, "priority")
        )
        self.engine.match_user_event(request.key, payload, scope)
        durable_state(self.engine).match_user_event(request.key, payload, scope)
        event = self._m("Event")(
            tenant_id=self.engine.tenant_id,
            event_id=event_id,
            key=request.key,
            payload=request.payload,
            additional_metadata=json.dumps(metadata),
        )
        _stamp(event, "event_timestamp", datetime.now().astimezone())
        return event

    # -- triggering and workflows ------------------------------------------------------

    async def trigger_workflow(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        run = await self._trigger(request)
        return self._m("TriggerWorkflowResponse")(workflow_run_id=run.run_id)

    async def bulk_trigger_workflow(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        """Every run of the batch claims its idempotency key together (a key that cannot be
        evaluated refuses the whole batch first); the runs that did not collide start, and
        any collision answers ALREADY_EXISTS naming them (``bulkTriggerWorkflowV1`` in
        internal/services/admin/server_v1.go)."""
        items = list(request.workflows)
        for item in items:
            if item.name not in self.engine.workflows:
                raise EngineError("NOT_FOUND", f"workflow {item.name!r} is not registered")
        planned = [
            (
                item.name,
                _loads(item.input, {}),
                _loads(_optional(item, "additional_metadata") or "", {}),
                str(uuid.uuid4()),
            )
            for item in items
        ]
        for _, input_, metadata, _ in planned:  # every item is checked before any claim
            if not isinstance(input_, dict) or not isinstance(metadata, dict):
                raise EngineError("INVALID_ARGUMENT", "input and metadata must be JSON objects")
        refusals = self.engine.claim_keys(planned, refuse_unevaluated=True)
        started: list[str] = []
        collisions: list[IdempotencyCollisionError] = []
        for index, (item, (*_, run_id), refusal) in enumerate(
            zip(items, planned, refusals, strict=True)
        ):
            if isinstance(refusal, IdempotencyCollisionError):
                collisions.append(refusal)
                continue
            try:
                started.append((await self._trigger(item, run_id=run_id)).run_id)
            except EngineError:  # the items not created yet give their claims back
                for later in planned[index:]:
                    self.engine.idempotency_keys.forget(later[3])
                raise
        if collisions:
            raise BulkIdempotencyCollisionError(started, collisions)
        return self._m("BulkTriggerWorkflowResponse")(workflow_run_ids=started)

    async def _trigger(self, request: Any, *, run_id: str | None = None) -> WorkflowRun:
        return await self.engine.trigger(
            request.name,
            _loads(request.input, {}),
            _loads(_optional(request, "additional_metadata") or "", {}),
            priority=_optional(request, "priority"),
            parent_run_id=_optional(request, "parent_id"),
            parent_task_external_id=_optional(request, "parent_task_run_external_id"),
            child_index=_optional(request, "child_index"),
            child_key=_optional(request, "child_key"),
            desired_labels=affinity.desired_from_proto(request.desired_worker_labels),
            desired_worker_id=_optional(request, "desired_worker_id"),
            run_id=run_id,
            key_claimed=run_id is not None,
        )

    async def schedule_workflow(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        """``workflow.schedule(at)``: a scheduled run per time, as ``hatchet.scheduled.create``
        makes over REST; answered with the workflow's version and the schedules made."""
        if _optional(request, "parent_id") or _optional(request, "parent_task_run_external_id"):
            raise EngineError(
                "UNIMPLEMENTED",
                "the Hatchway Hatchet emulator does not emulate scheduling a child run "
                "(ScheduleWorkflow with a parent); trigger the child instead",
            )
        spec = self.engine.workflows.get(request.name)
        if spec is None:
            raise EngineError("NOT_FOUND", "workflow not found")
        priority = _optional(request, "priority")
        if priority is not None and not 1 <= priority <= 3:  # admin/server.go ScheduleWorkflow
            raise EngineError(
                "INVALID_ARGUMENT", f"priority must be between 1 and 3, got {priority}"
            )
        schedules = schedules_of(self.engine)
        made = [
            schedules.schedule(
                request.name,
                when.ToDatetime(tzinfo=UTC),
                _loads(request.input, {}),
                _loads(_optional(request, "additional_metadata") or "", {}),
                priority,
            )
            for when in request.schedules
        ]
        version = self._m("WorkflowVersion")(
            id=spec.version_id,
            workflow_id=spec.workflow_id,
            scheduled_workflows=[self._m("ScheduledWorkflow")(id=s.schedule_id) for s in made],
        )
        for message, scheduled in zip(version.scheduled_workflows, made, strict=True):
            _stamp(message, "trigger_at", scheduled.trigger_at)
        return version

    async def put_rate_limit(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        """``hatchet.rate_limits.put``: upsert a key of the tenant (rate_limits.py)."""
        window = contracts.enum_name("RateLimitDuration", request.duration)
        self.engine.rate_limits.put(request.key, request.limit, window, utcnow())
        return self._m("PutRateLimitResponse")()

    async def trigger_workflow_run(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        run = await self.engine.trigger(
            request.workflow_name,
            _loads(request.input, {}),
            _loads(request.additional_metadata, {}),
            priority=_optional(request, "priority"),
            desired_labels=affinity.desired_from_proto(request.desired_worker_labels),
        )
        return self._m("v1.TriggerWorkflowRunResponse")(external_id=run.run_id)

    async def put_workflow(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        refuse_unemulated(request)
        for cron in request.cron_triggers:  # refused before anything is registered
            check_cron(cron)
        default_filters = [_default_filter(f) for f in request.default_filters]
        tasks = {task.readable_id: _task_spec(task) for task in request.tasks}
        if request.HasField("on_failure_task"):
            on_failure = _task_spec(request.on_failure_task, on_failure=True)
            tasks[on_failure.readable_id] = on_failure
        spec = self.engine.put_workflow(
            WorkflowSpec(
                name=request.name,
                tasks=tasks,
                event_triggers=tuple(request.event_triggers),
                default_priority=_optional(request, "default_priority") or None,
                concurrency=_limits(
                    [request.concurrency] if request.HasField("concurrency") else []
                )
                + _limits(request.concurrency_arr),
                sticky=contracts.enum_name("v1.StickyStrategy", request.sticky)
                if request.HasField("sticky")
                else None,
                idempotency=_idempotency(request),
            )
        )
        self.engine.declare_filters(spec.workflow_id, default_filters)
        cron_input = _loads(_optional(request, "cron_input") or "", {})
        schedules_of(self.engine).declare(spec.name, list(request.cron_triggers), cron_input)
        return self._m("v1.CreateWorkflowVersionResponse")(
            id=spec.version_id, workflow_id=spec.workflow_id
        )

    async def cancel_tasks(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        cancelled = self.engine.cancel_tasks(list(request.external_ids))
        return self._m("v1.CancelTasksResponse")(cancelled_tasks=cancelled)

    async def get_run_details(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        run = self.engine.get_run(request.external_id)
        response = self._m("v1.GetRunDetailsResponse")(
            input=json.dumps(run.input).encode(),
            status=contracts.enum_value("v1.RunStatus", run_status_name(run.status)),
            done=run.status.is_final,
            additional_metadata=json.dumps(run.additional_metadata).encode(),
        )
        for task in run.created_tasks:  # the engine lists the tasks created so far
            detail = response.task_runs[task.spec.readable_id]
            detail.external_id = task.external_id
            detail.readable_id = task.spec.readable_id
            detail.status = contracts.enum_value("v1.RunStatus", run_status_name(task.status))
            if task.status is Status.COMPLETED and task.output:
                detail.output = task.output.encode()
            if task.failed and task.error is not None:
                detail.error = task.error
            detail.is_evicted = durable_state(self.engine).is_evicted(task)
        return response


def _task_spec(task: Any, *, on_failure: bool = False) -> TaskSpec:
    return TaskSpec(
        readable_id=task.readable_id,
        action=task.action,
        parents=tuple(task.parents),
        retries=task.retries,
        timeout=task.timeout,
        backoff_factor=_optional(task, "backoff_factor"),
        backoff_max_s=_optional(task, "backoff_max_seconds"),
        on_failure=on_failure,
        schedule_timeout=task.schedule_timeout,
        concurrency=_limits(task.concurrency),
        conditions=_conditions(task.conditions),
        durable=task.is_durable,
        worker_labels=affinity.desired_from_proto(task.worker_labels),
        batch=batches.BatchConfig.from_proto(task.batch) if task.HasField("batch") else None,
        rate_limits=tuple(_rate_limit(r) for r in task.rate_limits),
        slot_requests=worker_slots.requests(task.slot_requests, durable=task.is_durable),
    )


def _rate_limit(message: Any) -> RateLimitSpec:
    duration = _optional(message, "duration")
    return RateLimitSpec(
        key=message.key,
        units=_optional(message, "units"),
        key_expr=_optional(message, "key_expr"),
        units_expr=_optional(message, "units_expr"),
        limit_expr=_optional(message, "limit_values_expr"),
        duration=None
        if duration is None
        else contracts.enum_name("v1.RateLimitDuration", duration),
    )


def _conditions(message: Any) -> tuple[Condition, ...]:
    def condition(
        kind: str, c: Any, *, sleep_s: float = 0.0, event_key: str = "", scope: str = ""
    ) -> Condition:
        return Condition(
            kind,
            action=contracts.enum_name("v1.Action", c.base.action),
            group=c.base.or_group_id,
            data_key=c.base.readable_data_key,
            expression=c.base.expression,
            sleep_s=sleep_s,
            event_key=event_key,
            scope=scope,
            parent=getattr(c, "parent_readable_id", ""),
        )

    return (
        *(
            condition("SLEEP", c, sleep_s=parse_duration(c.sleep_for) or 0.0)
            for c in message.sleep_conditions
        ),
        *(
            condition("USER_EVENT", c, event_key=c.user_event_key, scope=c.event_scope)
            for c in message.user_event_conditions
        ),
        *(condition("PARENT", c) for c in message.parent_override_conditions),
    )


def _limits(messages: Any) -> tuple[ConcurrencyLimit, ...]:
    return tuple(
        ConcurrencyLimit(
            expression=message.expression,
            max_runs=_optional(message, "max_runs") or 1,
            strategy=contracts.enum_name("v1.ConcurrencyLimitStrategy", message.limit_strategy),
            max_runs_expression=_optional(message, "max_runs_expression") or "",
            name=_optional(message, "name") or "",
            tenant_scoped=bool(_optional(message, "is_tenant_scoped")),
        )
        for message in messages
    )


# What the emulator does not carry out, as (feature, test on the request or on a task).
_UNEMULATED_WORKFLOW: tuple[tuple[str, Callable[[Any], bool]], ...] = ()
_UNEMULATED_TASK: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    (
        "user-event conditions with consider_events_since",
        lambda t: any(
            c.HasField("consider_events_since") for c in t.conditions.user_event_conditions
        ),
    ),
)


def _idempotency(request: Any) -> IdempotencyConfig | None:
    """A workflow's idempotency key; the method is TTL unless given (admin/v1/server.go)."""
    if not request.HasField("idempotency"):
        return None
    config = request.idempotency
    check_expression(config.expression)  # refused at registration, not at the trigger
    method = (
        contracts.enum_name("v1.IdempotencyMethod", config.method)
        if config.HasField("method")
        else "TTL"
    )
    return IdempotencyConfig(config.expression, config.ttl_ms, method)


def _default_filter(proto: Any) -> tuple[str, str, dict[str, Any]]:
    """A declared filter as (scope, expression, payload); a payload that is not a JSON
    object is refused, as ``CreateWorkflowVersion`` in internal/services/admin/v1 does."""
    payload = _loads(proto.payload, {}) if proto.payload else {}
    if not isinstance(payload, dict):
        raise EngineError("INVALID_ARGUMENT", "default filter payload is not valid JSON")
    return proto.scope, proto.expression, payload


def refuse_unemulated(request: Any) -> None:
    """Refuse, naming it, any workflow feature the emulator does not carry out: a
    workflow that registers here runs as on the real engine, or not at all."""
    tasks = [*request.tasks]
    if request.HasField("on_failure_task"):
        tasks.append(request.on_failure_task)
    features = [feature for feature, used in _UNEMULATED_WORKFLOW if used(request)]
    features += [
        f"{feature} (task {task.readable_id!r})"
        for task in tasks
        for feature, used in _UNEMULATED_TASK
        if used(task)
    ]
    if features:
        raise EngineError(
            "UNIMPLEMENTED",
            f"workflow {request.name!r} uses what the Hatchway Hatchet emulator does not "
            f"emulate: {'; '.join(features)} (run it against a real Hatchet engine)",
        )


def bearer_matches(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``; the SDK sends the scheme in lower case on gRPC."""
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and value == token


def run_status_name(status: Status) -> str:
    """The v1 API's view of a status: it has no ASSIGNED or TIMED_OUT."""
    if status is Status.ASSIGNED:
        return "QUEUED"
    if status is Status.TIMED_OUT:
        return "FAILED"
    return status.value
