"""$connect REQUEST authorizer: allows a connection that carries a valid run token."""

from hatchway import lambda_handlers

handler = lambda_handlers.authorizer()
