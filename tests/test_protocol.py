"""The control protocol's validation (DESIGN §4): every command, every wrong shape.

Pure tests of `dlqd.protocol`; the same rules on a live socket are in
tests/test_queue_process.py.
"""

from __future__ import annotations

import socket
from typing import Any

import msgpack
import pytest

from dlqd.codes import ErrorCode
from dlqd.protocol import (
    BATCH_MAX_ITEMS,
    COMMANDS,
    LIST_MAX_LIMIT,
    MAX_TARGET_ID,
    ProtocolError,
    Request,
    check_length,
    decode_body,
    encode_frame,
    parse_request,
    read_frame_blocking,
)


def request(cmd: str, args: Any = None, **envelope: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"v": 1, "id": 7, "cmd": cmd}
    if args is not None:
        message["args"] = args
    message.update(envelope)
    return message


def refusal(message: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_request(message)
    return caught.value


SUBMIT = {"type": "album", "target_id": 123, "quality": "LOSSLESS"}
PLAYLIST = "3f9c2b7e-5a1d-4e8b-9c06-7d2e41a8b5f3"


# --- accepted requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "args", "clean"),
    [
        ("submit", SUBMIT, SUBMIT),
        ("submit", {**SUBMIT, "priority": "high"}, {**SUBMIT, "priority": "high"}),
        ("submit", {**SUBMIT, "type": "track", "target_id": MAX_TARGET_ID}, None),
        ("submit", {**SUBMIT, "type": "playlist", "target_id": PLAYLIST}, None),
        ("submit", {**SUBMIT, "type": "mix", "target_id": "0193c7a9e2f45b6d8e0a1c3b5d7f92"}, None),
        ("submit", {**SUBMIT, "type": "mix", "target_id": "a_B-9"}, None),
        ("list", {}, {}),
        ("list", {"status": ["queued", "failed"]}, {"status": ["queued", "failed"]}),
        ("list", {"status": []}, {"status": []}),
        ("list", {"limit": 1, "before": "42"}, {"limit": 1, "before": "42"}),
        ("list", {"limit": LIST_MAX_LIMIT, "status": ["queued"]}, None),
        ("list", {"before": "99999999999999999999"}, None),  # the job need not exist
        ("get", {"id": "12"}, {"id": "12"}),
        ("cancel", {"id": "12"}, {"id": "12"}),
        ("retry", {"id": "12"}, {"id": "12"}),
        ("remove", {"id": "12"}, {"id": "12"}),
        ("pause", {}, {}),
        ("pause", {"id": "3"}, {"id": "3"}),
        ("resume", {}, {}),
        ("resume", {"id": "3"}, {"id": "3"}),
        ("resume", {"force": True}, {"force": True}),
        ("resume", {"force": False}, {"force": False}),
        ("stats", {}, {}),
        ("health", {}, {}),
        ("metrics", {}, {}),
        ("watch", {}, {}),
        # batch forms, run order
        ("submit", {"items": [SUBMIT, {**SUBMIT, "priority": "low"}]}, None),
        ("submit", {"items": [SUBMIT] * BATCH_MAX_ITEMS}, None),
        ("cancel", {"ids": ["1", "2"]}, None),
        ("cancel", {"all": True}, None),
        ("retry", {"ids": ["3"]}, None),
        ("retry", {"failed": True}, None),
        ("remove", {"ids": ["4", "5", "4"]}, {"ids": ["4", "5"]}),  # a repeat is kept once
        ("remove", {"finished": True}, None),
        ("remove", {"finished": True, "status": ["partial", "failed"]}, None),
        ("list", {"order": "run"}, None),
        ("list", {"order": "run", "status": ["paused"]}, None),
        ("list", {"order": "id", "limit": 3, "before": "9"}, None),
        ("move", {"id": "3", "to": "top"}, None),
        ("move", {"id": "3", "to": "down"}, None),
        ("priority", {"id": "3", "priority": "high"}, None),
    ],
)
def test_valid_requests_parse(cmd: str, args: dict, clean: dict | None) -> None:
    parsed = parse_request(request(cmd, args))
    assert parsed == Request(id=7, cmd=cmd, args=args if clean is None else clean)


