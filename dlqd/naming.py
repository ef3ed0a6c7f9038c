"""Library-relative file names: the naming template, its one sanitiser, and the
extension sniffed from the audio bytes.

Owns: turning a `TrackMeta` into a safe `PurePosixPath` relative to the library
(DESIGN §7), keeping the names of one job's tracks distinct (`JobNames`), and
deciding the extension from magic bytes. Never touches the
filesystem, and never lets a component be empty, `.`, `..` or contain `/`, so
whatever upstream sends, the path stays inside the library.
"""

from __future__ import annotations

import difflib
import string
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

from dlqd.errors import DlqdError, ErrorCode
from dlqd.meta import TrackMeta

MAX_COMPONENT_BYTES = 200
TEMPLATE_FIELDS = frozenset(
    {
        "album_artist",
        "artist",
        "album",
        "title",
        "track",
        "disc",
        "discs",
        "year",
        "quality",
        "disc_prefix",
        "ext",
    }
)

_WINDOWS_RESERVED = '<>:"/\\|?*'
# Cc: C0/C1 controls incl. NUL; Zl/Zp: line/paragraph separators; Cs: lone
# surrogates, which cannot be encoded as a UTF-8 file name at all.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def _replace_unsafe_chars(text: str) -> str:
    """Replace every character that must not appear in a file name by "_"."""
    return "".join(
        "_" if ch in _WINDOWS_RESERVED or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
        for ch in text
    )


