"""The run queue's dead letters: a run whose relays failed it ``maxReceiveCount``
times (5) is ended honestly instead of hanging.

For each dead-lettered run (its message body ``{"runId": ...}``), unless the run
is over already:

1. take the run's lease, as a relay would (``Store.acquire_lease``): a live
   holder's lease is respected (``RunHeldError``: the message is retried later);
2. ask Hatchet for the run's status;
3. append, after every seq a holder may have sent (``reservedSeq``), a ``gap``
   (the run's relay could not keep it: frames may be missing) and the final
   status: Hatchet's (COMPLETED, FAILED, CANCELLED, TIMED_OUT, with its output or
   error), or FAILED saying Hatchway gave up following it when Hatchet does not
   know the run or says it still runs;
4. move META to the final status, release the lease;
5. post the log (from each subscription's ``after``: the gap and the end at
   least) to the run's subscriptions through @connections, since no relay will:
   subscribers registered with the dead relay never hang.

A log that holds the final status already (its relay died after logging it) gets
nothing appended: META is moved and the subscribers are told, that is all.

Each ended run is logged at ERROR ("run ended from the dead-letter queue"), for
an alarm. The Lambda handler is :func:`handler` (``functions/dlq_consumer``): its
own module, as the authorizer's, because it alone of the functions besides the
trigger reaches Hatchet (grpc): ``lambda_handlers`` stays free of it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import grpc
from aws_lambda_powertools.utilities.typing import LambdaContext

from . import wiring
from .connections import (
    Connections,
    StaleConnectionError,
    ThrottledError,
    UnavailableError,
    post_frames,
)
from .hatchet_adapter import HatchetEvents, RunStatus, UpstreamUnavailableError
from .metrics import RUNS_DEAD_LETTERED, SERVICE_DLQ_CONSUMER, MetricUnit, function_metrics
from .observability import logger
from .payloads import Payloads
from .protocol import (
    FINAL_STATUSES,
    Frame,
    gap_frame,
    status_frame,
    token_expired_frame,
)
from .settings import DeadLetterSettings, load
from .store import LeaseLostError, RunRecord, Store, Subscription
from .tracing import capture_handler, run_subsegment

GAP_REASON = (
    "the relays following this run could not keep it (its message went to the"
    " dead-letter queue): frames it streamed since may be missing"
)
GAVE_UP = "Hatchway gave up following this run: its relays failed it"
REPLAY_PAGE = 1000
POST_ATTEMPTS = 5

# Hatchet's answer for one run: its status, or None when Hatchet does not know it.
# Raises UpstreamUnavailableError when Hatchet cannot be asked.
StatusOf = Callable[[str], RunStatus | None]


class RunHeldError(Exception):
    """A live relay holds the run's lease: it is not ours to end (try again later)."""


class HatchetUnavailableError(Exception):
    """Hatchet could not be asked, and the message has tries left: try again later."""


class SubscribersUnreachableError(Exception):
    """Some subscribers could not be told the run's end (the run is ended): the
    message is retried, and the retry tells those whose subscriptions are left."""


class Outcome(StrEnum):
    ENDED = "ended"  # a gap and the final status were appended
    ALREADY_FINAL = "already_final"  # the run or its log was over: nothing appended
    UNKNOWN = "unknown"  # no such run in the table (expired): nothing to end


@dataclass(frozen=True)
class Ending:
    status: str
    output: Any = None  # the run's JSON output
    error: str | None = None


