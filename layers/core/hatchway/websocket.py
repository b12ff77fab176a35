"""The WebSocket API's logic, behind thin Lambda handlers: the token authorizer,
``$connect``, ``$disconnect``, and the client messages (subscribe, unsubscribe,
ping; anything else is a ``bad_request``), answered through the management API.

Who sends a subscriber its frames: for a run that has ended, the subscribe
handler replays the frame log itself; for a live run, the relay that holds the
run's lease sends the backlog and then live frames. The handler re-reads the
run after storing the subscription, so a run that ends or changes hands in
between still reaches the subscriber (a frame may then arrive twice, with the
same ``seq``: clients drop ``seq <= last``, as the protocol says).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .connections import Connections, DeliveryError, StaleConnectionError, post_frames
from .observability import logger
from .payloads import PayloadError, Payloads
from .protocol import (
    ErrorCode,
    Frame,
    ProtocolError,
    SubscribeMessage,
    UnsubscribeMessage,
    error_frame,
    parse_client_message,
    pong_frame,
    subscribed_frame,
    unsubscribed_frame,
)
from .rate_limit import Admission, ConnectionRateLimiter
from .store import RunRecord, Store
from .tokens import RunTokens

REPLAY_PAGE = 1000


def _lease_holder(run: RunRecord) -> str | None:
    if run.lease_owner and run.lease_expires_at > time.time() * 1000:
        return run.lease_owner
    return None


def _live_holder(run: RunRecord | None) -> str | None:
    """The relay following a run that is not over, if any."""
    return _lease_holder(run) if run is not None and not run.final else None


class ConnectionLifecycle:
    """``$connect`` (after the authorizer) and ``$disconnect``: connection items."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def connect(self, connection_id: str, authorizer: dict[str, Any] | None) -> dict[str, Any]:
        run_id = str((authorizer or {}).get("runId", ""))
        if not run_id:  # deployed without the authorizer: refuse rather than run open
            return {"statusCode": 401, "body": "a run token is required"}
        self.store.put_connection(connection_id, run_id)
        return {"statusCode": 200}

    def disconnect(self, connection_id: str) -> dict[str, Any]:
        runs = self.store.drop_connection(connection_id)
        logger.info("connection closed", connection_id=connection_id, runs=runs)
        return {"statusCode": 200}