def test_every_command_is_covered_above() -> None:
    assert set(COMMANDS) == {
        "submit",
        "list",
        "get",
        "cancel",
        "retry",
        "remove",
        "pause",
        "resume",
        "stats",
        "health",
        "metrics",
        "watch",
        "move",
        "priority",
    }


def test_args_may_be_left_out_when_a_command_takes_none() -> None:
    assert parse_request(request("stats")).args == {}


def test_an_artist_submit_defaults_to_albums_and_eps_and_takes_include_in_any_case() -> None:
    artist = {**SUBMIT, "type": "artist"}
    assert parse_request(request("submit", artist)).args["include"] == ("album", "ep")
    chosen = parse_request(request("submit", {**artist, "include": ["SINGLE", "album"]}))
    assert chosen.args["include"] == ("album", "single")


def test_a_playlist_uuid_is_kept_in_lower_case_so_one_playlist_is_one_job() -> None:
    args = {**SUBMIT, "type": "Playlist", "target_id": PLAYLIST.upper()}
    clean = parse_request(request("submit", args)).args
    assert (clean["type"], clean["target_id"]) == ("playlist", PLAYLIST)


@pytest.mark.parametrize("quality", ["LOW", "HIGH", "LOSSLESS", "HI_RES_LOSSLESS"])
def test_every_quality_is_accepted(quality: str) -> None:
    assert parse_request(request("submit", {**SUBMIT, "quality": quality})).args["quality"]


# --- refused requests: INVALID_ARGUMENT, connection stays usable ------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        ({**SUBMIT, "target_id": True}, "target_id"),  # msgpack bool is not an integer
        ({**SUBMIT, "target_id": False}, "target_id"),
        ({**SUBMIT, "target_id": "123"}, "target_id"),
        ({**SUBMIT, "target_id": 1.0}, "target_id"),
        ({**SUBMIT, "target_id": 0}, "target_id"),
        ({**SUBMIT, "target_id": -5}, "target_id"),
        ({**SUBMIT, "target_id": MAX_TARGET_ID + 1}, "target_id"),
        ({**SUBMIT, "quality": "MEDIUM"}, "quality"),
        ({**SUBMIT, "quality": "lossless "}, "quality"),  # any case, but nothing added
        ({**SUBMIT, "quality": None}, "quality"),
        ({**SUBMIT, "type": "playlist"}, "target_id"),  # a playlist's target is its UUID
        ({**SUBMIT, "type": "playlist", "target_id": "3f9c2b7e-5a1d-4e8b-9c06"}, "UUID"),
        ({**SUBMIT, "type": "playlist", "target_id": PLAYLIST + "0"}, "UUID"),
        ({**SUBMIT, "type": "playlist", "target_id": f"{{{PLAYLIST}}}"}, "UUID"),
        ({**SUBMIT, "type": "playlist", "target_id": PLAYLIST.replace("-", "")}, "UUID"),
        ({**SUBMIT, "type": "playlist", "target_id": "g" + PLAYLIST[1:]}, "UUID"),
        ({**SUBMIT, "type": "mix", "target_id": 123}, "mix"),
        ({**SUBMIT, "type": "mix", "target_id": ""}, "mix"),
        ({**SUBMIT, "type": "mix", "target_id": "a" * 65}, "mix"),
        ({**SUBMIT, "type": "mix", "target_id": "a b"}, "mix"),
        ({**SUBMIT, "type": "mix", "target_id": "../x"}, "mix"),
        ({**SUBMIT, "type": "mix", "target_id": "abc\n"}, "mix"),
        ({**SUBMIT, "type": "album", "target_id": PLAYLIST}, "target_id"),
        ({**SUBMIT, "type": "video"}, "type"),
        ({**SUBMIT, "type": "artist", "include": ["album", "live"]}, "include"),
        ({**SUBMIT, "type": "artist", "include": []}, "include"),
        ({**SUBMIT, "type": "artist", "include": "album"}, "include"),
        ({**SUBMIT, "type": "artist", "target_id": "10"}, "target_id"),
        ({**SUBMIT, "include": ["single"]}, "include goes only with type artist"),
        ({**SUBMIT, "priority": "urgent"}, "priority"),
        ({**SUBMIT, "extra": 1}, "extra"),  # unknown argument
        ({"type": "album", "target_id": 1}, "quality"),  # missing
        ({"quality": "LOW", "target_id": 1}, "type"),
        ({"type": "album", "quality": "LOW"}, "target_id"),
        ({"items": []}, "items"),
        ({"items": SUBMIT}, "items"),
        ({"items": [SUBMIT] * (BATCH_MAX_ITEMS + 1)}, "at most"),
        ({"items": [SUBMIT, "album 1"]}, "items[1]"),
        ({"items": [SUBMIT, {**SUBMIT, "quality": "MEDIUM"}]}, "items[1].quality"),
        ({"items": [{**SUBMIT, "target_id": 0}]}, "items[0].target_id"),
        ({"items": [{"type": "album", "target_id": 1}]}, "items[0].quality"),
        ({"items": [{**SUBMIT, "extra": 1}]}, "extra"),
        ({"items": [SUBMIT], **SUBMIT}, "either items"),  # not both forms
    ],
)
def test_bad_submit_arguments_are_invalid_argument(args: dict, mentions: str) -> None:
    error = refusal(request("submit", args))
    assert error.code == ErrorCode.INVALID_ARGUMENT
    assert mentions in error.message
    assert error.request_id == 7
    assert not error.fatal


