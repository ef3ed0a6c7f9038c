"""A blocking dlqd client: one Unix-socket connection, requests answered in order.

Used by the dlqctl commands, and by tests and benchmarks that talk to a real
daemon. Imports only the shared protocol module (and through it msgpack).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

from dlqd.protocol import PROTOCOL_VERSION, encode_frame, read_frame_blocking


class Unreachable(Exception):
    """The daemon's socket does not answer."""


class Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Client:
    """One connection to dlqd; requests are answered in order."""

    def __init__(self, path: str, timeout_s: float = 30.0):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        self._next_id = 1
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            reason = exc.strerror or str(exc)
            raise Unreachable(f"cannot reach dlqd at {path}: {reason} (is it running?)") from None

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        request_id = self._next_id
        self._next_id += 1
        frame = {"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args or {}}
        send_error: OSError | None = None
        try:
            self._sock.sendall(encode_frame(frame))
        except TimeoutError as exc:
            raise Unreachable(f"dlqd at {self.path} does not read requests: {exc}") from None
        except OSError as exc:
            send_error = exc  # a daemon that refused us at accept has left its answer to read
        try:
            response = read_frame_blocking(self._sock)
        except (OSError, ConnectionError) as exc:
            reason = send_error or exc
            raise Unreachable(f"lost the connection to dlqd at {self.path}: {reason}") from None
        if not response.get("ok"):
            error = response.get("error") or {}
            raise Refused(str(error.get("code", "UNKNOWN")), str(error.get("message", "")))
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
        self._sock.settimeout(None)
        while True:
            try:
                yield read_frame_blocking(self._sock)
            except ConnectionError:
                return

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
