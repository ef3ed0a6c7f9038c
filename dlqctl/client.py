"""A blocking dlqd client: one Unix-socket connection, requests answered in order.

Used by the dlqctl commands, and by tests and benchmarks that talk to a real
daemon. Imports only the shared protocol module (and through it msgpack).
Every wait on the daemon is bounded by the connection's timeout, except the
wait for the next `watch` event, whose bound the caller chooses.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator
from typing import Any

from dlqd.protocol import PROTOCOL_VERSION, encode_frame, read_frame_blocking


class Unreachable(Exception):
    """The daemon's socket does not answer."""


class NotPermitted(Unreachable):
    """The socket exists but this user may not use it (file mode, or dlqd's peer check)."""


class Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Client:
    """One connection to dlqd; requests are answered in order."""

    def __init__(self, path: str, timeout_s: float = 30.0):
        self.path = path
        self.timeout_s = timeout_s
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        self._next_id = 1
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            reason = exc.strerror or str(exc)
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise NotPermitted(
                    f"permission denied on dlqd's socket {path}: this user may not use it "
                    "(see daemon.socket_mode and daemon.allowed_gids)"
                ) from None
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {timeout_s:g} s"
            raise Unreachable(f"cannot reach dlqd at {path}: {reason} (is it running?)") from None

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        request_id = self._next_id
        self._next_id += 1
        frame = {"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args or {}}
        send_error: OSError | None = None
        try:
            self._sock.sendall(encode_frame(frame))
        except TimeoutError:
            raise Unreachable(
                f"dlqd at {self.path} does not read requests "
                f"(nothing taken within {self.timeout_s:g} s)"
            ) from None
        except OSError as exc:
            send_error = exc  # a daemon that refused us at accept has left its answer to read
        try:
            response = read_frame_blocking(self._sock)
        except TimeoutError:
            raise Unreachable(
                f"dlqd at {self.path} did not answer within {self.timeout_s:g} s (--timeout)"
            ) from None
        except (OSError, ConnectionError) as exc:
            reason = send_error or exc
            raise Unreachable(f"lost the connection to dlqd at {self.path}: {reason}") from None
        return self._result(response)

    def _result(self, response: dict[str, Any]) -> Any:
        if not response.get("ok"):
            error = response.get("error") or {}
            code = str(error.get("code", "UNKNOWN"))
            message = str(error.get("message", ""))
            if code == "PERMISSION_DENIED" and response.get("id") is None:
                raise NotPermitted(f"permission denied by dlqd at {self.path}: {message}")
            raise Refused(code, message)
        return response.get("result")

    def list_all(self, statuses: list[str] | None = None) -> list[dict[str, Any]]:
        """Every job (with one of `statuses`, when given), oldest first, following `list` pages.

        Pages arrive newest first, each oldest first inside; a job submitted
        during the walk is newer than the cursor and so is not in it.
        """
        args: dict[str, Any] = {"status": statuses} if statuses else {}
        pages: list[list[dict[str, Any]]] = []
        while True:
            result = self.call("list", args)
            pages.append(result["jobs"])
            if "next" not in result:
                return [job for page in reversed(pages) for job in page]
            args["before"] = result["next"]

    def events(self) -> Iterator[dict[str, Any]]:
        """After `watch`: each event frame until the daemon closes."""
        while True:
            try:
                event = self.next_event(None)
            except Unreachable:
                return
            if event is not None:
                yield event

    def next_event(self, timeout_s: float | None) -> dict[str, Any] | None:
        """After `watch`: the next event, or None when none came within `timeout_s`.

        Raises Unreachable when the daemon went away.
        """
        readable, _, _ = select.select([self._sock], [], [], timeout_s)
        if not readable:
            return None
        self._sock.settimeout(self.timeout_s)  # a frame that has begun must finish in time
        try:
            return read_frame_blocking(self._sock)
        except OSError as exc:  # TimeoutError and ConnectionError included
            raise Unreachable(f"lost the watch stream from dlqd at {self.path}: {exc}") from None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
