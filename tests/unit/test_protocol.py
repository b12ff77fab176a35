"""The wire protocol's client-message validation and message packing."""

from __future__ import annotations

import json

import pytest

from hatchway.protocol import (
    MAX_MESSAGE_BYTES,
    ErrorCode,
    PingMessage,
    ProtocolError,
    SubscribeMessage,
    UnsubscribeMessage,
    chunk_frame,
    pack_messages,
    parse_client_message,
    status_frame,
)


def test_valid_messages_parse() -> None:
    subscribe = parse_client_message('{"action":"subscribe","runId":"r1","token":"t","after":17}')
    assert subscribe == SubscribeMessage(action="subscribe", runId="r1", token="t", after=17)
    assert parse_client_message('{"action":"subscribe","runId":"r1","token":"t"}').after == 0  # type: ignore[union-attr]
    assert isinstance(
        parse_client_message('{"action":"unsubscribe","runId":"r1"}'), UnsubscribeMessage
    )
    assert isinstance(parse_client_message('{"action":"ping"}'), PingMessage)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (None, "empty"),
        ("not json", "not JSON"),
        ("[1,2]", "JSON object"),
        ('{"action":"dance"}', "unknown action"),
        ('{"runId":"r"}', "unknown action"),
        ('{"action":"subscribe","runId":"r1"}', "token"),
        ('{"action":"subscribe","runId":"r1","token":"t","after":-1}', "after"),
        ('{"action":"subscribe","runId":"r1","token":"t","after":"x"}', "after"),
        ('{"action":"unsubscribe"}', "runId"),
    ],
)
def test_bad_messages_are_bad_requests(body: str | None, fragment: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_client_message(body)
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert fragment in refused.value.message


def test_errors_keep_the_run_id_when_the_message_names_one() -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_client_message('{"action":"subscribe","runId":"r9"}')
    assert refused.value.run_id == "r9"


def test_status_frames_say_whether_they_are_final() -> None:
    assert status_frame("r", 3, "RUNNING")["final"] is False
    done = status_frame("r", 9, "COMPLETED", output={"a": 1})
    assert done == {
        "type": "status",
        "runId": "r",
        "seq": 9,
        "status": "COMPLETED",
        "final": True,
        "output": {"a": 1},
    }


def test_packing_keeps_order_and_the_size_limit() -> None:
    frames = [chunk_frame("r", n, "x" * 1000) for n in range(1, 401)]
    messages = pack_messages(frames)

    assert len(messages) > 1
    assert all(len(m.encode()) <= MAX_MESSAGE_BYTES for m in messages)
    unpacked = []
    for message in messages:
        data = json.loads(message)
        unpacked.extend(data["frames"] if data["type"] == "batch" else [data])
    assert unpacked == frames


def test_a_lone_frame_goes_as_itself_and_an_oversized_one_is_refused() -> None:
    assert pack_messages([chunk_frame("r", 1, "hi")]) == [
        '{"type":"chunk","runId":"r","seq":1,"data":"hi"}'
    ]
    assert pack_messages([]) == []
    with pytest.raises(ValueError, match="over"):
        pack_messages([chunk_frame("r", 1, "x" * MAX_MESSAGE_BYTES)])
