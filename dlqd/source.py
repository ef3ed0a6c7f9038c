"""The upstream API of DESIGN §6: metadata, album paging, playback plans, covers, failover.

Owns the daemon's one `httpx.AsyncClient`, the order in which upstream bases
are tried, and turning the upstream's JSON into `TrackMeta` / `AlbumMeta` /
`MediaPlan`. Never writes files and never retries a failed request over time:
backoff belongs to the scheduler, which asks the raised `DlqdError`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard

import httpcore
import httpx
import trio

from dlqd.errors import DlqdError, ErrorCode, from_http_status, map_httpx_errors
from dlqd.manifest import plan_from_playback
from dlqd.meta import AlbumMeta, MediaPlan, TrackMeta

# httpcore reads HTTP/1.1 bodies 64 KiB per socket read; every read is a trip
# through the event loop and h11. 1 MiB reads cut the daemon's CPU per GiB by a
# fifth and take a 20 x 30 MiB album from 1.17x aria2c's wall time to 0.97x
# (docs/benchmarks.md); peak RSS is unchanged within 1 MiB. httpcore offers no
# per-client setting, so the class default is raised once, for this process.
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20

PAGE_SIZE = 100
FAILURES_BEFORE_SKIP = 3
SKIP_FOR_S = 60.0
MAX_COVER_BYTES = 16 * 1024 * 1024

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

JSON = Mapping[str, Any]


def _bad(message: str) -> DlqdError:
    return DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, message)


@dataclasses.dataclass
class _BaseHealth:
    """Consecutive failures of one base and until when it is passed over."""

    failures: int = 0
    skip_until: float = float("-inf")


@dataclasses.dataclass
class BaseReport:
    """What `dlqctl health` shows for one base: wall-clock times of its last answer and failure."""

    last_success: float | None = None  # Unix time
    last_failure: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    skipped: bool = False


class Source:
    """One upstream client per daemon; bases are tried in order, sick ones last.

    A base with `FAILURES_BEFORE_SKIP` consecutive failures (connection errors,
    timeouts, 5xx) is tried only after every healthy base for `SKIP_FOR_S`
    seconds; it is never ruled out entirely, so a single-base setup keeps
    working the moment its upstream is back. 404 and 429 are answers, not
    failures: they are raised without trying another base.
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
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not base_urls:
            raise ValueError("at least one upstream base URL is required")
        self._bases = [url.rstrip("/") for url in base_urls]
        self._health = {base: _BaseHealth() for base in self._bases}
        self._reports = {base: BaseReport() for base in self._bases}
        self._cover_base_url = cover_base_url.rstrip("/")
        self._clock = clock
        self._owns_client = client is None
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=connect_timeout_s,
                read=read_timeout_s,
                write=read_timeout_s,
                pool=connect_timeout_s,
            ),
            headers={"User-Agent": user_agent},
            follow_redirects=True,
        )

    async def aclose(self) -> None:
        """Close the client if this Source made it."""
        if self._owns_client:
            await self.client.aclose()

    # -- API calls -----------------------------------------------------------

    async def track_meta(self, track_id: int) -> TrackMeta:
        """A track named and tagged exactly as it would be inside its album's job."""
        info, _ = await self._get_data("/info/", {"id": track_id})
        album_ref = info.get("album")
        album_id = album_ref.get("id") if isinstance(album_ref, Mapping) else None
        if not _is_int(album_id):
            raise _bad(f"/info/ of track {track_id} has no album id")
        header, items = await self._album_pages(album_id)
        album = self._build_album(header, items)
        for track in album.tracks:
            if track.track_id == track_id:
                return track
        # The album does not list it (region or edition mismatch): use /info/ itself.
        items.append(info)
        built = self._build_album(header, items).tracks
        found = next((track for track in built if track.track_id == track_id), None)
        if found is None:
            raise _bad(f"/info/ answered for track {track_id} with another track")
        return found

    async def album(self, album_id: int) -> AlbumMeta:
        """The album with every page of its tracks read, in disc/track order."""
        header, items = await self._album_pages(album_id)
        return self._build_album(header, items)

    async def media_plan(self, track_id: int, quality: str) -> MediaPlan:
        """Playback info → plan; `plan.extra` carries the stream's gains (see manifest.py)."""
        data, url = await self._get_data("/track/", {"id": track_id, "quality": quality})
        return plan_from_playback(data, manifest_url=url)

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
                image = bytearray()
                async for chunk in response.aiter_bytes():
                    image += chunk
                    if len(image) > MAX_COVER_BYTES:
                        raise _bad(f"{url}: cover larger than {MAX_COVER_BYTES} bytes")
                return bytes(image)

    # -- requests with failover ------------------------------------------------

    def _bases_in_order(self) -> list[str]:
        now = self._clock()
        healthy = [b for b in self._bases if self._health[b].skip_until <= now]
        sick = [b for b in self._bases if self._health[b].skip_until > now]
        return healthy + sick

    def base_reports(self) -> dict[str, BaseReport]:
        """Per base URL: last success and failure, and whether it is being passed over now."""
        now = self._clock()
        return {
            base: dataclasses.replace(
                self._reports[base],
                consecutive_failures=self._health[base].failures,
                skipped=self._health[base].skip_until > now,
            )
            for base in self._bases
        }

    def _record_failure(self, base: str, error: DlqdError) -> None:
        report = self._reports[base]
        report.last_failure = time.time()
        report.last_error = f"{error.code}: {error.message}"
        health = self._health[base]
        health.failures += 1
        if health.failures >= FAILURES_BEFORE_SKIP:
            health.skip_until = self._clock() + SKIP_FOR_S

    async def _get_data(self, path: str, params: Mapping[str, int | str]) -> tuple[JSON, str]:
        """GET `path` from the first base that answers; the envelope's `data` and the URL."""
        last_error: DlqdError | None = None
        for base in self._bases_in_order():
            url = f"{base}{path}"
            try:
                with map_httpx_errors(url):
                    response = await self.client.get(url, params=params)
            except DlqdError as exc:
                self._record_failure(base, exc)
                last_error = exc
                continue
            if response.status_code >= 500:
                last_error = from_http_status(response.status_code, url)
                self._record_failure(base, last_error)
                continue
            self._health[base] = _BaseHealth()
            self._reports[base].last_success = time.time()
            return _envelope_data(response), str(response.url)
        assert last_error is not None  # there is at least one base
        raise last_error

    async def _album_pages(self, album_id: int) -> tuple[JSON, list[JSON]]:
        """The album header and its track items, paging until numberOfTracks are read."""
        header: JSON = {}
        items: list[JSON] = []
        seen: set[int] = set()
        offset = 0
        while True:
            page, _ = await self._get_data(
                "/album/", {"id": album_id, "limit": PAGE_SIZE, "offset": offset}
            )
            header = header or page
            expected = page.get("numberOfTracks")
            page_items = page.get("items")
            if not _is_int(expected) or not isinstance(page_items, list):
                raise _bad(f"/album/ {album_id}: no numberOfTracks or items")
            new_tracks = 0
            for entry in page_items:
                if not isinstance(entry, Mapping):
                    raise _bad(f"/album/ {album_id}: item is not an object")
                item = entry.get("item")
                if entry.get("type") != "track" or not isinstance(item, Mapping):
                    continue  # videos and other media share the listing
                if not _is_int(item.get("id")):
                    raise _bad(f"/album/ {album_id}: track item without id")
                if item["id"] not in seen:
                    seen.add(item["id"])
                    items.append(item)
                    new_tracks += 1
            offset += len(page_items)
            # An empty or repeated page would otherwise loop forever.
            if len(items) >= expected or new_tracks == 0:
                return header, items

    # -- JSON → records ------------------------------------------------------

    def _build_album(self, header: JSON, items: Sequence[JSON]) -> AlbumMeta:
        album_id = header.get("id")
        title = header.get("title")
        if not _is_int(album_id) or not isinstance(title, str):
            raise _bad("/album/: no id or title")
        album_artist = _artist_name(header.get("artist")) or next(
            iter(_artist_names(header.get("artists"))), ""
        )
        if not album_artist:
            raise _bad(f"/album/ {album_id}: no artist")
        cover_uuid = header.get("cover")
        cover_url = (
            self.cover_url(cover_uuid) if isinstance(cover_uuid, str) and cover_uuid else None
        )
        volumes = header.get("numberOfVolumes")
        per_disc: dict[int, int] = {}
        for item in items:
            disc = _disc_number(item)
            per_disc[disc] = per_disc.get(disc, 0) + 1
        disc_total = volumes if _is_int(volumes) and volumes > 0 else max(per_disc, default=1)
        release = _date(header.get("releaseDate"))
        album_copyright = _text(header.get("copyright"))
        tracks = [
            _build_track(
                item,
                album_id=album_id,
                album=title,
                album_artist=album_artist,
                track_total=per_disc[_disc_number(item)],
                disc_total=disc_total,
                release_date=release,
                album_copyright=album_copyright,
                cover_url=cover_url,
            )
            for item in items
        ]
        tracks.sort(key=lambda t: (t.disc_number, t.track_number))
        return AlbumMeta(
            album_id=album_id,
            title=title,
            artist=album_artist,
            tracks=tuple(tracks),
            cover_url=cover_url,
        )


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


