from __future__ import annotations

from hatchet_sdk.token import extract_claims_from_jwt

from hatchway_local.hatchet_emulator.server import mint_token


def test_minted_token_carries_the_claims_hatchet_sdk_reads() -> None:
    token = mint_token("0f0e2a52-4b8f-4a8b-9a55-0a3b1e7c9d11", "http://127.0.0.1:1", "127.0.0.1:2")

    assert token.startswith("ey")
    claims = extract_claims_from_jwt(token)
    assert claims.sub == "0f0e2a52-4b8f-4a8b-9a55-0a3b1e7c9d11"
    assert claims.server_url == "http://127.0.0.1:1"
    assert claims.grpc_broadcast_address == "127.0.0.1:2"
