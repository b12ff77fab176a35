"""Worker labels, desired worker labels and sticky assignment: which workers may take
a task, and which of them it prefers.

As the engine's scheduler ranks workers (``rankWorkerIds`` in
pkg/scheduling/v1/scheduler.go, ``computeWeight`` in pkg/scheduling/v1/worker.go):

- a workflow with a sticky strategy ranks by the task's desired worker only, and its
  desired labels are not read: HARD takes only that worker, SOFT prefers it;
- otherwise each desired label the worker meets adds its weight (100 unless set); a
  required label the worker lacks or does not meet rules the worker out;
- the task goes to a free worker of the highest rank, else to one of a lower rank.

A run's desired labels (given when it is triggered) replace its tasks' own. A sticky
run's root tasks desire the worker the trigger named (a child spawned with
``sticky=True`` names its parent's worker); a task with parents desires the worker
that ran its first parent (``DesiredWorkerId`` in pkg/repository/input.go).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from . import contracts

COMPARATORS = frozenset(
    {
        "EQUAL",
        "NOT_EQUAL",
        "GREATER_THAN",
        "GREATER_THAN_OR_EQUAL",
        "LESS_THAN",
        "LESS_THAN_OR_EQUAL",
    }
)
DEFAULT_WEIGHT = 100  # UpsertDesiredWorkerLabel's default (pkg/repository/sqlcv1/workflows.sql)


@dataclass(frozen=True, slots=True)
class Label:
    """A worker label's value: a string or an integer (never both)."""

    str_value: str | None = None
    int_value: int | None = None

    @property
    def text(self) -> str | None:
        """As the REST API shows it (``ToWorkerLabels``): the integer in decimal."""
        return str(self.int_value) if self.int_value is not None else self.str_value


@dataclass(frozen=True, slots=True)
class DesiredLabel:
    key: str
    str_value: str | None = None
    int_value: int | None = None
    required: bool = False
    weight: int = DEFAULT_WEIGHT
    comparator: str = "EQUAL"

    def met_by(self, label: Label) -> bool:
        if self.comparator in ("EQUAL", "NOT_EQUAL"):
            equal = self.comparator == "EQUAL"
            strings = self.str_value is not None and label.str_value is not None
            ints = self.int_value is not None and label.int_value is not None
            return (strings and (self.str_value == label.str_value) == equal) or (
                ints and (self.int_value == label.int_value) == equal
            )
        if self.int_value is None or label.int_value is None:
            return False  # order comparators read integers only
        have, want = label.int_value, self.int_value
        return {
            "GREATER_THAN": have > want,
            "GREATER_THAN_OR_EQUAL": have >= want,
            "LESS_THAN": have < want,
            "LESS_THAN_OR_EQUAL": have <= want,
        }[self.comparator]


def weight(desired: Iterable[DesiredLabel], labels: Mapping[str, Label]) -> int | None:
    """The worker's weight for these desired labels; None when it misses a required one."""
    total = 0
    for want in desired:
        label = labels.get(want.key)
        met = label is not None and want.met_by(label)
        if met:
            total += want.weight
        elif want.required:
            return None
    return total


class Candidate(Protocol):
    @property
    def worker_id(self) -> str: ...

    @property
    def labels(self) -> dict[str, Label]: ...


def choose[W: Candidate](
    workers: Iterable[W],
    *,
    desired: tuple[DesiredLabel, ...],
    sticky: str | None,
    desired_worker_id: str | None,
) -> W | None:
    """The worker a task goes to among ``workers`` (those free to take it now), or None."""
    best: W | None = None
    best_rank = -1
    for worker in workers:
        rank: int | None = 0
        if sticky == "HARD":
            if desired_worker_id is not None and worker.worker_id != desired_worker_id:
                rank = None
        elif sticky == "SOFT":
            rank = 1 if worker.worker_id == desired_worker_id else 0
        elif desired:
            rank = weight(desired, worker.labels)
            rank = None if rank is None or rank < 0 else rank  # negative weights rule it out too
        if rank is not None and rank > best_rank:
            best, best_rank = worker, rank
    return best


# -- from the wire ------------------------------------------------------------------------


def _field(message: Any, name: str) -> Any:  # noqa: ANN401 - a protobuf message
    return getattr(message, name) if message.HasField(name) else None


def labels_from_proto(labels: Mapping[str, Any]) -> dict[str, Label]:
    """A ``map<string, WorkerLabels>`` (Register, UpsertWorkerLabels)."""
    return {
        key: Label(_field(value, "str_value"), _field(value, "int_value"))
        for key, value in labels.items()
        if key
    }


def desired_from_proto(labels: Mapping[str, Any]) -> tuple[DesiredLabel, ...]:
    """A ``map<string, DesiredWorkerLabels>`` (a task's, or a run's when triggered), with
    the engine's defaults (``ProtoToDesiredWorkerLabel`` in pkg/repository/trigger.go)."""
    desired = []
    for key, value in sorted(labels.items()):
        comparator = _field(value, "comparator")
        weight = _field(value, "weight")
        desired.append(
            DesiredLabel(
                key,
                str_value=_field(value, "str_value"),
                int_value=_field(value, "int_value"),
                required=bool(_field(value, "required")),
                weight=DEFAULT_WEIGHT if weight is None else weight,
                comparator="EQUAL"
                if comparator is None
                else contracts.enum_name("v1.WorkerLabelComparator", comparator),
            )
        )
    return tuple(desired)


def rest_labels(worker: Candidate, registered: str) -> list[dict[str, Any]]:
    """A worker's labels as the REST API lists them (``ToWorkerLabels``)."""
    return [
        {
            "metadata": {
                "id": str(uuid.UUID(int=0)),
                "createdAt": registered,
                "updatedAt": registered,
            },
            "key": key,
            "value": label.text,
        }
        for key, label in worker.labels.items()
    ]
