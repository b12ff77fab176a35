"""Run tokens: scoped to one run, expiring, tamper-proof, checked without a read."""

from __future__ import annotations

import time

import pytest

from hatchway.protocol import ErrorCode, ProtocolError
from hatchway.tokens import RunTokens

KEY = "k" * 40


def test_a_token_verifies_for_its_run() -> None:
    tokens = RunTokens(KEY, ttl_seconds=600)
    minted = tokens.mint("run-1")
    verified = tokens.verify(minted.token, "run-1")
    assert verified.run_id == "run-1"
    assert verified.expires_at == minted.expires_at
    assert minted.expires_at_iso.endswith("Z")


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda t: t.mint("run-2").token, ErrorCode.FORBIDDEN),  # another run's token
        (
            lambda t: t.mint("run-1", now=time.time() - 7200).token,
            ErrorCode.UNAUTHORIZED,
        ),  # expired
        (lambda _t: RunTokens("z" * 40).mint("run-1").token, ErrorCode.UNAUTHORIZED),  # other key
        (lambda t: t.mint("run-1").token[:-3] + "abc", ErrorCode.UNAUTHORIZED),  # tampered
        (lambda _t: "garbage", ErrorCode.UNAUTHORIZED),
    ],
)
def test_bad_tokens_are_refused(make: object, code: ErrorCode) -> None:
    tokens = RunTokens(KEY, ttl_seconds=600)
    with pytest.raises(ProtocolError) as refused:
        tokens.verify(make(tokens), "run-1")  # type: ignore[operator]
    assert refused.value.code is code


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        RunTokens("short")
