"""`hatchway hatchet-emulator` as a user runs it: a separate process whose printed
settings are all an unmodified hatchet-sdk worker and client need."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hatchway_local.demo.workflows import ANNA_KARENINA
from tests.conftest import REPO_ROOT, stop_process_group
from tests.functional.conftest import start_worker


def read_settings(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> dict[str, str]:
    """The dotenv lines the emulator prints, up to its `ready` line."""
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    threading.Thread(
        target=lambda: [lines.put(raw.decode().strip()) for raw in stdout], daemon=True
    ).start()
    settings: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line == "ready":
            return settings
        name, _, value = line.partition("=")
        settings[name] = value
    raise AssertionError(f"emulator did not print 'ready'; got {settings}")


@pytest.fixture
def emulator_process() -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hatchway_local.cli", "hatchet-emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield process, read_settings(process)
    finally:
        stop_process_group(process)


def clean_env(settings: dict[str, str]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HATCHET_")}
    return {**inherited, **settings, "PYTHONPATH": str(REPO_ROOT)}


def control(
    settings: dict[str, str], method: str, path: str, body: object = None, token: str | None = None
) -> tuple[int, object]:
    request = urllib.request.Request(  # noqa: S310 - loopback URL from the emulator
        settings["HATCHET_CLIENT_SERVER_URL"] + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token or settings['HATCHET_CLIENT_TOKEN']}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_registered_worker(settings: dict[str, str], timeout_s: float = 30.0) -> None:
    """Workflows exist once their worker registered (as on Hatchet: trigger after deploy)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _status, state = control(settings, "GET", "/_emulator/state")
        if isinstance(state, dict) and state["workers"] >= 1:
            return
        time.sleep(0.1)
    raise AssertionError("the worker did not register")


def test_printed_settings_are_enough_for_an_unmodified_worker_and_client(
    emulator_process: tuple[subprocess.Popen[bytes], dict[str, str]], tmp_path: Path
) -> None:
    _process, settings = emulator_process
    assert settings["HATCHET_CLIENT_TLS_STRATEGY"] == "none"
    assert settings["HATCHET_CLIENT_TOKEN"].startswith("ey")

    worker = start_worker(clean_env(settings), tmp_path / "worker.log")
    try:
        wait_for_registered_worker(settings)
        client = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.functional.stream_client",
                "demo-stream",
                json.dumps({"start_delay_seconds": 1.0, "pause_seconds": 0.005}),
            ],
            env=clean_env(settings),
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        stop_process_group(worker)

    # On SIGTERM the worker pauses its assignments through the REST API first.
    assert "task assignment paused" in (tmp_path / "worker.log").read_text()

    assert client.returncode == 0, client.stderr.decode()[-3000:]
    lines = [json.loads(line) for line in client.stdout.decode().splitlines()]
    assert "".join(line["chunk"] for line in lines if "chunk" in line) == ANNA_KARENINA
    assert lines[-1] == {
        "result": {"demo-stream": {"chunks": 37, "characters": len(ANNA_KARENINA)}},
        "status": "COMPLETED",
    }


def test_control_api_needs_the_token_and_restarts_the_engine(
    emulator_process: tuple[subprocess.Popen[bytes], dict[str, str]],
) -> None:
    _process, settings = emulator_process
    assert control(settings, "GET", "/_emulator/state", token="wrong")[0] == 401
    assert control(settings, "GET", "/_emulator/state") == (
        200,
        {"runs": 0, "workers": 0, "subscriptions": 0},
    )
    assert (
        control(settings, "POST", "/_emulator/faults/subscriptions", {"refuseForSeconds": 5})[0]
        == 200
    )
    assert control(settings, "DELETE", "/_emulator/faults")[0] == 200
    assert control(settings, "GET", "/_emulator/runs/nope")[0] == 404

    assert control(settings, "POST", "/_emulator/restart", {"downForSeconds": 0.5})[0] == 202
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline:
        try:
            status = control(settings, "GET", "/_emulator/state")[0]
            if status == 200:
                break
        except OSError:  # down for the moment
            time.sleep(0.1)
    assert status == 200


def test_sigterm_stops_the_emulator(
    emulator_process: tuple[subprocess.Popen[bytes], dict[str, str]],
) -> None:
    process, _settings = emulator_process
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(10) == 0
