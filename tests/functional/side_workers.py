"""A second real hatchet-sdk worker in its own process, for the tests that need one
beside the main test worker (scheduling_worker.py, slot_worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from hatchway_local.hatchet_emulator.engine import Worker
from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.conftest import REPO_ROOT, stop_process_group


def _spawn(emulator: HatchetEmulator, module: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **emulator.settings(), "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.asynccontextmanager
async def worker_process(
    emulator: HatchetEmulator, module: str, name: str, log_path: Path, timeout_s: float = 30.0
) -> AsyncIterator[Worker]:
    """``python -m <module>`` with the emulator's settings, once its worker ``name`` listens
    (as conftest starts and waits for the main one); stopped, with its group, after."""
    process = _spawn(emulator, module, log_path)

    async def listening() -> Worker:
        while True:
            for worker in emulator.engine.workers.values():
                if worker.name == name and worker.listeners:
                    return worker
            await asyncio.sleep(0.05)

    try:
        yield await asyncio.wait_for(listening(), timeout_s)
    finally:
        await asyncio.to_thread(stop_process_group, process)
