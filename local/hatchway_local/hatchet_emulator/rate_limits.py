"""Rate limits as Hatchet's engine has them: a tenant's keys, each a fixed window of
``limit`` units, that a task consumes when it is assigned.

What the real engine does, and this module with it:

- a key is a row of the tenant (limit, window, units left, last refill).
  ``hatchet.rate_limits.put(key, limit, duration)`` (gRPC ``PutRateLimit``) upserts it:
  a new key starts full; an existing one takes the new limit and window and keeps its
  units left, capped at the new limit (``PutRateLimit`` in internal/services/admin/
  server.go, ``UpsertRateLimit`` in pkg/repository/sqlcv1/rate_limits.sql);
- the window is fixed, not sliding: once ``window - 10ms`` has passed since the last
  refill, the key is full again and that moment is its new last refill
  (``get_refill_value`` in the v1_0_6 migration, ``BulkUpdateRateLimits`` and
  ``ListRateLimitsForTenantWithMutate`` in rate_limits.sql). Windows are Postgres
  intervals compared as Postgres does: a MONTH is 30 days, a YEAR 360;
- a task declares keys and the units it consumes of each. Without any expression the
  key is static (``StepRateLimit``); with one (a dynamic key, CEL units or a limit --
  hatchet-sdk always sends a limit, ``-1`` when none is given) every part becomes an
  expression over ``input``, ``additional_metadata`` and ``workflow_run_id`` (the
  task's id), evaluated once when the task is created. An expression that fails or
  gives the wrong type (key and window: string; units and limit: int, a double is
  truncated) creates the task FAILED, "failed to parse step expression (...): ..."
  (pkg/repository/workflow.go, ``CheckStepRunOutAgainstKnownV1`` in internal/cel/
  cel.go, the task creation in pkg/repository/task.go);
- each scheduling pass upserts the dynamic keys of the queued tasks: per key, the
  lowest limit (a limit of 0 is overridden by the next task's) and the longest window
  among them; a limit below 0 (the SDK's "none") upserts nothing, so such a key must
  have been put, while a key with no limit expression at all upserts a limit of 0
  (``GetTaskRateLimits`` in pkg/repository/scheduler_queue.go);
- when the scheduler picks a task, every key must have the units left, else the task
  stays queued -- it neither fails nor blocks the tasks behind it -- with a
  REQUEUED_RATE_LIMIT event "Rate limit exceeded for key K, attempting to consume U
  units, but only had V remaining", and is tried again once the window refills. A key
  that does not exist (never put) holds the task the same way, with the engine's empty
  key and zeros. Units are reserved before a worker is sought and given back if none
  is free, so only an assignment (or a batch task's move to its batch) consumes them;
  they are never returned when the task ends, and each retry consumes again
  (``rateLimiter.use`` in pkg/scheduling/v1/rate_limit.go, ``tryAssignBatch`` in
  scheduler.go, ``MoveRateLimitedQueueItems`` / ``RequeueRateLimitedQueueItems`` in
  pkg/repository/sqlcv1/queue.sql);
- nothing fails a task whose units exceed the key's limit: it waits like any other
  until its schedule timeout cancels it (SCHEDULING_TIMED_OUT);
- the REST list (``hatchet.rate_limits.list``) shows each key with its units left as
  of now, a lapsed window shown full (``ListRateLimitsForTenantNoMutate``;
  api/v1/server/handlers/rate-limits/list.go for paging and order).

The engine refreshes its in-memory copy of the keys at most every 500 ms; here the
keys are exact, so a task may start up to that much sooner than on the engine.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hatchway.observability import logger

from . import engine as core  # a cycle: engine.py imports this module; names are read at call time
from . import expressions
from .errors import EngineError

_DAY = 86400.0
WINDOWS: dict[str, float] = {
    "SECOND": 1.0,
    "MINUTE": 60.0,
    "HOUR": 3600.0,
    "DAY": _DAY,
    "WEEK": 7 * _DAY,
    "MONTH": 30 * _DAY,  # how Postgres compares '1 month' to an elapsed interval
    "YEAR": 360 * _DAY,
}
_REFILL_EARLY = timedelta(milliseconds=10)  # the engine refills 10 ms before the window ends
_WINDOW_ORDER = list(WINDOWS)
_ORDER_FIELDS = frozenset({"key", "value", "limitValue"})


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """One ``CreateTaskRateLimit`` of a task, as registered."""

    key: str
    units: int | None = None
    key_expr: str | None = None
    units_expr: str | None = None
    limit_expr: str | None = None
    duration: str | None = None  # SECOND .. YEAR

    def __post_init__(self) -> None:
        # the engine's validation of CreateWorkflowStepRateLimitOpts, at registration
        if not self.key:
            raise EngineError("INVALID_ARGUMENT", "a rate limit needs a key")
        if self.units is None and self.units_expr is None:
            raise EngineError("INVALID_ARGUMENT", f"rate limit {self.key!r} needs units")
        for expression in (self.key_expr, self.units_expr, self.limit_expr):
            if expression is not None:
                expressions.check(expression)

    @property
    def dynamic(self) -> bool:
        return any(e is not None for e in (self.key_expr, self.units_expr, self.limit_expr))

    @property
    def window(self) -> str:
        return self.duration if self.duration in WINDOWS else "MINUTE"


@dataclass(slots=True)
class Bucket:
    """One key of the tenant (a ``RateLimit`` row)."""

    key: str
    limit: int
    window: str  # SECOND .. YEAR
    value: int
    last_refill: datetime

    @property
    def next_refill(self) -> datetime:
        return self.last_refill + timedelta(seconds=WINDOWS[self.window]) - _REFILL_EARLY

    def refill(self, now: datetime) -> None:
        if now >= self.next_refill:
            self.value = self.limit
            self.last_refill = now


@dataclass(frozen=True, slots=True)
class _Dynamic:
    key: str
    units: int
    limit: int | None
    window: str


class _EvaluationError(Exception):
    pass


_CEL_TYPES = {bool: "bool", list: "list", dict: "map", type(None): "null_type"}


def _evaluate(expression: str, variables: dict[str, Any], kind: str, want: type) -> str | int:
    """``ParseAndEvalStepRun`` then the type check of the expression's kind."""
    try:
        value = expressions.evaluate(expression, variables)
    except EngineError as error:
        raise _EvaluationError(f"failed to parse step expression ({expression}): {error}") from None
    if isinstance(value, float):
        if not math.isfinite(value):  # int() would raise out of the scheduler
            raise _EvaluationError(
                f"failed to parse step expression ({expression}): {value} is not a finite number"
            )
        value = int(value)
    elif not isinstance(value, str | int) or isinstance(value, bool):
        got = _CEL_TYPES.get(type(value), type(value).__name__)
        raise _EvaluationError(
            f"failed to parse step expression ({expression}): "
            f"output must evaluate to a string or integer: got {got}"
        )
    if not isinstance(value, want):
        got = "int" if isinstance(value, int) else "string"
        expected = "string" if want is str else "int"
        raise _EvaluationError(
            f"failed to parse step expression ({expression}): "
            f"expected {expected} output for dynamic rate limit {kind}, got {got}"
        )
    return value


