"""Workflows for the REST catalog tests (tests/functional/test_emulator_rest.py): an
event-triggered task that returns its filter payload (one with a default filter of its
own), a task that fails on its first
attempt only (replay), a DAG whose second task fails until replayed, and a task to pause."""

from __future__ import annotations

from typing import Any

from hatchet_sdk import Context, DefaultFilter, EmptyModel, Hatchet, ParentCondition

REST_EVENT_KEY = "t-rest:created"
REST_WILDCARD_KEY = "t-rest-sub:*"
DECLARED_EVENT_KEY = "t-rest:declared"
DECLARED_SCOPE = "t-rest-declared-scope"


def build_rest_workflows(hatchet: Hatchet) -> list[Any]:
    on_event = hatchet.workflow(name="t-rest-event", on_events=[REST_EVENT_KEY, REST_WILDCARD_KEY])

    @on_event.task()
    async def echo_filter(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
        return dict(ctx.filter_payload)

    declared = hatchet.workflow(
        name="t-rest-declared-filter",
        on_events=[DECLARED_EVENT_KEY],
        default_filters=[
            DefaultFilter(expression="input.go == true", scope=DECLARED_SCOPE, payload={"d": 1})
        ],
    )

    @declared.task()
    async def echo_declared(_input: EmptyModel, ctx: Context) -> dict[str, Any]:
        return dict(ctx.filter_payload)

    @hatchet.task(name="t-rest-first-try-fails")
    async def first_try_fails(_input: EmptyModel, ctx: Context) -> dict[str, int]:
        if ctx.retry_count == 0:
            raise ValueError("fails on its first attempt")
        return {"attempt": ctx.attempt_number}

    chain = hatchet.workflow(name="t-rest-chain")

    @chain.task()
    async def head(_input: EmptyModel, ctx: Context) -> dict[str, int]:
        return {"retry": ctx.retry_count}

    @chain.task(parents=[head])
    async def middle(_input: EmptyModel, ctx: Context) -> dict[str, int]:
        if ctx.retry_count == 0:
            raise ValueError("middle fails until replayed")
        return {"retry": ctx.retry_count}

    @chain.task(parents=[middle])
    async def tail(_input: EmptyModel, ctx: Context) -> dict[str, int]:
        return {"retry": ctx.retry_count}

    # step2 is cancelled by its condition on the first attempt only (a replay re-decides it)
    cancels_once = hatchet.workflow(name="t-rest-cancel-until-replayed")

    @cancels_once.task()
    async def decide(_input: EmptyModel, ctx: Context) -> dict[str, bool]:
        return {"cancel": ctx.retry_count == 0}

    @cancels_once.task(
        parents=[decide], cancel_if=[ParentCondition(parent=decide, expression="output.cancel")]
    )
    async def after_decide(_input: EmptyModel, _ctx: Context) -> dict[str, str]:
        return {"ran": "yes"}

    @hatchet.task(name="t-rest-pausable")
    async def pausable(_input: EmptyModel, _ctx: Context) -> dict[str, str]:
        return {"result": "done"}

    return [on_event, declared, first_try_fails, chain, cancels_once, pausable]
