"""Workflows for the incoming-webhook tests (tests/functional/test_emulator_webhooks.py): a
task started by webhook events that returns its input, and one gated by a default filter
on the event's scope."""

from __future__ import annotations

from typing import Any

from hatchet_sdk import Context, DefaultFilter, EmptyModel, Hatchet
from pydantic import BaseModel, ConfigDict

WEBHOOK_EVENT_KEYS = "t-webhook:*"
SCOPED_EVENT_KEY = "t-webhook-scoped:go"
WANTED_SCOPE = "t-webhook-wanted"


class AnyPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


def build_webhook_workflows(hatchet: Hatchet) -> list[Any]:
    @hatchet.task(name="t-webhook-echo", on_events=[WEBHOOK_EVENT_KEYS], input_validator=AnyPayload)
    async def echo(input_: AnyPayload, _ctx: Context) -> dict[str, Any]:
        return input_.model_dump()

    scoped = hatchet.workflow(
        name="t-webhook-scoped",
        on_events=[SCOPED_EVENT_KEY],
        default_filters=[DefaultFilter(expression="true", scope=WANTED_SCOPE, payload={})],
    )

    @scoped.task()
    async def gated(_input: EmptyModel, _ctx: Context) -> dict[str, str]:
        return {"gated": "ran"}

    return [echo, scoped]
