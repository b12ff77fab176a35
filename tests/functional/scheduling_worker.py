"""A second real hatchet-sdk worker, with labels, for the scheduling tests: it runs
the workflows of tests/functional/scheduling_workflows.py and nothing else.

Run as ``python -m tests.functional.scheduling_worker`` with the emulator's
HATCHET_CLIENT_* settings in its environment."""

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
from tests.functional.scheduling_workflows import (
    SIDE_LABELS,
    SIDE_WORKER_NAME,
    build_scheduling_workflows,
)


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


def start(settings: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """This worker in its own process (as conftest.start_worker starts the main one)."""
    env = {**os.environ, **settings, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.functional.scheduling_worker"],
            env=env,
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def running(emulator: HatchetEmulator, timeout_s: float = 30.0) -> Worker:
    """The side worker once it listens (as conftest.wait_for_worker waits for the main one)."""

    async def listening() -> Worker:
        while True:
            for worker in emulator.engine.workers.values():
                if worker.name == SIDE_WORKER_NAME and worker.listeners:
                    return worker
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(listening(), timeout_s)


@contextlib.asynccontextmanager
async def side_worker(emulator: HatchetEmulator, log_path: Path) -> AsyncIterator[Worker]:
    process = start(emulator.settings(), log_path)
    try:
        yield await running(emulator)
    finally:
        await asyncio.to_thread(stop_process_group, process)


if __name__ == "__main__":
    main()
