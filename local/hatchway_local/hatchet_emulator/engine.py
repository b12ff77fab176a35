"""The emulated Hatchet engine: workflows, runs, tasks, workers and event fan-out.

This module knows nothing of gRPC or HTTP; the servicers in ``grpc_api`` and
``rest_api`` translate the wire to these calls. Everything runs on one asyncio
loop, so the state needs no locks. Semantics follow the real engine where
Hatchway depends on them (see shared/notes/hatchet-engine.md):

- stream events are live only: delivered to the subscriptions open at that
  moment, never stored or replayed;
- per task: STARTED, STREAM (with ``event_index``), COMPLETED / FAILED /
  CANCELLED / TIMED_OUT; the run's end comes last as a WORKFLOW_RUN event with
  ``hangup``;
- a subscription to a run that already ended gets nothing;
- a DAG task is created only once its parents decide it (Hatchet's
  ``getParentInDAGGroupMatch`` in pkg/repository/trigger.go): all parents
  completed -> queued; all parents skipped -> skipped; any parent failed or
  cancelled -> created cancelled. Independent branches run on after a failure;
- the on-failure task is queued as soon as another task fails for good, and
  skipped when every other task completed or was cancelled
  (``getParentOnFailureGroupMatches``, same file);
- a run ends when every task exists and is final: FAILED if any task failed,
  else CANCELLED if any was cancelled, else COMPLETED (``UpdateDAGStatusesFromMQ``
  in pkg/repository/sqlcv1/olap.sql);
- cancelling a task's id cancels that task (and, by the rules above, its
  dependents); cancelling a run's id cancels every task of the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from hatchway.observability import logger

from . import affinity, batches, conditions, rate_limits, worker_slots
from .concurrency import (
    CANCELLED_BY_CONCURRENCY_LIMIT,
    ConcurrencyLimit,
    Limiter,
    check_tenant_chains,
    tenant_chain,
)
from .errors import EngineError
from .event_filters import EventFilter, PushedEvent, decisions, key_matches
from .idempotency import IdempotencyCollisionError, IdempotencyConfig, IdempotencyKeys, request_for


class Status(StrEnum):
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"  # sent to a worker, STARTED not seen yet
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT})

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """Hatchet's duration strings ("30s", "5m", "1h30m", "250ms") in seconds; None if empty."""
    text = text.strip()
    if not text:
        return None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise EngineError("INVALID_ARGUMENT", f"invalid duration {text!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    readable_id: str
    action: str
    parents: tuple[str, ...] = ()
    retries: int = 0
    timeout: str = ""  # as declared ("30s", "5m"): the engine quotes it when a task times out
    backoff_factor: float | None = None
    backoff_max_s: float | None = None
    on_failure: bool = False  # the workflow's on-failure task (its parents are all other tasks)
    schedule_timeout: str = ""  # how long it may wait for a worker before it is cancelled
    concurrency: tuple[ConcurrencyLimit, ...] = ()  # task-level limits
    conditions: tuple[conditions.Condition, ...] = ()  # wait_for / skip_if / cancel_if
    durable: bool = False  # a durable task: its event log lives in durable.py
    worker_labels: tuple[affinity.DesiredLabel, ...] = ()  # the workers it wants (affinity.py)
    batch: batches.BatchConfig | None = None  # a batch task: batches.py buffers and flushes it
    rate_limits: tuple[rate_limits.RateLimitSpec, ...] = ()  # keys it consumes (rate_limits.py)
    slot_requests: worker_slots.Units = worker_slots.DEFAULT_REQUEST  # units held (worker_slots.py)

    @property
    def timeout_s(self) -> float | None:
        return parse_duration(self.timeout)

    @property
    def schedule_timeout_s(self) -> float | None:
        return parse_duration(self.schedule_timeout)


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    name: str
    tasks: dict[str, TaskSpec]
    event_triggers: tuple[str, ...] = ()
    default_priority: int | None = None
    concurrency: tuple[ConcurrencyLimit, ...] = ()  # workflow-level limits: a slot per run
    sticky: str | None = None  # SOFT | HARD: a run's tasks want one worker (affinity.py)
    idempotency: IdempotencyConfig | None = None  # its key's expression (idempotency.py)
    workflow_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    version_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(eq=False, slots=True)
class TaskRun:
    spec: TaskSpec
    run: WorkflowRun
    external_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: Status = Status.QUEUED
    retry_count: int = 0
    output: str | None = None  # JSON text as the worker sent it ("" for a task that returned None)
    error: str | None = None  # a failure's error, as the worker sent it
    cancel_reason: str | None = None  # why a task was cancelled by a user, worker or timeout
    skipped: bool = False
    created: bool = False  # a DAG task exists only once its parents decided it
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    started_event_sent: bool = False
    not_before: float = 0.0  # loop time before which a retry may not be assigned
    timeout_handle: asyncio.TimerHandle | None = None
    schedule_handle: asyncio.TimerHandle | None = None
    next_stream_index: int = 0
    slots: tuple[tuple[str, ConcurrencyLimit], ...] = ()  # its task-level concurrency keys
    admitted: bool = True  # holds a slot of each key (or has no limits)
    arrival: int = 0  # its order among the limiter's holders (kept through replays)
    waiting: bool = False  # its parents completed; it waits for its conditions
    met: set[int] = field(default_factory=set)  # indexes of the conditions met so far
    trigger_data: dict[str, Any] = field(default_factory=dict)  # what met them, by data key
    condition_timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in (Status.FAILED, Status.TIMED_OUT)

    def output_object(self) -> dict[str, Any] | None:
        """The output as a JSON object, None when there is none (the task returned None)."""
        if self.status is not Status.COMPLETED or not self.output:
            return None
        try:
            value = json.loads(self.output)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One entry of a run's task event log, as the REST API's ``taskEvents`` lists them."""

    event_id: int
    task: TaskRun
    event_type: str  # a V1TaskEventType: QUEUED, STARTED, FINISHED, FAILED, RETRYING, ...
    retry_count: int
    at: datetime = field(default_factory=utcnow)
    error: str | None = None
    message: str = ""
    worker_id: str | None = None
    output: str | None = None


@dataclass(eq=False, slots=True)
class WorkflowRun:
    run_id: str
    workflow: WorkflowSpec
    input: dict[str, Any]
    additional_metadata: dict[str, Any]
    priority: int = 1
    parent_run_id: str | None = None
    parent_task_external_id: str | None = None
    child_index: int | None = None
    child_key: str | None = None
    desired_labels: tuple[affinity.DesiredLabel, ...] = ()  # the run's own: replace its tasks'
    desired_worker_id: str | None = None  # a sticky run's root tasks want this worker
    status: Status = Status.QUEUED
    error: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    failures: list[TaskRun] = field(default_factory=list)  # tasks failed for good, in order
    task_events: list[TaskEvent] = field(default_factory=list)
    cancel_reason: str | None = None  # set when the whole run was cancelled
    slots: tuple[tuple[str, ConcurrencyLimit], ...] = ()  # its workflow-level concurrency keys
    admitted: bool = True  # holds a slot of each key (or has no limits)
    arrival: int = 0  # its order among the limiter's holders
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def output(self) -> dict[str, Any]:
        """Each completed task's output object; a task that returned None has none."""
        outputs = {rid: task.output_object() for rid, task in self.tasks.items()}
        return {rid: output for rid, output in outputs.items() if output is not None}

    @property
    def created_tasks(self) -> list[TaskRun]:
        return [task for task in self.tasks.values() if task.created]


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One WorkflowEvent as the engine emits it to run subscriptions."""

    run_id: str
    resource_type: str  # STEP_RUN | WORKFLOW_RUN
    event_type: str  # STARTED | COMPLETED | FAILED | CANCELLED | TIMED_OUT | STREAM
    resource_id: str
    payload: str = ""
    hangup: bool = False
    event_index: int | None = None
    retry_count: int | None = None
    task_retries: int | None = None
    at: datetime = field(default_factory=utcnow)


class SubscriptionBroken:
    """Put on a subscription's queue to end it as an engine restart would (UNAVAILABLE)."""


BROKEN = SubscriptionBroken()


@dataclass(eq=False, slots=True)
class EventSubscription:
    matches: Callable[[WorkflowRun], bool]
    queue: asyncio.Queue[RunEvent | SubscriptionBroken] = field(default_factory=asyncio.Queue)
    run_id: str | None = None  # a subscription to one run ends at that run's hangup


@dataclass(frozen=True, slots=True)
class Assignment:
    kind: str  # START_STEP_RUN | CANCEL_STEP_RUN | START_BATCH
    task: TaskRun
    batch: batches.Batch | None = None  # START_BATCH: the whole batch (task is its first)


@dataclass(eq=False, slots=True)
class Worker:
    worker_id: str
    name: str
    actions: frozenset[str]
    slot_config: dict[str, int]  # units per slot type (worker_slots.py)
    last_seen: float
    assignments: asyncio.Queue[Assignment] = field(default_factory=asyncio.Queue)
    # what holds its units: task external ids (and batches' ids), with the units held
    running: dict[str, worker_slots.Units] = field(default_factory=dict)
    listeners: int = 0
    paused: bool = False
    registered_at: datetime = field(default_factory=utcnow)
    labels: dict[str, affinity.Label] = field(default_factory=dict)

    def can_take(self, action: str, requests: worker_slots.Units) -> bool:
        return (
            self.listeners > 0
            and not self.paused
            and action in self.actions
            and worker_slots.fits(self.slot_config, self.running.values(), requests)
        )

    def available(self, slot_type: str) -> int:
        """Its free units of one slot type (the REST API's ``available``)."""
        return worker_slots.available(self.slot_config, self.running.values(), slot_type)

    def hold(self, holder: str, units: worker_slots.Units) -> None:
        self.running[holder] = units

    def free(self, holder: str) -> None:
        self.running.pop(holder, None)


@dataclass(slots=True)
class SubscriptionFaults:
    """Fault injection for new run-event subscriptions (loop times)."""

    refuse_until: float = 0.0
    refuse_code: str = "UNAVAILABLE"
    delay_s: float = 0.0
    delay_until: float = 0.0


class Engine:
    def __init__(
        self,
        tenant_id: str,
        *,
        worker_timeout_s: float = 30.0,
        unknown_run_wait_s: float = 10.0,
    ) -> None:
        self.tenant_id = tenant_id
        self.worker_timeout_s = worker_timeout_s
        self.unknown_run_wait_s = unknown_run_wait_s
        self.workflows: dict[str, WorkflowSpec] = {}
        self.runs: dict[str, WorkflowRun] = {}
        self.tasks: dict[str, TaskRun] = {}
        self.workers: dict[str, Worker] = {}
        self.faults = SubscriptionFaults()
        self.paused_workflows: set[str] = set()  # their queued tasks wait (REST workflow pause)
        self.paused_queue_ttls: dict[str, float] = {}  # paused workflow -> queued-task TTL (s)
        self._pause_timer: asyncio.TimerHandle | None = None
        self.events: list[PushedEvent] = []  # pushed events, oldest first (REST events list)
        self.event_filters: dict[str, EventFilter] = {}
        self.filter_payloads: dict[str, dict[str, Any]] = {}  # run id -> its filter's payload
        # (-priority, arrival, task): the real engine assigns higher priorities first.
        self._queue: list[tuple[int, int, TaskRun]] = []
        self._subscriptions: set[EventSubscription] = set()
        # Run subscriptions ever opened, per run: benchmarks count upstream subscriptions.
        self.subscriptions_opened: Counter[str] = Counter()
        self._run_created = asyncio.Condition()
        self._children: dict[tuple[str, str], str] = {}  # (parent task, index or key) -> run id
        self.idempotency_keys = IdempotencyKeys()
        self._event_ids = 0
        self._limiter = Limiter()
        self._waiting: set[TaskRun] = set()  # tasks waiting for their conditions
        self._queued = 0  # arrival order, the tie-break between runs of one priority
        self._janitor: asyncio.Task[None] | None = None
        self.batches = batches.Batches(self)
        self.rate_limits = rate_limits.RateLimits(self)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._janitor is None:
            self._janitor = asyncio.get_running_loop().create_task(self._reap_silent_workers())

    async def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            await asyncio.gather(self._janitor, return_exceptions=True)
            self._janitor = None
        self.batches.close()
        self.rate_limits.close()
        for task in self.tasks.values():
            self._clear_timers(task)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # -- workflows and runs ------------------------------------------------------------

    def put_workflow(self, spec: WorkflowSpec) -> WorkflowSpec:
        for task in spec.tasks.values():
            _ = task.timeout_s, task.schedule_timeout_s  # refused now, not when the task runs
            missing = [p for p in task.parents if p not in spec.tasks]
            if missing:
                raise EngineError(
                    "INVALID_ARGUMENT", f"{task.readable_id}: unknown parents {missing}"
                )
        # a single-task workflow's limits are its task's on the engine
        check_tenant_chains(
            spec.name,
            spec.concurrency,
            {
                name: (*(spec.concurrency if len(spec.tasks) == 1 else ()), *task.concurrency)
                for name, task in spec.tasks.items()
            },
            [
                tenant_chain(
                    (*(other.concurrency if len(other.tasks) == 1 else ()), *t.concurrency)
                )
                for other in self.workflows.values()
                if other.name != spec.name
                for t in other.tasks.values()
            ],
        )
        self._limiter.define(
            [*spec.concurrency, *(limit for t in spec.tasks.values() for limit in t.concurrency)]
        )
        previous = self.workflows.get(spec.name)
        if previous is not None:  # same workflow id across versions, as the engine keeps it
            spec = dataclasses.replace(spec, workflow_id=previous.workflow_id)
        else:  # a new workflow (perhaps the name of a deleted one) is not paused
            self.paused_workflows.discard(spec.name)
            self.paused_queue_ttls.pop(spec.name, None)
        self.workflows[spec.name] = spec
        return spec

    async def trigger(
        self,
        name: str,
        input_: dict[str, Any],
        additional_metadata: dict[str, Any] | None = None,
        *,
        priority: int | None = None,
        parent_run_id: str | None = None,
        parent_task_external_id: str | None = None,
        child_index: int | None = None,
        child_key: str | None = None,
        desired_labels: tuple[affinity.DesiredLabel, ...] = (),
        desired_worker_id: str | None = None,
        run_id: str | None = None,
        key_claimed: bool = False,
    ) -> WorkflowRun:
        """A new run of ``name``. A workflow with an idempotency key claims it first (raising
        ``IdempotencyCollisionError`` when another run holds it), unless ``claim_keys`` already
        did for ``run_id`` as part of a batch (``key_claimed``)."""
        workflow = self.workflows.get(name)
        if not isinstance(additional_metadata or {}, dict):
            # The SDK's action loop dies on metadata that is not an object: refuse it here.
            raise EngineError("INVALID_ARGUMENT", "additional_metadata must be a JSON object")
        if not isinstance(input_, dict):
            raise EngineError("INVALID_ARGUMENT", "input must be a JSON object")
        if workflow is None:
            raise EngineError("NOT_FOUND", f"workflow {name!r} is not registered")
        child_slot = None
        if parent_run_id is None:  # the SDK sends child_index on every trigger
            child_index = child_key = parent_task_external_id = None
        if parent_task_external_id is not None:
            child_slot = (parent_task_external_id, child_key or str(child_index))
            existing = self._children.get(child_slot)
            if existing is not None:  # a retried spawn returns the child it already made
                return self.runs[existing]
        run_id = run_id or str(uuid.uuid4())
        run = WorkflowRun(
            run_id=run_id,
            workflow=workflow,
            input=input_,
            additional_metadata=additional_metadata or {},
            priority=priority or workflow.default_priority or 1,
            parent_run_id=parent_run_id,
            parent_task_external_id=parent_task_external_id,
            child_index=child_index,
            child_key=child_key,
            desired_labels=desired_labels,
            # honoured only when the workflow is sticky (trigger.proto's desired_worker_id)
            desired_worker_id=desired_worker_id if workflow.sticky else None,
        )
        try:
            if workflow.concurrency:  # a key that cannot be evaluated refuses the trigger
                run.slots = Limiter.keys(workflow.name, workflow.concurrency, _key_variables(run))
                run.admitted = False
        except EngineError:
            self.idempotency_keys.forget(run_id)  # a batch claimed its key already
            raise
        if workflow.idempotency is not None and not key_claimed:  # last: nothing refuses it now
            [refusal] = self.claim_keys([(name, input_, run.additional_metadata, run_id)])
            if refusal is not None:
                raise refusal
        for spec in workflow.tasks.values():
            task = TaskRun(spec=spec, run=run)
            run.tasks[spec.readable_id] = task
            self.tasks[task.external_id] = task
        self.runs[run.run_id] = run
        if child_slot is not None:
            self._children[child_slot] = run.run_id
        logger.debug("run created", run_id=run.run_id, workflow=name)
        victims = self._limiter.arrive(run) if run.slots else []
        self._start_roots(run)
        self._cancel_for_concurrency(victims)
        self._dispatch()
        async with self._run_created:
            self._run_created.notify_all()
        return run

    def claim_keys(
        self,
        batch: list[tuple[str, dict[str, Any], dict[str, Any], str]],
        *,
        refuse_unevaluated: bool = False,
    ) -> list[EngineError | None]:
        """Claim the idempotency keys of a batch of triggers (workflow, input, metadata, the
        run id each would create) together, as the engine does. For each: None when it may
        start (its workflow has no key, or it won its key), its ``IdempotencyCollisionError``,
        or the error of a key that could not be evaluated (it claims nothing; with
        ``refuse_unevaluated`` that error is raised before anything is claimed)."""
        requests = []
        unevaluated: dict[str, EngineError] = {}
        for name, input_, metadata, run_id in batch:
            config = self.workflows[name].idempotency
            if config is None:
                continue
            try:
                requests.append(request_for(config, input_, metadata, run_id))
            except EngineError as error:
                if refuse_unevaluated:
                    raise
                unevaluated[run_id] = error
        holders = self.idempotency_keys.claim(requests)
        outcomes: list[EngineError | None] = []
        for *_, run_id in batch:
            holder = holders.get(run_id, run_id)
            collision = None if holder == run_id else IdempotencyCollisionError(holder, run_id)
            outcomes.append(unevaluated.get(run_id, collision))
        return outcomes

    def _start_roots(self, run: WorkflowRun) -> None:
        for task in run.tasks.values():
            if not task.spec.parents and not task.spec.on_failure:
                if task.spec.conditions:
                    self._wait_for_conditions(task)
                else:
                    self._create(task, Status.QUEUED)
        self._settle(run)  # a condition may hold at once

    async def push_event(
        self,
        key: str,
        payload: dict[str, Any],
        additional_metadata: dict[str, Any],
        *,
        scope: str | None = None,
        priority: int | None = None,
        triggering_webhook_name: str | None = None,
    ) -> str:
        """An event pushed by a client, recorded for the events list: starts each workflow
        with a trigger matching ``key`` as its filters decide (see ``event_filters``). Each
        run's metadata gains ``hatchet__event_id`` / ``hatchet__event_key`` and loses other
        ``hatchet__`` keys (``TriggeredByEvent.ToMetadata``, pkg/repository/trigger.go)."""
        event = PushedEvent(
            key, payload, additional_metadata, scope or None, triggering_webhook_name
        )
        self.events.append(event)
        metadata = {k: v for k, v in additional_metadata.items() if not k.startswith("hatchet__")}
        metadata |= {"hatchet__event_id": event.event_id, "hatchet__event_key": key}
        filters = list(self.event_filters.values())
        planned = [
            (workflow.name, decision, str(uuid.uuid4()))
            for workflow in list(self.workflows.values())
            if any(key_matches(trigger, key) for trigger in workflow.event_triggers)
            for decision in decisions(filters, workflow.workflow_id, event)
        ]
        # the runs of one event claim their idempotency keys as one batch; a collision, or
        # a key that cannot be evaluated, drops only that run (as on the engine)
        claims = [(name, payload, metadata, run_id) for name, _, run_id in planned]
        for (name, decision, run_id), refusal in zip(planned, self.claim_keys(claims), strict=True):
            if refusal is not None:
                logger.info("event run not started", event_key=key, workflow=name, why=str(refusal))
                continue
            try:
                run = await self.trigger(
                    name,
                    payload,
                    dict(metadata),
                    priority=priority,
                    run_id=run_id,
                    key_claimed=True,
                )
            except EngineError as error:  # e.g. a concurrency key: only that run is dropped
                logger.info("event run not started", event_key=key, workflow=name, why=str(error))
                continue
            if decision.payload is not None:  # set before the worker is sent the task
                self.filter_payloads[run.run_id] = decision.payload
            event.triggered.append((run.run_id, decision.filter_id))
        return event.event_id

    async def wait_for_run(self, run_id: str, timeout_s: float) -> WorkflowRun | None:
        """The run, waiting up to ``timeout_s`` for it to be created (as the engine does)."""

        async def appeared() -> WorkflowRun:
            async with self._run_created:
                await self._run_created.wait_for(lambda: run_id in self.runs)
            return self.runs[run_id]

        if run_id in self.runs:
            return self.runs[run_id]
        try:
            return await asyncio.wait_for(appeared(), timeout_s)
        except TimeoutError:
            return None

    def get_run(self, run_id: str) -> WorkflowRun:
        run = self.runs.get(run_id)
        if run is None:
            raise EngineError("NOT_FOUND", f"workflow run {run_id!r} not found")
        return run

    def cancel_run(self, run_id: str, reason: str = "run was cancelled") -> list[str]:
        """Cancel every task of a run; returns the external ids of the tasks it cancelled."""
        run = self.get_run(run_id)
        if run.status.is_final:
            return []
        run.cancel_reason = reason
        cancelled = [task.external_id for task in run.created_tasks if not task.status.is_final]
        for task in run.created_tasks:
            self._cancel_task(task, reason, settle=False)
        for task in run.tasks.values():
            if task.waiting:  # it will never run now
                self._stop_waiting(task)
                self._create(task, Status.CANCELLED, reason)
        self._settle(run)  # tasks not created yet follow their cancelled parents
        self._dispatch()  # the units its tasks held are free for queued tasks
        return cancelled

    def cancel_tasks(self, external_ids: list[str]) -> list[str]:
        """The v1 cancel endpoint: a task's id cancels that task, a run's id the whole run."""
        cancelled: list[str] = []
        for external_id in external_ids:
            task = self.tasks.get(external_id)
            if task is not None:
                if task.created and not task.status.is_final:
                    cancelled.append(external_id)
                    self._cancel_task(task, "task was cancelled")
            elif external_id in self.runs:
                cancelled.extend(self.cancel_run(external_id))
        return cancelled

    # -- workers -----------------------------------------------------------------------

    def register_worker(
        self,
        name: str,
        actions: list[str],
        slots: int | None = None,
        slot_config: dict[str, int] | None = None,
    ) -> Worker:
        """A worker with ``slot_config`` (units per slot type) or the deprecated ``slots``
        (that many default units); neither: 100 default units (worker_slots.py)."""
        worker = Worker(
            worker_id=str(uuid.uuid4()),
            name=name,
            actions=frozenset(actions),
            slot_config=_slot_config(slots, slot_config),
            last_seen=self._now(),
        )
        self.workers[worker.worker_id] = worker
        logger.debug("worker registered", worker_id=worker.worker_id, actions=sorted(actions))
        return worker

    def get_worker(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise EngineError("NOT_FOUND", f"worker {worker_id!r} not found")
        return worker

    def listener_opened(self, worker: Worker) -> None:
        worker.listeners += 1
        worker.last_seen = self._now()
        self._dispatch()

    def listener_closed(self, worker: Worker) -> None:
        worker.listeners = max(worker.listeners - 1, 0)

    def heartbeat(self, worker_id: str) -> None:
        self.get_worker(worker_id).last_seen = self._now()

    def set_paused(self, worker_id: str, *, paused: bool) -> Worker:
        worker = self.get_worker(worker_id)
        worker.paused = paused
        if not paused:
            self._dispatch()
        return worker

    def remove_worker(self, worker_id: str) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        self.batches.worker_lost(worker)  # its batches' slots are not task ids
        for external_id in list(worker.running):
            task = self.tasks[external_id]
            if not task.status.is_final and task.worker_id == worker_id:
                logger.info("requeueing task of a lost worker", task=external_id)
                self._release(task)
                task.status = Status.QUEUED
                self._enqueue(task)
        self._dispatch()

    async def _reap_silent_workers(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.worker_timeout_s / 4))
            deadline = self._now() - self.worker_timeout_s
            for worker in list(self.workers.values()):
                if worker.listeners == 0 and worker.last_seen < deadline:
                    self.remove_worker(worker.worker_id)

    # -- task events from workers --------------------------------------------------------

    def _task_for_event(self, external_id: str, retry_count: int | None) -> TaskRun | None:
        task = self.tasks.get(external_id)
        if task is None:
            raise EngineError("NOT_FOUND", f"task run {external_id!r} not found")
        if task.status not in (Status.ASSIGNED, Status.RUNNING):
            return None  # late event of an attempt that already ended: ignored
        if retry_count is not None and retry_count != task.retry_count:
            return None  # event of an earlier attempt
        return task

    def task_started(self, external_id: str, retry_count: int | None = None) -> None:
        task = self._task_for_event(external_id, retry_count)
        if task is None or task.started_event_sent:  # STARTED may arrive twice
            return
        task.status = Status.RUNNING
        task.started_event_sent = True
        task.started_at = task.started_at or utcnow()
        self._record(task, "STARTED")
        run = task.run
        if run.status is Status.QUEUED:
            run.status = Status.RUNNING
            run.started_at = utcnow()
        self._emit(
            RunEvent(
                run.run_id,
                "STEP_RUN",
                "STARTED",
                external_id,
                retry_count=task.retry_count,
                task_retries=task.spec.retries,
            )
        )

    def task_completed(self, external_id: str, output: str, retry_count: int | None = None) -> None:
        task = self._task_for_event(external_id, retry_count)
        if task is None:
            return
        self.task_started(external_id, retry_count)  # STARTED can trail the result
        task.status = Status.COMPLETED
        task.output = output  # "" when the task returned None: it has no output
        task.finished_at = utcnow()
        self._release(task)
        self._free_slots(task)
        self._record(task, "FINISHED", output=output)
        self._emit(
            RunEvent(
                task.run.run_id,
                "STEP_RUN",
                "COMPLETED",
                external_id,
                payload=output,
                retry_count=task.retry_count,
                task_retries=task.spec.retries,
            )
        )
        self._settle(task.run)
        self._dispatch()

    def task_failed(
        self,
        external_id: str,
        error: str,
        retry_count: int | None = None,
        *,
        should_not_retry: bool = False,
        retry_after_s: float = 0.0,
    ) -> None:
        task = self._task_for_event(external_id, retry_count)
        if task is None:
            return
        self.task_started(external_id, retry_count)
        self._end_attempt(
            task, Status.FAILED, error, retryable=not should_not_retry, retry_after_s=retry_after_s
        )

    def task_cancelled_by_worker(self, external_id: str, retry_count: int | None = None) -> None:
        task = self._task_for_event(external_id, retry_count)
        if task is not None:  # the worker gave up on this task: it alone is cancelled
            self._cancel_task(task, "task was cancelled by its worker")

    def refresh_timeout(self, external_id: str, increment: str) -> datetime:
        task = self.tasks.get(external_id)
        if task is None:
            raise EngineError("NOT_FOUND", f"task run {external_id!r} not found")
        seconds = parse_duration(increment) or 0.0
        handle = task.timeout_handle
        if handle is not None and not task.status.is_final:
            remaining = handle.when() - self._now() + seconds
            self._arm_timeout(task, remaining)
            return utcnow() + timedelta(seconds=remaining)
        return utcnow()

    def release_slot(self, external_id: str) -> None:
        task = self.tasks.get(external_id)
        if task is not None and task.worker_id in self.workers:
            self.workers[task.worker_id].free(external_id)
            self._dispatch()

    def put_stream(self, external_id: str, message: bytes, event_index: int | None) -> None:
        task = self.tasks.get(external_id)
        if task is None:
            raise EngineError("NOT_FOUND", f"task run {external_id!r} not found")
        if task.run.status.is_final:
            return  # the run has hung up; nobody can receive this any more
        if event_index is None:
            event_index = task.next_stream_index
        task.next_stream_index = event_index + 1
        self._emit(
            RunEvent(
                task.run.run_id,
                "STEP_RUN",
                "STREAM",
                external_id,
                payload=message.decode("utf-8", errors="replace"),
                event_index=event_index,
                retry_count=task.retry_count,
            )
        )

    # -- subscriptions -----------------------------------------------------------------

    def subscribe_run(self, run: WorkflowRun) -> EventSubscription | None:
        """A live subscription to one run; None when the run already ended (nothing to send)."""
        if run.status.is_final:
            return None
        subscription = EventSubscription(matches=lambda r: r is run, run_id=run.run_id)
        self._subscriptions.add(subscription)
        self.subscriptions_opened[run.run_id] += 1
        return subscription

    def subscribe_metadata(self, key: str, value: str) -> EventSubscription:
        """Events of every run whose additional metadata has ``key == value``."""
        subscription = EventSubscription(
            matches=lambda r: str(r.additional_metadata.get(key)) == value
        )
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: EventSubscription) -> None:
        self._subscriptions.discard(subscription)

    def subscription_count(self, run_id: str | None = None) -> int:
        return sum(1 for s in self._subscriptions if run_id is None or s.run_id == run_id)

    # -- fault hooks -------------------------------------------------------------------

    def break_subscriptions(self, run_id: str | None = None) -> int:
        """End every open subscription (of one run, or all) with UNAVAILABLE."""
        broken = [s for s in self._subscriptions if run_id is None or s.run_id == run_id]
        for subscription in broken:
            self._subscriptions.discard(subscription)
            subscription.queue.put_nowait(BROKEN)
        return len(broken)

    def refuse_subscriptions(self, seconds: float, code: str = "UNAVAILABLE") -> None:
        self.faults.refuse_until = self._now() + seconds
        self.faults.refuse_code = code

    def delay_subscriptions(self, delay_s: float, for_seconds: float) -> None:
        self.faults.delay_s = delay_s
        self.faults.delay_until = self._now() + for_seconds

    def clear_faults(self) -> None:
        self.faults = SubscriptionFaults()

    def subscription_fault(self) -> tuple[str | None, float]:
        """(status code to refuse with or None, seconds to delay) for a new subscription."""
        now = self._now()
        code = self.faults.refuse_code if now < self.faults.refuse_until else None
        delay = self.faults.delay_s if now < self.faults.delay_until else 0.0
        return code, delay

    # -- REST catalog: events, filters, replay, pause ----------------------------------

    def triggers_of(self, run: WorkflowRun) -> dict[str, Any]:
        """The ``triggers`` of a task's action payload: the filter payload of the filter that
        started the run, or null (``ToV1StepRunData``, pkg/repository/input.go)."""
        return {"filter_payload": self.filter_payloads.get(run.run_id)}

    def workflow_by_id(self, workflow_id: str) -> WorkflowSpec:
        for workflow in self.workflows.values():
            if workflow.workflow_id == workflow_id:
                return workflow
        raise EngineError("NOT_FOUND", f"workflow {workflow_id!r} not found")

    def create_filter(
        self, workflow_id: str, scope: str, expression: str, payload: dict[str, Any]
    ) -> EventFilter:
        self.workflow_by_id(workflow_id)
        event_filter = EventFilter(workflow_id, scope, expression, payload)
        self.event_filters[event_filter.filter_id] = event_filter
        return event_filter

    def declare_filters(
        self, workflow_id: str, declared: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """A new version's default filters, as (scope, expression, payload): they replace the
        workflow's declarative filters. The same set again (another worker registering the
        unchanged workflow, whose version the engine reuses) keeps the filters as they are."""
        if not declared:
            return
        current = [
            f
            for f in self.event_filters.values()
            if f.workflow_id == workflow_id and f.is_declarative
        ]
        if [(f.scope, f.expression, f.payload) for f in current] == declared:
            return
        for stale in current:
            del self.event_filters[stale.filter_id]
        for scope, expression, payload in declared:
            made = EventFilter(workflow_id, scope, expression, payload, is_declarative=True)
            self.event_filters[made.filter_id] = made

    def get_filter(self, filter_id: str) -> EventFilter:
        event_filter = self.event_filters.get(filter_id)
        if event_filter is None:
            raise EngineError("NOT_FOUND", f"filter {filter_id!r} not found")
        return event_filter

    def update_filter(
        self,
        filter_id: str,
        *,
        scope: str | None = None,
        expression: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> EventFilter:
        event_filter = self.get_filter(filter_id)
        if scope is not None:
            event_filter.scope = scope
        if expression is not None:
            event_filter.expression = expression
        if payload is not None:
            event_filter.payload = payload
        event_filter.updated_at = utcnow()
        return event_filter

    def delete_filter(self, filter_id: str) -> EventFilter:
        event_filter = self.get_filter(filter_id)
        del self.event_filters[filter_id]
        return event_filter

    def delete_workflow(self, workflow_id: str) -> WorkflowSpec:
        """``hatchet.workflows.delete``: the engine soft-deletes the workflow and its versions
        and frees its name (``SoftDeleteWorkflow`` in pkg/repository/sqlcv1/workflows.sql), so
        it can no longer be triggered or listed, and registering the name again makes a new
        workflow. Its runs, finished or not, stay as they are (held, if it was paused); its
        filters go with it."""
        workflow = self.workflow_by_id(workflow_id)
        del self.workflows[workflow.name]  # a pause stays: its queued tasks stay held
        for event_filter in [
            f for f in self.event_filters.values() if f.workflow_id == workflow_id
        ]:
            del self.event_filters[event_filter.filter_id]
        return workflow

    def pause_workflow(self, name: str, queue_ttl_s: float | None) -> None:
        """Hold the workflow's queued tasks back; with a TTL, a task queued longer than it
        is cancelled while the pause lasts (``ListExpiredPausedWorkflowQueueItems`` in
        pkg/repository/sqlcv1/queue.sql, internal/services/controllers/task/
        process_paused_workflow_ttl.go)."""
        self.paused_workflows.add(name)
        self.paused_queue_ttls.pop(name, None)
        if queue_ttl_s is not None:
            self.paused_queue_ttls[name] = queue_ttl_s
            self._expire_paused_queue()

    def unpause_workflow(self, name: str) -> None:
        self.paused_workflows.discard(name)
        self.paused_queue_ttls.pop(name, None)
        self._dispatch()

    def _expire_paused_queue(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
        self._pause_timer = None
        now = utcnow()
        for task in list(self.tasks.values()):
            ttl = self.paused_queue_ttls.get(task.run.workflow.name)
            if (
                ttl is not None
                and task.created
                and task.status is Status.QUEUED
                and task.created_at is not None
                and (now - task.created_at).total_seconds() >= ttl
            ):
                self._cancel_task(task, "paused workflow queue item TTL expired.")
        if self.paused_queue_ttls:
            self._pause_timer = asyncio.get_running_loop().call_later(
                0.25, self._expire_paused_queue
            )

    def replay(self, external_ids: list[str]) -> list[str]:
        """Re-run tasks (a run's id: all of its tasks) with ``retry_count`` one higher. Each
        task's dependents in the DAG run again after it; a run with a task still queued or
        running, or with tasks not created yet, is left alone (``ReplayTasks`` in
        pkg/repository/task.go: its preflight checks and ``ListTasksForReplay``)."""
        requested: dict[str, tuple[WorkflowRun, set[str]]] = {}
        for external_id in external_ids:
            task = self.tasks.get(external_id)
            run = task.run if task is not None else self.runs.get(external_id)
            if run is None:
                continue
            names = requested.setdefault(run.run_id, (run, set()))[1]
            names.update([task.spec.readable_id] if task is not None else run.tasks)
        replayed: list[str] = []
        for run, names in requested.values():
            replayed += self._replay_run(run, names)
        self._dispatch()
        return replayed

    def _replay_run(self, run: WorkflowRun, names: set[str]) -> list[str]:
        subtree = set(names)
        grew = True
        while grew:  # every task below a replayed one runs again
            grew = False
            for name, task in run.tasks.items():
                if (
                    name not in subtree
                    and not task.spec.on_failure
                    and any(parent in subtree for parent in task.spec.parents)
                ):
                    subtree.add(name)
                    grew = True
        tasks = [run.tasks[name] for name in subtree]
        if not all(t.created for t in run.tasks.values()) or not all(
            t.status.is_final for t in tasks
        ):
            logger.info("replay skipped: the run has unfinished tasks", run_id=run.run_id)
            return []
        others_replayed = any(not t.spec.on_failure for t in tasks)
        for task in tasks:
            self._clear_timers(task)
            self._stop_waiting(task)
            task.met.clear()  # its conditions are decided again, on the new parent outputs
            task.trigger_data.clear()
            task.retry_count += 1
            task.status = Status.QUEUED
            task.output = task.error = task.cancel_reason = None
            task.skipped = task.started_event_sent = False
            task.started_at = task.finished_at = task.worker_id = None
            task.not_before = 0.0
            # a task whose parent runs again (or the on-failure task, when other tasks
            # do) waits to be created by them, as when the run began
            waits = any(p in subtree for p in task.spec.parents) or (
                task.spec.on_failure and others_replayed
            )
            task.created = False
            task.created_at = None if waits else task.created_at
        run.failures = [t for t in run.failures if t.spec.readable_id not in subtree]
        run.status = Status.QUEUED
        run.error = None
        run.finished_at = None
        run.done.clear()
        for task in tasks:
            if task.created_at is not None:  # the replay's roots are queued now
                self._create(task, Status.QUEUED)
        self._settle(run)
        return [run.tasks[name].external_id for name in names]

    # -- internals ---------------------------------------------------------------------

    def _emit(self, event: RunEvent) -> None:
        run = self.runs[event.run_id]
        for subscription in list(self._subscriptions):
            if subscription.matches(run):
                subscription.queue.put_nowait(event)
                if event.hangup and subscription.run_id is not None:
                    self._subscriptions.discard(subscription)

    def _record(
        self,
        task: TaskRun,
        event_type: str,
        *,
        error: str | None = None,
        message: str = "",
        output: str | None = None,
    ) -> None:
        self._event_ids += 1
        task.run.task_events.append(
            TaskEvent(
                self._event_ids,
                task,
                event_type,
                task.retry_count,
                error=error,
                message=message,
                worker_id=task.worker_id,
                output=output,
            )
        )

    def _create(self, task: TaskRun, state: Status, why: str = "") -> None:
        """Create a task in ``state``: QUEUED, CANCELLED, or COMPLETED meaning skipped."""
        task.created = True
        task.created_at = utcnow()
        run = task.run
        if state is Status.QUEUED:
            if task.spec.rate_limits and not self.rate_limits.evaluate(task):
                return  # a rate limit's expression could not be evaluated: it failed for good
            if task.spec.batch is not None and not self.batches.evaluate_key(task):
                return  # its batch key could not be evaluated: it failed for good
            if task.spec.concurrency:
                self._take_slots(task)
            if not task.status.is_final:
                self._enqueue(task)
            return
        task.status = state
        task.finished_at = task.created_at
        if state is Status.CANCELLED:  # no error of its own: a parent's failure carries it
            self._record(task, "CANCELLED", message=why or "a parent task failed or was cancelled")
            self._emit(RunEvent(run.run_id, "STEP_RUN", "CANCELLED", task.external_id))
        else:  # skipped: the engine's output for a skipped task
            task.skipped = True
            task.output = json.dumps({"skipped": True})
            self._record(task, "SKIPPED", output=task.output)
            self._emit(RunEvent(run.run_id, "STEP_RUN", "COMPLETED", task.external_id, task.output))

    @staticmethod
    def _decide(task: TaskRun) -> Status | None:
        """What a task not created yet becomes now, or None while its parents are undecided."""
        run = task.run
        if task.spec.on_failure:
            others = [t for t in run.tasks.values() if t is not task]
            if any(t.failed for t in others):
                return Status.QUEUED
            finished = all(t.created and t.status.is_final for t in others)
            return Status.COMPLETED if finished else None  # completed here means skipped
        parents = [run.tasks[name] for name in task.spec.parents]
        if not parents:
            return None
        if any(p.failed or p.status is Status.CANCELLED for p in parents):
            return Status.CANCELLED
        if all(p.created and p.status is Status.COMPLETED for p in parents):
            return Status.COMPLETED if all(p.skipped for p in parents) else Status.QUEUED
        return None

    def _settle(self, run: WorkflowRun) -> None:
        """Create the tasks that their parents now decide, then end the run if all are final."""
        if run.workflow.idempotency is not None and any(
            t.created and t.status.is_final for t in run.tasks.values()
        ):
            self.idempotency_keys.release(run.run_id)  # a STATUS key; a TTL key stays
        if run.status.is_final:
            return
        progressed = True
        while progressed:
            progressed = False
            for task in run.tasks.values():
                if task.created or task.waiting or (state := self._decide(task)) is None:
                    continue
                if state is Status.QUEUED and task.spec.conditions:
                    self._wait_for_conditions(task)
                else:
                    self._create(task, state)
                progressed = True
        if all(task.created and task.status.is_final for task in run.tasks.values()):
            self._finish_run(run)

    def _cancel_task(self, task: TaskRun, reason: str, *, settle: bool = True) -> None:
        if task.status.is_final:
            return
        if task.status in (Status.ASSIGNED, Status.RUNNING):
            self._send_cancel(task)
        self._release(task)
        self._free_slots(task)
        task.status = Status.CANCELLED
        task.cancel_reason = reason
        task.finished_at = utcnow()
        self._record(task, "CANCELLED", message=reason)
        self._emit(RunEvent(task.run.run_id, "STEP_RUN", "CANCELLED", task.external_id))
        if settle:
            self._settle(task.run)
            self._dispatch()

    def _enqueue(self, task: TaskRun) -> None:
        task.status = Status.QUEUED
        task.worker_id = None
        task.started_event_sent = False
        self._queued += 1
        self._queue.append((-task.run.priority, self._queued, task))
        self._record(task, "QUEUED")
        schedule_timeout = task.spec.schedule_timeout_s
        if schedule_timeout is not None and task.schedule_handle is None:
            task.schedule_handle = asyncio.get_running_loop().call_later(
                max(schedule_timeout, 0.0) + max(task.not_before - self._now(), 0.0),
                self._scheduling_timed_out,
                task,
            )

    def _scheduling_timed_out(self, task: TaskRun) -> None:
        task.schedule_handle = None
        if task.status is Status.QUEUED and task.created:
            logger.info("task found no worker in time", task=task.external_id)
            self._record(task, "SCHEDULING_TIMED_OUT")
            self._cancel_task(task, "SCHEDULING_TIMED_OUT")

    def _dispatch(self) -> None:
        """Assign queued tasks to free workers: higher run priority first, then arrival."""
        waiting: list[tuple[int, int, TaskRun]] = []
        now = self._now()
        wall = utcnow()
        self.rate_limits.prepare([entry[2] for entry in self._queue], wall)
        for entry in sorted(self._queue):
            task = entry[2]
            if task.status is not Status.QUEUED:
                continue
            if task.not_before > now:
                waiting.append(entry)
                asyncio.get_running_loop().call_at(task.not_before, self._dispatch)
                continue
            if not self._assignable(task) or not self.rate_limits.admits(task, wall):
                waiting.append(entry)
                continue
            if task.spec.batch is not None:  # it waits for its batch to flush (batches.py)
                self.rate_limits.consume(task)
                self.batches.buffer(task)
                continue
            worker = self._choose_worker(task)
            if worker is None:
                waiting.append(entry)
                continue
            self.rate_limits.consume(task)  # only an assignment takes the units
            task.status = Status.ASSIGNED
            task.worker_id = worker.worker_id
            worker.hold(task.external_id, task.spec.slot_requests)
            if task.schedule_handle is not None:
                task.schedule_handle.cancel()
                task.schedule_handle = None
            self._record(task, "ASSIGNED")
            if task.spec.timeout_s is not None:
                self._arm_timeout(task, task.spec.timeout_s)
            worker.assignments.put_nowait(Assignment("START_STEP_RUN", task))
        self._queue = waiting

    def _choose_worker(
        self, task: TaskRun, requests: worker_slots.Units | None = None
    ) -> Worker | None:
        """A worker with the units the task asks (or ``requests``) free, by its desired
        labels or its run's sticky worker."""
        asked = task.spec.slot_requests if requests is None else requests
        run = task.run
        desired_worker = run.desired_worker_id
        for parent in task.spec.parents:  # a DAG task wants the worker of its first parent
            desired_worker = run.tasks[parent].worker_id or desired_worker
            break
        return affinity.choose(
            (w for w in self.workers.values() if w.can_take(task.spec.action, asked)),
            desired=run.desired_labels or task.spec.worker_labels,
            sticky=run.workflow.sticky,
            desired_worker_id=desired_worker,
        )

    def upsert_worker_labels(self, worker_id: str, labels: dict[str, affinity.Label]) -> None:
        """Set (add or replace, key by key) a worker's labels; tasks may now fit it."""
        self.get_worker(worker_id).labels.update(labels)
        self._dispatch()

    def _assignable(self, task: TaskRun) -> bool:
        """Whether a queued task may be assigned now (what holds it back besides workers)."""
        return (
            task.run.admitted
            and task.admitted
            and task.run.workflow.name not in self.paused_workflows
        )

    # -- conditions --------------------------------------------------------------------

    def match_user_event(self, key: str, payload: dict[str, Any], scope: str = "") -> None:
        """A pushed event meets the user-event conditions of waiting tasks that it matches."""
        touched: set[WorkflowRun] = set()
        for task in list(self._waiting):
            for index, condition in enumerate(task.spec.conditions):
                if condition.kind != "USER_EVENT" or condition.event_key != key:
                    continue
                if condition.scope and condition.scope != scope:
                    continue
                if self._holds(condition, {"input": payload, "output": {}}):
                    task.met.add(index)
                    task.trigger_data[condition.data_key] = payload
            if self._resolve_conditions(task):
                touched.add(task.run)
        for run in touched:
            self._settle(run)
        self._dispatch()

    def _wait_for_conditions(self, task: TaskRun) -> None:
        """Its parents completed: meet the parent conditions now, arm the sleeps."""
        run = task.run
        task.waiting = True
        self._waiting.add(task)
        self._record(task, "QUEUED", message="waiting for its conditions")
        loop = asyncio.get_running_loop()
        for index, condition in enumerate(task.spec.conditions):
            if condition.kind == "PARENT":
                parent = run.tasks.get(condition.parent)
                output = (parent.output_object() if parent is not None else None) or {}
                if self._holds(condition, {"input": run.input, "output": output}):
                    task.met.add(index)
                    task.trigger_data[condition.data_key] = output
            elif condition.kind == "SLEEP":
                task.condition_timers.append(
                    loop.call_later(condition.sleep_s, self._sleep_done, task, index)
                )
        self._resolve_conditions(task)

    @staticmethod
    def _holds(condition: conditions.Condition, variables: dict[str, Any]) -> bool:
        try:
            return condition.holds_for(variables)
        except EngineError as error:  # the engine logs it and leaves the condition unmet
            logger.warning("condition expression failed", error=str(error))
            return False

    def _sleep_done(self, task: TaskRun, index: int) -> None:
        if not task.waiting:
            return
        task.met.add(index)
        task.trigger_data[task.spec.conditions[index].data_key] = {}
        if self._resolve_conditions(task):
            self._settle(task.run)
            self._dispatch()

    def _resolve_conditions(self, task: TaskRun) -> bool:
        """Create the task if one action's conditions hold; whether it did."""
        action = conditions.decide(task.spec.conditions, task.met)
        if action is None or not task.waiting:
            return False
        self._stop_waiting(task)
        state = {"QUEUE": Status.QUEUED, "SKIP": Status.COMPLETED}.get(action, Status.CANCELLED)
        self._create(task, state, "its cancel_if conditions were met")
        return True

    def _stop_waiting(self, task: TaskRun) -> None:
        task.waiting = False
        self._waiting.discard(task)
        for timer in task.condition_timers:
            timer.cancel()
        task.condition_timers.clear()

    # -- concurrency limits ------------------------------------------------------------

    def _take_slots(self, task: TaskRun) -> None:
        """A task with task-level limits queues for their slots (or fails on a bad key)."""
        run = task.run
        try:
            task.slots = Limiter.keys(
                f"{run.workflow.name}/{task.spec.readable_id}",
                task.spec.concurrency,
                _key_variables(run),
            )
        except EngineError as error:
            task.status = Status.ASSIGNED  # an attempt that cannot start: it fails for good
            self._end_attempt(task, Status.FAILED, str(error), retryable=False)
            return
        task.admitted = False
        self._cancel_for_concurrency(self._limiter.arrive(task))

    def _cancel_for_concurrency(self, victims: list[Any]) -> None:
        for victim in victims:
            if isinstance(victim, WorkflowRun):
                self.cancel_run(victim.run_id, CANCELLED_BY_CONCURRENCY_LIMIT)
            else:
                self._cancel_task(victim, CANCELLED_BY_CONCURRENCY_LIMIT)
        self._limiter.admit()

    def _free_slots(self, holder: TaskRun | WorkflowRun) -> None:
        if holder.slots:
            self._limiter.release(holder)
            self._limiter.admit()

    def _arm_timeout(self, task: TaskRun, seconds: float) -> None:
        self._clear_timeout(task)
        task.timeout_handle = asyncio.get_running_loop().call_later(
            max(seconds, 0.0), self._timed_out, task
        )

    @staticmethod
    def _clear_timeout(task: TaskRun) -> None:
        if task.timeout_handle is not None:
            task.timeout_handle.cancel()
            task.timeout_handle = None

    @classmethod
    def _clear_timers(cls, task: TaskRun) -> None:
        cls._clear_timeout(task)
        if task.schedule_handle is not None:
            task.schedule_handle.cancel()
            task.schedule_handle = None

    def _timed_out(self, task: TaskRun) -> None:
        task.timeout_handle = None
        if task.status in (Status.ASSIGNED, Status.RUNNING):
            self._send_cancel(task)
            self._end_attempt(
                task,
                Status.TIMED_OUT,
                f"Task exceeded timeout of {task.spec.timeout}",  # the real engine's words
                retryable=True,
            )

    def _end_attempt(
        self,
        task: TaskRun,
        status: Status,
        error: str,
        *,
        retryable: bool,
        retry_after_s: float = 0.0,
    ) -> None:
        """A failed or timed-out attempt: retry it if allowed, else the task ends with ``status``
        (its dependents are cancelled; independent branches go on)."""
        self._release(task)
        self._record(task, status.value, error=error)
        run = task.run
        self._emit(
            RunEvent(
                run.run_id,
                "STEP_RUN",
                status.value,
                task.external_id,
                payload=error,
                retry_count=task.retry_count,
                task_retries=task.spec.retries,
            )
        )
        if retryable and task.retry_count < task.spec.retries:
            self._record(task, "RETRYING")
            task.retry_count += 1
            task.not_before = self._now() + (retry_after_s or self._backoff(task))
            self._enqueue(task)
            self._dispatch()
            return
        task.status = status
        task.error = error
        task.finished_at = utcnow()
        self._free_slots(task)
        run.failures.append(task)
        self._settle(run)
        self._dispatch()

    @staticmethod
    def _backoff(task: TaskRun) -> float:
        factor = task.spec.backoff_factor
        if not factor:
            return 0.0
        delay: float = factor ** (task.retry_count - 1)
        if task.spec.backoff_max_s:
            delay = min(delay, task.spec.backoff_max_s)
        return delay

    def _release(self, task: TaskRun) -> None:
        self._clear_timers(task)
        worker = self.workers.get(task.worker_id or "")
        if worker is not None:
            worker.free(task.external_id)
        self.batches.released(task)

    def _send_cancel(self, task: TaskRun) -> None:
        worker = self.workers.get(task.worker_id or "")
        if worker is not None:
            worker.assignments.put_nowait(Assignment("CANCEL_STEP_RUN", task))

    def _finish_run(self, run: WorkflowRun) -> None:
        """Every task is final: the run's status follows the engine's precedence."""
        if run.status.is_final:
            return
        if run.failures:
            first = run.failures[0]
            status, error = first.status, first.error
        elif any(task.status is Status.CANCELLED for task in run.tasks.values()):
            status = Status.CANCELLED
            error = run.cancel_reason or "a task was cancelled"
        else:
            status, error = Status.COMPLETED, None
        run.status = status
        run.error = error
        run.finished_at = utcnow()
        self._free_slots(run)
        payload = json.dumps(run.output) if status is Status.COMPLETED else (error or "")
        self._emit(
            RunEvent(run.run_id, "WORKFLOW_RUN", status.value, run.run_id, payload, hangup=True)
        )
        run.done.set()
        logger.debug("run finished", run_id=run.run_id, status=status.value)


def _slot_config(count: int | None, config: dict[str, int] | None) -> dict[str, int]:
    if count is not None and config:
        raise EngineError(  # the engine's words
            "INVALID_ARGUMENT",
            "either slot_config or slots (deprecated) must be provided, not both",
        )
    if count is not None:
        return {worker_slots.DEFAULT: count}
    return dict(config) if config else {worker_slots.DEFAULT: worker_slots.DEFAULT_WORKER_UNITS}


def _key_variables(run: WorkflowRun) -> dict[str, Any]:
    """What a concurrency key's CEL expression can read."""
    return {
        "input": run.input,
        "additional_metadata": run.additional_metadata,
        "workflow_run_id": run.run_id,
    }
