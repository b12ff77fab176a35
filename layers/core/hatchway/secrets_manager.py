"""The Secrets Manager adapter: every secret Hatchway reads goes through here.

Two secrets, read with boto3's ``secretsmanager`` client (``AWS_ENDPOINT_URL``
points it at moto locally):

- the run-token key (``TOKEN_SECRET_ARN``, :mod:`hatchway.tokens`): re-read every
  few minutes, at its ``AWSCURRENT``, ``AWSPENDING`` and ``AWSPREVIOUS`` stages, so
  that a rotation reaches warm functions (docs/security.md, "Rotating the key");
- the Hatchet API token (``HATCHET_CLIENT_TOKEN_SECRET_ARN``,
  :class:`hatchway.settings.HatchetSettings`): read once, at a process's start.

A failure names the variable that holds the ARN, so that a process that cannot
start says which setting to fix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

CURRENT = "AWSCURRENT"
PENDING = "AWSPENDING"
PREVIOUS = "AWSPREVIOUS"


class SecretError(Exception):
    """A secret cannot be read (missing, not allowed, not a string, unreachable)."""


def read_secret(
    arn: str,
    variable: str,
    stage: str = CURRENT,
    *,
    client: Any = None,  # noqa: ANN401 - a boto3 secretsmanager client
    missing_ok: bool = False,
) -> str | None:
    """The SecretString of ``arn`` at version ``stage``.

    ``missing_ok``: ``None`` when the secret has no version at that stage (the
    optional stages of a rotation), instead of an error. Any other failure raises
    :class:`SecretError` naming ``variable`` and the ARN."""
    if not arn:
        raise SecretError(f"{variable} is empty: it must name a Secrets Manager secret")
    try:
        secrets = client or boto3.client("secretsmanager")
        response = secrets.get_secret_value(SecretId=arn, VersionStage=stage)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if missing_ok and code == "ResourceNotFoundException":
            return None
        raise SecretError(
            f"{variable}: cannot read the secret {arn} ({stage}): {code or error}"
        ) from None
    except BotoCoreError as error:
        raise SecretError(f"{variable}: cannot read the secret {arn} ({stage}): {error}") from None
    value = response.get("SecretString")
    if not isinstance(value, str) or not value:
        raise SecretError(f"{variable}: the secret {arn} ({stage}) holds no SecretString")
    return value


class CachedSecretStages:
    """A secret's values at several stages, re-read after ``max_age_s`` seconds.

    Reading is serialised (one refresh at a time); a refresh that fails keeps
    raising until the secret can be read again, so a process never serves with a
    key it could not confirm for longer than ``max_age_s``."""

    def __init__(
        self,
        arn: str,
        variable: str,
        stages: tuple[str, ...] = (CURRENT, PENDING, PREVIOUS),
        *,
        max_age_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        client: Any = None,  # noqa: ANN401 - a boto3 secretsmanager client
    ) -> None:
        self.arn, self.variable, self.stages = arn, variable, stages
        self.max_age_s = max_age_s
        self._clock = clock
        self._client = client
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._read_at: float | None = None

    def values(self) -> dict[str, str]:
        """Stage -> value for the stages that exist; the first stage must."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.max_age_s:
                self._values = self._read()
                self._read_at = now
            return dict(self._values)

    def _read(self) -> dict[str, str]:
        if self._client is None:
            self._client = boto3.client("secretsmanager")
        found: dict[str, str] = {}
        for index, stage in enumerate(self.stages):
            value = read_secret(
                self.arn, self.variable, stage, client=self._client, missing_ok=index > 0
            )
            if value is not None:
                found[stage] = value
        return found
