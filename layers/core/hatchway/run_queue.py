"""The SQS adapter for the run queue: the trigger enqueues each run; relays take them.

A run's message is received again only when its holder failed (it crashed, its log
stayed down, a duplicate met a live lease): each such receive counts towards the
queue's ``maxReceiveCount`` and the dead-letter queue. A deliberate give-back (a
SIGTERM handover) re-sends the run instead (``resend``), as a new message with a
receive count of zero, so a run that lives through any number of deploys keeps its
whole budget for failures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3

from .observability import logger


@dataclass(frozen=True)
class QueuedRun:
    run_id: str
    receipt_handle: str
    receive_count: int  # ApproximateReceiveCount: 1 on a first receive
    body: str = ""  # the message as sent, for a re-send


class RunQueue:
    def __init__(self, queue_url: str, client: Any = None) -> None:  # noqa: ANN401
        self.queue_url = queue_url
        self._client = client or boto3.client("sqs")

    def enqueue(self, run_id: str) -> None:
        self._client.send_message(
            QueueUrl=self.queue_url, MessageBody=json.dumps({"runId": run_id})
        )

    def receive(self, max_runs: int, wait_s: int, visibility_s: int) -> list[QueuedRun]:
        response = self._client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(max_runs, 10)),
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        runs = []
        for message in response.get("Messages") or []:
            try:
                run_id = str(json.loads(message["Body"])["runId"])
            except (ValueError, KeyError, TypeError):
                self.delete(message["ReceiptHandle"])  # not ours to handle: drop it
                continue
            count = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 1))
            runs.append(QueuedRun(run_id, message["ReceiptHandle"], count, message["Body"]))
        return runs

    def extend(self, receipt_handle: str, visibility_s: int) -> None:
        self._client.change_message_visibility(
            QueueUrl=self.queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=visibility_s
        )

    def extend_many(self, receipt_handles: list[str], visibility_s: int) -> list[str]:
        """Keep many messages invisible, ten to a call (SQS's batch size); the
        receipts that failed (e.g. a message deleted meanwhile), for the caller to log."""
        failed: list[str] = []
        for start in range(0, len(receipt_handles), 10):
            chunk = receipt_handles[start : start + 10]
            response = self._client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": visibility_s}
                    for i, r in enumerate(chunk)
                ],
            )
            failed.extend(chunk[int(entry["Id"])] for entry in response.get("Failed") or [])
        return failed

    def release(self, receipt_handle: str) -> None:
        """Make the message visible again at once: another relay takes the run. The
        next receive counts towards the dead-letter queue: for failures only."""
        self.extend(receipt_handle, 0)

    def resend(self, message: QueuedRun) -> None:
        """Give the run back without spending its delivery budget: the same body as
        a new message (receive count zero), then the old one deleted. In that order,
        so the run is never without a message; if the delete fails, the run has two
        for a while, which relays treat as any duplicate (the lease decides)."""
        body = message.body or json.dumps({"runId": message.run_id})
        self._client.send_message(QueueUrl=self.queue_url, MessageBody=body)
        try:
            self.delete(message.receipt_handle)
        except Exception as error:  # noqa: BLE001 - the new message carries the run already
            logger.warning(
                "deleting a re-sent run's old message failed; it comes back as a duplicate",
                run_id=message.run_id,
                error=str(error),
            )

    def delete(self, receipt_handle: str) -> None:
        self._client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle)
