"""Shared test helpers: processes started by tests always end with the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

# gRPC core logs every GOAWAY at INFO on stderr; tests stop servers on purpose.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM the process's session, then SIGKILL it if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout_s)
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