@pytest.mark.parametrize(
    ("cmd", "args"),
    [
        ("get", {}),
        ("get", {"id": 12}),  # job ids are strings
        ("get", {"id": ""}),
        ("get", {"id": "x" * 65}),
        ("get", {"id": "1", "verbose": True}),
        ("cancel", {"id": None}),
        ("retry", {"id": ["1"]}),
        ("remove", {}),
        ("pause", {"id": 3}),
        ("resume", {"id": True}),
        ("list", {"status": "queued"}),  # a list, not a string
        ("list", {"status": ["queued", "done"]}),
        ("list", {"status": [1]}),
        ("list", {"limit": 0}),
        ("list", {"limit": LIST_MAX_LIMIT + 1}),
        ("list", {"limit": -1}),
        ("list", {"limit": True}),
        ("list", {"limit": 10.0}),
        ("list", {"limit": "10"}),
        ("list", {"limit": None}),
        ("list", {"before": 42}),  # job ids are strings
        ("list", {"before": ""}),
        ("list", {"before": "abc"}),
        ("list", {"before": "0"}),  # ids start at 1
        ("list", {"before": "042"}),
        ("list", {"before": "-1"}),
        ("list", {"before": "4.2"}),
        ("list", {"before": " 42"}),
        ("list", {"before": "\u0664\u0662"}),  # Arabic-Indic digits are not a job id
        ("list", {"before": "9" * 65}),
        ("resume", {"force": 1}),  # a bool, not an integer
        ("resume", {"force": "yes"}),
        ("resume", {"id": "3", "force": True}),  # force acts on the whole queue only
        ("pause", {"force": True}),
        ("stats", {"x": 1}),
        ("health", {"deep": True}),
        ("metrics", {"format": "json"}),
        ("watch", {"since": 0}),
        # batch forms: exactly one form; selectors are `true`; lists bounded
        ("cancel", {}),
        ("cancel", {"id": "1", "ids": ["2"]}),
        ("cancel", {"id": "1", "all": True}),
        ("cancel", {"all": False}),
        ("cancel", {"all": 1}),
        ("cancel", {"ids": []}),
        ("cancel", {"ids": "1"}),
        ("cancel", {"ids": [1]}),
        ("cancel", {"ids": [str(n) for n in range(1, BATCH_MAX_ITEMS + 2)]}),
        ("retry", {"failed": True, "ids": ["1"]}),
        ("retry", {"all": True}),
        ("remove", {"all": True}),
        ("remove", {"status": ["completed"]}),  # status needs finished
        ("remove", {"id": "1", "status": ["completed"]}),
        ("remove", {"finished": True, "status": ["queued"]}),  # not a finished status
        ("remove", {"finished": True, "status": "completed"}),
        ("list", {"order": "priority"}),
        ("list", {"order": "run", "limit": 10}),  # the queue in run order is not paged
        ("list", {"order": "run", "before": "3"}),
        ("move", {"id": "1"}),
        ("move", {"id": "1", "to": "first"}),
        ("move", {"to": "top"}),
        ("priority", {"id": "1"}),
        ("priority", {"id": "1", "priority": "urgent"}),
    ],
)
def test_bad_arguments_of_other_commands_are_invalid_argument(cmd: str, args: dict) -> None:
    error = refusal(request(cmd, args))
    assert error.code == ErrorCode.INVALID_ARGUMENT
    assert not error.fatal


