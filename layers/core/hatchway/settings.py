"""One typed settings model per process, read from the environment and validated at start.

Each process loads its own model once, at start (module scope of a Lambda's
``app.py``, the relay's ``main``, a worker's set-up) with :func:`load`: a variable
the process needs and lacks stops it there, with the variable's name, instead of
failing its first request. The contract, variable by variable, is
docs/design.md ("Environment contract").

| process | model |
|---|---|
| WebSocket authorizer | :class:`AuthorizerSettings` |
| ``$connect`` / ``$disconnect`` | :class:`ConnectionSettings` |
| subscribe | :class:`SubscribeSettings` |
| unsubscribe, ping, ``$default`` | :class:`MessageSettings` |
| trigger | :class:`TriggerSettings` (with :class:`HatchetSettings`) |
| relay | :class:`RelaySettings` (with :class:`HatchetSettings`) |
| a Hatchet worker's ``put_file`` | :class:`WorkerSettings` |
| the dead-letter consumer | :class:`DeadLetterSettings` (with :class:`HatchetSettings`) |
| ``hatchway-relay --health`` | :class:`RelayHealthSettings` |
"""

from __future__ import annotations

from typing import Self

import jwt
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .protocol import MAX_MESSAGE_BYTES


class SettingsError(Exception):
    """The environment lacks, or has a wrong value for, what the process needs."""


def load[S: BaseSettings](model: type[S]) -> S:
    """``model`` from the environment, or a SettingsError naming each bad variable."""
    try:
        return model()
    except ValidationError as error:
        prefix = str(model.model_config.get("env_prefix") or "")
        problems = []
        for problem in error.errors():
            loc = [str(part) for part in problem["loc"]]
            if not loc:  # a rule over several variables: its message names them
                problems.append(problem["msg"].removeprefix("Value error, "))
                continue
            name = loc[0] if loc[0].isupper() else (prefix + loc[0]).upper()
            message = "is required" if problem["type"] == "missing" else problem["msg"]
            problems.append(f"{name} {message}")
        raise SettingsError(f"{model.__name__}: " + "; ".join(problems)) from None


