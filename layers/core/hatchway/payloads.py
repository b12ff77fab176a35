"""The S3 adapter: large payloads travel by reference (the issue "Large payloads
through S3"; the wire shapes are docs/protocol.md's, the decisions docs/design.md's).

API Gateway refuses WebSocket messages over 128 KB, a DynamoDB item holds at most
400 KB and Hatchet's gRPC stream stops at 4 MB. So:

- **offload at log time**: the relay's follower hands each batch to
  :func:`offload_frames` before it appends it to the frame log. A frame whose JSON
  is over ``RELAY_OFFLOAD_BYTES`` (default 120 KiB, headroom under 128 KB) is put
  in the bucket under ``runs/<runId>/`` and logged as a *reference*: the frame
  without its payload, with ``size`` and the internal ``s3Key``, never a URL.
  Nothing is split, dropped or truncated; a failing put is retried with backoff
  and the batch keeps its order (the flush waits).
- **files from workers**: ``hatchway.worker.put_file`` uploads straight to the
  bucket under ``runs/<runId>/files/`` (multipart, streamed, hashed on the way)
  and streams a small JSON reference that starts with ``{"$hatchway":"file/v1"``.
  :func:`stream_frame` turns that chunk into a ``file`` frame (a reference too).
- **URLs are minted when a frame leaves the system**: the relay's senders, the
  subscribe function's replay and ``GET /runs/{id}/frames`` pass frames through
  :meth:`Payloads.presign`, which swaps ``s3Key`` for a SigV4 presigned GET
  ``url`` and its ``expiresAt`` (``PAYLOAD_URL_TTL_SECONDS``, default 900). A
  replay an hour later gets a fresh, working URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Protocol, cast
from urllib.parse import quote

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .observability import logger
from .protocol import Frame, encode
from .settings import PayloadSettings

REF_KEY = "s3Key"  # a logged frame's reference to its payload; never sent to clients
FILE_MARKER = "file/v1"  # {"$hatchway": "file/v1", ...}: a file a worker put
MARKER_FIELD = "$hatchway"
MAX_NAME_CHARS = 1024
MAX_CONTENT_TYPE_CHARS = 255
OFFLOAD_MAX_BACKOFF_S = 5.0
LOG_ITEM_BYTES = 300_000  # frames per log item: DynamoDB items hold 400 KB with their keys

# Multipart and streamed: at most PART_BYTES * IN_MEMORY_PARTS of a file is held at
# once, whatever its size (S3's minimum part is 5 MiB; 10,000 parts of 8 MiB = 78 GiB).
PART_BYTES = 8 * 1024 * 1024
IN_MEMORY_PARTS = 2
UPLOAD_THREADS = 2

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class PayloadError(Exception):
    """S3 refused a payload or could not be reached (boto3's errors, at the boundary)."""


# -- keys ------------------------------------------------------------------------------


def run_prefix(run_id: str) -> str:
    """Every object of a run lives under this prefix (lifecycle, IAM and checks use it)."""
    return f"runs/{quote(run_id, safe='')}/"


def _frame_key(run_id: str, frame: Frame, body: bytes, suffix: str) -> str:
    # Content-addressed per seq: a retried put overwrites itself, and two relays that
    # ever raced for one seq cannot overwrite each other's payload.
    digest = hashlib.sha256(body).hexdigest()[:16]
    kind = "chunks" if frame.get("type") == "chunk" else "frames"
    return f"{run_prefix(run_id)}{kind}/{int(frame['seq']):010d}-{digest}{suffix}"


def file_key(run_id: str, name: str, unique: str) -> str:
    safe = _UNSAFE_NAME.sub("_", name).strip("._")[:200] or "file"
    return f"{run_prefix(run_id)}files/{unique}/{safe}"


# -- references in frames --------------------------------------------------------------


def has_references(frames: list[Frame]) -> bool:
    return any(REF_KEY in frame for frame in frames)


@dataclass(frozen=True)
class StoredFile:
    """A file a worker put in the bucket: what its reference on the stream carries."""

    key: str
    name: str
    content_type: str
    size: int
    sha256: str

    def reference(self) -> str:
        """The chunk ``put_file`` streams (small, whatever the file's size)."""
        return encode(
            {
                MARKER_FIELD: FILE_MARKER,
                "key": self.key,
                "name": self.name,
                "contentType": self.content_type,
                "size": self.size,
                "sha256": self.sha256,
            }
        )


def _file_reference(run_id: str, payload: str) -> dict[str, Any] | None:
    """The file reference in ``payload``, if it is a valid one for this run."""
    if not payload.lstrip().startswith('{"' + MARKER_FIELD + '"'):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get(MARKER_FIELD) != FILE_MARKER:
        return None
    key, name, content_type = data.get("key"), data.get("name"), data.get("contentType")
    size, sha256 = data.get("size"), data.get("sha256")
    valid = (
        isinstance(key, str)
        and key.startswith(run_prefix(run_id) + "files/")  # never another run's objects
        and ".." not in key.split("/")
        and isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_CHARS
        and isinstance(content_type, str)
        and 0 < len(content_type) <= MAX_CONTENT_TYPE_CHARS
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
        and isinstance(sha256, str)
        and bool(_SHA256_HEX.match(sha256))
    )
    if not valid:
        logger.warning("a file reference that does not hold; sent as a plain chunk", run_id=run_id)
        return None
    return cast("dict[str, Any]", data)


def stream_frame(chunk: Frame) -> Frame:
    """A chunk as the task streamed it, or the ``file`` frame (a reference) when the
    task streamed a file reference with ``put_file``."""
    data = chunk.get("data")
    run_id = str(chunk["runId"])
    reference = _file_reference(run_id, data) if isinstance(data, str) else None
    if reference is None:
        return chunk
    return {
        "type": "file",
        "runId": run_id,
        "seq": chunk["seq"],
        "name": reference["name"],
        "contentType": reference["contentType"],
        "size": reference["size"],
        "sha256": reference["sha256"],
        REF_KEY: reference["key"],
    }


# -- the adapter -----------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Payloads:
    """Puts payloads in the bucket and mints presigned GET URLs for references.

    The client is built on first use (a process that never meets a large payload
    never builds one) with SigV4, which presigned URLs need in every region.
    """

    def __init__(
        self,
        bucket: str,
        *,
        url_ttl_s: int = 900,
        offload_bytes: int = 120 * 1024,
        retry_s: float = 30.0,
        client: Any = None,  # noqa: ANN401 - a boto3 S3 client
    ) -> None:
        self.bucket = bucket
        self.url_ttl_s = url_ttl_s
        self.offload_bytes = offload_bytes
        self.retry_s = retry_s
        self._client = client
        self._credentials: Any = None
        self._lock = threading.Lock()
        self.puts = 0  # objects put by offload (what S3 bills per request)
        self.put_bytes = 0

    @classmethod
    def from_settings(cls, settings: PayloadSettings) -> Payloads:
        return cls(
            settings.payload_bucket,
            url_ttl_s=settings.payload_url_ttl_seconds,
            offload_bytes=settings.offload_bytes,
            retry_s=settings.offload_retry_seconds,
        )

    @property
    def client(self) -> Any:  # noqa: ANN401 - a boto3 S3 client
        if self._client is None:
            with self._lock:
                if self._client is None:
                    session = boto3.session.Session()
                    self._credentials = session.get_credentials()
                    self._client = session.client(
                        "s3",
                        config=Config(
                            signature_version="s3v4",
                            s3={"addressing_style": "auto"},
                            retries={"max_attempts": 3, "mode": "standard"},
                            connect_timeout=5,
                            read_timeout=30,
                            max_pool_connections=20,
                        ),
                    )
        return self._client

    def _bucket(self) -> str:
        if not self.bucket:
            raise PayloadError("PAYLOAD_BUCKET is not set: large payloads have nowhere to go")
        return self.bucket

    # -- offload (the relay, at log time) ----------------------------------------------

    def needs_offload(self, frame: Frame) -> bool:
        """True when the frame's JSON is over the limit (and not a reference already)."""
        if REF_KEY in frame:
            return False
        data = frame.get("data")
        if isinstance(data, str) and len(data) * 6 + 256 <= self.offload_bytes:
            return False  # even all-escaped, it fits: no need to encode it to know
        return len(encode(frame).encode()) > self.offload_bytes

    def offload(self, run_id: str, frames: list[Frame]) -> list[Frame]:
        """The frames to log: each one over the limit put in the bucket and replaced
        by its reference, the others as they are, in order. Raises PayloadError."""
        return [self._offload_one(run_id, f) if self.needs_offload(f) else f for f in frames]

    def _offload_one(self, run_id: str, frame: Frame) -> Frame:
        if frame.get("type") == "chunk" and isinstance(frame.get("data"), str):
            body = str(frame["data"]).encode()
            key = _frame_key(run_id, frame, body, ".txt")
            self._put(key, body, "text/plain; charset=utf-8")
            return {
                "type": "chunk",
                "runId": frame["runId"],
                "seq": frame["seq"],
                "size": len(body),
                REF_KEY: key,
            }
        # Any other frame (a status with a huge output or error): the whole frame as
        # JSON in the bucket; the reference keeps what a client needs to follow the run.
        body = encode(frame).encode()
        key = _frame_key(run_id, frame, body, ".json")
        self._put(key, body, "application/json")
        kept: Frame = {
            k: frame[k] for k in ("type", "runId", "seq", "status", "final") if k in frame
        }
        kept["size"] = len(body)
        kept[REF_KEY] = key
        return kept

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self._bucket(), Key=key, Body=body, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as error:
            raise PayloadError(f"put {key}: {error}") from error
        self.puts += 1
        self.put_bytes += len(body)

    # -- URLs (whenever a frame leaves the system) -------------------------------------

    def presign(self, frames: list[Frame]) -> list[Frame]:
        """The frames as clients get them: every reference with a fresh ``url`` and its
        ``expiresAt``, the internal key removed; other frames untouched."""
        if not has_references(frames):
            return frames
        sent: list[Frame] = []
        for frame in frames:
            if REF_KEY not in frame:
                sent.append(frame)
                continue
            url, expires_at = self.url(str(frame[REF_KEY]))
            out = {k: v for k, v in frame.items() if k != REF_KEY}
            out["url"] = url
            out["expiresAt"] = expires_at
            sent.append(out)
        return sent

    def url(self, key: str) -> tuple[str, str]:
        """A presigned GET URL for ``key`` and when it expires (ISO-8601 UTC)."""
        # Whole seconds, taken before signing: the URL's X-Amz-Date is this second or
        # the next, so expiresAt is never later than the URL's real expiry.
        now = datetime.now(UTC).replace(microsecond=0)
        try:
            url = str(
                self.client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self._bucket(), "Key": key},
                    ExpiresIn=self.url_ttl_s,
                )
            )
        except (ClientError, BotoCoreError) as error:
            raise PayloadError(f"presign {key}: {error}") from error
        expires = now + timedelta(seconds=self.url_ttl_s)
        # A URL signed with temporary credentials dies with them (notes/aws.md): say so.
        session_end = getattr(self._credentials, "_expiry_time", None)
        if isinstance(session_end, datetime) and session_end.tzinfo and session_end < expires:
            expires = session_end.replace(microsecond=0)
        return url, _iso(expires)

    # -- files (workers) ---------------------------------------------------------------

    def upload(
        self, run_id: str, source: IO[bytes], *, name: str, content_type: str, unique: str
    ) -> StoredFile:
        """Stream ``source`` to ``runs/<runId>/files/<unique>/<name>``: multipart above
        one part, never more than a few parts in memory, sha256 computed on the way."""
        key = file_key(run_id, name, unique)
        reader = _HashingReader(source)
        config = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=UPLOAD_THREADS,
        )
        config.max_in_memory_upload_chunks = IN_MEMORY_PARTS  # s3transfer's own knob
        try:
            self.client.upload_fileobj(
                reader,
                self._bucket(),
                key,
                ExtraArgs={"ContentType": content_type},
                Config=config,
            )
        except (ClientError, BotoCoreError) as error:
            raise PayloadError(f"upload {key}: {error}") from error
        return StoredFile(key, name, content_type, reader.size, reader.sha256.hexdigest())


