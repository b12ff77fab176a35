"""The SQS adapter for the run queue: the trigger enqueues each run; relays take them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3


@dataclass(frozen=True)
class QueuedRun:
    run_id: str
    receipt_handle: str
    receive_count: int


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
            runs.append(QueuedRun(run_id, message["ReceiptHandle"], count))
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
        """Make the message visible again at once: another relay takes the run."""
        self.extend(receipt_handle, 0)

    def delete(self, receipt_handle: str) -> None:
        self._client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle)
