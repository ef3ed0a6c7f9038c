"""Media GETs at disk speed: connect in trio, then TLS, request, head and body in a worker thread.

Owns the media side of the upstream's HTTP: the daemon's TLS trust
(`trust_context`, shared with the JSON client of dlqd.source), `MediaClient`
(that trust, the User-Agent, the connect timeout, the redirect limit) and
`Transfer`: one fetch's connection, its 1 MiB buffer and its temp file.

A GET connects in trio (cancellable), then one worker thread does the TLS
handshake, sends the request, reads the response head (h11 parses it) and
`recv_into`s a Content-Length body straight into the reused buffer, writing
full buffers to the temp file itself: no per-chunk trip through the event
loop, h11 or trio's memory-BIO TLS. Chunked bodies go through h11's events.
The thread waits on its socket in `CANCEL_POLL_S` ticks and asks trio
whether its task was cancelled (`trio.from_thread.check_cancelled`), so a
cancel or the track deadline raises `Cancelled` there within a tick; a read
that waits `read_timeout_s` without a byte is a stall (TIMEOUT). Progress is
handed to the event loop in batches, at most every `WAKE_EVERY_S`
(`trio.lowlevel.TrioToken.run_sync_soon`); the daemon-wide rate limit, when
set, is paid through `trio.from_thread.run`. A thread runs `TRANSFER_NICE`
nicer than the event loop while it moves a body. A track's requests reuse
one keep-alive connection while they go to the same origin (DASH segments).

Proxies: when HTTP(S)_PROXY / ALL_PROXY (minus NO_PROXY) applies to a URL,
the httpx client of dlqd.source fetches it instead (`Transfer._get_via_httpx`,
the pre-issue-11 code path: slower, same guarantees) — a proxy is never bypassed.

What a head means for the media (status, ranges, validators, the file to
write) is the caller's `accept` callback's to decide, in the worker thread;
the caller opens the temp file there and hands it over, and the transfer
writes, flushes and closes it. Every failure of the transfer itself leaves as
a `DlqdError` (DESIGN §5) from one mapping, `_transport_error`; exceptions
raised by `accept` and the free-space floor pass through unchanged.
Never: opens, deletes or names files itself, follows more than
`max_redirects` redirects, retries a request over time (only a keep-alive
connection the server closed while idle is replaced), or touches the event
loop from the worker thread other than through trio's thread API.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple, Protocol

import h11
import httpx
import trio

from dlqd.errors import DlqdError, ErrorCode, from_oserror, map_httpx_errors, redact_url

BUFFER_BYTES = 1 << 20  # one reused buffer per transfer; also the largest single read
# The buffer goes to the file in writes of this size, which is also the size of
# the page-cache folios the kernel (ext4, Linux 6.x) allocates for new bytes.
# 1 MiB writes made the daemon's CPU per GiB swing from 1.8 to 3.8 s between
# identical benchmark runs (1 MiB folios come from outside the per-CPU free
# lists); 32 KiB writes were steady but pay the per-folio work 4 times as often:
# 128 KiB measured 0.15-0.2 CPU-s/GiB below 32 KiB in paired runs, as steady
# (docs/benchmarks.md, issue 11).
WRITE_BYTES = 128 * 1024
HEAD_READ_BYTES = 64 * 1024
MAX_HEAD_BYTES = 100 * 1024  # httpcore's limit on a response head
PROGRESS_EVERY_BYTES = 64 * 1024
PROGRESS_EVERY_S = 0.5
WAKE_EVERY_S = 0.02  # queued progress reaches the event loop at least this often
# How often a waiting worker thread asks trio whether it was cancelled: the
# worst-case cancel latency while the upstream sends nothing.
CANCEL_POLL_S = 0.02
# A thread moving a body runs this much nicer than the daemon: with the CPU
# busy (TLS on both ends of a loopback benchmark), the event loop still
# answers `health` promptly (bench/bench_download.py --health-interval).
TRANSFER_NICE = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEAD_END = re.compile(rb"\n\r?\n")  # h11's end of a head: a blank line, CRLF or bare LF

Progress = Callable[[int, int | None], None]


def trust_context(ca_file: Path | None) -> ssl.SSLContext:
    """The daemon's one TLS context, for media transfers and the httpx client alike.

    Exactly what httpx trusts by default (`SSL_CERT_FILE` if set, else
    `SSL_CERT_DIR`, else certifi's bundle; hostname checks on), plus
    `upstream.ca_file`'s certificates. Raises OSError/ssl.SSLError for a
    ca_file that cannot be read or holds no certificate.
    """
    context = httpx.create_ssl_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class MediaClient:
    """What every media GET of the daemon shares; made once, by dlqd.source."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        user_agent: str,
        connect_timeout_s: float,
        http: httpx.AsyncClient,
        max_redirects: int,
    ) -> None:
        self.ssl_context = ssl_context
        self.user_agent = user_agent
        self.connect_timeout_s = connect_timeout_s
        self.http = http  # for URLs a proxy applies to
        self.max_redirects = max_redirects
        # Transfers hold a thread for a whole body: never from trio's default
        # limiter, which file I/O and parsing share. The scheduler bounds them.
        self.threads = trio.CapacityLimiter(256)
        self.base_nice = os.getpriority(os.PRIO_PROCESS, 0)  # this (the event loop's) thread

    def proxied(self, url: httpx.URL) -> bool:
        """Whether httpx's environment proxies (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) apply to `url`.

        Asks the httpx client itself, so the answer is exactly the route its
        own requests take.
        """
        return self.http._transport_for_url(url) is not self.http._transport


