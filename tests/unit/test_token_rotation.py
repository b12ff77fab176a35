"""Run tokens with a key ring: the signing key signs, every accepted key verifies,
so the run-token key can be rotated without refusing live tokens."""

from __future__ import annotations

import time

import pytest

from hatchway.protocol import ErrorCode, ProtocolError
from hatchway.tokens import KeyRing, RunTokens

OLD = "o" * 40
NEW = "n" * 40
OTHER = "x" * 40


def ring_tokens(ring: KeyRing) -> RunTokens:
    return RunTokens(lambda: ring, ttl_seconds=600)


def test_a_ring_signs_with_its_signing_key() -> None:
    minted = ring_tokens(KeyRing(NEW, (OLD,))).mint("run-1")
    assert RunTokens(NEW).verify(minted.token, "run-1").run_id == "run-1"
    with pytest.raises(ProtocolError):
        RunTokens(OLD).verify(minted.token, "run-1")


@pytest.mark.parametrize("signer", [OLD, NEW])
def test_tokens_of_every_accepted_key_verify(signer: str) -> None:
    token = RunTokens(signer, ttl_seconds=600).mint("run-1").token
    assert ring_tokens(KeyRing(NEW, (OLD,))).verify(token, "run-1").run_id == "run-1"


def test_a_key_that_is_not_in_the_ring_is_refused() -> None:
    token = RunTokens(OTHER).mint("run-1").token
    with pytest.raises(ProtocolError) as refused:
        ring_tokens(KeyRing(NEW, (OLD,))).verify(token, "run-1")
    assert refused.value.code is ErrorCode.UNAUTHORIZED
    assert "not valid" in refused.value.message


def test_expiry_and_run_scope_hold_for_an_older_key() -> None:
    ring = ring_tokens(KeyRing(NEW, (OLD,)))
    expired = RunTokens(OLD, ttl_seconds=60).mint("run-1", now=time.time() - 7200).token
    with pytest.raises(ProtocolError, match="expired") as refused:
        ring.verify(expired, "run-1")
    assert refused.value.code is ErrorCode.UNAUTHORIZED
    other_run = RunTokens(OLD).mint("run-2").token
    with pytest.raises(ProtocolError) as forbidden:
        ring.verify(other_run, "run-1")
    assert forbidden.value.code is ErrorCode.FORBIDDEN


def test_the_ring_is_asked_on_each_use_so_a_rotation_applies_at_once() -> None:
    rings = [KeyRing(OLD)]
    tokens = RunTokens(lambda: rings[-1], ttl_seconds=600)
    before = tokens.mint("run-1").token
    rings.append(KeyRing(NEW, (OLD,)))  # rotated: NEW signs, OLD still accepted
    after = tokens.mint("run-1").token
    assert RunTokens(NEW).verify(after, "run-1")
    assert tokens.verify(before, "run-1").run_id == "run-1"
    rings.append(KeyRing(NEW))  # OLD retired: its tokens are refused
    with pytest.raises(ProtocolError):
        tokens.verify(before, "run-1")


def test_each_key_is_tried_once_and_the_signing_key_first() -> None:
    assert KeyRing(NEW, (OLD, NEW, OLD)).verifying == (NEW, OLD)


def test_short_keys_are_refused_in_a_ring() -> None:
    with pytest.raises(ValueError, match="32"):
        KeyRing(NEW, ("short",))
