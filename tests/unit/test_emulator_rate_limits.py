"""The emulator's rate limits on their own: fixed windows, the per-pass fold of dynamic
keys, reservations within a pass, and what registration refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hatchway_local.hatchet_emulator.engine import Engine, TaskRun, TaskSpec, WorkflowRun
from hatchway_local.hatchet_emulator.engine import WorkflowSpec as Workflow
from hatchway_local.hatchet_emulator.errors import EngineError
from hatchway_local.hatchet_emulator.rate_limits import Bucket, RateLimits, RateLimitSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def task(engine: Engine, *limits: RateLimitSpec, **input_: Any) -> TaskRun:
    spec = TaskSpec(readable_id="step", action="wf:step", rate_limits=limits)
    run = WorkflowRun("run", Workflow("wf", {"step": spec}), input_, {})
    made = TaskRun(spec, run)
    run.tasks["step"] = made
    assert engine.rate_limits.evaluate(made)
    return made


def dynamic(limit: str | None, duration: str = "SECOND") -> RateLimitSpec:
    return RateLimitSpec(
        key="input.user", key_expr="input.user", units=1, limit_expr=limit, duration=duration
    )


def test_a_window_refills_whole_once_it_has_passed_less_10_ms() -> None:
    bucket = Bucket("k", limit=2, window="SECOND", value=0, last_refill=T0)
    bucket.refill(T0 + timedelta(milliseconds=980))
    assert bucket.value == 0
    bucket.refill(T0 + timedelta(milliseconds=990))
    assert (bucket.value, bucket.last_refill) == (2, T0 + timedelta(milliseconds=990))


def test_a_month_is_30_days_and_a_year_360_as_postgres_compares_intervals() -> None:
    month = Bucket("m", limit=1, window="MONTH", value=0, last_refill=T0)
    month.refill(T0 + timedelta(days=29, hours=23))
    assert month.value == 0
    month.refill(T0 + timedelta(days=30))
    assert month.value == 1
    year = Bucket("y", limit=1, window="YEAR", value=0, last_refill=T0)
    year.refill(T0 + timedelta(days=360))
    assert year.value == 1


def test_a_pass_upserts_each_dynamic_key_with_the_lowest_limit_and_longest_window() -> None:
    engine = Engine("tenant")
    limits: RateLimits = engine.rate_limits
    tasks = [
        task(engine, dynamic("5"), user="a"),
        task(engine, dynamic("3", "HOUR"), user="a"),
        task(engine, dynamic("-1"), user="put-only"),  # the SDK's "no limit": upserts nothing
        task(engine, dynamic(None), user="no-limit"),  # no limit expression: a limit of 0
    ]
    limits.prepare(tasks, T0)
    assert {k: (b.limit, b.window, b.value) for k, b in limits.buckets.items()} == {
        "a": (3, "HOUR", 3),
        "no-limit": (0, "SECOND", 0),
    }


def test_putting_a_key_again_caps_what_is_left_at_the_new_limit() -> None:
    limits = Engine("tenant").rate_limits
    limits._upsert("k", 5, "MINUTE", T0)
    limits.buckets["k"].value = 4
    limits._upsert("k", 2, "SECOND", T0)
    assert (limits.buckets["k"].limit, limits.buckets["k"].value) == (2, 2)
    limits._upsert("k", 9, "SECOND", T0)
    assert (limits.buckets["k"].limit, limits.buckets["k"].value) == (9, 2)


async def test_units_are_reserved_within_a_pass_and_taken_only_when_consumed() -> None:
    engine = Engine("tenant")
    limits = engine.rate_limits
    static = RateLimitSpec(key="k", units=1)
    first, second = task(engine, static), task(engine, static)
    limits._upsert("k", 1, "MINUTE", datetime.now(UTC))
    now = datetime.now(UTC)

    limits.prepare([first, second], now)
    assert limits.admits(first, now)
    assert not limits.admits(second, now)  # the first's reservation holds it back
    limits.prepare([first, second], now)  # a new pass: the first found no worker
    assert limits.admits(second, now)
    limits.consume(second)
    limits.prepare([first], now)
    assert not limits.admits(first, now)
    assert limits.buckets["k"].value == 0
    held = [e.message for e in first.run.task_events if e.event_type == "REQUEUED_RATE_LIMIT"]
    assert held == [
        "Rate limit exceeded for key k, attempting to consume 1 units, but only had 0 remaining"
    ]  # once per attempt, however many passes hold it
    limits.close()


@pytest.mark.parametrize(
    "spec",
    [
        {"key": "", "units": 1},
        {"key": "k"},  # neither units nor a units expression
        {"key": "k", "units": 1, "key_expr": "input.("},
    ],
)
def test_registration_refuses_a_rate_limit_the_engine_would_not_validate(
    spec: dict[str, Any],
) -> None:
    with pytest.raises(EngineError) as refused:
        RateLimitSpec(**spec)
    assert refused.value.code == "INVALID_ARGUMENT"


async def test_units_that_are_not_a_finite_number_fail_the_task() -> None:
    engine = Engine("tenant")
    spec = RateLimitSpec(
        key="input.user", key_expr="input.user", units_expr="1.0 / 0.0", limit_expr="5"
    )
    step = TaskSpec(readable_id="step", action="wf:step", rate_limits=(spec,))
    run = WorkflowRun("run", Workflow("wf", {"step": step}), {"user": "u"}, {})
    made = run.tasks["step"] = TaskRun(step, run)
    engine.runs["run"] = run
    assert not engine.rate_limits.evaluate(made)  # failed, not raised out of the scheduler
    assert "not a finite number" in (made.error or "")