@dataclass(frozen=True)
class Head:
    """A final response head; header names lower-case, repeated headers joined with ", "."""

    status: int
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Take:
    """`accept`'s answer to a head: read its body into the temp file.

    `file`: the temp file, opened by `accept`, written from byte `offset`
    (the bytes already in it count towards progress and the cap); None keeps
    writing the file an earlier body of this transfer was taken into.
    `expected`: body bytes promised; fewer is INTEGRITY_ERROR. `total`: the
    media's whole length, for progress. `keep_open`: leave the file open for
    a further body (the next DASH segment); otherwise it is closed after this one.
    """

    expected: int | None
    total: int | None
    file: BinaryIO | None = None
    offset: int = 0
    keep_open: bool = False


Accept = Callable[[Head], Take]


class SpaceFloor(Protocol):
    """dlqd.fetch.FreeSpaceFloor, as the writing thread uses it."""

    @property
    def check_every_bytes(self) -> int: ...

    def check(self, path: Path) -> None: ...


class RateLimit(Protocol):
    """dlqd.fetch.TokenBucket: `take` sleeps off the debt of `amount` bytes."""

    async def take(self, amount: int) -> None: ...


# -- the exception tree and its one mapping --------------------------------------------


class _TransportFailure(Exception):
    """A failure of the connection itself, raised in the worker thread."""


class _TimedOut(_TransportFailure):
    """No byte (`ReadTimeout`) or no handshake (`ConnectTimeout`) in time."""


class _Disconnected(_TransportFailure):
    """The server closed the connection before a complete response head."""


class _StaleConnection(_TransportFailure):
    """A reused keep-alive connection the server had closed: retry on a new one."""


class _TooManyRedirects(_TransportFailure):
    pass


class _ProgressFailed(Exception):
    """The progress callback raised; its exception waits in `_Progress.failure`."""


