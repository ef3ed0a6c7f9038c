"""The control socket: a Unix stream server speaking the framing of DESIGN §4.

Owns the listening socket (stale-file handling, mode, socket activation),
peer credentials, per-uid submit rate limits and per-connection framing.
Each connection is its own task, so a slow or hostile client stalls only
itself; every error a client can cause is answered with a code, never
raised into the daemon. What a command does is `dlqd.commands`' business.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from dlqd.commands import HANDLERS, CommandContext
from dlqd.errors import DlqdError, ErrorCode
from dlqd.protocol import (
    LENGTH_PREFIX,
    ProtocolError,
    Request,
    check_length,
    decode_body,
    encode_frame,
    error_response,
    ok_response,
    parse_request,
)

log = structlog.get_logger("dlqd.control")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_CONNECTIONS = 512


class SocketInUse(Exception):
    """Another process answers on the socket path."""


_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_MAX_PEER_GROUPS = 256


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gids: frozenset[int]  # primary and supplementary groups


def peer_credentials(sock: trio.socket.SocketType) -> Peer:
    """The connecting process's uid and groups, as the kernel vouches for them.

    Supplementary groups matter: `usermod -aG dlqd alice` is how people grant
    access, and SO_PEERCRED alone carries only the primary group.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    groups = {gid}
    try:
        raw_groups = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * _MAX_PEER_GROUPS)
        groups.update(struct.unpack(f"{len(raw_groups) // 4}I", raw_groups))
    except OSError:
        pass  # an older kernel: the primary group only
    return Peer(pid, uid, frozenset(groups))


def bind_unix_socket(path: Path, mode: int) -> socket.socket:
    """Bind `path`, replacing a stale socket file only when nobody answers on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                raise
            path.unlink(missing_ok=True)
        else:
            raise SocketInUse(f"another daemon answers on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


class RateLimiter:
    """A token bucket per uid: `per_minute` submits, bursting up to a minute's worth."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}

    def allow(self, uid: int) -> bool:
        if self.per_minute <= 0:
            return True
        now = self.clock()
        tokens, stamp = self._buckets.get(uid, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - stamp) * self.per_minute / 60.0)
        if tokens < 1.0:
            self._buckets[uid] = (tokens, now)
            return False
        self._buckets[uid] = (tokens - 1.0, now)
        return True


class ControlServer:
    def __init__(
        self,
        listener: socket.socket,
        ctx: CommandContext,
        *,
        max_frame_bytes: int,
        allowed_uids: frozenset[int],
        allowed_gids: frozenset[int],
        submit_rate_per_min: int,
    ):
        self.ctx = ctx
        self.max_frame_bytes = max_frame_bytes
        self.allowed_uids = allowed_uids | {os.getuid(), 0}
        self.allowed_gids = allowed_gids
        self.rate = RateLimiter(submit_rate_per_min)
        self._listener = trio.socket.from_stdlib_socket(listener)
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                sock, _ = await self._listener.accept()
                if self.connections >= MAX_CONNECTIONS:
                    sock.close()
                    continue
                nursery.start_soon(self._serve_connection, sock)

    def _permitted(self, peer: Peer) -> bool:
        return peer.uid in self.allowed_uids or not peer.gids.isdisjoint(self.allowed_gids)

    async def _serve_connection(self, sock: trio.socket.SocketType) -> None:
        self.connections += 1
        stream = trio.SocketStream(sock)
        try:
            peer = peer_credentials(sock)
            await self._converse(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away; nothing to answer
        except Exception:
            log.exception("connection failed")  # one client's connection, never the server
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.SocketStream, peer: Peer) -> None:
        reader = _FrameReader(stream)
        while True:
            try:
                body = await reader.read_frame(self.max_frame_bytes)
                if body is None:
                    return
                request = parse_request(decode_body(body))
            except ProtocolError as exc:
                await stream.send_all(
                    encode_frame(error_response(exc.request_id, exc.code, exc.message))
                )
                if exc.fatal:
                    return
                continue
            if not self._permitted(peer):
                message = f"uid {peer.uid} is not allowed to control dlqd"
                response = error_response(request.id, ErrorCode.PERMISSION_DENIED, message)
                await stream.send_all(encode_frame(response))
                return
            if request.cmd == "watch":
                await self._watch(stream, request)
                return
            await stream.send_all(encode_frame(await self._dispatch(request, peer)))

    async def _dispatch(self, request: Request, peer: Peer) -> dict[str, Any]:
        if request.cmd == "submit" and not self.rate.allow(peer.uid):
            message = f"more than {self.rate.per_minute} submits a minute from uid {peer.uid}"
            return error_response(request.id, ErrorCode.RATE_LIMITED, message)
        try:
            result = await HANDLERS[request.cmd](self.ctx, request.args)
        except DlqdError as exc:
            return error_response(request.id, exc.code, exc.message)
        except Exception as exc:  # a bug answers one request; it never ends the daemon
            log.exception("internal error handling a command", cmd=request.cmd)
            return error_response(request.id, ErrorCode.INTERNAL_ERROR, f"internal error: {exc!r}")
        return ok_response(request.id, result)

    async def _watch(self, stream: trio.SocketStream, request: Request) -> None:
        """Stream events until the client closes; a closed client ends the task."""
        with self.ctx.store.watching() as events:
            await stream.send_all(encode_frame(ok_response(request.id, {"watching": True})))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_closed, stream, nursery.cancel_scope)
                async for event in events:
                    await stream.send_all(encode_frame(event))


async def _cancel_when_closed(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    while True:
        data = await stream.receive_some(4096)
        if not data:
            scope.cancel()
            return


class _FrameReader:
    """Reads length-prefixed frames from a stream, refusing oversize ones before reading them."""

    def __init__(self, stream: trio.SocketStream):
        self._stream = stream
        self._buffer = bytearray()

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            data = await self._stream.receive_some(max(65536, size - len(self._buffer)))
            if not data:
                if self._buffer:
                    raise ProtocolError(ErrorCode.MALFORMED_FRAME, "connection closed mid-frame")
                return False
            self._buffer += data
        return True

    async def read_frame(self, max_frame_bytes: int) -> bytes | None:
        if not await self._fill(LENGTH_PREFIX.size):
            return None
        (length,) = LENGTH_PREFIX.unpack_from(self._buffer)
        check_length(length, max_frame_bytes)
        if not await self._fill(LENGTH_PREFIX.size + length):
            return None
        body = bytes(self._buffer[LENGTH_PREFIX.size : LENGTH_PREFIX.size + length])
        del self._buffer[: LENGTH_PREFIX.size + length]
        return body
