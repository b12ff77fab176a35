"""The relay's SigV4 signer signs exactly as botocore's SigV4Auth does (API Gateway
checks the signature; the local emulator checks it with botocore's signer too)."""

from __future__ import annotations

from datetime import datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hatchway.relay.management_api import SigV4Signer


class Chain:
    """botocore's credential chain as the signer uses it."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def get_frozen_credentials(self) -> Credentials:
        return self.credentials


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("connection", ["L0SM9cOFvHcCIhw%3D", "a%2Fb%2Bc%3D"])
def test_the_signature_is_botocores(token: str | None, method: str, connection: str) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    url = f"https://abc123.execute-api.eu-west-1.amazonaws.com/prod/@connections/{connection}"
    body = b'{"type":"chunk","seq":1}' if method == "POST" else b""
    reference = AWSRequest(method=method, url=url, data=body)
    SigV4Auth(credentials, "execute-api", "eu-west-1").add_auth(reference)
    when = datetime.strptime(reference.headers["X-Amz-Date"] + "+0000", "%Y%m%dT%H%M%SZ%z")

    ours = SigV4Signer(Chain(credentials), "eu-west-1").headers(method, url, body, now=when)

    assert ours["Authorization"] == reference.headers["Authorization"]
    assert ours["X-Amz-Date"] == reference.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == reference.headers.get("X-Amz-Security-Token")


def test_the_day_s_key_is_derived_once_and_renewed_with_the_day_or_the_secret() -> None:
    chain = Chain(Credentials("AKID", "secret-1"))
    signer = SigV4Signer(chain, "us-east-1")
    day1, day2 = (
        datetime.fromisoformat("2026-12-01T23:59:59+00:00"),
        datetime.fromisoformat("2026-12-02T00:00:01+00:00"),
    )
    url = "http://127.0.0.1:9/s/@connections/x"
    first = signer.headers("POST", url, b"a", now=day1)["Authorization"]
    assert signer.headers("POST", url, b"a", now=day1)["Authorization"] == first
    assert signer.headers("POST", url, b"a", now=day2)["Authorization"] != first
    chain.credentials = Credentials("AKID", "secret-2")  # rotated credentials
    assert signer.headers("POST", url, b"a", now=day1)["Authorization"] != first
