"""Batch tasks (``hatchet.batch_task``): queued tasks of a batch step wait in a buffer per
batch key and go to one worker together, as one START_BATCH holding one slot.

What the real engine does, and this module with it:

- registration fills in what the SDK leaves out: a flush interval of 1000 ms, the
  group key ``'default'`` and at most 100 batches of one key running at once
  (``CreateWorkflowVersion`` in internal/services/admin/v1/server.go);
- a task's batch key is a CEL expression over its ``input``, ``additional_metadata``,
  ``workflow_run_id`` (the task's own id) and ``parents``, evaluated once, when the
  task is created; a key that fails, or is not a string, fails that task alone, for
  good, with ``failed to parse batch group key expression (...)``
  (``evalBatchGroupKey`` and ``insertTasks`` in pkg/repository/task.go);
- a scheduler per step ticks every 200 ms (``defaultBatchPollInterval``; the engine's
  ticker is random between 200 and 400 ms). Each tick moves the newly queued tasks
  (higher priority first, then arrival) into their key's group, drops the ones
  cancelled meanwhile, then flushes: the prefix that stays under 4 MB of input
  payload when the buffer is over it, full batches of ``batch_max_size``, and
  everything buffered once the group's deadline passed. A group's deadline is its
  creation, then its last flush, plus the interval: it is not counted from the first
  buffered task (``tick``, ``flush``, ``resetFlushDeadline`` in
  pkg/scheduling/v1/batch_scheduler.go);
- a flush takes one slot of one worker, chosen for its first task; with no free
  worker, or with ``batch_group_max_runs`` batches of the key still running, the
  tasks go back to the front of the buffer and wait for the next deadline
  (``assignAndDispatch``, same file; ``CountActiveTaskBatchRuns`` in
  pkg/repository/sqlcv1/tasks.sql counts the batches with a task still running);
- START_BATCH carries the tenant, the action, the batch id and key, ``{task id:
  {payload, workflow_run_id}}`` as its payload (each payload as a single task's
  would be) and ``batchStartPayload`` (size, why it flushed, when), and nothing else:
  no run id and no retry count (``sendBatchStartFromPayload`` in
  internal/services/dispatcher/dispatcher.go, ``describeBatchFlushReason`` in
  internal/services/scheduler/v1/scheduler.go);
- SendBatchActionEvent applies STARTED, COMPLETED, FAILED (its retries and
  ``should_not_retry``) per item, as the single-task events do; CANCELLED cancels
  the items as a cancel request does, without an error of their own
  (``sendBatchActionEventV1`` in internal/services/dispatcher/server.go;
  ``NewCancelledTaskOutputEvent`` in pkg/repository/output.go);
- the slot is the batch's until none of its tasks runs any more; a task retried or
  requeued joins a later batch.

Events of a batch that ended, or for a task not in that batch, are ignored.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hatchway.observability import logger

from . import contracts, expressions, worker_slots
from . import engine as core  # a cycle: engine.py imports this module; names are read at call time
from .errors import EngineError

if TYPE_CHECKING:
    from collections.abc import Callable

POLL_S = 0.2  # defaultBatchPollInterval
MAX_BUFFERED_PAYLOAD_BYTES = 4_000_000  # maxBufferedPayloadBytes
DEFAULT_INTERVAL_MS = 1000
DEFAULT_GROUP_KEY = "'default'"
DEFAULT_MAX_RUNS = 100
_SLOT_PREFIX = "batch:"  # a batch's slot in Worker.running, next to task ids

_EVENT_KINDS = frozenset(
    f"STEP_EVENT_TYPE_{kind}" for kind in ("STARTED", "COMPLETED", "FAILED", "CANCELLED")
)
SIZE_REACHED = "batch_size_reached"
INTERVAL_ELAPSED = "interval_elapsed"
MEMORY_REACHED = "memory_size_reached"


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_size: int
    max_interval_ms: int = DEFAULT_INTERVAL_MS
    group_key: str = DEFAULT_GROUP_KEY
    max_runs: int = DEFAULT_MAX_RUNS
    broadcast_output: bool = False

    @classmethod
    def from_proto(cls, message: Any) -> BatchConfig:  # noqa: ANN401 - a runtime proto message
        def present(name: str) -> bool:
            return bool(message.HasField(name))

        return cls(
            max_size=max(message.batch_max_size, 1),
            max_interval_ms=message.batch_max_interval_ms
            if present("batch_max_interval_ms")
            else DEFAULT_INTERVAL_MS,
            group_key=message.batch_group_key
            if present("batch_group_key") and message.batch_group_key
            else DEFAULT_GROUP_KEY,
            max_runs=message.batch_group_max_runs
            if present("batch_group_max_runs")
            else DEFAULT_MAX_RUNS,
            broadcast_output=message.broadcast_output,
        )


@dataclass(eq=False, slots=True)
class Batch:
    """One flushed batch: its tasks run on one worker, in one slot."""

    batch_id: str
    step: tuple[str, str]  # (workflow name, task readable id)
    key: str
    worker_id: str
    tasks: list[core.TaskRun]  # in flush order
    reason: str  # describeBatchFlushReason's words
    triggered_at: datetime
    members: set[core.TaskRun] = field(default_factory=set)  # its tasks still running

    @property
    def slot(self) -> str:
        return _SLOT_PREFIX + self.batch_id


@dataclass(frozen=True, slots=True)
class ItemEvent:
    """One item of a SendBatchActionEvent."""

    external_id: str
    payload: str
    should_not_retry: bool = False
    retry_after_ms: int = 0


@dataclass(eq=False, slots=True)
class _Group:
    key: str
    deadline: float | None
    buffer: list[core.TaskRun] = field(default_factory=list)


class Batches:
    """The batch buffers, flushes and running batches of one engine."""

    def __init__(self, engine: core.Engine) -> None:
        self._engine = engine
        self._inbox: list[core.TaskRun] = []  # queued since the last tick
        self._buffered: set[core.TaskRun] = set()  # in the inbox or a group
        self._groups: dict[tuple[str, str], dict[str, _Group]] = {}
        self._keys: dict[str, str] = {}  # task external id -> its batch key
        self._sizes: dict[str, int] = {}  # task external id -> its input's size in bytes
        self._member_of: dict[str, Batch] = {}  # task external id -> the batch running it
        self.active: dict[str, Batch] = {}  # batch id -> a batch with a task still running
        self._timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- hooks of the engine -------------------------------------------------------------

    def evaluate_key(self, task: core.TaskRun) -> bool:
        """A batch task being created: its batch key, or it fails for good (False)."""
        config = task.spec.batch
        assert config is not None  # noqa: S101 - only batch tasks come here
        run = task.run
        parents = {name: run.tasks[name].output_object() or {} for name in task.spec.parents}
        variables = {
            "input": run.input,
            "additional_metadata": run.additional_metadata,
            "workflow_run_id": task.external_id,  # evalBatchGroupKey passes the task's id
            "parents": parents,
        }
        prefix = f"failed to parse batch group key expression ({config.group_key})"
        try:
            value = expressions.evaluate(config.group_key, variables)
        except EngineError as error:
            message = f"{prefix}: {error}"
        else:
            if isinstance(value, str):
                self._keys[task.external_id] = value.strip()
                self._sizes[task.external_id] = len(json.dumps(run.input).encode())
                return True
            is_int = isinstance(value, int) and not isinstance(value, bool)
            got = "int" if is_int else "unknown type"
            message = f"{prefix}: expected string output for batch key, got {got}"
        task.status = core.Status.ASSIGNED  # an attempt that cannot start: it fails for good
        self._engine._end_attempt(task, core.Status.FAILED, message, retryable=False)
        return False

    def buffer(self, task: core.TaskRun) -> None:
        """A queued batch task that may be assigned: it waits for the next tick."""
        if task in self._buffered:
            return
        self._buffered.add(task)
        self._inbox.append(task)
        self._arm()

    def released(self, task: core.TaskRun) -> None:
        """A task's attempt ended or was requeued: its batch frees the slot with its last."""
        batch = self._member_of.pop(task.external_id, None)
        if batch is None:
            return
        batch.members.discard(task)
        if batch.members:
            return
        self.active.pop(batch.batch_id, None)
        worker = self._engine.workers.get(batch.worker_id)
        if worker is not None:
            worker.free(batch.slot)
        if self._buffered:
            self._arm()

    def worker_lost(self, worker: core.Worker) -> None:
        """A worker was removed: the tasks of its batches go back to the queue."""
        for slot in [s for s in worker.running if s.startswith(_SLOT_PREFIX)]:
            worker.free(slot)
            batch = self.active.get(slot.removeprefix(_SLOT_PREFIX))
            for task in list(batch.members) if batch is not None else []:
                if not task.status.is_final:
                    logger.info("requeueing batched task of a lost worker", task=task.external_id)
                    self._engine._release(task)
                    self._engine._enqueue(task)

    def event(self, batch_id: str, kind: str, items: list[ItemEvent]) -> None:
        """A SendBatchActionEvent: each item's event, as a single task's would be."""
        if kind not in _EVENT_KINDS:
            raise EngineError("INVALID_ARGUMENT", f"invalid batch action event type {kind}")
        engine = self._engine
        batch = self.active.get(batch_id)
        for item in items:
            task = engine.tasks.get(item.external_id)
            if batch is None or task is None or self._member_of.get(item.external_id) is not batch:
                continue  # a batch that ended, or a task it does not run
            if kind == "STEP_EVENT_TYPE_STARTED":
                engine.task_started(item.external_id)
            elif kind == "STEP_EVENT_TYPE_COMPLETED":
                engine.task_completed(item.external_id, item.payload)
            elif kind == "STEP_EVENT_TYPE_FAILED":
                engine.task_failed(
                    item.external_id,
                    item.payload,
                    should_not_retry=item.should_not_retry,
                    retry_after_s=item.retry_after_ms / 1000,
                )
            elif not task.status.is_final:  # CANCELLED, as CancelTasks: no error of its own
                engine._cancel_task(task, "")

    # -- the scheduler -------------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(POLL_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        inbox, self._inbox = self._inbox, []
        for task in sorted(inbox, key=lambda t: -t.run.priority):  # stable: then arrival
            config = task.spec.batch
            assert config is not None  # noqa: S101 - only batch tasks are buffered
            key = self._keys.get(task.external_id, "")
            groups = self._groups.setdefault(_step(task), {})
            if key not in groups:
                groups[key] = _Group(key, now + config.max_interval_ms / 1000)
            groups[key].buffer.append(task)
        for step, groups in self._groups.items():
            for group in groups.values():
                self._reconcile(group)
                self._flush_due(step, group, now)
        if self._buffered:
            self._arm()

    def _reconcile(self, group: _Group) -> None:
        """Drop what is no longer queued (cancelled, timed out) from the buffer."""
        kept = [t for t in group.buffer if t.status is core.Status.QUEUED and t.created]
        for task in group.buffer:
            if task not in kept:
                self._buffered.discard(task)
        group.buffer = kept

    def _flush_due(self, step: tuple[str, str], group: _Group, now: float) -> None:
        if not group.buffer:
            return
        config = group.buffer[0].spec.batch
        assert config is not None  # noqa: S101 - only batch tasks are buffered
        while (count := self._over_memory(group)) and self._flush(
            step, group, count, MEMORY_REACHED, config
        ):
            pass
        while len(group.buffer) >= config.max_size and self._flush(
            step, group, config.max_size, SIZE_REACHED, config
        ):
            pass
        if group.buffer and group.deadline is not None and now >= group.deadline:
            self._flush(step, group, len(group.buffer), INTERVAL_ELAPSED, config)

    def _over_memory(self, group: _Group) -> int:
        """How many tasks to flush for the memory limit: those before the one that goes
        over it (at least one); 0 while the buffer is under it."""
        total = 0
        for index, task in enumerate(group.buffer):
            total += self._sizes.get(task.external_id, 0)
            if total > MAX_BUFFERED_PAYLOAD_BYTES:
                return max(index, 1)
        return 0

    def _flush(
        self, step: tuple[str, str], group: _Group, count: int, reason: str, config: BatchConfig
    ) -> bool:
        """Send the first ``count`` buffered tasks as one batch; whether they went."""
        engine = self._engine
        tasks, rest = group.buffer[:count], group.buffer[count:]
        group.deadline = asyncio.get_running_loop().time() + config.max_interval_ms / 1000
        worker = engine._choose_worker(tasks[0], worker_slots.DEFAULT_REQUEST)
        running = sum(1 for b in self.active.values() if b.step == step and b.key == group.key)
        if worker is None or (config.max_runs > 0 and group.key and running >= config.max_runs):
            return False  # they stay at the front, for the next deadline
        group.buffer = rest
        batch = Batch(
            batch_id=str(uuid.uuid4()),
            step=step,
            key=group.key,
            worker_id=worker.worker_id,
            tasks=tasks,
            reason=_describe(reason, config),
            triggered_at=core.utcnow(),
        )
        self.active[batch.batch_id] = batch
        worker.hold(batch.slot, worker_slots.DEFAULT_REQUEST)
        for task in tasks:
            self._buffered.discard(task)
            batch.members.add(task)
            self._member_of[task.external_id] = batch
            task.status = core.Status.ASSIGNED
            task.worker_id = worker.worker_id
            if task.schedule_handle is not None:
                task.schedule_handle.cancel()
                task.schedule_handle = None
            engine._record(task, "ASSIGNED", message=f"batch {batch.batch_id}: {batch.reason}")
            if task.spec.timeout_s is not None:
                engine._arm_timeout(task, task.spec.timeout_s)
        logger.debug("batch flushed", batch_id=batch.batch_id, size=len(tasks), reason=reason)
        worker.assignments.put_nowait(core.Assignment("START_BATCH", tasks[0], batch=batch))
        return True


