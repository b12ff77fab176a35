"""Run tokens: signed (HMAC-SHA256 JWT), scoped to one run, expiring, and checked
without a database read. The key is the Secrets Manager secret on AWS
(``TOKEN_SECRET_ARN``, cached) or ``TOKEN_SIGNING_KEY`` locally."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from .protocol import ErrorCode, ProtocolError

ISSUER = "hatchway"
AUDIENCE = "hatchway-run"


@dataclass(frozen=True)
class RunToken:
    token: str
    run_id: str
    expires_at: int  # epoch seconds

    @property
    def expires_at_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).isoformat().replace("+00:00", "Z")


class RunTokens:
    def __init__(self, key: str, ttl_seconds: int = 3600) -> None:
        if len(key) < 32:
            raise ValueError("the token signing key must be at least 32 characters")
        self._key = key
        self.ttl_seconds = ttl_seconds

    def mint(self, run_id: str, now: float | None = None) -> RunToken:
        issued = int(now if now is not None else time.time())
        expires = issued + self.ttl_seconds
        claims = {"sub": run_id, "iat": issued, "exp": expires, "iss": ISSUER, "aud": AUDIENCE}
        return RunToken(jwt.encode(claims, self._key, algorithm="HS256"), run_id, expires)

    def verify(self, token: str, run_id: str | None = None) -> RunToken:
        """The token's run and expiry; ``unauthorized`` if it is not valid, ``forbidden``
        if it is valid for another run than ``run_id``."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, "the run token has expired", run_id
            ) from None
        except jwt.InvalidTokenError:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, "the run token is not valid", run_id
            ) from None
        if run_id is not None and claims["sub"] != run_id:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the run token is for another run", run_id)
        return RunToken(token, str(claims["sub"]), int(claims["exp"]))


def signing_key(plain_key: str, secret_arn: str) -> str:
    """The key: plain locally, else the secret (cached five minutes by Powertools)."""
    if plain_key:
        return plain_key
    if not secret_arn:
        raise ValueError("set TOKEN_SIGNING_KEY or TOKEN_SECRET_ARN")
    from aws_lambda_powertools.utilities import parameters  # noqa: PLC0415 - AWS only

    return str(parameters.get_secret(secret_arn, max_age=300))