def _trim(text: str) -> str:
    """Strip surrounding whitespace, leading dots and trailing dots/spaces until stable.

    Leading dots would hide the file (or make `..`); Windows drops trailing dots
    and spaces, so two names differing only there would collide on a share.
    """
    while True:
        trimmed = text.strip().lstrip(".").rstrip(". ")
        if trimmed == text:
            return text
        text = trimmed


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` that fits in `max_bytes` of UTF-8, never half a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max(0, max_bytes)].decode("utf-8", errors="ignore")


def sanitize_component(text: str, suffix: str = "") -> str:
    """Make one path component safe; `suffix` (e.g. ".flac") survives any cut.

    The result is never empty, never starts with a dot, holds no `/`, NUL or
    control character, and is at most MAX_COMPONENT_BYTES of UTF-8.
    """
    suffix = _replace_unsafe_chars(suffix)
    budget = MAX_COMPONENT_BYTES - len(suffix.encode("utf-8"))
    stem = _trim(_cut_utf8(_trim(_replace_unsafe_chars(text)), budget)) or "_"
    return stem + suffix


def numbered_name(name: str, number: int) -> str:
    """`name (number).ext` for the rename conflict mode, still within the byte limit."""
    path = PurePosixPath(name)
    suffix = path.suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    return sanitize_component(stem, f" ({number}){suffix}")


def check_template(template: str) -> frozenset[str]:
    """The fields a template uses; ValueError unless each is a known plain name.

    Attribute and index lookups (`{album.x}`, `{album[0]}`) are refused so a
    template can only ever read the fields listed in DESIGN §7. Meant for the
    config loader as well, so a bad template fails at start-up, not per track.
    The message says what is wrong without repeating the template (the
    caller shows it) and lists the known fields once.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"cannot be read: {exc}") from None
    if any(spec and "{" in spec for _literal, _name, spec, _conv in parsed):
        raise ValueError("nested fields are not supported")
    used = frozenset(name for _literal, name, _spec, _conv in parsed if name is not None)
    unknown = sorted(used - TEMPLATE_FIELDS)
    if unknown:
        named = ", ".join("{" + name + "}" for name in unknown)
        guesses = [difflib.get_close_matches(name, TEMPLATE_FIELDS, n=1) for name in unknown]
        hint = ", ".join("{" + guess[0] + "}" for guess in guesses if guess)
        raise ValueError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {named}"
            + (f" (did you mean {hint}?)" if hint else "")
            + "; the fields are "
            + ", ".join("{" + name + "}" for name in sorted(TEMPLATE_FIELDS))
        )
    try:
        template.format(**_SAMPLE_FIELDS)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"does not format: {exc}") from None
    return used


# One sample per field, of the type `template_fields` gives it, for the trial format
# above: a spec that cannot work (`{title:02d}`) fails at start-up, not per track.
_SAMPLE_FIELDS: dict[str, str | int] = {
    "album_artist": "Album Artist",
    "artist": "Artist",
    "album": "Album",
    "title": "Title",
    "track": 1,
    "disc": 1,
    "discs": 2,
    "year": "2024",
    "quality": "LOSSLESS",
    "disc_prefix": "1-",
    "ext": "flac",
}


def template_fields(meta: TrackMeta, ext: str) -> dict[str, str | int]:
    """The template's field values, text already unable to introduce a `/`."""
    text_fields = {
        "album_artist": meta.album_artist,
        "artist": meta.display_artist,
        "album": meta.album,
        "title": meta.display_title,
        "year": meta.year,
        "quality": meta.quality,
        "disc_prefix": f"{meta.disc_number}-" if meta.disc_total > 1 else "",
        "ext": ext,
    }
    fields: dict[str, str | int] = {k: _replace_unsafe_chars(v) for k, v in text_fields.items()}
    fields.update(track=meta.track_number, disc=meta.disc_number, discs=meta.disc_total)
    return fields


def render_relative_path(template: str, meta: TrackMeta, ext: str) -> PurePosixPath:
    """Render the naming template into a sanitised path relative to the library.

    Raises ValueError for a bad template (a configuration error, not a track's).
    """
    try:
        has_ext = "ext" in check_template(template)
    except ValueError as exc:
        raise ValueError(f"naming template {template!r}: {exc}") from None
    try:
        rendered = template.format_map(template_fields(meta, ext))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"naming template {template!r}: {exc}") from exc
    *dirs, last = rendered.split("/")
    suffix = "." + ext
    if has_ext and last.endswith(suffix):
        last = last[: -len(suffix)]  # cut the stem, keep the extension
    elif has_ext:
        suffix = ""  # {ext} sits elsewhere; the last component is plain text
    return PurePosixPath(*(sanitize_component(d) for d in dirs), sanitize_component(last, suffix))


class JobNames:
    """The library names one job's tracks hold, so that two of them never share one.

    Two tracks of a job can render to the same path (a template without
    `{track}`). The first of them in album order keeps it, the k-th gets
    ` (k)`: a rule of the album alone, not of which download finished first,
    so a re-run gives each track the same name again (and
    `overwrite_if_different` recognises its file). A name that another track
    of the job already holds is passed over for the next number. Not
    thread-safe: finalize uses it under its library lock.
    """

    def __init__(self, tracks: Sequence[TrackMeta] = (), held: Iterable[str] = ()) -> None:
        self._tracks = tracks
        self._held = set(held)
        # (template, ext) -> rendered path -> ids of the tracks rendering to it, album order
        self._namesakes: dict[tuple[str, str], dict[PurePosixPath, list[int]]] = {}

    def name_for(self, template: str, meta: TrackMeta, ext: str) -> PurePosixPath:
        """The path `meta` is to take within its job (not yet held: see `hold`)."""
        wanted = render_relative_path(template, meta, ext)
        namesakes = self._rendered(template, ext).get(wanted, [])
        number = namesakes.index(meta.track_id) + 1 if meta.track_id in namesakes else 1
        while True:
            name = numbered_name(wanted.name, number) if number > 1 else wanted.name
            candidate = wanted.with_name(name)
            if candidate.as_posix() not in self._held:
                return candidate
            number += 1

    def holds(self, path: PurePosixPath) -> bool:
        return path.as_posix() in self._held

    def hold(self, path: PurePosixPath) -> None:
        """Record that a track of this job now has `path` (written there, or kept what was)."""
        self._held.add(path.as_posix())

    def _rendered(self, template: str, ext: str) -> dict[PurePosixPath, list[int]]:
        """Every track's path for `ext`, rendered once per job: an album can hold thousands."""
        key = (template, ext)
        if key not in self._namesakes:
            by_path: dict[PurePosixPath, list[int]] = {}
            for track in self._tracks:
                by_path.setdefault(render_relative_path(template, track, ext), []).append(
                    track.track_id
                )
            self._namesakes[key] = by_path
        return self._namesakes[key]


def detect_extension(head: bytes) -> str:
    """The file extension from the first bytes of the audio, never from the URL."""
    if head[:4] == b"fLaC":
        return "flac"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:3] == b"ID3":
        return "mp3"
    # MPEG audio frame sync: 11 set bits, then a version other than "reserved"
    # (01) and a layer other than 00 — the latter rules out ADTS AAC, which
    # shares the sync word but is not an MP3.
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        version = (head[1] >> 3) & 0b11
        layer = (head[1] >> 1) & 0b11
        if version != 0b01 and layer != 0b00:
            return "mp3"
    raise DlqdError(
        ErrorCode.UNSUPPORTED_FORMAT,
        f"unrecognised audio container (first bytes {head[:8].hex() or 'none'})",
    )
