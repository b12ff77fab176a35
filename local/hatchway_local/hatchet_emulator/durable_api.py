# ruff: noqa: ANN401 - messages come from a runtime descriptor pool: no static types.
"""The durable-task wire: gRPC ``v1.V1Dispatcher`` (the ``DurableTask`` stream a worker
opens for its durable tasks) and the REST restore and branch endpoints, over
``durable.DurableState``.

One ``DurableTask`` stream serves every durable task of a worker: requests name their
task and invocation; each gets its ack (memo, trigger-runs, wait-for or eviction),
and completions follow on the same stream once their entries are satisfied, released
in ``satisfied_order`` per task invocation (``deliverOrdered`` in
internal/services/dispatcher/server_v1.go). The pre-eviction ``RegisterDurableEvent``
and ``ListenForDurableEvent`` RPCs are not served: hatchet-sdk uses them only with
engines older than v0.80.0, and the emulator reports a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import grpc
from aiohttp import web

from hatchway.observability import logger

from . import contracts
from .durable import (
    ChildTrigger,
    DurableLog,
    DurableState,
    Entry,
    NonDeterminism,
    StaleInvocation,
    WaitCondition,
    state_for,
)
from .engine import Engine, parse_duration
from .errors import EngineError


def _m(name: str) -> Any:
    return contracts.message(f"v1.{name}")


@dataclass(slots=True)
class _Release:
    sent: int = 0  # the highest satisfied_order released
    held: dict[int, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class _Session:
    """One worker's DurableTask stream."""

    state: DurableState
    out: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    tasks: set[str] = field(default_factory=set)
    releases: dict[tuple[str, int], _Release] = field(default_factory=dict)

    def register(self, task_id: str) -> None:
        self.tasks.add(task_id)
        self.state.deliverers[task_id] = self.deliver

    def close(self) -> None:
        for task_id in self.tasks:
            if self.state.deliverers.get(task_id) == self.deliver:
                del self.state.deliverers[task_id]

    def send(self, **message: Any) -> None:
        self.out.put_nowait(_m("DurableTaskResponse")(**message))

    def deliver(self, log: DurableLog, entry: Entry) -> None:
        completed = _m("DurableTaskEventLogEntryCompletedResponse")(
            ref=_ref(log.task_id, log.invocation, entry),
            payload=b"" if entry.is_failure else entry.payload,
            is_failure=entry.is_failure,
            error_message=entry.error,
        )
        if entry.order is None:
            self.send(entry_completed=completed)
            return
        completed.satisfied_order = entry.order
        release = self.releases.setdefault((log.task_id, log.invocation), _Release())
        if entry.order <= release.sent:  # a re-delivery: the worker dedupes by node
            self.send(entry_completed=completed)
            return
        release.held[entry.order] = completed
        while release.sent + 1 in release.held:
            release.sent += 1
            self.send(entry_completed=release.held.pop(release.sent))


def _ref(task_id: str, invocation: int, entry: Entry) -> Any:
    return _m("DurableEventLogEntryRef")(
        durable_task_external_id=task_id,
        invocation_count=invocation,
        branch_id=entry.branch,
        node_id=entry.node,
    )


def _wait_conditions(message: Any) -> tuple[WaitCondition, ...]:
    def action(c: Any) -> str:
        return contracts.enum_name("v1.Action", c.base.action)

    sleeps = tuple(
        WaitCondition(
            "SLEEP",
            group=c.base.or_group_id,
            data_key=c.base.readable_data_key,
            action=action(c),
            expression=c.base.expression,
            sleep_for=c.sleep_for,
            sleep_s=parse_duration(c.sleep_for) or 0.0,
        )
        for c in message.sleep_conditions
    )
    events = tuple(
        WaitCondition(
            "USER_EVENT",
            group=c.base.or_group_id,
            data_key=c.base.readable_data_key,
            action=action(c),
            expression=c.base.expression,
            event_key=c.user_event_key,
            scope=c.event_scope if c.HasField("event_scope") else None,
            since=(
                c.consider_events_since.ToDatetime(tzinfo=UTC)
                if c.HasField("consider_events_since")
                else None
            ),
        )
        for c in message.user_event_conditions
    )
    return sleeps + events


