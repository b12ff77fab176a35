"""Checking the SigV4 signature of a call to the ``@connections`` management API,
as API Gateway does before it looks at the call: the signature is recomputed
with botocore's own signer (its canonical request, string to sign and key
derivation) from the request as it arrived, and compared with the one sent.

What AWS checks and answers (all 403, ``x-amzn-ErrorType`` naming the failure):
no ``Authorization`` (``MissingAuthenticationTokenException``), a malformed one
(``IncompleteSignatureException``), an unknown access key
(``UnrecognizedClientException``), a scope that is not ``execute-api`` in a
region this gateway serves, a timestamp more than five minutes off, or a
signature that does not match (``InvalidSignatureException``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDictProxy

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "execute-api"
MAX_SKEW = timedelta(minutes=5)  # API Gateway's window for a request's timestamp

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: API Gateway's error type and message (status 403)."""

    error_type: str
    message: str


def _missing() -> Refusal:
    return Refusal("MissingAuthenticationTokenException", "Missing Authentication Token")


def _incomplete(message: str) -> Refusal:
    return Refusal("IncompleteSignatureException", message)


def _invalid(message: str) -> Refusal:
    return Refusal("InvalidSignatureException", message)


@dataclass(frozen=True)
class _Authorization:
    access_key: str
    date: str
    region: str
    service: str
    terminal: str
    signed_headers: list[str]  # lowercase, as SigV4 canonicalises them
    signature: str


def _parse(header: str) -> _Authorization | Refusal:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        return _incomplete(f"Unsupported Authorization Type: {algorithm or header!r}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value
    missing = [
        name for name in ("Credential", "SignedHeaders", "Signature") if not fields.get(name)
    ]
    if missing:
        return _incomplete(
            f"Authorization header requires {', '.join(repr(m) for m in missing)} parameter(s)."
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5:  # key/date/region/service/aws4_request
        return _incomplete(f"Credential should have 5 parts: {fields['Credential']!r}.")
    access_key, date, region, service, terminal = scope
    return _Authorization(
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        terminal=terminal,
        signed_headers=[name.lower() for name in fields["SignedHeaders"].split(";")],
        signature=fields["Signature"],
    )


class SigV4Verifier:
    """Accepts calls signed with one of ``credentials`` (access key id -> secret key)
    for ``execute-api`` in one of ``regions``."""

    def __init__(self, credentials: Mapping[str, str], regions: Collection[str]) -> None:
        self.credentials = dict(credentials)
        self.regions = set(regions)

    def verify(  # noqa: PLR0911 - one answer per check, as API Gateway gives them
        self,
        *,
        method: str,
        url: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        now: datetime | None = None,
    ) -> Refusal | None:
        """None if the call is signed; else why not. ``url`` is scheme, host and the
        path and query exactly as they arrived (still percent-encoded)."""
        header = headers.get("Authorization")
        if not header:
            return _missing()
        parsed = _parse(header)
        if isinstance(parsed, Refusal):
            return parsed
        secret = self.credentials.get(parsed.access_key)
        if secret is None:
            return Refusal(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        timestamp = headers.get("X-Amz-Date", "")
        refusal = self._scope_refusal(parsed, timestamp, now or datetime.now(UTC))
        if refusal is not None:
            return refusal

        # A payload hash the caller sent is what the signature covers: it must be
        # the body's, or a signed request could be replayed with another body.
        claimed = headers.get("X-Amz-Content-SHA256")
        if claimed is not None and claimed != hashlib.sha256(body).hexdigest():
            return _invalid(SIGNATURE_MISMATCH)

        # The request as the caller signed it: its signed headers only, as sent.
        request = AWSRequest(method=method, url=url, data=body)
        signed = parsed.signed_headers
        for name in signed:
            values = headers.getall(name, [])
            if not values:
                return _invalid(SIGNATURE_MISMATCH)
            for value in values:
                request.headers[name] = value
        request.context["timestamp"] = timestamp
        signer = SigV4Auth(Credentials(parsed.access_key, secret), SERVICE, parsed.region)
        if signer.signed_headers(signer.headers_to_sign(request)) != ";".join(sorted(signed)):
            return _invalid(SIGNATURE_MISMATCH)  # e.g. it signed a header SigV4 leaves out
        string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
        expected = signer.signature(string_to_sign, request)
        if not hmac.compare_digest(expected, parsed.signature):
            return _invalid(SIGNATURE_MISMATCH)
        return None

    def _scope_refusal(  # noqa: PLR0911 - one answer per check
        self, parsed: _Authorization, timestamp: str, now: datetime
    ) -> Refusal | None:
        """The credential scope and the timestamp, before any signature is computed."""
        if parsed.service != SERVICE or parsed.terminal != "aws4_request":
            return _invalid(f"Credential should be scoped to correct service: '{SERVICE}'. ")
        if parsed.region not in self.regions:
            return _invalid(
                f"Credential should be scoped to a valid region, not '{parsed.region}'. "
            )
        signed = set(parsed.signed_headers)
        if not {"host", "x-amz-date"} <= signed:
            return _incomplete("'Host' and 'X-Amz-Date' must be signed headers.")
        try:
            signed_at = datetime.strptime(timestamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
        except ValueError:
            return _incomplete(f"Date must be in ISO-8601 'basic format'. Got '{timestamp}'.")
        if parsed.date != timestamp[:8]:
            return _invalid(f"Credential should be scoped to a valid date, not '{parsed.date}'. ")
        earliest, latest = now - MAX_SKEW, now + MAX_SKEW
        if signed_at < earliest:
            return _invalid(
                f"Signature expired: {timestamp} is now earlier than "
                f"{earliest.strftime(SIGV4_TIMESTAMP)} ({now.strftime(SIGV4_TIMESTAMP)} - 5 min.)"
            )
        if signed_at > latest:
            return _invalid(
                f"Signature not yet current: {timestamp} is still later than "
                f"{latest.strftime(SIGV4_TIMESTAMP)} ({now.strftime(SIGV4_TIMESTAMP)} + 5 min.)"
            )
        return None
