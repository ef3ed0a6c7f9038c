"""Link-safe steps in folders other programs can write to too: the library and its temp dir.

Owns: opening a folder or a file by one name relative to a folder fd, refusing
a symbolic link at that name instead of following it (`O_NOFOLLOW`, plus
`O_DIRECTORY` for folders), and saying what was found there instead
(`UnsafePathError`). Callers keep the fd and act relative to it, so what was
checked is what gets used. The folder a walk starts from (the configured
library) is trusted as given; nothing here follows a link below it, and
nothing here decides what to do about one — that is the caller's business.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Literal

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC

BinaryMode = Literal["rb", "wb", "ab", "r+b"]


class UnsafePathError(OSError):
    """A name dlqd would have to follow a link through, or use a non-folder as a folder, to use.

    An OSError, so every filesystem edge maps it as it maps the others
    (`dlqd.errors.from_oserror`: FILESYSTEM_ERROR); `found` says what is there.
    """

    def __init__(self, path: Path, found: str) -> None:
        code = errno.ELOOP if found == "a symbolic link" else errno.ENOTDIR
        reason = "; dlqd never follows links here" if code == errno.ELOOP else ""
        super().__init__(code, f"{path} is {found}{reason}", str(path))
        self.path = path
        self.found = found


def open_dir(name: str | Path, *, dir_fd: int | None = None, shown: Path | None = None) -> int:
    """An fd on the folder `name` (relative to `dir_fd` if given); a link there is refused.

    `shown` is the path to name in the error (default `name`).
    """
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        raise _what_is_there(name, dir_fd, shown or Path(name), exc, want_dir=True) from None


def open_file(name: str, flags: int, *, dir_fd: int, shown: Path, mode: int = 0o666) -> int:
    """`os.open` of `name` relative to `dir_fd`, refusing a link at `name`."""
    try:
        return os.open(name, flags | _FILE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise _what_is_there(name, dir_fd, shown, exc, want_dir=False) from None


def is_link(name: str, *, dir_fd: int) -> bool:
    """Whether `name` in the folder `dir_fd` is a symbolic link (False when absent)."""
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return False


def open_in(dir_fd: int, name: str, mode: BinaryMode, *, shown: Path) -> BinaryIO:
    """`open(name, mode)` relative to the folder `dir_fd`, refusing a link at `name`."""
    return open(
        name, mode, opener=lambda name, flags: open_file(name, flags, dir_fd=dir_fd, shown=shown)
    )


def open_beneath(path: Path, mode: BinaryMode) -> BinaryIO:
    """`open(path, mode)`, refusing a link at `path` or at the folder holding it."""
    dir_fd = open_dir(path.parent)
    try:
        return open_in(dir_fd, path.name, mode, shown=path)
    finally:
        os.close(dir_fd)


def unlink_beneath(path: Path) -> None:
    """Remove the entry `path` (a link there itself, never its target); refuse a linked folder."""
    dir_fd = open_dir(path.parent)
    try:
        os.unlink(path.name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def describe(mode: int) -> str:
    """What kind of entry an `st_mode` is, for messages."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _what_is_there(
    name: str | Path, dir_fd: int | None, shown: Path, error: OSError, *, want_dir: bool
) -> OSError:
    """The error to raise for a refused open: what is at `name`, or the original error."""
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        return error  # changed again meanwhile
    if stat.S_ISLNK(mode):
        return UnsafePathError(shown, "a symbolic link")
    if want_dir and not stat.S_ISDIR(mode):
        return UnsafePathError(shown, f"{describe(mode)}, not a directory")
    return error