def _transport_error(exc: BaseException, url: str) -> DlqdError:
    """The job error for a failed transfer, with the codes httpx's failures map to (dlqd.errors)."""
    where = redact_url(url)
    if isinstance(exc, _TimedOut):
        return DlqdError(ErrorCode.TIMEOUT, f"{where}: {exc}")
    if isinstance(exc, _TooManyRedirects):
        return DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{where}: TooManyRedirects: {exc}")
    if isinstance(exc, h11.LocalProtocolError):  # the upstream's URL cannot be sent as given
        return DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{where}: {_describe(exc)}")
    if isinstance(exc, (_Disconnected, h11.RemoteProtocolError)):
        return DlqdError(ErrorCode.NETWORK_ERROR, f"{where}: connection broken: {_describe(exc)}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        return DlqdError(
            ErrorCode.NETWORK_ERROR, f"{where}: TLS certificate refused: {reason[:160]!r}"
        )
    if isinstance(exc, ssl.SSLError):
        return DlqdError(ErrorCode.NETWORK_ERROR, f"{where}: TLS failed: {_describe(exc)}")
    if isinstance(exc, OSError):
        return DlqdError(
            ErrorCode.NETWORK_ERROR, f"{where}: {type(exc).__name__}: {exc.strerror or exc}"
        )
    return DlqdError(ErrorCode.NETWORK_ERROR, f"{where}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:120]!r}"


def oversize_error(url: str, max_bytes: int) -> DlqdError:
    """The media passes `limits.max_track_mb` (announced or received)."""
    return DlqdError(
        ErrorCode.UPSTREAM_BAD_RESPONSE,
        f"{redact_url(url)}: media larger than limits.max_track_mb ({max_bytes} bytes)",
    )


def cut_short(url: str, received: int, expected: int) -> DlqdError:
    return DlqdError(
        ErrorCode.INTEGRITY_ERROR,
        f"{redact_url(url)}: body cut short: {received} of {expected} bytes",
    )


# -- the temp file, its buffer and the progress hand-off -------------------------------


class _Sink:
    """The transfer's temp file behind one reused buffer; one thread at a time uses it.

    `done` counts the media bytes from the file's start (resumed bytes and
    earlier DASH segments included): progress and the cap are about the file.
    With a floor, the free space is checked every `floor.check_every_bytes` written.
    """

    def __init__(self, dest: Path, max_bytes: int | None, floor: SpaceFloor | None) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.floor = floor
        self.buffer = bytearray(BUFFER_BYTES)
        self.view = memoryview(self.buffer)
        self.fill = 0
        self.done = 0
        self.file: BinaryIO | None = None
        self.url = ""  # the request in progress, for messages
        self._unchecked_bytes = 0  # written since the last free-space check

    def open(self, file: BinaryIO, offset: int) -> None:
        """Start writing `file`, which holds `offset` bytes of the media already. Blocking."""
        self.close()
        self.file = file
        self.done = offset

    def room(self) -> memoryview:
        """The buffer's free part (never empty: a full buffer is written out first). Blocking."""
        if self.fill == BUFFER_BYTES:
            self.flush()
        return self.view[self.fill :]

    def commit(self, amount: int) -> None:
        """`amount` bytes were received into `room()`; refuse them if they pass the cap."""
        if self.max_bytes is not None and self.done + amount > self.max_bytes:
            raise oversize_error(self.url, self.max_bytes)
        self.fill += amount
        self.done += amount

    def flush(self) -> None:
        """Write the buffered bytes, then check the free-space floor when it is due. Blocking."""
        if not self.fill:
            return
        assert self.file is not None
        block, self.fill = self.view[: self.fill], 0
        try:
            for start in range(0, len(block), WRITE_BYTES):
                self.file.write(block[start : start + WRITE_BYTES])
        except OSError as exc:
            raise from_oserror(exc, str(self.dest)) from exc
        self._unchecked_bytes += len(block)
        if self.floor is not None and self._unchecked_bytes >= self.floor.check_every_bytes:
            self._unchecked_bytes = 0
            self.floor.check(self.dest.parent)

    def close(self, *, quiet: bool = False) -> None:
        """Write what is buffered and close the file; `quiet` while another error is raised."""
        if self.file is None:
            return
        try:
            try:
                self.flush()
            finally:
                file, self.file, self.fill = self.file, None, 0
                try:
                    file.close()
                except OSError as exc:
                    raise from_oserror(exc, str(self.dest)) from exc
        except DlqdError:
            if not quiet:
                raise


class _Progress:
    """`progress(done, total)` every 64 KiB or 0.5 s at read boundaries, delivered in trio.

    The worker thread queues every report; the event loop is woken to deliver
    the queue, in order, at most every `WAKE_EVERY_S` per transfer (and at the
    end of each body), so a fast transfer costs it a few wake-ups a second,
    not one per report. The reports themselves keep their spacing. Whatever
    `progress` raises during such a delivery (a bug) is kept, never let into
    trio's run loop: the thread raises `_ProgressFailed` at its next report
    and the transfer's task re-raises the original.
    """

    def __init__(self, progress: Progress, token: trio.lowlevel.TrioToken) -> None:
        self._progress = progress
        self._token = token
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int | None]] = []
        self._scheduled = False
        self._woken_at = -math.inf
        self.total: int | None = None
        self.sent_bytes = 0
        self.sent_at = 0.0
        self.closed = False
        self.failure: BaseException | None = None  # raised by `progress` in a delivery

    def send(self, done: int, now: float, *, wake: bool = False) -> None:
        """Queue a report of `done`; wake the loop if it is due (or `wake`)."""
        self.sent_bytes = done
        self.sent_at = now
        with self._lock:
            self._pending.append((done, self.total))
        self.wake(now, force=wake)

    def wake(self, now: float, *, force: bool = False) -> None:
        """Have trio deliver the queue, unless a delivery is scheduled or was too recent."""
        if self.failure is not None:
            raise _ProgressFailed
        with self._lock:
            if self._scheduled or not self._pending:
                return
            if not force and now - self._woken_at < WAKE_EVERY_S:
                return
            self._scheduled = True
            self._woken_at = now
        self._token.run_sync_soon(self._deliver_soon)

    def deliver(self) -> None:
        """In the transfer's task: pass the queued reports on, or raise what one raised."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        failure, self.failure = self.failure, None
        if failure is not None:
            self.closed = True  # report nothing more
            raise failure
        if not self.closed:
            for done, total in pending:
                self._progress(done, total)

    def _deliver_soon(self) -> None:
        """`deliver`, as a trio run_sync_soon callback: one must never raise."""
        try:
            self.deliver()
        except BaseException as exc:  # kept for the transfer's task
            self.failure = exc


# -- connections ---------------------------------------------------------------------


class _Origin(NamedTuple):
    scheme: str
    host: str  # ASCII (IDNA), no brackets: for connect() and TLS server_hostname
    port: int


class _Connection:
    """One HTTP/1.1 connection; used by one worker thread call at a time, closed by trio after."""

    def __init__(self, origin: _Origin, sock: socket.socket) -> None:
        self.origin = origin
        self.sock = sock  # an ssl.SSLSocket once `secure` has run
        self.secured = origin.scheme == "http"
        self.answered = False  # a response came on it: a later silent close means stale

    def secure(self, context: ssl.SSLContext, timeout_s: float) -> None:
        """In the worker thread: the TLS handshake, certificate and hostname checked."""
        tls = context.wrap_socket(
            self.sock, server_hostname=self.origin.host, do_handshake_on_connect=False
        )
        self.sock = tls
        deadline = time.monotonic() + timeout_s
        while True:
            trio.from_thread.check_cancelled()
            try:
                tls.do_handshake()
                break
            except TimeoutError:  # a CANCEL_POLL_S tick
                if time.monotonic() >= deadline:
                    raise _TimedOut("ConnectTimeout") from None
        self.secured = True

    def idle_and_open(self) -> bool:
        """Reusable: nothing to read while idle (data or EOF now means the server is done)."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass(frozen=True)
