"""Structured logging for the daemon: console, JSON lines, or journald's native protocol.

Every module logs through structlog with key/value context (`job_id`,
`track_id`, `error_code`…). This module only chooses how those events leave
the process; it never decides what is logged. The journal form sends one
datagram per event with `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER=dlqd` and
each key as an upper-case field, so `journalctl -u dlqd JOB_ID=…` finds a job.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

LOG_FORMATS = ("console", "json", "journal")
DEFAULT_JOURNAL_SOCKET = "/run/systemd/journal/socket"
_PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_FIELD_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def default_log_format(environ: Mapping[str, str]) -> str:
    """journal when systemd connected our output to the journal (JOURNAL_STREAM), else console."""
    return "journal" if environ.get("JOURNAL_STREAM") else "console"


def journal_field_name(key: str) -> str:
    """journald field names: A-Z, 0-9 and '_', not leading '_' or a digit, at most 64 bytes."""
    name = "".join(c if c in _FIELD_OK else "_" for c in key.upper()).lstrip("_")
    if not name:
        return "FIELD"
    if name[0].isdigit():
        name = f"DLQD_{name}"
    return name[:64]


def encode_journal_entry(event: Mapping[str, Any]) -> bytes:
    """One entry in the native protocol; values with newlines use the length-prefixed form.

    MESSAGE is the line's `summary` when it has one (a sentence for people:
    `job 17 completed: Artist – Album (...)`), else the event name; EVENT is
    always the event name, so `journalctl EVENT="job finished"` still matches.
    """
    name_of_event = str(event.get("event", ""))
    summary = event.get("summary")
    fields: dict[str, str] = {
        "MESSAGE": summary if isinstance(summary, str) and summary else name_of_event,
        "PRIORITY": str(_PRIORITIES.get(str(event.get("level", "info")), 6)),
        "SYSLOG_IDENTIFIER": "dlqd",
    }
    for key, value in event.items():
        if key in ("event", "level", "summary") or value is None:
            continue  # journalctl FIELD=value matching has no use for "null"
        name = journal_field_name(key)
        if name in ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"):
            name = f"DLQD_{name}"
        fields[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    fields["EVENT"] = name_of_event
    out = bytearray()
    for name, text in fields.items():
        data = text.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalLogger:
    """A structlog logger that sends each event dict to journald as one datagram."""

    def __init__(self, path: str, fallback: TextIO = sys.stderr):
        self._path = path
        self._fallback = fallback
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def msg(self, event: Mapping[str, Any]) -> None:
        entry = encode_journal_entry(event)
        try:
            self._sock.sendto(entry, self._path)
        except OSError:
            print(json.dumps(dict(event), default=str), file=self._fallback, flush=True)

    debug = info = warning = error = critical = exception = msg


def _to_journal(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    return ((dict(event),), {})


def configure_logging(log_format: str, environ: Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
    ]
    if log_format == "journal":
        journal = JournalLogger(env.get("DLQD_JOURNAL_SOCKET", DEFAULT_JOURNAL_SOCKET))
        structlog.configure(
            processors=[*shared, _to_journal],
            logger_factory=lambda *_: journal,
            cache_logger_on_first_use=True,
        )
        return
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    if log_format == "json":
        renderer: Any = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, stamp, renderer],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
