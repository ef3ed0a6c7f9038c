"""Streaming one track's audio into its temp file in `library/.dlqd-tmp/`.

Owns: the HTTP transfer of a `MediaPlan` (URL fallback inside one try, Range
resume with validators, length checks, the track size cap, the free-space floor
while writing, stall timeout, bandwidth limit, live progress). Never writes
outside `dest` and its sidecar (opened without following a link at them or at
their folder: `dlqd.safefs`), never deletes or fsyncs them (the caller owns
the temp file's lifecycle; finalize fsyncs), and never retries over time
(backoff belongs to the scheduler).

The caller's contract for `MediaNotFoundError`: signed media URLs expire, so
on this error refetch the manifest once (`Source.media_plan`) and call
`fetch_to_file` again in the same try; a second one counts as a failed try.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx
import trio

from dlqd.errors import (
    DlqdError,
    ErrorCode,
    from_http_status,
    from_oserror,
    map_httpx_errors,
    redact_url,
)
from dlqd.meta import MediaPlan
from dlqd.safefs import open_beneath

# Network reads arrive in httpcore's ≤64 KiB pieces and are copied into one
# reused 1 MiB buffer written from a worker thread. Measured on loopback
# (200 MiB x 2 streams): 0.78 s and ~1k page faults, against 1.45 s and ~70k
# faults for `aiter_raw(1 MiB)` and 0.94 s for 64 KiB writes in the event loop.
WRITE_BUFFER_BYTES = 1024 * 1024
PROGRESS_EVERY_BYTES = 64 * 1024
PROGRESS_EVERY_S = 0.5
# A rate-limited transfer may run ahead of its average by this many seconds' worth.
BURST_S = 0.1
# The free-space floor is re-checked after this many bytes written: one statvfs
# per 16 MiB costs nothing, and a running track overshoots the floor by at most this.
SPACE_CHECK_EVERY_BYTES = 16 * 1024 * 1024
MIB = 1024 * 1024

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class FetchResult:
    """`bytes_written` in this call; `total` is dest's final size; resume offset."""

    bytes_written: int
    total: int
    resumed_from: int


class MediaNotFoundError(DlqdError):
    """A media URL answered 404: the manifest's signed URLs have probably expired."""

    def __init__(self, url: str) -> None:
        super().__init__(ErrorCode.UPSTREAM_NOT_FOUND, f"{redact_url(url)}: media not found (404)")


def _disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class FreeSpaceFloor:
    """`limits.min_free_mb`: the free space a download must leave on the library's disk.

    Checked before a try and every `check_every_bytes` written during it.
    `free_bytes` measures the filesystem holding a path; it is a parameter
    because a test cannot safely fill a real disk.
    """

    min_free_mb: int
    check_every_bytes: int = SPACE_CHECK_EVERY_BYTES
    free_bytes: Callable[[Path], int] = _disk_free_bytes

    def check(self, path: Path) -> None:
        """Raise DISK_FULL when `path`'s filesystem is below the floor. Blocking (statvfs)."""
        if self.min_free_mb <= 0:
            return
        try:
            free = self.free_bytes(path)
        except OSError as exc:
            raise from_oserror(exc, f"checking free space in {path}") from exc
        if free < self.min_free_mb * MIB:
            raise DlqdError(
                ErrorCode.DISK_FULL,
                f"{path}: {free // MIB} MiB free, below limits.min_free_mb = {self.min_free_mb}",
            )


class _ResumeRefused(Exception):
    """The server's answer to our Range request does not continue the same file."""


def sidecar_path(dest: Path) -> Path:
    """Where the resume validators (ETag, total length) of `dest` are kept."""
    return dest.with_name(dest.name + ".meta")


