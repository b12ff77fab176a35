"""A second real hatchet-sdk worker, with labels, for the scheduling tests: it runs
the workflows of tests/functional/scheduling_workflows.py and nothing else.

Run as ``python -m tests.functional.scheduling_worker`` with the emulator's
HATCHET_CLIENT_* settings in its environment."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from hatchet_sdk import Hatchet

from hatchway_local.hatchet_emulator.engine import Worker
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.scheduling_workflows import (
    SIDE_LABELS,
    SIDE_WORKER_NAME,
    build_scheduling_workflows,
)
from tests.functional.side_workers import worker_process


def main() -> None:
    hatchet = Hatchet()
    worker = hatchet.worker(
        SIDE_WORKER_NAME,
        slots=10,
        # a dict: hatchet-sdk 1.43.1's Worker iterates labels with .items()
        labels=dict(SIDE_LABELS),  # type: ignore[arg-type]
        workflows=build_scheduling_workflows(hatchet),
    )
    worker.start()


def side_worker(emulator: HatchetEmulator, log_path: Path) -> AbstractAsyncContextManager[Worker]:
    """This worker, once it listens."""
    return worker_process(
        emulator, "tests.functional.scheduling_worker", SIDE_WORKER_NAME, log_path
    )


if __name__ == "__main__":
    main()
