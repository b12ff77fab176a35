"""Concurrency limits as Hatchet has them: each limit is a CEL key over the run's
input and metadata, and at most ``max_runs`` holders per key value hold a slot.

A holder is a run (a workflow-level limit: the slot is held until the run ends)
or a task (a task-level limit: held until the task ends, through its retries).
The strategies (pkg/scheduling/v1/concurrency/ and pkg/repository/
scheduler_concurrency.go in Hatchet's engine):

- GROUP_ROUND_ROBIN: a holder over the limit waits for a slot of its key, in
  arrival order;
- CANCEL_IN_PROGRESS: a newcomer takes a slot, and the oldest holders of its key
  over the limit are cancelled;
- CANCEL_NEWEST: a newcomer over the limit is cancelled.

Cancellations carry the engine's reason, ``CANCELLED_BY_CONCURRENCY_LIMIT``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from . import expressions
from .errors import EngineError

CANCELLED_BY_CONCURRENCY_LIMIT = "CANCELLED_BY_CONCURRENCY_LIMIT"
STRATEGIES = frozenset({"GROUP_ROUND_ROBIN", "CANCEL_IN_PROGRESS", "CANCEL_NEWEST"})


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    expression: str
    max_runs: int
    strategy: str

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise EngineError(
                "UNIMPLEMENTED",
                f"concurrency strategy {self.strategy} is not emulated "
                f"(emulated: {', '.join(sorted(STRATEGIES))})",
            )
        if self.max_runs < 1:
            raise EngineError("INVALID_ARGUMENT", "a concurrency limit needs max_runs >= 1")
        expressions.check(self.expression)


class Holder(Protocol):
    """A run or a task: what takes a slot."""

    slots: tuple[tuple[str, ConcurrencyLimit], ...]
    admitted: bool


class Limiter:
    def __init__(self) -> None:
        self._held: defaultdict[str, list[Holder]] = defaultdict(list)  # slot key -> holders
        self._waiting: list[Holder] = []

    @staticmethod
    def keys(
        scope: str, limits: tuple[ConcurrencyLimit, ...], variables: dict[str, Any]
    ) -> tuple[tuple[str, ConcurrencyLimit], ...]:
        """Each limit's slot key: the scope, which limit, and the expression's value."""
        return tuple(
            (f"{scope}#{index}={expressions.evaluate(limit.expression, variables)!r}", limit)
            for index, limit in enumerate(limits)
        )

    def arrive(self, holder: Holder) -> list[Holder]:
        """Queue a newcomer; returns the holders its strategies cancel (maybe itself)."""
        for key, limit in holder.slots:
            if limit.strategy == "CANCEL_NEWEST" and len(self._held[key]) >= limit.max_runs:
                return [holder]
        victims: list[Holder] = []
        for key, limit in holder.slots:
            if limit.strategy == "CANCEL_IN_PROGRESS":
                rivals = self._held[key] + [h for h in self._waiting if _holds(h, key)]
                excess = len(rivals) + 1 - limit.max_runs
                victims += [rival for rival in rivals[: max(excess, 0)] if rival not in victims]
        self._waiting.append(holder)
        return victims

    def admit(self) -> list[Holder]:
        """Give slots to the waiting holders whose every key has room, in arrival order."""
        admitted: list[Holder] = []
        for holder in list(self._waiting):
            if all(len(self._held[key]) < limit.max_runs for key, limit in holder.slots):
                for key, _ in holder.slots:
                    self._held[key].append(holder)
                holder.admitted = True
                self._waiting.remove(holder)
                admitted.append(holder)
        return admitted

    def release(self, holder: Holder) -> None:
        if holder in self._waiting:
            self._waiting.remove(holder)
        for key, _ in holder.slots:
            if holder in self._held[key]:
                self._held[key].remove(holder)
                if not self._held[key]:
                    del self._held[key]


def _holds(holder: Holder, key: str) -> bool:
    return any(slot_key == key for slot_key, _ in holder.slots)
