"""$connect REQUEST authorizer: allows a connection that carries a valid run token."""

from hatchway import authorizer

handler = authorizer.handler()
