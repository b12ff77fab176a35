"""The deployed shape, measured here: build the Lambda layers as `sam build` does
and import a function the way a cold Lambda execution environment does (a fresh
interpreter with only its code and layers on the path). The packaging tests and
``make bench`` use it; nothing here is shipped."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jwt

# What each function's module graph must not reach.
LOCAL_TOOLING = ("hatchway_local", "moto", "yaml", "trustme", "websockets", "aiohttp")
NOT_IN_WEBSOCKET_FUNCTIONS = ("hatchet_sdk", "grpc", "google.protobuf", "fastapi", "starlette")
WEBSOCKET_FUNCTIONS = (
    "ws_authorizer",
    "ws_connect",
    "ws_disconnect",
    "ws_subscribe",
    "ws_unsubscribe",
    "ws_ping",
    "ws_default",
)
# Besides CoreLayer, TriggerLayer (grpcio, for Hatchet): the trigger and the DLQ consumer.
HATCHET_FUNCTIONS = ("trigger", "dlq_consumer")
FUNCTIONS = (*HATCHET_FUNCTIONS, *WEBSOCKET_FUNCTIONS)


def layers_of(function: str) -> tuple[str, ...]:
    """The layers a function gets in template.yaml (CoreLayer from Globals)."""
    return ("core", "trigger") if function in HATCHET_FUNCTIONS else ("core",)


def function_environment() -> dict[str, str]:
    """Everything any function's settings require, with harmless values (no I/O
    happens at import: clients are built, nothing is called)."""
    hatchet_token = jwt.encode(
        {
            "sub": "707d0855-80ab-4e1f-a156-f1c4546cbf52",
            "server_url": "http://127.0.0.1:9",
            "grpc_broadcast_address": "127.0.0.1:9",
        },
        "a-key-only-for-a-token-that-is-never-sent",
    )
    return {
        "PATH": os.environ.get("PATH", ""),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "TABLE_NAME": "HatchwayTable",
        "TOKEN_SIGNING_KEY": "k" * 48,
        "PAYLOAD_BUCKET": "payloads",
        "RUN_QUEUE_URL": "http://127.0.0.1:9/queue/RunQueue",
        "ALLOWED_WORKFLOWS": "demo-stream",
        "WEBSOCKET_URL": "ws://127.0.0.1:9/prod",
        "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": "http://127.0.0.1:9/prod",
        "HATCHET_CLIENT_TOKEN": hatchet_token,
        "HATCHET_CLIENT_TLS_STRATEGY": "none",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }


_PROBE = """
import json, sys, time
started = time.perf_counter()
import app
took = time.perf_counter() - started
print(json.dumps({"seconds": took, "modules": sorted(sys.modules)}))
"""


@dataclass(frozen=True)
class ColdImport:
    seconds: float  # the whole fresh process, as a cold start pays it
    modules: list[str]


def import_function(
    code_dir: Path, paths: list[Path], env: dict[str, str] | None = None, isolated: bool = True
) -> ColdImport:
    """Import ``code_dir/app.py`` in a fresh interpreter. ``isolated``: only the code
    and ``paths`` (the layers) on sys.path, no site-packages, as on Lambda."""
    path = [str(code_dir), *(str(p) for p in paths)]
    bootstrap = f"import sys; sys.path[:0] = {path!r}\n" + _PROBE
    command = [sys.executable, *(["-S"] if isolated else []), "-c", bootstrap]
    started = time.perf_counter()
    result = subprocess.run(  # noqa: S603 - our interpreter, our probe
        command,
        cwd=code_dir,
        env=env if env is not None else function_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{code_dir.name}: import failed:\n{result.stderr[-3000:]}")
    return ColdImport(seconds, json.loads(result.stdout.splitlines()[-1])["modules"])


def time_command(command: list[str], env: dict[str, str], runs: int = 10) -> float:
    """Median wall time of ``runs`` fresh processes of ``command``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True)  # noqa: S603
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def build_layer(build_script: Path, layer: str, artifacts: Path) -> Path:
    """Run the layer's build as `sam build` would (BuildMethod makefile); its python/ dir."""
    subprocess.run(  # noqa: S603 - the project's own build script
        [sys.executable, str(build_script), layer, str(artifacts)],
        check=True,
        capture_output=True,
    )
    return artifacts / "python"


def zipped_size(*directories: Path) -> int:
    """Bytes of one deflated zip of ``directories`` (what Lambda counts per layer/code)."""
    total = 0
    for directory in directories:
        target = directory.parent / f"{directory.name}.size.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for file in sorted(directory.rglob("*")):
                if file.is_file() and file.suffix != ".zip":
                    archive.write(file, file.relative_to(directory))
        total += target.stat().st_size
        target.unlink()
    return total


def unzipped_size(directory: Path) -> int:
    return sum(file.stat().st_size for file in directory.rglob("*") if file.is_file())


def distributions(layer: Path) -> dict[str, str]:
    """``{normalized name: version}`` of what a built layer holds (its dist-info)."""
    found = {}
    for info in layer.glob("*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        found[normalize(name)] = version
    return found


def normalize(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``{normalized name: version}`` of the ``name==version`` lines of a pin file."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[normalize(match.group(1))] = match.group(2)
    return found
