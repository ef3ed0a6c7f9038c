"""The control socket: a Unix stream server speaking the framing of DESIGN §4.

Owns the listening socket (its mode, socket activation, and replacing a stale
socket file — never anything else at that path), peer credentials, per-uid
submit rate limits, per-connection framing and the limits that keep one local
client from locking out the others: a peer that is not allowed is refused at
accept, a frame must arrive whole within `first_frame_timeout_s`, a reply must
be taken within `send_timeout_s`, and a full connection table makes room by
closing the connection idle the longest.
Each connection is its own task, so a slow or hostile client stalls only
itself; every error a client can cause is answered with a code or a close,
never raised into the daemon. What a command does is `dlqd.commands`' business.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from dlqd.safefs import describe

log = structlog.get_logger("dlqd.control")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_CONNECTIONS = 512  # served at once; fewer when the descriptor limit is low


def connection_limit() -> int:
    """MAX_CONNECTIONS, or half the soft descriptor limit if that is less.

    Connections must never take the descriptors the journal and downloads need:
    a failed journal write that cannot reopen the journal ends the daemon.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // 2))


class SocketInUse(Exception):
    """Another process answers on the socket path."""


class SocketPathTaken(Exception):
    """Something other than a stale socket is at the socket path; dlqd will not remove it."""


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


def bind_unix_socket(path: Path, mode: int) -> tuple[socket.socket, SocketFile]:
    """Bind and listen on `path`, replacing only a stale socket: one nobody answers on.

    Anything else already at `path` — a regular file, a directory, a symbolic
    link — raises SocketPathTaken and is left as it is: dlqd removes nothing it
    did not make. The umask set around `bind` gives the new file exactly
    `mode` (at most 0o777), so no chmod by path follows, which a link swapped
    in meanwhile would redirect.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    bound = os.lstat(path)
    sock.listen(128)
    return sock, SocketFile(path, bound.st_dev, bound.st_ino)


def _remove_stale_socket(path: Path) -> None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise SocketPathTaken(
            f"{path} exists and is {describe(found.st_mode)}, not a socket; dlqd removes only "
            "a stale socket. Move it away, or set daemon.socket (--socket) to another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except FileNotFoundError:
        return  # gone since the lstat
    except ConnectionRefusedError:
        pass  # nobody listens: what a crash leaves behind
    else:
        raise SocketInUse(f"another daemon answers on {path}")
    finally:
        probe.close()
    again = os.lstat(path)
    if (again.st_dev, again.st_ino) != (found.st_dev, found.st_ino):
        raise SocketPathTaken(f"{path} changed while dlqd checked it; try again")
    path.unlink()


@dataclass(frozen=True)
class SocketFile:
    """The socket file `bind_unix_socket` made, known by device and inode."""

    path: Path
    device: int
    inode: int

    def remove(self) -> None:
        """Unlink the path at shutdown if it still is this socket; leave anything else there.

        A file put there after ours was removed can get our freed inode number:
        only a socket with our device and inode counts as ours.
        """
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(now.st_mode) or (now.st_dev, now.st_ino) != (self.device, self.inode):
            log.warning("socket path holds something else now; left it", path=str(self.path))
            return
        self.path.unlink(missing_ok=True)


class RateLimiter:
    """A token bucket per uid: `per_minute` submits, bursting up to a minute's worth."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}

    def allow(self, uid: int) -> bool:
        return self.take(uid, 1) == 1

    def take(self, uid: int, wanted: int) -> int:
        """How many of `wanted` submits the bucket allows now (each takes one token)."""
        if self.per_minute <= 0:
            return wanted
        now = self.clock()
        tokens, stamp = self._buckets.get(uid, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - stamp) * self.per_minute / 60.0)
        granted = min(wanted, int(tokens))
        self._buckets[uid] = (tokens - granted, now)
        return granted


class LogThrottle:
    """At most one log line per key and interval; the next one says how many were held back.

    A hostile client can repeat what it does thousands of times a second; the
    operator needs to see who and how often, not a flooded journal.
    """

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[object, tuple[float, int]] = {}  # key -> (logged at, held back since)

    def allow(self, key: object) -> int | None:
        """The count of lines held back since the last one, or None to stay quiet."""
        now = self.clock()
        logged_at, held_back = self._last.get(key, (-self.interval_s, 0))
        if now - logged_at < self.interval_s:
            self._last[key] = (logged_at, held_back + 1)
            return None
        self._last[key] = (now, 0)
        return held_back


class _Dropped(Exception):
    """The connection is closed without an answer (a timeout, or room for another)."""


