"""The upstream API of DESIGN §6: metadata, album paging, playback plans, covers, failover.

Owns the daemon's one `httpx.AsyncClient` and the `MediaClient` (dlqd.transfer)
that shares its TLS trust, identity and connect timeout, the order in which upstream bases
are tried (those the `UpstreamCircuit` counts as up, in order; none at all
while it holds the queue), the probe request it sends to a down base, and
turning the upstream's answers into `TrackMeta` / `AlbumMeta` / `MediaPlan`, and
playlists, mixes and artists into the `Listing` / `Discography` a job expands.
Bodies are read within `max_metadata_bytes` (dlqd.bodies) and decoded in a
worker thread, as manifests are parsed, so no upstream answer can
fill memory or hold the event loop; every JSON body is then checked into a
typed record by `upstream_schema` before anything here looks at it. Never
writes files, never puts a URL's query string in a message, and never retries
a failed request over time: backoff belongs to the scheduler, which asks the
raised `DlqdError` (a `QueueHeld` while the circuit holds the queue).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import ssl
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import httpcore
import httpx
import trio

from dlqd.bodies import ACCEPT_ENCODING, read_capped
from dlqd.circuit import BASE_FAILURES, BaseReport, UpstreamCircuit
from dlqd.errors import DlqdError, ErrorCode, from_http_status, map_httpx_errors, redact_url
from dlqd.holds import QueueHeld
from dlqd.manifest import plan_from_playback
from dlqd.meta import AlbumMeta, Lyrics, MediaPlan, TrackMeta
from dlqd.model import RELEASE_KINDS
from dlqd.transfer import MediaClient, trust_context
from dlqd.upstream_schema import (
    AlbumPage,
    ArtistAnswer,
    ArtistReleases,
    ListedTrack,
    TrackInfo,
    UpstreamArtist,
    UpstreamLyrics,
    UpstreamRelease,
    UpstreamTrack,
    parse,
    parse_album_page,
    parse_mix,
    parse_playlist_page,
    quote,
)

# httpcore reads HTTP/1.1 bodies 64 KiB per socket read; every read is a trip
# through the event loop and h11. 1 MiB reads cut the CPU per GiB of media
# fetched through httpx by a fifth (docs/benchmarks.md, issue 3) — since
# issue 11 only media behind an environment proxy takes that path
# (dlqd.transfer); peak RSS is unchanged within 1 MiB. httpcore offers no
# per-client setting, so the class default is raised once, for this process.
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20

PAGE_SIZE = 100
PLAYLIST_PAGE_SIZE = 100  # entries asked per /playlist/ page; the upstream allows up to 500
MAX_COVER_BYTES = 16 * 1024 * 1024
MAX_JOB_TRACKS = 5000  # limits.max_job_tracks
MAX_METADATA_BYTES = 16 * 1024 * 1024  # limits.max_metadata_mb
# json.loads spends up to ~85 bytes of memory per value, so a 16 MiB body of
# `{},{},…` becomes 450 MiB of dicts. A 100-track album page holds ~10k
# values; refusing bodies that may hold more than this keeps the parse of any
# capped body within ~40 MiB.
MAX_JSON_VALUES = 500_000
MAX_REDIRECTS = 10  # more is a loop: TooManyRedirects, UPSTREAM_BAD_RESPONSE

JSON = Mapping[str, Any]


# Upstream release types a Discography keeps, each as its kind (model.RELEASE_KINDS).
KIND_OF_RELEASE_TYPE = {kind.upper(): kind for kind in RELEASE_KINDS}


def _bad(message: str) -> DlqdError:
    return DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, message)


@dataclass(frozen=True)
class TrackRef:
    """One track entry of a playlist or mix, in listing order, with what the listing calls it.

    `title` is the listed title with its version ("Third Rail (Live)"), "" when
    the listing gave none; `duration` in seconds, None when not given.
    """

    track_id: int
    album_id: int
    title: str = ""
    duration: int | None = None


@dataclass(frozen=True)
class Listing:
    """A playlist or a mix: its tracks only (videos skipped), each at its first place."""

    title: str
    refs: tuple[TrackRef, ...]


@dataclass(frozen=True)
class Release:
    """One release of an artist; `kind` is "album", "ep" or "single"."""

    album_id: int
    title: str
    kind: str
    tracks: int  # numberOfTracks
    release_date: str | None


@dataclass(frozen=True)
class Discography:
    """An artist's name and releases, in upstream order, each album id once."""

    name: str
    releases: tuple[Release, ...]


