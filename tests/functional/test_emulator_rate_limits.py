"""Rate limits through the unmodified hatchet-sdk (``hatchet.rate_limits``, tasks with
``RateLimit``), run by the real test worker. Semantics: rate_limits.py.

Start times are the engine's ASSIGNED events (when a task takes its units), and the
assertions count and order them: a fixed window of W holds at most N assignments, so
any 2N+1 of them in a row span more than one whole window, however loaded the machine.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from uuid import uuid4

import pytest
from hatchet_sdk import Hatchet, RateLimitDuration
from hatchet_sdk.clients.rest.models.rate_limit_order_by_direction import (
    RateLimitOrderByDirection,
)
from hatchet_sdk.clients.rest.models.rate_limit_order_by_field import RateLimitOrderByField
from hatchet_sdk.clients.rest.models.v1_task_status import V1TaskStatus
from hatchet_sdk.exceptions import FailedTaskRunExceptionGroup

from hatchway_local.hatchet_emulator.engine import Status, TaskEvent
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.rate_limit_workflows import (
    GREEDY_KEY,
    GREEDY_UNITS,
    STATIC_KEY,
    UNSET_KEY,
)
from tests.functional.test_hatchet_emulator import paused_workers, result_of, start

pytestmark = pytest.mark.usefixtures("worker")

WINDOW_S = 0.99  # a SECOND window refills 10 ms early


def events(emulator: HatchetEmulator, run_id: str, event_type: str) -> list[TaskEvent]:
    return [e for e in emulator.engine.get_run(run_id).task_events if e.event_type == event_type]


def assigned_at(emulator: HatchetEmulator, run_ids: list[str]) -> list[datetime]:
    return sorted(e.at for run_id in run_ids for e in events(emulator, run_id, "ASSIGNED"))


def held(emulator: HatchetEmulator, run_ids: list[str]) -> list[str]:
    """The runs whose task waited for its units at least once."""
    return [r for r in run_ids if events(emulator, r, "REQUEUED_RATE_LIMIT")]


def assert_at_most_per_window(starts: list[datetime], per_window: int) -> None:
    span = 2 * per_window  # starts[i] and starts[i + 2N] lie in windows two apart
    for first, last in zip(starts, starts[span:], strict=False):
        assert (last - first).total_seconds() >= WINDOW_S, starts


async def test_a_static_key_lets_n_tasks_start_per_window_and_the_rest_wait(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    await hatchet.rate_limits.aio_put(STATIC_KEY, 2, RateLimitDuration.SECOND)
    with paused_workers(emulator):  # all queued first, so one pass sees them all
        run_ids = [await start(hatchet, "t-rl-static") for _ in range(6)]
    results = await asyncio.gather(*(result_of(hatchet, r) for r in run_ids))

    assert results == [{"t-rl-static": {"ran": True}}] * 6  # none failed: they waited
    assert len(held(emulator, run_ids)) == 4  # two took the window's units, four waited
    assert_at_most_per_window(assigned_at(emulator, run_ids), per_window=2)
    message = events(emulator, held(emulator, run_ids)[0], "REQUEUED_RATE_LIMIT")[0].message
    assert message.startswith(f"Rate limit exceeded for key {STATIC_KEY}, attempting to consume 1")

    listed = await hatchet.rate_limits.aio_list(search=STATIC_KEY)
    assert [(r.key, r.limit_value, r.window) for r in listed.rows or []] == [
        (STATIC_KEY, 2, "1 SECOND")
    ]


async def test_dynamic_keys_limit_each_key_apart(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    users = [f"user-{uuid4()}" for _ in range(2)]
    with paused_workers(emulator):
        runs = {
            user: [
                await start(hatchet, "t-rl-dynamic", {"user": user, "units": 1, "limit": 1})
                for _ in range(3)
            ]
            for user in users
        }
    for run_ids in runs.values():
        await asyncio.gather(*(result_of(hatchet, r) for r in run_ids))

    for run_ids in runs.values():  # one per key started at once, whatever the other key did
        assert len(held(emulator, run_ids)) == 2
        assert_at_most_per_window(assigned_at(emulator, run_ids), per_window=1)
    first_starts = [assigned_at(emulator, run_ids)[0] for run_ids in runs.values()]
    assert abs((first_starts[0] - first_starts[1]).total_seconds()) < WINDOW_S

    listed = await hatchet.rate_limits.aio_list(search="user-")
    rows = {r.key: (r.limit_value, r.window) for r in listed.rows or []}
    assert {user: rows.get(user) for user in users} == dict.fromkeys(users, (1, "1 SECOND"))


async def test_units_beyond_the_limit_wait_until_the_schedule_timeout_cancels_them(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    await hatchet.rate_limits.aio_put(GREEDY_KEY, GREEDY_UNITS - 1, RateLimitDuration.SECOND)
    run_id = await start(hatchet, "t-rl-greedy")
    run = emulator.engine.get_run(run_id)
    await asyncio.wait_for(run.done.wait(), timeout=60)

    assert run.status is Status.CANCELLED  # not failed: the engine never fails it
    assert not events(emulator, run_id, "ASSIGNED")
    assert events(emulator, run_id, "SCHEDULING_TIMED_OUT")
    assert events(emulator, run_id, "REQUEUED_RATE_LIMIT")[0].message == (
        f"Rate limit exceeded for key {GREEDY_KEY}, attempting to consume {GREEDY_UNITS} units, "
        f"but only had {GREEDY_UNITS - 1} remaining"
    )
    details = await hatchet.runs.aio_get(run_id)
    assert [t.status for t in details.tasks] == [V1TaskStatus.CANCELLED]


async def test_a_key_nobody_put_holds_its_tasks_until_it_is_put(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    run_id = await start(hatchet, "t-rl-unset")
    while not events(emulator, run_id, "REQUEUED_RATE_LIMIT"):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert emulator.engine.get_run(run_id).tasks["t-rl-unset"].status is Status.QUEUED

    await hatchet.rate_limits.aio_put(UNSET_KEY, 1, RateLimitDuration.MINUTE)
    assert await result_of(hatchet, run_id) == {"t-rl-unset": {"ran": True}}


@pytest.mark.parametrize(
    ("input_", "error"),
    [
        ({"units": 1, "limit": 1}, "failed to parse step expression (input.user): "),
        (
            {"user": 5, "units": 1, "limit": 1},
            "failed to parse step expression (input.user): "
            "expected string output for dynamic rate limit key, got int",
        ),
        (
            {"user": "u", "units": "one", "limit": 1},
            "failed to parse step expression (input.units): "
            "expected int output for dynamic rate limit units, got string",
        ),
    ],
)
async def test_a_rate_limit_expression_that_cannot_be_evaluated_fails_the_task(
    hatchet: Hatchet, emulator: HatchetEmulator, input_: dict[str, object], error: str
) -> None:
    run_id = await start(hatchet, "t-rl-dynamic", input_)
    with pytest.raises(FailedTaskRunExceptionGroup):
        await result_of(hatchet, run_id)
    task = emulator.engine.get_run(run_id).tasks["t-rl-dynamic"]
    assert task.status is Status.FAILED
    assert (task.error or "").startswith(error)
    assert not events(emulator, run_id, "ASSIGNED")


async def test_putting_a_key_again_caps_what_is_left_and_the_list_orders_and_pages(
    hatchet: Hatchet,
) -> None:
    prefix = f"t-rl-put-{uuid4()}"
    put = hatchet.rate_limits.aio_put
    await put(f"{prefix}-a", 5, RateLimitDuration.MINUTE)
    await put(f"{prefix}-a", 2, RateLimitDuration.MINUTE)  # a lower limit caps the units left
    await put(f"{prefix}-a", 10, RateLimitDuration.HOUR)  # a higher one keeps them until refill
    await put(f"{prefix}-b", 7, RateLimitDuration.DAY)

    listed = await hatchet.rate_limits.aio_list(
        search=prefix,
        order_by_field=RateLimitOrderByField.LIMITVALUE,
        order_by_direction=RateLimitOrderByDirection.DESC,
    )
    assert [(r.key, r.limit_value, r.value, r.window) for r in listed.rows or []] == [
        (f"{prefix}-a", 10, 2, "1 HOUR"),
        (f"{prefix}-b", 7, 7, "1 DAY"),
    ]
    first_page = await hatchet.rate_limits.aio_list(search=prefix, limit=1)
    assert [r.key for r in first_page.rows or []] == [f"{prefix}-a"]
    assert first_page.pagination is not None
    assert (first_page.pagination.num_pages, first_page.pagination.next_page) == (2, 2)
