"""A proxy in front of local AWS (moto in server mode) that sees every request a
process makes: it counts them per operation and fails chosen ones on purpose, as
AWS does on an internal error or on throttling after the SDK's retries.

A process uses it through the SDK's own endpoint variables (``AWS_ENDPOINT_URL``,
or ``AWS_ENDPOINT_URL_DYNAMODB`` for one service), so its code is the code that
runs on AWS. Fault tests use the failures; benchmarks use the counts.

Two kinds of failure, both answered ``500 InternalServerError``:
- *refused*: the request never reaches moto;
- *landed*: it is forwarded, applied, and answered 500 anyway (a timeout after the
  commit). A client that retries then meets its own write.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Self

import aiohttp
from aiohttp import web

DYNAMODB_WRITES = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
)
# Headers that belong to one hop, not to the request (RFC 9110, 7.6.1).
_HOP_HEADERS = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade"}
)
_INTERNAL_ERROR = json.dumps(
    {
        "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
        "message": "Internal server error (injected by the local AWS proxy)",
    }
)


def operation_of(request: web.Request) -> str:
    """``TransactWriteItems``, ``ReceiveMessage``...: from the JSON protocols' target
    header, else the query protocol's Action, else the HTTP method (S3)."""
    target = request.headers.get("X-Amz-Target", "")
    if target:
        return target.rpartition(".")[2]
    return request.query.get("Action") or request.method


@dataclass
class _EveryNth:
    operations: frozenset[str]
    every: int
    landed_every: int  # of those failed, every k-th is applied first (0: none)
    seen: int = 0
    failed: int = 0


@dataclass
class _Burst:
    operation: str
    remaining: int
    when: bytes  # only requests whose body holds these bytes


@dataclass
class AwsProxy:
    upstream: str  # moto's endpoint URL
    host: str = "127.0.0.1"
    port: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # injected, per operation
    landed: Counter[str] = field(default_factory=Counter)  # of those, applied first
    _every: list[_EveryNth] = field(default_factory=list)
    _bursts: list[_Burst] = field(default_factory=list)
    _seen: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults ------------------------------------------------------------------------

    def fail_every(
        self, every: int, operations: frozenset[str] = DYNAMODB_WRITES, *, landed_every: int = 0
    ) -> None:
        """Fail 1 in ``every`` of these operations (counted together)."""
        self._every.append(_EveryNth(frozenset(operations), every, landed_every))

    def fail_burst(self, count: int, operation: str, *, when: bytes) -> None:
        """Refuse the next ``count`` requests of ``operation`` whose body holds ``when``."""
        self._bursts.append(_Burst(operation, count, when))

    def burst_left(self) -> int:
        return sum(burst.remaining for burst in self._bursts)

    def clear_faults(self) -> None:
        self._every.clear()
        self._bursts.clear()

    def _fault_for(self, operation: str, body: bytes) -> str | None:
        """ "refused", "landed" or None for this request (and count it)."""
        for burst in self._bursts:
            if burst.remaining and burst.operation == operation and burst.when in body:
                burst.remaining -= 1
                return "refused"
        for rule in self._every:
            if operation in rule.operations:
                rule.seen += 1
                if rule.seen % rule.every == 0:
                    rule.failed += 1
                    if rule.landed_every and rule.failed % rule.landed_every == 0:
                        return "landed"
                    return "refused"
        return None

    # -- waiting -----------------------------------------------------------------------

    async def wait_for(self, operation: str, count: int = 1, timeout_s: float = 60.0) -> None:
        """Until ``count`` requests of ``operation`` went through (a process is up)."""
        async with asyncio.timeout(timeout_s), self._seen:
            await self._seen.wait_for(lambda: self.counts[operation] >= count)

    # -- serving -----------------------------------------------------------------------

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        operation = operation_of(request)
        self.counts[operation] += 1
        async with self._seen:
            self._seen.notify_all()
        fault = self._fault_for(operation, body)
        if fault is not None:
            self.failures[operation] += 1
        if fault == "refused":
            return _internal_error()
        assert self._session is not None  # noqa: S101 - started
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            if fault == "landed":
                self.landed[operation] += 1
                return _internal_error()
            return web.Response(
                status=upstream.status,
                body=payload,
                headers={
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() not in _HOP_HEADERS and k.lower() != "content-encoding"
                },
            )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


def _internal_error() -> web.Response:
    return web.Response(
        status=500,
        text=_INTERNAL_ERROR,
        content_type="application/x-amz-json-1.0",
    )
