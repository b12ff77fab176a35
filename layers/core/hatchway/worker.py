"""What a Hatchet task imports to send a file to the people watching its run:
``put_file`` (sync tasks) and ``aput_file`` (async tasks).

    from hatchway.worker import aput_file, payloads_from_environment

    payloads = payloads_from_environment()  # at the worker's start: PAYLOAD_BUCKET is required

    @hatchet.task(name="report")
    async def report(input: ReportInput, ctx: Context) -> dict[str, str]:
        stored = await aput_file(
            ctx, "/tmp/report.pdf", payloads=payloads, content_type="application/pdf"
        )
        return {"sha256": stored.sha256}

The file goes straight to the payload bucket (``PAYLOAD_BUCKET``), multipart and
streamed: never read whole into memory, never base64, never through Hatchet's
4 MB gRPC limit. Only a small reference travels on the run's Hatchet stream, in
order with the task's other chunks; the relay turns it into a ``file`` frame,
and every client that receives the frame gets a fresh presigned URL with the
file's ``size`` and ``sha256``.

The worker needs ``PAYLOAD_BUCKET`` (read once, by :func:`payloads_from_environment`),
AWS credentials and region (as any boto3 client finds them) and ``s3:PutObject`` +
``s3:AbortMultipartUpload`` on ``<bucket>/runs/*``: the stack's ``PayloadWriterPolicyArn`` output.
"""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from pathlib import Path
from typing import IO, Protocol

from .payloads import Payloads, StoredFile
from .settings import WorkerSettings, load

__all__ = ["FileSource", "StoredFile", "aput_file", "payloads_from_environment", "put_file"]

# bytes in memory, a path to a file, or a binary file object (read once, in order)
FileSource = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]


class StreamContext(Protocol):
    """What put_file needs of a hatchet-sdk ``Context``."""

    @property
    def workflow_run_id(self) -> str: ...

    def put_stream(self, data: str | bytes) -> None: ...

    async def aio_put_stream(self, data: str | bytes) -> None: ...


def payloads_from_environment() -> Payloads:
    """The bucket adapter a worker passes to put_file: build it once, at start (a
    missing ``PAYLOAD_BUCKET`` stops the worker there, named)."""
    return Payloads.from_settings(load(WorkerSettings))


def _upload(
    run_id: str,
    source: FileSource,
    name: str | None,
    content_type: str,
    adapter: Payloads,
) -> StoredFile:
    unique = uuid.uuid4().hex
    if isinstance(source, bytes | bytearray | memoryview):
        stream: IO[bytes] = io.BytesIO(source)
        return adapter.upload(
            run_id, stream, name=name or "file", content_type=content_type, unique=unique
        )
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        with path.open("rb") as opened:
            return adapter.upload(
                run_id, opened, name=name or path.name, content_type=content_type, unique=unique
            )
    default_name = Path(str(getattr(source, "name", "") or "file")).name
    return adapter.upload(
        run_id, source, name=name or default_name, content_type=content_type, unique=unique
    )


def put_file(
    ctx: StreamContext,
    source: FileSource,
    *,
    payloads: Payloads,
    name: str | None = None,
    content_type: str = "application/octet-stream",
) -> StoredFile:
    """Upload ``source`` under this run's prefix, then stream its reference.

    ``name`` defaults to the file's own name ("file" for bytes). Raises
    ``hatchway.payloads.PayloadError`` when S3 refuses (after boto3's retries):
    nothing is streamed then, so clients never see a reference to a missing file.
    """
    stored = _upload(ctx.workflow_run_id, source, name, content_type, payloads)
    ctx.put_stream(stored.reference())
    return stored


async def aput_file(
    ctx: StreamContext,
    source: FileSource,
    *,
    payloads: Payloads,
    name: str | None = None,
    content_type: str = "application/octet-stream",
) -> StoredFile:
    """``put_file`` for async tasks: the upload runs in a thread, off the event loop."""
    stored = await asyncio.to_thread(
        _upload, ctx.workflow_run_id, source, name, content_type, payloads
    )
    await ctx.aio_put_stream(stored.reference())
    return stored
