"""The local API Gateway: a WebSocket API and an HTTP API served from a SAM
template, invoking the template's own handlers (see ``lambda_runtime``).

WebSocket side (``ws://127.0.0.1:<port>/<stage>``): the REQUEST authorizer and
``$connect`` run before the upgrade is accepted; messages are routed by the
route selection expression with ``$default`` as fallback; ``$disconnect`` runs
however a connection ends. The ``@connections`` management API is served at
``http://127.0.0.1:<port>/<stage>/@connections/<id>`` with API Gateway's
semantics (410, 413, 403, one message per POST), which moto lacks. Its callers
must sign with SigV4 (``execute-api``) using credentials the emulator gives its
processes (see ``sigv4``); a client message whose route key comes out as
``$connect`` or ``$disconnect`` goes to ``$default``; a binary frame closes the
connection with 1003, as on AWS.

The fault-injection control API (``/_emulator/...`` on the WebSocket port) wants
``Authorization: Bearer <control_token>``; the token is new for every emulator
(``hatchway apigw-emulator`` prints it as ``APIGW_EMULATOR_TOKEN``).

The same WebSocket API and management API are also served over TLS on
``tls_port`` with a certificate from a throwaway CA, and events carry that
address as ``domainName``: handlers that build their client the way AWS's
samples do (``endpoint_url=f"https://{domainName}/{stage}"``) work unchanged,
because their environment trusts the CA (``AWS_CA_BUNDLE``).

HTTP side (``http://127.0.0.1:<http_port>``): HttpApi routes, payload format 2.0.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import secrets
import ssl
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import trustme
from aiohttp import WSCloseCode, WSMsgType, web

from hatchway.observability import logger

from .events import (
    ConnectionInfo,
    WebSocketApi,
    authorizer_event,
    http_api_event,
    websocket_connect_event,
    websocket_disconnect_event,
    websocket_message_event,
)
from .lambda_runtime import LOCAL_DEFAULTS, InvocationError, InvocationTimeoutError, LambdaFunction
from .sigv4 import SigV4Verifier
from .template import ApiSpec, FunctionSpec, HttpRouteSpec

HOST = "127.0.0.1"
MAX_MESSAGE_BYTES = 128 * 1024  # API Gateway's WebSocket message limit, both directions
MANAGEMENT_ENV = "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"
CONTROL_PREFIX = "/_emulator"
LIFECYCLE_ROUTES = frozenset({"$connect", "$disconnect"})  # never selected by a message
UNSUPPORTED_DATA = 1003  # how API Gateway closes a connection that sent a binary frame
# A client that does not read: once the kernel's buffers toward it are full and
# data waits in ours, a POST to it gets 429 LimitExceededException, as on AWS (a
# slow consumer's buffer is full), instead of waiting for the client.
CLIENT_BUFFER_BYTES = 0


def local_credentials(*environments: Mapping[str, str]) -> dict[str, str]:
    """Access key id -> secret of what the emulator's processes sign with: the local
    defaults, and any pair an environment that reaches them sets."""
    accepted = {LOCAL_DEFAULTS["AWS_ACCESS_KEY_ID"]: LOCAL_DEFAULTS["AWS_SECRET_ACCESS_KEY"]}
    for environment in environments:
        key = environment.get("AWS_ACCESS_KEY_ID")
        secret = environment.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            accepted[key] = secret
    return accepted


def local_regions(*environments: Mapping[str, str]) -> set[str]:
    regions = {LOCAL_DEFAULTS["AWS_REGION"]}
    for environment in environments:
        regions |= {
            environment[name]
            for name in ("AWS_REGION", "AWS_DEFAULT_REGION")
            if environment.get(name)
        }
    return regions


@dataclass
class Invocation:
    """One handler call, kept (the last thousand) for tests and debugging."""

    function: str
    event: dict[str, Any]
    result: Any = None
    error: str | None = None
    finished: bool = False


@dataclass
class Connection:
    info: ConnectionInfo
    socket: web.WebSocketResponse
    opened_monotonic: float = field(default_factory=time.monotonic)
    last_active_monotonic: float = field(default_factory=time.monotonic)
    last_active_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    latency_s: float = 0.0
    throttled_until: float = 0.0  # monotonic: every POST to it gets 429 until then
    closing: tuple[int, str] | None = None  # set when the gateway closes it
    notify_disconnect: bool = True  # False: the fault "$disconnect never arrived"
    transport: asyncio.BaseTransport | None = None  # the client's TCP connection

    def buffered_bytes(self) -> int:
        """What is written to the client and not yet taken by its TCP connection."""
        if isinstance(self.transport, asyncio.WriteTransport):
            return self.transport.get_write_buffer_size()
        return 0

    @property
    def connection_id(self) -> str:
        return self.info.connection_id

    def touch(self) -> None:
        self.last_active_monotonic = time.monotonic()
        self.last_active_at = datetime.now(UTC)


@dataclass
class ManagementFaults:
    """Fault injection on the @connections API."""

    throttle_share: float = 0.0  # share of POSTs answered 429
    throttle_until: float = 0.0  # monotonic time until which every POST gets 429
    rng: random.Random = field(default_factory=random.Random)

    def throttled(self) -> bool:
        if time.monotonic() < self.throttle_until:
            return True
        return self.throttle_share > 0 and self.rng.random() < self.throttle_share


def _new_connection_id() -> str:
    # API Gateway's look: 16 characters of base64 ending in "=", e.g. "L0SM9cOFvHcCIhw=".
    return base64.b64encode(os.urandom(11)).decode()


def _aws_error(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response(
        {"message": message, "__type": error_type},
        status=status,
        headers={"x-amzn-ErrorType": error_type},
    )


def _select_route_key(expression: str, body: str | bytes) -> str | None:
    """Evaluate ``$request.body.<path>`` against a JSON message; None if it does not apply."""
    prefix = "$request.body."
    if not expression.startswith(prefix) or isinstance(body, bytes):
        return None
    try:
        value: Any = json.loads(body)
    except (ValueError, RecursionError):  # not JSON to the gateway: $default
        return None
    for part in expression[len(prefix) :].split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, str) else None


def _path_pattern(path: str) -> re.Pattern[str]:
    pattern = ""
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("+}"):
            pattern += f"(?P<{part[1:-2]}>.+)"
        elif part.startswith("{"):
            pattern += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            pattern += re.escape(part)
    return re.compile(f"^{pattern}$")


def _specificity(route: HttpRouteSpec) -> tuple[int, int, int]:
    """Sort key: exact paths before parameters before greedy ones, $default last."""
    if route.path == "$default":
        return (3, 0, 0)
    greedy = "+}" in route.path
    params = route.path.count("{")
    return (2 if greedy else (1 if params else 0), params, -len(route.path))


class ApiGatewayEmulator:
    """``async with ApiGatewayEmulator(api) as gateway:`` serves it on loopback."""

    def __init__(
        self,
        api: ApiSpec,
        *,
        port: int = 0,
        http_port: int = 0,
        tls_port: int = 0,
        idle_timeout_s: float = 600.0,
        max_connection_s: float = 7200.0,
        max_concurrency: int = 4,
        extra_env: dict[str, str] | None = None,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        """``credentials`` (access key id -> secret) are what ``@connections`` accepts;
        by default the local ones, and those this process's environment and
        ``extra_env`` give the handlers."""
        self.api = api
        self.port = port
        self.http_port = http_port
        self.tls_port = tls_port
        self._ca = trustme.CA()
        self._ca_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as we do
            prefix="hatchway-apigw-ca-", suffix=".pem"
        )
        self._ca_file.write(self._ca.cert_pem.bytes())
        self._ca_file.flush()
        self.idle_timeout_s = idle_timeout_s
        self.max_connection_s = max_connection_s
        self.connections: dict[str, Connection] = {}
        self.invocations: deque[Invocation] = deque(maxlen=1000)
        self.faults = ManagementFaults()
        # @connections POSTs answered, per HTTP status: benchmarks count the relay's posts.
        self.posts: Counter[int] = Counter()
        self._max_concurrency = max_concurrency
        self._extra_env = extra_env or {}
        self._verifier = SigV4Verifier(
            local_credentials(os.environ, self._extra_env) if credentials is None else credentials,
            local_regions(os.environ, self._extra_env),
        )
        self.control_token = secrets.token_urlsafe(32)
        self._functions: dict[str, LambdaFunction] = {}
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._api_id = uuid.uuid4().hex[:10]
        self._http_routes = sorted(api.http_routes, key=_specificity)
        self._http_patterns = {
            route.route_key: _path_pattern(route.path) for route in self._http_routes
        }

    # -- addresses ---------------------------------------------------------------------

    @property
    def stage(self) -> str:
        return self.api.websocket.stage if self.api.websocket else ""

    @property
    def websocket_url(self) -> str:
        return f"ws://{HOST}:{self.port}/{self.stage}"

    @property
    def management_url(self) -> str:
        """What boto3's ``apigatewaymanagementapi`` client takes as ``endpoint_url``."""
        return f"http://{HOST}:{self.port}/{self.stage}"

    @property
    def websocket_tls_url(self) -> str:
        return f"wss://{HOST}:{self.tls_port}/{self.stage}"

    @property
    def ca_bundle(self) -> str:
        """PEM of the CA that signed the TLS side's certificate (trust it to use wss/https)."""
        return self._ca_file.name

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_bundle)

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def control_settings(self) -> dict[str, str]:
        """Where the fault-injection control API is, and the token it wants (kept out
        of ``settings()``, which the handlers get)."""
        if self.api.websocket is None:
            return {}
        return {
            "APIGW_EMULATOR_CONTROL_URL": f"http://{HOST}:{self.port}{CONTROL_PREFIX}",
            "APIGW_EMULATOR_TOKEN": self.control_token,
        }

    def settings(self) -> dict[str, str]:
        settings = {}
        if self.api.websocket is not None:
            settings["WEBSOCKET_URL"] = self.websocket_url
            settings["WEBSOCKET_TLS_URL"] = self.websocket_tls_url
            settings[MANAGEMENT_ENV] = self.management_url
            settings["AWS_CA_BUNDLE"] = self.ca_bundle
        if self.api.http_routes:
            settings["HTTP_API_URL"] = self.http_url
        return settings

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.api.websocket is not None:
            app = web.Application(
                client_max_size=MAX_MESSAGE_BYTES * 2, middlewares=[self._control_auth]
            )
            stage = self.api.websocket.stage
            app.add_routes(
                [
                    web.get(f"/{stage}", self._websocket),
                    web.post(f"/{stage}/@connections/{{connection_id}}", self._post_to_connection),
                    web.get(f"/{stage}/@connections/{{connection_id}}", self._get_connection),
                    web.delete(f"/{stage}/@connections/{{connection_id}}", self._delete_connection),
                    web.post("/_emulator/faults/throttle", self._control_throttle),
                    web.post(
                        "/_emulator/connections/{connection_id}/latency", self._control_latency
                    ),
                    web.post(
                        "/_emulator/connections/{connection_id}/disconnect",
                        self._control_disconnect,
                    ),
                    web.get("/_emulator/connections", self._control_connections),
                ]
            )
            self.port, self.tls_port = await self._serve(app, self.port, self.tls_port)
        if self.api.http_routes:
            app = web.Application(client_max_size=10 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._http_api)
            self.http_port, _ = await self._serve(app, self.http_port)
        # Handlers reach this management API when they build their client the usual way.
        self._extra_env = {**self.settings(), **self._extra_env}

    async def _serve(
        self, app: web.Application, port: int, tls_port: int | None = None
    ) -> tuple[int, int]:
        """Serve ``app`` on ``port`` (and over TLS on ``tls_port``); the bound ports."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, HOST, port, reuse_address=True).start()
        bound = int(runner.addresses[0][1])
        if tls_port is None:
            return bound, 0
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert(HOST, "localhost").configure_cert(context)
        await web.TCPSite(runner, HOST, tls_port, ssl_context=context, reuse_address=True).start()
        return bound, int(runner.addresses[1][1])

    async def close(self) -> None:
        for connection in list(self.connections.values()):
            await self.disconnect(connection.connection_id, WSCloseCode.GOING_AWAY, "Going away")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for function in self._functions.values():
            await function.close()
        self._ca_file.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:  # noqa: ANN401
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- invoking handlers -------------------------------------------------------------

    async def cool_down(self, *logical_ids: str) -> None:
        """End these functions' execution environments: their next invocations start
        cold, as after an idle spell or a deploy (benchmarks measure cold starts)."""
        for logical_id in logical_ids:
            function = self._functions.pop(logical_id, None)
            if function is not None:
                await function.close()

    async def invoke(self, spec: FunctionSpec, event: dict[str, Any]) -> Any:  # noqa: ANN401
        function = self._functions.get(spec.logical_id)
        if function is None:
            function = LambdaFunction(spec, self._extra_env, self._max_concurrency)
            self._functions[spec.logical_id] = function
        record = Invocation(spec.logical_id, event)
        self.invocations.append(record)
        try:
            record.result = await function.invoke(event)
        except InvocationError as error:
            record.error = str(error)
            logger.warning("handler failed", function=spec.logical_id, error=str(error))
            raise
        finally:
            record.finished = True
        return record.result

    async def idle(self, timeout_s: float = 30.0) -> None:
        """Until no handler call is in flight (benchmarks that need cold functions
        must not end an environment in the middle of a call)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(not record.finished for record in self.invocations):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("handler calls still in flight")
            await asyncio.sleep(0.01)

    # -- WebSocket API -----------------------------------------------------------------

    def _ws_api(self) -> WebSocketApi:
        # On AWS one name serves wss:// and the https:// management API: here the TLS port.
        return WebSocketApi(
            api_id=self._api_id, stage=self.stage, domain_name=f"{HOST}:{self.tls_port}"
        )

    async def _authorize(self, info: ConnectionInfo) -> web.Response | None:
        """Run the REQUEST authorizer; a response refuses the upgrade."""
        authorizer = self.api.websocket.authorizer if self.api.websocket else None
        if authorizer is None:
            return None
        for source in authorizer.identity_sources:
            kind, _, name = source.removeprefix("route.request.").partition(".")
            present = info.query.get(name) if kind == "querystring" else info.headers.get(name)
            if not present:  # API Gateway answers 401 without calling the authorizer
                return web.json_response({"message": "Unauthorized"}, status=401)
        try:
            policy = await self.invoke(authorizer.function, authorizer_event(self._ws_api(), info))
        except InvocationError as error:
            if error.error_message == "Unauthorized":
                return web.json_response({"message": "Unauthorized"}, status=401)
            return web.json_response({"message": "Internal server error"}, status=500)
        statements = ((policy or {}).get("policyDocument") or {}).get("Statement") or []
        effects = {str(s.get("Effect", "")).lower() for s in statements}
        if "allow" not in effects or "deny" in effects:
            return web.json_response({"message": "Forbidden"}, status=403)
        context = dict((policy or {}).get("context") or {})
        context["principalId"] = (policy or {}).get("principalId", "")
        info.authorizer = context
        return None

    async def _run_connect(self, info: ConnectionInfo) -> web.Response | None:
        route = self.api.websocket.routes.get("$connect") if self.api.websocket else None
        if route is None:
            return None
        try:
            result = await self.invoke(
                route.function, websocket_connect_event(self._ws_api(), info)
            )
        except InvocationError:
            return web.json_response({"message": "Internal server error"}, status=500)
        status = int(result.get("statusCode", 200)) if isinstance(result, dict) else 200
        if not 200 <= status < 300:
            body = result.get("body") if isinstance(result, dict) else None
            return web.Response(status=status, text=body or "")
        return None

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        # No permessage-deflate: API Gateway negotiates no extension, so bytes on the
        # wire (and a slow consumer's backlog) are what they would be on AWS.
        socket = web.WebSocketResponse(
            max_msg_size=MAX_MESSAGE_BYTES, autoping=True, compress=False
        )
        if not socket.can_prepare(request).ok:
            return web.json_response({"message": "Upgrade Required"}, status=426)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        info = ConnectionInfo(
            connection_id=_new_connection_id(),
            source_ip=str(peer[0]) if peer else HOST,
            user_agent=request.headers.get("User-Agent", ""),
            headers=request.headers,
            query=request.query,
        )
        refusal = await self._authorize(info) or await self._run_connect(info)
        if refusal is not None:
            return refusal
        await socket.prepare(request)
        connection = Connection(info=info, socket=socket, transport=request.transport)
        self.connections[info.connection_id] = connection
        watchdog = self._spawn(self._watch(connection))
        try:
            async for message in socket:
                if message.type == WSMsgType.BINARY:
                    # API Gateway takes no binary frames: it closes the connection.
                    await self.disconnect(info.connection_id, UNSUPPORTED_DATA, "Unsupported data")
                    break
                if message.type == WSMsgType.TEXT:
                    connection.touch()
                    self._spawn(self._route(connection, message.data))
        finally:
            watchdog.cancel()
            self.connections.pop(info.connection_id, None)
            code, reason = connection.closing or self._client_close(socket)
            if connection.notify_disconnect:
                self._spawn(self._run_disconnect(info, code, reason))
        return socket

    @staticmethod
    def _client_close(socket: web.WebSocketResponse) -> tuple[int, str]:
        code = socket.close_code
        if code is None or code == WSCloseCode.ABNORMAL_CLOSURE:
            return 1006, "Connection closed abnormally"
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            return 1009, "Message too big"
        return int(code), "Client closed the connection"

    async def _route(self, connection: Connection, body: str | bytes) -> None:
        api = self.api.websocket
        assert api is not None  # noqa: S101 - only WebSocket connections get here
        key = _select_route_key(api.route_selection_expression, body)
        if key in LIFECYCLE_ROUTES:  # only API Gateway itself selects these
            key = None
        route = api.routes.get(key or "") or api.routes.get("$default")
        request_id = base64.b64encode(uuid.uuid4().bytes[:12]).decode()
        if route is None:
            await self._send_gateway_error(connection, "Forbidden", request_id)
            return
        event = websocket_message_event(self._ws_api(), connection.info, route.route_key, body)
        try:
            result = await self.invoke(route.function, event)
        except InvocationError:
            await self._send_gateway_error(connection, "Internal server error", request_id)
            return
        if route.returns_response:
            reply = result.get("body") if isinstance(result, dict) else result
            if reply is not None:
                await self._send(connection, reply if isinstance(reply, str) else json.dumps(reply))

    async def _send_gateway_error(
        self, connection: Connection, message: str, request_id: str
    ) -> None:
        await self._send(
            connection,
            json.dumps(
                {
                    "message": message,
                    "connectionId": connection.connection_id,
                    "requestId": request_id,
                }
            ),
        )

    async def _send(self, connection: Connection, data: str | bytes) -> bool:
        """One WebSocket message; False if the connection is gone."""
        async with connection.send_lock:
            if connection.socket.closed or connection.closing is not None:
                return False
            try:
                if isinstance(data, bytes):
                    await connection.socket.send_bytes(data)
                else:
                    await connection.socket.send_str(data)
            except (ConnectionError, RuntimeError):
                return False
        connection.touch()
        return True

    async def _run_disconnect(self, info: ConnectionInfo, code: int, reason: str) -> None:
        route = self.api.websocket.routes.get("$disconnect") if self.api.websocket else None
        if route is None:
            return
        with contextlib.suppress(InvocationError):  # best effort, as on AWS
            await self.invoke(
                route.function, websocket_disconnect_event(self._ws_api(), info, code, reason)
            )

    async def _watch(self, connection: Connection) -> None:
        """Close idle connections and those past the maximum duration, as API Gateway does."""
        while True:
            now = time.monotonic()
            idle_deadline = connection.last_active_monotonic + self.idle_timeout_s
            hard_deadline = connection.opened_monotonic + self.max_connection_s
            if now >= hard_deadline or now >= idle_deadline:
                await self.disconnect(
                    connection.connection_id, WSCloseCode.GOING_AWAY, "Going away"
                )
                return
            await asyncio.sleep(min(idle_deadline, hard_deadline) - now)

    async def disconnect(
        self,
        connection_id: str,
        code: int = 1001,
        reason: str = "Going away",
        *,
        notify: bool = True,
    ) -> bool:
        """Close a connection from the gateway's side (also the forced-disconnect fault);
        ``notify=False`` skips ``$disconnect``, which AWS delivers only best-effort."""
        connection = self.connections.get(connection_id)
        if connection is None:
            return False
        connection.notify_disconnect = notify
        connection.closing = (int(code), reason)
        await connection.socket.close(code=code, message=reason.encode())
        return True

    # -- @connections management API ---------------------------------------------------

    async def _connection_or_gone(self, request: web.Request) -> Connection | web.Response:
        refusal = self._verifier.verify(
            method=request.method,
            url=f"{request.scheme}://{request.host}{request.raw_path}",
            headers=request.headers,
            body=await request.read(),
        )
        if refusal is not None:
            return _aws_error(403, refusal.error_type, refusal.message)
        connection = self.connections.get(request.match_info["connection_id"])
        if connection is None or connection.closing is not None or connection.socket.closed:
            return _aws_error(410, "GoneException", "")
        return connection

    async def _post_to_connection(self, request: web.Request) -> web.Response:
        response = await self._post(request)
        self.posts[response.status] += 1
        return response

    async def _post(self, request: web.Request) -> web.Response:
        found = await self._connection_or_gone(request)
        if isinstance(found, web.Response):
            return found
        if (
            self.faults.throttled()
            or time.monotonic() < found.throttled_until
            or found.buffered_bytes() > CLIENT_BUFFER_BYTES  # the client does not read
        ):
            return _aws_error(429, "LimitExceededException", "Rate exceeded")
        data = await request.read()
        if len(data) > MAX_MESSAGE_BYTES:
            return _aws_error(413, "PayloadTooLargeException", "Message too long")
        if found.latency_s:
            await asyncio.sleep(found.latency_s)
        try:
            message: str | bytes = data.decode("utf-8")
        except UnicodeDecodeError:
            message = data
        if not await self._send(found, message):
            return _aws_error(410, "GoneException", "")
        return web.Response(status=200)

    async def _get_connection(self, request: web.Request) -> web.Response:
        found = await self._connection_or_gone(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(
            {
                "connectedAt": found.info.connected_at.isoformat(),
                "identity": {"sourceIp": found.info.source_ip, "userAgent": found.info.user_agent},
                "lastActiveAt": found.last_active_at.isoformat(),
            }
        )

    async def _delete_connection(self, request: web.Request) -> web.Response:
        found = await self._connection_or_gone(request)
        if isinstance(found, web.Response):
            return found
        await self.disconnect(
            found.connection_id, WSCloseCode.OK, "Connection closed by the server"
        )
        return web.Response(status=204)

    # -- fault injection ---------------------------------------------------------------

    @web.middleware
    async def _control_auth(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """The control API answers only callers with this emulator's token."""
        if request.path == CONTROL_PREFIX or request.path.startswith(CONTROL_PREFIX + "/"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.encode(), self.control_token.encode()
            ):
                return web.json_response(
                    {"message": "Unauthorized: send Authorization: Bearer <APIGW_EMULATOR_TOKEN>"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    def throttle(
        self, share: float = 0.0, for_seconds: float = 0.0, connection_id: str | None = None
    ) -> bool:
        """Answer 429 to a share of POSTs, and/or to every POST for a while; with
        ``connection_id``, to every POST to that connection for a while (False: unknown)."""
        if connection_id is not None:
            connection = self.connections.get(connection_id)
            if connection is None:
                return False
            connection.throttled_until = time.monotonic() + for_seconds
            return True
        self.faults.throttle_share = share
        self.faults.throttle_until = time.monotonic() + for_seconds if for_seconds else 0.0
        return True

    def set_latency(self, connection_id: str, seconds: float) -> bool:
        connection = self.connections.get(connection_id)
        if connection is None:
            return False
        connection.latency_s = seconds
        return True

    async def _control_throttle(self, request: web.Request) -> web.Response:
        body = await request.json()
        found = self.throttle(
            float(body.get("share", 0)),
            float(body.get("forSeconds", 0)),
            body.get("connectionId"),
        )
        return web.json_response({"ok": found}, status=200 if found else 404)

    async def _control_latency(self, request: web.Request) -> web.Response:
        body = await request.json()
        found = self.set_latency(request.match_info["connection_id"], float(body.get("seconds", 0)))
        return web.json_response({"ok": found}, status=200 if found else 404)

    async def _control_disconnect(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        found = await self.disconnect(
            request.match_info["connection_id"],
            int(body.get("code", 1001)),
            str(body.get("reason", "Going away")),
            notify=bool(body.get("notify", True)),
        )
        return web.json_response({"ok": found}, status=200 if found else 404)

    async def _control_connections(self, _request: web.Request) -> web.Response:
        return web.json_response({"connections": sorted(self.connections)})

    # -- HTTP API ----------------------------------------------------------------------

    def _match_http_route(
        self, method: str, path: str
    ) -> tuple[HttpRouteSpec, dict[str, str]] | None:
        for route in self._http_routes:
            if route.method not in ("ANY", method):
                continue
            if route.path == "$default":
                return route, {}
            match = self._http_patterns[route.route_key].match(path)
            if match:
                return route, match.groupdict()
        return None

    async def _http_api(self, request: web.Request) -> web.StreamResponse:
        found = self._match_http_route(request.method, request.path)
        if found is None:
            return web.json_response({"message": "Not Found"}, status=404)
        route, path_parameters = found
        peer = request.transport.get_extra_info("peername") if request.transport else None
        event = http_api_event(
            api_id=self._api_id,
            domain_name=request.host,
            route_key=route.route_key,
            method=request.method,
            path=request.path,
            raw_query=request.query_string,
            headers=request.headers,
            query=request.query,
            path_parameters=path_parameters,
            body=await request.read(),
            source_ip=str(peer[0]) if peer else HOST,
        )
        try:
            result = await self.invoke(route.function, event)
        except InvocationTimeoutError:
            return web.json_response({"message": "Service Unavailable"}, status=503)
        except InvocationError:
            return web.json_response({"message": "Internal Server Error"}, status=500)
        return _http_response(result)


def _http_response(result: Any) -> web.Response:  # noqa: ANN401
    """A Lambda result as HTTP API (format 2.0) turns it into a response."""
    if not isinstance(result, dict) or "statusCode" not in result:
        # Format 2.0 infers a 200 JSON response from anything without statusCode.
        return web.Response(status=200, text=json.dumps(result), content_type="application/json")
    body = result.get("body") or ""
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    response = web.Response(status=int(result["statusCode"]), body=payload)
    for name, value in (result.get("headers") or {}).items():
        response.headers[name] = str(value)
    for name, values in (result.get("multiValueHeaders") or {}).items():
        for value in values:
            response.headers.add(name, str(value))
    for cookie in result.get("cookies") or []:
        response.headers.add("Set-Cookie", cookie)
    return response
