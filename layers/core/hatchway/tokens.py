"""Run tokens: signed (HMAC-SHA256 JWT), scoped to one run, expiring, and checked
without a database read. The key is the Secrets Manager secret on AWS
(``TOKEN_SECRET_ARN``) or ``TOKEN_SIGNING_KEY`` locally.

The secret is a key ring, so that the key can be rotated without refusing live
tokens (docs/security.md, "Rotating the run-token key"): tokens are signed with
its ``AWSCURRENT`` version and accepted when signed with ``AWSCURRENT``,
``AWSPENDING`` (the next key, announced before it signs) or ``AWSPREVIOUS`` (the
key before, until the tokens it signed expire). The stages are re-read every
five minutes, so a rotation reaches warm functions too."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from .protocol import ErrorCode, ProtocolError
from .secrets_manager import CURRENT, PENDING, PREVIOUS, CachedSecretStages

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


MIN_KEY_LENGTH = 32


@dataclass(frozen=True)
class KeyRing:
    """The key that signs new tokens and every key whose tokens are accepted."""

    signing: str
    accepted: tuple[str, ...] = ()  # besides ``signing``

    def __post_init__(self) -> None:
        if any(len(key) < MIN_KEY_LENGTH for key in (self.signing, *self.accepted)):
            raise ValueError("the token signing key must be at least 32 characters")

    @property
    def verifying(self) -> tuple[str, ...]:
        """``signing`` first (most tokens), then the others, each once."""
        return tuple(dict.fromkeys((self.signing, *self.accepted)))


KeySource = Callable[[], KeyRing]


class RunTokens:
    """Mints and checks run tokens with a key, or with a key ring asked for on each
    use (:func:`secret_key_ring` caches it)."""

    def __init__(self, key: str | KeySource, ttl_seconds: int = 3600) -> None:
        if isinstance(key, str):
            ring = KeyRing(key)
            self._keys: KeySource = lambda: ring
        else:
            self._keys = key
        self.ttl_seconds = ttl_seconds

    def mint(self, run_id: str, now: float | None = None) -> RunToken:
        issued = int(now if now is not None else time.time())
        expires = issued + self.ttl_seconds
        claims = {"sub": run_id, "iat": issued, "exp": expires, "iss": ISSUER, "aud": AUDIENCE}
        signing = self._keys().signing
        return RunToken(jwt.encode(claims, signing, algorithm="HS256"), run_id, expires)

    def verify(self, token: str, run_id: str | None = None) -> RunToken:
        """The token's run and expiry; ``unauthorized`` if it is not valid (signed by
        none of the accepted keys, expired, malformed), ``forbidden`` if it is valid
        for another run than ``run_id``."""
        try:
            claims = self._decode(token)
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

    def _decode(self, token: str) -> dict[str, Any]:
        """The claims, checked with each accepted key in turn: the signature decides
        which key signed it; expiry and claims are checked after it matched."""
        keys = self._keys().verifying
        for key in keys[:-1]:
            try:
                return self._decode_with(token, key)
            except jwt.InvalidSignatureError:
                continue
        return self._decode_with(token, keys[-1])

    @staticmethod
    def _decode_with(token: str, key: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["HS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["sub", "exp", "iat"]},
        )
        return claims


def secret_key_ring(secret_arn: str, max_age_s: float = 300.0) -> KeySource:
    """The key ring of the ``TOKEN_SECRET_ARN`` secret: signs with ``AWSCURRENT``,
    accepts ``AWSPENDING`` and ``AWSPREVIOUS`` too; re-read after ``max_age_s``."""
    stages = CachedSecretStages(secret_arn, "TOKEN_SECRET_ARN", max_age_s=max_age_s)

    def ring() -> KeyRing:
        values = stages.values()
        others = tuple(values[stage] for stage in (PENDING, PREVIOUS) if stage in values)
        return KeyRing(values[CURRENT], others)

    return ring


def key_source(plain_key: str, secret_arn: str) -> str | KeySource:
    """``TOKEN_SIGNING_KEY`` as it is (locally), else the secret's key ring."""
    if plain_key:
        return plain_key
    if not secret_arn:
        raise ValueError("set TOKEN_SIGNING_KEY or TOKEN_SECRET_ARN")
    return secret_key_ring(secret_arn)
