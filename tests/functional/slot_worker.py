"""A real hatchet-sdk worker with few default slots for the slot tests: it runs the
workflows of tests/functional/slot_workflows.py and nothing else.

Run as ``python -m tests.functional.slot_worker`` with the emulator's HATCHET_CLIENT_*
settings in its environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from hatchet_sdk import Hatchet

from hatchway_local.hatchet_emulator.engine import Worker
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.conftest import REPO_ROOT, stop_process_group
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


def start(settings: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.functional.slot_worker"],
            env=env,
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.asynccontextmanager
async def slot_worker(emulator: HatchetEmulator, log_path: Path) -> AsyncIterator[Worker]:
    """This worker in its own process, once it listens."""
    process = start(emulator.settings(), log_path)

    async def listening() -> Worker:
        while True:
            for worker in emulator.engine.workers.values():
                if worker.name == SLOT_WORKER_NAME and worker.listeners:
                    return worker
            await asyncio.sleep(0.05)

    try:
        yield await asyncio.wait_for(listening(), 30)
    finally:
        await asyncio.to_thread(stop_process_group, process)


if __name__ == "__main__":
    main()