@pytest.mark.parametrize(
    ("message", "mentions"),
    [
        ({"id": 1, "cmd": "stats"}, "v must be the integer 1"),  # missing v
        ({"v": 2, "id": 1, "cmd": "stats"}, "v must be the integer 1"),
        ({"v": "1", "id": 1, "cmd": "stats"}, "v must be the integer 1"),
        ({"v": True, "id": 1, "cmd": "stats"}, "v must be the integer 1"),  # a bool is not 1
        ({"v": 1.0, "id": 1, "cmd": "stats"}, "v must be the integer 1"),
        ({"v": None, "id": 1, "cmd": "stats"}, "v must be the integer 1"),
        ({"v": 1, "cmd": "stats"}, "id"),
        ({"v": 1, "id": "1", "cmd": "stats"}, "id"),
        ({"v": 1, "id": True, "cmd": "stats"}, "id"),
        ({"v": 1, "id": 1}, "cmd"),
        ({"v": 1, "id": 1, "cmd": 5}, "cmd"),
        ({"v": 1, "id": 1, "cmd": "stats", "args": []}, "args"),
        ({"v": 1, "id": 1, "cmd": "stats", "args": None}, "args"),
        ({"v": 1, "id": 1, "cmd": "stats", "token": "x"}, "token"),
    ],
)
def test_bad_envelopes_are_invalid_argument(message: dict, mentions: str) -> None:
    error = refusal(message)
    assert error.code == ErrorCode.INVALID_ARGUMENT
    assert mentions in error.message


@pytest.mark.parametrize("body", [[1, 2], "submit", 5, None, b"raw"])
def test_a_body_that_is_not_a_map_is_invalid_argument(body: Any) -> None:
    error = refusal(body)
    assert (error.code, error.request_id, error.fatal) == (ErrorCode.INVALID_ARGUMENT, None, False)


def test_an_unknown_command_is_unknown_command_and_echoes_the_id() -> None:
    error = refusal(request("frobnicate", {}))
    assert (error.code, error.request_id, error.fatal) == (ErrorCode.UNKNOWN_COMMAND, 7, False)
    assert "frobnicate" in error.message


def test_the_request_id_is_echoed_only_when_it_is_an_integer() -> None:
    assert refusal({"v": 1, "id": 99, "cmd": "nope"}).request_id == 99
    assert refusal({"v": 1, "id": "99", "cmd": "nope"}).request_id is None


# --- framing --------------------------------------------------------------------------------


def test_frames_are_a_big_endian_length_then_one_msgpack_map() -> None:
    frame = encode_frame({"id": 1, "ok": True})
    body = msgpack.packb({"id": 1, "ok": True}, use_bin_type=True)
    assert frame == len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("body", [b"\xc1", b"", b"\x92\x01", b"\x81\xa1v\x01\x00"])
def test_undecodable_bodies_are_malformed_frame_and_fatal(body: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_body(body)
    assert (caught.value.code, caught.value.fatal) == (ErrorCode.MALFORMED_FRAME, True)


def test_a_length_over_the_limit_is_frame_too_large_and_fatal() -> None:
    check_length(65536, 65536)
    with pytest.raises(ProtocolError) as caught:
        check_length(65537, 65536)
    assert (caught.value.code, caught.value.fatal) == (ErrorCode.FRAME_TOO_LARGE, True)


def test_the_blocking_reader_returns_one_response_map() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(encode_frame({"id": 3, "ok": True, "result": {}}) + encode_frame([1]))
        assert read_frame_blocking(right) == {"id": 3, "ok": True, "result": {}}
        with pytest.raises(ConnectionError, match="not a map"):
            read_frame_blocking(right)
        left.close()
        with pytest.raises(ConnectionError):
            read_frame_blocking(right)
