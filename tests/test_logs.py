"""The journald native protocol encoding of log events, and the log-format default."""

from __future__ import annotations

import struct

from dlqd.logs import default_log_format, encode_journal_entry, journal_field_name


def parse_journal_entry(data: bytes) -> dict[str, bytes]:
    """Decode one native-protocol datagram: `KEY=value\\n`, or `KEY\\n<u64 LE size><value>\\n`."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        line = data[pos:newline]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = newline + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, newline + 1)
            start = newline + 1 + 8
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n", "value must end with a newline"
            pos = start + size + 1
        fields[key.decode()] = value
    return fields


def test_an_event_becomes_message_priority_identifier_and_upper_case_fields() -> None:
    entry = encode_journal_entry(
        {"event": "track finished", "level": "info", "job_id": "7", "track_id": 100001}
    )
    fields = parse_journal_entry(entry)
    assert fields == {
        "MESSAGE": b"track finished",
        "PRIORITY": b"6",
        "SYSLOG_IDENTIFIER": b"dlqd",
        "JOB_ID": b"7",
        "TRACK_ID": b"100001",
        "EVENT": b"track finished",
    }


def test_a_summary_becomes_the_message_and_the_event_name_stays_in_event() -> None:
    line = "job 17 completed: Artist – Album (12/12 tracks, 412 MiB in 48 s)"
    entry = encode_journal_entry(
        {"event": "job finished", "level": "info", "job_id": "17", "status": "completed",
         "summary": line}
    )  # fmt: skip
    fields = parse_journal_entry(entry)
    assert fields["MESSAGE"] == line.encode()
    assert (fields["EVENT"], fields["JOB_ID"], fields["STATUS"]) == (
        b"job finished",
        b"17",
        b"completed",
    )
    assert "SUMMARY" not in fields and "DLQD_MESSAGE" not in fields


def test_levels_map_to_syslog_priorities() -> None:
    def priority(level: str) -> bytes:
        return parse_journal_entry(encode_journal_entry({"event": "x", "level": level}))["PRIORITY"]

    assert [priority(level) for level in ("critical", "error", "warning", "info", "debug")] == [
        b"2",
        b"3",
        b"4",
        b"6",
        b"7",
    ]


def test_multi_line_values_use_the_length_prefixed_form() -> None:
    traceback = 'Traceback (most recent call last):\n  File "x"\nValueError: boom'
    entry = encode_journal_entry(
        {"event": "internal error\nin track", "level": "error", "exception": traceback}
    )
    data = traceback.encode()
    assert b"EXCEPTION\n" + struct.pack("<Q", len(data)) + data + b"\n" in entry
    fields = parse_journal_entry(entry)
    assert fields["EXCEPTION"] == data
    assert fields["MESSAGE"] == b"internal error\nin track"
    assert fields["PRIORITY"] == b"3"


def test_non_ascii_values_are_counted_in_bytes() -> None:
    title = "Äther\nZweite Zeile"
    fields = parse_journal_entry(encode_journal_entry({"event": "e", "title": title}))
    assert fields["TITLE"].decode() == title


def test_non_string_values_are_json_and_none_is_left_out() -> None:
    fields = parse_journal_entry(
        encode_journal_entry(
            {"event": "e", "error": {"code": "TIMEOUT"}, "ok": True, "error_code": None}
        )
    )
    assert fields["ERROR"] == b'{"code": "TIMEOUT"}'
    assert fields["OK"] == b"true"
    assert "ERROR_CODE" not in fields


def test_keys_are_made_valid_field_names() -> None:
    assert journal_field_name("error_code") == "ERROR_CODE"
    assert journal_field_name("delay-s") == "DELAY_S"
    assert journal_field_name("_private") == "PRIVATE"  # leading _ is for trusted fields
    assert journal_field_name("2nd") == "DLQD_2ND"  # may not start with a digit
    assert journal_field_name("x" * 100) == "X" * 64
    assert journal_field_name("___") == "FIELD"


def test_keys_cannot_overwrite_the_reserved_fields() -> None:
    fields = parse_journal_entry(
        encode_journal_entry({"event": "real", "message": "fake", "priority": 0})
    )
    assert fields["MESSAGE"] == b"real"
    assert fields["DLQD_MESSAGE"] == b"fake"
    assert fields["PRIORITY"] == b"6"
    assert fields["DLQD_PRIORITY"] == b"0"


def test_journal_is_the_default_only_under_a_journal_stream() -> None:
    assert default_log_format({"JOURNAL_STREAM": "8:12345"}) == "journal"
    assert default_log_format({}) == "console"
