"""Workflows for the rate-limit tests (tests/functional/test_emulator_rate_limits.py):
static keys the tests put, a dynamic key per input, a task that asks more units than
its key's limit, and a key nobody put."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hatchet_sdk import Context, EmptyModel, Hatchet, RateLimit, RateLimitDuration
from pydantic import BaseModel, ConfigDict

STATIC_KEY = "t-rl-static"
GREEDY_KEY = "t-rl-greedy"
UNSET_KEY = "t-rl-unset"
GREEDY_UNITS = 3
GREEDY_SCHEDULE_TIMEOUT = timedelta(seconds=2)


class UserInput(BaseModel):
    model_config = ConfigDict(extra="allow")  # the tests leave fields out or mistype them


def build_rate_limit_workflows(hatchet: Hatchet) -> list[Any]:
    @hatchet.task(name="t-rl-static", rate_limits=[RateLimit(static_key=STATIC_KEY, units=1)])
    async def static(_input: EmptyModel, _ctx: Context) -> dict[str, bool]:
        return {"ran": True}

    @hatchet.task(
        name="t-rl-dynamic",
        input_validator=UserInput,
        rate_limits=[
            RateLimit(
                dynamic_key="input.user",
                units="input.units",
                limit="input.limit",
                duration=RateLimitDuration.SECOND,
            )
        ],
    )
    async def dynamic(_input: UserInput, _ctx: Context) -> dict[str, bool]:
        return {"ran": True}

    @hatchet.task(
        name="t-rl-greedy",
        schedule_timeout=GREEDY_SCHEDULE_TIMEOUT,
        rate_limits=[RateLimit(static_key=GREEDY_KEY, units=GREEDY_UNITS)],
    )
    async def greedy(_input: EmptyModel, _ctx: Context) -> dict[str, bool]:
        return {"ran": True}  # never: it asks more than the key ever holds

    @hatchet.task(name="t-rl-unset", rate_limits=[RateLimit(static_key=UNSET_KEY)])
    async def unset(_input: EmptyModel, _ctx: Context) -> dict[str, bool]:
        return {"ran": True}

    return [static, dynamic, greedy, unset]
