"""The relay's health: a heartbeat file and the check a container runs on it.

The relay touches the file (``RELAY_HEALTH_FILE``, default
``/tmp/hatchway-relay-heartbeat``) every ``RELAY_HEALTH_SECONDS`` (5) from its event
loop, and only while none of its loops keeps failing (``Relay.healthy``). The check
(``hatchway-relay --health``, or ``python -m hatchway.relay.health``: the task
definition's HealthCheck command) exits 0 when the file is younger than three
intervals and 1 otherwise, so a relay whose event loop is blocked or whose loops
fail over and over is replaced by ECS. It reads nothing but these two variables:
it must answer fast, with no AWS call and without the relay's other settings.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hatchway.settings import RelayHealthSettings, SettingsError, load

STALE_AFTER_INTERVALS = 3


def touch(path: str) -> None:
    """Write the heartbeat: the file's modification time is now."""
    Path(path).touch()
    os.utime(path)  # an existing file: touch() alone may keep the old time on some mounts


def is_fresh(path: str, max_age_s: float, now: float | None = None) -> bool:
    """The heartbeat at ``path`` was written less than ``max_age_s`` ago."""
    try:
        written = Path(path).stat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - written < max_age_s


def check(settings: RelayHealthSettings) -> int:
    """0 (healthy) when the heartbeat is fresh, else 1: a HealthCheck's exit code."""
    max_age_s = STALE_AFTER_INTERVALS * settings.health_interval_seconds
    if is_fresh(settings.health_file, max_age_s):
        return 0
    sys.stderr.write(f"unhealthy: no heartbeat in {settings.health_file} for {max_age_s:g}s\n")
    return 1


def main() -> int:
    try:
        settings = load(RelayHealthSettings)
    except SettingsError as error:
        sys.stderr.write(f"{error}\n")
        return 1
    return check(settings)


if __name__ == "__main__":
    sys.exit(main())
