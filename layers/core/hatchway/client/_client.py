"""HatchwayClient: start runs over HTTP, follow them over shared WebSockets."""

from __future__ import annotations

import asyncio
import inspect
import random as _random
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp

from hatchway.client._backoff import Backoff
from hatchway.client._connection import Connection
from hatchway.client._http import request_json
from hatchway.client._run import Run
from hatchway.client._types import HatchwayError, Sleep, TokenSource


class HatchwayClient:
    """A Hatchway client (docs/protocol.md), one per application or task group::

        async with HatchwayClient("https://api.example.com") as client:
            run = await client.start("demo-stream", {"words": 5})
            async for frame in run.frames():
                ...

    ``websocket_url``: used by ``attach`` when it is not given there. ``get_token``:
    a fresh run token for a run id (sync or async), asked when the server says
    ``unauthorized``; without it such a run fails. ``fetch_references``: chunks sent by
    reference get ``data`` filled in. Reconnects wait ``random() * min(cap, base *
    2**n)``; after ``fallback_after`` failed connects in a row, runs catch up over
    HTTP. ``headers`` go with ``POST /runs`` (your own auth). ``session``: an aiohttp
    session to use (not closed by the client). ``sleep``: how backoff waits (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        websocket_url: str | None = None,
        get_token: TokenSource | None = None,
        fetch_references: bool = True,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 10.0,
        fallback_after: int = 3,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        random: Callable[[], float] = _random.random,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.websocket_url = websocket_url
        self.get_token = get_token
        self.fetch_references = fetch_references
        self.backoff = Backoff(backoff_base_s, backoff_cap_s, random)
        self.fallback_after = fallback_after
        self.headers = dict(headers or {})
        self.sleep = sleep
        self._session = session
        self._owns_session = session is None
        self._connections: dict[str, Connection] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(
        self,
        workflow: str,
        input: Mapping[str, Any] | None = None,  # noqa: A002 - the wire's name
        metadata: Mapping[str, str] | None = None,
    ) -> Run:
        """``POST /runs``: start a workflow run; raises HatchwayError as the API refuses."""
        body: dict[str, Any] = {"workflow": workflow, "input": dict(input or {})}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        answer = await request_json(
            await self.http(),
            "POST",
            f"{self.base_url}/runs",
            expect=201,
            headers=self.headers,
            body=body,
        )
        if not isinstance(answer, dict) or not {"runId", "token"} <= set(answer):
            raise HatchwayError("bad_response", "POST /runs: no runId and token", 201)
        websocket_url = answer.get("websocketUrl") or self.websocket_url
        if not websocket_url:
            raise HatchwayError("bad_response", "POST /runs: no websocketUrl", 201)
        return Run(
            self,
            str(answer["runId"]),
            str(answer["token"]),
            str(websocket_url),
            workflow=answer.get("workflow", workflow),
            status=answer.get("status"),
            expires_at=answer.get("expiresAt"),
        )

    def attach(self, run_id: str, token: str, websocket_url: str | None = None) -> Run:
        """An existing run, followed with its run token."""
        url = websocket_url or self.websocket_url
        if not url:
            raise HatchwayError("bad_request", "attach needs a websocket_url (here or the client)")
        return Run(self, run_id, token, url)

    async def close(self) -> None:
        """Stop every run followed (their iterations raise HatchwayError "closed"),
        close every socket and the session the client made."""
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(c.close() for c in connections))
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- for runs and connections ------------------------------------------------------

    def connection(self, websocket_url: str) -> Connection:
        """The socket shared by every run on ``websocket_url``."""
        if self._closed:
            raise HatchwayError("closed", "the client is closed")
        found = self._connections.get(websocket_url)
        if found is None:
            found = self._connections[websocket_url] = Connection(self, websocket_url)
        return found

    async def http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise HatchwayError("closed", "the client is closed")
        if self._session is None:
            # No total: a download or a stream may take long; a stalled one may not.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def renew_token(self, run: Run) -> bool:
        """Ask ``get_token`` for a fresh token of ``run``: False when there is none."""
        if self.get_token is None:
            return False
        token = self.get_token(run.run_id)
        if inspect.isawaitable(token):
            token = await token
        run.token = str(token)
        return True

    async def frames_page(self, run: Run, after: int, limit: int) -> dict[str, Any]:
        """``GET /runs/{id}/frames?after&limit`` with the run's token (renewed once
        through ``get_token`` when the API says unauthorized)."""
        for attempt in range(2):
            try:
                page = await request_json(
                    await self.http(),
                    "GET",
                    f"{self.base_url}/runs/{run.run_id}/frames",
                    headers={"Authorization": f"Bearer {run.token}"},
                    params={"after": str(after), "limit": str(limit)},
                )
            except HatchwayError as error:
                if error.code == "unauthorized" and attempt == 0 and await self.renew_token(run):
                    continue
                raise
            if not isinstance(page, dict):
                raise HatchwayError("bad_response", "GET /runs/{id}/frames: not an object")
            return page
        raise HatchwayError("unauthorized", f"run {run.run_id}: a renewed token was refused")
