"""$connect: records the connection (the authorizer has checked its token)."""

from hatchway import lambda_handlers

handler = lambda_handlers.connect()
