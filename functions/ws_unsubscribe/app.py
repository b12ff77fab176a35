"""The unsubscribe route: stops a subscription."""

from hatchway import lambda_handlers

handler = lambda_handlers.message()
