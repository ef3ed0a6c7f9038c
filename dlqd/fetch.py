"""Fetching one track's audio into its temp file in `library/.dlqd-tmp/`.

Owns what a media answer means for the file: a `MediaPlan`'s URLs in order
(fallback inside one try), Range resume with validators (ETag/If-Range,
Content-Range checks, 416), the length checks, the track size cap, the
free-space floor (`FreeSpaceFloor`) and the daemon-wide bandwidth limit
(`TokenBucket`). The bytes move through `dlqd.transfer` (a worker thread per
GET, the stall timeout, progress, cancellation); this module decides, from
each response head, whether and where its body is written. Never writes
outside `dest` and its sidecar (opened without following a link at them or
at their folder: `dlqd.safefs`), never deletes or fsyncs them (the caller
owns the temp file's lifecycle; finalize fsyncs), and never retries over
time (backoff belongs to the scheduler).

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
from typing import Any, BinaryIO

import trio

from dlqd.errors import DlqdError, ErrorCode, from_http_status, from_oserror, redact_url
from dlqd.meta import MediaPlan
from dlqd.safefs import open_beneath
from dlqd.transfer import (
    BUFFER_BYTES,
    PROGRESS_EVERY_BYTES,
    PROGRESS_EVERY_S,
    Head,
    MediaClient,
    Progress,
    Take,
    Transfer,
)

__all__ = [
    "BUFFER_BYTES",
    "BURST_S",
    "MIB",
    "PROGRESS_EVERY_BYTES",
    "PROGRESS_EVERY_S",
    "FetchResult",
    "FreeSpaceFloor",
    "MediaNotFoundError",
    "Progress",
    "TokenBucket",
    "fetch_to_file",
    "sidecar_path",
]

# A rate-limited transfer may run ahead of its average by this many seconds' worth.
BURST_S = 0.1
# The free-space floor is re-checked after this many bytes written: one statvfs
# per 16 MiB costs nothing, and a running track overshoots the floor by at most this.
SPACE_CHECK_EVERY_BYTES = 16 * 1024 * 1024
MIB = 1024 * 1024

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


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


async def fetch_to_file(
    media: MediaClient,
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
    async with Transfer(
        media,
        dest,
        progress=progress,
        read_timeout_s=read_timeout_s,
        bandwidth=bandwidth,
        max_bytes=max_bytes,
        floor=floor,
    ) as transfer:
        if plan.segments:
            return await _segments(transfer, dest, plan.segments)
        if not plan.urls:
            raise DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, "media plan has no URLs")
        errors: list[DlqdError] = []
        for url in plan.urls:
            try:
                return await _single(transfer, dest, url, resume=resume)
            except DlqdError as exc:
                if exc.code in (ErrorCode.DISK_FULL, ErrorCode.FILESYSTEM_ERROR):
                    raise  # the disk, not the URL: another URL cannot help
                if exc.code == ErrorCode.UPSTREAM_RATE_LIMITED:
                    raise  # a 429 holds the whole upstream: ask no other URL now
                errors.append(exc)
    # A 404 anywhere means the manifest is stale: let the caller refetch it.
    expired = [exc for exc in errors if isinstance(exc, MediaNotFoundError)]
    raise expired[0] if expired else errors[-1]


async def _single(transfer: Transfer, dest: Path, url: str, *, resume: bool) -> FetchResult:
    start, known = await trio.to_thread.run_sync(_resume_point, dest) if resume else (0, None)
    if start:
        try:
            return await _get_file(transfer, dest, url, start=start, known=known)
        except _ResumeRefused:
            pass
    return await _get_file(transfer, dest, url, start=0, known=None)


async def _get_file(
    transfer: Transfer, dest: Path, url: str, *, start: int, known: dict[str, Any] | None
) -> FetchResult:
    """One GET of the whole file, or of its rest from `start` when resuming."""
    headers = {}
    if start:
        assert known is not None
        headers["Range"] = f"bytes={start}-"
        etag = known.get("etag")
        if isinstance(etag, str) and not etag.startswith("W/"):
            headers["If-Range"] = etag
    began: list[int] = []

    def accept(head: Head) -> Take:
        """In the transfer's worker thread: check the answer, record validators, open dest."""
        offset, total = _check_response(head, url, start, known)
        transfer.refuse_oversize(total, url)
        if offset == 0:
            _write_sidecar(dest, {"etag": head.headers.get("etag"), "total": total})
        began.append(offset)
        return Take(
            expected=_minus(total, offset),
            total=total,
            file=_open_temp(dest, append=offset > 0),
            offset=offset,
        )

    await transfer.get(url, headers, accept)
    (offset,) = began
    return FetchResult(
        bytes_written=transfer.done - offset, total=transfer.done, resumed_from=offset
    )


async def _segments(transfer: Transfer, dest: Path, urls: tuple[str, ...]) -> FetchResult:
    """Init + segments in order into one file; a segment past the cap is refused before its body."""
    for index, url in enumerate(urls):

        def accept(head: Head, url: str = url, index: int = index) -> Take:
            """In the transfer's worker thread: the segment must be a whole 200."""
            if head.status == 404:
                raise MediaNotFoundError(url)
            if head.status != 200:
                raise from_http_status(head.status, url, head.headers.get("retry-after"))
            expected = _content_length(head)
            transfer.refuse_oversize(_plus(transfer.done, expected), url)
            return Take(
                expected=expected,
                total=None,
                file=_open_temp(dest, append=False) if index == 0 else None,
                keep_open=index < len(urls) - 1,
            )

        await transfer.get(url, {}, accept)
    return FetchResult(bytes_written=transfer.done, total=transfer.done, resumed_from=0)


def _check_response(
    head: Head, url: str, start: int, known: dict[str, Any] | None
) -> tuple[int, int | None]:
    """(offset the body starts at, total file length) after validating the status."""
    status = head.status
    if status == 404:
        raise MediaNotFoundError(url)
    if status == 416 and start:
        raise _ResumeRefused
    if status == 200:
        return 0, _content_length(head)  # a 200 to a Range request: start over
    if status != 206:
        raise from_http_status(status, url, head.headers.get("retry-after"))
    match = _CONTENT_RANGE.fullmatch(head.headers.get("content-range", "").strip())
    if not start or known is None:
        raise DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{redact_url(url)}: 206 to a plain GET")
    if (
        match is None
        or int(match.group(1)) != start
        or int(match.group(3)) != known.get("total")
        or (known.get("etag") is not None and head.headers.get("etag") != known["etag"])
    ):
        raise _ResumeRefused
    return start, int(match.group(3))


def _content_length(head: Head) -> int | None:
    value = head.headers.get("content-length", "")
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


def _write_sidecar(dest: Path, validators: dict[str, Any]) -> None:
    """Record the resume validators of `dest`. Blocking."""
    try:
        with open_beneath(sidecar_path(dest), "wb") as sidecar:
            sidecar.write(json.dumps(validators).encode())
    except OSError as exc:
        raise from_oserror(exc, str(sidecar_path(dest))) from exc


def _open_temp(dest: Path, *, append: bool) -> BinaryIO:
    """`dest` for writing: after its bytes (a resume) or emptied. Blocking."""
    try:
        return open_beneath(dest, "ab" if append else "wb")
    except OSError as exc:
        raise from_oserror(exc, str(dest)) from exc