# accept() errors that mean "out of descriptors or memory for now", not a broken listener.
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_S = 0.1  # as trio.serve_listeners does: let closing connections free descriptors


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
        first_frame_timeout_s: float,
        send_timeout_s: float,
    ):
        self.ctx = ctx
        self.max_frame_bytes = max_frame_bytes
        self.allowed_uids = allowed_uids | {os.getuid(), 0}
        self.allowed_gids = allowed_gids
        self.rate = RateLimiter(submit_rate_per_min)
        self.first_frame_timeout_s = first_frame_timeout_s
        self.send_timeout_s = send_timeout_s
        self._listener = trio.socket.from_stdlib_socket(listener)
        self._log_throttle = LogThrottle()
        self.max_connections = connection_limit()
        self.connections = 0
        # Connections waiting for a request, longest first: the ones a full table may close.
        self._waiting: dict[object, trio.CancelScope] = {}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    sock, _ = await self._listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                        raise
                    self._warn("accept", "cannot accept a connection now", error=exc.strerror)
                    await trio.sleep(_ACCEPT_RETRY_S)
                    continue
                self._admit(nursery, sock)

    def _admit(self, nursery: trio.Nursery, sock: trio.socket.SocketType) -> None:
        """Refuse a peer that is not allowed, make room if the table is full, then serve."""
        accepted_at = trio.current_time()
        try:
            peer = peer_credentials(sock)
        except OSError:
            sock.close()  # the peer is already gone
            return
        if not self._permitted(peer):
            nursery.start_soon(self._refuse, sock, peer)  # holds no connection slot
        elif self.connections >= self.max_connections and not self._close_longest_waiting():
            sock.close()  # every slot is busy answering or watching
        else:
            self.connections += 1  # counted here: the task may start after more accepts
            nursery.start_soon(self._serve_connection, sock, peer, accepted_at)

    def _permitted(self, peer: Peer) -> bool:
        return peer.uid in self.allowed_uids or not peer.gids.isdisjoint(self.allowed_gids)

    def _warn(self, key: object, event: str, **fields: Any) -> None:
        held_back = self._log_throttle.allow(key)
        if held_back is not None:
            log.warning(event, **fields, **({"repeats_not_logged": held_back} if held_back else {}))

    async def _refuse(self, sock: trio.socket.SocketType, peer: Peer) -> None:
        """One PERMISSION_DENIED frame, before anything is read, then close."""
        self._warn(
            ("refused", peer.uid),
            "refused a control connection from a peer that is not allowed",
            uid=peer.uid,
            pid=peer.pid,
        )
        message = f"uid {peer.uid} is not allowed to control dlqd"
        stream = trio.SocketStream(sock)
        try:
            refusal = error_response(None, ErrorCode.PERMISSION_DENIED, message)
            await self._send(stream, encode_frame(refusal))
        except (_Dropped, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _close_longest_waiting(self) -> bool:
        """Make room: close the connection that has waited longest for a request."""
        if not self._waiting:
            return False
        key = next(iter(self._waiting))
        self._waiting.pop(key).cancel()
        self._warn(
            "evict",
            "connection limit reached; closed the connection waiting longest for a request",
            limit=self.max_connections,
        )
        return True

    async def _serve_connection(
        self, sock: trio.socket.SocketType, peer: Peer, accepted_at: float
    ) -> None:
        stream = trio.SocketStream(sock)
        try:
            await self._converse(stream, peer, accepted_at)
        except _Dropped as exc:
            log.debug("closed a control connection", reason=str(exc), uid=peer.uid, pid=peer.pid)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away; nothing to answer
        except Exception:
            log.exception("connection failed")  # one client's connection, never the server
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    @contextmanager
    def _waiting_for_request(self) -> Iterator[None]:
        """While inside, this connection may be closed to make room (raises _Dropped then).

        Only the wait for a request can be cut short: a request being handled
        or answered always runs to its end.
        """
        key = object()
        with trio.CancelScope() as scope:
            self._waiting[key] = scope  # insertion order: the longest waiting comes first
            try:
                yield
            finally:
                self._waiting.pop(key, None)
        if scope.cancelled_caught:
            raise _Dropped("closed to make room for another connection")

    async def _converse(self, stream: trio.SocketStream, peer: Peer, accepted_at: float) -> None:
        reader = _FrameReader(stream, self.max_frame_bytes, self.first_frame_timeout_s)
        frame_started_at: float | None = accepted_at  # the first frame's clock runs from accept
        while True:
            try:
                with self._waiting_for_request():
                    body = await reader.read_frame(frame_started_at)
                frame_started_at = None  # later frames: from their first byte
                if body is None:
                    return
                request = parse_request(decode_body(body))
            except ProtocolError as exc:
                answer = error_response(exc.request_id, exc.code, exc.message)
                await self._send(stream, encode_frame(answer))
                if exc.fatal:
                    return
                continue
            if request.cmd == "watch":
                await self._watch(stream, request)
                return
            await self._send(stream, encode_frame(await self._dispatch(request, peer)))

    async def _send(self, stream: trio.SocketStream, frame: bytes) -> None:
        """Write one frame, or drop the connection if the client does not take it in time.

        It takes the encoded frame: a client that does not read holds only these
        bytes, not the job objects they were made from (a page of 500 jobs as
        Python objects is several times its encoded size).
        """
        with trio.move_on_after(self.send_timeout_s):
            await stream.send_all(frame)
            return
        raise _Dropped(f"a reply was not read within {self.send_timeout_s} s")

    def _over_rate(self, peer: Peer) -> str:
        return f"more than {self.rate.per_minute} submits a minute from uid {peer.uid}"

    async def _dispatch(self, request: Request, peer: Peer) -> dict[str, Any]:
        args, over_limit = request.args, []
        if request.cmd == "submit":
            items = args.get("items")
            wanted = 1 if items is None else len(items)
            granted = self.rate.take(peer.uid, wanted)
            if granted == 0:
                return error_response(request.id, ErrorCode.RATE_LIMITED, self._over_rate(peer))
            if items is not None and granted < wanted:  # the rest of the batch is answered below
                args, over_limit = {"items": items[:granted]}, items[granted:]
        try:
            result = await HANDLERS[request.cmd](self.ctx, args)
        except DlqdError as exc:
            return error_response(request.id, exc.code, exc.message)
        except Exception as exc:  # a bug answers one request; it never ends the daemon
            log.exception("internal error handling a command", cmd=request.cmd)
            return error_response(request.id, ErrorCode.INTERNAL_ERROR, f"internal error: {exc!r}")
        for item in over_limit:
            error = {"code": str(ErrorCode.RATE_LIMITED), "message": self._over_rate(peer)}
            entry = {"type": item["type"], "target_id": item["target_id"], "ok": False}
            result["results"].append({**entry, "error": error})
        return ok_response(request.id, result)

    async def _watch(self, stream: trio.SocketStream, request: Request) -> None:
        """Stream events until the client closes; a watcher that stops reading is dropped.

        Events wait in the store's bounded channel (a lagging watcher loses
        some); a write the client does not take within send_timeout_s ends it.
        """
        with self.ctx.store.watching() as events:
            await self._send(stream, encode_frame(ok_response(request.id, {"watching": True})))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_closed, stream, nursery.cancel_scope)
                try:
                    async for event in events:
                        await self._send(stream, encode_frame(event))
                except (_Dropped, trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()  # raising here would wrap it in a group


async def _cancel_when_closed(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Read (and ignore) what a watcher sends; its end of stream ends the watch."""
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


class _FrameReader:
    """Reads length-prefixed frames, refusing oversize ones before reading them.

    A frame must arrive whole within `frame_timeout_s` of its start; how long
    a client waits *between* frames is its own business.
    """

    def __init__(self, stream: trio.SocketStream, max_frame_bytes: int, frame_timeout_s: float):
        self._stream = stream
        self._max_frame_bytes = max_frame_bytes
        self._frame_timeout_s = frame_timeout_s
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

    async def read_frame(self, started_at: float | None) -> bytes | None:
        """The next frame's body; None at a clean end of stream.

        `started_at` is when the clock for this frame started (the accept, for
        the first frame); None starts it at the frame's first byte.
        """
        if started_at is None:
            if not await self._fill(1):
                return None
            started_at = trio.current_time()
        with trio.move_on_at(started_at + self._frame_timeout_s):
            return await self._read_whole_frame()
        raise _Dropped(f"no complete frame within {self._frame_timeout_s} s")

    async def _read_whole_frame(self) -> bytes | None:
        if not await self._fill(LENGTH_PREFIX.size):
            return None
        (length,) = LENGTH_PREFIX.unpack_from(self._buffer)
        check_length(length, self._max_frame_bytes)
        if not await self._fill(LENGTH_PREFIX.size + length):
            return None
        body = bytes(self._buffer[LENGTH_PREFIX.size : LENGTH_PREFIX.size + length])
        del self._buffer[: LENGTH_PREFIX.size + length]
        return body
