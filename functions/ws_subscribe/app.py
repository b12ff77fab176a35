"""The subscribe route: checks the run token, then replays or hands the subscriber to the relay."""

from hatchway import lambda_handlers

handler = lambda_handlers.subscribe()
