"""A proxy in front of local AWS (moto in server mode) that sees every request a
process makes: it counts them per operation and fails chosen ones on purpose, as
AWS does on an internal error or on throttling after the SDK's retries.

A process uses it through the SDK's own endpoint variables (``AWS_ENDPOINT_URL``,
or ``AWS_ENDPOINT_URL_DYNAMODB`` for one service), so its code is the code that
runs on AWS. Fault tests use the failures; benchmarks use the counts, and with
``meter_capacity`` the DynamoDB capacity each request would consume on AWS
(``capacity``: write and read request units by DynamoDB's sizing rules).

Two kinds of failure, both answered ``500 InternalServerError``:
- *refused*: the request never reaches moto;
- *landed*: it is forwarded, applied, and answered 500 anyway (a timeout after the
  commit). A client that retries then meets its own write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

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


# --- DynamoDB capacity, by its sizing rules ----------------------------------------------
# An item's size: each attribute name's UTF-8 length plus its value's; a number about
# 1 byte per 2 significant digits plus 1; a list or map 3 bytes plus 1 per element.
# Writes: 1 WRU per started KB of the item (for an update or delete: the item as
# stored); in a transaction 2 per KB. Reads: 1 RRU per started 4 KB strongly
# consistent, half that eventually consistent, 2 transactional; a query sums its
# items before rounding up.


def _number_size(text: object) -> int:
    return len(str(text).lstrip("-").replace(".", "").lstrip("0")) // 2 + 1


_SCALAR_SIZES: dict[str, Callable[[object], int]] = {
    "S": lambda text: len(str(text).encode()),
    "N": _number_size,
    "B": lambda text: len(base64.b64decode(str(text))),
    "BOOL": lambda _value: 1,
    "NULL": lambda _value: 1,
}
_SET_OF = {"SS": "S", "NS": "N", "BS": "B"}


def value_size(value: dict[str, Any]) -> int:
    (kind, inner), *_ = value.items()
    if kind in _SCALAR_SIZES:
        return _SCALAR_SIZES[kind](inner)
    if kind in _SET_OF and isinstance(inner, list):
        return sum(_SCALAR_SIZES[_SET_OF[kind]](element) for element in inner)
    if kind == "L" and isinstance(inner, list):
        return 3 + sum(1 + value_size(element) for element in inner)
    if kind == "M" and isinstance(inner, dict):
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in inner.items())
    return 0


def item_size(item: dict[str, dict[str, Any]]) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def write_units(size: int, *, transactional: bool = False) -> int:
    return max(1, math.ceil(size / 1024)) * (2 if transactional else 1)


def read_units(size: int, *, consistent: bool, transactional: bool = False) -> float:
    blocks = max(1, math.ceil(size / 4096))
    return blocks * (2.0 if transactional else 1.0 if consistent else 0.5)


@dataclass
class Capacity:
    """What the proxied DynamoDB requests would consume on AWS."""

    wru: float = 0.0
    rru: float = 0.0
    per_operation: dict[str, float] = field(default_factory=dict)  # WRU + RRU, per operation
    # Sizes of items that updates and deletes touch, read once per key from moto
    # (the first time a key is seen): what AWS bills an update by.
    stored_sizes: dict[str, int] = field(default_factory=dict)

    def add(self, operation: str, units: float, *, write: bool) -> None:
        if write:
            self.wru += units
        else:
            self.rru += units
        self.per_operation[operation] = self.per_operation.get(operation, 0.0) + units


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
    meter_capacity: bool = False  # fill ``capacity`` (costs a GetItem per new updated key)
    capacity: Capacity = field(default_factory=Capacity)
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
            if self.meter_capacity and upstream.status == 200 and target_is_dynamodb(request):
                await self._meter(request, operation, body, payload)
            return web.Response(
                status=upstream.status,
                body=payload,
                headers={
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() not in _HOP_HEADERS and k.lower() != "content-encoding"
                },
            )

    # -- capacity ----------------------------------------------------------------------

    async def _stored_size(
        self, request: web.Request, table: str, key: dict[str, dict[str, Any]]
    ) -> int:
        """The stored item's size (the key's alone if there is none), read once per key."""
        name = table + json.dumps(key, sort_keys=True)
        if name not in self.capacity.stored_sizes:
            assert self._session is not None  # noqa: S101 - started
            # moto does not check signatures: the request's own headers will do.
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            headers["X-Amz-Target"] = "DynamoDB_20120810.GetItem"
            query = json.dumps({"TableName": table, "Key": key, "ConsistentRead": True})
            async with self._session.post(self.upstream + "/", headers=headers, data=query) as got:
                found = json.loads(await got.read()) if got.status == 200 else {}
            self.capacity.stored_sizes[name] = item_size(found.get("Item") or key)
        return self.capacity.stored_sizes[name]

    async def _write_size(self, request: web.Request, kind: str, action: dict[str, Any]) -> int:
        if kind == "Put":
            return item_size(action["Item"])
        return await self._stored_size(request, action["TableName"], action["Key"])

    async def _meter(
        self, request: web.Request, operation: str, body: bytes, payload: bytes
    ) -> None:
        sent: dict[str, Any] = json.loads(body or b"{}")
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            kind = operation.removesuffix("Item")
            self.capacity.add(
                operation, write_units(await self._write_size(request, kind, sent)), write=True
            )
        elif operation == "TransactWriteItems":
            # A ConditionCheck is counted as a transactional write of its item: an upper bound.
            for entry in sent.get("TransactItems", []):
                (kind, action), *_ = entry.items()
                size = await self._write_size(request, kind, action)
                self.capacity.add(operation, write_units(size, transactional=True), write=True)
        elif operation == "BatchWriteItem":
            for table, requests in sent.get("RequestItems", {}).items():
                for entry in requests:
                    if "PutRequest" in entry:
                        size = item_size(entry["PutRequest"]["Item"])
                    else:
                        size = await self._stored_size(
                            request, table, entry["DeleteRequest"]["Key"]
                        )
                    self.capacity.add(operation, write_units(size), write=True)
        elif operation in ("GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"):
            self._meter_read(operation, sent, json.loads(payload or b"{}"))

    def _meter_read(self, operation: str, sent: dict[str, Any], answer: dict[str, Any]) -> None:
        consistent = bool(sent.get("ConsistentRead"))
        if operation == "GetItem":
            size = item_size(answer.get("Item") or {})
            self.capacity.add(operation, read_units(size, consistent=consistent), write=False)
        elif operation in ("Query", "Scan"):
            size = sum(item_size(item) for item in answer.get("Items", []))
            self.capacity.add(operation, read_units(size, consistent=consistent), write=False)
        elif operation == "BatchGetItem":
            for table, items in answer.get("Responses", {}).items():
                strong = bool(sent.get("RequestItems", {}).get(table, {}).get("ConsistentRead"))
                for item in items:
                    units = read_units(item_size(item), consistent=strong)
                    self.capacity.add(operation, units, write=False)
        else:
            for response in answer.get("Responses", []):
                units = read_units(
                    item_size(response.get("Item") or {}), consistent=True, transactional=True
                )
                self.capacity.add(operation, units, write=False)

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


def target_is_dynamodb(request: web.Request) -> bool:
    return request.headers.get("X-Amz-Target", "").startswith("DynamoDB_")


def _internal_error() -> web.Response:
    return web.Response(
        status=500,
        text=_INTERNAL_ERROR,
        content_type="application/x-amz-json-1.0",
    )
