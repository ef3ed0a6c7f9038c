"""The upstream's JSON shapes of DESIGN §6, declared once, and the one parser that checks them.

Owns: every field dlqd reads from `/info/`, `/album/`, `/track/`, `/lyrics/`,
`/playlist/`, `/mix/`, `/artist/` and the BTS manifest — its JSON key, type and
range — and turning a parsed JSON mapping into the typed records below.
Nothing else reads the upstream's JSON; a field not declared here is never
read. Pure: never does I/O, never raises anything but
`DlqdError(UPSTREAM_BAD_RESPONSE)`, and never puts a raw upstream value into a
message unescaped (`quote`).

One rule set for every field, so a hostile upstream cannot reach the journal,
the file names or the tags with a value they cannot hold:
- absent or null: the field's default; a field without a default is refused;
- the wrong JSON type (a string where a number belongs, a bool for an int):
  treated as absent, as before this module — upstreams null or vary what they
  do not know;
- a string must encode as UTF-8 (no lone surrogates, JSON `"\\ud800"`) and fit
  its length cap, else the answer is refused, whichever field holds it;
- an integer out of range is refused (ids, positions, counts), except the ones
  only shown or estimated from (bit depth, sample rate, duration), which are dropped;
- a gain or peak that is not finite or not in its range is dropped: it only
  decorates the tags, and the track is still good;
- a list longer than its cap is refused.
"""

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, Protocol, TypeVar

from dlqd.errors import DlqdError, ErrorCode

MAX_ID = 2**31 - 1  # ids and positions: 1..MAX_ID
MAX_VOLUMES = 1000
MAX_TEXT_CHARS = 4096  # titles, names, copyright lines
MAX_URL_CHARS = 16384  # signed media URLs are long, but not this long
MAX_ARTISTS = 1000  # per track or album
MAX_URLS = 100  # mirrors in one BTS manifest
MAX_LYRICS_CHARS = 256 * 1024  # a song's words, synced or not: far more than any song has
MAX_RELEASES = 10_000  # of one artist: composers' catalogues run to thousands
QUOTE_CHARS = 60

_R = TypeVar("_R")


# -- messages ----------------------------------------------------------------------


