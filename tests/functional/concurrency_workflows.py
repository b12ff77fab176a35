"""Workflows for tests/functional/test_emulator_concurrency_more.py: the two
cancel-queued strategies, a max-runs expression, and one tenant-scoped limit two
workflows share."""

from __future__ import annotations

import asyncio
from typing import Any

from hatchet_sdk import ConcurrencyExpression, ConcurrencyLimitStrategy, Context, Hatchet
from pydantic import BaseModel

SHARED_LIMIT = "t-conc-shared"


class HoldInput(BaseModel):
    group: str
    seconds: float = 0.0
    tier: str = "free"


async def hold(input: HoldInput) -> dict[str, str]:  # noqa: A002
    await asyncio.sleep(input.seconds)
    return {"group": input.group}


def build_concurrency_workflows(hatchet: Hatchet) -> list[Any]:
    def one_per_group(strategy: ConcurrencyLimitStrategy) -> ConcurrencyExpression:
        return ConcurrencyExpression(expression="input.group", max_runs=1, limit_strategy=strategy)

    @hatchet.task(
        name="t-conc-except-newest",
        input_validator=HoldInput,
        concurrency=one_per_group(ConcurrencyLimitStrategy.CANCEL_QUEUED_EXCEPT_NEWEST),
    )
    async def except_newest(input: HoldInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
        return await hold(input)

    @hatchet.task(
        name="t-conc-except-oldest",
        input_validator=HoldInput,
        concurrency=one_per_group(ConcurrencyLimitStrategy.CANCEL_QUEUED_EXCEPT_OLDEST),
    )
    async def except_oldest(input: HoldInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
        return await hold(input)

    dynamic = hatchet.workflow(name="t-conc-dynamic", input_validator=HoldInput)

    @dynamic.task(
        concurrency=[
            ConcurrencyExpression(
                expression="input.group",
                max_runs="input.tier == 'premium' ? 2 : 1",
                limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN,
            )
        ]
    )
    async def dynamic_step(input: HoldInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
        return await hold(input)

    shared = ConcurrencyExpression(
        expression="input.group",
        max_runs=1,
        limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN,
        name=SHARED_LIMIT,
        is_tenant_scoped=True,
    )

    @hatchet.task(name="t-conc-shared-a", input_validator=HoldInput, concurrency=[shared])
    async def shared_a(input: HoldInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
        return await hold(input)

    @hatchet.task(name="t-conc-shared-b", input_validator=HoldInput, concurrency=[shared])
    async def shared_b(input: HoldInput, _ctx: Context) -> dict[str, str]:  # noqa: A002
        return await hold(input)

    return [except_newest, except_oldest, dynamic, shared_a, shared_b]
