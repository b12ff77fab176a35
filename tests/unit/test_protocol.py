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
    encode,
    error_frame,
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


# -- hostile messages (issue: hardening, item 3) ---------------------------------------


def refused(body: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(body)
    return caught.value


def frame_size(error: ProtocolError) -> int:
    return len(encode(error_frame(error.code, error.message, error.run_id)).encode())


@pytest.mark.parametrize("field", ["action", "runId"])
def test_an_echoed_field_is_bounded_so_the_error_frame_stays_small(field: str) -> None:
    for size, code in ((15_000, ErrorCode.BAD_REQUEST), (127_000, ErrorCode.TOO_LARGE)):
        huge = "x" * size
        message = {"action": "dance", field: huge} if field == "runId" else {"action": huge}
        error = refused(json.dumps(message))
        assert error.code == code
        assert error.run_id is None  # a runId no run can have is not echoed
        assert frame_size(error) < 2_000


@pytest.mark.parametrize(
    "body",
    [
        '{"action":"unsubscribe","runId":"\\ud800"}',
        '{"action":"\\udfff"}',
        '{"action":"ping","x":["\\ud83d"]}',
    ],
)
def test_a_lone_surrogate_is_a_bad_request(body: str) -> None:
    error = refused(body)
    assert error.code == ErrorCode.BAD_REQUEST
    assert "Unicode" in error.message
    encode(error_frame(error.code, error.message, error.run_id)).encode()  # sendable


def test_deep_nesting_is_a_bad_request_not_a_recursion_error() -> None:
    assert refused('{"action":"ping","x":' + "[" * 5000 + "]" * 5000 + "}").code in (
        ErrorCode.BAD_REQUEST,
        ErrorCode.TOO_LARGE,
    )
    assert refused("[" * 5000 + "]" * 5000).code == ErrorCode.BAD_REQUEST
    assert refused('{"action":"ping","x":' + "[" * 20 + "]" * 20 + "}").code == (
        ErrorCode.BAD_REQUEST
    )


def test_an_oversized_message_is_too_large() -> None:
    error = refused(json.dumps({"action": "ping", "pad": "x" * 20_000}))
    assert error.code == ErrorCode.TOO_LARGE


def test_after_is_bounded_to_what_the_log_stores() -> None:
    error = refused(
        json.dumps({"action": "subscribe", "runId": "r", "token": "t", "after": 10**40})
    )
    assert error.code == ErrorCode.BAD_REQUEST
    assert "after" in error.message
    assert parse_client_message(  # the largest seq the log's keys hold is fine
        json.dumps({"action": "subscribe", "runId": "r", "token": "t", "after": 10**10 - 1})
    )


def test_a_token_too_long_to_be_one_is_unauthorized() -> None:
    error = refused(json.dumps({"action": "subscribe", "runId": "r1", "token": "t" * 5000}))
    assert error.code == ErrorCode.UNAUTHORIZED
    assert error.run_id == "r1"


def test_a_binary_message_must_be_utf8_json() -> None:
    assert refused(b"\xff\xfe\x00").code == ErrorCode.BAD_REQUEST
    assert isinstance(parse_client_message(b'{"action":"ping"}'), PingMessage)


def test_every_error_frame_is_bounded() -> None:
    frame = error_frame(ErrorCode.INTERNAL, "y" * 200_000, "r1")
    assert len(encode(frame).encode()) < 2_000
