"""The relay's health check: a heartbeat the relay touches while its loops are
healthy, and ``hatchway-relay --health``, which exits 0 only while it is fresh."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hatchway.relay import health, service
from hatchway.relay.main import main
from hatchway.relay.service import UNHEALTHY_FAILURES
from hatchway.settings import RelayHealthSettings
from tests.unit.test_relay_upkeep import Queue, Table, relay


def test_a_fresh_heartbeat_is_healthy_and_a_stale_or_missing_one_is_not(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat"
    settings = RelayHealthSettings(RELAY_HEALTH_FILE=str(beat), RELAY_HEALTH_SECONDS=5)
    assert health.check(settings) == 1  # never written

    health.touch(str(beat))
    assert health.check(settings) == 0
    stale = time.time() - 3 * 5 - 1  # older than three intervals
    os.utime(beat, (stale, stale))
    assert health.check(settings) == 1
    assert health.is_fresh(str(beat), 15, now=stale + 14)  # the bound is three intervals


def test_hatchway_relay_health_exits_0_or_1_reading_only_its_own_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beat = tmp_path / "heartbeat"
    monkeypatch.setenv("RELAY_HEALTH_FILE", str(beat))
    monkeypatch.setenv("RELAY_HEALTH_SECONDS", "2")
    monkeypatch.delenv("TABLE_NAME", raising=False)  # the relay's settings are not needed
    assert main(["--health"]) == 1
    health.touch(str(beat))
    assert main(["--health"]) == 0
    # As the container's HealthCheck runs it: a process of its own.
    env = {**os.environ, "RELAY_HEALTH_FILE": str(beat), "RELAY_HEALTH_SECONDS": "2"}
    ran = subprocess.run(
        [sys.executable, "-m", "hatchway.relay.health"], env=env, check=False, timeout=60
    )
    assert ran.returncode == 0
    beat.unlink()
    ran = subprocess.run(
        [sys.executable, "-m", "hatchway.relay.main", "--health"],
        env=env,
        check=False,
        timeout=60,
        capture_output=True,
    )
    assert ran.returncode == 1
    assert b"unhealthy" in ran.stderr


async def test_the_relay_touches_its_heartbeat_only_while_its_loops_are_healthy(
    tmp_path: Path,
) -> None:
    beat = tmp_path / "heartbeat"
    upkeep = relay(Table(), Queue())
    upkeep.settings.health_file = str(beat)
    assert await upkeep._health_beat()
    assert health.is_fresh(str(beat), 1)
    beat.unlink()

    upkeep.loop_failures["receive"] = UNHEALTHY_FAILURES  # a loop that keeps failing
    assert not upkeep.healthy
    assert not await upkeep._health_beat()
    assert not beat.exists()

    upkeep.loop_failures["receive"] = UNHEALTHY_FAILURES - 1  # it failed, then ran again
    assert await upkeep._health_beat()
    assert beat.exists()


async def test_a_loop_that_keeps_failing_is_counted_and_one_that_ran_is_not() -> None:
    failures: dict[str, int] = {}
    calls = 0
    done = asyncio.Event()

    async def failing() -> None:
        nonlocal calls
        calls += 1
        if calls > UNHEALTHY_FAILURES:
            done.set()
            return  # the loop ends (as at a stop): the supervisor returns
        raise RuntimeError("boom")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service, "SUPERVISOR_BACKOFF_S", (0.0,))
        await asyncio.wait_for(service._supervised("receive", failing, failures), 10)
    assert done.is_set()
    assert failures == {"receive": UNHEALTHY_FAILURES}