def _string(expression: str, variables: dict[str, Any], kind: str) -> str:
    return str(_evaluate(expression, variables, kind, str))


def _integer(expression: str, variables: dict[str, Any], kind: str) -> int:
    return int(_evaluate(expression, variables, kind, int))


class RateLimits:
    """The tenant's keys and what each queued task needs of them."""

    def __init__(self, engine: core.Engine) -> None:
        self._engine = engine
        self.buckets: dict[str, Bucket] = {}
        self._units: dict[str, dict[str, int]] = {}  # task id -> key -> units
        self._dynamic: dict[str, list[_Dynamic]] = {}  # task id -> its evaluated limits
        self._requeued: set[tuple[str, int]] = set()  # (task, attempt) told it waits
        self._reserved: Counter[str] = Counter()  # key -> units reserved in this pass
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- keys ----------------------------------------------------------------------

    def put(self, key: str, limit: int, window: str, now: datetime) -> None:
        """``PutRateLimit``: upsert the key; queued tasks may now fit."""
        if not key:
            raise EngineError("INVALID_ARGUMENT", "key is required")
        self._upsert(key, limit, window, now)
        self._engine._dispatch()

    def _upsert(self, key: str, limit: int, window: str, now: datetime) -> None:
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = Bucket(key, limit, window, limit, now)
            return
        bucket.limit = limit
        bucket.window = window
        bucket.value = min(bucket.value, limit)

    # -- tasks ---------------------------------------------------------------------

    def evaluate(self, task: core.TaskRun) -> bool:
        """A task being created: its keys and units, or it fails for good (False)."""
        run = task.run
        variables = {
            "input": run.input,
            "additional_metadata": run.additional_metadata,
            "workflow_run_id": task.external_id,  # the engine passes the task's id
        }
        units: dict[str, int] = {}
        dynamic: list[_Dynamic] = []
        try:
            for spec in task.spec.rate_limits:
                if not spec.dynamic:
                    units[spec.key] = spec.units if spec.units is not None else 1
                    continue
                key = spec.key
                if spec.key_expr is not None:
                    key = _string(spec.key_expr, variables, "key")
                limit = None
                if spec.limit_expr is not None:
                    limit = _integer(spec.limit_expr, variables, "value")
                if spec.units_expr is not None:
                    count = _integer(spec.units_expr, variables, "units")
                else:
                    count = spec.units if spec.units is not None else 0
                units[key] = count
                dynamic.append(_Dynamic(key, count, limit, spec.window))
        except _EvaluationError as error:
            task.status = core.Status.ASSIGNED  # an attempt that cannot start: it fails for good
            self._engine._end_attempt(task, core.Status.FAILED, str(error), retryable=False)
            return False
        self._units[task.external_id] = units
        if dynamic:
            self._dynamic[task.external_id] = dynamic
        return True

    def prepare(self, queued: list[core.TaskRun], now: datetime) -> None:
        """A scheduling pass begins: upsert the dynamic keys the queued tasks declare."""
        self._reserved.clear()  # the engine gives back unused reservations after each pass
        limits: dict[str, int] = {}
        windows: dict[str, str] = {}
        for task in queued:
            if task.status is not core.Status.QUEUED:
                continue
            for item in self._dynamic.get(task.external_id, ()):
                # differing windows: the longest wins
                windows[item.key] = max(
                    windows.get(item.key, item.window), item.window, key=_WINDOW_ORDER.index
                )
                # the engine folds from 0 (so a key without a limit upserts 0): a 0 is
                # replaced by the next limit, then the lowest wins
                current = limits.setdefault(item.key, 0)
                if item.limit is not None:
                    limits[item.key] = item.limit if current == 0 else min(current, item.limit)
        for key, limit in limits.items():
            if limit >= 0:
                self._upsert(key, limit, windows[key], now)

    def admits(self, task: core.TaskRun, now: datetime) -> bool:
        """Whether every key of the task has its units left now; if so they are reserved
        for this pass, as the engine reserves them before it seeks a worker."""
        units = self._units.get(task.external_id)
        if not units:
            return True
        if any(key not in self.buckets for key in units):
            self._held(task, now)  # the engine's zero result for a key it lacks
            return False
        for key, count in units.items():
            bucket = self.buckets[key]
            bucket.refill(now)
            if bucket.value - self._reserved[key] < count:
                self._held(
                    task,
                    now,
                    key=key,
                    units=count,
                    left=bucket.value - self._reserved[key],
                    refill=bucket.next_refill,
                )
                return False
        self._reserved.update(units)
        return True

    def consume(self, task: core.TaskRun) -> None:
        """The task was assigned (or moved to its batch): it takes its units."""
        for key, count in self._units.get(task.external_id, {}).items():
            self.buckets[key].value -= count
            self._reserved[key] -= count
        self._requeued.discard((task.external_id, task.retry_count))

    def _held(
        self,
        task: core.TaskRun,
        now: datetime,
        *,
        key: str = "",
        units: int = 0,
        left: int = 0,
        refill: datetime | None = None,
    ) -> None:
        attempt = (task.external_id, task.retry_count)
        if attempt not in self._requeued:  # the engine says so on each pass; once is enough
            self._requeued.add(attempt)
            message = (
                f"Rate limit exceeded for key {key}, attempting to consume {units} units, "
                f"but only had {left} remaining"
            )
            logger.debug("task held by a rate limit", task=task.external_id, key=key)
            self._engine._record(task, "REQUEUED_RATE_LIMIT", message=message)
        if refill is not None:
            self._wake(max((refill - now).total_seconds(), 0.0))

    def _wake(self, delay_s: float) -> None:
        """Try the queue again when the earliest awaited window refills."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_s
        if self._timer is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._woken)

    def _woken(self) -> None:
        self._timer = None
        self._engine._dispatch()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- REST ------------------------------------------------------------------------

    def list(
        self,
        now: datetime,
        *,
        search: str | None,
        order_by: str | None,
        direction: str | None,
        offset: int,
        limit: int,
    ) -> dict[str, Any]:
        """The ``RateLimitList`` of ``hatchet.rate_limits.list``."""
        column = order_by if order_by in _ORDER_FIELDS else "key"
        buckets = sorted(self.buckets.values(), key=lambda b: b.key)  # the tie-break: key ASC
        rows: list[dict[str, Any]] = []
        for bucket in buckets:
            if search and search not in bucket.key:
                continue
            lapsed = now - bucket.last_refill >= timedelta(seconds=WINDOWS[bucket.window])
            rows.append(
                {
                    "key": bucket.key,
                    "tenantId": self._engine.tenant_id,
                    "limitValue": bucket.limit,
                    "value": bucket.limit if lapsed else bucket.value,
                    "window": f"1 {bucket.window}",
                    "lastRefill": (now if lapsed else bucket.last_refill).isoformat(),
                }
            )
        rows.sort(key=lambda row: row[column], reverse=(direction or "asc").lower() == "desc")
        limit = limit or 50
        pages = math.ceil(len(rows) / limit)
        current = 1 + math.ceil(offset / limit)
        return {
            "rows": rows[offset : offset + limit],
            "pagination": {
                "current_page": current,
                "next_page": current if current == pages else current + 1,
                "num_pages": pages,
            },
        }
