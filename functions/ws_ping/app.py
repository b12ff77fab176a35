"""The ping route: answers pong."""

from hatchway import lambda_handlers

handler = lambda_handlers.message()
