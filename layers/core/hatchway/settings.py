"""One typed settings model per process, read from the environment and validated at start."""

from __future__ import annotations

from functools import cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .protocol import MAX_MESSAGE_BYTES


class PayloadSettings(BaseSettings):
    """Large payloads through S3 (``hatchway.payloads``): what the relay, the functions
    that replay frames and workers' ``put_file`` read. Nothing here is required, so
    a worker needs only ``PAYLOAD_BUCKET``."""

    model_config = SettingsConfigDict(extra="ignore")

    payload_bucket: str = Field(default="", alias="PAYLOAD_BUCKET")
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


class Settings(PayloadSettings):
    """What the Lambdas and the relay share (see docs/design.md, "Environment contract")."""

    model_config = SettingsConfigDict(extra="ignore")

    table_name: str = Field(alias="TABLE_NAME")
    run_queue_url: str = Field(default="", alias="RUN_QUEUE_URL")
    token_signing_key: str = Field(default="", alias="TOKEN_SIGNING_KEY")
    token_secret_arn: str = Field(default="", alias="TOKEN_SECRET_ARN")
    token_ttl_seconds: int = Field(default=3600, ge=60, alias="TOKEN_TTL_SECONDS")
    allowed_workflows: str = Field(default="", alias="ALLOWED_WORKFLOWS")
    websocket_url: str = Field(default="", alias="WEBSOCKET_URL")
    frame_retention_seconds: int = Field(default=86400, ge=60, alias="FRAME_RETENTION_SECONDS")
    management_api_url: str = Field(default="", alias="AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI")

    @property
    def workflow_allow_list(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.allowed_workflows.split(",") if name.strip())


class RelaySettings(Settings):
    relay_id: str = Field(default="", alias="RELAY_ID")  # default: host name and pid
    lease_seconds: float = Field(default=30.0, gt=0, alias="RELAY_LEASE_SECONDS")
    coalesce_ms: float = Field(default=25.0, ge=0, alias="RELAY_COALESCE_MS")
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


@cache
def settings() -> Settings:
    return Settings()
