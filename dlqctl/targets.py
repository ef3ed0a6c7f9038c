"""What `dlqctl add` accepts as a target: a numeric id or a TIDAL share link.

Owns the link forms (`tidal.com/browse/album/ID`, `tidal.com/album/ID`,
`listen.tidal.com/track/ID`, with or without scheme, `www.`, query string or
fragment, and trailing parts such as `/u`) and the id range of DESIGN §3.
Never: fetches a link, or guesses a type the user did not ask for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_TARGET_ID = 2**31 - 1
_LINK = re.compile(
    r"(?:https?://)?(?:www\.|listen\.)?tidal\.com/(?P<path>[^?#]*)(?:[?#].*)?", re.IGNORECASE
)
_KIND_AND_ID = re.compile(r"(?:^|/)(?P<kind>[a-z]+)/(?P<id>[0-9]+)(?=/|$)", re.IGNORECASE)


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


def parse_target(text: str, kind: str) -> int:
    """The id in `text` (an id or a share link) for a job of type `kind`."""
    text = text.strip()
    link = _LINK.fullmatch(text)
    if link is None:
        if "/" in text or "." in text:
            raise BadTarget(f"{text!r} is not a TIDAL {kind} link")
        return target_id(text)
    found = {m["kind"].lower(): m["id"] for m in _KIND_AND_ID.finditer(link["path"])}
    if kind not in found:
        other = next((k for k in ("album", "track") if k in found), None)
        hint = f" (it is {'an' if other == 'album' else 'a'} {other} link)" if other else ""
        raise BadTarget(f"{text!r} is not a TIDAL {kind} link{hint}")
    return target_id(found[kind])


def read_targets(lines: Iterable[str]) -> list[str]:
    """Targets from stdin: whitespace-separated; a word starting with `#` begins a comment."""
    found: list[str] = []
    for line in lines:
        for word in line.split():
            if word.startswith("#"):
                break
            found.append(word)
    return found