class SubscribeRouteOnlyError(ProtocolError):
    """A subscribe that reached a function built without tokens (on AWS the route
    selection sends every ``subscribe`` to the subscribe function)."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.INTERNAL, "subscribe is answered on the subscribe route only")


class WebSocketApi:
    """The client messages. ``tokens`` and ``payloads`` are the subscribe function's
    (it checks tokens and replays): unsubscribe, ping and ``$default`` have neither,
    nor the right to read the signing key."""

    def __init__(
        self,
        store: Store,
        connections: Connections,
        tokens: Callable[[], RunTokens] | None = None,
        payloads: Payloads | None = None,
        limiter: ConnectionRateLimiter | None = None,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.connections = connections
        self.payloads = payloads  # mints URLs for offloaded payloads in a replay
        # The key is fetched on the first subscribe, then kept for the environment.
        self._tokens = tokens
        self._token_checker: RunTokens | None = None

    @property
    def tokens(self) -> RunTokens:
        if self._tokens is None:
            raise SubscribeRouteOnlyError
        if self._token_checker is None:
            self._token_checker = self._tokens()
        return self._token_checker

    # -- messages ----------------------------------------------------------------------

    def message(self, connection_id: str, body: str | bytes | None) -> dict[str, Any]:
        if self.limiter is not None and not self._admitted(connection_id):
            return {"statusCode": 200}
        try:
            request = parse_client_message(body)
            if isinstance(request, SubscribeMessage):
                self._subscribe(connection_id, request)
            elif isinstance(request, UnsubscribeMessage):
                self._unsubscribe(connection_id, request.run_id)
            else:
                self._post(connection_id, [pong_frame()])
        except ProtocolError as error:
            self._post(connection_id, [error_frame(error.code, error.message, error.run_id)])
        except PayloadError as error:  # no URL could be minted for the replay
            logger.error(
                "could not mint payload URLs", connection_id=connection_id, error=str(error)
            )
            self._post(
                connection_id,
                [
                    error_frame(
                        ErrorCode.INTERNAL, "download URLs could not be minted; subscribe again"
                    )
                ],
            )
        except StaleConnectionError:
            self.store.drop_connection(connection_id)
        except DeliveryError as error:  # the client will not hear of it; log and move on
            logger.warning("could not answer", connection_id=connection_id, error=str(error))
        except Exception:  # noqa: BLE001 - a failure of ours (the table, the key) still answers
            logger.exception("message failed", connection_id=connection_id)
            self._tell(
                connection_id, ErrorCode.INTERNAL, "the message could not be handled; try again"
            )
        return {"statusCode": 200}

    def _tell(self, connection_id: str, code: ErrorCode, message: str) -> None:
        """One error frame, one try: a client that cannot hear it is only logged."""
        try:
            self._post(connection_id, [error_frame(code, message)], attempts=1)
        except DeliveryError as error:
            logger.warning("could not answer", connection_id=connection_id, error=str(error))

    def _admitted(self, connection_id: str) -> bool:
        """Flood control: over its rate, a message is dropped, and the client is told
        now and then (not for each one: that would answer a flood with a flood)."""
        assert self.limiter is not None  # noqa: S101 - checked by the caller
        admission = self.limiter.admit(connection_id)
        if admission is Admission.ADMIT:
            return True
        if admission is Admission.REFUSE_AND_TELL:
            logger.warning("connection rate limited", connection_id=connection_id)
            self._tell(
                connection_id,
                ErrorCode.RATE_LIMITED,
                f"over {self.limiter.rate:g} messages a second (burst {self.limiter.burst}):"
                " messages are dropped until the rate falls",
            )
        return False

    def _subscribe(self, connection_id: str, request: SubscribeMessage) -> None:
        token = self.tokens.verify(request.token, request.run_id)
        run = self.store.get_run(request.run_id)
        if run is None:
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"run {request.run_id} not found", request.run_id
            )
        # Before the subscription exists, so it precedes every frame of the run.
        self._post(connection_id, [subscribed_frame(run.run_id, run.status, run.last_seq)])
        if run.final:
            self._replay(connection_id, run.run_id, request.after)
            return
        owner = _lease_holder(run)
        self.store.put_subscription(
            run.run_id, connection_id, request.after, token.expires_at, owner
        )
        now = self.store.get_run(run.run_id)
        if now is None or now.final:
            self._replay(connection_id, run.run_id, request.after)
            self.store.delete_subscription(run.run_id, connection_id)
        elif (holder := _lease_holder(now)) and holder != owner:
            self.store.set_subscription_owner(run.run_id, connection_id, holder)

    def _unsubscribe(self, connection_id: str, run_id: str) -> None:
        """A live run's relay must stop at once: it is told through the table (a
        tombstone its poll finds) and answers ``unsubscribed`` itself, after the
        frames it had sent, so none follows. Otherwise the answer is ours, now."""
        holder = _live_holder(self.store.get_run(run_id))
        if holder is not None and self.store.remove_subscription(run_id, connection_id, holder):
            # As for subscribe: the run may have changed hands meanwhile (a handover).
            current = _live_holder(self.store.get_run(run_id))
            if current == holder:
                return
            if current is not None and self.store.remove_subscription(
                run_id, connection_id, current
            ):
                return
        self.store.delete_subscription(run_id, connection_id)
        self._post(connection_id, [unsubscribed_frame(run_id)])

    def _replay(self, connection_id: str, run_id: str, after: int) -> None:
        while True:
            frames = self.store.read_frames(run_id, after, REPLAY_PAGE)
            if not frames:
                return
            if self.payloads is None:
                raise SubscribeRouteOnlyError
            self._post(connection_id, self.payloads.presign(frames))  # fresh URLs, now
            after = int(frames[-1]["seq"])

    def _post(self, connection_id: str, frames: list[Frame], attempts: int = 5) -> None:
        post_frames(self.connections, connection_id, frames, attempts=attempts)
