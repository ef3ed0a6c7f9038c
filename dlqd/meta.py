"""Plain metadata records passed from the upstream source to fetch and finalize.

The source module builds these from the checked records of `upstream_schema`;
finalize and tags only read them. They hold no behaviour beyond derived display
strings, so every layer can be tested with hand-made instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class TrackMeta:
    """Everything naming and tagging need to know about one track of one album."""

    track_id: int
    title: str  # upstream title without the version
    version: str  # "" when the track has none, e.g. "Live"
    artists: tuple[str, ...]  # main artist first
    album_artist: str
    album: str
    album_id: int
    track_number: int
    track_total: int
    disc_number: int
    disc_total: int
    date: str  # "YYYY-MM-DD" or "" when unknown
    isrc: str = ""
    copyright: str = ""
    quality: str = "LOSSLESS"  # asked when resolved; what was delivered when finalized
    duration: int | None = None  # seconds, when the upstream says
    replay_gain_track: float | None = None
    peak_track: float | None = None
    replay_gain_album: float | None = None
    peak_album: float | None = None
    cover_url: str | None = None
    lyrics: str = ""  # the plain words, when they are to be embedded

    @property
    def display_title(self) -> str:
        """The title used in names and the TITLE tag: "Third Rail (Live)"."""
        return f"{self.title} ({self.version})" if self.version else self.title

    @property
    def display_artist(self) -> str:
        """All artists, main first, joined with ", "."""
        return ", ".join(self.artists)

    @property
    def year(self) -> str:
        return self.date[:4] if len(self.date) >= 4 else ""


@dataclass(frozen=True)
class Lyrics:
    """A track's words: plain `text`, and `synced` LRC lines ("[mm:ss.xx] line"), "" if none."""

    text: str
    synced: str


@dataclass(frozen=True)
class AlbumMeta:
    """An album and its tracks in disc/track order, every page already read."""

    album_id: int
    title: str
    artist: str
    tracks: tuple[TrackMeta, ...]
    cover_url: str | None = None


@dataclass(frozen=True)
class MediaPlan:
    """How to fetch one track's audio, as resolved from its manifest.

    `urls` are alternatives for a single-file stream (BTS); `segments` is the
    ordered init + media segment list of a DASH stream (concatenated in order).
    Exactly one of the two is non-empty. `presentation_s` is how long the
    stream lasts when the manifest says (a DASH MPD's
    `mediaPresentationDuration`): the integrity check holds the file to it.
    """

    mime_type: str
    urls: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    presentation_s: Decimal | None = None
