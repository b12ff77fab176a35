"""Concurrency limits as Hatchet has them: each limit is a CEL key over the run's
input and metadata, and at most ``max_runs`` holders per key value hold a slot.

A holder is a run (a workflow-level limit: the slot is held until the run ends)
or a task (a task-level limit: held until the task ends, through its retries).
The strategies (pkg/scheduling/v1/concurrency/ strategy.go, sub_queue.go and their
tests, pkg/repository/scheduler_concurrency.go in Hatchet's engine):

- GROUP_ROUND_ROBIN: a holder over the limit waits for a slot of its key, in
  arrival order;
- CANCEL_IN_PROGRESS: a newcomer takes a slot, and the oldest holders of its key
  over the limit are cancelled;
- CANCEL_NEWEST: a newcomer over the limit is cancelled;
- CANCEL_QUEUED_EXCEPT_NEWEST: free slots go to the oldest waiting, then of those
  still waiting only the newest ``max_runs`` are kept, the older are cancelled;
  nothing running is ever cancelled;
- CANCEL_QUEUED_EXCEPT_OLDEST: the same, keeping the oldest ``max_runs`` waiting.

Cancellations carry the engine's reason, ``CANCELLED_BY_CONCURRENCY_LIMIT``.

``CreateConcurrencyOpts.LimitStrategy`` in pkg/repository/workflow.go validates
``oneof`` these five, so ``PutWorkflow`` (internal/services/admin/v1/server.go) refuses
the proto's deprecated DROP_NEWEST and QUEUE_NEWEST with INVALID_ARGUMENT and
pkg/validator's "Validation failed with the following errors" text.

A ``max_runs_expression`` (CEL over the same variables as the key) gives each holder
its own value when it is created; a key's limit is the value of its most recently
created holder (``observeMaxRuns`` in sub_queue.go; dynamic_max_runs_test.go): a raised
limit fills at once, a lowered one lets GROUP_ROUND_ROBIN's running holders finish and
makes CANCEL_IN_PROGRESS cancel the oldest over it. 0 holds the key until a newer
holder raises it; a non-integer, a negative value or a failing expression is the
key's failure (``evalMaxRunsExpression`` in pkg/repository).

A tenant-scoped limit (``is_tenant_scoped`` with a ``name``) is one limit for the
tenant: every holder declaring that name, in any workflow, shares its keys, and the
latest registration defines its strategy and ``max_runs`` in place
(``upsertTenantConcurrencyStrategy`` in pkg/repository/workflow.go). Registration
refuses, as ``PutWorkflowVersion`` there does (a plain error: gRPC UNKNOWN), a step
naming one twice, a workflow-level one on a workflow of several tasks (the emulator
has no DAG operator), and chains that order two tenant-scoped names inconsistently
across the tenant's workflows (``checkTenantConcurrencyOrdering``: a cycle could
deadlock holders that keep one slot while waiting for the next).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from . import expressions
from .errors import EngineError

CANCELLED_BY_CONCURRENCY_LIMIT = "CANCELLED_BY_CONCURRENCY_LIMIT"
# the engine's validation order, as its error lists them
STRATEGIES = (
    "CANCEL_IN_PROGRESS",
    "GROUP_ROUND_ROBIN",
    "CANCEL_NEWEST",
    "CANCEL_QUEUED_EXCEPT_NEWEST",
    "CANCEL_QUEUED_EXCEPT_OLDEST",
)
_CANCEL_QUEUED = ("CANCEL_QUEUED_EXCEPT_NEWEST", "CANCEL_QUEUED_EXCEPT_OLDEST")


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    expression: str
    max_runs: int
    strategy: str
    max_runs_expression: str = ""
    name: str = ""
    tenant_scoped: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise EngineError("INVALID_ARGUMENT", strategy_refusal(self.strategy))
        # an evaluated max_runs_expression may be 0; a static max_runs may not
        if self.max_runs < (0 if self.max_runs_expression else 1):
            raise EngineError("INVALID_ARGUMENT", "a concurrency limit needs max_runs >= 1")
        if self.tenant_scoped and not self.name.strip():
            raise EngineError(
                "INVALID_ARGUMENT", "tenant-scoped concurrency entries require a name"
            )
        expressions.check(self.expression)
        if self.max_runs_expression:
            expressions.check(self.max_runs_expression)

    def evaluated(self, variables: dict[str, Any]) -> ConcurrencyLimit:
        """This limit as one holder sees it: its max-runs expression evaluated."""
        if not self.max_runs_expression:
            return self
        value = expressions.evaluate(self.max_runs_expression, variables)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise EngineError(
                "INVALID_ARGUMENT",
                f"max_runs expression {self.max_runs_expression!r} gave {value!r}, "
                "not a non-negative integer",
            )
        return dataclasses.replace(self, max_runs=value)


def strategy_refusal(strategy: str) -> str:
    """The engine's validation error for a strategy outside its ``oneof``."""
    return (
        "Validation failed with the following errors:\n"
        "0: validation failed on field 'CreateConcurrencyOpts.LimitStrategy': "
        f"on condition 'oneof' [ {' '.join(STRATEGIES)} ]: got {strategy}\n"
    )


