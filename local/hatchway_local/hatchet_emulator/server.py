"""The Hatchet engine emulator as a server: gRPC and REST on loopback, one engine.

Usable as a library (tests start it in their own event loop) and as
``hatchway hatchet-emulator``. ``settings()`` gives the ``HATCHET_CLIENT_*``
variables an unmodified hatchet-sdk client or worker needs to reach it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Self

import grpc
from aiohttp import web

from .engine import Engine
from .grpc_api import HatchetServices
from .rest_api import build_rest_app

HOST = "127.0.0.1"

# hatchet-sdk pings every 10 s even on idle channels; without these the server
# answers GOAWAY "too_many_pings" and the SDK's streams break now and then.
GRPC_SERVER_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)


def _b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def mint_token(tenant_id: str, server_url: str, grpc_address: str) -> str:
    """An unsigned JWT with the claims hatchet-sdk reads (it never checks the signature)."""
    header = _b64url({"alg": "none", "typ": "JWT"})
    claims = _b64url(
        {
            "sub": tenant_id,
            "server_url": server_url,
            "grpc_broadcast_address": grpc_address,
            "iss": "hatchway-hatchet-emulator",
            "iat": int(time.time()),
        }
    )
    return f"{header}.{claims}.unsigned"


class HatchetEmulator:
    """A running emulator. ``async with HatchetEmulator() as hatchet: ...``"""

    def __init__(
        self,
        *,
        grpc_port: int = 0,
        rest_port: int = 0,
        worker_timeout_s: float = 30.0,
        unknown_run_wait_s: float = 10.0,
    ) -> None:
        self.tenant_id = str(uuid.uuid4())
        self.engine = Engine(
            self.tenant_id,
            worker_timeout_s=worker_timeout_s,
            unknown_run_wait_s=unknown_run_wait_s,
        )
        self.grpc_port = grpc_port
        self.rest_port = rest_port
        self.token = ""
        self._grpc: grpc.aio.Server | None = None
        self._rest: web.AppRunner | None = None
        self._restarting: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._grpc is not None

    @property
    def server_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def grpc_address(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def settings(self) -> dict[str, str]:
        """The environment an unmodified hatchet-sdk needs (also printed by the CLI)."""
        return {
            "HATCHET_CLIENT_TOKEN": self.token,
            "HATCHET_CLIENT_TLS_STRATEGY": "none",
            "HATCHET_CLIENT_HOST_PORT": self.grpc_address,
            "HATCHET_CLIENT_SERVER_URL": self.server_url,
            "HATCHET_CLIENT_TENANT_ID": self.tenant_id,
        }

    async def start(self) -> None:
        """Bind both servers; the first start picks free ports when given 0, restarts reuse them."""
        self.engine.start()
        rest = web.AppRunner(build_rest_app(self), access_log=None)
        await rest.setup()
        site = web.TCPSite(rest, HOST, self.rest_port, reuse_address=True)
        await site.start()
        self.rest_port = int(rest.addresses[0][1])
        self._rest = rest
        # The token names the REST port, so it is minted once both ports are known.
        server = grpc.aio.server(options=GRPC_SERVER_OPTIONS)
        bound = server.add_insecure_port(f"{HOST}:{self.grpc_port}")
        if not bound:
            raise OSError(f"cannot bind gRPC port {self.grpc_port}")
        self.grpc_port = bound
        self.token = self.token or mint_token(self.tenant_id, self.server_url, self.grpc_address)
        server.add_generic_rpc_handlers(HatchetServices(self.engine, self.token).handlers())
        await server.start()
        self._grpc = server

    async def stop(self) -> None:
        """Stop serving as a crashed engine would: open streams break; runs are kept."""
        self.engine.break_subscriptions()
        if self._grpc is not None:
            await self._grpc.stop(grace=None)
            self._grpc = None
        if self._rest is not None:
            await self._rest.cleanup()
            self._rest = None

    async def restart(self, down_for_s: float = 0.0) -> None:
        """Stop, stay down for a while, start again on the same ports with the same runs."""
        await self.stop()
        await asyncio.sleep(down_for_s)
        await self.start()

    def schedule_restart(self, down_for_s: float) -> None:
        """Restart in the background (the REST control endpoint cannot await its own stop)."""
        self._restarting = asyncio.get_running_loop().create_task(self.restart(down_for_s))

    async def close(self) -> None:
        if self._restarting is not None:
            await asyncio.gather(self._restarting, return_exceptions=True)
        await self.stop()
        await self.engine.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
