"""Cron triggers and scheduled runs, as Hatchet's ticker starts them.

- A workflow's ``cron_triggers`` are its declarative crons (method ``DEFAULT``, input
  ``cron_input``); registering a new version replaces them. Crons made over REST are
  ``API`` crons, kept across versions.
- At each fire time the cron triggers its workflow with its input and its metadata plus
  ``hatchet__cron_expression``, ``hatchet__cron_scheduled_at`` (RFC 3339, the fire time)
  and ``hatchet__cron_name`` when it has a name (``RunCronWorkflow`` in
  internal/services/ticker/cron_v1.go); triggering a cron by hand does the same with
  the present time (api/v1/server/handlers/workflows/trigger_cron.go). A disabled cron
  does not fire.
- A scheduled run is triggered once at its time with its input and metadata
  (internal/services/ticker/schedule_workflow_v1.go); the run's id, status and creation
  time show on the schedule from then on.

Expressions are the standard five fields, or six with a leading seconds field, as the
engine's gocron takes them (``gocron.CronJob(cron, true)`` in internal/services/ticker/
cron.go); cronsim computes the fire times, in UTC.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cronsim import CronSim, CronSimError

from hatchway.observability import logger

from .engine import utcnow
from .errors import EngineError

if TYPE_CHECKING:
    from .engine import Engine, WorkflowRun

CRON_EXPRESSION_KEY = "hatchet__cron_expression"
CRON_NAME_KEY = "hatchet__cron_name"
CRON_SCHEDULED_AT_KEY = "hatchet__cron_scheduled_at"


def check_cron(expression: str) -> None:
    """Refuse what this emulator cannot schedule as the engine would."""
    if len(expression.split()) not in (5, 6):  # gocron with seconds: a leading seconds field
        raise EngineError(
            "INVALID_ARGUMENT",
            f"cron expression {expression!r}: five fields (minute hour day month weekday), "
            "or six with a leading seconds field",
        )
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as error:
        raise EngineError("INVALID_ARGUMENT", f"invalid cron expression {expression!r}") from error


@dataclass(eq=False, slots=True)
class Cron:
    workflow: str
    expression: str
    input: dict[str, Any]
    additional_metadata: dict[str, Any]
    name: str | None = None
    method: str = "API"  # DEFAULT: declared by the workflow
    priority: int | None = None
    enabled: bool = True
    cron_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=utcnow)
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class Scheduled:
    workflow: str
    trigger_at: datetime
    input: dict[str, Any]
    additional_metadata: dict[str, Any]
    method: str = "API"
    priority: int | None = None
    schedule_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=utcnow)
    run_id: str | None = None
    timer: asyncio.TimerHandle | None = None
    held: bool = False  # its time came while its workflow was paused with DROP


class Schedules:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.crons: dict[str, Cron] = {}
        self.scheduled: dict[str, Scheduled] = {}
        # a paused workflow that drops its crons' or its schedules' runs while paused
        self.dropping_crons: set[str] = set()
        self.holding_schedules: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- crons -------------------------------------------------------------------------

    def declare(self, workflow: str, expressions: list[str], cron_input: dict[str, Any]) -> None:
        """A new version's declarative crons replace the previous version's."""
        for expression in expressions:
            check_cron(expression)
        for cron in [c for c in self.crons.values() if c.workflow == workflow]:
            if cron.method == "DEFAULT":
                self.delete_cron(cron.cron_id)
        for expression in expressions:
            self._add(Cron(workflow, expression, dict(cron_input), {}, method="DEFAULT"))

    def create_cron(  # noqa: PLR0917 - a cron's fields, as the REST body has them
        self,
        workflow: str,
        expression: str,
        input_: dict[str, Any],
        additional_metadata: dict[str, Any],
        name: str | None,
        priority: int | None,
    ) -> Cron:
        self._known(workflow)
        check_cron(expression)
        cron = Cron(workflow, expression, input_, additional_metadata, name, priority=priority)
        return self._add(cron)

    def _add(self, cron: Cron) -> Cron:
        self.crons[cron.cron_id] = cron
        self._arm(cron)
        return cron

    def get_cron(self, cron_id: str) -> Cron:
        cron = self.crons.get(cron_id)
        if cron is None:
            raise EngineError("NOT_FOUND", f"cron {cron_id!r} not found")
        return cron

    def delete_cron(self, cron_id: str) -> Cron:
        cron = self.get_cron(cron_id)
        del self.crons[cron_id]
        if cron.timer is not None:
            cron.timer.cancel()
        return cron

    def set_enabled(self, cron_id: str, *, enabled: bool) -> Cron:
        cron = self.get_cron(cron_id)
        cron.enabled = enabled
        return cron

    def _arm(self, cron: Cron, after: datetime | None = None) -> None:
        """Time the next fire: after ``after`` (the fire just done), so a timer that wakes
        a moment early cannot fire the same second twice."""
        now = utcnow()
        start = max(now, after) if after is not None else now
        fire_at = next(CronSim(cron.expression, start.replace(microsecond=0)))
        loop = asyncio.get_running_loop()
        cron.timer = loop.call_later(
            max((fire_at - now).total_seconds(), 0.0), self._fire_cron, cron, fire_at
        )

    def _fire_cron(self, cron: Cron, fire_at: datetime) -> None:
        if self.crons.get(cron.cron_id) is not cron:
            return
        self._arm(cron, after=fire_at)
        if cron.enabled and not self._paused(cron.workflow, self.dropping_crons):
            self._spawn(self.trigger_cron(cron, fire_at))

    async def trigger_cron(self, cron: Cron, at: datetime | None = None) -> WorkflowRun:
        metadata = dict(cron.additional_metadata)
        metadata[CRON_EXPRESSION_KEY] = cron.expression
        metadata[CRON_SCHEDULED_AT_KEY] = (at or utcnow()).strftime("%Y-%m-%dT%H:%M:%SZ")
        if cron.name is not None:
            metadata[CRON_NAME_KEY] = cron.name
        return await self.engine.trigger(
            cron.workflow, dict(cron.input), metadata, priority=cron.priority
        )

    # -- scheduled runs ------------------------------------------------------------------

    def schedule(
        self,
        workflow: str,
        trigger_at: datetime,
        input_: dict[str, Any],
        additional_metadata: dict[str, Any],
        priority: int | None = None,
    ) -> Scheduled:
        self._known(workflow)
        scheduled = Scheduled(workflow, trigger_at, input_, additional_metadata, priority=priority)
        self.scheduled[scheduled.schedule_id] = scheduled
        self._arm_scheduled(scheduled)
        return scheduled

    def get_scheduled(self, schedule_id: str) -> Scheduled:
        scheduled = self.scheduled.get(schedule_id)
        if scheduled is None:
            raise EngineError("NOT_FOUND", f"scheduled run {schedule_id!r} not found")
        return scheduled

    def delete_scheduled(self, schedule_id: str) -> Scheduled:
        scheduled = self.get_scheduled(schedule_id)
        del self.scheduled[schedule_id]
        if scheduled.timer is not None:
            scheduled.timer.cancel()
        return scheduled

    def reschedule(self, schedule_id: str, trigger_at: datetime) -> Scheduled:
        scheduled = self.get_scheduled(schedule_id)
        if scheduled.run_id is not None:
            raise EngineError("INVALID_ARGUMENT", "the scheduled run has already been triggered")
        if scheduled.timer is not None:
            scheduled.timer.cancel()
        scheduled.trigger_at = trigger_at
        self._arm_scheduled(scheduled)
        return scheduled

    def _arm_scheduled(self, scheduled: Scheduled) -> None:
        delay = (scheduled.trigger_at - utcnow()).total_seconds()
        loop = asyncio.get_running_loop()
        scheduled.timer = loop.call_later(max(delay, 0.0), self._fire_scheduled, scheduled)

    def _fire_scheduled(self, scheduled: Scheduled) -> None:
        scheduled.timer = None
        if self._paused(scheduled.workflow, self.holding_schedules):
            scheduled.held = True  # the ticker skips it while paused, takes it after (resume)
            return
        if self.scheduled.get(scheduled.schedule_id) is scheduled and scheduled.run_id is None:
            self._spawn(self.trigger_scheduled(scheduled))

    async def trigger_scheduled(self, scheduled: Scheduled) -> WorkflowRun:
        run = await self.engine.trigger(
            scheduled.workflow,
            dict(scheduled.input),
            dict(scheduled.additional_metadata),
            priority=scheduled.priority,
        )
        scheduled.run_id = run.run_id
        return run

    def pause(self, workflow: str, cron_behaviour: str, scheduled_behaviour: str) -> None:
        """A paused workflow's ``QUEUE`` crons and schedules start runs that wait with its
        queue; with ``DROP`` its crons fire nothing and its schedules wait for the unpause
        (the ticker's poll skips them: ``PollCronSchedules`` and
        ``PollScheduledWorkflows`` in pkg/repository/sqlcv1/ticker.sql)."""
        for names, behaviour in (
            (self.dropping_crons, cron_behaviour),
            (self.holding_schedules, scheduled_behaviour),
        ):
            if behaviour == "DROP":
                names.add(workflow)
            else:
                names.discard(workflow)
        if scheduled_behaviour != "DROP":  # paused again with QUEUE: the ticker takes them
            self._release_held(workflow)

    def resume(self, workflow: str) -> None:
        """Unpaused: the schedules whose time came while they were held start now."""
        self.dropping_crons.discard(workflow)
        self.holding_schedules.discard(workflow)
        self._release_held(workflow)

    def _release_held(self, workflow: str) -> None:
        for scheduled in list(self.scheduled.values()):
            if scheduled.workflow == workflow and scheduled.held:
                scheduled.held = False
                self._fire_scheduled(scheduled)

    def _paused(self, workflow: str, dropping: set[str]) -> bool:
        return workflow in dropping and workflow in self.engine.paused_workflows

    def forget_workflow(self, workflow: str) -> None:
        """A deleted workflow's crons and scheduled runs go with its versions."""
        for cron in [c for c in self.crons.values() if c.workflow == workflow]:
            self.delete_cron(cron.cron_id)
        for scheduled in [s for s in self.scheduled.values() if s.workflow == workflow]:
            self.delete_scheduled(scheduled.schedule_id)

    # -- plumbing ------------------------------------------------------------------------

    def _known(self, workflow: str) -> None:
        if workflow not in self.engine.workflows:
            raise EngineError("NOT_FOUND", f"workflow {workflow!r} is not registered")

    def _spawn(self, coroutine: Any) -> None:  # noqa: ANN401 - a coroutine of a run
        async def guarded() -> None:
            try:
                await coroutine
            except EngineError as error:  # the ticker logs it; nothing else waits for it
                logger.warning("schedule could not trigger its run", error=str(error))

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        timers = [c.timer for c in self.crons.values()]
        timers += [s.timer for s in self.scheduled.values()]
        for timer in timers:
            if timer is not None:
                timer.cancel()


_SCHEDULES: weakref.WeakKeyDictionary[Engine, Schedules] = weakref.WeakKeyDictionary()


def schedules_of(engine: Engine) -> Schedules:
    """The engine's crons and scheduled runs (made on first use)."""
    schedules = _SCHEDULES.get(engine)
    if schedules is None:
        schedules = _SCHEDULES[engine] = Schedules(engine)
    return schedules
