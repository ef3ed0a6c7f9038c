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
from dlqd.model import (
    DEFAULT_INCLUDE,
    FINISHED_STATUSES,
    JOB_TYPES,
    LIST_ORDERS,
    MOVES,
    PRIORITIES,
    QUALITIES,
    RELEASE_KINDS,
    STRING_TARGET_TYPES,
    JobStatus,
    canonical_choice,
)

PROTOCOL_VERSION = 1
LENGTH_PREFIX = struct.Struct(">I")
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # dlqctl reads responses up to this size
MAX_TARGET_ID = 2**31 - 1
PLAYLIST_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
MIX_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
LIST_DEFAULT_LIMIT = 500  # jobs per `list` page when `limit` is left out
LIST_MAX_LIMIT = 5000
BATCH_MAX_ITEMS = 1000  # items of a batch `submit`, ids of a batch `retry`/`cancel`/`remove`
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


_Validator = Callable[[Any], Any]
_FormCheck = Callable[[str, dict[str, Any]], dict[str, Any]]  # (cmd, args) -> args


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


def _target_id(value: Any, name: str = "target_id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{name} must be an integer; got {type(value).__name__}")
    if not 1 <= value <= MAX_TARGET_ID:
        raise _invalid(f"{name} must be between 1 and {MAX_TARGET_ID}; got {value}")
    return value


def _target_for(job_type: str, value: Any, name: str) -> int | str:
    """A job's target as its type takes it: a playlist UUID, a mix id, else an integer id.

    A UUID is stored in lower case, so one playlist typed two ways is one job.
    """
    if job_type not in STRING_TARGET_TYPES:
        return _target_id(value, name)
    if job_type == "playlist":
        if not isinstance(value, str) or not PLAYLIST_UUID.fullmatch(value):
            raise _invalid(f"{name} of a playlist must be its UUID string; got {value!r:.80}")
        return value.lower()
    if not isinstance(value, str) or not MIX_ID.fullmatch(value):
        raise _invalid(
            f"{name} of a mix must be its id: 1 to 64 letters, digits, - or _; got {value!r:.80}"
        )
    return value


def _include(value: Any, name: str) -> tuple[str, ...]:
    """An artist job's release kinds: a non-empty list, any case, kept in canonical order."""
    if not isinstance(value, list) or not value:
        kinds = ", ".join(RELEASE_KINDS)
        raise _invalid(f"{name} must be a non-empty list of release kinds ({kinds})")
    chosen = {_choice(item, name, RELEASE_KINDS) for item in value}
    return tuple(kind for kind in RELEASE_KINDS if kind in chosen)


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


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be true or false; got {type(value).__name__}")
    return value


_ALL_STATUSES = tuple(str(status) for status in JobStatus)
_FINISHED_STATUSES = tuple(str(status) for status in JobStatus if status in FINISHED_STATUSES)


def _statuses(value: Any, known: tuple[str, ...] = _ALL_STATUSES) -> list[str]:
    if not isinstance(value, list):
        raise _invalid("status must be a list of job statuses")
    return [_choice(item, "status", known) for item in value]


def _finished_statuses(value: Any) -> list[str]:
    return _statuses(value, _FINISHED_STATUSES)


def _true(name: str) -> _Validator:
    """A selector flag: only `true` selects; anything else is a mistake worth saying."""

    def validate(value: Any) -> bool:
        if value is not True:
            raise _invalid(f"{name} must be true when given; got {value!r}")
        return True

    return validate


