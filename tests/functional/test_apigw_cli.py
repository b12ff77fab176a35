"""`hatchway apigw-emulator` serving a SAM template written by someone else
(an echo service in the style of AWS's samples), with a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import stop_process_group
from tests.functional.test_emulator_cli import read_settings

ECHO_TEMPLATE = Path(__file__).with_name("echo_app") / "template.yaml"


@pytest.fixture
def echo_gateway() -> Iterator[dict[str, str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hatchway_local.cli",
            "apigw-emulator",
            "--template",
            str(ECHO_TEMPLATE),
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield read_settings(process)
    finally:
        stop_process_group(process)


def status_of(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_someone_elses_echo_service_works_unchanged(echo_gateway: dict[str, str]) -> None:
    assert echo_gateway["WEBSOCKET_URL"].endswith("/Prod")

    async with connect(echo_gateway["WEBSOCKET_URL"]) as client:
        await client.send(json.dumps({"action": "sendmessage", "data": "hello"}))
        assert await asyncio.wait_for(client.recv(), 20) == "echo: hello"

    # The control API answers only with the token the emulator printed.
    connections = echo_gateway["APIGW_EMULATOR_CONTROL_URL"] + "/connections"
    assert await asyncio.to_thread(status_of, connections, None) == 401
    assert await asyncio.to_thread(status_of, connections, "guessed") == 401
    assert (
        await asyncio.to_thread(status_of, connections, echo_gateway["APIGW_EMULATOR_TOKEN"]) == 200
    )

    tls = ssl.create_default_context(cafile=echo_gateway["AWS_CA_BUNDLE"])
    async with connect(echo_gateway["WEBSOCKET_TLS_URL"], ssl=tls) as client:
        await client.send(json.dumps({"action": "sendmessage", "data": "over wss"}))
        assert await asyncio.wait_for(client.recv(), 20) == "echo: over wss"


def test_a_template_without_apis_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text("Resources:\n  Bucket:\n    Type: AWS::S3::Bucket\n")
    result = subprocess.run(
        [sys.executable, "-m", "hatchway_local.cli", "apigw-emulator", "--template", str(template)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"no WebSocket API and no HttpApi events" in result.stderr