class DeadLetters:
    def __init__(
        self,
        store: Store,
        status_of: StatusOf,
        connections: Connections,
        payloads: Payloads,
        *,
        lease_s: float = 30.0,
        give_up_receive_count: int = 10,
    ) -> None:
        self._store = store
        self._status_of = status_of
        self._connections = connections
        self._payloads = payloads
        self._lease_s = lease_s
        self._give_up_receive_count = give_up_receive_count

    # -- one dead letter ---------------------------------------------------------------

    def end(self, run_id: str, receive_count: int = 1) -> Outcome:
        """End the run honestly (see the module). Raises RunHeldError while a live
        relay holds it, HatchetUnavailableError while Hatchet cannot be asked and
        SubscribersUnreachableError while some subscriber could not be told (with
        tries left): the message is then left for a retry."""
        run = self._store.get_run(run_id)
        if run is None:
            logger.warning("dead-lettered run unknown; dropping it", run_id=run_id)
            return Outcome.UNKNOWN
        if run.final:
            # Over (perhaps by a try of ours whose posts failed): nothing is appended,
            # but the subscriptions still left are told, so none of them hangs.
            logger.warning("dead-lettered run is over already", run_id=run_id, status=run.status)
            self._tell_subscribers(run_id, receive_count)
            return Outcome.ALREADY_FINAL
        owner = f"dlq-{uuid.uuid4().hex[:12]}"
        taken = self._store.acquire_lease(run_id, owner, self._lease_s)
        if taken is None:
            raise RunHeldError(f"run {run_id}: a live relay holds its lease")
        try:
            outcome = self._end_held(taken, owner, receive_count)
        except BaseException:
            self._release(run_id, owner)
            raise
        self._tell_subscribers(run_id, receive_count)
        return outcome

    def _end_held(self, run: RunRecord, owner: str, receive_count: int) -> Outcome:
        run_id = run.run_id
        if run.final:  # ended between our read and the lease
            self._release(run_id, owner)
            return Outcome.ALREADY_FINAL
        tail = self._store.log_tail(run_id)
        logged = max(tail.last_seq, run.last_seq)
        if tail.final is not None:  # its relay logged the end, then died before META
            status = str(tail.final["status"])
            self._update(run_id, owner, last_seq=logged, status=status)
            self._store.release_lease(run_id, owner, logged)
            logger.warning(
                "dead-lettered run's log is final already; nothing appended",
                run_id=run_id,
                status=status,
            )
            return Outcome.ALREADY_FINAL
        ending, hatchet_says = self._ending(run_id, receive_count)
        start = max(logged, run.reserved_seq)  # after every seq a holder may have sent
        skipped = (logged + 1, start) if start > logged else None
        frames = [
            gap_frame(run_id, start + 1, GAP_REASON, skipped),
            status_frame(
                run_id, start + 2, ending.status, output=ending.output, error=ending.error
            ),
        ]
        last = start + 2
        self._update(run_id, owner, last_seq=logged, reserved_seq=last)
        logged_frames = self._payloads.offload(run_id, frames)  # a huge output goes to S3
        self._store.append_frames(run_id, logged_frames, owner, tail.stream_indexes)
        self._update(run_id, owner, last_seq=last, status=ending.status)
        self._store.release_lease(run_id, owner, last)
        logger.error(
            "run ended from the dead-letter queue",
            run_id=run_id,
            status=ending.status,
            hatchet_status=hatchet_says,
            receive_count=receive_count,
            last_seq=last,
            skipped=list(skipped) if skipped else None,
        )
        return Outcome.ENDED

    def _ending(self, run_id: str, receive_count: int) -> tuple[Ending, str]:
        """The run's final status from Hatchet, and what Hatchet said."""
        try:
            status = self._status_of(run_id)
        except UpstreamUnavailableError as error:
            if receive_count < self._give_up_receive_count:
                raise HatchetUnavailableError(f"run {run_id}: {error}") from error
            logger.warning("hatchet unavailable; ending the run anyway", run_id=run_id)
            return Ending("FAILED", error=f"{GAVE_UP}, and Hatchet could not be asked"), "UNKNOWN"
        if status is None:
            return Ending("FAILED", error=f"{GAVE_UP}; Hatchet does not know it"), "NOT_FOUND"
        if status.done and status.status in FINAL_STATUSES:
            if status.status == "COMPLETED":
                return Ending("COMPLETED", output=status.output or {}), status.status
            return Ending(status.status, error=status.error or status.status.lower()), status.status
        return (
            Ending("FAILED", error=f"{GAVE_UP}; Hatchet says it is {status.status}"),
            status.status,
        )

    def _update(self, run_id: str, owner: str, **changes: Any) -> None:  # noqa: ANN401
        if not self._store.update_run(run_id, owner, **changes):
            raise LeaseLostError(f"run {run_id}: lease lost while ending it")

    def _release(self, run_id: str, owner: str) -> None:
        try:
            self._store.release_lease(run_id, owner)
        except Exception as error:  # noqa: BLE001 - it lapses by itself
            logger.warning(
                "releasing a dead letter's lease failed", run_id=run_id, error=str(error)
            )

    # -- the run's subscribers ---------------------------------------------------------

    def _tell_subscribers(self, run_id: str, receive_count: int) -> None:
        """The log from each subscription's ``after`` (so at least the gap and the
        end) to every subscriber of the run: no relay holds it any more. META is
        final before the subscriptions are read, so a subscribe meanwhile either
        finds the run over (and replays it itself) or is found here. A subscriber
        told is forgotten; one that could not be told keeps its subscription for
        the retry (until the give-up count)."""
        untold = 0
        for subscription in self._store.subscriptions_of_run(run_id):
            try:
                self._tell(subscription)
            except Exception as error:  # noqa: BLE001 - one subscriber must not stop the others
                untold += 1
                logger.warning(
                    "could not tell a subscriber the run's end",
                    run_id=run_id,
                    connection_id=subscription.connection_id,
                    error=str(error),
                )
        if untold and receive_count < self._give_up_receive_count:
            raise SubscribersUnreachableError(f"run {run_id}: {untold} subscriber(s) not told")

    def _tell(self, subscription: Subscription) -> None:
        run_id, connection_id = subscription.run_id, subscription.connection_id
        if subscription.removed:  # unsubscribed: a tombstone nobody acted on
            self._store.forget_subscription(run_id, connection_id)
            return
        try:
            if subscription.token_expires_at and time.time() >= subscription.token_expires_at:
                self._post(connection_id, [token_expired_frame(run_id, subscription.after)])
            else:
                after = subscription.after
                while frames := self._store.read_frames(run_id, after, REPLAY_PAGE):
                    self._post(connection_id, self._payloads.presign(frames))
                    after = int(frames[-1]["seq"])
        except StaleConnectionError:  # gone: exactly that connection is forgotten
            self._store.drop_connection(connection_id)
            return
        self._store.delete_subscription(run_id, connection_id)  # told: the run is over

    def _post(self, connection_id: str, frames: list[Frame]) -> None:
        post_frames(
            self._connections,
            connection_id,
            frames,
            attempts=POST_ATTEMPTS,
            retry_on=(ThrottledError, UnavailableError),
        )