def _envelope_data(response: httpx.Response) -> JSON:
    """`data` of `{"version", "data"}`, mapping non-2xx statuses to their codes."""
    url = str(response.url)
    if response.status_code != 200:
        raise from_http_status(response.status_code, url, response.headers.get("Retry-After"))
    try:
        body = response.json()
    except ValueError:
        raise _bad(f"{url}: body is not JSON") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise _bad(f"{url}: no data object in the response")
    return data


def _build_track(
    item: JSON,
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
    track_id = item.get("id")
    title = item.get("title")
    number = item.get("trackNumber")
    if not _is_int(track_id) or not isinstance(title, str) or not _is_int(number):
        raise _bad(f"album {album_id}: track without id, title or trackNumber")
    artists = _main_first(item.get("artists")) or tuple(
        name for name in (_artist_name(item.get("artist")),) if name
    )
    stream_start = item.get("streamStartDate")
    return TrackMeta(
        track_id=track_id,
        title=title,
        version=_text(item.get("version")),
        artists=artists or (album_artist,),
        album_artist=album_artist,
        album=album,
        album_id=album_id,
        track_number=number,
        track_total=track_total,
        disc_number=_disc_number(item),
        disc_total=disc_total,
        date=release_date or (_date(stream_start[:10]) if isinstance(stream_start, str) else ""),
        isrc=_text(item.get("isrc")),
        copyright=_text(item.get("copyright")) or album_copyright,
        replay_gain_track=_number(item.get("replayGain")),
        peak_track=_number(item.get("peak")),
        cover_url=cover_url,
    )


def _main_first(artists: object) -> tuple[str, ...]:
    """Names of MAIN artists in order, then FEATURED ones, each once."""
    if not isinstance(artists, list):
        return ()
    ordered: list[str] = []
    for kind in ("MAIN", "FEATURED"):
        for artist in artists:
            if isinstance(artist, Mapping) and artist.get("type") == kind:
                name = _artist_name(artist)
                if name and name not in ordered:
                    ordered.append(name)
    return tuple(ordered)


def _artist_names(artists: object) -> list[str]:
    if not isinstance(artists, list):
        return []
    return [name for name in (_artist_name(a) for a in artists) if name]


def _artist_name(artist: object) -> str:
    return _text(artist.get("name")) if isinstance(artist, Mapping) else ""


def _disc_number(item: JSON) -> int:
    volume = item.get("volumeNumber")
    return volume if _is_int(volume) and volume > 0 else 1


def _date(value: object) -> str:
    if isinstance(value, str) and _DATE.match(value):
        return value[:10]
    return ""


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
