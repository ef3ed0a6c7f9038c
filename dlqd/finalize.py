"""Finalize: the only code that writes into the library (DESIGN §7).

Owns: taking a finished temp file from `library/.dlqd-tmp/`, naming it, tagging
it, deciding what to do about an existing file, and moving it into place
atomically and durably; `cover.jpg` beside it; the temp directory and its
start-up sweep. Never leaves a half-written file under a final name, never
writes outside the library, and never leaves the temp file behind, whatever
happens. Blocking I/O on purpose: the daemon runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

import structlog

from dlqd.durable import fsync_dir, fsync_path
from dlqd.errors import DlqdError, ErrorCode, from_oserror
from dlqd.meta import TrackMeta
from dlqd.naming import detect_extension, numbered_name, render_relative_path
from dlqd.tags import write_tags

log = structlog.get_logger("dlqd.finalize")
TMP_DIRNAME = ".dlqd-tmp"
COVER_FILENAME = "cover.jpg"
CONFLICT_MODES = ("skip", "overwrite", "overwrite_if_different", "rename")
COVER_MODES = ("embed", "file", "embed+file", "none")
MAX_RENAME_NUMBER = 9999
_HEAD_BYTES = 16
_CHUNK_BYTES = 1 << 20

Outcome = Literal["written", "overwritten", "renamed", "skipped_identical", "skipped_exists"]
_MOVING_OUTCOMES = frozenset({"written", "overwritten", "renamed"})

# Worker threads finalize concurrently; deciding on a name and moving the file
# into it happen under this lock, so two tracks can never claim the same name.
_library_lock = threading.Lock()


class FilesSettings(Protocol):
    """The `[files]` config section (dlqd.config.FilesConfig fits)."""

    @property
    def naming(self) -> str: ...

    @property
    def conflict(self) -> str: ...

    @property
    def cover(self) -> str: ...


@dataclass(frozen=True)
class FinalizeResult:
    """Where the track ended up (posix, relative to the library) and how."""

    path: str
    outcome: Outcome


@dataclass(frozen=True)
class ConflictDecision:
    """The name to use and the outcome; `moves` says whether the temp file goes there."""

    path: PurePosixPath
    outcome: Outcome

    @property
    def moves(self) -> bool:
        return self.outcome in _MOVING_OUTCOMES


def decide_conflict(
    mode: str,
    wanted: PurePosixPath,
    exists: Callable[[PurePosixPath], bool],
    identical: Callable[[PurePosixPath], bool],
) -> ConflictDecision:
    """Decide what happens to a track whose rendered name is `wanted`.

    Pure given its callables: `exists(path)` says whether a library path is
    taken, `identical(path)` whether it holds the same bytes as the new file
    (asked only in `overwrite_if_different` mode, and only when it exists).
    """
    if mode not in CONFLICT_MODES:
        raise ValueError(f"unknown conflict mode {mode!r}")
    if not exists(wanted):
        return ConflictDecision(wanted, "written")
    if mode == "skip":
        return ConflictDecision(wanted, "skipped_exists")
    if mode == "overwrite":
        return ConflictDecision(wanted, "overwritten")
    if mode == "overwrite_if_different":
        if identical(wanted):
            return ConflictDecision(wanted, "skipped_identical")
        return ConflictDecision(wanted, "overwritten")
    for number in range(1, MAX_RENAME_NUMBER + 1):
        candidate = wanted.with_name(numbered_name(wanted.name, number))
        if not exists(candidate):
            return ConflictDecision(candidate, "renamed")
    raise DlqdError(
        ErrorCode.FILESYSTEM_ERROR, f"{wanted}: no free name up to ({MAX_RENAME_NUMBER})"
    )


def tmp_dir(library: Path) -> Path:
    """`library/.dlqd-tmp`, created if needed; the library itself must already exist.

    Not creating the library guards against an unmounted share: files would
    otherwise silently fill the disk underneath the mount point.
    """
    path = library / TMP_DIRNAME
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise from_oserror(exc, f"creating {path}") from exc
    return path


def sweep_tmp(library: Path, keep: Collection[str] = frozenset()) -> int:
    """Remove leftovers from the temp directory at start-up, except the names in `keep`.

    `keep` holds partial downloads a queued job can still resume. Returns the count removed.
    """
    directory = tmp_dir(library)
    removed = 0
    try:
        for entry in directory.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
    except OSError as exc:
        raise from_oserror(exc, f"sweeping {directory}") from exc
    return removed


def finalize_track(
    temp_path: Path,
    meta: TrackMeta,
    cover: bytes | None,
    library: Path,
    files: FilesSettings,
) -> FinalizeResult:
    """Name, tag and move one downloaded track into the library.

    `cover` is the album's JPEG, if any. Raises DlqdError (UNSUPPORTED_FORMAT,
    TAGGING_FAILED, DISK_FULL, FILESYSTEM_ERROR); the temp file is gone
    afterwards on every path out.
    """
    try:
        return _finalize(temp_path, meta, cover, library, files)
    except OSError as exc:
        raise from_oserror(exc, f"finalizing track {meta.track_id}") from exc
    finally:
        _unlink_quietly(temp_path)


def _finalize(
    temp_path: Path, meta: TrackMeta, cover: bytes | None, library: Path, files: FilesSettings
) -> FinalizeResult:
    with temp_path.open("rb") as temp_file:
        ext = detect_extension(temp_file.read(_HEAD_BYTES))
    relative = render_relative_path(files.naming, meta, ext)
    write_tags(temp_path, ext, meta, cover if "embed" in files.cover.split("+") else None)
    with _library_lock:
        decision = decide_conflict(
            files.conflict,
            relative,
            exists=lambda path: os.path.lexists(library / path),
            identical=lambda path: _same_content(library / path, temp_path),
        )
        destination = library / decision.path
        if decision.moves:
            fsync_path(temp_path)
            created = _make_parents(library, decision.path.parent)
            try:
                _move_into_place(temp_path, destination)
            except BaseException:
                _remove_empty_dirs(created)
                raise
        if cover is not None and "file" in files.cover.split("+"):
            try:
                _write_cover_once(destination, cover, tmp_dir(library))
            except (OSError, DlqdError) as exc:
                # The track is already in place: a missing cover.jpg must not report it
                # failed. The album's next finished track tries again (only if absent).
                log.warning("cover.jpg not written", folder=str(destination.parent), error=str(exc))
    return FinalizeResult(decision.path.as_posix(), decision.outcome)


def _same_content(existing: Path, new: Path) -> bool:
    """Same size, then the same sha256 over the whole file (not just its first MiB)."""
    if existing.stat().st_size != new.stat().st_size:
        return False
    return _sha256(existing) == _sha256(new)


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.digest()


def _make_parents(library: Path, relative_dir: PurePosixPath) -> list[Path]:
    """Create the folders below the library, fsyncing each new entry's parent.

    Returns the folders it created, outermost first.
    """
    created: list[Path] = []
    current = library
    for part in relative_dir.parts:
        current = current / part
        try:
            current.mkdir()
        except FileExistsError:
            continue
        created.append(current)
        fsync_dir(current.parent)
    return created


def _remove_empty_dirs(created: list[Path]) -> None:
    """Undo `_make_parents` after a failed move, so a failure leaves no empty album folder."""
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _move_into_place(source: Path, destination: Path) -> None:
    """Atomically put `source` at `destination` (replacing it) and make that durable.

    Across filesystems a rename is impossible, so copy into a hidden temp name
    beside the destination, fsync it, rename that, then drop the source.
    """
    try:
        os.replace(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_then_replace(source, destination)
        source.unlink()
    fsync_dir(destination.parent)


def _copy_then_replace(source: Path, destination: Path) -> None:
    fd, staging_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f"{TMP_DIRNAME}-", suffix=".part"
    )
    staging = Path(staging_name)
    try:
        with os.fdopen(fd, "wb") as staging_file, source.open("rb") as source_file:
            shutil.copyfileobj(source_file, staging_file, _CHUNK_BYTES)
            staging_file.flush()
            os.fsync(staging_file.fileno())
        os.replace(staging, destination)
    except BaseException:
        _unlink_quietly(staging)
        raise


def _write_cover_once(track: Path, cover: bytes, scratch: Path) -> None:
    """Put `cover.jpg` beside `track` (the album folder) unless one is already there."""
    destination = track.parent / COVER_FILENAME
    if os.path.lexists(destination):
        return
    fd, staging_name = tempfile.mkstemp(dir=scratch, prefix="cover-", suffix=".jpg")
    staging = Path(staging_name)
    try:
        with os.fdopen(fd, "wb") as staging_file:
            staging_file.write(cover)
            staging_file.flush()
            os.fsync(staging_file.fileno())
        # mkstemp makes it 0600; give it the same permissions as the track.
        os.chmod(staging, stat.S_IMODE(track.stat().st_mode))
        _move_into_place(staging, destination)
    finally:
        _unlink_quietly(staging)


def _unlink_quietly(path: Path) -> None:
    """Best-effort cleanup on the way out: the original error matters more."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