# -- the SQS batch -----------------------------------------------------------------------


metrics = function_metrics(SERVICE_DLQ_CONSUMER)  # flushed per invocation (log_metrics)


def run_id_of(body: str) -> str | None:
    """The run a queue message names (``{"runId": ...}``), or None."""
    try:
        return str(json.loads(body)["runId"])
    except (ValueError, KeyError, TypeError):
        return None


def handle_batch(dead_letters: DeadLetters, event: dict[str, Any]) -> dict[str, Any]:
    """An SQS batch (the Lambda event source on the dead-letter queue, with
    ``ReportBatchItemFailures``): the records to retry, as ``batchItemFailures``."""
    failures: list[dict[str, str]] = []
    for record in event.get("Records") or []:
        message_id = str(record.get("messageId", ""))
        run_id = run_id_of(str(record.get("body", "")))
        if run_id is None:
            logger.error("a dead letter that names no run; dropping it", message_id=message_id)
            continue
        receive_count = int((record.get("attributes") or {}).get("ApproximateReceiveCount", 1))
        logger.append_keys(run_id=run_id)  # every line about this record names its run
        try:
            with run_subsegment("## dead letter", run_id):  # its trace names the run
                dead_letters.end(run_id, receive_count)
            metrics.add_metric(name=RUNS_DEAD_LETTERED, unit=MetricUnit.Count, value=1)
        except (RunHeldError, HatchetUnavailableError, SubscribersUnreachableError) as error:
            logger.warning("dead letter left for a retry", run_id=run_id, reason=str(error))
            failures.append({"itemIdentifier": message_id})
        except Exception:  # noqa: BLE001 - this record is retried; the others go on
            logger.exception("ending a dead-lettered run failed", run_id=run_id)
            failures.append({"itemIdentifier": message_id})
        finally:
            logger.remove_keys(["run_id"])
    return {"batchItemFailures": failures}


def hatchet_status(hatchet: HatchetEvents, loop: asyncio.AbstractEventLoop) -> StatusOf:
    """Hatchet's ``GetRunDetails`` as :data:`StatusOf`, on one loop (and so one gRPC
    channel) for the execution environment's life."""

    def status_of(run_id: str) -> RunStatus | None:
        try:
            return loop.run_until_complete(hatchet.status(run_id))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise UpstreamUnavailableError(f"{error.code().name}: {error.details()}") from error

    return status_of


def handler() -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
    """The function's handler, built at its cold start from ``DeadLetterSettings``."""
    settings = load(DeadLetterSettings)
    dead_letters = DeadLetters(
        wiring.store(settings),
        hatchet_status(HatchetEvents(settings.hatchet), asyncio.new_event_loop()),
        Connections(settings.management_api_url),
        wiring.payloads(settings),
        lease_s=settings.lease_seconds,
        give_up_receive_count=settings.give_up_receive_count,
    )

    @metrics.log_metrics
    @logger.inject_lambda_context
    @capture_handler
    def consume(event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
        return handle_batch(dead_letters, event)

    return consume
