"""The ``$connect`` REQUEST authorizer: a valid run token in ``?token=`` opens the
connection. Its own module: the authorizer is the first cold start of every
WebSocket handshake, so it loads only tokens and settings (no table, no S3, no
event data classes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from .observability import logger
from .protocol import ProtocolError
from .settings import AuthorizerSettings, load
from .tokens import RunTokens, key_source
from .tracing import annotate_run, capture_handler


class TokenAuthorizer:
    """The ``$connect`` REQUEST authorizer: it checks run tokens, nothing else."""

    def __init__(self, tokens: RunTokens) -> None:
        self.tokens = tokens

    def authorize(self, event: dict[str, Any]) -> dict[str, Any]:
        """A valid run token in ``?token=`` is allowed, with the run in the context.
        Raising ``Unauthorized`` makes API Gateway answer 401."""
        token = (event.get("queryStringParameters") or {}).get("token", "")
        try:
            verified = self.tokens.verify(token)
        except ProtocolError:
            raise PermissionError("Unauthorized") from None  # API Gateway's 401 convention
        return {
            "principalId": verified.run_id,
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Action": "execute-api:Invoke",
                        "Effect": "Allow",
                        "Resource": event["methodArn"],
                    }
                ],
            },
            "context": {"runId": verified.run_id, "tokenExpiresAt": verified.expires_at},
        }


def handler() -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
    """The function's handler, built at its cold start from ``AuthorizerSettings``."""
    settings = load(AuthorizerSettings)
    api = TokenAuthorizer(
        RunTokens(key_source(settings.token_signing_key, settings.token_secret_arn))
    )

    @logger.inject_lambda_context
    @capture_handler
    def authorize(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        allowed = api.authorize(event)
        annotate_run(allowed["principalId"])  # the token's run (a refused one has none)
        return allowed

    return authorize
