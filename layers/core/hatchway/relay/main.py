"""The relay process (``hatchway-relay``, the image's command): settings from the
environment, validated at start; runs until SIGTERM or SIGINT.

``hatchway-relay --health`` is the container's health check instead: it exits 0
when the running relay's heartbeat is fresh, 1 otherwise (``relay/health.py``)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

from hatchway import wiring
from hatchway.hatchet_adapter import HatchetEvents
from hatchway.observability import logger
from hatchway.run_queue import RunQueue
from hatchway.settings import RelaySettings, SettingsError, load

from . import health
from .management_api import AsyncConnections
from .service import Relay


async def run_relay(settings: RelaySettings, on_ready: Callable[[], None] | None = None) -> None:
    """The relay until SIGTERM or SIGINT (Python as PID 1 needs its own handler)."""
    hatchet = HatchetEvents(settings.hatchet)
    connections = AsyncConnections(settings.management_api_url)
    relay = Relay(
        settings,
        store=wiring.store(settings),
        queue=RunQueue(settings.run_queue_url),
        connections=connections,
        hatchet=hatchet,
        payloads=wiring.payloads(settings),
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.stop)
    if on_ready is not None:
        loop.call_soon(on_ready)
    try:
        await relay.run()
    finally:
        await connections.close_session()
        await hatchet.close()


def _say_ready() -> None:
    sys.stdout.write("ready\n")  # for whoever started us (the local stack waits for it)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    if "--health" in (sys.argv[1:] if argv is None else argv):
        return health.main()
    try:
        settings = load(RelaySettings)
    except SettingsError as error:
        logger.error("cannot start the relay", error=str(error))
        return 2
    asyncio.run(run_relay(settings, on_ready=_say_ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