class _HashingReader(io.RawIOBase):
    """Reads ``source`` once, front to back, hashing what passes. Not seekable on
    purpose: s3transfer then reads it part by part in order, never twice."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        data = self._source.read(-1 if size is None else size)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("put_file needs bytes: open the file in binary mode ('rb')")
        data = bytes(data)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# -- the relay's use: offload with retries -------------------


class _IoRunner(Protocol):
    def __call__(self, function: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...  # noqa: ANN401


async def offload_frames(
    run_id: str,
    frames: list[Frame],
    io_runner: _IoRunner,
    *,
    payloads: Payloads,
    stopped: Callable[[], bool] = lambda: False,
) -> list[Frame] | None:
    """``frames`` ready for the log (see :meth:`Payloads.offload`), with S3 failures
    retried, backing off, for up to ``retry_s``; then PayloadError. None when
    ``stopped()`` turned true meanwhile (the lease is gone: nothing is to be logged).
    The blocking puts run through ``io_runner`` (the caller's thread pool)."""
    if not any(payloads.needs_offload(frame) for frame in frames):
        return frames
    loop = asyncio.get_running_loop()
    deadline = loop.time() + payloads.retry_s
    attempt = 0
    while True:
        try:
            return cast("list[Frame]", await io_runner(payloads.offload, run_id, frames))
        except PayloadError as error:
            attempt += 1
            remaining = deadline - loop.time()
            if stopped():
                return None
            if remaining <= 0:
                logger.error("offload failed; giving up", run_id=run_id, error=str(error))
                raise
            delay = min(OFFLOAD_MAX_BACKOFF_S, 0.1 * 2 ** (attempt - 1)) * random.uniform(0.5, 1)  # noqa: S311
            logger.warning(
                "offload failed; retrying", run_id=run_id, attempt=attempt, error=str(error)
            )
            await asyncio.sleep(min(delay, remaining))


def _size_bound(frame: Frame) -> int:
    """At least the frame's JSON size in bytes (cheap for chunks: no encoding)."""
    data = frame.get("data")
    if isinstance(data, str):
        return len(data) * 6 + 256  # every character escaped (\u0000), plus the rest
    return len(encode(frame).encode()) + 1


def log_batches(frames: list[Frame], max_bytes: int = LOG_ITEM_BYTES) -> list[list[Frame]]:
    """``frames`` in order, cut so each batch's JSON stays under ``max_bytes``: one
    log item per batch, and a DynamoDB item holds at most 400 KB. (Every frame is
    under the offload limit by now, so each batch holds at least one.)"""
    if sum(_size_bound(frame) for frame in frames) <= max_bytes:
        return [frames] if frames else []  # the usual case: no need to encode to know
    batches: list[list[Frame]] = [[]]
    size = 0
    for frame in frames:
        frame_bytes = len(encode(frame).encode()) + 1
        if batches[-1] and size + frame_bytes > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(frame)
        size += frame_bytes
    return batches if batches[0] else []
