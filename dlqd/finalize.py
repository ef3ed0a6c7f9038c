"""Finalize: the only code that writes into the library (DESIGN §7).

Owns: taking a finished temp file from `library/.dlqd-tmp/`, naming it, tagging
it, deciding what to do about an existing file (also before a download:
`skip_before_fetch`), and moving it into place atomically and durably;
`cover.jpg` and the synced lyrics (`.lrc`) beside it; the M3U8 file of a
playlist or mix job (`write_playlist`); the temp directory and its start-up
sweep. Never leaves a half-written file under a final name, never writes
outside the library, and never leaves the temp file behind, whatever happens.
Never follows a symbolic link below the library: `.dlqd-tmp`, every folder on
the way to a final name and the final name itself are opened relative to
their parent's fd without following links (`dlqd.safefs`), and the move
happens relative to those fds, so a link planted there fails the track
FILESYSTEM_ERROR instead of sending its file elsewhere. Blocking I/O on
purpose: the daemon runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal, Protocol

import structlog

from dlqd import m3u8
from dlqd.errors import DlqdError, ErrorCode, from_oserror
from dlqd.m3u8 import PlaylistEntry
from dlqd.meta import TrackMeta
from dlqd.naming import JobNames, detect_extension, numbered_name
from dlqd.safefs import UnsafePathError, is_link, open_dir, open_file, open_in, unlink_beneath
from dlqd.tags import read_source, write_tags

log = structlog.get_logger("dlqd.finalize")
TMP_DIRNAME = ".dlqd-tmp"
COVER_FILENAME = "cover.jpg"
LYRICS_SUFFIX = ".lrc"
CONFLICT_MODES = ("skip", "overwrite", "overwrite_if_different", "rename")
COVER_MODES = ("embed", "file", "embed+file", "none")
MAX_RENAME_NUMBER = 9999
_HEAD_BYTES = 16
_CHUNK_BYTES = 1 << 20
# The configured library is trusted as given (it may itself be a link to a mount).
_LIBRARY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

Outcome = Literal["written", "overwritten", "renamed", "skipped_identical", "skipped_exists"]
_MOVING_OUTCOMES = frozenset({"written", "overwritten", "renamed"})

# Worker threads finalize concurrently; deciding on a name and moving the file
# into it happen under this lock, so two tracks can never claim the same name
# (and each job's `JobNames` is only ever used under it).
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


def open_tmp_dir(library: Path) -> int:
    """An fd on `library/.dlqd-tmp`, created if needed, never reached through a link.

    Raises UnsafePathError when `.dlqd-tmp` is a symbolic link or not a folder,
    other OSErrors as they come. The library itself must already exist: not
    creating it guards against an unmounted share, whose mount point files
    would otherwise silently fill.
    """
    library_fd = os.open(library, _LIBRARY_FLAGS)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(TMP_DIRNAME, dir_fd=library_fd)
        return open_dir(TMP_DIRNAME, dir_fd=library_fd, shown=library / TMP_DIRNAME)
    finally:
        os.close(library_fd)


def tmp_dir(library: Path) -> Path:
    """`library/.dlqd-tmp`, created if needed and checked to be a folder, not a link.

    For code that names temp files by path: it opens them with
    `dlqd.safefs.open_beneath`, so a link swapped in later is refused as well.
    """
    path = library / TMP_DIRNAME
    try:
        os.close(open_tmp_dir(library))
    except UnsafePathError as exc:
        raise DlqdError(ErrorCode.FILESYSTEM_ERROR, str(exc.strerror)) from exc
    except OSError as exc:
        raise from_oserror(exc, f"opening {path}") from exc
    return path


def sweep_tmp(library: Path, keep: Collection[str] = frozenset()) -> int:
    """Remove leftovers from the temp directory at start-up, except the files named in `keep`.

    `keep` holds partial downloads a queued job can still resume (kept only
    if they are regular files). Every other entry is removed as itself,
    relative to the folder's fd: a file or a link is unlinked (a link's target
    is never touched); a real subfolder goes through shutil.rmtree's fd-based
    walk, which never follows a link either. An entry that cannot be removed
    is logged and left. Raises OSError — UnsafePathError when `.dlqd-tmp` is a
    link or not a folder — if the folder itself cannot be used. Returns the
    count removed.
    """
    directory_fd = open_tmp_dir(library)
    removed = 0
    try:
        with os.scandir(directory_fd) as scan:
            entries = [
                (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                for e in scan
            ]
        for name, is_dir, is_file in entries:
            if name in keep and is_file:
                continue
            try:
                if is_dir:
                    shutil.rmtree(name, dir_fd=directory_fd)
                else:
                    os.unlink(name, dir_fd=directory_fd)
            except OSError as exc:
                # repr: a file name is any bytes, and a log line must stay printable
                log.warning("temp leftover not removed", name=repr(name), error=str(exc))
                continue
            removed += 1
    finally:
        os.close(directory_fd)
    return removed


def finalize_track(
    temp_path: Path,
    meta: TrackMeta,
    cover: bytes | None,
    library: Path,
    files: FilesSettings,
    names: JobNames | None = None,
    synced_lyrics: str = "",
) -> FinalizeResult:
    """Name, tag and move one downloaded track into the library.

    `cover` is the album's JPEG, if any. `synced_lyrics`, when given, go into
    a `.lrc` file of the track's name beside it (only when the track is
    written there; a failure is logged, never the track's). `names` is the track's job's
    `JobNames`, shared by its tracks so no two of them take the same name
    (None: a job of this one track). Raises DlqdError (UNSUPPORTED_FORMAT,
    TAGGING_FAILED, DISK_FULL, FILESYSTEM_ERROR — the latter also for a
    symbolic link on the way); the temp file is gone afterwards on every
    path out.
    """
    try:
        job_names = JobNames() if names is None else names
        return _finalize(temp_path, meta, cover, library, files, job_names, synced_lyrics)
    except OSError as exc:
        raise from_oserror(exc, f"finalizing track {meta.track_id}") from exc
    finally:
        _unlink_quietly(temp_path)


SKIP_BEFORE_FETCH_MODES = ("skip", "overwrite_if_different")


@dataclass(frozen=True)
class Candidate:
    """A name a track may take before its bytes exist: the quality and extension it would have.

    `certain` says the download would take this very name (quality and
    extension known from the playback info), so under `skip` any file there
    is enough; an uncertain name skips only a file whose tags prove it the same.
    """

    quality: str
    ext: str
    certain: bool = False


def skip_before_fetch(
    meta: TrackMeta,
    candidates: Sequence[Candidate],
    library: Path,
    files: FilesSettings,
    names: JobNames | None = None,
) -> FinalizeResult | None:
    """The outcome of a track the library already holds, decided before any byte is fetched.

    Under `skip` and `overwrite_if_different`: a regular file at a candidate
    name whose source tags carry this track id and the candidate's quality is
    `skipped_identical`; under `skip`, any regular file at a `certain` name is
    `skipped_exists`. None means download as usual (finalize decides then).
    Reads only: folders and the file are opened without following links, and a
    link, an unreadable folder or a broken file is simply not a match. The
    name taken is held in `names`, as finalize would hold it.
    """
    if files.conflict not in SKIP_BEFORE_FETCH_MODES:
        return None
    job_names = JobNames() if names is None else names
    with _library_lock:
        for candidate in candidates:
            named = replace(meta, quality=candidate.quality)
            try:
                relative = job_names.name_for(files.naming, named, candidate.ext)
                outcome = _existing_outcome(library, relative, named, candidate, files.conflict)
            except OSError as exc:
                log.info("not skipped", track_id=meta.track_id, error=str(exc))
                continue
            if outcome is not None:
                job_names.hold(relative)
                return FinalizeResult(relative.as_posix(), outcome)
    return None


def _existing_outcome(
    library: Path, relative: PurePosixPath, meta: TrackMeta, candidate: Candidate, mode: str
) -> Outcome | None:
    """`skipped_identical`, `skipped_exists` or None for the file (if any) at `relative`."""
    with contextlib.ExitStack() as fds:
        library_fd = _closing(fds, os.open(library, _LIBRARY_FLAGS))
        folder = _AlbumFolder(library, library_fd, relative.parent, fds)
        if folder.fd is None:
            return None
        try:
            # O_NONBLOCK: a FIFO planted there must not hang the check (regular files ignore it).
            fd = open_file(
                relative.name,
                os.O_RDONLY | os.O_NONBLOCK,
                dir_fd=folder.fd,
                shown=folder.path / relative.name,
            )
        except FileNotFoundError:
            return None
        _closing(fds, fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a folder or a device: finalize reports it
        with os.fdopen(os.dup(fd), "rb") as file:
            source = read_source(file, candidate.ext)
        if source is not None and (source.track_id, source.quality) == (
            meta.track_id,
            meta.quality,
        ):
            return "skipped_identical"
        if mode == "skip" and candidate.certain:
            return "skipped_exists"
    return None


def _finalize(
    temp_path: Path,
    meta: TrackMeta,
    cover: bytes | None,
    library: Path,
    files: FilesSettings,
    names: JobNames,
    synced_lyrics: str,
) -> FinalizeResult:
    cover_modes = files.cover.split("+")
    with contextlib.ExitStack() as fds:
        temp_dir_fd = _closing(fds, open_dir(temp_path.parent))
        temp = fds.enter_context(open_in(temp_dir_fd, temp_path.name, "r+b", shown=temp_path))
        ext = detect_extension(temp.read(_HEAD_BYTES))
        write_tags(temp, ext, meta, cover if "embed" in cover_modes else None)
        temp.flush()
        library_fd = _closing(fds, os.open(library, _LIBRARY_FLAGS))
        with _library_lock:
            relative = names.name_for(files.naming, meta, ext)
            folder = _AlbumFolder(library, library_fd, relative.parent, fds)
            folder.refuse_link_at(relative.name)
            decision = decide_conflict(
                files.conflict,
                relative,
                exists=lambda path: names.holds(path) or folder.has(path.name),
                identical=lambda path: folder.same_content(path.name, temp),
            )
            if decision.moves:
                os.fsync(temp.fileno())
                album_fd = folder.create()
                try:
                    _move_into_place(
                        temp_dir_fd, temp_path.name, temp, album_fd, decision.path.name
                    )
                except BaseException:
                    folder.remove_created()
                    raise
            names.hold(decision.path)
            if cover is not None and "file" in cover_modes:
                try:
                    _write_cover_once(folder.create(), decision.path.name, cover, library)
                except (OSError, DlqdError) as exc:
                    # The track is already in place: a missing cover.jpg must not report it
                    # failed. The album's next finished track tries again (only if absent).
                    log.warning("cover.jpg not written", folder=str(folder.path), error=str(exc))
            if synced_lyrics and decision.moves:
                try:
                    _write_lyrics_file(folder.create(), decision.path.name, synced_lyrics, library)
                except OSError as exc:
                    # Like the cover: the track is in place, and its words are a decoration.
                    log.warning("lyrics file not written", folder=str(folder.path), error=str(exc))
    return FinalizeResult(decision.path.as_posix(), decision.outcome)


class _AlbumFolder:
    """The folder a track goes into, reached from the library one component at a time.

    Each component is opened relative to the one before without following a
    link, so a symbolic link anywhere on the way is refused (UnsafePathError),
    and the fd kept is the very folder that was checked: the conflict check,
    the move and cover.jpg all act relative to it. Missing components are made
    only by `create` (just before the move), and `remove_created` takes them
    away again when the move fails, so a failure leaves no empty album folder.
    """

    def __init__(
        self, library: Path, library_fd: int, relative: PurePosixPath, fds: contextlib.ExitStack
    ) -> None:
        self.path = library.joinpath(*relative.parts)
        self._library = library
        self._parts = relative.parts
        self._fds = fds
        self._chain = [library_fd]  # the library, then each component opened so far
        self._created: list[tuple[int, str]] = []  # (parent fd, name), outermost first
        self._open(create=False)

    @property
    def fd(self) -> int | None:
        """The folder's fd; None while it does not exist."""
        return self._chain[-1] if len(self._chain) == len(self._parts) + 1 else None

    def create(self) -> int:
        """Make the missing components (each new entry made durable); return the folder's fd."""
        self._open(create=True)
        assert self.fd is not None
        return self.fd

    def _open(self, *, create: bool) -> None:
        while len(self._chain) <= len(self._parts):
            parent_fd, name = self._chain[-1], self._parts[len(self._chain) - 1]
            if create:
                try:
                    os.mkdir(name, dir_fd=parent_fd)
                except FileExistsError:
                    pass
                else:
                    self._created.append((parent_fd, name))
                    os.fsync(parent_fd)
            shown = self._library.joinpath(*self._parts[: len(self._chain)])
            try:
                fd = open_dir(name, dir_fd=parent_fd, shown=shown)
            except FileNotFoundError:
                if create:
                    raise
                return
            self._chain.append(_closing(self._fds, fd))

    def remove_created(self) -> None:
        """Undo `create` after a failed move (best effort: the move's error matters more)."""
        for parent_fd, name in reversed(self._created):
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=parent_fd)

    def has(self, name: str) -> bool:
        """Whether the folder holds an entry `name` (of any kind: a link too)."""
        if self.fd is None:
            return False
        try:
            os.lstat(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def refuse_link_at(self, name: str) -> None:
        """A link at the final name is neither followed nor replaced, in any conflict mode."""
        if self.fd is not None and is_link(name, dir_fd=self.fd):
            raise UnsafePathError(self.path / name, "a symbolic link")

    def same_content(self, name: str, new: BinaryIO) -> bool:
        """Same size, then the same sha256 over the whole file (not just its first MiB)."""
        assert self.fd is not None
        with open_in(self.fd, name, "rb", shown=self.path / name) as existing:
            if os.fstat(existing.fileno()).st_size != os.fstat(new.fileno()).st_size:
                return False
            return _sha256(existing) == _sha256(new)


def _closing(fds: contextlib.ExitStack, fd: int) -> int:
    """Register `fd` to be closed with `fds`; return it."""
    fds.callback(os.close, fd)
    return fd


def _sha256(stream: BinaryIO) -> bytes:
    digest = hashlib.sha256()
    stream.seek(0)
    while chunk := stream.read(_CHUNK_BYTES):
        digest.update(chunk)
    return digest.digest()


def _move_into_place(
    source_dir_fd: int, source_name: str, source: BinaryIO, dest_dir_fd: int, dest_name: str
) -> None:
    """Atomically put the file `source_name` at `dest_name` (replacing it) and make that durable.

    Both names are relative to folder fds that were opened without following
    links. Across filesystems a rename is impossible, so copy `source` (the
    same file, open) into a hidden staging name beside the destination, fsync
    it, rename that, then drop the source.
    """
    try:
        os.replace(source_name, dest_name, src_dir_fd=source_dir_fd, dst_dir_fd=dest_dir_fd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_then_replace(source, dest_dir_fd, dest_name)
        os.unlink(source_name, dir_fd=source_dir_fd)
    os.fsync(dest_dir_fd)


def _copy_then_replace(source: BinaryIO, dest_dir_fd: int, dest_name: str) -> None:
    staging_name, staging = _create_staging(dest_dir_fd, f"{TMP_DIRNAME}-", ".part")
    try:
        with staging:
            # The copy gets the source's permissions, as a rename would have kept them.
            os.fchmod(staging.fileno(), stat.S_IMODE(os.fstat(source.fileno()).st_mode))
            source.seek(0)
            shutil.copyfileobj(source, staging, _CHUNK_BYTES)
            staging.flush()
            os.fsync(staging.fileno())
        os.replace(staging_name, dest_name, src_dir_fd=dest_dir_fd, dst_dir_fd=dest_dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging_name, dir_fd=dest_dir_fd)
        raise


def _create_staging(dir_fd: int, prefix: str, suffix: str) -> tuple[str, BinaryIO]:
    """A new, private file with a random name in the folder `dir_fd` (mkstemp, by fd)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    for _ in range(100):
        name = f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            fd = open_file(name, flags, dir_fd=dir_fd, shown=Path(name), mode=0o600)
        except FileExistsError:
            continue
        return name, os.fdopen(fd, "w+b")
    raise FileExistsError(errno.EEXIST, "no free staging name")


def _write_cover_once(album_fd: int, track_name: str, cover: bytes, library: Path) -> None:
    """Put `cover.jpg` in the album folder unless something is already there.

    Anything at that name — the user's own cover, or a link — is left alone.
    """
    if _lexists(COVER_FILENAME, album_fd):
        return
    mode = _mode_of(track_name, album_fd)  # the same permissions as the track
    _place_file(library, cover, mode, album_fd, COVER_FILENAME, ("cover-", ".jpg"))


def _place_file(
    library: Path,
    data: bytes,
    mode: int,
    dest_fd: int,
    dest_name: str,
    staging: tuple[str, str],
) -> None:
    """Put `data` at `dest_name` in the folder `dest_fd`, replacing it, atomically and durably.

    Staged under a private name (`staging`: prefix, suffix) in the library's
    temp folder, which start-up sweeps, so a crash leaves no stray file in an
    album folder; given `mode` and fsynced there, then moved like a track.
    """
    scratch_fd = open_tmp_dir(library)
    try:
        staging_name, staged = _create_staging(scratch_fd, *staging)
        try:
            with staged:
                staged.write(data)
                staged.flush()
                os.fchmod(staged.fileno(), mode)
                os.fsync(staged.fileno())
                _move_into_place(scratch_fd, staging_name, staged, dest_fd, dest_name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staging_name, dir_fd=scratch_fd)
    finally:
        os.close(scratch_fd)


def _mode_of(name: str, dir_fd: int) -> int:
    return stat.S_IMODE(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)


def lyrics_name(track_name: str) -> str:
    """The `.lrc` beside a track: its name with the extension swapped ("01 - Song.lrc")."""
    stem, dot, ext = track_name.rpartition(".")
    return (stem if dot and ext else track_name) + LYRICS_SUFFIX


def _write_lyrics_file(album_fd: int, track_name: str, text: str, library: Path) -> None:
    """Put `text` at the track's `.lrc` name, replacing an older one, atomically and durably.

    A link at the name is left as it is: never followed, never replaced.
    """
    name = lyrics_name(track_name)
    if is_link(name, dir_fd=album_fd):
        raise UnsafePathError(Path(name), "a symbolic link")
    data = text.encode("utf-8") + b"\n"
    mode = _mode_of(track_name, album_fd)
    _place_file(library, data, mode, album_fd, name, ("lyrics-", LYRICS_SUFFIX))


def write_playlist(
    library: Path,
    folder: PurePosixPath,
    title: str,
    source: str,
    entries: Sequence[PlaylistEntry],
) -> str | None:
    """Write a playlist's M3U8 at `folder/{title}.m3u8` in the library; its library path.

    Lists, in order, the `entries` whose file is in the library now (a regular
    file, reached without following a link); None, and nothing written, when
    none is. `source` ("playlist <uuid>") is recorded in the file: a
    `{title}.m3u8` that another playlist or mix wrote, or the user's own, is
    left alone and this one is `{title} (<source>).m3u8`. Staged in
    `.dlqd-tmp`, fsynced and renamed over the old file, the folder fsynced, so
    a reader sees the old playlist or the new one, whole. Missing folders are
    made; a link on the way or at the name raises FILESYSTEM_ERROR, like every
    other DlqdError from the filesystem (DISK_FULL too).
    """
    try:
        return _write_playlist(library, folder, title, source, entries)
    except OSError as exc:
        raise from_oserror(exc, f"writing the playlist file of {source}") from exc


def _write_playlist(
    library: Path,
    folder: PurePosixPath,
    title: str,
    source: str,
    entries: Sequence[PlaylistEntry],
) -> str | None:
    present = [entry for entry in entries if _is_in_library(library, entry.path)]
    if not present:
        return None
    text = m3u8.render(title, source, folder, present).encode("utf-8")
    with contextlib.ExitStack() as fds:
        library_fd = _closing(fds, os.open(library, _LIBRARY_FLAGS))
        place = _AlbumFolder(library, library_fd, folder, fds)
        with _library_lock:
            folder_fd = place.create()
            name = _playlist_name(folder_fd, place.path, title, source)
            # What a new file in that folder gets.
            mode = stat.S_IMODE(os.fstat(folder_fd).st_mode) & 0o666
            _place_file(library, text, mode, folder_fd, name, ("playlist-", m3u8.SUFFIX))
    return (folder / name).as_posix()


def _playlist_name(folder_fd: int, shown: Path, title: str, source: str) -> str:
    """`{title}.m3u8`, unless a file there is not this playlist's: then the source's own name."""
    name = m3u8.file_name(title)
    owner = _playlist_owner(folder_fd, name, shown)
    if owner is None or owner == source:
        return name
    name = m3u8.file_name(title, source)
    _playlist_owner(folder_fd, name, shown)  # refuses a link there
    return name


def _playlist_owner(folder_fd: int, name: str, shown: Path) -> str | None:
    """Whose playlist is at `name`: None when nothing is, "" when not one dlqd wrote.

    A link at the name raises UnsafePathError: never followed, never replaced.
    """
    try:
        mode = os.lstat(name, dir_fd=folder_fd).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        raise UnsafePathError(shown / name, "a symbolic link")
    if not stat.S_ISREG(mode):
        return ""
    # O_NONBLOCK: a FIFO swapped in meanwhile must not hang the check.
    fd = open_file(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=folder_fd, shown=shown / name)
    with os.fdopen(fd, "rb") as existing:
        return m3u8.source_of(existing.read(m3u8.HEAD_BYTES)) or ""


def _is_in_library(library: Path, path: str) -> bool:
    """Whether the library holds a regular file at `path`, reached without following a link."""
    relative = PurePosixPath(path)
    with contextlib.ExitStack() as fds:
        try:
            library_fd = _closing(fds, os.open(library, _LIBRARY_FLAGS))
            folder = _AlbumFolder(library, library_fd, relative.parent, fds)
            if folder.fd is None:
                return False
            return stat.S_ISREG(os.lstat(relative.name, dir_fd=folder.fd).st_mode)
        except (FileNotFoundError, NotADirectoryError, UnsafePathError):
            # Absent, or not where a track may be. Any other error (the share went
            # away, EIO) raises: a playlist must wait for its library, not lose entries.
            return False


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _unlink_quietly(path: Path) -> None:
    """Best-effort cleanup on the way out: the original error matters more.

    Never through a link: with `.dlqd-tmp` swapped for one, nothing is removed.
    """
    with contextlib.suppress(OSError):
        unlink_beneath(path)
