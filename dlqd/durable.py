"""fsync helpers shared by the two writers of durable files: the journal and finalize.

A rename or a new directory entry is durable only once its directory is
fsynced; a file's bytes only once the file is.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """fsync a file, or with `directory=True` a directory (making its entries durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path, directory=True)
