"""The demo page in a real browser: Debian's headless chromium, driven by
Playwright (never a downloaded browser), against the whole local stack. The page
runs the JS client (clients/js/dist); what these tests read is what a person
sees. Each test saves a screenshot of the page in its tmp dir."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, WebSocket, async_playwright

from hatchway_local.demo.page_server import DemoPage
from hatchway_local.demo.workflows import ANNA_KARENINA
from hatchway_local.stack import LocalStack, client_dist
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import LIVE_STREAM

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

FINAL_WAIT_MS = 90_000  # a bound, not a measure
# Hatchet streams are live-only: a task that streams before the relay has subscribed
# loses those chunks (the page then shows a gap). Each run here waits for the relay
# as conftest's LIVE_STREAM does. SLOW: 37 chunks over about 8 s, to act mid-stream.
START = {"start_delay_seconds": LIVE_STREAM["start_delay_seconds"]}
SLOW = {**START, "pause_seconds": 0.2}
# What the project's probe found chromium needs here: no sandbox as root, and none of
# its background connections (this network refuses them).
# What chromium itself logs for a request that fails (the tests cut the network and
# start a run the API refuses on purpose): not errors of the page's code.
BROWSER_NETWORK_LOGS = ("Failed to load resource", "WebSocket connection to")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest_asyncio.fixture(scope="module")
async def demo(stack: LocalStack) -> AsyncIterator[DemoPage]:
    assert stack.gateway is not None
    dist = client_dist(REPO_ROOT / "template.yaml")
    if not (dist / "index.js").is_file():
        pytest.fail(f"the JS client is not built ({dist}): run make js (make test does)")
    async with DemoPage(stack.gateway.http_url, dist) as page:
        yield page


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("HATCHWAY_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed: make browser")
        pytest.skip("chromium is not installed (make browser installs it)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture
async def page(browser: Browser, tmp_path: Path) -> AsyncIterator[Page]:
    """A fresh page; any error it logs fails the test (among them the page's own report
    of a frame the client delivered twice)."""
    context = await browser.new_context(viewport={"width": 1180, "height": 900})
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and not message.text.startswith(BROWSER_NETWORK_LOGS)
            else None
        ),
    )
    try:
        yield opened
    finally:
        await opened.screenshot(path=tmp_path / "demo-page.png", full_page=True)
        await context.close()
    assert not problems, problems


def page_url(demo: DemoPage, workflow: str, input_: dict[str, Any] | None = None) -> str:
    url = f"{demo.url}?workflow={workflow}&autostart=1"
    if input_ is not None:
        url += "&input=" + quote(json.dumps(input_))
    return url


async def final_status(page: Page) -> str:
    await page.wait_for_selector('#status[data-final="true"]', timeout=FINAL_WAIT_MS)
    return await page.inner_text("#status")


async def wait_for_text(page: Page, characters: int) -> None:
    """Until the run's text shows at least ``characters`` (so we act mid-stream)."""
    await page.wait_for_function(
        "n => (document.querySelector('#text')?.textContent ?? '').length >= n",
        arg=characters,
        timeout=FINAL_WAIT_MS,
    )


async def shown_text(page: Page) -> str:
    return await page.eval_on_selector("#text", "element => element.textContent")


def record_sockets(page: Page) -> tuple[list[str], list[dict[str, Any]]]:
    """The WebSockets the page opens (their URLs) and every subscribe it sends."""
    sockets: list[str] = []
    subscribes: list[dict[str, Any]] = []

    def opened(socket: WebSocket) -> None:
        sockets.append(socket.url)

        def sent(payload: str | bytes) -> None:
            message = json.loads(payload)
            if message.get("action") == "subscribe":
                subscribes.append(message)

        socket.on("framesent", sent)

    page.on("websocket", opened)
    return sockets, subscribes


async def test_the_page_streams_demo_stream_whole_and_in_order(page: Page, demo: DemoPage) -> None:
    await page.goto(page_url(demo, "demo-stream", START))
    run_id = await page.inner_text("#run-id")
    assert run_id
    assert await final_status(page) == "COMPLETED"
    assert await shown_text(page) == ANNA_KARENINA  # every chunk once, in order
    assert await page.inner_text("#run-id") == run_id
    counts = await page.inner_text('[data-role="counts"]')
    assert "37 chunks" in counts  # 361 characters in chunks of 10


async def test_a_network_cut_mid_stream_and_restored_leaves_the_text_exact(
    page: Page, demo: DemoPage, stack: LocalStack
) -> None:
    assert stack.gateway is not None
    await page.goto(page_url(demo, "demo-stream", SLOW))
    await wait_for_text(page, 40)
    # The network goes (DevTools' offline emulation), and the gateway drops the socket,
    # as it does when a connection is lost: the client must reconnect by itself.
    await page.context.set_offline(True)
    for connection_id in list(stack.gateway.connections):
        await stack.gateway.disconnect(connection_id, 1001, "network lost")
    await page.wait_for_selector('[data-role="connection"]:text-matches("reconnecting|fallback")')
    cut_at = len(await shown_text(page))
    await page.context.set_offline(False)
    assert await final_status(page) == "COMPLETED"
    assert await shown_text(page) == ANNA_KARENINA
    assert cut_at < len(ANNA_KARENINA)  # the cut really was mid-stream


