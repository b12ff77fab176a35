"""Idempotency keys through the unmodified hatchet-sdk (direct, bulk and event
triggers), run by the real test worker. Semantics: idempotency.py."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import grpc
import pytest
from hatchet_sdk import (
    BulkTriggerIdempotencyCollisionError,
    Hatchet,
    IdempotencyCollisionError,
)
from hatchet_sdk.exceptions import FailedTaskRunExceptionGroup

from hatchway_local.hatchet_emulator.engine import Status
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.scheduling_workflows import (
    IDEMPOTENT_EVENT_KEY,
    SHORT_TTL,
    KeyedInput,
)
from tests.functional.test_hatchet_emulator import AnyInput, result_of

pytestmark = pytest.mark.usefixtures("worker")


def task(hatchet: Hatchet, name: str) -> Any:
    return hatchet.stubs.task(name=name, input_validator=KeyedInput, output_validator=dict)


async def run(hatchet: Hatchet, name: str, key: str, *, fail: bool = False) -> str:
    ref = await task(hatchet, name).aio_run(
        KeyedInput(id=key, fail=fail), wait_for_result=False, additional_metadata={"key": key}
    )
    return str(ref.workflow_run_id)


async def run_ids(hatchet: Hatchet, key: str) -> set[str]:
    listed = await hatchet.runs.aio_list(additional_metadata={"key": key})
    return {r.metadata.id for r in listed.rows}


async def test_a_second_trigger_with_the_key_collides_and_names_the_first(
    hatchet: Hatchet,
) -> None:
    key = str(uuid4())
    first = await run(hatchet, "t-idem-ttl", key)
    with pytest.raises(IdempotencyCollisionError) as collided:
        await run(hatchet, "t-idem-ttl", key)
    assert collided.value.existing_run_external_id == first
    assert await result_of(hatchet, first) == {"t-idem-ttl": {"id": key}}
    with pytest.raises(IdempotencyCollisionError):  # a TTL key outlives its run
        await run(hatchet, "t-idem-ttl", key)
    assert await run_ids(hatchet, key) == {first}
    other = await run(hatchet, "t-idem-ttl", str(uuid4()))  # another key is free
    assert other != first


async def test_a_key_is_claimable_again_once_its_ttl_passed(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    key = str(uuid4())
    first = await run(hatchet, "t-idem-ttl-short", key)
    with pytest.raises(IdempotencyCollisionError):
        await run(hatchet, "t-idem-ttl-short", key)
    keys = emulator.engine.idempotency_keys
    real_clock = keys.clock
    keys.clock = lambda: real_clock() + SHORT_TTL.total_seconds()  # the TTL has passed
    try:
        second = await run(hatchet, "t-idem-ttl-short", key)
    finally:
        keys.clock = real_clock
    assert await run_ids(hatchet, key) == {first, second}


async def test_a_trigger_refused_after_its_key_was_evaluated_keeps_no_claim(
    hatchet: Hatchet,
) -> None:
    key = str(uuid4())
    grouped = hatchet.stubs.task(
        name="t-idem-grouped", input_validator=AnyInput, output_validator=dict
    )
    with pytest.raises(grpc.RpcError) as refused:  # no group: its concurrency key fails
        await grouped.aio_run(AnyInput(id=key), wait_for_result=False)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ref = await grouped.aio_run(AnyInput(id=key, group="g"), wait_for_result=False)
    assert await result_of(hatchet, ref.workflow_run_id) == {"keyed_and_grouped": {"id": key}}


async def test_a_status_key_is_held_across_retries_and_freed_when_the_run_ends(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    key = str(uuid4())
    first = await run(hatchet, "t-idem-status", key, fail=True)
    task_run = emulator.engine.get_run(first).tasks["t-idem-status"]
    while task_run.retry_count == 0 or task_run.status is not Status.RUNNING:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    with pytest.raises(IdempotencyCollisionError) as collided:  # on its retry: still held
        await run(hatchet, "t-idem-status", key)
    assert collided.value.existing_run_external_id == first
    with pytest.raises(FailedTaskRunExceptionGroup):
        await result_of(hatchet, first)
    second = await run(hatchet, "t-idem-status", key)  # failed for good: freed, long before its TTL
    assert await result_of(hatchet, second) == {"t-idem-status": {"id": key}}
    assert await run_ids(hatchet, key) == {first, second}


async def test_a_bulk_trigger_starts_one_run_per_key_and_names_the_others(
    hatchet: Hatchet,
) -> None:
    key, other = str(uuid4()), str(uuid4())
    keyed = task(hatchet, "t-idem-ttl")
    items = [
        keyed.create_bulk_run_item(input=KeyedInput(id=k), additional_metadata={"key": key})
        for k in (key, key, other)
    ]
    with pytest.raises(BulkTriggerIdempotencyCollisionError) as collided:
        await keyed.aio_run_many(items, wait_for_result=False)
    started = collided.value.successful_workflow_run_external_ids
    assert len(started) == 2
    [collision] = collided.value.collisions
    assert collision.existing_run_external_id in started
    assert await run_ids(hatchet, key) == set(started)  # the collision created nothing


async def test_one_event_starts_one_run_per_key_across_workflows(
    hatchet: Hatchet, emulator: HatchetEmulator
) -> None:
    """Both workflows on the event give the same key: the claim with the later expiry
    (t-idem-ttl's hour over t-idem-ttl-short's seconds) wins it, and a second event with
    the key starts nothing."""
    key = str(uuid4())
    first = await hatchet.event.aio_push(
        IDEMPOTENT_EVENT_KEY, {"id": key}, additional_metadata={"key": key}
    )
    again = await hatchet.event.aio_push(
        IDEMPOTENT_EVENT_KEY, {"id": key}, additional_metadata={"key": key}
    )
    started = await run_ids(hatchet, key)
    assert len(started) == 1
    [run_id] = started
    assert emulator.engine.get_run(run_id).workflow.name == "t-idem-ttl"
    listed = await hatchet.event.aio_list(event_ids=[first.event_id, again.event_id])
    triggered = [r.workflow_run_id for e in listed.rows or [] for r in e.triggered_runs or []]
    assert triggered == [run_id]
    assert await result_of(hatchet, run_id) == {"t-idem-ttl": {"id": key}}


@pytest.mark.parametrize(
    ("input_", "why"),
    [
        ({}, "failed"),
        ({"id": "hatchet_internal_x"}, "reserved prefix"),
        ({"id": 7}, "not a string"),
    ],
)
async def test_a_key_that_cannot_be_evaluated_refuses_the_trigger(
    hatchet: Hatchet, input_: dict[str, Any], why: str
) -> None:
    stub = hatchet.stubs.task(name="t-idem-ttl", input_validator=AnyInput, output_validator=dict)
    with pytest.raises(grpc.RpcError) as refused:
        await stub.aio_run(AnyInput(**input_), wait_for_result=False)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in (refused.value.details() or "")
