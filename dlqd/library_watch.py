"""Whether the library can take files now: the `library_unavailable` and `disk_full` holds.

Owns: the check that the configured library exists, is a directory, is still
the mount point it was at start-up (an unmounted share leaves an empty folder
whose disk must not fill), takes a new file (a probe created and removed in
`library/.dlqd-tmp`: a real write, which root's disregard for modes cannot
fake and which meets EROFS), and has at least `limits.min_free_mb` free; the
holds that follow from it; and, while one of them is active, a re-check every
`files.recheck_s` that releases it, so the queue resumes by itself.

Never creates the library (a missing one is waited for, not recreated), never
writes anywhere but its probe in the temp folder, and never decides about a
single track: the worker asks (`check_now` before each try and after a
FILESYSTEM_ERROR, `disk_full` after a write found no room) and maps the answer.
A temp folder that is a link or not a folder is hostile, not an outage: the
track meeting it fails FILESYSTEM_ERROR (issue 8), so it is not held here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from dlqd.fetch import MIB, FreeSpaceFloor
from dlqd.finalize import TMP_DIRNAME, open_tmp_dir
from dlqd.holds import Hold, HoldReason, Holds
from dlqd.safefs import UnsafePathError, open_file

log = structlog.get_logger("dlqd.library_watch")

# After a full disk (ENOSPC), dlqd waits for at least this much room even when
# `limits.min_free_mb` is 0, so a disk at 0 bytes free is not retried on every re-check.
RESUME_FREE_BYTES = MIB
_LIBRARY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the library is trusted as given
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_REASONS = (HoldReason.LIBRARY_UNAVAILABLE, HoldReason.DISK_FULL)


@dataclass(frozen=True)
class Finding:
    """What one check saw: why the library cannot take files, or how much room its disk has."""

    library_problem: str | None = None
    disk_problem: str | None = None  # a write met ENOSPC / EDQUOT
    free_bytes: int | None = None


class LibraryWatch:
    """Holds the queue while the library cannot take files, and releases it when it can again."""

    def __init__(
        self, library: Path, holds: Holds, *, floor: FreeSpaceFloor, recheck_s: float
    ) -> None:
        self.library = library
        self.holds = holds
        self.floor = floor  # `limits.min_free_mb` and the free-space probe, shared with the worker
        self.recheck_s = recheck_s
        self._was_mount_point = _is_mount_point(library)  # blocking: built at start-up
        self._held = trio.Event()  # set when this watch starts a hold: the re-check loop runs

    @property
    def holding(self) -> bool:
        return any(hold.reason in _REASONS for hold in self.holds.faults())

    async def check_now(self) -> Hold | None:
        """Check the library and its disk, hold or release to match; the hold in force after.

        The worker asks before each try, and when a track meets
        FILESYSTEM_ERROR: only a library that is gone, no longer mounted or
        unwritable, or a disk without room, holds the queue. A library hold
        is returned before a disk hold.
        """
        finding = await trio.to_thread.run_sync(self.inspect)
        self._apply(finding)
        held = {hold.reason: hold for hold in self.holds.faults() if hold.reason in _REASONS}
        return held.get(HoldReason.LIBRARY_UNAVAILABLE) or held.get(HoldReason.DISK_FULL)

    def disk_full(self, detail: str) -> None:
        """A write met a full disk or the free-space floor: hold until a re-check finds room."""
        self._hold(HoldReason.DISK_FULL, detail)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-check every `recheck_s` while a library or disk hold is active; idle otherwise."""
        task_status.started()
        while True:
            if not self.holding:
                self._held = trio.Event()
                await self._held.wait()
                continue
            await trio.sleep(self.recheck_s)
            await self.check_now()

    # --- the check ---------------------------------------------------------------------

    def inspect(self) -> Finding:
        """Look at the library and its disk (blocking: run in a worker thread)."""
        library = self.library
        try:
            library_fd = os.open(library, _LIBRARY_FLAGS)
        except FileNotFoundError:
            return Finding(f"library {library} does not exist (unmounted or moved away?)")
        except NotADirectoryError:
            return Finding(f"library {library} is not a directory")
        except OSError as exc:
            return Finding(f"library {library} cannot be opened: {exc.strerror or exc}")
        try:
            if self._was_mount_point and not _is_mount_point_fd(library_fd):
                return Finding(
                    f"library {library} is no longer a mount point (was its share unmounted?)"
                )
        except OSError as exc:
            return Finding(f"library {library} cannot be checked: {exc.strerror or exc}")
        finally:
            os.close(library_fd)
        try:
            _probe_write(library)
        except UnsafePathError:
            pass  # hostile, not an outage: the track that meets it fails (module doc)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                return Finding(disk_problem=f"library {library}: no space left to create a file")
            return Finding(f"library {library} cannot take files: {exc.strerror or exc}")
        try:
            free = self.floor.free_bytes(library)
        except OSError as exc:
            return Finding(f"library {library}: free space unknown: {exc.strerror or exc}")
        return Finding(free_bytes=free)

    def _apply(self, finding: Finding) -> None:
        if finding.library_problem is not None:
            self._hold(HoldReason.LIBRARY_UNAVAILABLE, finding.library_problem)
            return  # its disk cannot be measured now: a disk hold stays as it is
        self._release(HoldReason.LIBRARY_UNAVAILABLE)
        if finding.disk_problem is not None:
            self._hold(HoldReason.DISK_FULL, finding.disk_problem)
            return
        assert finding.free_bytes is not None
        needed = self.floor.min_free_mb * MIB
        if self.holds.is_held(HoldReason.DISK_FULL):
            needed = max(needed, RESUME_FREE_BYTES)
        if finding.free_bytes >= needed:
            self._release(HoldReason.DISK_FULL)
        elif not self.holds.is_held(HoldReason.DISK_FULL):
            self._hold(
                HoldReason.DISK_FULL,
                f"library {self.library}: {finding.free_bytes // MIB} MiB free, "
                f"below limits.min_free_mb = {self.floor.min_free_mb}",
            )

    def _hold(self, reason: HoldReason, detail: str) -> None:
        """Start `reason` (its first detail stays: it says what began the hold)."""
        if self.holds.is_held(reason):
            return
        log.warning("queue held", reason=str(reason), detail=detail, recheck_s=self.recheck_s)
        self.holds.hold(reason, detail, until=None)
        self._held.set()

    def _release(self, reason: HoldReason) -> None:
        if self.holds.is_held(reason):
            log.info("queue hold released", reason=str(reason))
            self.holds.release(reason)


def _probe_write(library: Path) -> None:
    """Create and remove a file in the temp folder: proof that the library takes files."""
    tmp_fd = open_tmp_dir(library)
    try:
        name = f"probe-{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        os.close(open_file(name, flags, dir_fd=tmp_fd, shown=library / TMP_DIRNAME / name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=tmp_fd)
    finally:
        os.close(tmp_fd)


def _is_mount_point(path: Path) -> bool:
    """Whether `path` is a mount point now (False when it cannot be opened)."""
    try:
        fd = os.open(path, _LIBRARY_FLAGS)
    except OSError:
        return False
    try:
        return _is_mount_point_fd(fd)
    finally:
        os.close(fd)


def _is_mount_point_fd(fd: int) -> bool:
    """A folder on another device than its parent, or the root itself, is a mount point."""
    here = os.fstat(fd)
    parent = os.stat("..", dir_fd=fd)
    return here.st_dev != parent.st_dev or here.st_ino == parent.st_ino
