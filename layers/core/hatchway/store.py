"""The DynamoDB adapter: runs, the frame log, leases, subscriptions, connections.

One table; the items are in docs/design.md. Every item carries ``expiresAt``
(DynamoDB TTL deletes within about two days, so reads filter expired items
where it matters).

The frame log is written only through ``append_frames``: one conditional PutItem
per group commit, fenced on the item's own key (two writers of the same seq
collide there), its frames compressed. The run's META is not written with it:
a relay reserves blocks of seqs ahead in META (``reservedSeq``, under its
lease), so no two relays ever sequence the same seq, and ``lastSeq`` and
``status`` in META are moved lazily (with a reservation, a status change, the
end). The log's own last item is the truth about how far it goes (``log_tail``).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import Binary
from botocore.config import Config
from botocore.exceptions import ClientError

from .protocol import FINAL_STATUSES, Frame, is_final

SEQ_DIGITS = 10
CONNECTION_TTL_S = 2 * 3600  # API Gateway closes every connection after two hours
TOMBSTONE_TTL_S = 3600  # an unsubscribe no relay acted on (it died meanwhile) expires


def _run_pk(run_id: str) -> str:
    return f"RUN#{run_id}"


def _frames_sk(first_seq: int) -> str:
    return f"F#{first_seq:0{SEQ_DIGITS}d}"


def _int(value: Any) -> int:  # noqa: ANN401 - DynamoDB numbers arrive as Decimal
    return int(value) if isinstance(value, (int, Decimal)) else 0


class LeaseLostError(Exception):
    """The writer no longer holds the run's lease (or another wrote meanwhile)."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    workflow: str
    status: str
    last_seq: int
    created_at: int  # epoch ms
    updated_at: int
    lease_owner: str | None = None
    lease_expires_at: int = 0  # epoch ms
    # The last Hatchet stream event_index logged per task: a relay that takes the
    # run over drops what was logged already and marks a gap for what was missed.
    stream_indexes: dict[str, int] | None = None
    # A graceful handover (SIGTERM): the holder offers the run, a successor that has
    # already subscribed to Hatchet claims it, the holder hands the lease over.
    handover_from: str | None = None
    successor: str | None = None
    # The highest seq a holder may have sequenced (and sent live) without logging it:
    # the next holder starts after it, so no seq ever names two different frames.
    reserved_seq: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def lease_held(self, now_ms: int) -> bool:
        return bool(self.lease_owner) and self.lease_expires_at >= now_ms

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> RunRecord:
        return cls(
            run_id=str(item["pk"]).removeprefix("RUN#"),
            workflow=str(item.get("workflow", "")),
            status=str(item.get("status", "QUEUED")),
            last_seq=_int(item.get("lastSeq")),
            created_at=_int(item.get("createdAt")),
            updated_at=_int(item.get("updatedAt")),
            lease_owner=item.get("leaseOwner"),
            lease_expires_at=_int(item.get("leaseExpiresAt")),
            stream_indexes={k: _int(v) for k, v in (item.get("streamIndexes") or {}).items()},
            handover_from=item.get("handoverFrom"),
            successor=item.get("successor"),
            reserved_seq=_int(item.get("reservedSeq")),
        )


@dataclass(frozen=True)
class LogTail:
    """Where a run's frame log ends: its last seq, the Hatchet stream indexes that
    item covers, and the final status frame if the log holds the run's end."""

    last_seq: int = 0
    stream_indexes: dict[str, int] | None = None
    final: Frame | None = None


def encode_frames(frames: list[Frame]) -> bytes:
    """A log item's frames: JSON without the ``runId`` (the item's key says it),
    zlib-compressed. DynamoDB bills writes per KB, and frames repeat their keys."""
    stripped = [{k: v for k, v in frame.items() if k != "runId"} for frame in frames]
    return zlib.compress(json.dumps(stripped, separators=(",", ":")).encode(), 6)


def decode_frames(run_id: str, stored: Any) -> list[Frame]:  # noqa: ANN401 - str or Binary
    """A log item's ``frames`` attribute as frames (also items written as plain JSON
    before the log was compressed)."""
    if isinstance(stored, str):
        frames: list[Frame] = json.loads(stored)
        return frames
    raw = stored.value if isinstance(stored, Binary) else bytes(stored)
    return [{"runId": run_id, **frame} for frame in json.loads(zlib.decompress(raw))]


