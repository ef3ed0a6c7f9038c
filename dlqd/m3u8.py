"""The extended M3U8 file of a playlist or mix job: its name, its text, and whose it is.

Owns the file's format: `#EXTM3U`, the line saying which playlist or mix
wrote it (`#DLQD-SOURCE:playlist <uuid>`), the playlist's title (`#PLAYLIST:`),
then per track `#EXTINF:<seconds>,<artist> - <title>` and the track's path
relative to the playlist file's folder. Pure: it never touches the filesystem —
`dlqd.finalize.write_playlist` writes what this renders — and never lets
upstream text break a line, so a title cannot add entries of its own.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from dlqd.naming import sanitize_component

SUFFIX = ".m3u8"
SOURCE_DIRECTIVE = "#DLQD-SOURCE:"
UNKNOWN_DURATION = -1  # what M3U players read as "length unknown"
HEAD_BYTES = 4096  # where the source line of a file dlqd wrote is looked for
# Characters that would end a line (or cannot be UTF-8 at all) inside a title or artist.
_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp", "Cs"})


@dataclass(frozen=True)
class PlaylistEntry:
    """One track of the file: its library-relative path and what `#EXTINF` says of it."""

    path: str  # posix, relative to the library
    duration: int | None  # seconds
    artist: str
    title: str


def source_line_value(job_type: str, target: int | str) -> str:
    """What the source line holds: "playlist <uuid>", "mix <id>"."""
    return f"{job_type} {target}"


def file_name(title: str, source: str = "") -> str:
    """`{title}.m3u8`, sanitised as the naming template's fields are.

    With `source`, the name used when `{title}.m3u8` belongs to another
    playlist or mix (or to the user): `{title} (playlist <uuid>).m3u8`.
    """
    stem = f"{title} ({source})" if source else title
    return sanitize_component(stem, SUFFIX)


def render(title: str, source: str, folder: PurePosixPath, entries: Sequence[PlaylistEntry]) -> str:
    """The whole file for a playlist kept in `folder` (relative to the library)."""
    # The source line first: `source_of` finds it in HEAD_BYTES whatever the title's length.
    lines = ["#EXTM3U", f"{SOURCE_DIRECTIVE}{one_line(source)}", f"#PLAYLIST:{one_line(title)}"]
    for entry in entries:
        duration = UNKNOWN_DURATION if entry.duration is None else entry.duration
        lines.append(f"#EXTINF:{duration},{one_line(entry.artist)} - {one_line(entry.title)}")
        lines.append(relative_entry(folder, entry.path))
    return "\n".join(lines) + "\n"


def relative_entry(folder: PurePosixPath, path: str) -> str:
    """`path` (library-relative) as seen from `folder`: `../Artist/Album/01 - Song.flac`.

    A result that would start with `#` (a comment to every player) starts
    with `./` instead.
    """
    base, target = folder.parts, PurePosixPath(path).parts
    shared = 0
    while shared < min(len(base), len(target) - 1) and base[shared] == target[shared]:
        shared += 1
    relative = "/".join([".."] * (len(base) - shared) + list(target[shared:]))
    return "./" + relative if relative.startswith("#") else relative


def source_of(head: bytes) -> str | None:
    """The source line's value in the first bytes of an M3U8 file, or None (not dlqd's)."""
    for line in head.decode("utf-8", errors="replace").splitlines()[:3]:
        if line.startswith(SOURCE_DIRECTIVE):
            return line[len(SOURCE_DIRECTIVE) :]
    return None


def one_line(text: str) -> str:
    """`text` with every line-breaking or control character made a space."""
    return "".join(" " if unicodedata.category(ch) in _LINE_BREAKING else ch for ch in text)