def start_batch_action(
    message: Callable[[str], Any],
    tenant_id: str,
    batch: Batch,
    payload_of: Callable[[core.TaskRun], str],
) -> Any:  # noqa: ANN401 - a runtime proto message
    """The START_BATCH AssignedAction of a batch, with exactly the engine's fields."""
    items = {
        t.external_id: {"payload": json.loads(payload_of(t)), "workflow_run_id": t.run.run_id}
        for t in batch.tasks
    }
    action = message("AssignedAction")(
        tenant_id=tenant_id,
        action_type=contracts.enum_value("ActionType", "START_BATCH"),
        action_id=batch.tasks[0].spec.action,
        action_payload=json.dumps(items),
        batchId=batch.batch_id,
    )
    if batch.key:
        action.batchKey = batch.key
    start = action.batchStartPayload
    start.expectedSize = len(batch.tasks)
    start.triggerReason = batch.reason
    start.triggerTime.FromDatetime(batch.triggered_at)
    return action


def _step(task: core.TaskRun) -> tuple[str, str]:
    return (task.run.workflow.name, task.spec.readable_id)


def _describe(reason: str, config: BatchConfig) -> str:
    if reason == SIZE_REACHED:
        return f"batch size threshold {config.max_size} reached"
    if reason == INTERVAL_ELAPSED:
        if config.max_interval_ms > 0:
            return f"batch max interval {_go_duration(config.max_interval_ms)} elapsed"
        return "batch max interval elapsed"
    return "batch max memory size reached"


def _go_duration(ms: int) -> str:
    """A duration as Go's time.Duration prints it (150ms, 2s, 1m0s, 1.5s)."""
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms / 1000, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{seconds:g}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text