@dataclass(frozen=True)
class Subscription:
    run_id: str
    connection_id: str
    after: int
    token_expires_at: int  # epoch seconds
    created_at: int  # epoch ms
    removed: bool = False  # unsubscribed: the relay that holds the run is to drop it

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Subscription:
        return cls(
            run_id=str(item["pk"]).removeprefix("RUN#"),
            connection_id=str(item["connectionId"]),
            after=_int(item.get("after")),
            token_expires_at=_int(item.get("tokenExpiresAt")),
            created_at=_int(item.get("createdAt")),
            removed=bool(item.get("removed")),
        )


def _unless_condition_failed(write: Callable[..., Any], **request: Any) -> bool:  # noqa: ANN401
    """A conditional write; False when its condition failed (any other error raises)."""
    try:
        write(**request)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


_CLIENT_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"})


class Store:
    def __init__(self, table_name: str, retention_s: int = 86400, resource: Any = None) -> None:  # noqa: ANN401
        # botocore's legacy DynamoDB policy retries 10 times over ~25 s, unseen: a few
        # quick tries here, and the callers that must not lose a write retry themselves
        # (the relay's log appends, with backoff and a bound).
        self._table = (resource or boto3.resource("dynamodb", config=_CLIENT_CONFIG)).Table(
            table_name
        )
        # The resource's client serializes Python values itself (boto3's transformation
        # hooks), so transactions take plain values like the Table methods do.
        self._client = self._table.meta.client
        self.table_name = table_name
        self.retention_s = retention_s

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    def _expires(self, extra_s: int = 0) -> int:
        return int(time.time()) + self.retention_s + extra_s

    # -- runs --------------------------------------------------------------------------

    def create_run(self, run_id: str, workflow: str) -> RunRecord:
        now = self._now_ms()
        item = {
            "pk": _run_pk(run_id),
            "sk": "META",
            "workflow": workflow,
            "status": "QUEUED",
            "lastSeq": 0,
            "createdAt": now,
            "updatedAt": now,
            "expiresAt": self._expires(),
        }
        self._table.put_item(Item=item, ConditionExpression="attribute_not_exists(pk)")
        return RunRecord.from_item(item)

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self._table.get_item(
            Key={"pk": _run_pk(run_id), "sk": "META"}, ConsistentRead=True
        ).get("Item")
        return RunRecord.from_item(item) if item else None

    def ping(self) -> None:
        """Raises when the table cannot be reached (for /healthz)."""
        self._table.get_item(Key={"pk": "HEALTH", "sk": "META"})

    # -- frame log ---------------------------------------------------------------------

    def append_frames(
        self,
        run_id: str,
        frames: list[Frame],
        owner: str,
        stream_indexes: dict[str, int] | None = None,
    ) -> None:
        """Append frames ``first..last`` as one item (a group commit), on condition
        that no item holds that first seq yet: LeaseLostError otherwise.

        Only the run's lease holder sequences frames, and only up to the seqs it
        reserved (``update_run``), so the condition fails only for a retry of a
        write that landed (``frames_item_writer`` tells) or for a bug. META is not
        touched: it is moved lazily by the holder."""
        first, last = int(frames[0]["seq"]), int(frames[-1]["seq"])
        item: dict[str, Any] = {
            "pk": _run_pk(run_id),
            "sk": _frames_sk(first),
            "frames": encode_frames(frames),
            "lastSeq": last,
            "writer": owner,  # who held the lease: one per run at a time
            "expiresAt": self._expires(),
        }
        if stream_indexes:
            item["streamIndexes"] = stream_indexes  # what a successor drops as logged
        if not _unless_condition_failed(
            self._table.put_item, Item=item, ConditionExpression="attribute_not_exists(pk)"
        ):
            raise LeaseLostError(f"run {run_id}: seq {first} is logged already")

    def frames_item_writer(self, run_id: str, first_seq: int) -> tuple[str, int] | None:
        """Who wrote the log item starting at ``first_seq``, and its last seq."""
        item = self._table.get_item(
            Key={"pk": _run_pk(run_id), "sk": _frames_sk(first_seq)},
            ConsistentRead=True,
            ProjectionExpression="writer, lastSeq",
        ).get("Item")
        return (str(item.get("writer")), _int(item.get("lastSeq"))) if item else None

    def log_tail(self, run_id: str) -> LogTail:
        """The log's last item, read once by a relay that takes the run."""
        items = (
            self._table.query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :frames)",
                ExpressionAttributeValues={":pk": _run_pk(run_id), ":frames": "F#"},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            ).get("Items")
            or []
        )
        if not items:
            return LogTail()
        item = items[0]
        frames = decode_frames(run_id, item["frames"])
        indexes = item.get("streamIndexes")
        return LogTail(
            last_seq=_int(item.get("lastSeq")),
            stream_indexes={k: _int(v) for k, v in indexes.items()} if indexes else None,
            final=next((f for f in frames if is_final(f)), None),
        )

    def update_run(
        self,
        run_id: str,
        owner: str,
        *,
        last_seq: int,
        reserved_seq: int | None = None,
        status: str | None = None,
    ) -> bool:
        """The holder moves META lazily: how far the log goes (``lastSeq``), the seqs
        it may sequence next (``reservedSeq``, never lowered here), the run's status
        (with its retention from the end). False when the lease is not ``owner``'s."""
        names = {"#last": "lastSeq", "#updated": "updatedAt"}
        values: dict[str, Any] = {":owner": owner, ":last": last_seq, ":now": self._now_ms()}
        update = "SET #last = :last, #updated = :now"
        if reserved_seq is not None:
            names["#reserved"] = "reservedSeq"
            values[":reserved"] = reserved_seq
            update += ", #reserved = :reserved"
        if status is not None:
            names["#status"] = "status"
            values[":status"] = status
            update += ", #status = :status"
            if status in FINAL_STATUSES:
                names["#expires"] = "expiresAt"
                values[":expires"] = self._expires()
                update += ", #expires = :expires"
        return self._update_if(
            run_id,
            UpdateExpression=update,
            ConditionExpression="leaseOwner = :owner",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def read_frames(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Frame]:
        """The retained frames with ``seq > after``, in order, at most ``limit``."""
        pk = _run_pk(run_id)
        # The item holding seq after+1 starts at or before it: find its key first.
        start = (
            self._table.query(
                KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
                ExpressionAttributeValues={
                    ":pk": pk,
                    ":low": _frames_sk(0),
                    ":high": _frames_sk(after + 1),
                },
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            ).get("Items")
            or []
        )
        low = start[0]["sk"] if start else _frames_sk(after + 1)
        frames: list[Frame] = []
        query: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {":pk": pk, ":low": low, ":high": "F#" + "9" * SEQ_DIGITS},
            "ConsistentRead": True,
        }
        while len(frames) < limit:
            page = self._table.query(**query)
            for item in page.get("Items") or []:
                frames.extend(
                    f for f in decode_frames(run_id, item["frames"]) if int(f["seq"]) > after
                )
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return frames[:limit]

    # -- leases ------------------------------------------------------------------------

    def acquire_lease(self, run_id: str, owner: str, lease_s: float) -> RunRecord | None:
        """Take (or keep) the run's lease; None when another holds an unexpired one."""
        now = self._now_ms()
        try:
            item = self._table.update_item(
                Key={"pk": _run_pk(run_id), "sk": "META"},
                UpdateExpression=(
                    "SET leaseOwner = :owner, leaseExpiresAt = :expires"
                    " REMOVE handoverFrom, successor"
                ),
                ConditionExpression=(
                    "attribute_exists(pk) AND (attribute_not_exists(leaseOwner)"
                    " OR leaseOwner = :owner OR leaseExpiresAt < :now)"
                ),
                ExpressionAttributeValues={
                    ":owner": owner,
                    ":expires": now + int(lease_s * 1000),
                    ":now": now,
                },
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise
        return RunRecord.from_item(item)

    def renew_lease(self, run_id: str, owner: str, lease_s: float) -> bool:
        return self._update_if(
            run_id,
            UpdateExpression="SET leaseExpiresAt = :expires",
            ConditionExpression="leaseOwner = :owner",
            ExpressionAttributeValues={
                ":owner": owner,
                ":expires": self._now_ms() + int(lease_s * 1000),
            },
        )

    def release_lease(self, run_id: str, owner: str, logged_seq: int | None = None) -> None:
        """Give the lease up. ``logged_seq``: everything the holder sequenced is in the
        log up to there, so the next holder goes on from it without a gap."""
        if logged_seq is None:
            self._update_if(
                run_id,
                UpdateExpression="REMOVE leaseOwner, leaseExpiresAt, handoverFrom, successor",
                ConditionExpression="leaseOwner = :owner",
                ExpressionAttributeValues={":owner": owner},
            )
            return
        self._update_if(
            run_id,
            UpdateExpression=(
                "SET lastSeq = :logged, reservedSeq = :logged"
                " REMOVE leaseOwner, leaseExpiresAt, handoverFrom, successor"
            ),
            ConditionExpression="leaseOwner = :owner",
            ExpressionAttributeValues={":owner": owner, ":logged": logged_seq},
        )

    def _update_if(self, run_id: str, **update: Any) -> bool:  # noqa: ANN401
        """A conditional update of the run's META; False when the condition failed."""
        return _unless_condition_failed(
            self._table.update_item, Key={"pk": _run_pk(run_id), "sk": "META"}, **update
        )

    def offer_handover(self, run_id: str, owner: str) -> bool:
        """The holder, stopping, offers its run to a successor."""
        return self._update_if(
            run_id,
            UpdateExpression="SET handoverFrom = :owner REMOVE successor",
            ConditionExpression="leaseOwner = :owner",
            ExpressionAttributeValues={":owner": owner},
        )

    def claim_handover(self, run_id: str, successor: str) -> bool:
        """A relay already subscribed to the run's Hatchet events claims an offered run."""
        return self._update_if(
            run_id,
            UpdateExpression="SET successor = :successor",
            ConditionExpression=(
                "attribute_exists(handoverFrom) AND handoverFrom = leaseOwner"
                " AND (attribute_not_exists(successor) OR successor = :successor)"
            ),
            ExpressionAttributeValues={":successor": successor},
        )

    def transfer_lease(
        self, run_id: str, owner: str, successor: str, lease_s: float, logged_seq: int
    ) -> bool:
        """The holder, having logged everything it sequenced (up to ``logged_seq``),
        gives the lease to its successor, which goes on from there without a gap."""
        return self._update_if(
            run_id,
            UpdateExpression=(
                "SET leaseOwner = :successor, leaseExpiresAt = :expires,"
                " lastSeq = :logged, reservedSeq = :logged"
                " REMOVE handoverFrom, successor"
            ),
            ConditionExpression="leaseOwner = :owner AND successor = :successor",
            ExpressionAttributeValues={
                ":owner": owner,
                ":successor": successor,
                ":expires": self._now_ms() + int(lease_s * 1000),
                ":logged": logged_seq,
            },
        )

    # -- subscriptions and connections -------------------------------------------------

    def put_subscription(
        self, run_id: str, connection_id: str, after: int, token_expires_at: int, owner: str | None
    ) -> Subscription:
        now = self._now_ms()
        item: dict[str, Any] = {
            "pk": _run_pk(run_id),
            "sk": f"SUB#{connection_id}",
            "connectionId": connection_id,
            "after": after,
            "tokenExpiresAt": token_expires_at,
            "createdAt": now,
            "gsi1pk": f"CONN#{connection_id}",
            "expiresAt": min(token_expires_at, int(time.time()) + CONNECTION_TTL_S),
        }
        if owner:  # sparse index: only runs a relay owns are polled by owner
            item["owner"] = owner
            item["gsi2sk"] = f"{now:015d}#{run_id}#{connection_id}"
        self._table.put_item(Item=item)
        return Subscription.from_item(item)

    def set_subscription_owner(self, run_id: str, connection_id: str, owner: str) -> None:
        now = self._now_ms()
        self._table.update_item(
            Key={"pk": _run_pk(run_id), "sk": f"SUB#{connection_id}"},
            UpdateExpression="SET #owner = :owner, gsi2sk = :sk",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={
                ":owner": owner,
                ":sk": f"{now:015d}#{run_id}#{connection_id}",
            },
        )

    def advance_subscription(self, run_id: str, connection_id: str, after: int) -> None:
        """Record what a subscriber has been sent, so the run's next relay goes on from there."""
        _unless_condition_failed(
            self._table.update_item,
            Key={"pk": _run_pk(run_id), "sk": f"SUB#{connection_id}"},
            UpdateExpression="SET #after = :after",
            ConditionExpression="attribute_exists(pk) AND #after < :after",
            ExpressionAttributeNames={"#after": "after"},
            ExpressionAttributeValues={":after": after},
        )

    def remove_subscription(self, run_id: str, connection_id: str, owner: str) -> bool:
        """Unsubscribe from a run that ``owner`` (a relay) holds: the item becomes a
        tombstone that the relay's poll by owner finds, as it finds new ones; the
        relay drops the subscriber, says ``unsubscribed`` after the frames it sent,
        then deletes the tombstone (``forget_subscription``). False if none existed."""
        now = self._now_ms()
        return _unless_condition_failed(
            self._table.update_item,
            Key={"pk": _run_pk(run_id), "sk": f"SUB#{connection_id}"},
            UpdateExpression=(
                "SET removed = :true, #owner = :owner, gsi2sk = :sk, expiresAt = :expires"
            ),
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={
                ":true": True,
                ":owner": owner,
                ":sk": f"{now:015d}#{run_id}#{connection_id}",
                ":expires": int(time.time()) + TOMBSTONE_TTL_S,
            },
        )

    def forget_subscription(self, run_id: str, connection_id: str) -> None:
        """Delete an unsubscribed tombstone (never a subscription made again since)."""
        _unless_condition_failed(
            self._table.delete_item,
            Key={"pk": _run_pk(run_id), "sk": f"SUB#{connection_id}"},
            ConditionExpression="removed = :true",
            ExpressionAttributeValues={":true": True},
        )

    def delete_subscription(self, run_id: str, connection_id: str) -> bool:
        deleted = self._table.delete_item(
            Key={"pk": _run_pk(run_id), "sk": f"SUB#{connection_id}"}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in deleted

    def subscriptions_of_run(self, run_id: str) -> list[Subscription]:
        items = self._query_all(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :sub)",
            ExpressionAttributeValues={":pk": _run_pk(run_id), ":sub": "SUB#"},
            ConsistentRead=True,
        )
        return [Subscription.from_item(item) for item in items]

    def subscriptions_since(self, owner: str, since_ms: int) -> list[Subscription]:
        """Subscriptions to any run ``owner`` holds, made after ``since_ms`` (one query)."""
        items = self._query_all(
            IndexName="byOwner",
            KeyConditionExpression="#owner = :owner AND gsi2sk > :since",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":owner": owner, ":since": f"{since_ms:015d}"},
        )
        return [Subscription.from_item(item) for item in items]

    def put_connection(self, connection_id: str, run_id: str) -> None:
        self._table.put_item(
            Item={
                "pk": f"CONN#{connection_id}",
                "sk": "META",
                "runId": run_id,
                "connectedAt": self._now_ms(),
                "expiresAt": int(time.time()) + CONNECTION_TTL_S,
            }
        )

    def drop_connection(self, connection_id: str) -> list[str]:
        """Delete a connection and its subscriptions; returns the runs it was subscribed to."""
        items = self._query_all(
            IndexName="byConnection",
            KeyConditionExpression="gsi1pk = :conn",
            ExpressionAttributeValues={":conn": f"CONN#{connection_id}"},
        )
        with self._table.batch_writer() as batch:
            for item in items:
                batch.delete_item(Key={"pk": item["pk"], "sk": item["sk"]})
            batch.delete_item(Key={"pk": f"CONN#{connection_id}", "sk": "META"})
        return [str(item["pk"]).removeprefix("RUN#") for item in items]

    def _query_all(self, **query: Any) -> list[dict[str, Any]]:  # noqa: ANN401
        items: list[dict[str, Any]] = []
        while True:
            page = self._table.query(**query)
            items.extend(page.get("Items") or [])
            if "LastEvaluatedKey" not in page:
                return items
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
