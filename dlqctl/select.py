"""Which jobs `dlqctl ls` shows: the client-side filters and `--since`.

Owns `--type`, `--artist`, `--album` (case-insensitive substrings) and
`--since DURATION|DATE`; `--status` is asked of the daemon itself.
Never: talks to the daemon or formats anything.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ACTIVE = ("queued", "paused", "processing")


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds for `2h`, `3d`, `1h30m`, `2026-11-01` (local midnight) or an ISO time."""
    now = time.time() if now is None else now
    compact = text.strip().lower()
    if compact and _DURATION_PART.sub("", compact) == "":
        seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(compact))
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 30m, 2h, 3d, 1w) nor a date (2026-11-01)"
        ) from None
    return moment.timestamp()  # naive dates and times are local, as the user reads them


def epoch(rfc3339: Any) -> float | None:
    if not isinstance(rfc3339, str):
        return None
    try:
        return datetime.fromisoformat(rfc3339).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class JobFilter:
    """The client-side part of `ls`; empty fields match everything."""

    types: Collection[str] = ()
    artist: str = ""
    album: str = ""
    since: float | None = None

    def matches(self, job: dict[str, Any]) -> bool:
        if self.types and job.get("type") not in self.types:
            return False
        if self.artist and self.artist.casefold() not in str(job.get("artist", "")).casefold():
            return False
        if self.album and self.album.casefold() not in album_of(job).casefold():
            return False
        return self.since is None or _active_since(job, self.since)


def album_of(job: dict[str, Any]) -> str:
    """The album a job belongs to: its own title for an album job, else its `album` field."""
    if job.get("type") == "album":
        return str(job.get("title", ""))
    return str(job.get("album") or "")


def _active_since(job: dict[str, Any], since: float) -> bool:
    """Still active, or created, started or finished at or after `since`."""
    if job.get("status") in ACTIVE:
        return True
    moments = (epoch(job.get(key)) for key in ("created_at", "started_at", "finished_at"))
    return any(moment is not None and moment >= since for moment in moments)