def _batch(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _invalid(f"{name} must be a non-empty list")
    if len(value) > BATCH_MAX_ITEMS:
        raise _invalid(f"{name} holds {len(value)} entries; at most {BATCH_MAX_ITEMS} per request")
    return value


def _job_ids(value: Any) -> list[str]:
    """Several job ids; a repeated id is kept once, where it first appears."""
    ids = [_job_id(item, f"ids[{index}]") for index, item in enumerate(_batch(value, "ids"))]
    return list(dict.fromkeys(ids))


def _with_form(value: Any) -> Any:
    """An argument checked together with the others by the command's form check."""
    return value


def _submit_item(value: Any, where: str = "") -> dict[str, Any]:
    """One submit's arguments: `type`, `target_id`, `quality`, `priority`?, `include`?."""
    if not isinstance(value, dict):
        raise _invalid(f"{where or 'submit'} must be a map of submit arguments")
    unknown = set(value) - {"type", "target_id", "quality", "priority", "include"}
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        raise _invalid(f"unknown argument(s) for submit{' in ' + where if where else ''}: {names}")
    prefix = f"{where}." if where else ""
    clean: dict[str, Any] = {}
    for name in ("type", "target_id", "quality"):
        if name not in value:
            raise _invalid(f"submit needs argument {prefix + name!r}")
    clean["type"] = _choice(value["type"], prefix + "type", JOB_TYPES)
    clean["target_id"] = _target_for(clean["type"], value["target_id"], prefix + "target_id")
    clean["quality"] = _choice(value["quality"], prefix + "quality", QUALITIES)
    if "priority" in value:
        clean["priority"] = _choice(value["priority"], prefix + "priority", PRIORITIES)
    if clean["type"] == "artist":
        clean["include"] = _include(value.get("include", list(DEFAULT_INCLUDE)), prefix + "include")
    elif "include" in value:
        raise _invalid(f"{prefix}include goes only with type artist")
    return clean


def _submit_items(value: Any) -> list[dict[str, Any]]:
    items = _batch(value, "items")
    return [_submit_item(item, f"items[{index}]") for index, item in enumerate(items)]


def _one_form(cmd: str, args: dict[str, Any], forms: tuple[str, ...]) -> None:
    """Exactly one of `forms` (a single job id, a list of ids, or a selector) is given."""
    given = [name for name in forms if name in args]
    if len(given) != 1:
        raise _invalid(f"{cmd} takes exactly one of {', '.join(forms)}")


def _check_submit(args: dict[str, Any]) -> dict[str, Any]:
    if "items" in args:
        if len(args) > 1:
            raise _invalid("submit takes either items or one job's arguments, not both")
        return args
    return _submit_item(args)


def _check_list(args: dict[str, Any]) -> dict[str, Any]:
    if args.get("order") == "run" and ({"limit", "before"} & set(args)):
        raise _invalid("order 'run' lists the whole queue; limit and before page the id order")
    return args


def _check_form(forms: tuple[str, ...], extra: dict[str, str] | None = None) -> _FormCheck:
    """A check that one form is given, and that an `extra` argument comes only with its form."""

    def check(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        _one_form(cmd, args, forms)
        for name, needs in (extra or {}).items():
            if name in args and needs not in args:
                raise _invalid(f"{cmd}: {name} goes only with {needs}")
        return args

    return check


def _check_resume(args: dict[str, Any]) -> dict[str, Any]:
    if "force" in args and "id" in args:
        raise _invalid("resume: force acts on the whole queue, not with id")
    return args


# Per command: required and optional argument validators; then, for commands
# with several forms, one check over the whole (validated) argument map.
_SPECS: dict[str, tuple[dict[str, _Validator], dict[str, _Validator]]] = {
    "submit": (
        {},
        {
            # One job's arguments are checked with the form (`_check_submit`).
            "type": _with_form,
            "target_id": _with_form,
            "quality": _with_form,
            "priority": _with_form,
            "include": _with_form,
            "items": _submit_items,
        },
    ),
    "list": (
        {},
        {
            "status": _statuses,
            "limit": _list_limit,
            "before": _list_cursor,
            "order": lambda v: _choice(v, "order", LIST_ORDERS),
        },
    ),
    "get": ({"id": _job_id}, {}),
    "cancel": ({}, {"id": _job_id, "ids": _job_ids, "all": _true("all")}),
    "retry": ({}, {"id": _job_id, "ids": _job_ids, "failed": _true("failed")}),
    "remove": (
        {},
        {
            "id": _job_id,
            "ids": _job_ids,
            "finished": _true("finished"),
            "status": _finished_statuses,
        },
    ),
    "pause": ({}, {"id": _job_id}),
    "resume": ({}, {"id": _job_id, "force": lambda v: _flag(v, "force")}),
    "move": ({"id": _job_id, "to": lambda v: _choice(v, "to", MOVES)}, {}),
    "priority": ({"id": _job_id, "priority": lambda v: _choice(v, "priority", PRIORITIES)}, {}),
    "stats": ({}, {}),
    "health": ({}, {}),
    "metrics": ({}, {}),
    "watch": ({}, {}),
}
_FORMS: dict[str, _FormCheck] = {
    "submit": lambda cmd, args: _check_submit(args),
    "list": lambda cmd, args: _check_list(args),
    "cancel": _check_form(("id", "ids", "all")),
    "retry": _check_form(("id", "ids", "failed")),
    "remove": _check_form(("id", "ids", "finished"), {"status": "finished"}),
    "resume": lambda cmd, args: _check_resume(args),
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
    if cmd in _FORMS:
        clean = _FORMS[cmd](cmd, clean)
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
