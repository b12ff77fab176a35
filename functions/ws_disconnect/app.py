"""$disconnect (best effort on AWS): forgets the connection and its subscriptions."""

from hatchway import lambda_handlers

handler = lambda_handlers.disconnect()
