"""Workflows for the scheduling tests (tests/functional/test_emulator_<feature>.py):
worker affinity, sticky assignment, crons and schedules, idempotency keys. Every task
reports the worker that ran it, so the tests can tell where each one went."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from hatchet_sdk import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    EmptyModel,
    Hatchet,
    StatusBasedIdempotencyConfig,
    StickyStrategy,
    TTLBasedIdempotencyConfig,
    WorkerLabelComparator,
)
from hatchet_sdk.labels import DesiredWorkerLabel
from pydantic import BaseModel

SIDE_WORKER_NAME = "hatchway-scheduling-worker"
# The second worker's labels (tests/functional/scheduling_worker.py); the main test
# worker has none until a test gives it some.
SIDE_LABELS: dict[str, str | int] = {"model": "fancy-v2", "memory": 512, "pool": "side"}


def build_scheduling_workflows(hatchet: Hatchet) -> list[Any]:
    return [*_affinity(hatchet), *_sticky(hatchet), *_schedules(hatchet), *_idempotent(hatchet)]


def _where(ctx: Context) -> dict[str, Any]:
    return {"worker": ctx.worker_id}


def _affinity(hatchet: Hatchet) -> list[Any]:
    @hatchet.task(
        name="t-affinity",
        desired_worker_labels=[
            DesiredWorkerLabel(key="model", value="fancy-v2", weight=10),
            DesiredWorkerLabel(
                key="memory", value=1024, required=True, comparator=WorkerLabelComparator.LESS_THAN
            ),
        ],
    )
    async def affinity(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return _where(ctx)

    anywhere = hatchet.workflow(name="t-affinity-runtime")  # no labels of its own

    @anywhere.task()
    async def runtime_first(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
        return _where(ctx)

    @anywhere.task(parents=[runtime_first])
    async def runtime_second(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
        return _where(ctx)

    return [affinity, anywhere]


def _sticky(hatchet: Hatchet) -> list[Any]:
    workflows = []
    for strategy in (StickyStrategy.HARD, StickyStrategy.SOFT):
        sticky = hatchet.workflow(name=f"t-sticky-{strategy.value.lower()}", sticky=strategy)

        @sticky.task()
        async def sticky_first(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
            await asyncio.sleep(1.0)  # long enough for the test to move the other worker
            return _where(ctx)

        @sticky.task(parents=[sticky_first])
        async def sticky_second(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
            return _where(ctx)

        @sticky.task(parents=[sticky_first])
        async def sticky_third(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
            return _where(ctx)

        workflows.append(sticky)
    return workflows


CRON_EXPRESSION = "0 0 * 1 0"  # rarely: the tests trigger it by hand


class GreetingInput(BaseModel):
    name: str = "nobody"


def _schedules(hatchet: Hatchet) -> list[Any]:
    @hatchet.task(
        name="t-cron",
        input_validator=GreetingInput,
        on_crons=[CRON_EXPRESSION],
        cron_input=GreetingInput(name="cron"),
    )
    async def greet(input: GreetingInput, ctx: Context) -> dict[str, Any]:  # noqa: A002
        return {"hello": input.name, "metadata": ctx.additional_metadata}

    return [greet]


IDEMPOTENT_EVENT_KEY = "t-idem:event"
SHORT_TTL = timedelta(seconds=2)


class KeyedInput(BaseModel):
    id: str
    fail: bool = False


class GroupedInput(BaseModel):
    id: str
    group: str | None = None


def _idempotent(hatchet: Hatchet) -> list[Any]:
    # Both listen to one event with the same key expression: keys are the tenant's.
    @hatchet.task(
        name="t-idem-ttl",
        input_validator=KeyedInput,
        on_events=[IDEMPOTENT_EVENT_KEY],
        idempotency=TTLBasedIdempotencyConfig(key_expression="input.id", ttl=timedelta(hours=1)),
    )
    async def keyed(input: KeyedInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
        return {"id": input.id}

    @hatchet.task(
        name="t-idem-ttl-short",
        input_validator=KeyedInput,
        on_events=[IDEMPOTENT_EVENT_KEY],
        idempotency=TTLBasedIdempotencyConfig(key_expression="input.id", ttl=SHORT_TTL),
    )
    async def keyed_briefly(input: KeyedInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
        return {"id": input.id}

    # The key is held while the run works, across its retry, and freed when it ends.
    @hatchet.task(
        name="t-idem-status",
        input_validator=KeyedInput,
        retries=1,
        idempotency=StatusBasedIdempotencyConfig(
            key_expression="input.id", fallback_ttl=timedelta(hours=1)
        ),
    )
    async def keyed_by_status(input: KeyedInput, ctx: Context) -> dict[str, str]:  # noqa: A002
        if ctx.retry_count == 0:
            await asyncio.sleep(0.5)
            raise ValueError("first attempt fails")
        await asyncio.sleep(3)  # the test triggers again while this retry holds the key
        if input.fail:
            raise ValueError("failed for good")
        return {"id": input.id}

    # a run-level concurrency key the trigger may lack: a refused trigger keeps no key
    grouped = hatchet.workflow(
        name="t-idem-grouped",
        input_validator=GroupedInput,
        concurrency=ConcurrencyExpression(
            expression="input.group",
            max_runs=1,
            limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN,
        ),
        idempotency=TTLBasedIdempotencyConfig(key_expression="input.id", ttl=timedelta(hours=1)),
    )

    @grouped.task()
    async def keyed_and_grouped(input: GroupedInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
        return {"id": input.id}

    return [keyed, keyed_briefly, keyed_by_status, grouped]
