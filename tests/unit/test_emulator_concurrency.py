"""The emulator's concurrency limiter on its own: slot keys from CEL, the five
strategies, max-runs expressions, tenant-scoped limits, and holders with several keys
(each must have room)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from hatchway_local.hatchet_emulator.concurrency import (
    ConcurrencyLimit,
    Limiter,
    check_tenant_chains,
)
from hatchway_local.hatchet_emulator.errors import EngineError


@dataclass(eq=False)
class Holder:
    label: str
    slots: tuple[tuple[str, ConcurrencyLimit], ...] = ()
    admitted: bool = False
    arrival: int = 0


def holder(label: str, limits: tuple[ConcurrencyLimit, ...], **input_: object) -> Holder:
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


@pytest.mark.parametrize("strategy", ["DROP_NEWEST", "QUEUE_NEWEST"])
def test_strategies_the_engine_does_not_implement_fail_its_validation(strategy: str) -> None:
    with pytest.raises(EngineError) as refused:
        ConcurrencyLimit("input.group", 1, strategy)
    # the engine's oneof on CreateConcurrencyOpts.LimitStrategy: INVALID_ARGUMENT, not
    # "not emulated", since no engine would run it
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "Validation failed" in str(refused.value)
    assert (
        "[ CANCEL_IN_PROGRESS GROUP_ROUND_ROBIN CANCEL_NEWEST "
        "CANCEL_QUEUED_EXCEPT_NEWEST CANCEL_QUEUED_EXCEPT_OLDEST ]"
    ) in str(refused.value)
    assert f"got {strategy}" in str(refused.value)


@pytest.mark.parametrize(
    "strategy",
    [
        "CANCEL_IN_PROGRESS",
        "GROUP_ROUND_ROBIN",
        "CANCEL_NEWEST",
        "CANCEL_QUEUED_EXCEPT_NEWEST",
        "CANCEL_QUEUED_EXCEPT_OLDEST",
    ],
)
def test_the_engines_five_strategies_are_accepted(strategy: str) -> None:
    assert ConcurrencyLimit("input.group", 2, strategy).strategy == strategy


def test_bad_expressions_are_refused() -> None:
    with pytest.raises(EngineError) as malformed:
        ConcurrencyLimit("input.(", 1, RR)
    assert malformed.value.code == "INVALID_ARGUMENT"


def test_a_key_the_input_lacks_is_an_error_naming_the_expression() -> None:
    with pytest.raises(EngineError, match=r"input\.group"):
        Limiter.keys("wf", (ConcurrencyLimit("input.group", 1, RR),), {"input": {}})


def arrive_all(limiter: Limiter, holders: list[Holder]) -> list[str]:
    """Each holder arrives in turn (slots admitted after each); the labels cancelled."""
    cancelled: list[str] = []
    for h in holders:
        for victim in limiter.arrive(h):
            assert isinstance(victim, Holder)
            cancelled.append(victim.label)
            limiter.release(victim)
        limiter.admit()
    return cancelled


def test_cancel_queued_except_newest_keeps_the_newest_waiting_and_the_runner() -> None:
    limits = (ConcurrencyLimit("input.group", 1, "CANCEL_QUEUED_EXCEPT_NEWEST"),)
    limiter = Limiter()
    a, b, c, d = (holder(x, limits, group="g") for x in "abcd")
    assert arrive_all(limiter, [a, b, c, d]) == ["b", "c"]  # each newcomer supersedes
    assert a.admitted
    assert not d.admitted
    limiter.release(a)
    assert limiter.admit() == [d]


def test_cancel_queued_except_newest_keeps_max_runs_waiting() -> None:
    limits = (ConcurrencyLimit("input.group", 2, "CANCEL_QUEUED_EXCEPT_NEWEST"),)
    limiter = Limiter()
    holders = [holder(str(i), limits, group="g") for i in range(5)]
    # 0 and 1 run, 2 is the oldest of three waiting over max_runs 2
    assert arrive_all(limiter, holders) == ["2"]
    assert [h.admitted for h in holders] == [True, True, False, False, False]


def test_cancel_queued_except_oldest_cancels_the_newcomers() -> None:
    limits = (ConcurrencyLimit("input.group", 1, "CANCEL_QUEUED_EXCEPT_OLDEST"),)
    limiter = Limiter()
    a, b, c, d = (holder(x, limits, group="g") for x in "abcd")
    other = holder("other", limits, group="h")
    assert arrive_all(limiter, [a, b, c, d, other]) == ["c", "d"]
    assert other.admitted  # another key is not touched
    limiter.release(a)
    assert limiter.admit() == [b]


def test_a_max_runs_expression_gives_each_key_its_newest_holders_value() -> None:
    dynamic = ConcurrencyLimit(
        "input.group", 1, RR, max_runs_expression="input.tier == 'premium' ? 2 : 1"
    )
    limiter = Limiter()
    premium = [holder(f"p{i}", (dynamic,), group="p", tier="premium") for i in range(3)]
    free = [holder(f"f{i}", (dynamic,), group="f", tier="free") for i in range(2)]
    arrive_all(limiter, premium + free)
    assert [h.admitted for h in premium] == [True, True, False]
    assert [h.admitted for h in free] == [True, False]
    # a newer holder raising its key's limit fills the backlog at once
    raised = holder("p3", (dynamic,), group="p", tier="premium")
    raised.slots = ((raised.slots[0][0], dataclasses.replace(raised.slots[0][1], max_runs=4)),)
    arrive_all(limiter, [raised])
    assert premium[2].admitted
    assert raised.admitted


def test_a_lowered_max_runs_lets_round_robin_runners_finish_but_cancel_in_progress_trims() -> None:
    for strategy, cancelled in ((RR, []), ("CANCEL_IN_PROGRESS", ["0", "1"])):
        dynamic = ConcurrencyLimit("input.group", 1, strategy, max_runs_expression="input.n")
        limiter = Limiter()
        first = [holder(str(i), (dynamic,), group="g", n=3) for i in range(2)]
        assert arrive_all(limiter, first) == []
        lowered = holder("2", (dynamic,), group="g", n=1)
        assert arrive_all(limiter, [lowered]) == cancelled
        assert lowered.admitted is (strategy != RR)


@pytest.mark.parametrize("value", ["'many'", "-1", "input.missing", "true"])
def test_a_max_runs_expression_that_is_not_a_count_fails_the_key(value: str) -> None:
    limit = ConcurrencyLimit("input.group", 1, RR, max_runs_expression=value)
    with pytest.raises(EngineError) as failed:
        Limiter.keys("wf", (limit,), {"input": {"group": "g"}})
    assert failed.value.code == "INVALID_ARGUMENT"


def test_a_max_runs_expression_of_zero_holds_the_key() -> None:
    limit = ConcurrencyLimit("input.group", 1, RR, max_runs_expression="input.n")
    limiter = Limiter()
    held = holder("x", (limit,), group="g", n=0)
    arrive_all(limiter, [held])
    assert not held.admitted


def test_tenant_scoped_limits_share_keys_across_workflows_and_update_in_place() -> None:
    shared = ConcurrencyLimit("input.group", 1, RR, name="shared", tenant_scoped=True)
    limiter = Limiter()
    limiter.define([shared])
    a = Holder("a", Limiter.keys("wf-a", (shared,), {"input": {"group": "g"}}))
    b = Holder("b", Limiter.keys("wf-b/step", (shared,), {"input": {"group": "g"}}))
    arrive_all(limiter, [a, b])
    assert a.admitted
    assert not b.admitted
    limiter.define([dataclasses.replace(shared, max_runs=2)])  # a re-registration
    assert limiter.admit() == [b]


def test_a_tenant_scoped_limit_needs_a_name() -> None:
    with pytest.raises(EngineError, match="require a name"):
        ConcurrencyLimit("input.group", 1, RR, tenant_scoped=True)


def shared(name: str) -> ConcurrencyLimit:
    return ConcurrencyLimit("input.group", 1, RR, name=name, tenant_scoped=True)


def test_chains_ordering_tenant_scoped_limits_inconsistently_are_refused() -> None:
    one, two, three = shared("one"), shared("two"), shared("three")
    check_tenant_chains("wf", (), {"a": (one, two)}, [["one", "two"], ["two", "three"]])
    with pytest.raises(EngineError, match="ordered inconsistently") as refused:
        # this workflow says three before one; the others say one < two < three
        check_tenant_chains("wf", (), {"a": (three, one)}, [["one", "two"], ["two", "three"]])
    assert refused.value.code == "UNKNOWN"  # a plain error on the engine


def test_a_step_naming_a_tenant_scoped_limit_twice_is_refused() -> None:
    with pytest.raises(EngineError, match="referenced more than once"):
        check_tenant_chains("wf", (), {"a": (shared("one"), shared("one"))}, [])


def test_a_workflow_level_tenant_scoped_limit_needs_a_single_task() -> None:
    check_tenant_chains("wf", (shared("one"),), {"a": (shared("one"),)}, [])
    with pytest.raises(EngineError, match="not supported at the workflow level"):
        check_tenant_chains("wf", (shared("one"),), {"a": (), "b": ()}, [])


def test_a_replayed_older_holder_does_not_regress_a_newer_holders_limit() -> None:
    limit = ConcurrencyLimit("input.group", 1, RR, max_runs_expression="input.n")
    limiter = Limiter()
    older = holder("older", (limit,), group="g", n=5)
    newer, third = (holder(x, (limit,), group="g", n=2) for x in ("newer", "third"))
    arrive_all(limiter, [older, newer, third])
    limiter.release(older)
    limiter.admit()
    assert third.admitted
    older.admitted = False
    arrive_all(limiter, [older])  # replayed: it arrives again with its old value of 5
    assert not older.admitted  # the limit stayed the newer holders' 2