class TokenBucket:
    """Average rate limit in bytes/s with a `BURST_S` burst; sleeps off any debt.

    One bucket may be shared by concurrent transfers: each `take` adds to the
    common debt, so together they average the rate.
    """

    @classmethod
    def for_kbps(cls, kbps: int) -> TokenBucket | None:
        """The bucket for `[worker] bandwidth_limit_kbps` (kilobits/s); None for 0 = unlimited."""
        return cls(kbps * 125) if kbps > 0 else None

    def __init__(
        self, rate_bytes_s: float, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self._rate = rate_bytes_s
        self._burst = rate_bytes_s * BURST_S
        self._tokens = self._burst
        self._clock = clock
        self._stamp = clock()

    async def take(self, amount: int) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        self._tokens -= amount
        if self._tokens < 0:
            await trio.sleep(-self._tokens / self._rate)


class _ProgressReporter:
    """Calls `progress(done, total)` every 64 KiB or 0.5 s, whichever comes first."""

    def __init__(self, progress: Progress, done: int, total: int | None) -> None:
        self._progress = progress
        self.done = done
        self.total = total
        self._reported_bytes = done
        self._reported_at = trio.current_time()
        progress(done, total)

    def add(self, amount: int) -> None:
        self.done += amount
        now = trio.current_time()
        if (
            self.done - self._reported_bytes >= PROGRESS_EVERY_BYTES
            or now - self._reported_at >= PROGRESS_EVERY_S
        ):
            self.report(now)

    def report(self, now: float | None = None) -> None:
        self._reported_bytes = self.done
        self._reported_at = trio.current_time() if now is None else now
        self._progress(self.done, self.total)


class _BufferedFile:
    """`dest` written in 1 MiB blocks from a worker thread; flushed on every exit.

    Whatever was received is on disk when the context ends, even on an error
    or cancellation, so the next try can resume from it. With a `floor`, the
    writer thread checks the free space every `floor.check_every_bytes`.
    """

    def __init__(self, dest: Path, *, append: bool, floor: FreeSpaceFloor | None = None) -> None:
        self._dest = dest
        self._append = append
        self._floor = floor
        self._file: BinaryIO | None = None
        self._buffer = bytearray(WRITE_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._fill = 0
        self._unchecked_bytes = 0  # written since the last free-space check

    async def __aenter__(self) -> _BufferedFile:
        try:
            self._file = await trio.to_thread.run_sync(self._open)
        except OSError as exc:
            raise from_oserror(exc, str(self._dest)) from exc
        return self

    def _open(self) -> BinaryIO:
        return open_beneath(self._dest, "ab" if self._append else "wb")

    async def write(self, chunk: bytes) -> None:
        if self._fill + len(chunk) > WRITE_BUFFER_BYTES:
            await self.flush()
        if len(chunk) > WRITE_BUFFER_BYTES:
            await self._write_through(chunk)
            return
        self._view[self._fill : self._fill + len(chunk)] = chunk
        self._fill += len(chunk)

    async def flush(self) -> None:
        if self._fill:
            block, self._fill = self._view[: self._fill], 0
            await self._write_through(block)

    async def _write_through(self, data: bytes | memoryview) -> None:
        try:
            await trio.to_thread.run_sync(self._write_block, data)
        except OSError as exc:
            raise from_oserror(exc, str(self._dest)) from exc

    def _write_block(self, data: bytes | memoryview) -> None:
        """In the worker thread: write, then check the floor once enough has been written."""
        assert self._file is not None
        self._file.write(data)
        self._unchecked_bytes += len(data)
        if self._floor is not None and self._unchecked_bytes >= self._floor.check_every_bytes:
            self._unchecked_bytes = 0
            self._floor.check(self._dest.parent)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        # Shielded: a cancelled transfer still leaves its bytes for a later resume.
        with trio.CancelScope(shield=True):
            try:
                await self.flush()
            finally:
                try:
                    await trio.to_thread.run_sync(self._file.close)
                except OSError as close_exc:
                    if exc is None:
                        raise from_oserror(close_exc, str(self._dest)) from close_exc


async def fetch_to_file(
    client: httpx.AsyncClient,
    plan: MediaPlan,
    dest: Path,
    *,
    progress: Progress,
    read_timeout_s: float,
    bandwidth: TokenBucket | None = None,
    resume: bool = True,
    max_bytes: int | None = None,
    floor: FreeSpaceFloor | None = None,
) -> FetchResult:
    """Download `plan` into `dest`; raise `DlqdError` (see the module doc for 404s).

    A single-file plan tries its URLs in order, resuming from what `dest`
    already holds when the server proves it is the same file; a DASH plan
    writes init + segments from scratch. `bandwidth`, when given, is shared by
    every transfer of the daemon, so the limit holds for all of them together.
    `max_bytes` (`limits.max_track_mb`) caps the media, the sum of all DASH
    segments included: a larger announced length is refused before its body,
    and a body that grows past it is cut off (UPSTREAM_BAD_RESPONSE). `floor`
    is checked while writing (DISK_FULL).
    """
    timeout = httpx.Timeout(
        connect=client.timeout.connect,
        read=read_timeout_s,
        write=client.timeout.write,
        pool=client.timeout.pool,
    )
    transfer = _Transfer(client, dest, timeout, progress, bandwidth, max_bytes, floor)
    if plan.segments:
        return await transfer.segments(plan.segments)
    if not plan.urls:
        raise DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, "media plan has no URLs")
    errors: list[DlqdError] = []
    for url in plan.urls:
        try:
            return await transfer.single(url, resume=resume)
        except DlqdError as exc:
            if exc.code in (ErrorCode.DISK_FULL, ErrorCode.FILESYSTEM_ERROR):
                raise  # the disk, not the URL: another URL cannot help
            if exc.code == ErrorCode.UPSTREAM_RATE_LIMITED:
                raise  # a 429 holds the whole upstream: ask no other URL now
            errors.append(exc)
    # A 404 anywhere means the manifest is stale: let the caller refetch it.
    expired = [exc for exc in errors if isinstance(exc, MediaNotFoundError)]
    raise expired[0] if expired else errors[-1]


@dataclass
class _Transfer:
    """One call's settings, shared by the single-file and DASH paths."""

    client: httpx.AsyncClient
    dest: Path
    timeout: httpx.Timeout
    progress: Progress
    bucket: TokenBucket | None
    max_bytes: int | None
    floor: FreeSpaceFloor | None

    async def single(self, url: str, *, resume: bool) -> FetchResult:
        start, known = (
            await trio.to_thread.run_sync(_resume_point, self.dest) if resume else (0, None)
        )
        if start:
            try:
                return await self._get_file(url, start=start, known=known)
            except _ResumeRefused:
                pass
        return await self._get_file(url, start=0, known=None)

    async def _get_file(self, url: str, *, start: int, known: dict[str, Any] | None) -> FetchResult:
        headers = {"Accept-Encoding": "identity"}
        if start:
            assert known is not None
            headers["Range"] = f"bytes={start}-"
            etag = known.get("etag")
            if isinstance(etag, str) and not etag.startswith("W/"):
                headers["If-Range"] = etag
        with map_httpx_errors(url):
            async with self.client.stream(
                "GET", url, headers=headers, timeout=self.timeout
            ) as response:
                start, total = _check_response(response, url, start, known)
                self._refuse_oversize(total, url)
                if start == 0:
                    validators = {"etag": response.headers.get("ETag"), "total": total}
                    await _write_sidecar(self.dest, validators)
                reporter = _ProgressReporter(self.progress, start, total)
                async with _BufferedFile(self.dest, append=start > 0, floor=self.floor) as out:
                    await self._copy_body(
                        response, url, out, reporter, expected=_minus(total, start)
                    )
                reporter.report()
        return FetchResult(
            bytes_written=reporter.done - start, total=reporter.done, resumed_from=start
        )

    async def segments(self, urls: tuple[str, ...]) -> FetchResult:
        reporter = _ProgressReporter(self.progress, 0, None)
        async with _BufferedFile(self.dest, append=False, floor=self.floor) as out:
            for url in urls:
                with map_httpx_errors(url):
                    async with self.client.stream(
                        "GET", url, headers={"Accept-Encoding": "identity"}, timeout=self.timeout
                    ) as response:
                        if response.status_code == 404:
                            raise MediaNotFoundError(url)
                        if response.status_code != 200:
                            raise from_http_status(
                                response.status_code, url, response.headers.get("Retry-After")
                            )
                        expected = _content_length(response)
                        self._refuse_oversize(_plus(reporter.done, expected), url)
                        await self._copy_body(response, url, out, reporter, expected=expected)
        reporter.report()
        return FetchResult(bytes_written=reporter.done, total=reporter.done, resumed_from=0)

    async def _copy_body(
        self,
        response: httpx.Response,
        url: str,
        out: _BufferedFile,
        reporter: _ProgressReporter,
        *,
        expected: int | None,
    ) -> None:
        """Stream the body into `out`; fewer bytes than promised is INTEGRITY_ERROR.

        The media may not grow past `max_bytes` (counted from the start of the
        file: resumed bytes and earlier DASH segments included).
        """
        received = 0
        try:
            async for chunk in response.aiter_raw():
                self._refuse_oversize(reporter.done + len(chunk), url)
                if self.bucket is not None:
                    await self.bucket.take(len(chunk))
                await out.write(chunk)
                received += len(chunk)
                reporter.add(len(chunk))
        except httpx.RemoteProtocolError:
            # h11's "peer closed without sending the complete body".
            if expected is None or received >= expected:
                raise
        if expected is not None and received < expected:
            raise DlqdError(
                ErrorCode.INTEGRITY_ERROR,
                f"{redact_url(url)}: body cut short: {received} of {expected} bytes",
            )

    def _refuse_oversize(self, media_bytes: int | None, url: str) -> None:
        """UPSTREAM_BAD_RESPONSE when `media_bytes` (known so far, or announced) passes the cap."""
        if self.max_bytes is not None and media_bytes is not None and media_bytes > self.max_bytes:
            raise DlqdError(
                ErrorCode.UPSTREAM_BAD_RESPONSE,
                f"{redact_url(url)}: media larger than limits.max_track_mb "
                f"({self.max_bytes} bytes)",
            )


def _check_response(
    response: httpx.Response, url: str, start: int, known: dict[str, Any] | None
) -> tuple[int, int | None]:
    """(offset the body starts at, total file length) after validating the status."""
    status = response.status_code
    if status == 404:
        raise MediaNotFoundError(url)
    if status == 416 and start:
        raise _ResumeRefused
    if status == 200:
        return 0, _content_length(response)  # a 200 to a Range request: start over
    if status != 206:
        raise from_http_status(status, url, response.headers.get("Retry-After"))
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if not start or known is None:
        raise DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{redact_url(url)}: 206 to a plain GET")
    if (
        match is None
        or int(match.group(1)) != start
        or int(match.group(3)) != known.get("total")
        or (known.get("etag") is not None and response.headers.get("ETag") != known["etag"])
    ):
        raise _ResumeRefused
    return start, int(match.group(3))


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _minus(total: int | None, start: int) -> int | None:
    return None if total is None else total - start


def _plus(done: int, expected: int | None) -> int | None:
    return None if expected is None else done + expected


def _resume_point(dest: Path) -> tuple[int, dict[str, Any] | None]:
    """Bytes already in `dest` worth resuming from, and the validators recorded for it.

    Runs in a worker thread. Anything unreadable means "start from zero".
    """
    try:
        with open_beneath(dest, "rb") as partial:
            size = os.fstat(partial.fileno()).st_size
        with open_beneath(sidecar_path(dest), "rb") as sidecar:
            validators = json.loads(sidecar.read())
    except (OSError, ValueError):
        return 0, None
    total = validators.get("total") if isinstance(validators, dict) else None
    if not isinstance(total, int) or not 0 < size < total:
        return 0, None
    return size, validators


async def _write_sidecar(dest: Path, validators: dict[str, Any]) -> None:
    def write() -> None:
        with open_beneath(sidecar_path(dest), "wb") as sidecar:
            sidecar.write(json.dumps(validators).encode())

    try:
        await trio.to_thread.run_sync(write)
    except OSError as exc:
        raise from_oserror(exc, str(sidecar_path(dest))) from exc
