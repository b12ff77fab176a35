"""The demo page: a static site on its own origin (as a team's frontend would be)
that starts demo runs through the HTTP API and follows them with the JS client
(``clients/js``, served from its build under ``/client/``). ``hatchway dev``
serves it and prints its URL; the browser tests open it in Chromium.

Its stable hooks for automation (docs/clients.md): ``?workflow=NAME&autostart=1``
starts a run on load (``&input=<JSON>`` sets its input), and the newest run's
card holds ``#run-id``, ``#text`` and ``#status`` (``data-final="true"`` on the
final status).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from aiohttp import web

from hatchway.observability import logger

HOST = "127.0.0.1"
PAGE = resources.files("hatchway_local.demo") / "page"
PAGE_FILES = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
# What each demo workflow starts with on the page (editable there). Each waits 2 s
# before it streams: Hatchet streams are live-only, and what a task streams before
# the relay has subscribed is lost upstream (the page would show a gap instead).
WAIT = {"start_delay_seconds": 2}
DEMO_INPUTS: dict[str, dict[str, object]] = {
    "demo-stream": {**WAIT, "pause_seconds": 0.05},
    "demo-fail": {**WAIT, "chunks_before_failing": 5},
    "demo-file": {**WAIT, "size_bytes": 256 * 1024, "name": "demo-file.bin"},
    "demo-big-chunk": {**WAIT, "chunks_around": 2},
    "demo-ticks": {**WAIT, "count": 60, "rate_per_second": 10},
}
NO_CACHE = {"Cache-Control": "no-store"}  # a rebuilt client or page shows at once
NOT_BUILT = (
    "The JS client is not built ({path} is missing). Build it with `make js` "
    "(`make dev` does), which needs Node 20+ and npm."
)


@dataclass
class DemoPage:
    """``async with DemoPage(api_url, client_dist) as page:`` serves it on loopback."""

    api_url: str
    client_dist: Path  # clients/js/dist: the built ESM client
    port: int = 0
    _runner: web.AppRunner | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def config(self) -> dict[str, object]:
        return {"apiUrl": self.api_url, "workflows": DEMO_INPUTS}

    async def start(self) -> None:
        app = web.Application()
        for path, (name, content_type) in PAGE_FILES.items():
            app.router.add_get(path, self._page_file(name, content_type))
        app.router.add_get("/config.json", self._config)
        app.router.add_get("/client/{name:[A-Za-z0-9_.-]+}", self._client_file)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port, reuse_address=True).start()
        self.port = int(self._runner.addresses[0][1])
        if not (self.client_dist / "index.js").is_file():
            logger.warning(NOT_BUILT.format(path=self.client_dist / "index.js"))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DemoPage:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @staticmethod
    def _page_file(
        name: str, content_type: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(_request: web.Request) -> web.StreamResponse:
            body = (PAGE / name).read_text()
            return web.Response(text=body, content_type=content_type, headers=NO_CACHE)

        return serve

    async def _config(self, _request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(self.config()), content_type="application/json", headers=NO_CACHE
        )

    async def _client_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.client_dist / name
        if not path.is_file() or path.suffix not in {".js", ".map"}:
            if not (self.client_dist / "index.js").is_file():
                return web.Response(status=503, text=NOT_BUILT.format(path=self.client_dist))
            raise web.HTTPNotFound
        return web.FileResponse(path, headers={**NO_CACHE, "Content-Type": "text/javascript"})
