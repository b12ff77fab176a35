"""A real hatchet-sdk worker with few default slots for the slot tests: it runs the
workflows of tests/functional/slot_workflows.py and nothing else.

Run as ``python -m tests.functional.slot_worker`` with the emulator's HATCHET_CLIENT_*
settings in its environment."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from hatchet_sdk import Hatchet

from hatchway_local.hatchet_emulator.engine import Worker
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.functional.side_workers import worker_process
from tests.functional.slot_workflows import (
    SLOT_WORKER_DEFAULT_UNITS,
    SLOT_WORKER_NAME,
    build_slot_workflows,
)


def main() -> None:
    hatchet = Hatchet()
    # with a durable task, the SDK registers slot_config {default: slots, durable: 1000}
    worker = hatchet.worker(
        SLOT_WORKER_NAME, slots=SLOT_WORKER_DEFAULT_UNITS, workflows=build_slot_workflows(hatchet)
    )
    worker.start()


def slot_worker(emulator: HatchetEmulator, log_path: Path) -> AbstractAsyncContextManager[Worker]:
    """This worker in its own process, once it listens."""
    return worker_process(emulator, "tests.functional.slot_worker", SLOT_WORKER_NAME, log_path)


if __name__ == "__main__":
    main()
