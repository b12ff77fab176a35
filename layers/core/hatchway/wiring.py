"""Builds the adapters from the process's settings: the one place that knows how
a Lambda or the relay is put together (handlers and the CLI only call these)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from .connections import Connections
from .payloads import Payloads
from .run_queue import RunQueue
from .settings import RelaySettings, Settings
from .store import Store
from .tokens import RunTokens, signing_key
from .trigger_api import create_app
from .websocket import WebSocketApi


def run_tokens(settings: Settings) -> RunTokens:
    key = signing_key(settings.token_signing_key, settings.token_secret_arn)
    return RunTokens(key, settings.token_ttl_seconds)


def store(settings: Settings) -> Store:
    return Store(settings.table_name, settings.frame_retention_seconds)


def payloads(settings: Settings) -> Payloads:
    return Payloads.from_settings(settings)


def websocket_api(settings: Settings) -> WebSocketApi:
    return WebSocketApi(
        store(settings),
        Connections(settings.management_api_url or None),
        tokens=lambda: run_tokens(settings),
        payloads=payloads(settings),
    )


def trigger_app(settings: Settings):  # type: ignore[no-untyped-def]  # noqa: ANN201 - FastAPI app
    from .hatchet_adapter import HatchetTrigger  # noqa: PLC0415 - imports hatchet_sdk (slow)

    return create_app(
        store=store(settings),
        queue=RunQueue(settings.run_queue_url),
        tokens=run_tokens(settings),
        hatchet=HatchetTrigger(),
        allowed_workflows=settings.workflow_allow_list,
        websocket_url=settings.websocket_url,
        payloads=payloads(settings),
    )


async def run_relay(settings: RelaySettings, on_ready: Callable[[], None] | None = None) -> None:
    """The relay process until SIGTERM or SIGINT (Python as PID 1 needs its own handler)."""
    from .hatchet_adapter import HatchetEvents  # noqa: PLC0415
    from .relay.service import Relay  # noqa: PLC0415

    hatchet = HatchetEvents()
    relay = Relay(
        settings,
        store=store(settings),
        queue=RunQueue(settings.run_queue_url),
        connections=Connections(settings.management_api_url or None),
        hatchet=hatchet,
        payloads=payloads(settings),
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.stop)
    if on_ready is not None:
        loop.call_soon(on_ready)
    try:
        await relay.run()
    finally:
        await hatchet.close()
