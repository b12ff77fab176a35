"""HTTP helpers: the API's error shape as HatchwayError, by-reference downloads."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from yarl import URL

from hatchway.client._types import HatchwayError

# Codes for answers that do not carry the API's {"error": {...}} shape (API Gateway's
# own throttling, a proxy in between).
_CODE_OF_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limited",
    502: "upstream_unavailable",
}


def error_of(status: int, body: bytes) -> HatchwayError:
    """The API's ``{"error": {"code", "message"}}`` as a HatchwayError (any other body
    gets a code from the status)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        return HatchwayError(str(error.get("code")), str(error.get("message", "")), status)
    code = _CODE_OF_STATUS.get(status, "internal" if status >= 500 else "bad_response")
    text = body[:200].decode(errors="replace")
    if isinstance(data, dict) and "message" in data:
        text = str(data["message"])
    return HatchwayError(code, f"HTTP {status}: {text}", status)


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    expect: int = 200,
    headers: dict[str, str] | None = None,
    body: Any = None,  # noqa: ANN401 - any JSON value
    params: dict[str, str] | None = None,
) -> Any:  # noqa: ANN401 - the API's JSON answer
    """The JSON answer of an API call; HatchwayError when it is not ``expect``."""
    try:
        async with session.request(
            method, url, headers=headers, json=body, params=params
        ) as response:
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise HatchwayError("unavailable", f"{method} {url}: {error!r}") from error
    if status != expect:
        raise error_of(status, raw)
    try:
        return json.loads(raw)
    except ValueError as error:
        raise HatchwayError("bad_response", f"{method} {url}: not JSON", status) from error


async def download(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """GET a presigned URL exactly as minted (no re-quoting: the signature covers it)."""
    try:
        async with session.get(URL(url, encoded=True)) as response:
            return response.status, await response.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise HatchwayError("unavailable", f"GET {url.split('?', 1)[0]}: {error!r}") from error