class _Answer:
    """What an exchange left: a redirect to follow, and whether the connection can serve another."""

    location: str | None
    reusable: bool


# -- one fetch's transfer --------------------------------------------------------------


class Transfer:
    """One fetch's GETs into one temp file: `async with Transfer(...) as t: await t.get(...)`.

    Its connection is reused between GETs to the same origin; on exit the
    connection is closed and the temp file, if still open, flushed and
    closed (shielded: a cancelled fetch still leaves its bytes for a resume).
    """

    def __init__(
        self,
        client: MediaClient,
        dest: Path,
        *,
        progress: Progress,
        read_timeout_s: float,
        bandwidth: RateLimit | None = None,
        max_bytes: int | None = None,
        floor: SpaceFloor | None = None,
    ) -> None:
        self._client = client
        self._read_timeout_s = read_timeout_s
        self._bucket = bandwidth
        self._report = progress
        self._sink = _Sink(dest, max_bytes, floor)
        self._progress: _Progress | None = None
        self._connection: _Connection | None = None
        self._scratch = bytearray(HEAD_READ_BYTES)

    async def __aenter__(self) -> Transfer:
        self._progress = _Progress(self._report, trio.lowlevel.current_trio_token())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._drop_connection()
        try:
            if self._sink.file is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        lambda: self._sink.close(quiet=exc is not None),
                        limiter=self._client.threads,
                    )
        finally:
            if self._progress is not None:
                try:
                    if exc is None:
                        self._progress.deliver()
                finally:
                    self._progress.closed = True

    @property
    def done(self) -> int:
        """Media bytes in the temp file so far (the resumed bytes included)."""
        return self._sink.done

    def refuse_oversize(self, media_bytes: int | None, url: str) -> None:
        """UPSTREAM_BAD_RESPONSE when `media_bytes` (announced, or known so far) passes the cap."""
        cap = self._sink.max_bytes
        if cap is not None and media_bytes is not None and media_bytes > cap:
            raise oversize_error(url, cap)

    async def get(self, url: str, headers: Mapping[str, str], accept: Accept) -> None:
        """GET `url`, following redirects; `accept` judges the head, the body goes to the file.

        `accept` runs in a worker thread and may do blocking I/O; whatever it
        raises propagates unchanged, as do the floor's DISK_FULL and Cancelled.
        """
        self._sink.url = url
        with map_httpx_errors(url):
            target = httpx.URL(url)
        for _ in range(self._client.max_redirects + 1):
            if self._client.proxied(target):
                await self._get_via_httpx(str(target), headers, accept)
                return
            location = await self._get_direct(target, headers, accept, url)
            if location is None:
                return
            with map_httpx_errors(url):
                target = target.join(location)
        raise _transport_error(_TooManyRedirects("'Exceeded maximum allowed redirects.'"), url)

    # -- the direct path: connect in trio, everything else in one worker thread -------

    async def _get_direct(
        self, target: httpx.URL, headers: Mapping[str, str], accept: Accept, url: str
    ) -> str | None:
        origin = _origin(target, url)
        assert self._progress is not None
        for _ in range(2):  # a second try only when a kept-alive connection turned out stale
            connection = await self._connection_to(origin, url)
            try:
                answer = await trio.to_thread.run_sync(
                    self._exchange, connection, target, headers, accept, url,
                    limiter=self._client.threads,
                )  # fmt: skip
            except _StaleConnection:
                self._drop_connection()
                continue
            except _ProgressFailed:
                self._drop_connection()
                answer = None  # the delivery below raises what the progress callback raised
            except BaseException:
                self._drop_connection()
                self._progress.deliver()
                raise
            self._progress.deliver()
            if answer is None:
                raise AssertionError("unreachable: a failed delivery keeps its exception")
            if not answer.reusable:
                self._drop_connection()
            return answer.location
        raise AssertionError("unreachable: a new connection is never stale")

    async def _connection_to(self, origin: _Origin, url: str) -> _Connection:
        """The kept-alive connection to `origin` if it is still open, else a new one."""
        kept = self._connection
        if kept is not None and kept.origin == origin and kept.idle_and_open():
            return kept
        self._drop_connection()
        try:
            with trio.fail_after(self._client.connect_timeout_s):
                stream = await trio.open_tcp_stream(origin.host, origin.port)
        except trio.TooSlowError:
            raise _transport_error(_TimedOut("ConnectTimeout"), url) from None
        except OSError as exc:
            raise _transport_error(exc, url) from exc
        sock = socket.socket(fileno=stream.socket.detach())
        sock.settimeout(CANCEL_POLL_S)
        self._connection = _Connection(origin, sock)
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _exchange(
        self,
        connection: _Connection,
        target: httpx.URL,
        headers: Mapping[str, str],
        accept: Accept,
        url: str,
    ) -> _Answer:
        """In the worker thread: one request on `connection` and its whole answer."""
        with _niced(self._client.base_nice + TRANSFER_NICE, self._client.base_nice):
            return self._exchange_niced(connection, target, headers, accept, url)

    def _exchange_niced(
        self,
        connection: _Connection,
        target: httpx.URL,
        headers: Mapping[str, str],
        accept: Accept,
        url: str,
    ) -> _Answer:
        try:
            if not connection.secured:
                connection.secure(self._client.ssl_context, self._client.connect_timeout_s)
            parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
            request = h11.Request(
                method="GET", target=target.raw_path, headers=self._request_headers(target, headers)
            )
            connection.sock.sendall(parser.send(request) + parser.send(h11.EndOfMessage()))
            response, rest = self._read_head(connection, parser)
        except _StaleConnection:
            raise
        except (OSError, h11.ProtocolError, _TransportFailure) as exc:
            if connection.answered and isinstance(exc, (_Disconnected, ConnectionError)):
                raise _StaleConnection from exc
            raise _transport_error(exc, url) from exc
        connection.answered = True
        head = Head(response.status_code, _header_map(response.headers))
        if response.status_code in REDIRECT_STATUSES and "location" in head.headers:
            return _Answer(head.headers["location"], reusable=False)
        take = accept(head)
        try:
            reusable = self._read_body(connection, parser, response, rest, take, url)
        except (OSError, h11.ProtocolError, _TransportFailure) as exc:
            self._sink.close(quiet=True)
            raise _transport_error(exc, url) from exc
        except BaseException:
            self._sink.close(quiet=True)
            raise
        if not take.keep_open:
            self._sink.close()
        return _Answer(None, reusable)

    def _request_headers(
        self, target: httpx.URL, extra: Mapping[str, str]
    ) -> list[tuple[bytes, bytes]]:
        fields = {
            "User-Agent": self._client.user_agent,
            "Accept": "*/*",
            "Accept-Encoding": "identity",
            **extra,
        }
        encoded = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in fields.items()
        ]
        return [(b"Host", target.netloc), *encoded]

    def _read_head(
        self, connection: _Connection, parser: h11.Connection
    ) -> tuple[h11.Response, bytes]:
        """In the worker thread: the final response head (1xx skipped) and the body bytes after."""
        data = bytearray()
        view = memoryview(self._scratch)
        while True:
            received = self._recv_into(connection, view, HEAD_READ_BYTES)
            if not received:
                raise _Disconnected("Server disconnected without sending a response.")
            data += view[:received]
            while (end := _HEAD_END.search(data)) is not None:
                parser.receive_data(bytes(data[: end.end()]))
                del data[: end.end()]
                event = parser.next_event()
                if isinstance(event, h11.Response):
                    return event, bytes(data)
                # h11.InformationalResponse (100 Continue, 103 Early Hints): the next head follows
            if len(data) > MAX_HEAD_BYTES:
                raise h11.RemoteProtocolError("response head larger than 100 KiB")

    def _read_body(
        self,
        connection: _Connection,
        parser: h11.Connection,
        response: h11.Response,
        rest: bytes,
        take: Take,
        url: str,
    ) -> bool:
        """In the worker thread: the body into the file; whether the connection may be reused."""
        assert self._progress is not None
        sink, progress = self._sink, self._progress
        if take.file is not None:
            sink.open(take.file, take.offset)
            progress.total = take.total
            progress.send(sink.done, time.monotonic(), wake=True)
        elif sink.file is None:
            raise AssertionError("Take(file=None) before any file was taken")
        headers = _header_map(response.headers)
        if response.status_code in (204, 304):
            received, reusable = 0, True
        elif "transfer-encoding" in headers:  # h11 accepts only chunked here
            if rest:  # (receive_data(b"") would tell h11 the connection closed)
                parser.receive_data(rest)
            received, reusable = self._read_chunked(connection, parser)
        else:
            length = int(headers["content-length"]) if "content-length" in headers else None
            received, complete = self._read_raw(connection, rest, length)
            if not complete and (take.expected is None or received >= take.expected):
                raise _Disconnected("peer closed connection without sending complete message body")
            reusable = complete and length is not None and len(rest) <= length
        if take.expected is not None and received < take.expected:
            raise cut_short(url, received, take.expected)
        progress.send(sink.done, time.monotonic(), wake=True)
        keep_alive = response.http_version == b"1.1" and "close" not in headers.get(
            "connection", ""
        ).lower().replace(" ", "").split(",")
        return reusable and keep_alive

    def _read_raw(
        self, connection: _Connection, rest: bytes, length: int | None
    ) -> tuple[int, bool]:
        """A Content-Length body (`length`) or one ending at EOF (None): (bytes, complete).

        The hot loop of every transfer: one `recv_into` the buffer's free part
        per pass, written out when the buffer is full; kept flat on purpose.
        """
        first = rest if length is None else rest[:length]
        self._copy_in(first)
        received = len(first)
        remaining = -1 if length is None else length - received  # -1: until EOF
        sink, progress, bucket = self._sink, self._progress, self._bucket
        assert progress is not None
        view, cap, read_timeout_s = sink.view, sink.max_bytes, self._read_timeout_s
        recv_into = connection.sock.recv_into
        check_cancelled = trio.from_thread.check_cancelled
        last_data = time.monotonic()
        while remaining:
            fill = sink.fill
            if fill == BUFFER_BYTES:
                sink.flush()
                fill = 0
            want = BUFFER_BYTES - fill
            if 0 < remaining < want:
                want = remaining
            check_cancelled()
            try:
                count = recv_into(view[fill:], want)
            except TimeoutError:  # a CANCEL_POLL_S tick without data
                now = time.monotonic()
                if now - last_data >= read_timeout_s:
                    raise _TimedOut("ReadTimeout") from None
                if now - progress.sent_at >= PROGRESS_EVERY_S:
                    progress.send(sink.done, now)
                progress.wake(now)
                continue
            if not count:
                return received, remaining < 0
            done = sink.done + count
            if cap is not None and done > cap:
                raise oversize_error(sink.url, cap)
            sink.fill = fill + count
            sink.done = done
            received += count
            if remaining > 0:
                remaining -= count
            last_data = now = time.monotonic()
            if done - progress.sent_bytes >= PROGRESS_EVERY_BYTES or (
                now - progress.sent_at >= PROGRESS_EVERY_S
            ):
                progress.send(done, now)
            if bucket is not None:
                trio.from_thread.run(bucket.take, count)
        return received, True

    def _read_chunked(self, connection: _Connection, parser: h11.Connection) -> tuple[int, bool]:
        """A chunked body through h11's events: (bytes, whether h11 allows another request)."""
        received = 0
        view = memoryview(self._scratch)
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                count = self._recv_into(connection, view, HEAD_READ_BYTES)
                parser.receive_data(bytes(view[:count]))  # b"": EOF, h11 raises if incomplete
            elif isinstance(event, h11.Data):
                self._copy_in(event.data)
                received += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return received, parser.our_state is parser.their_state is h11.DONE
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")

    def _recv_into(self, connection: _Connection, view: memoryview, nbytes: int) -> int:
        """In the worker thread: one socket read; 0 at EOF. Raises Cancelled or a stall."""
        deadline = time.monotonic() + self._read_timeout_s
        while True:
            trio.from_thread.check_cancelled()
            try:
                return connection.sock.recv_into(view, nbytes)
            except TimeoutError:  # a CANCEL_POLL_S tick
                now = time.monotonic()
                if now >= deadline:
                    raise _TimedOut("ReadTimeout") from None
                assert self._progress is not None
                self._progress.wake(now)

    def _copy_in(self, data: bytes | bytearray | memoryview) -> None:
        """In the worker thread: bytes already read (after a head, or h11's) into the buffer."""
        data = memoryview(data)
        while data:
            room = self._sink.room()
            count = min(len(room), len(data))
            room[:count] = data[:count]
            self._received(count)
            data = data[count:]

    def _received(self, count: int) -> None:
        """`count` bytes landed in the buffer: cap, progress, rate limit (not `_read_raw`'s)."""
        assert self._progress is not None
        progress = self._progress
        self._sink.commit(count)
        now = time.monotonic()
        if self._sink.done - progress.sent_bytes >= PROGRESS_EVERY_BYTES or (
            now - progress.sent_at >= PROGRESS_EVERY_S
        ):
            progress.send(self._sink.done, now)
        if self._bucket is not None:
            trio.from_thread.run(self._bucket.take, count)

    # -- through a proxy: the httpx client, in trio ----------------------------------

    async def _get_via_httpx(self, url: str, headers: Mapping[str, str], accept: Accept) -> None:
        """The same GET through dlqd.source's httpx client, which routes it via the proxy."""
        assert self._progress is not None
        sink, progress, http = self._sink, self._progress, self._client.http
        timeout = httpx.Timeout(
            connect=http.timeout.connect,
            read=self._read_timeout_s,
            write=http.timeout.write,
            pool=http.timeout.pool,
        )
        run = trio.to_thread.run_sync
        with map_httpx_errors(url):
            async with http.stream(
                "GET", url, headers={"Accept-Encoding": "identity", **headers}, timeout=timeout
            ) as response:
                head = Head(response.status_code, dict(response.headers.items()))
                take = await run(accept, head)
                try:
                    if take.file is not None:
                        await run(sink.open, take.file, take.offset)
                        progress.total = take.total
                        progress.send(sink.done, time.monotonic())
                        progress.deliver()
                    received = 0
                    try:
                        async for chunk in response.aiter_raw():
                            self.refuse_oversize(sink.done + len(chunk), url)
                            if self._bucket is not None:
                                await self._bucket.take(len(chunk))
                            data = memoryview(chunk)
                            while data:
                                if sink.fill == BUFFER_BYTES:
                                    await run(sink.flush)
                                count = min(BUFFER_BYTES - sink.fill, len(data))
                                sink.view[sink.fill : sink.fill + count] = data[:count]
                                sink.commit(count)
                                data = data[count:]
                            received += len(chunk)
                            now = time.monotonic()
                            if sink.done - progress.sent_bytes >= PROGRESS_EVERY_BYTES or (
                                now - progress.sent_at >= PROGRESS_EVERY_S
                            ):
                                progress.send(sink.done, now)
                                progress.deliver()
                    except httpx.RemoteProtocolError:
                        # h11's "peer closed without sending the complete body".
                        if take.expected is None or received >= take.expected:
                            raise
                    if take.expected is not None and received < take.expected:
                        raise cut_short(url, received, take.expected)
                    progress.send(sink.done, time.monotonic())
                except BaseException:
                    await run(lambda: sink.close(quiet=True))
                    raise
                if not take.keep_open:
                    await run(sink.close)
                progress.deliver()


@contextlib.contextmanager
def _niced(nice: int, base: int) -> Iterator[None]:
    """This thread at `nice` for the block, back at `base` after it when the system allows.

    Raising a thread's priority again needs CAP_SYS_NICE or a RLIMIT_NICE
    (systemd's LimitNICE=) that covers `base`; without either the worker
    thread stays nicer, which only delays the blocking background work trio
    gives it next.
    """
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, min(nice, 19))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread, base)


def _origin(target: httpx.URL, url: str) -> _Origin:
    """Where `target` connects to; UPSTREAM_BAD_RESPONSE for a URL that is not http(s)."""
    if target.scheme not in _DEFAULT_PORTS or not target.raw_host:
        raise DlqdError(
            ErrorCode.UPSTREAM_BAD_RESPONSE,
            f"{redact_url(url)}: UnsupportedProtocol: not an http(s) URL with a host",
        )
    return _Origin(
        target.scheme,
        target.raw_host.decode("ascii"),
        target.port or _DEFAULT_PORTS[target.scheme],
    )


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """h11's header list as a dict: lower-case names, repeated headers joined with ", "."""
    joined: dict[str, str] = {}
    for name, value in headers:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        joined[key] = f"{joined[key]}, {text}" if key in joined else text
    return joined
