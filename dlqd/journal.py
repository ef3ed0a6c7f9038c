"""The on-disk queue: numbered journal segments plus one snapshot (docs/journal.md).

Owns the file formats, recovery, appends with fsync, segment rotation and
snapshot replacement. Everything here is synchronous and single-writer: the
trio side (`dlqd.store`) calls it from one task, via worker threads. It never
decides what an event means — it replays them through `state.apply`.

Layout under `state_dir`:
    journal/00000001.seg   16-byte header, then records
    snapshot               whole state; names the first segment still to replay
Record:   u32 body length | u32 CRC-32 of body | msgpack body (one event map)
"""

from __future__ import annotations

import errno
import gc
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from dlqd.durable import fsync_dir
from dlqd.state import QueueState, ReplayError, apply, from_snapshot

SEGMENT_MAGIC = b"DLQJ"
SNAPSHOT_MAGIC = b"DLQS"
FORMAT_VERSION = 1
SEGMENT_HEADER = struct.Struct(">4sIQ")  # magic, version, segment number
RECORD_HEADER = struct.Struct(">II")  # body length, CRC-32 of body
SNAPSHOT_HEADER = struct.Struct(">4sIQQI")  # magic, version, first segment, length, CRC
# The largest record body: `encode_record` refuses to write what recovery would
# refuse to read, so one constant serves both.
MAX_RECORD_BYTES = 16 * 1024 * 1024


class JournalCorrupt(Exception):
    """Damage that is not a torn tail: refusing to start is the only safe answer."""


@dataclass
class RecoveryReport:
    """What start-up found, for the log and for tests."""

    snapshot_jobs: int = 0
    replayed_records: int = 0
    segments: list[int] = field(default_factory=list)
    truncated_bytes: int = 0  # torn tail removed from the newest segment
    truncated_segment: int | None = None


class UnencodableRecord(ValueError):
    """An event that msgpack cannot encode, or whose record recovery would not read back."""