def check_tenant_chains(
    workflow: str,
    workflow_limits: tuple[ConcurrencyLimit, ...],
    task_limits: dict[str, tuple[ConcurrencyLimit, ...]],
    others: list[list[str]],
) -> None:
    """Refuse what registration refuses of tenant-scoped limits; ``others`` are the chains
    (tenant-scoped names in order) of the tenant's other workflows' tasks."""
    if len(task_limits) > 1:
        for limit in workflow_limits:
            if limit.tenant_scoped:
                raise EngineError(
                    "UNKNOWN",
                    f"tenant-scoped concurrency (name {limit.name}) is not supported at the "
                    "workflow level unless the workflow is a single task or uses the DAG "
                    "operator",
                )
    edges: dict[str, dict[str, str]] = defaultdict(dict)  # a -> b -> the chain ordering them
    for label, names in [
        *(
            (f"task {task} of workflow {workflow}", tenant_chain(limits))
            for task, limits in task_limits.items()
        ),
        *((f"a step of workflow {index}", names) for index, names in enumerate(others)),
    ]:
        if len(set(names)) < len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise EngineError(
                "UNKNOWN",
                f"tenant-scoped concurrency strategy {twice} is referenced more than once "
                f"by {label}",
            )
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                edges[first].setdefault(second, label)
    cycle = _cycle(edges)
    if cycle is not None:
        first, second = cycle
        raise EngineError(
            "UNKNOWN",
            f"tenant-scoped concurrency strategies {first} and {second} are ordered "
            f"inconsistently across concurrency chains ({edges[first][second]} orders {first} "
            f"before {second}, which conflicts with the ordering elsewhere); chains sharing "
            "tenant-scoped strategies must order them consistently to avoid deadlocks",
        )


def tenant_chain(limits: tuple[ConcurrencyLimit, ...]) -> list[str]:
    return [limit.name for limit in limits if limit.tenant_scoped]


