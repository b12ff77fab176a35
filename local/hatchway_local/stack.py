"""The whole product on one machine: moto (DynamoDB, SQS, S3, Secrets Manager,
with the template's own resources), the Hatchet engine emulator or a real
Hatchet, a real hatchet-sdk worker with the demo workflows, the API Gateway
emulator running the template's Lambda handlers, and one or more relays as
their own processes. ``hatchway dev`` runs it; the end-to-end tests too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hatchway.observability import logger

from .apigw_emulator.server import ApiGatewayEmulator
from .apigw_emulator.template import TemplateReader
from .aws import LocalAws, start_local_aws
from .demo.page_server import DemoPage
from .hatchet_emulator.server import HatchetEmulator

# Template parameters the local stack deploys with. AllowedWorkflows has no default
# in template.yaml (a deploy names its workflows); locally, the demo worker's.
# The local stack is open: the emulator serves POST /runs without its authorizer.
# The demo page (another origin) calls the HTTP API from the browser: CORS for any origin.
LOCAL_PARAMETERS = {
    "AllowedWorkflows": "demo-stream,demo-fail,demo-file,demo-big-chunk,demo-ticks",
    "CorsAllowOrigins": "*",
}

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """SIGTERM the process's session; SIGKILL it if it lingers. Its exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def client_dist(template: Path) -> Path:
    """The JS client's build (``make js``), beside the template in the repository."""
    return template.resolve().parent / "clients" / "js" / "dist"


@dataclass
class LocalStack:
    template: Path
    http_port: int = 8000
    relays: int = 1
    relay_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None  # where the worker's and relays' output go (else stderr)
    idle_timeout_s: float = 600.0
    demo_port: int | None = None  # serve the demo page on this port (0: any); None: not at all

    aws: LocalAws | None = None
    hatchet: HatchetEmulator | None = None
    gateway: ApiGatewayEmulator | None = None
    demo: DemoPage | None = None
    hatchet_settings: dict[str, str] = field(default_factory=dict)
    worker: subprocess.Popen[bytes] | None = None
    relay_processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    # -- environment -------------------------------------------------------------------

    def _aws_env(self) -> dict[str, str]:
        assert self.aws is not None  # noqa: S101 - started first
        return {
            **LOCAL_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.aws.endpoint_url,
            "TABLE_NAME": self.aws.table_name,
            "RUN_QUEUE_URL": self.aws.queue_url("RunQueue"),
            "PAYLOAD_BUCKET": self.aws.bucket_name("PayloadBucket"),
            "TOKEN_SECRET_ARN": self.aws.secret_arn("TokenSigningSecret"),
        }

    def lambda_env(self) -> dict[str, str]:
        # OPENAPI_ENABLED: locally the trigger serves GET /openapi.json (off when deployed).
        return {**self._aws_env(), **self.hatchet_settings, "OPENAPI_ENABLED": "true"}

    def relay_environment(self, relay_id: str) -> dict[str, str]:
        assert self.gateway is not None  # noqa: S101
        return {
            **os.environ,
            **self._aws_env(),
            **self.hatchet_settings,
            "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": self.gateway.management_url,
            "RELAY_ID": relay_id,
            # One heartbeat file per relay (the image's default is one path per task).
            "RELAY_HEALTH_FILE": str(
                Path(tempfile.gettempdir()) / f"hatchway-{relay_id}-{os.getpid()}.heartbeat"
            ),
            "RELAY_QUEUE_WAIT_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
            **self.relay_env,
        }

    def _output(self, name: str) -> IO[bytes] | IO[str]:
        if self.log_dir is None:
            return sys.stderr  # logs; stdout stays for what the stack prints for people
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        return log

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str], module: str = "hatchway_local.cli"
    ) -> subprocess.Popen[bytes]:
        output = self._output(name)
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module, *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop each group ourselves
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.aws = await asyncio.to_thread(start_local_aws, self.template)
        if os.environ.get("HATCHET_CLIENT_TOKEN"):
            self.hatchet_settings = {
                k: v for k, v in os.environ.items() if k.startswith("HATCHET_CLIENT_")
            }
            logger.info("using the Hatchet named by HATCHET_CLIENT_TOKEN")
        else:
            self.hatchet = HatchetEmulator()
            await self.hatchet.start()
            self.hatchet_settings = self.hatchet.settings()
        worker_env = {**os.environ, **self._aws_env(), **self.hatchet_settings}
        self.worker = self._spawn("worker", ["demo-worker"], worker_env)
        api = TemplateReader(self.template, dict(LOCAL_PARAMETERS)).api()
        self.gateway = ApiGatewayEmulator(
            api,
            http_port=self.http_port,
            extra_env=self.lambda_env(),
            idle_timeout_s=self.idle_timeout_s,
            # @connections takes only what the stack gives its handlers and relays.
            credentials={
                LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"]: LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
            },
        )
        await self.gateway.start()
        if self.demo_port is not None:
            self.demo = DemoPage(self.gateway.http_url, client_dist(self.template), self.demo_port)
            await self.demo.start()
        for number in range(self.relays):
            self.start_relay(f"relay-{number + 1}")
        await self._wait_for_worker()

    async def _wait_for_worker(self, timeout_s: float = 60.0) -> None:
        if self.hatchet is None:
            return  # a real Hatchet: the worker registers there
        deadline = time.monotonic() + timeout_s
        while not any(w.listeners for w in self.hatchet.engine.workers.values()):
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError("the demo worker exited; see its output")
            if time.monotonic() > deadline:
                raise TimeoutError("the demo worker did not register")
            await asyncio.sleep(0.05)

    def start_relay(
        self, relay_id: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``env``: more variables for this relay (e.g. an endpoint through a proxy)."""
        # The runtime's own entry point, as the relay image runs it (hatchway-relay).
        process = self._spawn(
            relay_id,
            [],
            {**self.relay_environment(relay_id), **(env or {})},
            module="hatchway.relay.main",
        )
        self.relay_processes[relay_id] = process
        return process

    async def stop_relay(
        self, relay_id: str, signum: int = signal.SIGTERM, timeout_s: float = 15.0
    ) -> int | None:
        """Signal a relay; with SIGTERM, SIGKILL it after ``timeout_s``. Its exit code."""
        process = self.relay_processes.pop(relay_id)
        if signum == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return await asyncio.to_thread(process.wait)
        return await asyncio.to_thread(_stop, process, timeout_s)

    async def close(self) -> None:
        for relay_id in list(self.relay_processes):
            await self.stop_relay(relay_id)
        if self.worker is not None:
            await asyncio.to_thread(_stop, self.worker)  # off the loop: it calls the emulator
        if self.demo is not None:
            await self.demo.close()
        if self.gateway is not None:
            await self.gateway.close()
        if self.hatchet is not None:
            await self.hatchet.close()
        if self.aws is not None:
            await asyncio.to_thread(self.aws.stop)
        for log in self._logs:
            log.close()

    async def __aenter__(self) -> LocalStack:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
