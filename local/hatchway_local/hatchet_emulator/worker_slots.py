"""Worker slots by slot type: what a worker offers and what a task holds while it runs.

As the engine does it:

- a worker registers units per slot type (``slot_config``); with only the deprecated
  ``slots`` it has that many ``default`` units, with neither 100 ``default`` units, and
  both at once are refused (``Register`` in internal/services/dispatcher/server.go);
- a task asks units per slot type (``slot_requests``); none asked means one ``durable``
  unit for a durable task, one ``default`` unit otherwise; requests of zero or fewer
  units are dropped, and a task left with none asks one ``default`` unit
  (``createWorkflowVersion``'s step slot requests in pkg/repository/workflow.go,
  repository.SlotTypeDefault/SlotTypeDurable in pkg/repository/slot_types.go);
- a task goes only to one worker with enough free units of every type it asks: units
  are never split across workers, and a worker without a type has none of it
  (``selectSlotsFromPools`` and ``assignSingleton`` in pkg/scheduling/v1/scheduler.go,
  the per (worker, slot type) pools of pkg/scheduling/v1/slot_pool.go,
  pkg/scheduling/v1/slot_cost_test.go); a task no worker can fit waits in the queue,
  until its schedule timeout if it has one;
- it holds them from its assignment until its attempt ends, it is requeued, its
  worker releases the slot (ReleaseSlot) or evicts it: each deletes all of the task's
  rows of v1_task_runtime_slot (pkg/repository/sqlcv1/tasks.sql);
- a batch flush asks and holds one ``default`` unit, whatever its tasks ask
  (``tryAssignBatchQueueItem`` in pkg/scheduling/v1/scheduler.go;
  ``ListAvailableSlotsForWorkersAndTypes`` in pkg/repository/sqlcv1/workers.sql counts
  a batch once);
- the REST API shows each type's ``limit`` and ``available`` units
  (api/v1/server/handlers/workers/slot_config.go).

Decision: the engine assigns within a pass from slots it refreshes about every
second; here a unit is free again at once, as the engine's next pass would find it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT = "default"
DURABLE = "durable"
DEFAULT_WORKER_UNITS = 100  # a worker registered with neither slots nor slot_config

Units = tuple[tuple[str, int], ...]  # (slot type, units), sorted by type: hashable
DEFAULT_REQUEST: Units = ((DEFAULT, 1),)
DURABLE_REQUEST: Units = ((DURABLE, 1),)


def requests(asked: Mapping[str, int], *, durable: bool) -> Units:
    """A task's slot requests as the engine stores them."""
    if not asked:
        return DURABLE_REQUEST if durable else DEFAULT_REQUEST
    kept = tuple(sorted((slot_type, units) for slot_type, units in asked.items() if units > 0))
    return kept or DEFAULT_REQUEST


def available(config: Mapping[str, int], held: Iterable[Units], slot_type: str) -> int:
    """A worker's free units of ``slot_type``: its capacity less what its holders hold."""
    used = sum(units for holding in held for kind, units in holding if kind == slot_type)
    return config.get(slot_type, 0) - used


def fits(config: Mapping[str, int], held: Iterable[Units], asked: Units) -> bool:
    """Whether a worker has enough free units of every type asked."""
    holdings = list(held)
    return all(available(config, holdings, kind) >= units for kind, units in asked)
