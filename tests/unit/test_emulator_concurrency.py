"""The emulator's concurrency limiter on its own: slot keys from CEL, the three
strategies, and holders with several keys (each must have room)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hatchway_local.hatchet_emulator.concurrency import ConcurrencyLimit, Limiter
from hatchway_local.hatchet_emulator.errors import EngineError


@dataclass(eq=False)
class Holder:
    label: str
    slots: tuple[tuple[str, ConcurrencyLimit], ...] = ()
    admitted: bool = False


def holder(label: str, limits: tuple[ConcurrencyLimit, ...], **input_: str) -> Holder:
    return Holder(label, Limiter.keys("wf", limits, {"input": input_}))


RR = "GROUP_ROUND_ROBIN"


def test_round_robin_admits_in_arrival_order_per_key() -> None:
    limits = (ConcurrencyLimit("input.group", 1, RR),)
    limiter = Limiter()
    a1, a2 = holder("a1", limits, group="A"), holder("a2", limits, group="A")
    b1 = holder("b1", limits, group="B")
    for h in (a1, a2, b1):
        assert limiter.arrive(h) == []

    assert limiter.admit() == [a1, b1]
    limiter.release(a1)
    assert limiter.admit() == [a2]


def test_a_holder_with_several_keys_waits_until_each_has_room() -> None:
    limits = (ConcurrencyLimit("input.digit", 2, RR), ConcurrencyLimit("input.name", 1, RR))
    limiter = Limiter()
    anna_1 = holder("anna-1", limits, digit="1", name="Anna")
    levin_1 = holder("levin-1", limits, digit="1", name="Levin")
    anna_2 = holder("anna-2", limits, digit="2", name="Anna")  # the name is full
    stiva_1 = holder("stiva-1", limits, digit="1", name="Stiva")  # the digit is full
    for h in (anna_1, levin_1, anna_2, stiva_1):
        limiter.arrive(h)

    assert limiter.admit() == [anna_1, levin_1]
    limiter.release(anna_1)
    assert limiter.admit() == [anna_2, stiva_1]


def test_cancel_in_progress_names_the_oldest_over_the_limit() -> None:
    limits = (ConcurrencyLimit("input.group", 2, "CANCEL_IN_PROGRESS"),)
    limiter = Limiter()
    first, second, third = (holder(n, limits, group="A") for n in ("1", "2", "3"))
    limiter.arrive(first)
    limiter.arrive(second)
    limiter.admit()

    assert limiter.arrive(third) == [first]


def test_cancel_newest_names_the_newcomer_when_full() -> None:
    limits = (ConcurrencyLimit("input.group", 1, "CANCEL_NEWEST"),)
    limiter = Limiter()
    first, newcomer = holder("1", limits, group="A"), holder("2", limits, group="A")
    limiter.arrive(first)
    limiter.admit()

    assert limiter.arrive(newcomer) == [newcomer]


def test_strategies_it_does_not_emulate_and_bad_expressions_are_refused() -> None:
    with pytest.raises(EngineError) as unemulated:
        ConcurrencyLimit("input.group", 1, "DROP_NEWEST")
    assert unemulated.value.code == "UNIMPLEMENTED"
    with pytest.raises(EngineError) as malformed:
        ConcurrencyLimit("input.(", 1, RR)
    assert malformed.value.code == "INVALID_ARGUMENT"


def test_a_key_the_input_lacks_is_an_error_naming_the_expression() -> None:
    with pytest.raises(EngineError, match=r"input\.group"):
        Limiter.keys("wf", (ConcurrencyLimit("input.group", 1, RR),), {"input": {}})