def encode_record(event: dict[str, Any]) -> bytes:
    """One framed record; raises `UnencodableRecord` instead of writing a poisoned one.

    A string with a lone surrogate, an integer outside 64 bits or an unknown type
    cannot be encoded; a body above MAX_RECORD_BYTES would be read back as damage.
    """
    try:
        body: bytes = msgpack.packb(event, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UnencodableRecord(f"{type(exc).__name__}: {exc}") from None
    if len(body) > MAX_RECORD_BYTES:
        raise UnencodableRecord(f"{len(body)} bytes, above the limit of {MAX_RECORD_BYTES}")
    return RECORD_HEADER.pack(len(body), zlib.crc32(body)) + body


def segment_path(journal_dir: Path, number: int) -> Path:
    return journal_dir / f"{number:08d}.seg"


def list_segments(journal_dir: Path) -> list[int]:
    numbers = []
    for entry in journal_dir.iterdir():
        if entry.suffix == ".seg" and entry.stem.isdigit():
            numbers.append(int(entry.stem))
    return sorted(numbers)


def iter_records(data: bytes, start: int) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (offset, end, body) per record; body None marks a damaged record at offset."""
    offset = start
    size = len(data)
    view = memoryview(data)
    while offset < size:
        if offset + RECORD_HEADER.size > size:
            yield offset, size, None
            return
        length, crc = RECORD_HEADER.unpack_from(data, offset)
        end = offset + RECORD_HEADER.size + length
        if length == 0 or length > MAX_RECORD_BYTES or end > size:
            yield offset, size, None
            return
        body = view[offset + RECORD_HEADER.size : end]
        if zlib.crc32(body) != crc:
            yield offset, end, None
            return
        yield offset, end, bytes(body)
        offset = end


def _whole_record_after(data: bytes, start: int) -> bool:
    """Is there an intact record starting anywhere at or after `start`?

    Tells a torn tail (nothing whole after the damage: the last write was cut
    short) from corruption (a damaged record, or a damaged length field, with
    intact records after it). A record never has an empty body, so zeros left
    by a crash that extended the file without writing it count as torn.
    """
    view = memoryview(data)
    size = len(data)
    for offset in range(start, size - RECORD_HEADER.size):
        length, crc = RECORD_HEADER.unpack_from(data, offset)
        end = offset + RECORD_HEADER.size + length
        fits = 0 < length <= MAX_RECORD_BYTES and end <= size
        if fits and zlib.crc32(view[offset + RECORD_HEADER.size : end]) == crc:
            return True
    return False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading 100,000 jobs allocates ~10^6 objects that all live on; the
    cyclic GC would rescan them many times over for nothing (2-3x slower
    start-up). Freezing them afterwards keeps later collections from scanning
    them again; they are still freed by reference counting when jobs go."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class JournalFiles:
    """The state directory's journal and snapshot. Not thread-safe: one caller at a time."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.journal_dir = state_dir / "journal"
        self.snapshot_path = state_dir / "snapshot"
        self.segment_number = 0
        self.segment_offset = 0  # bytes in the current segment (its durable length)
        self.journal_bytes = 0  # all live segments together
        self._fd: int | None = None

    # --- start-up ------------------------------------------------------------

    def recover(self) -> tuple[QueueState, RecoveryReport]:
        """Load the snapshot, replay newer segments, cut a torn tail, open for appends."""
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        report = RecoveryReport()
        with _gc_paused():
            state, first_segment = self._load_snapshot()
            report.snapshot_jobs = len(state.jobs)
            numbers = list_segments(self.journal_dir)
            for stale in [n for n in numbers if n < first_segment]:
                segment_path(self.journal_dir, stale).unlink()  # already inside the snapshot
            numbers = [n for n in numbers if n >= first_segment]
            for index, number in enumerate(numbers):
                newest = index == len(numbers) - 1
                self._replay_segment(state, number, newest, report)
        report.segments = numbers
        # The newest segment is gone when its header was cut short (it held nothing).
        live = [n for n in numbers if segment_path(self.journal_dir, n).exists()]
        self.journal_bytes = sum(segment_path(self.journal_dir, n).stat().st_size for n in live)
        if live and live[-1] == numbers[-1]:
            self._open_segment(live[-1])
        else:
            self._create_segment(max([first_segment, *numbers]))
        return state, report

    def _load_snapshot(self) -> tuple[QueueState, int]:
        try:
            data = self.snapshot_path.read_bytes()
        except FileNotFoundError:
            return QueueState(), 1
        where = f"snapshot {self.snapshot_path}"
        if len(data) < SNAPSHOT_HEADER.size:
            raise JournalCorrupt(f"{where} is cut short")
        magic, version, first_segment, length, crc = SNAPSHOT_HEADER.unpack_from(data)
        body = memoryview(data)[SNAPSHOT_HEADER.size :]
        if magic != SNAPSHOT_MAGIC or version != FORMAT_VERSION:
            raise JournalCorrupt(f"{where} has an unknown header")
        if len(body) != length or zlib.crc32(body) != crc:
            raise JournalCorrupt(f"{where} fails its CRC check")
        try:
            state = from_snapshot(msgpack.unpackb(body, raw=False, strict_map_key=False))
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalCorrupt(f"{where} cannot be read: {exc}") from exc
        return state, first_segment

    def _replay_segment(
        self, state: QueueState, number: int, newest: bool, report: RecoveryReport
    ) -> None:
        path = segment_path(self.journal_dir, number)
        data = path.read_bytes()
        if len(data) < SEGMENT_HEADER.size:
            if not newest:
                raise JournalCorrupt(f"{path}: segment header cut short in an older segment")
            report.truncated_bytes += len(data)
            report.truncated_segment = number
            path.unlink()  # a segment whose header never got written holds nothing
            return
        magic, version, header_number = SEGMENT_HEADER.unpack_from(data)
        if magic != SEGMENT_MAGIC or version != FORMAT_VERSION or header_number != number:
            raise JournalCorrupt(f"{path}: bad segment header")
        for offset, _end, body in iter_records(data, SEGMENT_HEADER.size):
            if body is None:
                if newest and not _whole_record_after(data, offset + 1):
                    report.truncated_bytes += len(data) - offset
                    report.truncated_segment = number
                    with open(path, "r+b") as handle:
                        handle.truncate(offset)
                        os.fsync(handle.fileno())
                    return
                raise JournalCorrupt(
                    f"{path}: damaged record at byte {offset} with intact data after it"
                )
            try:
                apply(state, msgpack.unpackb(body, raw=False, strict_map_key=False))
            except (ReplayError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise JournalCorrupt(
                    f"{path}: record at byte {offset} does not apply: {exc}"
                ) from exc
            report.replayed_records += 1

    # --- appends -----------------------------------------------------------------

    def _create_segment(self, number: int) -> None:
        path = segment_path(self.journal_dir, number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        header = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, number)
        try:
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "short write of a segment header")
            os.fsync(fd)
            fsync_dir(self.journal_dir)
        except OSError:
            os.close(fd)  # keep appending to the current segment; drop the new one
            path.unlink(missing_ok=True)
            raise
        self._close()
        self._fd = fd
        self.segment_number = number
        self.segment_offset = len(header)
        self.journal_bytes += len(header)

    def _open_segment(self, number: int) -> None:
        path = segment_path(self.journal_dir, number)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.segment_number = number
        self.segment_offset = path.stat().st_size

    def append(self, data: bytes) -> None:
        """Write encoded records and fsync; on failure cut the segment back and re-raise."""
        assert self._fd is not None, "journal not open"
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError:
            self._cut_back()
            raise
        self.segment_offset += len(data)
        self.journal_bytes += len(data)

    def _cut_back(self) -> None:
        """Drop whatever part of a failed batch reached the file."""
        try:
            os.ftruncate(self._fd, self.segment_offset)  # type: ignore[arg-type]
            os.fsync(self._fd)  # type: ignore[arg-type]
        except OSError:
            pass  # recovery cuts a torn tail anyway; the batch was not acknowledged

    # --- compaction ----------------------------------------------------------------

    def rotate(self) -> int:
        """Start a new segment; returns its number (the snapshot's first segment)."""
        self._create_segment(self.segment_number + 1)
        return self.segment_number

    def write_snapshot(self, snapshot: dict[str, Any], first_segment: int) -> int:
        """Replace the snapshot atomically, then delete the segments it covers."""
        body = msgpack.packb(snapshot, use_bin_type=True)
        header = SNAPSHOT_HEADER.pack(
            SNAPSHOT_MAGIC, FORMAT_VERSION, first_segment, len(body), zlib.crc32(body)
        )
        temp = self.snapshot_path.with_name("snapshot.tmp")
        with open(temp, "wb") as handle:
            handle.write(header)
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.snapshot_path)
        fsync_dir(self.state_dir)
        for number in list_segments(self.journal_dir):
            if number < first_segment:
                path = segment_path(self.journal_dir, number)
                self.journal_bytes -= path.stat().st_size
                path.unlink()
        fsync_dir(self.journal_dir)
        return len(header) + len(body)

    def snapshot_bytes(self) -> int:
        try:
            return self.snapshot_path.stat().st_size
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
