"""The API Gateway management API for the relay's hot path, which posts thousands
of messages a second: one keep-alive aiohttp session on the event loop, each
request signed with botocore's own SigV4 signer, without boto3's per-call
pipeline (event hooks, models, a thread per call). Errors are the ones
``hatchway.connections`` defines (410 -> StaleConnectionError, ...)."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from yarl import URL

from hatchway.connections import StaleConnectionError, UnavailableError, error_for


class AsyncConnections:
    """The management API for the relay: ``post`` and ``close`` on the event loop.

    Credentials come from botocore's chain (the task role on ECS), refreshed by
    botocore when they near expiry; the region from the endpoint's environment."""

    def __init__(
        self,
        endpoint_url: str,
        *,
        pool: int = 200,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        self._endpoint = endpoint_url.rstrip("/")
        session = botocore.session.get_session()
        self._credentials = session.get_credentials()
        self._region = session.get_config_variable("region") or "us-east-1"
        self._pool = pool
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:  # made on first use: it belongs to the running loop
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool, keepalive_timeout=60),
                timeout=self._timeout,
                skip_auto_headers=("User-Agent",),
            )
        return self._http

    async def close_session(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _signed(self, method: str, url: str, body: bytes) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, data=body)
        SigV4Auth(self._credentials.get_frozen_credentials(), "execute-api", self._region).add_auth(
            request
        )
        return dict(request.headers.items())

    async def _call(self, method: str, connection_id: str, body: bytes = b"") -> int:
        """The response's status; UnavailableError when there was none."""
        url = f"{self._endpoint}/@connections/{quote(connection_id, safe='')}"
        headers = self._signed(method, url, body)
        try:
            async with self._session().request(
                method, URL(url, encoded=True), data=body or None, headers=headers
            ) as response:
                await response.read()  # the connection goes back to the pool
                if response.status < 300:
                    return response.status
                code = response.headers.get("x-amzn-ErrorType", "").split(":")[0]
                raise error_for(response.status, code)(
                    f"{connection_id}: {code or response.status}"
                )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise UnavailableError(f"{connection_id}: {error!r}") from error

    async def post(self, connection_id: str, data: str | bytes) -> None:
        await self._call("POST", connection_id, data.encode() if isinstance(data, str) else data)

    async def close(self, connection_id: str) -> None:
        """Disconnect a client (DELETE @connections/{id}). Gone already is fine."""
        try:
            await self._call("DELETE", connection_id)
        except StaleConnectionError:
            return