class _Env(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", validate_default=True)


# -- the pieces several processes share ----------------------------------------------


class TableSettings(_Env):
    table_name: str = Field(min_length=1, alias="TABLE_NAME")
    frame_retention_seconds: int = Field(default=86400, ge=60, alias="FRAME_RETENTION_SECONDS")


class TokenKeySettings(_Env):
    """The run-token key: the Secrets Manager secret on AWS, a plain key locally."""

    token_signing_key: str = Field(default="", alias="TOKEN_SIGNING_KEY")
    token_secret_arn: str = Field(default="", alias="TOKEN_SECRET_ARN")

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        if not (self.token_signing_key or self.token_secret_arn):
            raise ValueError("set TOKEN_SECRET_ARN (AWS) or TOKEN_SIGNING_KEY (locally)")
        if self.token_signing_key and len(self.token_signing_key) < 32:
            raise ValueError("TOKEN_SIGNING_KEY must be at least 32 characters")
        return self


class PayloadSettings(_Env):
    """Large payloads through S3 (``hatchway.payloads``)."""

    payload_bucket: str = Field(min_length=1, alias="PAYLOAD_BUCKET")
    # Presigned GET URLs are minted when a frame is sent and live this long.
    payload_url_ttl_seconds: int = Field(
        default=900, ge=1, le=7 * 86400, alias="PAYLOAD_URL_TTL_SECONDS"
    )
    # A frame whose JSON is larger goes to S3 (headroom under API Gateway's 128 KB).
    offload_bytes: int = Field(
        default=120 * 1024, ge=1024, le=MAX_MESSAGE_BYTES - 1024, alias="RELAY_OFFLOAD_BYTES"
    )
    # How long one flush retries a failing S3 put before the follower gives up on it.
    offload_retry_seconds: float = Field(default=30.0, gt=0, alias="RELAY_OFFLOAD_RETRY_SECONDS")


class ManagementApiSettings(_Env):
    # https://{api}.execute-api.{region}.amazonaws.com/{stage} on AWS; botocore reads
    # the same variable, but a process that posts must not start without it.
    management_api_url: str = Field(min_length=1, alias="AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI")


class HatchetSettings(BaseSettings):
    """Hatchet's connection, from hatchet-sdk's own variables (``HATCHET_CLIENT_*``).

    The token is a JWT whose claims name the tenant (``sub``) and the gRPC address
    (``grpc_broadcast_address``); ``HATCHET_CLIENT_HOST_PORT`` and
    ``HATCHET_CLIENT_TENANT_ID`` override them, as in the SDK.

    On AWS the token is not in the environment: ``HATCHET_CLIENT_TOKEN_SECRET_ARN``
    (Hatchway's own variable, not the SDK's) names the Secrets Manager secret that
    holds it, read once, when the settings load (a process's start). A token in
    ``HATCHET_CLIENT_TOKEN`` (the local stack, workers) is used as it is.
    """

    model_config = SettingsConfigDict(extra="ignore", env_prefix="HATCHET_CLIENT_")

    token: str = ""
    token_secret_arn: str = ""
    host_port: str = ""
    tenant_id: str = ""
    namespace: str = ""
    tls_strategy: str = Field(default="tls", pattern="^(tls|none)$")
    tls_root_ca_file: str = ""
    tls_server_name: str = ""
    grpc_max_recv_message_length: int = 4 * 1024 * 1024

    @model_validator(mode="after")
    def _from_token(self) -> Self:
        source = "HATCHET_CLIENT_TOKEN"
        if not self.token:
            self.token = _hatchet_token_from_secret(self.token_secret_arn)
            source = "the token in the secret HATCHET_CLIENT_TOKEN_SECRET_ARN names"
        try:  # the SDK reads these claims unverified too: the engine checks the token
            claims = jwt.decode(self.token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise ValueError(f"{source} is not a JWT") from None
        self.host_port = self.host_port or str(claims.get("grpc_broadcast_address") or "")
        self.tenant_id = self.tenant_id or str(claims.get("sub") or "")
        if not self.host_port:
            raise ValueError(
                f"{source} names no grpc_broadcast_address: set HATCHET_CLIENT_HOST_PORT"
            )
        if self.namespace and not self.namespace.endswith("_"):
            self.namespace += "_"  # the SDK's rule: "team" -> "team_", lower case
        self.namespace = self.namespace.lower()
        return self

    def workflow_name(self, name: str) -> str:
        """The name Hatchet knows the workflow by (the namespace, as the SDK applies it)."""
        if not self.namespace or name.startswith(self.namespace):
            return name
        return self.namespace + name


def _hatchet_token_from_secret(secret_arn: str) -> str:
    if not secret_arn:
        raise ValueError(
            "set HATCHET_CLIENT_TOKEN_SECRET_ARN (AWS: the secret holding the Hatchet token)"
            " or HATCHET_CLIENT_TOKEN (locally)"
        )
    from .secrets_manager import SecretError, read_secret  # noqa: PLC0415 - only when needed

    try:
        token = read_secret(secret_arn, "HATCHET_CLIENT_TOKEN_SECRET_ARN")
    except SecretError as error:
        raise ValueError(str(error)) from None
    return str(token).strip()


# -- one model per process -----------------------------------------------------------


class AuthorizerSettings(TokenKeySettings):
    """The ``$connect`` authorizer: it checks tokens and touches nothing else."""


class ConnectionSettings(TableSettings):
    """``$connect`` and ``$disconnect``: connection items in the table."""


class MessageSettings(TableSettings, ManagementApiSettings):
    """unsubscribe, ping and ``$default``: they answer on the socket (and drop a
    connection that is gone)."""

    # Flood control per connection (hatchway.rate_limit): a token bucket that
    # refills this many messages a second and holds at most the burst.
    message_rate_per_second: float = Field(default=10.0, gt=0, alias="WS_MESSAGE_RATE")
    message_burst: int = Field(default=20, ge=1, alias="WS_MESSAGE_BURST")


class SubscribeSettings(MessageSettings, TokenKeySettings, PayloadSettings):
    """subscribe: checks run tokens too, and its replay mints payload URLs."""


class TriggerSettings(TableSettings, TokenKeySettings, PayloadSettings):
    run_queue_url: str = Field(min_length=1, alias="RUN_QUEUE_URL")
    token_ttl_seconds: int = Field(default=3600, ge=60, alias="TOKEN_TTL_SECONDS")
    allowed_workflows: str = Field(min_length=1, alias="ALLOWED_WORKFLOWS")
    websocket_url: str = Field(min_length=1, alias="WEBSOCKET_URL")
    # Serve the API's OpenAPI document at GET /openapi.json (off: the route is a 404).
    openapi_enabled: bool = Field(default=False, alias="OPENAPI_ENABLED")
    # Origins whose browser code may call the API (comma-separated, or "*"): the
    # run-token routes are read by frontends on their own origin. Empty: no CORS.
    cors_allow_origins: str = Field(default="", alias="CORS_ALLOW_ORIGINS")
    hatchet: HatchetSettings = Field(default_factory=lambda: load(HatchetSettings))

    @property
    def workflow_allow_list(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.allowed_workflows.split(",") if name.strip())

    @property
    def cors_origins(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.cors_allow_origins.split(",") if o.strip())


class RelayHealthSettings(_Env):
    """The relay's heartbeat file, written by the relay and read by ``hatchway-relay
    --health`` (a container HealthCheck, which must not need the relay's other settings)."""

    health_file: str = Field(
        default="/tmp/hatchway-relay-heartbeat",  # noqa: S108 - the task's own /tmp volume
        min_length=1,
        alias="RELAY_HEALTH_FILE",
    )
    # Touched this often while the relay's loop is healthy; stale after three times it.
    health_interval_seconds: float = Field(default=5.0, gt=0, alias="RELAY_HEALTH_SECONDS")


class RelaySettings(TableSettings, PayloadSettings, ManagementApiSettings, RelayHealthSettings):
    run_queue_url: str = Field(min_length=1, alias="RUN_QUEUE_URL")
    relay_id: str = Field(default="", alias="RELAY_ID")  # default: host name and pid
    lease_seconds: float = Field(default=30.0, gt=0, alias="RELAY_LEASE_SECONDS")
    # A busy connection gets at most one message per window (the first after a quiet
    # spell goes at once): API Gateway bills per message. docs/performance.md.
    coalesce_ms: float = Field(default=100.0, ge=0, alias="RELAY_COALESCE_MS")
    # Group commits of the frame log: one item per window or per this many bytes
    # (the final status at once). A relay that dies loses at most this window from
    # the log (frames it sent live are then marked by a gap), never more.
    log_commit_ms: float = Field(default=250.0, ge=0, alias="RELAY_LOG_COMMIT_MS")
    log_commit_bytes: int = Field(default=64 * 1024, ge=1024, alias="RELAY_LOG_COMMIT_BYTES")
    # Seqs reserved in the run's META at a time (one write per block).
    seq_block: int = Field(default=256, ge=1, alias="RELAY_SEQ_BLOCK")
    poll_ms: float = Field(default=100.0, gt=0, alias="RELAY_POLL_MS")
    max_runs: int = Field(default=500, ge=1, alias="RELAY_MAX_RUNS")
    queue_wait_seconds: int = Field(default=20, ge=0, le=20, alias="RELAY_QUEUE_WAIT_SECONDS")
    # A run's message reappears this long after its relay died: keep it near the lease.
    visibility_seconds: int = Field(default=30, ge=1, alias="RELAY_VISIBILITY_SECONDS")
    # SIGTERM: how long a stopping relay waits for another to claim each run (ECS
    # allows 120 s in all), and how long a successor lets its subscription reach
    # Hatchet before claiming (Hatchet acknowledges nothing before the first event).
    handover_seconds: float = Field(default=30.0, gt=0, le=90, alias="RELAY_HANDOVER_SECONDS")
    handover_grace_ms: float = Field(default=500.0, ge=0, alias="RELAY_HANDOVER_GRACE_MS")
    # A frame-log write that keeps failing (a 500, throttling) is retried this long;
    # then the run is handed back (its message released), never finished.
    log_retry_seconds: float = Field(default=60.0, gt=0, alias="RELAY_LOG_RETRY_SECONDS")
    # A connection that cannot keep up is shed (told too_slow, disconnected) when this
    # many bytes of frames wait for it, or when no post got through for this long.
    send_queue_bytes: int = Field(
        default=16 * 1024 * 1024, ge=64 * 1024, alias="RELAY_SEND_QUEUE_BYTES"
    )
    send_stall_seconds: float = Field(default=120.0, gt=0, alias="RELAY_SEND_STALL_SECONDS")
    hatchet: HatchetSettings = Field(default_factory=lambda: load(HatchetSettings))


class DeadLetterSettings(TableSettings, PayloadSettings, ManagementApiSettings):
    """The consumer of the run queue's dead-letter queue: it ends each run there
    honestly (a gap and the final status from Hatchet) and tells its subscribers."""

    # The lease it holds on a run while it writes the run's end (seconds).
    lease_seconds: float = Field(default=30.0, gt=0, le=300, alias="DLQ_LEASE_SECONDS")
    # Hatchet unreachable: the message is left for a retry until its receive count
    # reaches this, then the run is ended FAILED all the same (the DLQ has no queue
    # behind it). The count is the message's ApproximateReceiveCount, which may go on
    # from the run queue's five: ten leaves five tries here (more if it starts over).
    give_up_receive_count: int = Field(default=10, ge=1, alias="DLQ_GIVE_UP_RECEIVE_COUNT")
    hatchet: HatchetSettings = Field(default_factory=lambda: load(HatchetSettings))


class WorkerSettings(PayloadSettings):
    """A Hatchet worker that puts files (``hatchway.worker``): it needs only the bucket."""
