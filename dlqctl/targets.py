"""What `dlqctl add` accepts as a target: an id or a TIDAL share link.

Owns the link forms (`tidal.com/browse/album/ID`, `tidal.com/album/ID`,
`listen.tidal.com/track/ID`, `tidal.com/browse/artist/ID`,
`tidal.com/browse/playlist/UUID`, `tidal.com/mix/ID`, with or without scheme,
`www.`, query string or fragment, and trailing parts such as `/u`), the id
range of DESIGN §3, and the forms of a playlist's UUID and a mix's id (the
daemon's own patterns).
Never: fetches a link, or guesses a type the user did not ask for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from dlqd.protocol import MAX_TARGET_ID, MIX_ID, PLAYLIST_UUID

_LINK = re.compile(
    r"(?:https?://)?(?:www\.|listen\.)?tidal\.com/(?P<path>[^?#]*)(?:[?#].*)?", re.IGNORECASE
)
_LINK_KINDS = ("album", "track", "artist", "playlist", "mix")  # what a link may name
_KIND_AND_ID = re.compile(
    rf"(?:^|/)(?P<kind>{'|'.join(_LINK_KINDS)})/(?P<id>[^/]+)(?=/|$)", re.IGNORECASE
)


class BadTarget(ValueError):
    """An input that is neither an id nor a share link of the asked type."""


def target_id(text: str) -> int:
    """A positive id below 2^31, given as digits."""
    if not text.isascii() or not text.isdigit():
        raise BadTarget(f"{text!r} is not an integer id")
    value = int(text)
    if not 1 <= value <= MAX_TARGET_ID:
        raise BadTarget(f"{value} is outside 1..{MAX_TARGET_ID}")
    return value


def playlist_uuid(text: str) -> str:
    """A playlist's UUID, lower-cased as the daemon stores it."""
    if not PLAYLIST_UUID.fullmatch(text):
        raise BadTarget(f"{text!r} is not a playlist UUID (such as 3f9c2b7e-5a1d-4e8b-…)")
    return text.lower()


def mix_id(text: str) -> str:
    if not MIX_ID.fullmatch(text):
        raise BadTarget(f"{text!r} is not a mix id (1 to 64 letters, digits, - or _)")
    return text


def _target_of(text: str, kind: str) -> int | str:
    """The target an id of a job of type `kind` is: a UUID, a mix id, else a number."""
    if kind == "playlist":
        return playlist_uuid(text)
    if kind == "mix":
        return mix_id(text)
    return target_id(text)


def parse_target(text: str, kind: str) -> int | str:
    """The target in `text` (an id or a share link) for a job of type `kind`."""
    text = text.strip()
    link = _LINK.fullmatch(text)
    if link is None:
        if "/" in text or "." in text:
            raise BadTarget(f"{text!r} is not a TIDAL {kind} link")
        return _target_of(text, kind)
    found = {m["kind"].lower(): m["id"] for m in _KIND_AND_ID.finditer(link["path"])}
    if kind not in found:
        other = next((k for k in _LINK_KINDS if k in found), None)
        hint = f" (it is {'an' if other == 'album' else 'a'} {other} link)" if other else ""
        raise BadTarget(f"{text!r} is not a TIDAL {kind} link{hint}")
    return _target_of(found[kind], kind)


def read_targets(lines: Iterable[str]) -> list[str]:
    """Targets from stdin: whitespace-separated; a word starting with `#` begins a comment."""
    found: list[str] = []
    for line in lines:
        for word in line.split():
            if word.startswith("#"):
                break
            found.append(word)
    return found