class Source:
    """One upstream client per daemon; the bases that are up are tried in order.

    A connection error, timeout or 5xx moves on to the next base and counts
    against the base in the circuit, which stops sending it requests once it
    is down (`upstream.failure_threshold` in a row) and probes it instead.
    404 and other 4xx are answers, raised without trying another base; a 429
    holds the whole upstream (`rate_limited`). While the circuit holds the
    queue every request raises `QueueHeld` before anything is sent.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        cover_base_url: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        user_agent: str,
        client: httpx.AsyncClient | None = None,
        *,
        circuit: Callable[[Sequence[str]], UpstreamCircuit] = UpstreamCircuit,
        max_job_tracks: int = MAX_JOB_TRACKS,
        max_metadata_bytes: int = MAX_METADATA_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: the daemon's trust (`trust_context`); by default httpx's own."""
        if not base_urls:
            raise ValueError("at least one upstream base URL is required")
        self._bases = [url.rstrip("/") for url in base_urls]
        self.circuit = circuit(self._bases)
        # What a probe asks a down base: the latest request, in its cheapest form.
        self._probe_request: tuple[str, dict[str, int | str]] = ("/info/", {"id": 1})
        self._cover_base_url = cover_base_url.rstrip("/")
        self._max_job_tracks = max_job_tracks
        self._max_metadata_bytes = max_metadata_bytes
        self._owns_client = client is None
        tls = ssl_context if ssl_context is not None else trust_context(None)
        self.client = client or httpx.AsyncClient(
            verify=tls,
            timeout=httpx.Timeout(
                connect=connect_timeout_s,
                read=read_timeout_s,
                write=read_timeout_s,
                pool=connect_timeout_s,
            ),
            headers={"User-Agent": user_agent, "Accept-Encoding": ACCEPT_ENCODING},
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
        )
        self.media = MediaClient(
            ssl_context=tls,
            user_agent=user_agent,
            connect_timeout_s=connect_timeout_s,
            http=self.client,
            max_redirects=MAX_REDIRECTS,
        )

    async def aclose(self) -> None:
        """Close the client if this Source made it."""
        if self._owns_client:
            await self.client.aclose()

    # -- API calls -----------------------------------------------------------

    async def track_meta(self, track_id: int, *, alone_if_album_gone: bool = False) -> TrackMeta:
        """A track named and tagged exactly as it would be inside its album's job.

        A 404 on its album is UPSTREAM_NOT_FOUND (DESIGN §6), unless
        `alone_if_album_gone` (a playlist's track: its album withdrawn or
        locked to another region while the track is there): then the track
        stands alone, its album's title and cover from `/info/`, its own
        artist as album artist, totals unknown.
        """
        data, _ = await self._get_data("/info/", {"id": track_id})
        info = parse(TrackInfo, data, f"/info/ of track {track_id}")
        if info.id != track_id:
            raise _bad(f"/info/ answered for track {track_id} with another track")
        try:
            page, tracks = await self._album_pages(info.album.id)
        except DlqdError as exc:
            gone = exc.code == ErrorCode.UPSTREAM_NOT_FOUND and alone_if_album_gone
            if not gone or not info.album.title:
                raise
            return build_lone_track(info, cover_url=self.cover_url)
        album = build_album(page, tracks, cover_url=self.cover_url)
        for track in album.tracks:
            if track.track_id == track_id:
                return track
        # The album does not list it (region or edition mismatch): use /info/ itself.
        tracks.append(info)
        built = build_album(page, tracks, cover_url=self.cover_url).tracks
        return next(track for track in built if track.track_id == track_id)

    async def album(self, album_id: int) -> AlbumMeta:
        """The album with every page of its tracks read, in disc/track order."""
        page, tracks = await self._album_pages(album_id)
        return build_album(page, tracks, cover_url=self.cover_url)

    async def media_plan(self, track_id: int, quality: str) -> MediaPlan:
        """Playback info → plan; `plan.extra` carries the stream's gains (see manifest.py)."""
        data, url = await self._get_data("/track/", {"id": track_id, "quality": quality})
        # Base64 and MPD parsing: off the event loop.
        return await trio.to_thread.run_sync(lambda: plan_from_playback(data, manifest_url=url))

    async def lyrics(self, track_id: int) -> Lyrics | None:
        """The track's lyrics, or None when the upstream has none (404) or they are empty.

        Best effort and outside the circuit: lyrics only decorate a track, so
        a `/lyrics/` route that fails (many proxies' lyrics provider does) must
        never count a base as down, hold the queue or become its probe. One try
        per base that is up; a failure raises `DlqdError` for the caller to log.
        `/lyrics/` answers `{"version", "lyrics": {...}}`, without the `data`
        envelope of the other routes.
        """
        self.circuit.check_open()
        failure = DlqdError(ErrorCode.UPSTREAM_UNAVAILABLE, "no upstream base is up")
        for base in self._bases:
            if self.circuit.is_down(base):
                continue
            try:
                body, url = await self._get_body(f"{base}/lyrics/", {"id": track_id})
            except DlqdError as exc:
                if exc.code == ErrorCode.UPSTREAM_NOT_FOUND:
                    return None
                failure = exc
                continue
            data = await trio.to_thread.run_sync(_envelope_data, body, url, "lyrics")
            record = parse(UpstreamLyrics, data, f"/lyrics/ of track {track_id}")
            if record.track_id not in (None, track_id):
                raise _bad(f"/lyrics/ answered for track {track_id} with another track's")
            lyrics = Lyrics(text=_plain_text(record.text), synced=_plain_text(record.subtitles))
            return lyrics if lyrics.text or lyrics.synced else None
        raise failure

    async def playlist(self, uuid: str) -> Listing:
        """The playlist's title and tracks, every page read, videos skipped.

        Pages as `album` does: until numberOfTracks tracks are read, or a page
        is empty or holds tracks but none not already read; a page of only
        videos goes on. Refused past `max_job_tracks` tracks (claimed or read)
        or skipped entries.
        """
        title: str | None = None  # the first page's
        read = _TrackPages[ListedTrack](f"/playlist/ {quote(uuid)}", self._max_job_tracks)
        offset = 0
        while True:
            params: dict[str, int | str] = {
                "id": uuid,
                "limit": PLAYLIST_PAGE_SIZE,
                "offset": offset,
            }
            data, _ = await self._get_object("/playlist/", params)
            page = await trio.to_thread.run_sync(
                functools.partial(
                    parse_playlist_page, data, uuid=uuid, max_tracks=self._max_job_tracks
                )
            )
            title = page.playlist.title if title is None else title
            offset += len(page.items)
            if read.take(page.items, claimed=page.playlist.number_of_tracks):
                return build_listing(title, read.tracks)

    async def mix(self, mix_id: str) -> Listing:
        """The mix's title and tracks (one answer), videos skipped; refused past max_job_tracks."""
        data, _ = await self._get_object("/mix/", {"id": mix_id})
        answer = await trio.to_thread.run_sync(
            functools.partial(parse_mix, data, mix_id=mix_id, max_tracks=self._max_job_tracks)
        )
        return build_listing(answer.mix.title, answer.tracks)

    async def artist(self, artist_id: int) -> Discography:
        """The artist's name (`/artist/?id=`) and its albums, EPs and singles (`/artist/?f=`)."""
        data, _ = await self._get_object("/artist/", {"id": artist_id})
        who = parse(ArtistAnswer, data, f"/artist/ {artist_id}").artist
        if who.id not in (None, artist_id):
            raise _bad(f"/artist/ {artist_id}: answered with artist {quote(who.id)}")
        if not who.name:
            raise _bad(f"/artist/ {artist_id}: no name")
        data, _ = await self._get_object("/artist/", {"f": artist_id, "skip_tracks": "true"})
        releases = await trio.to_thread.run_sync(
            parse, ArtistReleases, data, f"/artist/ {artist_id} releases"
        )
        return build_discography(who.name, releases.albums.items)

    def cover_url(self, cover_uuid: str) -> str:
        return f"{self._cover_base_url}/{cover_uuid.replace('-', '/')}/1280x1280.jpg"

    async def cover(self, url: str) -> bytes | None:
        """The cover image, or None when the cover host has none (404).

        Other failures raise `DlqdError` so the caller decides whether a
        missing cover may fail the track.
        """
        with map_httpx_errors(url):
            async with self.client.stream("GET", url) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise from_http_status(
                        response.status_code, url, response.headers.get("Retry-After")
                    )
                return bytes(await read_capped(response, url, MAX_COVER_BYTES, "cover"))

    # -- the circuit ---------------------------------------------------------------

    def check_open(self) -> None:
        """Raise QueueHeld while the upstream may not be asked (down, or rate limited)."""
        self.circuit.check_open()

    def rate_limited(self, error: DlqdError) -> QueueHeld:
        """A 429 met outside Source (a media request): the upstream-wide hold to raise."""
        return self.circuit.rate_limited(error)

    def base_reports(self) -> dict[str, BaseReport]:
        """Per base URL: last success and failure, whether it is down and when it is probed."""
        return self.circuit.reports()

    async def run_circuit(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The circuit's probes (sent with this client) and timers, for the daemon's life."""
        await self.circuit.run(self._probe, task_status=task_status)

    async def _probe(self, base: str) -> None:
        """Ask `base` the latest request in its cheapest form; any whole answer below 500 is up.

        The body is read (within the metadata cap), not parsed: a connection
        cut inside it is a failure, whatever the status said.
        """
        path, params = self._probe_request
        url = f"{base}{path}"
        with map_httpx_errors(url):
            async with self.client.stream("GET", url, params=params) as response:
                answered = str(response.url)
                if response.status_code >= 500 or response.status_code == 429:
                    retry_after = response.headers.get("Retry-After")
                    raise from_http_status(response.status_code, answered, retry_after)
                await read_capped(response, answered, self._max_metadata_bytes, "body")

    # -- requests with failover ------------------------------------------------

    async def _get_data(self, path: str, params: Mapping[str, int | str]) -> tuple[JSON, str]:
        """GET `path` from the first base that answers; the envelope's `data` and the URL."""
        body, url = await self._get_answer(path, params)
        return await trio.to_thread.run_sync(_envelope_data, body, url), url

    async def _get_object(self, path: str, params: Mapping[str, int | str]) -> tuple[JSON, str]:
        """As `_get_data`, for the routes without a `data` envelope: the whole JSON object."""
        body, url = await self._get_answer(path, params)
        return await trio.to_thread.run_sync(_json_object, body, url), url

    async def _get_answer(
        self, path: str, params: Mapping[str, int | str]
    ) -> tuple[bytearray, str]:
        """The body of GET `path` from the first base that answers, through the circuit."""
        self._probe_request = _probe_form(path, params)
        last_error: DlqdError | None = None
        for base in self._bases:
            self.circuit.check_open()  # also between bases: a hold may have begun meanwhile
            if self.circuit.is_down(base):
                continue
            try:
                answer = await self._get_body(f"{base}{path}", params)
            except DlqdError as exc:
                if exc.code == ErrorCode.UPSTREAM_RATE_LIMITED:
                    self.circuit.answered(base)
                    raise self.circuit.rate_limited(exc) from exc
                if exc.code not in BASE_FAILURES:
                    self.circuit.answered(base)
                    raise
                last_error = self.circuit.failed(base, exc)
                if isinstance(last_error, QueueHeld):
                    raise last_error from exc
                continue
            self.circuit.succeeded(base)
            return answer
        assert last_error is not None  # a base was up, or check_open raised
        raise last_error

    async def _get_body(self, url: str, params: Mapping[str, int | str]) -> tuple[bytearray, str]:
        """The 200 body of one GET within the metadata cap, and the URL that answered it."""
        with map_httpx_errors(url):
            async with self.client.stream("GET", url, params=params) as response:
                answered = str(response.url)
                if response.status_code != 200:
                    raise from_http_status(
                        response.status_code, answered, response.headers.get("Retry-After")
                    )
                body = await read_capped(response, answered, self._max_metadata_bytes, "body")
        return body, answered

    async def _album_pages(self, album_id: int) -> tuple[AlbumPage, list[UpstreamTrack]]:
        """The first page (the album's header) and every track, paging until numberOfTracks.

        An album claiming more than `max_job_tracks` tracks is refused at its
        first page, and paging stops with the same error once more are read.
        """
        first: AlbumPage | None = None
        read = _TrackPages[UpstreamTrack](f"/album/ {album_id}", self._max_job_tracks)
        offset = 0
        while True:
            data, _ = await self._get_data(
                "/album/", {"id": album_id, "limit": PAGE_SIZE, "offset": offset}
            )
            # A page may hold up to max_job_tracks entries: checked off the event loop.
            page = await trio.to_thread.run_sync(
                functools.partial(
                    parse_album_page, data, album_id=album_id, max_tracks=self._max_job_tracks
                )
            )
            first = first or page
            offset += len(page.items)
            if read.take(page.items, claimed=page.number_of_tracks):
                return first, read.tracks


class _Identified(Protocol):
    @property
    def id(self) -> int: ...


_T = TypeVar("_T", bound=_Identified)


class _TrackPages(Generic[_T]):
    """Tracks of a paged listing (album, playlist) as read so far, each kept once.

    Bounded: more than `max_tracks` tracks read is refused like a listing
    that claims more (UPSTREAM_BAD_RESPONSE), and so are more than
    `max_tracks` entries that are not tracks (videos), so a server repeating
    pages of videos cannot keep paging going.
    """

    def __init__(self, where: str, max_tracks: int) -> None:
        self.where = where
        self.max_tracks = max_tracks
        self.tracks: list[_T] = []
        self._seen: set[int] = set()
        self._skipped = 0

    def take(self, page: Iterable[_T | None], *, claimed: int) -> bool:
        """Keep the page's new tracks (None: a skipped entry); True when paging is over.

        Over once the listing's claimed count is read, or when a page is empty
        or holds tracks but no new one: a repeated page would otherwise loop
        forever. A page of only skipped entries (videos) goes on.
        """
        entries = held = new = 0
        for track in page:
            entries += 1
            if track is None:
                self._skipped += 1
                continue
            held += 1
            if track.id not in self._seen:
                self._seen.add(track.id)
                self.tracks.append(track)
                new += 1
        if len(self.tracks) > self.max_tracks:
            raise _bad(
                f"{self.where}: lists more than limits.max_job_tracks ({self.max_tracks}) tracks"
            )
        if self._skipped > self.max_tracks:
            raise _bad(
                f"{self.where}: lists more than limits.max_job_tracks ({self.max_tracks})"
                " entries that are not tracks"
            )
        return len(self.tracks) >= claimed or entries == 0 or (held > 0 and new == 0)


def _probe_form(path: str, params: Mapping[str, int | str]) -> tuple[str, dict[str, int | str]]:
    """The cheapest request about the same item.

    /info/ for a playback, one entry of an album or playlist, the artist's
    header for its releases.
    """
    if path == "/track/":
        return "/info/", {"id": params["id"]}
    if path in ("/album/", "/playlist/"):
        return path, {"id": params["id"], "limit": 1, "offset": 0}
    if path == "/artist/" and "f" in params:
        return "/artist/", {"id": params["f"]}
    return path, dict(params)


def with_playback_gains(meta: TrackMeta, plan: MediaPlan) -> TrackMeta:
    """Prefer the gains of the stream actually fetched over /info/'s."""

    def gain(key: str, current: float | None) -> float | None:
        return float(plan.extra[key]) if key in plan.extra else current

    return dataclasses.replace(
        meta,
        replay_gain_track=gain("track_replay_gain", meta.replay_gain_track),
        peak_track=gain("track_peak", meta.peak_track),
        replay_gain_album=gain("album_replay_gain", meta.replay_gain_album),
        peak_album=gain("album_peak", meta.peak_album),
    )


def _envelope_data(body: bytearray, url: str, key: str = "data") -> JSON:
    """`data` of `{"version", "data"}` (or another `key`). Runs in a worker thread."""
    data = _json_object(body, url).get(key)
    if not isinstance(data, dict):
        raise _bad(f"{redact_url(url)}: no {key} object in the response")
    return data


def _json_object(body: bytearray, url: str) -> JSON:
    """The JSON object `body` holds, within `MAX_JSON_VALUES`. Runs in a worker thread."""
    if _json_values_bound(body) > MAX_JSON_VALUES:
        raise _bad(f"{redact_url(url)}: body may hold more than {MAX_JSON_VALUES} JSON values")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad(f"{redact_url(url)}: body is not JSON") from None
    if not isinstance(answer, dict):
        raise _bad(f"{redact_url(url)}: the response is not a JSON object")
    return answer


def _plain_text(text: str) -> str:
    """Lines of text for a tag or a file: newlines as `\n`, no other control characters."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept = (
        "".join(ch for ch in line if ch == "\t" or unicodedata.category(ch) != "Cc")
        for line in lines
    )
    return "\n".join(line.rstrip() for line in kept).strip("\n")


def _json_values_bound(body: bytes | bytearray) -> int:
    """At least the number of values json.loads would build from `body`, counted without parsing.

    Each container is counted by its opening bracket, each key and its value
    by their `:`, each list element after the first by its `,` and the first
    by its list's `[` once more. Separators inside strings only raise the count.
    """
    return body.count(b",") + 2 * body.count(b":") + 2 * body.count(b"[") + body.count(b"{") + 1


# -- records → metadata ----------------------------------------------------------


def build_listing(title: str, tracks: Iterable[ListedTrack]) -> Listing:
    """A playlist or mix of `tracks` in order, a track listed twice kept at its first place."""
    refs: dict[int, TrackRef] = {}
    for track in tracks:
        named = f"{track.title} ({track.version})" if track.version else track.title
        refs.setdefault(track.id, TrackRef(track.id, track.album.id, named, track.duration))
    return Listing(title=title, refs=tuple(refs.values()))


def build_lone_track(info: TrackInfo, *, cover_url: Callable[[str], str]) -> TrackMeta:
    """A track whose album cannot be read, from its `/info/` alone: totals unknown."""
    artists = _main_first(info.artists) or tuple(
        name for name in (_artist_name(info.artist),) if name
    )
    if not artists:
        raise _bad(f"/info/ of track {info.id}: no artist")
    return _build_track(
        info,
        album_id=info.album.id,
        album=info.album.title,
        album_artist=artists[0],
        track_total=0,
        disc_total=0,
        release_date="",
        album_copyright="",
        cover_url=cover_url(info.album.cover) if info.album.cover else None,
    )


def build_discography(name: str, releases: Iterable[UpstreamRelease]) -> Discography:
    """Albums, EPs and singles in upstream order, each album id once; other types skipped."""
    kept: dict[int, Release] = {}
    for release in releases:
        kind = KIND_OF_RELEASE_TYPE.get(release.type)
        if kind is not None and release.id not in kept:
            kept[release.id] = Release(
                album_id=release.id,
                title=release.title,
                kind=kind,
                tracks=release.number_of_tracks,
                release_date=release.release_date or None,
            )
    return Discography(name=name, releases=tuple(kept.values()))


def build_album(
    page: AlbumPage, tracks: Sequence[UpstreamTrack], *, cover_url: Callable[[str], str]
) -> AlbumMeta:
    """The album of `page` (its first page) with `tracks`, in disc/track order."""
    album_artist = _artist_name(page.artist) or next(
        (artist.name for artist in page.artists if artist.name), ""
    )
    if not album_artist:
        raise _bad(f"/album/ {page.id}: no artist")
    cover = cover_url(page.cover) if page.cover else None
    per_disc: dict[int, int] = {}
    for track in tracks:
        per_disc[track.volume_number] = per_disc.get(track.volume_number, 0) + 1
    disc_total = page.number_of_volumes or max(per_disc, default=1)
    album_tracks = [
        _build_track(
            track,
            album_id=page.id,
            album=page.title,
            album_artist=album_artist,
            track_total=per_disc[track.volume_number],
            disc_total=disc_total,
            release_date=page.release_date,
            album_copyright=page.copyright,
            cover_url=cover,
        )
        for track in tracks
    ]
    album_tracks.sort(key=lambda t: (t.disc_number, t.track_number))
    return AlbumMeta(
        album_id=page.id,
        title=page.title,
        artist=album_artist,
        tracks=tuple(album_tracks),
        cover_url=cover,
    )


def _build_track(
    track: UpstreamTrack,
    *,
    album_id: int,
    album: str,
    album_artist: str,
    track_total: int,
    disc_total: int,
    release_date: str,
    album_copyright: str,
    cover_url: str | None,
) -> TrackMeta:
    artists = _main_first(track.artists) or tuple(
        name for name in (_artist_name(track.artist),) if name
    )
    return TrackMeta(
        track_id=track.id,
        title=track.title,
        version=track.version,
        artists=artists or (album_artist,),
        album_artist=album_artist,
        album=album,
        album_id=album_id,
        track_number=track.track_number,
        track_total=track_total,
        disc_number=track.volume_number,
        disc_total=disc_total,
        duration=track.duration,
        date=release_date or track.stream_start_date,
        isrc=track.isrc,
        copyright=track.copyright or album_copyright,
        replay_gain_track=track.replay_gain,
        peak_track=track.peak,
        cover_url=cover_url,
    )


def _main_first(artists: Sequence[UpstreamArtist]) -> tuple[str, ...]:
    """Names of MAIN artists in order, then FEATURED ones, each once."""
    ordered: list[str] = []
    for kind in ("MAIN", "FEATURED"):
        for artist in artists:
            if artist.type == kind and artist.name and artist.name not in ordered:
                ordered.append(artist.name)
    return tuple(ordered)


def _artist_name(artist: UpstreamArtist | None) -> str:
    return artist.name if artist is not None else ""
