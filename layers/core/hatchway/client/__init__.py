"""The Python client of Hatchway (docs/protocol.md), as the JS client (clients/js) is:
start runs over HTTP and follow their frames over one shared WebSocket per URL,
resumed with ``after`` across drops, over HTTP when the WebSocket cannot connect.

Needs the ``client`` extra (aiohttp); no Lambda function imports it::

    from hatchway.client import HatchwayClient

    async with HatchwayClient("http://127.0.0.1:8000") as client:
        run = await client.start("demo-stream", {"words": 5})
        async for frame in run.frames():
            print(frame)
"""

from hatchway.client._backoff import Backoff
from hatchway.client._client import HatchwayClient
from hatchway.client._run import Run
from hatchway.client._types import (
    ChunkFrame,
    ConnectionCallback,
    ConnectionState,
    FileFrame,
    Frame,
    GapFrame,
    HatchwayError,
    RunFailedError,
    StatusFrame,
    TokenSource,
)

__all__ = [
    "Backoff",
    "ChunkFrame",
    "ConnectionCallback",
    "ConnectionState",
    "FileFrame",
    "Frame",
    "GapFrame",
    "HatchwayClient",
    "HatchwayError",
    "Run",
    "RunFailedError",
    "StatusFrame",
    "TokenSource",
]