async def test_the_drop_button_closes_the_socket_and_the_run_resumes_exactly(
    page: Page, demo: DemoPage
) -> None:
    sockets, subscribes = record_sockets(page)
    await page.goto(page_url(demo, "demo-stream", SLOW))
    await wait_for_text(page, 40)
    await page.click("#drop")
    await page.wait_for_selector('.event.info:text-matches("connection lost after seq")')
    assert await final_status(page) == "COMPLETED"
    assert await shown_text(page) == ANNA_KARENINA
    assert len(sockets) == 2  # the dropped one and its successor
    assert subscribes[-1]["after"] >= 5  # resumed after what it had, not from the start


async def test_a_reload_mid_stream_resumes_without_repeating_a_chunk(
    page: Page, demo: DemoPage
) -> None:
    _sockets, subscribes = record_sockets(page)
    await page.goto(page_url(demo, "demo-stream", SLOW))
    await wait_for_text(page, 60)
    run_id = await page.inner_text("#run-id")
    await page.reload()
    assert await page.inner_text("#run-id") == run_id  # the same run, not a new one
    assert await final_status(page) == "COMPLETED"
    assert await shown_text(page) == ANNA_KARENINA  # a repeated chunk would show twice
    # The page resumed after what it had shown: its second subscribe names that seq.
    assert len(subscribes) >= 2
    assert subscribes[0]["after"] == 0
    assert subscribes[-1]["after"] >= 6, subscribes
    assert {s["runId"] for s in subscribes} == {run_id}


async def test_a_gap_is_shown_where_frames_were_lost_upstream(
    page: Page, demo: DemoPage, stack: LocalStack
) -> None:
    """Hatchet streams are live-only: while the relay's subscription is down, what the
    task streams is lost upstream. The page says so at that point, and goes on."""
    assert stack.hatchet is not None
    await page.goto(page_url(demo, "demo-stream", SLOW))
    await wait_for_text(page, 40)
    run_id = await page.inner_text("#run-id")
    before_gap = await shown_text(page)
    try:
        stack.hatchet.engine.refuse_subscriptions(1.5)  # about seven chunks at one per 200 ms
        assert stack.hatchet.engine.break_subscriptions(run_id) >= 1
        assert await final_status(page) == "COMPLETED"
    finally:
        stack.hatchet.engine.clear_faults()
    gap = await page.inner_text(".event.gap")
    assert gap.startswith("gap at seq ")
    assert await page.locator("#text .gap-mark").count() == 1  # marked where it fell
    text = await shown_text(page)
    assert text.startswith(before_gap)
    assert ANNA_KARENINA.endswith(text[-20:])  # it went on after the gap, to the end
    assert len(text) < len(ANNA_KARENINA)  # and did not pretend the lost chunks arrived


async def test_demo_file_shows_a_link_whose_bytes_match_its_sha256(
    page: Page, demo: DemoPage
) -> None:
    size = 300 * 1024
    await page.goto(page_url(demo, "demo-file", {**START, "size_bytes": size}))
    assert await final_status(page) == "COMPLETED"
    file_event = page.locator(".event.file")
    shown_sha = await file_event.get_attribute("data-sha256")
    href = await file_event.locator('a[data-role="download"]').get_attribute("href")
    assert shown_sha
    assert href
    async with aiohttp.ClientSession() as http, http.get(href) as response:
        assert response.status == 200
        body = await response.read()
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == shown_sha
    assert shown_sha in await file_event.inner_text()
    # The browser fetched it too (across origins, from the bucket) and hashed it alike.
    await page.wait_for_selector('.event.file .check[data-verified="true"]')


async def test_demo_fail_shows_failed_with_its_error(page: Page, demo: DemoPage) -> None:
    input_ = {**START, "chunks_before_failing": 5}
    await page.goto(page_url(demo, "demo-fail", input_))
    assert await final_status(page) == "FAILED"
    error = await page.inner_text(".event.error")
    assert "demo-fail failed on purpose" in error
    assert await shown_text(page) == ANNA_KARENINA[:50]  # the 5 chunks before it raised


async def test_several_runs_stream_at_once_on_one_socket(page: Page, demo: DemoPage) -> None:
    sockets, subscribes = record_sockets(page)
    await page.goto(demo.url + "?workflow=demo-stream&input=" + quote(json.dumps(SLOW)))
    for count in range(1, 4):
        await page.click("#start")
        await page.wait_for_function(
            "n => document.querySelectorAll('.run').length === n", arg=count
        )
    cards = page.locator(".run")
    for index in range(3):
        card = cards.nth(index)
        await card.locator('[data-role="status"][data-final="true"]').wait_for(
            timeout=FINAL_WAIT_MS
        )
        assert await card.locator('[data-role="status"]').inner_text() == "COMPLETED"
        assert await card.locator('[data-role="text"]').text_content() == ANNA_KARENINA
    run_ids = {await cards.nth(i).locator('[data-role="run-id"]').inner_text() for i in range(3)}
    assert len(run_ids) == 3
    assert {s["runId"] for s in subscribes} == run_ids
    assert len(sockets) == 1, sockets  # three runs, one WebSocket


async def test_the_page_says_so_when_a_run_cannot_start(page: Page, demo: DemoPage) -> None:
    await page.goto(demo.url + "?workflow=demo-stream")
    await page.fill("#input", "[1, 2]")  # JSON, but not an object: the API answers 400
    await page.click("#start")
    error = page.locator("#start-error")
    await error.wait_for()
    assert "Could not start demo-stream" in await error.inner_text()
    assert await page.locator(".run").count() == 0
