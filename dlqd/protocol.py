"""The control socket's wire format (DESIGN §4), shared by dlqd and dlqctl.

Owns framing (4-byte big-endian length + one msgpack map), the request and
response envelopes, and the per-command argument validation. It imports only
the standard library, msgpack and dlqd's plain-data modules, so dlqctl stays
quick to start; it never touches a socket beyond the blocking helpers dlqctl
uses, and never looks at queue state.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from dlqd.codes import ErrorCode
from dlqd.model import JOB_TYPES, PRIORITIES, QUALITIES, JobStatus, canonical_choice

PROTOCOL_VERSION = 1
LENGTH_PREFIX = struct.Struct(">I")
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # dlqctl reads responses up to this size
MAX_TARGET_ID = 2**31 - 1
LIST_DEFAULT_LIMIT = 500  # jobs per `list` page when `limit` is left out
LIST_MAX_LIMIT = 5000
_SEQUENCE_ID = re.compile(r"[1-9][0-9]*")  # job ids are decimal sequence numbers


class ProtocolError(Exception):
    """A request the daemon answers with an error code.

    `fatal` errors (MALFORMED_FRAME, FRAME_TOO_LARGE) close the connection after
    the answer; the rest leave it usable.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    @property
    def fatal(self) -> bool:
        return self.code in (ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE)


@dataclass(frozen=True)
class Request:
    id: int
    cmd: str
    args: dict[str, Any]


# --- framing -------------------------------------------------------------------


def encode_frame(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return LENGTH_PREFIX.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, f"undecodable msgpack body: {exc}") from None


def check_length(length: int, max_frame_bytes: int) -> None:
    if length > max_frame_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"frame of {length} bytes exceeds the limit of {max_frame_bytes}",
        )


def ok_response(request_id: int | None, result: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error_response(request_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": str(code), "message": message}}


# --- request validation ----------------------------------------------------------


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_ARGUMENT, message)


def _job_id(value: Any, name: str = "id") -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise _invalid(f"{name} must be a non-empty job id string")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """`value` in any case, as its canonical spelling; the choices are listed in lower case."""
    found = canonical_choice(value, choices) if isinstance(value, str) else None
    if found is None:
        listed = ", ".join(choice.lower() for choice in choices)
        raise _invalid(f"{name} must be one of {listed} (any case); got {value!r}")
    return found


def _target_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"target_id must be an integer; got {type(value).__name__}")
    if not 1 <= value <= MAX_TARGET_ID:
        raise _invalid(f"target_id must be between 1 and {MAX_TARGET_ID}; got {value}")
    return value


def _list_limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"limit must be an integer; got {type(value).__name__}")
    if not 1 <= value <= LIST_MAX_LIMIT:
        raise _invalid(f"limit must be between 1 and {LIST_MAX_LIMIT}; got {value}")
    return value


def _list_cursor(value: Any) -> str:
    """A `before` cursor: a job id as dlqd makes them; the job itself may be gone."""
    job_id = _job_id(value, "before")
    if not _SEQUENCE_ID.fullmatch(job_id):
        raise _invalid(f"before must be a job id such as '42'; got {job_id!r}")
    return job_id


def _statuses(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _invalid("status must be a list of job statuses")
    known = tuple(str(s) for s in JobStatus)
    return [_choice(item, "status", known) for item in value]


# Per command: required and optional argument validators.
_Validator = Callable[[Any], Any]
_SPECS: dict[str, tuple[dict[str, _Validator], dict[str, _Validator]]] = {
    "submit": (
        {
            "type": lambda v: _choice(v, "type", JOB_TYPES),
            "target_id": _target_id,
            "quality": lambda v: _choice(v, "quality", QUALITIES),
        },
        {"priority": lambda v: _choice(v, "priority", PRIORITIES)},
    ),
    "list": ({}, {"status": _statuses, "limit": _list_limit, "before": _list_cursor}),
    "get": ({"id": _job_id}, {}),
    "cancel": ({"id": _job_id}, {}),
    "retry": ({"id": _job_id}, {}),
    "remove": ({"id": _job_id}, {}),
    "pause": ({}, {"id": _job_id}),
    "resume": ({}, {"id": _job_id}),
    "stats": ({}, {}),
    "health": ({}, {}),
    "metrics": ({}, {}),
    "watch": ({}, {}),
}
COMMANDS = tuple(_SPECS)


def parse_request(message: Any) -> Request:
    """Validate a decoded frame into a Request, or raise ProtocolError."""
    if not isinstance(message, dict):
        raise _invalid(f"request must be a map; got {type(message).__name__}")
    raw_id = message.get("id")
    request_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
    try:
        return _parse_envelope(message, request_id)
    except ProtocolError as exc:
        exc.request_id = request_id
        raise


def _parse_envelope(message: dict[Any, Any], request_id: int | None) -> Request:
    unknown = set(message) - {"v", "id", "cmd", "args"}
    if unknown:
        raise _invalid(f"unknown request fields: {', '.join(sorted(map(str, unknown)))}")
    version = message.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise _invalid(f"v must be the integer {PROTOCOL_VERSION}; got {version!r}")
    if request_id is None:
        raise _invalid("id must be an integer")
    cmd = message.get("cmd")
    if not isinstance(cmd, str):
        raise _invalid("cmd must be a string")
    if cmd not in _SPECS:
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {cmd!r}")
    args = message.get("args", {})
    if not isinstance(args, dict):
        raise _invalid("args must be a map")
    required, optional = _SPECS[cmd]
    unknown_args = set(args) - set(required) - set(optional)
    if unknown_args:
        names = ", ".join(sorted(map(str, unknown_args)))
        raise _invalid(f"unknown argument(s) for {cmd}: {names}")
    clean: dict[str, Any] = {}
    for name, validate in required.items():
        if name not in args:
            raise _invalid(f"{cmd} needs argument {name!r}")
        clean[name] = validate(args[name])
    for name, validate in optional.items():
        if name in args:
            clean[name] = validate(args[name])
    return Request(id=request_id, cmd=cmd, args=clean)


# --- blocking client side (dlqctl) -------------------------------------------------


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks = []
    remaining = count
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("daemon closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame_blocking(sock: socket.socket) -> dict[str, Any]:
    (length,) = LENGTH_PREFIX.unpack(_recv_exactly(sock, LENGTH_PREFIX.size))
    if length > MAX_RESPONSE_BYTES:
        raise ConnectionError(f"response of {length} bytes exceeds {MAX_RESPONSE_BYTES}")
    message = decode_body(_recv_exactly(sock, length))
    if not isinstance(message, dict):
        raise ConnectionError("daemon sent a response that is not a map")
    return message
