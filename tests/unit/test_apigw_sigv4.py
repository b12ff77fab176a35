"""The emulator's SigV4 check of ``@connections`` calls, against requests botocore signs."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from hatchway_local.apigw_emulator.sigv4 import Refusal, SigV4Verifier

URL = "http://127.0.0.1:8001/test/@connections/L0SM9cOFvHcCIhw%3D"
VERIFIER = SigV4Verifier({"testing": "testing"}, {"us-east-1"})


def signed(
    body: bytes = b"hello",
    key: str = "testing",
    secret: str = "testing",
    service: str = "execute-api",
    region: str = "us-east-1",
) -> tuple[AWSRequest, CIMultiDictProxy[str]]:
    request = AWSRequest(method="POST", url=URL, data=body)
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    headers = CIMultiDict(request.headers.items())
    headers["Host"] = "127.0.0.1:8001"  # what the HTTP client adds
    return request, CIMultiDictProxy(headers)


def verify(
    headers: CIMultiDictProxy[str], body: bytes = b"hello", now: datetime | None = None
) -> Refusal | None:
    return VERIFIER.verify(method="POST", url=URL, headers=headers, body=body, now=now)


def test_a_request_botocore_signed_is_accepted() -> None:
    _request, headers = signed()
    assert verify(headers) is None


@pytest.mark.parametrize(
    ("change", "error_type"),
    [
        ({"body": b"tampered"}, "InvalidSignatureException"),
        ({"method": "DELETE"}, "InvalidSignatureException"),
        ({"url": URL.replace("%3D", "%3DX")}, "InvalidSignatureException"),
    ],
)
def test_a_changed_request_is_refused(change: dict[str, object], error_type: str) -> None:
    _request, headers = signed()
    refusal = VERIFIER.verify(
        method=str(change.get("method", "POST")),
        url=str(change.get("url", URL)),
        headers=headers,
        body=change.get("body", b"hello"),  # type: ignore[arg-type]
    )
    assert refusal is not None
    assert refusal.error_type == error_type
    assert refusal.message.startswith("The request signature we calculated does not match")


@pytest.mark.parametrize(
    ("signing", "error_type"),
    [
        ({"secret": "guessed"}, "InvalidSignatureException"),
        ({"key": "AKIAEXAMPLE"}, "UnrecognizedClientException"),
        ({"service": "s3"}, "InvalidSignatureException"),
        ({"region": "eu-west-1"}, "InvalidSignatureException"),
    ],
)
def test_other_credentials_and_scopes_are_refused(signing: dict[str, str], error_type: str) -> None:
    _request, headers = signed(**signing)  # type: ignore[arg-type]
    refusal = verify(headers)
    assert refusal is not None
    assert refusal.error_type == error_type


@pytest.mark.parametrize("header", ["", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 Credential=x"])
def test_missing_or_malformed_authorization_is_refused(header: str) -> None:
    _request, headers = signed()
    mutable = CIMultiDict(headers)
    if header:
        mutable["Authorization"] = header
    else:
        del mutable["Authorization"]
    refusal = verify(CIMultiDictProxy(mutable))
    assert refusal is not None
    assert refusal.error_type in {
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
    }


@pytest.mark.parametrize(
    ("skew_minutes", "accepted"), [(-4, True), (4, True), (-6, False), (6, False)]
)
def test_the_timestamp_may_be_off_by_five_minutes_at_most(
    skew_minutes: int, accepted: bool
) -> None:
    _request, headers = signed()
    signed_at = datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    refusal = verify(headers, now=signed_at - timedelta(minutes=skew_minutes))
    assert (refusal is None) == accepted
    if refusal is not None:
        assert refusal.message.startswith(("Signature expired", "Signature not yet current"))


def test_a_signed_payload_hash_must_be_the_bodys() -> None:
    """A request signed over its x-amz-content-sha256 header, replayed with another
    body: the signature still matches the header, so the header is checked too."""
    request = AWSRequest(method="POST", url=URL, data=b"hello")
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b"hello").hexdigest()
    SigV4Auth(Credentials("testing", "testing"), "execute-api", "us-east-1").add_auth(request)
    headers = CIMultiDict(request.headers.items())
    headers["Host"] = "127.0.0.1:8001"
    proxy = CIMultiDictProxy(headers)
    assert verify(proxy, body=b"hello") is None
    refusal = verify(proxy, body=b"injected frame")
    assert refusal is not None
    assert refusal.error_type == "InvalidSignatureException"
