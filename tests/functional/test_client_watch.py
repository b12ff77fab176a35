"""``hatchway watch`` on hatchway.client, against the scripted fake Hatchway: chunks
on stdout as they arrive, the rest on stderr, exit 0 / 1 / 2."""

from __future__ import annotations

from typing import Any

import pytest

from hatchway_local.cli import _run_watch, build_parser
from tests.functional.fake_hatchway import FakeHatchway, chunk, final

pytestmark = pytest.mark.functional


async def watch(*argv: str) -> int:
    return await _run_watch(build_parser().parse_args(["watch", *argv]))


async def test_watch_prints_chunks_on_stdout_and_the_rest_on_stderr(
    fake: FakeHatchway, capsys: pytest.CaptureFixture[str]
) -> None:
    file_frame: dict[str, Any] = {
        "type": "file",
        "seq": 3,
        "name": "out.txt",
        "contentType": "text/plain",
        "size": 2,
        "sha256": "cd" * 32,
        "url": "https://bucket.example/out.txt",
        "expiresAt": "2099-01-01T00:00:00Z",
    }
    fake.workflows["demo-stream"] = [
        chunk("", 1, "Hello, "),
        {"type": "gap", "seq": 2, "reason": "relay lost"},
        file_frame,
        chunk("", 4, "world"),
        final("", 5, output={"words": 2}),
    ]

    async def drop_once(connection: int, subscribe: dict[str, Any]) -> None:
        await fake.replay(connection, subscribe, upto=1 if connection == 0 else 0)
        if connection == 0:
            await fake.drop(connection)

    fake.on_subscribe = drop_once
    code = await watch("demo-stream", "--url", fake.url, "--input", '{"words": 2}')
    out, err = capsys.readouterr()

    assert code == 0
    assert out == "Hello, world"
    assert "[run run-1]" in err
    assert "[gap at seq 2: relay lost]" in err
    assert "[file out.txt (2 bytes, sha256 " in err
    assert '[COMPLETED] {"words": 2}' in err
    assert err.count("[connection open]") == 2
    assert "[connection reconnecting]" in err
    assert "[connection closed]" not in err
    assert [r.message["after"] for r in fake.messages("subscribe")] == [0, 1]


async def test_watch_attaches_with_after_and_exits_1_on_failed(
    fake: FakeHatchway, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add_run(
        "r1", [chunk("r1", 1, "a"), chunk("r1", 2, "b"), final("r1", 3, "FAILED", error="boom")]
    )
    code = await watch(
        "--url", fake.url, "--run", "r1", "--token", "token-r1", "--websocket-url", fake.ws_url,
        "--after", "1",
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert out == "b"
    assert "[FAILED] boom" in err
    assert [r.message["after"] for r in fake.messages("subscribe")] == [1]


async def test_watch_exits_2_when_the_api_refuses(
    fake: FakeHatchway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await watch("no-such-workflow", "--url", fake.url) == 2
    assert "unknown_workflow" in capsys.readouterr().err
    assert await watch("--run", "r1", "--url", fake.url) == 2
    assert "--run needs --token and --websocket-url" in capsys.readouterr().err