def quote(value: object) -> str:
    """`value` fit for an error message or a log line: repr-like, ASCII only, truncated."""
    if isinstance(value, str):
        text = ascii(value[: QUOTE_CHARS + 1])  # enough to know it was cut
    elif isinstance(value, bool | float) or value is None:
        text = repr(value)
    elif isinstance(value, int):
        # Digits of a huge int are noise (and past 4300 digits `repr` refuses).
        text = repr(value) if value.bit_length() <= 192 else f"<{value.bit_length()}-bit integer>"
    else:
        return _describe(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


def _describe(value: object) -> str:
    """The JSON type of `value`, for 'is not a string' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return "an unknown value"


class _Refused(Exception):
    """A field breaks its rule; the message starts with the field's path."""


class _Absent(Exception):
    """The value has the wrong type: the field is treated as if it were missing."""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# -- rules: what one field may hold --------------------------------------------------


class Rule(Protocol):
    def read(self, value: object, path: str) -> Any:
        """The checked value; raises `_Absent` (treat as missing) or `_Refused`."""
        ...


def _encodes(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Text:
    """A string; `strip` trims it; one not matching `shape` is treated as absent."""

    max_chars: int | None = MAX_TEXT_CHARS
    strip: bool = False
    shape: re.Pattern[str] | None = None

    def read(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            raise _Absent
        if self.max_chars is not None and len(value) > self.max_chars:
            raise _Refused(f"{path} is longer than {self.max_chars} characters")
        if not _encodes(value):
            raise _Refused(f"{path} {quote(value)} is not valid UTF-8 (a lone surrogate)")
        if self.shape is not None and not self.shape.match(value):
            raise _Absent
        return value.strip() if self.strip else value


@dataclass(frozen=True)
class Date:
    """A date, or a timestamp cut to its date: "YYYY-MM-DD"; anything else is absent."""

    text: Text = Text(max_chars=64, shape=re.compile(r"\d{4}-\d{2}-\d{2}"))

    def read(self, value: object, path: str) -> str:
        return self.text.read(value, path)[:10]


@dataclass(frozen=True)
class Int:
    """An integer in lo..hi; out of range is refused, or dropped when not `strict`."""

    lo: int
    hi: int
    strict: bool = True

    def read(self, value: object, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Absent
        if not self.lo <= value <= self.hi:
            if not self.strict:
                raise _Absent
            raise _Refused(f"{path} {quote(value)} is outside {self.lo}..{self.hi}")
        return value


@dataclass(frozen=True)
class Real:
    """A finite number in lo..hi; anything else is dropped."""

    lo: float
    hi: float

    def read(self, value: object, path: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Absent
        # NaN compares false; a huge int compares exactly, before float() could overflow.
        if not self.lo <= value <= self.hi:
            raise _Absent
        return float(value)


@dataclass(frozen=True)
class Obj:
    """A nested object, parsed into `record`."""

    record: type[Any]

    def read(self, value: object, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise _Absent
        return _parse(self.record, value, path)


@dataclass(frozen=True)
class ListOf:
    """A list of `element`s; a wrong-typed element is skipped if `skip_absent`, else refused."""

    element: Rule
    max_items: int
    min_items: int = 0
    skip_absent: bool = True

    def read(self, value: object, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Absent
        if len(value) > self.max_items:
            raise _Refused(f"{path} has more than {self.max_items} items")
        items = []
        for index, element in enumerate(value):
            try:
                items.append(self.element.read(element, f"{path}[{index}]"))
            except _Absent:
                if not self.skip_absent:
                    raise _Refused(f"{path}[{index}] is {_describe(element)}") from None
        if len(items) < self.min_items:
            raise _Refused(f"{path} has fewer than {self.min_items} items")
        return tuple(items)


@dataclass(frozen=True)
class From:
    """Where a record field comes from: its JSON key and the rule its value obeys."""

    key: str
    rule: Rule


ID = Int(1, MAX_ID)
POSITION = Int(1, MAX_ID)
COUNT = Int(0, MAX_ID)  # limits.max_job_tracks is checked by `parse_album_page`
VOLUMES = Int(0, MAX_VOLUMES)
TEXT = Text()
STRIPPED = Text(strip=True)
SHORT = Text(max_chars=256)
DATE = Date()
# Cover ids are UUIDs; one that is not cannot be trusted inside the cover URL's path.
COVER = Text(max_chars=64, shape=re.compile(r"[0-9A-Fa-f-]{1,64}\Z"))
URL = Text(max_chars=MAX_URL_CHARS)
GAIN_DB = Real(-64.0, 64.0)
PEAK = Real(0.0, 16.0)  # linear amplitude; true peaks may pass 1.0
BIT_DEPTH = Int(1, 64, strict=False)
# "LOSSLESS", "HI_RES_LOSSLESS"...: shown and put in file names, so anything else is absent.
QUALITY_NAME = Text(max_chars=256, shape=re.compile(r"[A-Z][A-Z0-9_]{0,31}\Z"))
DURATION_S = Int(1, 7 * 24 * 3600, strict=False)  # only sizes estimates: out of range is dropped
SAMPLE_RATE = Int(1, 1_000_000, strict=False)
# Playlist UUIDs and mix ids are sent back as query values and named in messages
# and file names: only the characters they are made of, and never long.
PLAYLIST_UUID = Text(max_chars=256, shape=re.compile(r"[0-9A-Fa-f-]{1,64}\Z"))
MIX_ID = Text(max_chars=256, shape=re.compile(r"[0-9A-Za-z_-]{1,64}\Z"))
# "ALBUM", "EP", "SINGLE" (others are skipped by Source): a word, anything else is absent.
RELEASE_TYPE = Text(max_chars=256, shape=re.compile(r"[A-Z][A-Z0-9_]{0,31}\Z"))


# -- records: the shapes of §6 -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UpstreamArtist:
    id: Annotated[int | None, From("id", ID)] = None
    name: Annotated[str, From("name", STRIPPED)] = ""
    type: Annotated[str, From("type", SHORT)] = ""  # "MAIN" | "FEATURED" | ...


ARTISTS = ListOf(Obj(UpstreamArtist), MAX_ARTISTS)


@dataclass(frozen=True, kw_only=True)
class UpstreamTrack:
    """One track's metadata: an `/album/` item, or the body of `/info/`."""

    id: Annotated[int, From("id", ID)]
    title: Annotated[str, From("title", TEXT)]
    version: Annotated[str, From("version", STRIPPED)] = ""
    track_number: Annotated[int, From("trackNumber", POSITION)]
    volume_number: Annotated[int, From("volumeNumber", POSITION)] = 1
    duration: Annotated[int | None, From("duration", DURATION_S)] = None  # seconds
    isrc: Annotated[str, From("isrc", STRIPPED)] = ""
    copyright: Annotated[str, From("copyright", STRIPPED)] = ""
    replay_gain: Annotated[float | None, From("replayGain", GAIN_DB)] = None
    peak: Annotated[float | None, From("peak", PEAK)] = None
    stream_start_date: Annotated[str, From("streamStartDate", DATE)] = ""
    artist: Annotated[UpstreamArtist | None, From("artist", Obj(UpstreamArtist))] = None
    artists: Annotated[tuple[UpstreamArtist, ...], From("artists", ARTISTS)] = ()


@dataclass(frozen=True, kw_only=True)
class AlbumRef:
    """The album a track belongs to, as `/info/` and listings name it."""

    id: Annotated[int, From("id", ID)]
    title: Annotated[str, From("title", TEXT)] = ""
    cover: Annotated[str, From("cover", COVER)] = ""


@dataclass(frozen=True, kw_only=True)
class TrackInfo(UpstreamTrack):
    """`/info/`: a track and the album it belongs to."""

    album: Annotated[AlbumRef, From("album", Obj(AlbumRef))]


@dataclass(frozen=True)
class Entries:
    """`items` of an `/album/` or `/playlist/` page: tracks parsed into `record`, others None.

    Each entry is `{"type", "item"}`. Only entries of type "track" are read;
    the others (videos) share the listing and keep their place so that paging
    advances by the page's full length.
    """

    record: type[Any]

    def read(self, value: object, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Absent
        entries: list[Any] = []
        for index, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                raise _Refused(f"{path}[{index}] is {_describe(entry)}, not an object")
            item = entry.get("item")
            if entry.get("type") != "track" or not isinstance(item, Mapping):
                entries.append(None)
            else:
                entries.append(_parse(self.record, item, f"{path}[{index}].item"))
        return tuple(entries)


@dataclass(frozen=True, kw_only=True)
class AlbumPage:
    """One `/album/` page: the album's header and one page of its listing."""

    id: Annotated[int, From("id", ID)]
    title: Annotated[str, From("title", TEXT)]
    number_of_tracks: Annotated[int, From("numberOfTracks", COUNT)]
    number_of_volumes: Annotated[int, From("numberOfVolumes", VOLUMES)] = 0  # 0: unknown
    release_date: Annotated[str, From("releaseDate", DATE)] = ""
    copyright: Annotated[str, From("copyright", STRIPPED)] = ""
    cover: Annotated[str, From("cover", COVER)] = ""
    artist: Annotated[UpstreamArtist | None, From("artist", Obj(UpstreamArtist))] = None
    artists: Annotated[tuple[UpstreamArtist, ...], From("artists", ARTISTS)] = ()
    items: Annotated[tuple[UpstreamTrack | None, ...], From("items", Entries(UpstreamTrack))]

    @property
    def tracks(self) -> tuple[UpstreamTrack, ...]:
        return tuple(item for item in self.items if item is not None)


@dataclass(frozen=True, kw_only=True)
class PlaybackInfo:
    """`/track/`: how to fetch one track, and the gains of that stream."""

    asset_presentation: Annotated[str, From("assetPresentation", SHORT)]
    manifest_mime_type: Annotated[str, From("manifestMimeType", SHORT)]
    manifest: Annotated[str, From("manifest", Text(max_chars=None))]  # the body is capped
    audio_quality: Annotated[str | None, From("audioQuality", QUALITY_NAME)] = None
    bit_depth: Annotated[int | None, From("bitDepth", BIT_DEPTH)] = None
    sample_rate: Annotated[int | None, From("sampleRate", SAMPLE_RATE)] = None
    track_replay_gain: Annotated[float | None, From("trackReplayGain", GAIN_DB)] = None
    track_peak: Annotated[float | None, From("trackPeakAmplitude", PEAK)] = None
    album_replay_gain: Annotated[float | None, From("albumReplayGain", GAIN_DB)] = None
    album_peak: Annotated[float | None, From("albumPeakAmplitude", PEAK)] = None


@dataclass(frozen=True, kw_only=True)
class BtsManifest:
    """The decoded `application/vnd.tidal.bts` manifest."""

    encryption_type: Annotated[str, From("encryptionType", SHORT)]
    urls: Annotated[
        tuple[str, ...], From("urls", ListOf(URL, MAX_URLS, min_items=1, skip_absent=False))
    ]
    mime_type: Annotated[str, From("mimeType", SHORT)] = ""
    codecs: Annotated[str | None, From("codecs", SHORT)] = None


@dataclass(frozen=True, kw_only=True)
class UpstreamLyrics:
    """`/lyrics/`'s `lyrics` object: plain words, and synced `[mm:ss.xx] line` subtitles."""

    track_id: Annotated[int | None, From("trackId", ID)] = None
    provider: Annotated[str, From("lyricsProvider", SHORT)] = ""
    text: Annotated[str, From("lyrics", Text(max_chars=MAX_LYRICS_CHARS))] = ""
    subtitles: Annotated[str, From("subtitles", Text(max_chars=MAX_LYRICS_CHARS))] = ""


@dataclass(frozen=True, kw_only=True)
class ListedTrack:
    """A track as a playlist or a mix lists it: which track, on which album, as it is called.

    The title, version and duration are kept so that a track whose metadata
    cannot be had (its album and `/info/` answer 404) is still named in the job.
    """

    id: Annotated[int, From("id", ID)]
    album: Annotated[AlbumRef, From("album", Obj(AlbumRef))]
    title: Annotated[str, From("title", TEXT)] = ""
    version: Annotated[str, From("version", STRIPPED)] = ""
    duration: Annotated[int | None, From("duration", DURATION_S)] = None


@dataclass(frozen=True)
class MixEntries:
    """`items` of `/mix/`: bare media objects; those with an `album` object are tracks.

    Anything else (a video, whose `album` is null) is None; an entry that is
    not an object is refused, as in a page's `items`.
    """

    def read(self, value: object, path: str) -> tuple[ListedTrack | None, ...]:
        if not isinstance(value, list):
            raise _Absent
        entries: list[ListedTrack | None] = []
        for index, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                raise _Refused(f"{path}[{index}] is {_describe(entry)}, not an object")
            if isinstance(entry.get("album"), Mapping):
                entries.append(_parse(ListedTrack, entry, f"{path}[{index}]"))
            else:
                entries.append(None)
        return tuple(entries)


@dataclass(frozen=True, kw_only=True)
class PlaylistHeader:
    uuid: Annotated[str | None, From("uuid", PLAYLIST_UUID)] = None
    title: Annotated[str, From("title", STRIPPED)]
    number_of_tracks: Annotated[int, From("numberOfTracks", COUNT)]


@dataclass(frozen=True, kw_only=True)
class PlaylistPage:
    """One `/playlist/` page: the playlist's header and one page of its listing."""

    playlist: Annotated[PlaylistHeader, From("playlist", Obj(PlaylistHeader))]
    items: Annotated[tuple[ListedTrack | None, ...], From("items", Entries(ListedTrack))]

    @property
    def tracks(self) -> tuple[ListedTrack, ...]:
        return tuple(item for item in self.items if item is not None)


@dataclass(frozen=True, kw_only=True)
class MixHeader:
    id: Annotated[str | None, From("id", MIX_ID)] = None
    title: Annotated[str, From("title", STRIPPED)]


@dataclass(frozen=True, kw_only=True)
class MixAnswer:
    """`/mix/`: the mix's header and all of its items, in one answer."""

    mix: Annotated[MixHeader, From("mix", Obj(MixHeader))]
    items: Annotated[tuple[ListedTrack | None, ...], From("items", MixEntries())]

    @property
    def tracks(self) -> tuple[ListedTrack, ...]:
        return tuple(item for item in self.items if item is not None)


@dataclass(frozen=True, kw_only=True)
class UpstreamRelease:
    """One album of `/artist/?f=`: an album, an EP or a single (by `type`)."""

    id: Annotated[int, From("id", ID)]
    title: Annotated[str, From("title", TEXT)]
    type: Annotated[str, From("type", RELEASE_TYPE)] = ""
    number_of_tracks: Annotated[int, From("numberOfTracks", COUNT)]
    release_date: Annotated[str, From("releaseDate", DATE)] = ""


@dataclass(frozen=True, kw_only=True)
class ReleaseList:
    items: Annotated[
        tuple[UpstreamRelease, ...],
        From("items", ListOf(Obj(UpstreamRelease), MAX_RELEASES, skip_absent=False)),
    ]


@dataclass(frozen=True, kw_only=True)
class ArtistReleases:
    """`/artist/?f=ID&skip_tracks=true`: the artist's releases (its top `tracks` are not read)."""

    albums: Annotated[ReleaseList, From("albums", Obj(ReleaseList))]


@dataclass(frozen=True, kw_only=True)
class ArtistAnswer:
    """`/artist/?id=ID`: who the artist is (its `cover` is not read)."""

    artist: Annotated[UpstreamArtist, From("artist", Obj(UpstreamArtist))]


# -- the parser ----------------------------------------------------------------------


class _Column(NamedTuple):
    name: str  # the record's attribute
    key: str  # the JSON key
    read: Callable[[object, str], Any]  # the rule's
    required: bool


_TABLES: dict[type[Any], tuple[_Column, ...]] = {}


def _columns(record: type[Any]) -> tuple[_Column, ...]:
    """The field table of `record`, read once from its annotations."""
    if record not in _TABLES:
        hints = typing.get_type_hints(record, include_extras=True)
        columns = []
        for field in dataclasses.fields(record):
            source = next(m for m in hints[field.name].__metadata__ if isinstance(m, From))
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            columns.append(_Column(field.name, source.key, source.rule.read, required))
        _TABLES[record] = tuple(columns)
    return _TABLES[record]


def _parse(record: type[_R], data: Mapping[Any, Any], path: str) -> _R:
    values: dict[str, Any] = {}
    for name, key, read, required in _columns(record):
        raw = data.get(key)
        if raw is not None:
            try:
                values[name] = read(raw, f"{path}.{key}" if path else key)
                continue
            except _Absent:
                pass
        if required:
            problem = "is missing" if raw is None else f"is {_describe(raw)}"
            raise _Refused(f"{_join(path, key)} {problem}")
    return record(**values)


def parse(record: type[_R], data: object, where: str) -> _R:
    """`data` checked into `record`, or `UPSTREAM_BAD_RESPONSE` naming `where` and the field."""
    try:
        if not isinstance(data, Mapping):
            raise _Refused(f"{_describe(data)}, not an object")
        return _parse(record, data, "")
    except _Refused as exc:
        raise DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{where}: {exc}") from None


def parse_album_page(data: object, *, album_id: int, max_tracks: int) -> AlbumPage:
    """One `/album/` page; an album or page listing more than `max_tracks` is refused.

    The listing's length is checked before its items are read, so a page of a
    million entries costs nothing.
    """
    where = f"/album/ {album_id}"
    _check_listing_length(data, where, max_tracks)
    page = parse(AlbumPage, data, where)
    _check_claimed_tracks(page.number_of_tracks, where, max_tracks)
    return page


def parse_playlist_page(data: object, *, uuid: str, max_tracks: int) -> PlaylistPage:
    """One `/playlist/` page, refused as an album page is; a header naming another playlist too."""
    where = f"/playlist/ {quote(uuid)}"
    _check_listing_length(data, where, max_tracks)
    page = parse(PlaylistPage, data, where)
    _check_claimed_tracks(page.playlist.number_of_tracks, where, max_tracks)
    if page.playlist.uuid is not None and page.playlist.uuid.lower() != uuid.lower():
        raise DlqdError(
            ErrorCode.UPSTREAM_BAD_RESPONSE,
            f"{where}: answered with playlist {quote(page.playlist.uuid)}",
        )
    return page


def parse_mix(data: object, *, mix_id: str, max_tracks: int) -> MixAnswer:
    """The `/mix/` answer; refused if it lists over `max_tracks` items or is another mix's."""
    where = f"/mix/ {quote(mix_id)}"
    _check_listing_length(data, where, max_tracks)
    answer = parse(MixAnswer, data, where)
    if answer.mix.id is not None and answer.mix.id != mix_id:
        raise DlqdError(
            ErrorCode.UPSTREAM_BAD_RESPONSE, f"{where}: answered with mix {quote(answer.mix.id)}"
        )
    return answer


def _check_listing_length(data: object, where: str, max_tracks: int) -> None:
    """Refuse an `items` list longer than `max_tracks`, before any item is read."""
    entries = data.get("items") if isinstance(data, Mapping) else None
    if isinstance(entries, list) and len(entries) > max_tracks:
        raise DlqdError(
            ErrorCode.UPSTREAM_BAD_RESPONSE,
            f"{where}: a page lists {len(entries)} items, more than "
            f"limits.max_job_tracks ({max_tracks})",
        )


def _check_claimed_tracks(claimed: int, where: str, max_tracks: int) -> None:
    if claimed > max_tracks:
        raise DlqdError(
            ErrorCode.UPSTREAM_BAD_RESPONSE,
            f"{where}: claims {claimed} tracks, more than limits.max_job_tracks ({max_tracks})",
        )
