"""Durable tasks: each durable task's event log, memo entries, child spawns, eviction
and replay, as Hatchet's engine keeps them (pkg/repository/durable_events.go, the
log's SQL in pkg/repository/sqlcv1/durable_event_log.sql).

- Every assignment of a durable task is a new *invocation*: its count goes up by one
  and the log's node counter restarts at 0 (``IncrementLogFileInvocationCounts``).
  The worker replays its code; each wait, memo or child spawn it sends takes the next
  node id on the branch that node resolves to (``resolveBranchForNode``).
- A node that already has an entry is answered from the log: a satisfied sleep or
  event wait completes at once, a memo returns its stored result, a spawned child is
  the same child. A request whose idempotency key differs from the entry's is a
  non-determinism error (``getOrCreateEventLogEntries``).
- A request of an older invocation is answered with a server eviction notice
  (``StaleInvocationError``).
- Children are deduplicated by spawn key (parent task, child index or child key);
  a repeated spawn refers to the existing entry and takes no new node id
  (``resolveChildExternalIds``, ``resolveOrphanedChildDedupes``). Without a child key,
  the referenced entry must have the same idempotency key (a different workflow or
  input at a reused index is a non-determinism error).
- Completions carry a per-branch-path ``satisfied_order``; the dispatcher releases
  them to the worker in that order (internal/services/dispatcher/server_v1.go,
  ``deliverOrdered``).
- Eviction (the worker's request while a task waits) frees the task's slot; a
  completion that arrives while the task is evicted, or a REST restore, queues it
  again (internal/services/shared/durable/dispatch.go,
  internal/services/controllers/task/durable_callbacks.go).
- A branch ("replay reset") from node N of branch B starts branch latest+1: nodes
  before N resolve to B's path, N and later are new; the task is then replayed
  (``handleBranch``; internal/services/admin/v1/server.go ``BranchDurableTask``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hatchway.observability import logger

from . import expressions
from .engine import Engine, Status, TaskRun, WorkflowRun
from .errors import EngineError

TASK_CANCELLED = "task was cancelled"  # pkg/repository/output.go TaskCancelledErrorMessage


@dataclass(frozen=True, slots=True)
class WaitCondition:
    kind: str  # SLEEP | USER_EVENT
    group: str  # or-group: one condition of a group is enough
    data_key: str
    action: str = "CREATE"
    expression: str = ""
    sleep_for: str = ""
    sleep_s: float = 0.0
    event_key: str = ""
    scope: str | None = None
    since: datetime | None = None  # consider events pushed since (lookback)

    def describe(self) -> str:
        return f"sleep({self.sleep_for})" if self.kind == "SLEEP" else f"event({self.event_key})"


def wait_key(conditions: tuple[WaitCondition, ...]) -> bytes:
    """The idempotency key of a wait: its conditions without their (random) or-group ids
    (``createIdempotencyKey``)."""
    parts = sorted((c.expression, c.data_key, c.kind, c.sleep_for, c.event_key) for c in conditions)
    return _digest("WAIT_FOR", *("".join(p) for p in parts))


def run_key(workflow_name: str, input_json: str) -> bytes:
    return _digest("RUN", input_json, workflow_name)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("".join(parts).encode()).hexdigest().encode()


def describe_wait(conditions: tuple[WaitCondition, ...]) -> str:
    """As the engine describes a wait (``WaitData.ToReadableMessage``)."""
    groups: dict[str, list[WaitCondition]] = {}
    for condition in conditions:
        groups.setdefault(condition.group, []).append(condition)
    single = [g[0].describe() for g in groups.values() if len(g) == 1]
    multi = ["any of: " + ", ".join(c.describe() for c in g) for g in groups.values() if len(g) > 1]
    parts = single + multi
    return " and ".join(parts) if parts else "waiting"


@dataclass(eq=False, slots=True)
class Entry:
    kind: str  # WAIT_FOR | RUN | MEMO
    node: int
    branch: int
    key: bytes
    description: str
    satisfied: bool = False
    payload: bytes = b""
    order: int | None = None
    is_failure: bool = False
    error: str = ""
    child_run_id: str | None = None
    conditions: tuple[WaitCondition, ...] = ()
    met: dict[int, Any] = field(default_factory=dict)  # condition index -> its data
    started: float | None = None  # loop time the wait was first asked for
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class DurableLog:
    task_id: str
    invocation: int = 0
    latest_node: int = 0
    latest_branch: int = 1
    latest_order: int = 0
    branch_points: dict[int, tuple[int, int]] = field(
        default_factory=dict
    )  # next -> (node, parent)
    entries: dict[tuple[int, int], Entry] = field(default_factory=dict)
    spawned: dict[str, str] = field(default_factory=dict)  # spawn key -> child run id
    evicted: bool = False

    def branch_for(self, node: int) -> int:
        """The branch a node resolves to from the latest branch (``resolveBranchForNode``)."""
        branch = self.latest_branch
        while branch in self.branch_points:
            first, parent = self.branch_points[branch]
            if node >= first:
                return branch
            branch = parent
        return branch

    def on_active_path(self, entry: Entry) -> bool:
        return self.branch_for(entry.node) == entry.branch

    def next_node(self) -> tuple[int, int]:
        node = self.latest_node + 1
        return node, self.branch_for(node)


class NonDeterminism(Exception):  # noqa: N818 - the engine's name for it
    def __init__(self, task_id: str, node: int, branch: int, expected: str, received: str) -> None:
        self.node, self.branch = node, branch
        super().__init__(
            f"non-determinism error in task {task_id} at node {node}:{branch}"
            f"\n  expected: {expected}\n  received: {received}"
        )


class StaleInvocation(Exception):  # noqa: N818
    def __init__(self, task_id: str, current: int, sent: int) -> None:
        self.task_id, self.current, self.sent = task_id, current, sent
        super().__init__(
            f"invocation count mismatch for task {task_id}: "
            f"server has {current}, worker sent {sent}"
        )


@dataclass(frozen=True, slots=True)
class ChildTrigger:
    workflow_name: str
    input_json: str
    metadata: dict[str, Any]
    priority: int | None
    parent_run_id: str | None
    child_index: int | None
    child_key: str | None


Deliver = Callable[[DurableLog, Entry], None]


class DurableState:
    """The durable logs of one engine, and where their completions go."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.logs: dict[str, DurableLog] = {}
        self.deliverers: dict[str, Deliver] = {}  # task id -> its worker's durable stream
        self._watchers: set[asyncio.Task[None]] = set()

    # -- invocations -------------------------------------------------------------------

    def log(self, task_id: str) -> DurableLog:
        return self.logs.setdefault(task_id, DurableLog(task_id))

    def invocation_started(self, task: TaskRun) -> int:
        """A durable task was assigned: a new invocation replays from the log."""
        log = self.log(task.external_id)
        log.invocation += 1
        log.latest_node = 0
        log.evicted = False
        return log.invocation

    def _current(self, task_id: str, invocation: int) -> tuple[TaskRun, DurableLog]:
        task = self.engine.tasks.get(task_id)
        if task is None or not task.spec.durable:
            raise EngineError("NOT_FOUND", f"durable task {task_id!r} not found")
        log = self.log(task_id)
        if invocation != log.invocation:
            raise StaleInvocation(task_id, log.invocation, invocation)
        return task, log

    def is_evicted(self, task: TaskRun) -> bool:
        log = self.logs.get(task.external_id)
        return log is not None and log.evicted and not task.status.is_final

    # -- waits -------------------------------------------------------------------------

    def wait_for(
        self, task_id: str, invocation: int, conditions: tuple[WaitCondition, ...]
    ) -> tuple[DurableLog, Entry]:
        _task, log = self._current(task_id, invocation)
        node, branch = log.next_node()
        key = wait_key(conditions)
        entry = log.entries.get((node, branch))
        if entry is not None:
            if entry.key != key:
                raise NonDeterminism(
                    task_id, node, branch, entry.description, describe_wait(conditions)
                )
        else:
            entry = Entry("WAIT_FOR", node, branch, key, describe_wait(conditions))
            entry.conditions = conditions
            # a sleep runs from when it was first asked for, across invocations
            entry.started = asyncio.get_running_loop().time()
            log.entries[(node, branch)] = entry
        log.latest_node = max(log.latest_node, node)
        if not entry.satisfied:
            self._arm_sleep(log, entry)
            self._look_back(log, entry)
        return log, entry

    def _arm_sleep(self, log: DurableLog, entry: Entry) -> None:
        """Arm the timer of the next sleep not met yet (from when the wait was first asked)."""
        if entry.started is None or entry.timer is not None:
            return
        pending = [
            entry.started + c.sleep_s
            for i, c in enumerate(entry.conditions)
            if c.kind == "SLEEP" and i not in entry.met
        ]
        if pending:
            loop = asyncio.get_running_loop()
            entry.timer = loop.call_at(min(pending), self._sleep_done, log, entry)

    def _sleep_done(self, log: DurableLog, entry: Entry) -> None:
        entry.timer = None
        if entry.satisfied or entry.started is None:
            return
        now = asyncio.get_running_loop().time()
        for index, condition in enumerate(entry.conditions):
            if condition.kind == "SLEEP" and entry.started + condition.sleep_s <= now + 1e-3:
                entry.met[index] = {"sleep_duration": condition.sleep_for}
        self._resolve(log, entry)
        if not entry.satisfied:
            self._arm_sleep(log, entry)

    def _look_back(self, log: DurableLog, entry: Entry) -> None:
        """A user-event condition with a scope and a lookback is met by the newest event
        pushed since then with that key and scope (``handleEventLookback``)."""
        for index, condition in enumerate(entry.conditions):
            if (
                condition.kind != "USER_EVENT"
                or condition.since is None
                or condition.scope is None
                or index in entry.met
            ):
                continue
            for event in reversed(self.engine.events):
                if event.seen_at < condition.since:
                    break
                if (
                    event.key == condition.event_key
                    and event.scope == condition.scope
                    and _holds(condition, event.payload)
                ):
                    entry.met[index] = event.payload
                    break
        self._resolve(log, entry)

    def match_user_event(self, key: str, payload: dict[str, Any], scope: str) -> None:
        """A pushed event meets the waiting durable conditions it matches."""
        for log in list(self.logs.values()):
            for entry in list(log.entries.values()):
                if entry.kind != "WAIT_FOR" or entry.satisfied:
                    continue
                for index, condition in enumerate(entry.conditions):
                    if (
                        condition.kind == "USER_EVENT"
                        and condition.event_key == key
                        and (not condition.scope or condition.scope == scope)
                        and index not in entry.met
                        and _holds(condition, payload)
                    ):
                        entry.met[index] = payload
                self._resolve(log, entry)

    def _resolve(self, log: DurableLog, entry: Entry) -> None:
        """Satisfied when every or-group has a met condition; the payload is what met them,
        by action and readable data key."""
        if entry.satisfied or not entry.met:
            return
        groups: dict[str, bool] = {}
        for index, condition in enumerate(entry.conditions):
            groups[condition.group] = groups.get(condition.group, False) or index in entry.met
        if not all(groups.values()):
            return
        data: dict[str, dict[str, list[Any]]] = {}
        for index, value in entry.met.items():
            condition = entry.conditions[index]
            data.setdefault(condition.action, {}).setdefault(condition.data_key, []).append(value)
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        self._satisfy(log, entry, json.dumps(data).encode())

    def _satisfy(
        self, log: DurableLog, entry: Entry, payload: bytes, *, failure: str | None = None
    ) -> None:
        entry.satisfied = True
        entry.payload = payload
        entry.is_failure = failure is not None
        entry.error = failure or ""
        if entry.kind != "MEMO" and log.on_active_path(entry):
            log.latest_order += 1
            entry.order = log.latest_order
        self.deliver(log, entry)

    def deliver(self, log: DurableLog, entry: Entry) -> None:
        """Send a completion to the task's worker; an evicted task is queued again."""
        task = self.engine.tasks.get(log.task_id)
        if task is None or task.status.is_final:
            return
        if log.evicted:
            self.restore(log.task_id)
            return
        deliver = self.deliverers.get(log.task_id)
        if deliver is not None:
            deliver(log, entry)

    # -- memo --------------------------------------------------------------------------

    def memo(
        self, task_id: str, invocation: int, key: bytes, payload: bytes
    ) -> tuple[DurableLog, Entry, bool]:
        """The memo entry at the next node; whether it already existed."""
        _task, log = self._current(task_id, invocation)
        node, branch = log.next_node()
        entry = log.entries.get((node, branch))
        existed = entry is not None
        if entry is not None:
            if entry.key != key:
                raise NonDeterminism(task_id, node, branch, entry.description, "memo")
        else:
            entry = Entry("MEMO", node, branch, key, "memo")
            if payload:
                entry.satisfied, entry.payload = True, payload
            log.entries[(node, branch)] = entry
        log.latest_node = max(log.latest_node, node)
        return log, entry, existed

    def complete_memo(self, task_id: str, node: int, branch: int, payload: bytes) -> None:
        log = self.logs.get(task_id)
        entry = log.entries.get((node, branch)) if log is not None else None
        if entry is not None and entry.kind == "MEMO":
            entry.satisfied, entry.payload = True, payload

    # -- children ----------------------------------------------------------------------

    async def trigger_runs(
        self, task_id: str, invocation: int, triggers: list[ChildTrigger]
    ) -> tuple[DurableLog, list[tuple[Entry, str]]]:
        """Spawn (or find again) each child; the entry and child run id of each."""
        task, log = self._current(task_id, invocation)
        planned: list[tuple[ChildTrigger, Entry, str, bool]] = []  # ..., spawn it now
        node = log.latest_node
        for trigger in triggers:
            key = run_key(trigger.workflow_name, trigger.input_json)
            received = f"run({trigger.workflow_name})"
            spawn_key = self._spawn_key(task_id, trigger)
            existing = self._spawned_entry(log, spawn_key) if spawn_key else None
            if existing is None and spawn_key:  # claimed earlier in this same request
                existing = next((e for _, e, k, _ in planned if k == spawn_key), None)
            if existing is not None:  # a repeated spawn: the entry it already has
                if trigger.child_key is None and existing.key != key:
                    raise NonDeterminism(
                        task_id, existing.node, existing.branch, existing.description, received
                    )
                planned.append((trigger, existing, spawn_key, False))
                continue
            node += 1
            branch = log.branch_for(node)
            entry = log.entries.get((node, branch))
            if entry is not None:
                if entry.key != key:
                    raise NonDeterminism(task_id, node, branch, entry.description, received)
                planned.append((trigger, entry, spawn_key, False))
                continue
            entry = Entry("RUN", node, branch, key, received)
            log.entries[(node, branch)] = entry
            planned.append((trigger, entry, spawn_key, True))
        results: list[tuple[Entry, str]] = []
        for trigger, entry, spawn_key, spawn in planned:
            if spawn:
                run = await self._spawn(task, trigger, spawn_key)
                entry.child_run_id = run.run_id
                if spawn_key:
                    log.spawned[spawn_key] = run.run_id
                self._watch(log, entry, run)
            log.latest_node = max(log.latest_node, entry.node)
            results.append((entry, entry.child_run_id or ""))
        return log, results

    @staticmethod
    def _spawn_key(task_id: str, trigger: ChildTrigger) -> str:
        """(parent task, child key or index), as ``childSpawnKey`` in pkg/repository/ids.go."""
        if trigger.child_index is None:
            return ""
        child = trigger.child_key if trigger.child_key is not None else str(trigger.child_index)
        return f"{task_id}.0.{child}"

    @staticmethod
    def _spawned_entry(log: DurableLog, spawn_key: str) -> Entry | None:
        run_id = log.spawned.get(spawn_key)
        if run_id is None:
            return None
        for entry in log.entries.values():
            if entry.child_run_id == run_id and log.on_active_path(entry):
                return entry
        return None  # spawned on a branch left behind: spawned again

    async def _spawn(self, task: TaskRun, trigger: ChildTrigger, spawn_key: str) -> WorkflowRun:
        if spawn_key:  # a branch re-spawns: the engine's own dedupe must not return the old one
            self.engine._children.pop(
                (task.external_id, trigger.child_key or str(trigger.child_index)), None
            )
        try:
            input_ = json.loads(trigger.input_json) if trigger.input_json else {}
        except ValueError as error:
            raise EngineError("INVALID_ARGUMENT", f"child input is not JSON: {error}") from error
        return await self.engine.trigger(
            trigger.workflow_name,
            input_,
            trigger.metadata,
            priority=trigger.priority,
            parent_run_id=trigger.parent_run_id or task.run.run_id,
            parent_task_external_id=task.external_id,
            child_index=trigger.child_index,
            child_key=trigger.child_key,
        )

    def _watch(self, log: DurableLog, entry: Entry, run: WorkflowRun) -> None:
        async def watch() -> None:
            await run.done.wait()
            if not entry.satisfied:
                payload, failure = child_result(run)
                self._satisfy(log, entry, payload, failure=failure)

        watcher = asyncio.get_running_loop().create_task(watch())
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    # -- eviction, restore, branches ---------------------------------------------------

    def evict(self, task_id: str, invocation: int) -> None:
        """The worker evicts a waiting invocation: the task leaves its slot."""
        task = self.engine.tasks.get(task_id)
        log = self.logs.get(task_id)
        if task is None or log is None or invocation != log.invocation:
            return
        if task.status not in (Status.ASSIGNED, Status.RUNNING):
            return  # eviction skipped, the task already ended
        log.evicted = True
        self.engine._release(task)
        self.engine._dispatch()
        logger.info("durable task evicted", task=task_id, invocation=invocation)
        asked = [
            e
            for e in log.entries.values()
            if e.kind != "MEMO" and e.node <= log.latest_node and log.on_active_path(e)
        ]
        if all(e.satisfied for e in asked):  # its completion crossed the eviction
            self.restore(task_id)

    def restore(self, task_id: str) -> bool:
        """Queue an evicted task again; it replays from its log."""
        task = self.engine.tasks.get(task_id)
        log = self.logs.get(task_id)
        if task is None or log is None or not log.evicted or task.status.is_final:
            return False
        log.evicted = False
        self.engine._enqueue(task)
        self.engine._dispatch()
        return True

    def branch(self, task_id: str, node: int, branch: int) -> tuple[int, int]:
        """Start a new branch at ``node`` of ``branch`` (the next invocation replays up to
        it from the log and runs the rest anew); returns (node, new branch)."""
        log = self.logs.get(task_id)
        if log is None:
            raise EngineError("INVALID_ARGUMENT", f"task {task_id!r} has no durable event log")
        new_branch = log.latest_branch + 1
        log.branch_points[new_branch] = (node, branch)
        log.latest_branch = new_branch
        log.latest_node = 0
        log.latest_order = max(
            (
                e.order
                for e in log.entries.values()
                if e.order is not None and e.node < node and log.on_active_path(e)
            ),
            default=0,
        )
        return node, new_branch

    def waiting_completions(
        self, task_id: str, invocation: int, keys: list[tuple[int, int]]
    ) -> list[Entry]:
        log = self.logs.get(task_id)
        if log is None or invocation != log.invocation:
            return []
        return [e for k in keys if (e := log.entries.get(k)) is not None and e.satisfied]


def child_result(run: WorkflowRun) -> tuple[bytes, str | None]:
    """A finished child's result for its parent's log: a standalone task's output itself,
    a DAG's outputs by task name; a failure's error (``ExtractOutputFromMatchData``,
    ``ExtractFailureFromMatchData`` in pkg/repository/output.go)."""
    if run.status is Status.COMPLETED:
        if len(run.tasks) == 1:
            (only,) = run.tasks.values()
            return (only.output or "").encode(), None
        return json.dumps(run.output).encode(), None
    if run.failures:
        return b"", run.failures[0].error or ""
    return b"", TASK_CANCELLED


def _holds(condition: WaitCondition, payload: dict[str, Any]) -> bool:
    if not condition.expression:
        return True
    try:
        return expressions.evaluate(condition.expression, {"input": payload}) is True
    except EngineError as error:
        logger.warning("durable wait expression failed", error=str(error))
        return False


_STATES: weakref.WeakKeyDictionary[Engine, DurableState] = weakref.WeakKeyDictionary()


def state_for(engine: Engine) -> DurableState:
    state = _STATES.get(engine)
    if state is None:
        state = _STATES[engine] = DurableState(engine)
    return state
