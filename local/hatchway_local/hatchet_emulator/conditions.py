"""Task conditions as Hatchet has them: ``wait_for`` (QUEUE), ``skip_if`` (SKIP)
and ``cancel_if`` (CANCEL), each a list of or-groups of sleep, user-event and
parent-output conditions.

A task with conditions waits, once its parents completed, until one action's
conditions hold: every or-group of that action has a condition met (within a
group one is enough). Without ``wait_for`` conditions, completed parents are
the QUEUE condition. When several actions hold at once, SKIP wins over CANCEL
and CANCEL over QUEUE (pkg/repository/trigger.go: "complete match on skip takes
precedence over queue"). Expressions are CEL over ``input`` (a user event's
payload) and ``output`` (a parent's output), as pkg/repository/match.go
evaluates them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from . import expressions
from .errors import EngineError

ACTIONS_BY_PRECEDENCE = ("SKIP", "CANCEL", "QUEUE")


@dataclass(frozen=True, slots=True)
class Condition:
    kind: str  # SLEEP | USER_EVENT | PARENT
    action: str  # QUEUE | SKIP | CANCEL
    group: str  # conditions of one or-group: one of them is enough
    data_key: str  # where the task finds what met it (ctx's trigger data)
    expression: str = ""
    sleep_s: float = 0.0
    event_key: str = ""
    scope: str = ""  # a user event counts only if pushed with this scope
    parent: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS_BY_PRECEDENCE:
            raise EngineError("UNIMPLEMENTED", f"condition action {self.action} is not emulated")
        if self.expression:
            expressions.check(self.expression)

    def holds_for(self, variables: dict[str, object]) -> bool:
        if not self.expression:
            return True
        return expressions.evaluate(self.expression, variables) is True


def decide(conditions: tuple[Condition, ...], met: set[int]) -> str | None:
    """The action whose every or-group has a met condition, by precedence; else None."""
    for action in ACTIONS_BY_PRECEDENCE:
        groups: defaultdict[str, bool] = defaultdict(bool)
        for index, condition in enumerate(conditions):
            if condition.action == action:
                groups[condition.group] |= index in met
        if groups and all(groups.values()):
            return action
    if not any(c.action == "QUEUE" for c in conditions):
        return "QUEUE"  # completed parents were the only thing to wait for
    return None
