"""$default: a message that is not a known action gets a bad_request error frame."""

from hatchway import lambda_handlers

handler = lambda_handlers.message()