class DurableServices:
    """The ``v1.V1Dispatcher`` methods for ``HatchetServices.handlers()``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.state = state_for(engine)

    def implementations(self) -> dict[str, Any]:
        return {"DurableTask": self.durable_task}

    async def durable_task(
        self, request_iterator: AsyncIterator[Any], _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        session = _Session(self.state)

        async def read() -> None:
            async for request in request_iterator:
                try:
                    await self._handle(session, request)
                except EngineError as error:
                    logger.warning("durable task request refused", error=str(error))
            session.out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await session.out.get()) is not None:
                yield response
        finally:
            session.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _handle(self, session: _Session, request: Any) -> None:
        kind = request.WhichOneof("message")
        if kind is None:
            return
        body = getattr(request, kind)
        if kind == "register_worker":
            session.send(
                register_worker=_m("DurableTaskResponseRegisterWorker")(worker_id=body.worker_id)
            )
            return
        if kind == "worker_status":
            self._worker_status(session, body)
            return
        if kind == "complete_memo":
            ref = body.ref
            self.state.complete_memo(
                ref.durable_task_external_id, ref.node_id, ref.branch_id, body.payload
            )
            return
        if kind == "evict_invocation":
            self.state.evict(body.durable_task_external_id, body.invocation_count)
            session.send(
                eviction_ack=_m("DurableTaskEvictionAckResponse")(
                    invocation_count=body.invocation_count,
                    durable_task_external_id=body.durable_task_external_id,
                )
            )
            return
        if kind not in ("memo", "trigger_runs", "wait_for"):
            raise EngineError("INVALID_ARGUMENT", f"unknown durable task message {kind!r}")
        task_id, invocation = body.durable_task_external_id, body.invocation_count
        session.register(task_id)
        try:
            if kind == "memo":
                self._memo(session, body)
            elif kind == "wait_for":
                self._wait_for(session, body)
            else:
                await self._trigger_runs(session, body)
        except NonDeterminism as error:
            session.send(
                error=_m("DurableTaskErrorResponse")(
                    ref=_m("DurableEventLogEntryRef")(
                        durable_task_external_id=task_id,
                        invocation_count=invocation,
                        branch_id=error.branch,
                        node_id=error.node,
                    ),
                    error_type=contracts.enum_value(
                        "v1.DurableTaskErrorType", "DURABLE_TASK_ERROR_TYPE_NONDETERMINISM"
                    ),
                    error_message=str(error),
                )
            )
        except StaleInvocation as error:
            session.send(
                server_evict=_m("DurableTaskServerEvictNotice")(
                    durable_task_external_id=task_id, invocation_count=error.sent, reason=str(error)
                )
            )

    def _memo(self, session: _Session, body: Any) -> None:
        log, entry, existed = self.state.memo(
            body.durable_task_external_id, body.invocation_count, body.key, body.payload
        )
        session.send(
            memo_ack=_m("DurableTaskEventMemoAckResponse")(
                ref=_ref(log.task_id, log.invocation, entry),
                memo_already_existed=existed,
                memo_result_payload=entry.payload,
            )
        )
        if entry.satisfied:
            session.deliver(log, entry)

    def _wait_for(self, session: _Session, body: Any) -> None:
        log, entry = self.state.wait_for(
            body.durable_task_external_id,
            body.invocation_count,
            _wait_conditions(body.wait_for_conditions),
        )
        session.send(
            wait_for_ack=_m("DurableTaskEventWaitForAckResponse")(
                ref=_ref(log.task_id, log.invocation, entry)
            )
        )
        if entry.satisfied:
            session.deliver(log, entry)

    async def _trigger_runs(self, session: _Session, body: Any) -> None:
        triggers = [
            ChildTrigger(
                workflow_name=opt.name,
                input_json=opt.input,
                metadata=_json_object(
                    opt.additional_metadata if opt.HasField("additional_metadata") else ""
                ),
                priority=opt.priority if opt.HasField("priority") else None,
                parent_run_id=opt.parent_id if opt.HasField("parent_id") else None,
                child_index=opt.child_index if opt.HasField("child_index") else None,
                child_key=opt.child_key if opt.HasField("child_key") else None,
            )
            for opt in body.trigger_opts
        ]
        log, results = await self.state.trigger_runs(
            body.durable_task_external_id, body.invocation_count, triggers
        )
        session.send(
            trigger_runs_ack=_m("DurableTaskEventTriggerRunsAckResponse")(
                durable_task_external_id=log.task_id,
                invocation_count=log.invocation,
                run_entries=[
                    _m("DurableTaskRunAckEntry")(
                        node_id=entry.node, branch_id=entry.branch, workflow_run_external_id=run_id
                    )
                    for entry, run_id in results
                ],
            )
        )
        for entry, _ in results:
            if entry.satisfied:
                session.deliver(log, entry)

    def _worker_status(self, session: _Session, body: Any) -> None:
        """Re-deliver the satisfied entries the worker still waits for; tell it about its
        stale invocations (``handleWorkerStatus``)."""
        waiting: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for item in body.waiting_entries:
            key = (item.durable_task_external_id, item.invocation_count)
            waiting.setdefault(key, []).append((item.node_id, item.branch_id))
        for (task_id, invocation), keys in waiting.items():
            log = self.state.logs.get(task_id)
            if log is None:
                continue
            if invocation < log.invocation:
                session.send(
                    server_evict=_m("DurableTaskServerEvictNotice")(
                        durable_task_external_id=task_id,
                        invocation_count=invocation,
                        reason=f"stale invocation: server has {log.invocation}, "
                        f"worker sent {invocation}",
                    )
                )
                continue
            session.register(task_id)
            for entry in self.state.waiting_completions(task_id, invocation, keys):
                session.deliver(log, entry)


def _json_object(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise EngineError("INVALID_ARGUMENT", f"not valid JSON: {error}") from error
    return value if isinstance(value, dict) else {}


# -- REST -----------------------------------------------------------------------------


def rest_routes(engine_of: Callable[[web.Request], Engine]) -> list[web.RouteDef]:
    """``POST /api/v1/stable/tasks/{task}/restore`` and the durable-task branch endpoint."""

    async def restore(request: web.Request) -> web.Response:
        engine = engine_of(request)
        task_id = _durable_task_id(engine, request.match_info["task"])
        state_for(engine).restore(task_id)
        return web.json_response({"requeued": True})  # the engine answers so regardless

    async def branch(request: web.Request) -> web.Response:
        engine = engine_of(request)
        body = await request.json()
        task_id = _durable_task_id(engine, str(body.get("taskExternalId", "")))
        node, branch_id = state_for(engine).branch(
            task_id, int(body.get("nodeId", 0)), int(body.get("branchId", 1))
        )
        engine.replay([task_id])
        return web.json_response(
            {"taskExternalId": body.get("taskExternalId"), "nodeId": node, "branchId": branch_id}
        )

    return [
        web.post("/api/v1/stable/tasks/{task}/restore", restore),
        web.post("/api/v1/stable/tenants/{tenant_id}/durable-tasks/branch", branch),
    ]


def _durable_task_id(engine: Engine, external_id: str) -> str:
    """A task's id, or a run's id standing for its durable task (a standalone task's run
    id is its task's id on the real engine)."""
    if external_id in engine.tasks:
        return external_id
    run = engine.runs.get(external_id)
    if run is not None:
        durable = [t for t in run.tasks.values() if t.spec.durable]
        if len(durable) == 1:
            return durable[0].external_id
    raise EngineError("NOT_FOUND", f"durable task {external_id!r} not found")