def _cycle(edges: dict[str, dict[str, str]]) -> tuple[str, str] | None:
    """An edge closing a cycle of the precedence graph, if it has one."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str) -> tuple[str, str] | None:
        state[node] = 1
        for successor in edges.get(node, {}):
            if state.get(successor) == 1:
                return node, successor
            if successor not in state and (found := visit(successor)) is not None:
                return found
        state[node] = 2
        return None

    for node in list(edges):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


class Holder(Protocol):
    """A run or a task: what takes a slot."""

    slots: tuple[tuple[str, ConcurrencyLimit], ...]
    admitted: bool
    arrival: int  # 0 until it first arrives; kept through replays, as the engine's timestamp


class Limiter:
    def __init__(self) -> None:
        self._held: defaultdict[str, list[Holder]] = defaultdict(list)  # slot key -> holders
        self._waiting: list[Holder] = []
        # key -> (its newest holder's evaluated max_runs, that holder's arrival)
        self._observed: dict[str, tuple[int, int]] = {}
        self._arrivals = itertools.count(1)
        self._tenant: dict[str, ConcurrencyLimit] = {}  # tenant-scoped limits by name

    @staticmethod
    def keys(
        scope: str, limits: tuple[ConcurrencyLimit, ...], variables: dict[str, Any]
    ) -> tuple[tuple[str, ConcurrencyLimit], ...]:
        """Each limit's slot key: the scope (the tenant's, for a tenant-scoped limit),
        which limit, and the expression's value; with the limit as this holder sees it."""
        slots = []
        for index, limit in enumerate(limits):
            value = expressions.evaluate(limit.expression, variables)
            prefix = f"tenant:{limit.name}" if limit.tenant_scoped else f"{scope}#{index}"
            slots.append((f"{prefix}={value!r}", limit.evaluated(variables)))
        return tuple(slots)

    def define(self, limits: Iterable[ConcurrencyLimit]) -> None:
        """A registration's tenant-scoped limits replace the definitions of their names."""
        for limit in limits:
            if limit.tenant_scoped:
                self._tenant[limit.name] = limit

    def _rule(self, key: str, limit: ConcurrencyLimit) -> tuple[str, int]:
        """A key's strategy and limit now: a tenant-scoped name's latest definition, and a
        max-runs expression's newest observation."""
        current = self._tenant.get(limit.name, limit) if limit.tenant_scoped else limit
        if current.max_runs_expression and key in self._observed:
            return current.strategy, self._observed[key][0]
        return current.strategy, current.max_runs

    def arrive(self, holder: Holder) -> list[Holder]:
        """Queue a newcomer; returns the holders its strategies cancel (maybe itself)."""
        if not holder.arrival:
            holder.arrival = next(self._arrivals)
        for key, limit in holder.slots:
            # a replayed older holder does not regress the limit a newer one set
            if limit.max_runs_expression and holder.arrival >= self._observed.get(key, (0, 0))[1]:
                self._observed[key] = (limit.max_runs, holder.arrival)
        rules = [(key, *self._rule(key, limit)) for key, limit in holder.slots]
        for key, strategy, max_runs in rules:
            if strategy == "CANCEL_NEWEST" and len(self._held[key]) >= max_runs:
                return [holder]
        victims: list[Holder] = []
        for key, strategy, max_runs in rules:
            waiting = [h for h in self._waiting if _holds(h, key)]
            if strategy == "CANCEL_IN_PROGRESS":
                rivals = self._held[key] + waiting
                excess = len(rivals) + 1 - max_runs
                victims += [rival for rival in rivals[: max(excess, 0)] if rival not in victims]
            elif strategy in _CANCEL_QUEUED:
                # the oldest fill the free slots; the rest stay queued only up to max_runs
                queued = [*waiting, holder][max(max_runs - len(self._held[key]), 0) :]
                cancelled = (
                    queued[: max(len(queued) - max_runs, 0)]
                    if strategy == "CANCEL_QUEUED_EXCEPT_NEWEST"
                    else queued[max_runs:]
                )
                victims += [h for h in cancelled if h not in victims]
        self._waiting.append(holder)
        return victims

    def admit(self) -> list[Holder]:
        """Give slots to the waiting holders whose every key has room, in arrival order."""
        admitted: list[Holder] = []
        for holder in list(self._waiting):
            if all(len(self._held[key]) < self._rule(key, limit)[1] for key, limit in holder.slots):
                for key, _ in holder.slots:
                    self._held[key].append(holder)
                holder.admitted = True
                self._waiting.remove(holder)
                admitted.append(holder)
        return admitted

    def release(self, holder: Holder) -> None:
        if holder in self._waiting:
            self._waiting.remove(holder)
        for key, _ in holder.slots:
            if holder in self._held[key]:
                self._held[key].remove(holder)
                if not self._held[key]:
                    del self._held[key]
            if key not in self._held and not any(_holds(h, key) for h in self._waiting):
                self._observed.pop(key, None)  # as the engine prunes an empty sub-queue


def _holds(holder: Holder, key: str) -> bool:
    return any(slot_key == key for slot_key, _ in holder.slots)
