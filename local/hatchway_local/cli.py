"""The ``hatchway`` command: one entry point, a subcommand per tool."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hatchway.observability import logger

if TYPE_CHECKING:
    from hatchway_local.apigw_emulator.server import ApiGatewayEmulator


def _say(line: str) -> None:
    """A line for the person or script reading stdout (logs go to stderr)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _stop_on_signals() -> asyncio.Event:
    """Set on SIGINT or SIGTERM; install it before printing `ready`, so a signal
    sent as soon as a caller sees `ready` is handled, not fatal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _run_emulator(args: argparse.Namespace) -> None:
    from hatchway_local.hatchet_emulator.server import HatchetEmulator  # noqa: PLC0415

    emulator = HatchetEmulator(
        grpc_port=args.port,
        rest_port=args.rest_port,
        worker_timeout_s=args.worker_timeout,
        unknown_run_wait_s=args.unknown_run_wait,
    )
    stop = _stop_on_signals()
    async with emulator:
        for name, value in emulator.settings().items():
            _say(f"{name}={value}")
        _say("ready")
        await stop.wait()


def hatchet_emulator(args: argparse.Namespace) -> int:
    asyncio.run(_run_emulator(args))
    return 0


async def _serve_gateway(gateway: ApiGatewayEmulator) -> None:
    stop = _stop_on_signals()
    async with gateway:
        for name, value in {**gateway.settings(), **gateway.control_settings()}.items():
            _say(f"{name}={value}")
        _say("ready")
        await stop.wait()


def apigw_emulator(args: argparse.Namespace) -> int:
    from hatchway_local.apigw_emulator.server import ApiGatewayEmulator  # noqa: PLC0415
    from hatchway_local.apigw_emulator.template import TemplateError, TemplateReader  # noqa: PLC0415

    try:
        env_vars = json.loads(Path(args.env_vars).read_text()) if args.env_vars else None
        parameters = dict(item.split("=", 1) for item in args.parameter_overrides)
        api = TemplateReader(Path(args.template), parameters, env_vars).api(args.stage)
    except (TemplateError, OSError, ValueError) as error:
        logger.error("cannot serve the template", error=str(error), template=args.template)
        return 2
    gateway = ApiGatewayEmulator(
        api,
        port=args.port,
        http_port=args.http_port,
        tls_port=args.tls_port,
        idle_timeout_s=args.idle_timeout,
        max_connection_s=args.max_connection_duration,
    )
    asyncio.run(_serve_gateway(gateway))
    return 0


def relay(_args: argparse.Namespace) -> int:
    from hatchway.relay.main import main as relay_main  # noqa: PLC0415 - the runtime's own

    return relay_main()


def demo_worker(args: argparse.Namespace) -> int:
    from hatchet_sdk import Hatchet  # noqa: PLC0415 - slow import, only this command needs it

    from hatchway_local.demo.workflows import demo_worker as build_worker  # noqa: PLC0415

    build_worker(Hatchet(), slots=args.slots).start()
    return 0


def _spawn(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: Ctrl-C reaches only us, and we stop the whole group ourselves.
    return subprocess.Popen(command, env=env, start_new_session=True)  # noqa: S603


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def _run_dev(args: argparse.Namespace) -> None:
    from hatchway_local.stack import LocalStack  # noqa: PLC0415

    stop = _stop_on_signals()
    async with LocalStack(
        Path(args.template), http_port=args.port, relays=args.relays, demo_port=args.demo_port
    ) as stack:
        assert stack.gateway is not None  # noqa: S101 - started
        assert stack.aws is not None  # noqa: S101
        hatchet = (
            f"emulator, gRPC {stack.hatchet.grpc_address}, REST {stack.hatchet.server_url}"
            if stack.hatchet
            else "the Hatchet named by HATCHET_CLIENT_TOKEN"
        )
        _say("Hatchway local stack")
        _say(f"  HTTP API:       {stack.gateway.http_url}  (POST /runs, GET /runs/{{id}}, /frames)")
        _say(f"  WebSocket API:  {stack.gateway.websocket_url}")
        if stack.demo is not None:
            _say(f"  demo page:      {stack.demo.url}  (open it in a browser)")
        control = stack.gateway.control_settings()
        _say(
            f"  gateway faults: {control['APIGW_EMULATOR_CONTROL_URL']}"
            f"  (Authorization: Bearer {control['APIGW_EMULATOR_TOKEN']})"
        )
        _say(f"  Hatchet:        {hatchet}")
        _say(f"  AWS (moto):     {stack.aws.endpoint_url}")
        _say(f"  relays:         {', '.join(stack.relay_processes)}")
        _say("  demo workflows: demo-stream, demo-fail, demo-file, demo-big-chunk, demo-ticks")
        _say(
            f"  try:            .venv/bin/hatchway watch demo-stream --url {stack.gateway.http_url}"
        )
        _say(f"ready: {stack.gateway.http_url}")
        await stop.wait()


def dev(args: argparse.Namespace) -> int:
    asyncio.run(_run_dev(args))
    return 0


async def _run_watch(args: argparse.Namespace) -> int:
    from hatchway.client import HatchwayError  # noqa: PLC0415
    from hatchway_local.watch import watch_command as watch  # noqa: PLC0415

    if args.run and not (args.token and args.websocket_url):
        sys.stderr.write("hatchway watch: --run needs --token and --websocket-url\n")
        return 2
    try:
        status = await watch(
            args.url.rstrip("/"),
            args.workflow,
            json.loads(args.input),
            run_id=args.run,
            token=args.token,
            websocket_url=args.websocket_url,
            after=args.after,
        )
    except (HatchwayError, OSError, ValueError) as error:
        sys.stderr.write(f"hatchway watch: {error}\n")
        return 2
    return 0 if status == "COMPLETED" else 1


def watch_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run_watch(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hatchway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    emulator = commands.add_parser(
        "hatchet-emulator",
        help="run the Hatchet engine emulator; prints HATCHET_CLIENT_* settings, then 'ready'",
    )
    emulator.add_argument("--port", type=int, default=7077, help="gRPC port (0: any free port)")
    emulator.add_argument("--rest-port", type=int, default=0, help="REST port (0: any free port)")
    emulator.add_argument(
        "--worker-timeout",
        type=float,
        default=30.0,
        help="seconds without heartbeat before a worker's tasks are reassigned",
    )
    emulator.add_argument(
        "--unknown-run-wait",
        type=float,
        default=10.0,
        help="seconds a subscription to an unknown run waits before NOT_FOUND",
    )
    emulator.set_defaults(handler=hatchet_emulator)

    gateway = commands.add_parser(
        "apigw-emulator",
        help="serve a SAM template's WebSocket and HTTP APIs locally; prints URLs, then 'ready'",
    )
    gateway.add_argument("--template", default="template.yaml", help="the SAM template")
    gateway.add_argument("--port", type=int, default=0, help="WebSocket API port (0: free)")
    gateway.add_argument("--http-port", type=int, default=0, help="HTTP API port (0: free)")
    gateway.add_argument(
        "--tls-port", type=int, default=0, help="wss:// and https:// port (0: free)"
    )
    gateway.add_argument("--stage", default=None, help="stage name (default: the template's)")
    gateway.add_argument(
        "--env-vars", default=None, help="JSON of environment overrides, as `sam local --env-vars`"
    )
    gateway.add_argument(
        "--parameter-overrides",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="template parameter values",
    )
    gateway.add_argument("--idle-timeout", type=float, default=600.0, help="seconds (AWS: 600)")
    gateway.add_argument(
        "--max-connection-duration", type=float, default=7200.0, help="seconds (AWS: 7200)"
    )
    gateway.set_defaults(handler=apigw_emulator)

    worker = commands.add_parser(
        "demo-worker", help="run the demo workflows in a hatchet-sdk worker"
    )
    # Benchmarks with hundreds of concurrent runs need more (HATCHWAY_DEMO_SLOTS).
    worker.add_argument(
        "--slots", type=int, default=int(os.environ.get("HATCHWAY_DEMO_SLOTS", "50"))
    )
    worker.set_defaults(handler=demo_worker)

    commands.add_parser(
        "relay", help="run the relay (settings from the environment; see docs/design.md)"
    ).set_defaults(handler=relay)

    local = commands.add_parser("dev", help="run the whole local stack and print its URLs")
    local.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="HTTP API port"
    )
    local.add_argument("--template", default="template.yaml", help="the SAM template")
    local.add_argument("--relays", type=int, default=1, help="relay processes to run")
    local.add_argument(
        "--demo-port",
        type=int,
        default=int(os.environ.get("DEMO_PORT", "8001")),
        help="the demo page's port (0: any free port)",
    )
    local.set_defaults(handler=dev)

    watcher = commands.add_parser(
        "watch", help="start a workflow (or attach to a run) and print its stream live"
    )
    watcher.add_argument("workflow", nargs="?", default="demo-stream")
    watcher.add_argument("--url", default="http://127.0.0.1:8000", help="the HTTP API")
    watcher.add_argument("--input", default="{}", help="the workflow input as JSON")
    watcher.add_argument("--run", help="attach to this run id instead of starting one")
    watcher.add_argument("--token", help="the run token (with --run)")
    watcher.add_argument("--websocket-url", help="the WebSocket URL (with --run)")
    watcher.add_argument("--after", type=int, default=0, help="resume after this seq")
    watcher.set_defaults(handler=watch_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        logger.error("cannot start", error=str(error), command=args.command)
        return 1


if __name__ == "__main__":
    sys.exit(main())
