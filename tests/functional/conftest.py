"""Functional fixtures: the Hatchet engine emulator in the test's event loop, a
real hatchet-sdk worker (tests/functional/engine_worker.py) in its own process, and
the scripted Hatchway the clients' tests speak to (tests/functional/fake_hatchway.py).

One emulator and one worker serve the whole session (a worker takes ~2 s to
start); tests that change the emulator itself (restarts, faults) make their own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from hatchet_sdk import ClientConfig, ClientTLSConfig, Hatchet
from hatchet_sdk.contracts import dispatcher_pb2, dispatcher_pb2_grpc

from hatchway_local.hatchet_emulator.server import HatchetEmulator
from tests.conftest import REPO_ROOT, stop_process_group
from tests.functional.fake_hatchway import FakeHatchway

WORKER_MODULE = "tests.functional.engine_worker"


def client_for(emulator: HatchetEmulator) -> Hatchet:
    return Hatchet(
        config=ClientConfig(
            token=emulator.token,
            host_port=emulator.grpc_address,
            server_url=emulator.server_url,
            tenant_id=emulator.tenant_id,
            tls_config=ClientTLSConfig(strategy="none"),
        )
    )


def start_worker(settings: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            env=env,
            cwd=log_path.parent,  # the SDK reads .env files from its working directory
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def wait_for_worker(emulator: HatchetEmulator, timeout_s: float = 30.0) -> None:
    async def listening() -> None:
        while not any(w.listeners for w in emulator.engine.workers.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(listening(), timeout_s)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def emulator() -> AsyncIterator[HatchetEmulator]:
    async with HatchetEmulator(unknown_run_wait_s=1.0) as running:
        yield running


@pytest.fixture(scope="session")
def worker_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker") / "worker.log"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def worker(emulator: HatchetEmulator, worker_log: Path) -> AsyncIterator[None]:
    process = start_worker(emulator.settings(), worker_log)
    try:
        await wait_for_worker(emulator)
        yield
    finally:
        # Off the loop: the worker's shutdown calls the emulator, which runs on this loop.
        await asyncio.to_thread(stop_process_group, process)


@pytest.fixture(scope="session")
def hatchet(emulator: HatchetEmulator) -> Hatchet:
    return client_for(emulator)


class RawEvents:
    """Dispatcher.SubscribeToWorkflowEvents through the SDK's generated stub, so tests
    see resource types, event indexes and status codes that the SDK's iterator hides."""

    def __init__(self, emulator: HatchetEmulator, token: str | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(emulator.grpc_address)
        self._stub = dispatcher_pb2_grpc.DispatcherStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token or emulator.token}"),)

    def subscribe(self, run_id: str) -> grpc.aio.UnaryStreamCall:
        return self._stub.SubscribeToWorkflowEvents(
            dispatcher_pb2.SubscribeToWorkflowEventsRequest(workflow_run_id=run_id),
            metadata=self._metadata,
        )

    async def close(self) -> None:
        await self._channel.close()


@pytest_asyncio.fixture(loop_scope="session")
async def raw_events(emulator: HatchetEmulator) -> AsyncIterator[RawEvents]:
    raw = RawEvents(emulator)
    yield raw
    await raw.close()


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[FakeHatchway]:
    """A scripted Hatchway (HTTP API and WebSocket) on 127.0.0.1, for the clients' tests."""
    server = await FakeHatchway().start()
    try:
        yield server
    finally:
        await server.close()
