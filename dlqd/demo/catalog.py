"""The local catalog upstream: a generated catalog served over real HTTP (DESIGN §6).

Owns: the deterministic catalog (`Catalog`: albums, tracks, the exact bytes each
track serves), and `CatalogServer`, a stdlib threaded HTTP server on 127.0.0.1
speaking the hifi-api v2 routes — over TLS when given an `ssl_context` — with
fault injection, throttling and a request log for tests, benchmarks and `dlqd demo`.
Never: imports test code, calls other dlqd modules (it stands in for the outside
world), writes files, or talks to any host but its own socket.

Routes (/info/, /album/ and /track/ answer `{"version": "2.0", "data": {...}}`;
the others have no `data` envelope: `{"version": "2.0", "lyrics": {...}}`,
`{"version", "playlist", "items"}`, ...; errors are `{"detail": ...}` with 400/404):
  GET /info/?id=TRACK_ID
  GET /album/?id=ALBUM_ID&limit=L&offset=N     (limit capped at 100, default 100)
  GET /track/?id=TRACK_ID&quality=Q             (Q in QUALITIES, default LOSSLESS)
  GET /lyrics/?id=TRACK_ID                      (404 for a track without lyrics)
  GET /playlist/?id=UUID&limit=L&offset=N       (limit capped at 500, default 100;
                                                 items {"item", "type": "track" | "video"})
  GET /mix/?id=MIX_ID                           (one page; items are bare tracks and videos)
  GET /artist/?id=ARTIST_ID                     (who the artist is)
  GET /artist/?f=ARTIST_ID[&skip_tracks=true]   (its albums, then its EPs and singles)
  GET /media/{a|b}/{track_id}/{quality}.{flac|m4a}?token=T   (BTS urls, two mirrors)
  GET /media/dash/{track_id}/init.mp4?token=T, /media/dash/{track_id}/{n}.m4s?token=T
  GET /images/{cover uuid, "-" -> "/"}/1280x1280.jpg
Media tokens come from /track/ answers; `expire_tokens()` makes old ones 404.
A track is served at min(requested, its best quality): LOW/HIGH are AAC in MP4
(BTS), LOSSLESS is FLAC (BTS), HI_RES_LOSSLESS is FLAC in fragmented MP4 (DASH,
only for the DASH tracks; others fall back to LOSSLESS). The MPD carries its
`BaseURL` as a direct child of `MPD`; segment names are relative to it.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import json
import random
import re
import secrets
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import uuid as uuid_module
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dlqd.demo import audio

API_VERSION = "2.0"
QUALITIES = ("LOW", "HIGH", "LOSSLESS", "HI_RES_LOSSLESS")
MAX_PAGE = 100
MAX_PLAYLIST_PAGE = 500
ROUTES = ("info", "album", "track", "lyrics", "playlist", "mix", "artist", "media", "cover")
JSON_ROUTES = ("info", "album", "track", "lyrics", "playlist", "mix", "artist")
# The object a JSON route's answer carries its content in; the others have none.
ENVELOPES = {"info": "data", "album": "data", "track": "data", "lyrics": "lyrics"}
FAULTS = (
    "hang",
    "stall",
    "status",
    "reset",
    "short",
    "truncate",
    "truncate_chunked",
    "bad_json",
    "bad_shape",
    "bad_manifest",
)
HANG_SECONDS = 300.0  # hang/stall last this long unless the server stops first

TWO_DISC_ALBUM_ID = 100
MULTI_ARTIST_TRACK_ID = 100002  # main + featured artist
LIVE_TRACK_ID = 100003  # version "Live"; manifest is URL-safe base64 without padding
SYNCED_LYRICS_TRACK_ID = 100001  # lyrics with synced subtitles
PLAIN_LYRICS_TRACK_ID = 100002  # lyrics, subtitles empty (the other tracks of 100 have none)
TWO_MAIN_ARTISTS_TRACK_ID = 100005  # disc 2, two MAIN artists
BIG_ALBUM_ID = 200
BIG_ALBUM_TRACKS = 120
SINGLE_ALBUM_ID = 300  # type SINGLE
SINGLE_TRACK_ID = 300001  # plain FLAC behind BTS at LOSSLESS
FORMATS_ALBUM_ID = 400
DASH_TIMELINE_TRACK_ID = 400001
DASH_NO_TIMELINE_TRACK_ID = 400002  # duration-based template, startNumber 5
PREVIEW_TRACK_ID = 400003  # assetPresentation PREVIEW (AAC clip)
ENCRYPTED_TRACK_ID = 400004  # encryptionType OLD_AES; bytes are not audio
AAC_ONLY_TRACK_ID = 400005  # best quality HIGH: AAC even when LOSSLESS is asked
HOSTILE_ALBUM_ID = 500
SECOND_ALBUM_ID = 600  # The Examples' second ALBUM, two tracks
EP_ALBUM_ID = 700  # The Examples' EP, two tracks
UNKNOWN_ID = 999_999_999
DASH_NO_TIMELINE_START_NUMBER = 5

# The Examples: /artist/ lists its albums newest first, then its EPs and singles.
ARTIST_ID = 10
ARTIST_NAME = "The Examples"
ARTIST_ALBUM_IDS = (SECOND_ALBUM_ID, TWO_DISC_ALBUM_ID)
ARTIST_EP_IDS = (EP_ALBUM_ID,)
ARTIST_SINGLE_IDS = (SINGLE_ALBUM_ID,)
ARTIST_RELEASE_IDS = ARTIST_ALBUM_IDS + ARTIST_EP_IDS + ARTIST_SINGLE_IDS  # upstream order

VIDEO_ID = 88_000_001  # a music video inside the playlist and the mix: never a track
PLAYLIST_UUID = "3f9c2b7e-5a1d-4e8b-9c06-7d2e41a8b5f3"
PLAYLIST_TITLE = "Night and Signal"
# Two albums, not in album order; the video sits between the second and third.
PLAYLIST_TRACK_IDS = (100003, 300001, 100001, 100005)
BIG_PLAYLIST_UUID = "b1a5e0c2-7d3f-4a96-8e21-0c4f9d6b2a87"
BIG_PLAYLIST_TRACK_IDS = tuple(BIG_ALBUM_ID * 1000 + i for i in range(120, 0, -1))  # reversed
MIX_ID = "0193c7a9e2f45b6d8e0a1c3b5d7f92"
MIX_TITLE = "The Examples Mix"
MIX_TRACK_IDS = (600002, 100002, 600001, 100004)  # the video sits between the second and third


@dataclass(frozen=True)
class ArtistSpec:
    id: int
    name: str
    type: str = "MAIN"


@dataclass(frozen=True)
class TrackSpec:
    """One track as the catalog knows it; the JSON of /info/ is derived from this."""

    id: int
    title: str
    version: str | None
    album_id: int
    track_number: int
    volume_number: int
    artists: tuple[ArtistSpec, ...]
    duration: int
    isrc: str
    copyright: str
    bpm: int
    replay_gain: float
    peak: float
    stream_start_date: str
    max_quality: str = "LOSSLESS"
    dash: str | None = None  # "timeline" | "template" for HI_RES_LOSSLESS tracks
    asset_presentation: str = "FULL"
    encryption_type: str = "NONE"
    urlsafe_manifest: bool = False  # URL-safe base64 without padding
    flac_seconds: float = 1.0
    flac_bytes: int | None = None  # when set, the FLAC is about this big instead
    lyrics: str | None = None  # None: /lyrics/ answers 404
    subtitles: str = ""  # synced "[mm:ss.xx] line" lines, "" when only plain lyrics exist


@dataclass(frozen=True)
class AlbumSpec:
    id: int
    title: str
    artists: tuple[ArtistSpec, ...]
    release_date: str
    copyright: str
    cover: str
    upc: str
    replay_gain: float
    peak: float
    track_ids: tuple[int, ...]  # in (volume, track number) order
    number_of_volumes: int
    type: str = "ALBUM"  # "ALBUM" | "EP" | "SINGLE"


@dataclass(frozen=True)
class ListingSpec:
    """A playlist or a mix: what it lists, in order; a `VIDEO_ID` entry is the video."""

    id: str
    title: str
    entries: tuple[int, ...]


class NotFound(Exception):
    """An id the catalog does not have (served as 404)."""


class BadRequest(Exception):
    """A malformed query parameter (served as 400)."""


def _artist_json(artist: ArtistSpec) -> dict[str, Any]:
    return {"id": artist.id, "name": artist.name}


class Catalog:
    """The deterministic catalog and the bytes of every stream, generated lazily."""

    def __init__(self, cache_bytes: int = 512 << 20) -> None:
        self.albums: dict[int, AlbumSpec] = {}
        self.tracks: dict[int, TrackSpec] = {}
        self.artist_names: dict[int, str] = {}  # every artist credited on an album
        self.playlists: dict[str, ListingSpec] = {}
        self.mixes: dict[str, ListingSpec] = {}
        self._covers: dict[str, int] = {}
        self._cache: collections.OrderedDict[tuple[int, str], tuple[bytes, ...]] = (
            collections.OrderedDict()
        )
        self._cache_limit = cache_bytes
        self._lock = threading.Lock()
        self._next_added = 900
        _populate(self)

    # -- building -----------------------------------------------------------

    def _add(
        self,
        album_id: int,
        title: str,
        artists: tuple[ArtistSpec, ...],
        tracks: list[dict[str, Any]],
        *,
        release_date: str = "2019-05-03",
        album_type: str = "ALBUM",
    ) -> int:
        year = release_date[:4]
        specs = []
        for index, t in enumerate(tracks, start=1):
            track_id = album_id * 1000 + index
            t.setdefault("artists", artists)
            t.setdefault("version", None)
            t.setdefault("volume_number", 1)
            t.setdefault("duration", 1)
            specs.append(
                TrackSpec(
                    id=track_id,
                    album_id=album_id,
                    isrc=f"QZ{album_id % 1000:03d}{year[2:]}{index:05d}",
                    copyright=f"℗ {year} Example Records",
                    bpm=80 + track_id % 80,
                    replay_gain=-round(5 + (track_id % 70) / 10, 2),
                    peak=round(0.5 + (track_id % 50) / 100, 4),
                    stream_start_date=f"{release_date}T00:00:00.000+0000",
                    **t,
                )
            )
        specs.sort(key=lambda s: (s.volume_number, s.track_number))
        cover = str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, f"dlqd-catalog-album-{album_id}"))
        album = AlbumSpec(
            id=album_id,
            title=title,
            artists=artists,
            release_date=release_date,
            copyright=f"© {year} Example Records",
            cover=cover,
            upc=f"{album_id:013d}",
            replay_gain=-8.25,
            peak=0.988,
            track_ids=tuple(s.id for s in specs),
            number_of_volumes=max(s.volume_number for s in specs),
            type=album_type,
        )
        for spec in specs:
            self.tracks[spec.id] = spec
        for artist in artists:
            self.artist_names.setdefault(artist.id, artist.name)
        self._covers[cover] = album_id
        self.albums[album_id] = album
        return album_id

    def add_album(
        self,
        n_tracks: int,
        bytes_per_track: int | None = None,
        *,
        seconds: float = 1.0,
        title: str | None = None,
    ) -> int:
        """Add an album of FLAC tracks (each about `bytes_per_track` if given); returns its id."""
        with self._lock:
            album_id = self._next_added
            self._next_added += 1
        artists = (ArtistSpec(30, "Bench Ensemble"),)
        tracks = [
            {
                "title": f"Load {i}",
                "track_number": i,
                "flac_seconds": seconds,
                "flac_bytes": bytes_per_track,
                "duration": max(
                    1, round(seconds if bytes_per_track is None else bytes_per_track / 176400)
                ),
            }
            for i in range(1, n_tracks + 1)
        ]
        return self._add(album_id, title or f"Bench Album {album_id}", artists, tracks)

    # -- queries --------------------------------------------------------------

    def track(self, track_id: int) -> TrackSpec:
        try:
            return self.tracks[track_id]
        except KeyError:
            raise NotFound(f"track {track_id}") from None

    def album(self, album_id: int) -> AlbumSpec:
        try:
            return self.albums[album_id]
        except KeyError:
            raise NotFound(f"album {album_id}") from None

    def playlist(self, uuid: str) -> ListingSpec:
        try:
            return self.playlists[uuid]
        except KeyError:
            raise NotFound(f"playlist {uuid}") from None

    def mix(self, mix_id: str) -> ListingSpec:
        try:
            return self.mixes[mix_id]
        except KeyError:
            raise NotFound(f"mix {mix_id}") from None

    def artist_name(self, artist_id: int) -> str:
        try:
            return self.artist_names[artist_id]
        except KeyError:
            raise NotFound(f"artist {artist_id}") from None

    def releases(self, artist_id: int) -> tuple[AlbumSpec, ...]:
        """The albums whose first artist is `artist_id`: ALBUMs newest first, then the rest."""
        self.artist_name(artist_id)
        own = [a for a in self.albums.values() if a.artists[0].id == artist_id]
        own.sort(key=lambda a: (a.type != "ALBUM", _newest_first(a)))
        return tuple(own)

    def album_for_cover(self, cover: str) -> int | None:
        """The album whose cover uuid is `cover`, if any."""
        return self._covers.get(cover)

    def effective_quality(self, track_id: int, quality: str) -> str:
        """The quality actually served: min(requested, the track's best)."""
        if quality not in QUALITIES:
            raise BadRequest(f"quality must be one of {', '.join(QUALITIES)}")
        track = self.track(track_id)
        best = track.max_quality
        if best == "HI_RES_LOSSLESS" and track.dash is None:
            best = "LOSSLESS"
        return QUALITIES[min(QUALITIES.index(quality), QUALITIES.index(best))]

    def media_kind(self, track_id: int, quality: str) -> str:
        """ "dash", "flac" or "aac" for what `quality` serves."""
        effective = self.effective_quality(track_id, quality)
        if effective == "HI_RES_LOSSLESS":
            return "dash"
        return "flac" if effective == "LOSSLESS" else "aac"

    def media_parts(self, track_id: int, quality: str) -> tuple[bytes, ...]:
        """The served bytes: one file for BTS, init + segments for DASH."""
        key = (track_id, self.effective_quality(track_id, quality))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            parts = self._generate(track_id, quality)
            self._cache[key] = parts
            size = sum(len(p) for c in self._cache.values() for p in c)
            while size > self._cache_limit and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                size -= sum(len(p) for p in dropped)
            return parts

    def _generate(self, track_id: int, quality: str) -> tuple[bytes, ...]:
        track = self.track(track_id)
        if track.encryption_type != "NONE":
            return (random.Random(track_id).randbytes(4096),)
        kind = self.media_kind(track_id, quality)
        if kind == "dash":
            return (audio.dash_init(), *audio.dash_segments())
        if kind == "aac":
            return (audio.aac_m4a(),)
        if track.flac_bytes is not None:
            return (audio.make_flac_of_size(track.flac_bytes, seed=track_id),)
        return (audio.make_flac(track.flac_seconds, seed=track_id),)

    def audio_for(self, track_id: int, quality: str) -> bytes:
        """Exactly what a client should end up with (DASH: init + segments concatenated)."""
        return b"".join(self.media_parts(track_id, quality))

    # -- JSON of §6 -----------------------------------------------------------

    def track_json(self, track_id: int) -> dict[str, Any]:
        t = self.track(track_id)
        album = self.album(t.album_id)
        return {
            "id": t.id,
            "title": t.title,
            "version": t.version,
            "duration": t.duration,
            "trackNumber": t.track_number,
            "volumeNumber": t.volume_number,
            "isrc": t.isrc,
            "copyright": t.copyright,
            "bpm": t.bpm,
            "replayGain": t.replay_gain,
            "peak": t.peak,
            "streamStartDate": t.stream_start_date,
            "artist": _artist_json(t.artists[0]),
            "artists": [{"id": a.id, "name": a.name, "type": a.type} for a in t.artists],
            "album": {"id": album.id, "title": album.title, "cover": album.cover},
        }

    def album_json(self, album_id: int, limit: int = MAX_PAGE, offset: int = 0) -> dict[str, Any]:
        if limit < 0 or offset < 0:
            raise BadRequest("limit and offset must not be negative")
        a = self.album(album_id)
        page = a.track_ids[offset : offset + min(limit, MAX_PAGE)]
        return {
            **self._album_header(a),
            "items": [{"type": "track", "item": self.track_json(tid)} for tid in page],
        }

    def _album_header(self, a: AlbumSpec) -> dict[str, Any]:
        return {
            "id": a.id,
            "title": a.title,
            "type": a.type,
            "numberOfTracks": len(a.track_ids),
            "numberOfVolumes": a.number_of_volumes,
            "releaseDate": a.release_date,
            "copyright": a.copyright,
            "cover": a.cover,
            "upc": a.upc,
            "artist": _artist_json(a.artists[0]),
            "artists": [{"id": x.id, "name": x.name, "type": x.type} for x in a.artists],
        }

    def _media_json(self, entry: int) -> dict[str, Any]:
        """A listing's entry: the track's /info/ JSON, or the music video's."""
        if entry != VIDEO_ID:
            return self.track_json(entry)
        return {
            "id": VIDEO_ID,
            "title": "Night Lines (Official Video)",
            "type": "Music Video",
            "duration": 200,
            "quality": "MP4_1080P",
            "album": None,
            "artist": {"id": ARTIST_ID, "name": ARTIST_NAME},
            "artists": [{"id": ARTIST_ID, "name": ARTIST_NAME, "type": "MAIN"}],
        }

    def playlist_json(self, uuid: str, limit: int = MAX_PAGE, offset: int = 0) -> dict[str, Any]:
        """/playlist/ without its version: the header and one page of entries."""
        if limit < 0 or offset < 0:
            raise BadRequest("limit and offset must not be negative")
        p = self.playlist(uuid)
        page = p.entries[offset : offset + min(limit, MAX_PLAYLIST_PAGE)]
        return {
            "playlist": {
                "uuid": p.id,
                "title": p.title,
                "description": f"{p.title}, for tests",
                "type": "USER",
                "creator": {"id": 0},
                "numberOfTracks": sum(1 for e in p.entries if e != VIDEO_ID),
                "numberOfVideos": sum(1 for e in p.entries if e == VIDEO_ID),
                "duration": sum(self.tracks[e].duration for e in p.entries if e != VIDEO_ID),
                "image": str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, p.id)),
            },
            "items": [
                {"item": self._media_json(e), "type": "video" if e == VIDEO_ID else "track"}
                for e in page
            ],
        }

    def mix_json(self, mix_id: str) -> dict[str, Any]:
        """/mix/ without its version: the header and every entry, unwrapped."""
        m = self.mix(mix_id)
        return {
            "mix": {"id": m.id, "title": m.title, "subTitle": ARTIST_NAME, "mixType": "ARTIST_MIX"},
            "items": [self._media_json(e) for e in m.entries],
        }

    def artist_json(self, artist_id: int) -> dict[str, Any]:
        """/artist/?id= without its version: who the artist is."""
        name = self.artist_name(artist_id)
        return {
            "artist": {"id": artist_id, "name": name, "picture": None, "popularity": 42},
            "cover": None,
        }

    def artist_releases_json(self, artist_id: int) -> dict[str, Any]:
        """/artist/?f= without its version: the releases (headers only) and top tracks."""
        releases = self.releases(artist_id)
        top = [tid for a in releases for tid in a.track_ids][:3]
        return {
            "albums": {"items": [self._album_header(a) for a in releases]},
            "tracks": [self.track_json(tid) for tid in top],
        }

    def playback_json(
        self, track_id: int, quality: str, base_url: str, token: str
    ) -> dict[str, Any]:
        """/track/ data; media URLs point at `base_url` and carry `token`."""
        t = self.track(track_id)
        album = self.album(t.album_id)
        effective = self.effective_quality(track_id, quality)
        kind = self.media_kind(track_id, quality)
        bit_depth: int | None
        if kind == "dash":
            mime, manifest = "application/dash+xml", self._mpd(t, base_url, token).encode()
            bit_depth, rate = audio.DASH_BIT_DEPTH, audio.DASH_SAMPLE_RATE
        else:
            ext, mime_type, codecs = (
                ("flac", "audio/flac", "flac")
                if kind == "flac"
                else ("m4a", "audio/mp4", "mp4a.40.2")
            )
            urls = [
                f"{base_url}/media/{mirror}/{t.id}/{effective}.{ext}?token={token}"
                for mirror in ("a", "b")
            ]
            bts: dict[str, Any] = {
                "mimeType": mime_type,
                "codecs": codecs,
                "encryptionType": t.encryption_type,
                "urls": urls,
            }
            if t.encryption_type != "NONE":
                bts["keyId"] = base64.b64encode(hashlib.md5(str(t.id).encode()).digest()).decode()
            mime, manifest = "application/vnd.tidal.bts", json.dumps(bts).encode()
            bit_depth = 16 if kind == "flac" else None
            rate = 44100
        if t.urlsafe_manifest:
            encoded = base64.urlsafe_b64encode(manifest).decode().rstrip("=")
        else:
            encoded = base64.b64encode(manifest).decode()
        return {
            "trackId": t.id,
            "assetPresentation": t.asset_presentation,
            "audioQuality": effective,
            "bitDepth": bit_depth,
            "sampleRate": rate,
            "manifestMimeType": mime,
            "manifest": encoded,
            "albumReplayGain": album.replay_gain,
            "albumPeakAmplitude": album.peak,
            "trackReplayGain": t.replay_gain,
            "trackPeakAmplitude": t.peak,
        }

    def lyrics_json(self, track_id: int) -> dict[str, Any]:
        """/lyrics/ `lyrics` object; NotFound when the track has none."""
        t = self.track(track_id)
        if t.lyrics is None:
            raise NotFound(f"lyrics of track {track_id}")
        return {
            "trackId": t.id,
            "lyricsProvider": "Example Lyrics",
            "providerCommontrackId": str(t.id),
            "providerLyricsId": str(t.id),
            "lyrics": t.lyrics,
            "subtitles": t.subtitles,
            "isRightToLeft": False,
        }

    def _mpd(self, t: TrackSpec, base_url: str, token: str) -> str:
        durations = audio.DASH_SEGMENT_DURATIONS
        scale = audio.DASH_TIMESCALE
        init = f'initialization="init.mp4?token={token}" media="$Number$.m4s?token={token}"'
        if t.dash == "timeline":
            runs: list[list[int]] = []
            for d in durations:
                if runs and runs[-1][0] == d:
                    runs[-1][1] += 1
                else:
                    runs.append([d, 0])
            timeline = "".join(f'<S d="{d}" r="{r}"/>' if r else f'<S d="{d}"/>' for d, r in runs)
            template = (
                f'<SegmentTemplate timescale="{scale}" {init} startNumber="1">'
                f"<SegmentTimeline>{timeline}</SegmentTimeline></SegmentTemplate>"
            )
        else:
            template = (
                f'<SegmentTemplate timescale="{scale}" duration="{durations[0]}" {init} '
                f'startNumber="{DASH_NO_TIMELINE_START_NUMBER}"/>'
            )
        seconds = audio.DASH_PRESENTATION_SECONDS
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
            'profiles="urn:mpeg:dash:profile:isoff-main:2011" '
            f'mediaPresentationDuration="PT{seconds}S" minBufferTime="PT{seconds}S">'
            f"<BaseURL>{base_url}/media/dash/{t.id}/</BaseURL>"
            '<Period id="0"><AdaptationSet id="0" contentType="audio" mimeType="audio/mp4" '
            'segmentAlignment="true">'
            f'<Representation id="FLAC,{audio.DASH_SAMPLE_RATE},{audio.DASH_BIT_DEPTH}" '
            f'codecs="flac" bandwidth="1536000" audioSamplingRate="{audio.DASH_SAMPLE_RATE}">'
            f"{template}</Representation></AdaptationSet></Period></MPD>"
        )

    def dash_part_index(self, track_id: int, number: int) -> int:
        """Index into media_parts of DASH segment `number` (1-based parts; 0 is init)."""
        start = DASH_NO_TIMELINE_START_NUMBER if self.track(track_id).dash == "template" else 1
        index = number - start + 1
        if not 1 <= index <= len(audio.DASH_SEGMENT_DURATIONS):
            raise NotFound(f"segment {number}")
        return index


def _newest_first(album: AlbumSpec) -> tuple[int, ...]:
    return tuple(-int(part) for part in album.release_date.split("-"))


def _populate(c: Catalog) -> None:
    examples = ArtistSpec(10, "The Examples")
    guest = ArtistSpec(11, "Guest Singer", "FEATURED")
    partner = ArtistSpec(12, "Second Band")
    c._add(
        TWO_DISC_ALBUM_ID,
        "Night Lines",
        (examples,),
        [
            {
                "title": "Opening",
                "track_number": 1,
                "lyrics": "First light on the night lines\nWe open slow",
                "subtitles": "[00:00.10] First light on the night lines\n[00:00.60] We open slow",
            },
            {
                "title": "Shared Ground",
                "track_number": 2,
                "artists": (examples, guest),
                "lyrics": "Meet me on the shared ground",
            },
            {"title": "Third Rail", "track_number": 3, "version": "Live", "urlsafe_manifest": True},
            {"title": "Second Side", "track_number": 1, "volume_number": 2},
            {
                "title": "Coda",
                "track_number": 2,
                "volume_number": 2,
                "artists": (examples, partner),
                "flac_seconds": 2.0,
                "duration": 2,
            },
        ],
        release_date="2019-05-03",
    )
    c._add(
        BIG_ALBUM_ID,
        "Hundred and Twenty",
        (ArtistSpec(20, "Long Player"),),
        [
            {"title": f"Part {i}", "track_number": i, "flac_seconds": 0.2}
            for i in range(1, BIG_ALBUM_TRACKS + 1)
        ],
        release_date="2021-11-19",
    )
    c._add(
        SINGLE_ALBUM_ID,
        "Lone Signal",
        (examples,),
        [{"title": "Lone Signal", "track_number": 1, "flac_seconds": 1.5, "duration": 2}],
        release_date="2023-02-10",
        album_type="SINGLE",
    )
    c._add(
        FORMATS_ALBUM_ID,
        "Formats",
        (partner,),
        [
            {"title": "Timeline", "track_number": 1, "max_quality": "HI_RES_LOSSLESS",
             "dash": "timeline", "duration": 4},
            {"title": "Template", "track_number": 2, "max_quality": "HI_RES_LOSSLESS",
             "dash": "template", "duration": 4},
            {"title": "Preview Only", "track_number": 3, "max_quality": "HIGH",
             "asset_presentation": "PREVIEW", "duration": 30},
            {"title": "Locked", "track_number": 4, "encryption_type": "OLD_AES"},
            {"title": "Lossy", "track_number": 5, "max_quality": "HIGH", "duration": 3},
        ],
        release_date="2020-07-01",
    )  # fmt: skip
    hostile_artist = ArtistSpec(40, "AC/DC")
    c._add(
        HOSTILE_ALBUM_ID,
        'Hostile / Album: <Test> "Quoted" | Pipe? * \\ ..',
        (hostile_artist,),
        [
            {"title": "../../../etc/passwd", "track_number": 1},
            {
                "title": "Bell\x07Nul\x00Tab\tNew\nLine\x1f\x7f",
                "track_number": 2,
                "artists": (ArtistSpec(41, '<>:"\\|?*'), ArtistSpec(42, "..", "FEATURED")),
            },
            {"title": "Ä" * 150, "track_number": 3, "version": "..", "urlsafe_manifest": True},
            {"title": ".hidden", "track_number": 4, "artists": (ArtistSpec(43, "/"),)},
        ],
        release_date="1999-12-31",
    )
    c._add(
        SECOND_ALBUM_ID,
        "Day Lines",
        (examples,),
        [{"title": "Morning", "track_number": 1}, {"title": "Noon", "track_number": 2}],
        release_date="2021-09-24",
    )
    c._add(
        EP_ALBUM_ID,
        "Small Hours",
        (examples,),
        [{"title": "Two A.M.", "track_number": 1}, {"title": "Four A.M.", "track_number": 2}],
        release_date="2024-03-15",
        album_type="EP",
    )
    listed = PLAYLIST_TRACK_IDS
    c.playlists[PLAYLIST_UUID] = ListingSpec(
        PLAYLIST_UUID, PLAYLIST_TITLE, (*listed[:2], VIDEO_ID, *listed[2:])
    )
    big = BIG_PLAYLIST_TRACK_IDS
    c.playlists[BIG_PLAYLIST_UUID] = ListingSpec(
        BIG_PLAYLIST_UUID, "Long Player Backwards", (*big[:50], VIDEO_ID, *big[50:])
    )
    c.mixes[MIX_ID] = ListingSpec(
        MIX_ID, MIX_TITLE, (*MIX_TRACK_IDS[:2], VIDEO_ID, *MIX_TRACK_IDS[2:])
    )


# -- the server ----------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as received; header names are lower-cased, `at` is when (Unix time).

    `client_port` is the client's end of the connection it came on: requests
    with the same one shared a (keep-alive) connection.
    """

    method: str
    path: str
    route: str | None
    query: dict[str, str]
    headers: dict[str, str]
    track_id: int | None
    album_id: int | None
    at: float = field(default_factory=time.time)
    client_port: int = 0


@dataclass
class _Fault:
    route: str
    kind: str
    remaining: int | None
    track_id: int | None
    album_id: int | None
    path_contains: str | None
    status: int
    retry_after: str | None
    after_bytes: int | None

    def matches(self, route: str, path: str, track_id: int | None, album_id: int | None) -> bool:
        return (
            self.route == route
            and (self.track_id is None or self.track_id == track_id)
            and (self.album_id is None or self.album_id == album_id)
            and (self.path_contains is None or self.path_contains in path)
        )


@dataclass
class Scripted:
    """A raw answer a test scripts for a route: any status, headers and body bytes.

    `body` may be an iterable of chunks (a generator for an endless body); then no
    Content-Length is sent unless `headers` gives one (which may lie), and the
    connection closes after the body. Nothing is encoded or checked: this is how
    tests play a hostile upstream.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""


# Given the request and the catalog's own JSON `data` for it (None for non-JSON
# routes or unknown ids), return the answer to send.
Responder = Callable[[RequestRecord, dict[str, Any] | None], Scripted]


@dataclass
class _Script:
    route: str
    responder: Responder
    remaining: int | None
    track_id: int | None
    album_id: int | None


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


class CatalogServer:
    """A real HTTP upstream on 127.0.0.1 serving `catalog`, run in a background thread.

    With `ssl_context` (a server-side context holding its certificate) it speaks
    HTTPS: the handshake runs in each connection's handler thread.
    """

    def __init__(
        self,
        catalog: Catalog | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        supports_range: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.catalog = catalog if catalog is not None else Catalog()
        self.supports_range = supports_range
        self.ssl_context = ssl_context
        self.throttle_bps: int | None = None
        self._address = (host, port)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._faults: list[_Fault] = []
        self._scripts: list[_Script] = []
        self._requests: list[RequestRecord] = []
        self._tokens: dict[str, tuple[int, str]] = {}
        self._media_bytes_sent = 0
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> str:
        """Bind (port 0: an ephemeral port), serve in a daemon thread, return the base URL."""
        if self._httpd is not None:
            raise RuntimeError("CatalogServer already started")
        self._httpd = _HTTPServer(self._address, _Handler, self)
        if self.ssl_context is not None:
            self._httpd.socket = self.ssl_context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="catalog-server", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving; hung and stalled responses end, open connections are closed."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.close_all_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> CatalogServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("CatalogServer not started")
        host, port = self._httpd.server_address[:2]
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{host!s}:{port}"

    @property
    def cover_base_url(self) -> str:
        return self.base_url + "/images"

    @property
    def port(self) -> int:
        return int(urlsplit(self.base_url).port or 0)

    # -- fault injection and observation --------------------------------------

    def inject(
        self,
        route: str,
        fault: str,
        times: int | None = 1,
        *,
        track_id: int | None = None,
        album_id: int | None = None,
        path_contains: str | None = None,
        status: int = 503,
        retry_after: float | str | None = None,
        after_bytes: int | None = None,
    ) -> None:
        """Make the next `times` matching requests (None: all, until cleared) misbehave.

        route: one of ROUTES; `track_id` matches info/track/lyrics/media, `album_id`
        album/cover (playlist, mix and artist requests match by route only).
        fault: hang (never answer), stall (headers and `after_bytes` of the body,
        default half, then nothing), status (`status`, optional Retry-After),
        reset (partial body then TCP RST), short (full Content-Length, partial
        body, then close), truncate (a well-formed answer whose Content-Length
        and body are only the first `after_bytes`, default half: a server
        lying about the file), truncate_chunked (the same cut body sent
        chunked, properly terminated), bad_json (truncated JSON), bad_shape (valid JSON
        with `version` and any envelope, fields missing), bad_manifest (track
        only: manifest not base64).
        """
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}")
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        if fault == "bad_manifest" and route != "track":
            raise ValueError("bad_manifest applies to the track route only")
        if fault in ("bad_json", "bad_shape") and route not in JSON_ROUTES:
            raise ValueError(f"{fault} applies to JSON routes only")
        if times is not None and times < 1:
            raise ValueError("times must be positive or None")
        with self._lock:
            self._faults.append(
                _Fault(
                    route,
                    fault,
                    times,
                    track_id,
                    album_id,
                    path_contains,
                    status,
                    None if retry_after is None else str(retry_after),
                    after_bytes,
                )
            )

    def script(
        self,
        route: str,
        responder: Responder,
        times: int | None = None,
        *,
        track_id: int | None = None,
        album_id: int | None = None,
    ) -> None:
        """Answer the next `times` matching requests (None: all) with `responder`'s `Scripted`.

        Scripts are checked before injected faults; the request is logged as usual.
        """
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}")
        with self._lock:
            self._scripts.append(_Script(route, responder, times, track_id, album_id))

    def clear_faults(self) -> None:
        """Forget every injected fault and scripted answer."""
        with self._lock:
            self._faults.clear()
            self._scripts.clear()

    def pending_faults(self) -> int:
        """How many injected faults have not yet been used up."""
        with self._lock:
            return len(self._faults)

    def expire_tokens(self) -> None:
        """Invalidate every media URL handed out so far (they now answer 404)."""
        with self._lock:
            self._tokens.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the log of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_for(
        self, route: str, *, track_id: int | None = None, album_id: int | None = None
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if r.route == route
            and (track_id is None or r.track_id == track_id)
            and (album_id is None or r.album_id == album_id)
        ]

    def wait_for_request(
        self, route: str, count: int = 1, *, track_id: int | None = None, timeout: float = 10.0
    ) -> bool:
        """Block until `count` requests for `route` (and `track_id`) have arrived; False on timeout.

        Blocking: from trio, call it through `trio.to_thread.run_sync`.
        """
        with self._arrived:
            return self._arrived.wait_for(
                lambda: len(self._matching(route, track_id)) >= count, timeout
            )

    def _matching(self, route: str, track_id: int | None) -> list[RequestRecord]:
        return [
            r
            for r in self._requests
            if r.route == route and (track_id is None or r.track_id == track_id)
        ]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def media_bytes_sent(self) -> int:
        """Media body bytes written to sockets so far (all connections)."""
        with self._lock:
            return self._media_bytes_sent

    # -- used by the handler ---------------------------------------------------

    def _record(self, record: RequestRecord) -> None:
        with self._arrived:
            self._requests.append(record)
            self._arrived.notify_all()

    def _take_fault(
        self, route: str, path: str, track_id: int | None, album_id: int | None
    ) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(route, path, track_id, album_id):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _take_script(
        self, route: str, track_id: int | None, album_id: int | None
    ) -> _Script | None:
        with self._lock:
            for script in self._scripts:
                if (
                    script.route == route
                    and script.track_id in (None, track_id)
                    and script.album_id in (None, album_id)
                ):
                    if script.remaining is not None:
                        script.remaining -= 1
                        if script.remaining == 0:
                            self._scripts.remove(script)
                    return script
        return None

    def _issue_token(self, track_id: int, quality: str) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._tokens[token] = (track_id, quality)
        return token

    def _token_valid(self, token: str, track_id: int, quality: str) -> bool:
        with self._lock:
            return self._tokens.get(token) == (track_id, quality)

    def _count_media(self, n: int) -> None:
        with self._lock:
            self._media_bytes_sent += n


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], app: CatalogServer
    ) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):  # clients hanging up are routine here
            super().handle_error(request, client_address)


_MEDIA_BTS = re.compile(r"^/media/([ab])/(\d+)/([A-Z_]+)\.(flac|m4a)$")
_MEDIA_DASH = re.compile(r"^/media/dash/(\d+)/(init\.mp4|(\d+)\.m4s)$")
_COVER = re.compile(r"^/images/((?:[0-9a-f]+/){4}[0-9a-f]+)/1280x1280\.jpg$")
_JSON_ROUTES = {f"/{route}/": route for route in JSON_ROUTES}
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _json(status: int, payload: dict[str, Any]) -> _Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return _Response(status, body, "application/json")


def _int_param(query: dict[str, str], name: str, default: int | None = None) -> int:
    raw = query.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"missing {name}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None


def _str_param(query: dict[str, str], name: str) -> str:
    raw = query.get(name)
    if not raw:
        raise BadRequest(f"missing {name}")
    return raw


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dlqd-catalog/1"
    timeout = 30  # idle keep-alive connections are dropped after this
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle plus
        # delayed ACKs add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is `CatalogServer.requests`."""

    def do_GET(self) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        route, track_id, album_id = self._classify(url.path, query)
        record = RequestRecord(
            "GET",
            url.path,
            route,
            query,
            {k.lower(): v for k, v in self.headers.items()},
            track_id,
            album_id,
            client_port=self.client_address[1],
        )
        app._record(record)
        script = app._take_script(route, track_id, album_id) if route is not None else None
        if script is not None:
            self._send_scripted(script.responder(record, self._catalog_data(route, query)))
            return
        fault = None
        if route is not None:
            fault = app._take_fault(route, self.path, track_id, album_id)
        if fault is not None and fault.kind == "hang":
            app._stopping.wait(HANG_SECONDS)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            response = _json(fault.status, {"detail": f"injected {fault.status}"})
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            self._send(response, media=False)
            return
        try:
            response = self._answer(route, url.path, query, track_id, album_id, fault)
        except NotFound as exc:
            response = _json(404, {"detail": f"Not found: {exc}"})
        except BadRequest as exc:
            response = _json(400, {"detail": str(exc)})
        if fault is not None and fault.kind in ("stall", "reset", "short"):
            self._send_partial(response, fault)
        elif fault is not None and fault.kind in ("truncate", "truncate_chunked"):
            self._send_truncated(response, fault)
        else:
            self._send(response, media=route == "media")

    def _classify(
        self, path: str, query: dict[str, str]
    ) -> tuple[str | None, int | None, int | None]:
        """(route, track id, album id) of a request, ids None when absent or unknown."""
        if path in _JSON_ROUTES:
            route = _JSON_ROUTES[path]
            if route not in ENVELOPES:  # playlist, mix, artist: no track or album id
                return route, None, None
            raw = query.get("id", "")
            ident = int(raw) if raw.isdigit() else None
            return (route, None, ident) if route == "album" else (route, ident, None)
        if m := _MEDIA_BTS.match(path):
            return "media", int(m.group(2)), None
        if m := _MEDIA_DASH.match(path):
            return "media", int(m.group(1)), None
        if m := _COVER.match(path):
            album_id = self.server.app.catalog.album_for_cover(m.group(1).replace("/", "-"))
            return "cover", None, album_id
        if path.startswith("/images/"):
            return "cover", None, None
        if path.startswith("/media/"):
            return "media", None, None
        return None, None, None

    def _catalog_data(self, route: str | None, query: dict[str, str]) -> dict[str, Any] | None:
        """What the catalog would answer on a JSON route, for a script to alter.

        The envelope's object (`data`, `lyrics`) where the route has one, else
        the whole answer (`version` included).
        """
        if route not in JSON_ROUTES:
            return None
        try:
            answer = self._json_answer(route, query)
        except (NotFound, BadRequest):
            return None
        envelope = ENVELOPES.get(route)
        return answer if envelope is None else answer[envelope]

    def _send_scripted(self, answer: Scripted) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        body = answer.body
        if isinstance(body, bytes):
            if "content-length" not in {name.lower() for name in answer.headers}:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.close_connection = True
        self.end_headers()
        for chunk in body:
            if self.server.app._stopping.is_set():
                return
            self.wfile.write(chunk)

    def _answer(
        self,
        route: str | None,
        path: str,
        query: dict[str, str],
        track_id: int | None,
        album_id: int | None,
        fault: _Fault | None,
    ) -> _Response:
        if route in JSON_ROUTES:
            answer = self._json_answer(route, query)
            envelope = ENVELOPES.get(route)
            if fault is not None and fault.kind == "bad_json":
                return _Response(200, b'{"version": "2.0", "data": {"id": ', "application/json")
            if fault is not None and fault.kind == "bad_shape":
                unexpected = {"unexpected": True}
                shape = unexpected if envelope is None else {envelope: unexpected}
                return _json(200, {"version": API_VERSION, **shape})
            if fault is not None and fault.kind == "bad_manifest":
                answer["data"]["manifest"] = "%%% not base64 %%%"
            return _json(200, answer)
        if route == "cover":
            if album_id is None:
                raise NotFound(path)
            return _Response(200, audio.cover_jpeg(), "image/jpeg")
        if route == "media" and track_id is not None:
            return self._media(path, query, track_id)
        raise NotFound(path)

    def _json_answer(self, route: str, query: dict[str, str]) -> dict[str, Any]:
        """The whole JSON answer of a JSON route, `version` and envelope included."""
        app = self.server.app
        catalog = app.catalog
        content: dict[str, Any]
        if route == "playlist":
            limit = _int_param(query, "limit", MAX_PAGE)
            offset = _int_param(query, "offset", 0)
            content = catalog.playlist_json(_str_param(query, "id"), limit, offset)
        elif route == "mix":
            content = catalog.mix_json(_str_param(query, "id"))
        elif route == "artist" and "f" in query:
            content = catalog.artist_releases_json(_int_param(query, "f"))
        elif route == "artist":
            content = catalog.artist_json(_int_param(query, "id"))
        elif route == "info":
            content = {"data": catalog.track_json(_int_param(query, "id"))}
        elif route == "lyrics":
            content = {"lyrics": catalog.lyrics_json(_int_param(query, "id"))}
        elif route == "album":
            limit = _int_param(query, "limit", MAX_PAGE)
            offset = _int_param(query, "offset", 0)
            content = {"data": catalog.album_json(_int_param(query, "id"), limit, offset)}
        else:
            ident = _int_param(query, "id")
            quality = query.get("quality", "LOSSLESS")
            token = app._issue_token(ident, catalog.effective_quality(ident, quality))
            content = {"data": catalog.playback_json(ident, quality, app.base_url, token)}
        return {"version": API_VERSION, **content}

    def _media(self, path: str, query: dict[str, str], track_id: int) -> _Response:
        app = self.server.app
        catalog = app.catalog
        token = query.get("token", "")
        if m := _MEDIA_BTS.match(path):
            quality = m.group(3)
            if not app._token_valid(token, track_id, quality):
                raise NotFound("media URL expired or unknown")
            kind = catalog.media_kind(track_id, quality)
            body = catalog.media_parts(track_id, quality)[0]
            content_type = "audio/flac" if kind == "flac" else "audio/mp4"
        else:
            m = _MEDIA_DASH.match(path)
            assert m is not None
            if not app._token_valid(token, track_id, "HI_RES_LOSSLESS"):
                raise NotFound("media URL expired or unknown")
            parts = catalog.media_parts(track_id, "HI_RES_LOSSLESS")
            index = 0 if m.group(3) is None else catalog.dash_part_index(track_id, int(m.group(3)))
            body, content_type = parts[index], "audio/mp4"
        etag = f'"{hashlib.sha1(body).hexdigest()[:20]}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes" if app.supports_range else "none"}
        return self._ranged(_Response(200, body, content_type, headers), etag)

    def _ranged(self, response: _Response, etag: str) -> _Response:
        """Apply a `Range: bytes=N-[M]` header (honouring If-Range) when ranges are on."""
        header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        m = _RANGE.match(header.strip()) if header else None
        if not self.server.app.supports_range or m is None or if_range not in (None, etag):
            return response
        total = len(response.body)
        start = int(m.group(1))
        end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
        if start >= total or end < start:
            response = _json(416, {"detail": "range not satisfiable"})
            response.headers["Content-Range"] = f"bytes */{total}"
            return response
        response.status = 206
        response.body = response.body[start : end + 1]
        response.headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        return response

    def _send_head(self, response: _Response, content_length: int) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(content_length))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, response: _Response, *, media: bool) -> None:
        self._send_head(response, len(response.body))
        app = self.server.app
        view = memoryview(response.body)
        pos = 0
        while pos < len(view):
            bps = app.throttle_bps if media else None
            chunk = len(view) - pos if bps is None else max(1024, bps // 10)
            piece = view[pos : pos + chunk]
            self.wfile.write(piece)
            pos += len(piece)
            if media:
                app._count_media(len(piece))
            if bps is not None and app._stopping.wait(len(piece) / bps):
                self.close_connection = True
                return

    def _send_truncated(self, response: _Response, fault: _Fault) -> None:
        """A well-formed answer carrying only the head of the body: nothing says it is cut."""
        body = response.body
        cut = fault.after_bytes if fault.after_bytes is not None else len(body) // 2
        body = body[: max(0, min(cut, len(body) - 1))]
        if fault.kind == "truncate":
            self._send_head(response, len(body))
            self.wfile.write(body)
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        for start in range(0, len(body), 16384):
            piece = body[start : start + 16384]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _send_partial(self, response: _Response, fault: _Fault) -> None:
        body = response.body
        cut = fault.after_bytes if fault.after_bytes is not None else len(body) // 2
        cut = max(0, min(cut, len(body) - 1))
        self._send_head(response, len(body))
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        if fault.kind == "stall":
            self.server.app._stopping.wait(HANG_SECONDS)
        elif fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


def main(argv: list[str] | None = None) -> None:
    """`python -m dlqd.demo.catalog`: print the base URL (and album ids), serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m dlqd.demo.catalog", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--add-album",
        nargs=2,
        type=int,
        action="append",
        default=[],
        metavar=("TRACKS", "BYTES_PER_TRACK"),
        help="add a benchmark album; its id is printed as 'album <id>'",
    )
    parser.add_argument("--no-range", action="store_true", help="ignore Range headers")
    args = parser.parse_args(argv)
    catalog = Catalog()
    added = [catalog.add_album(n, size) for n, size in args.add_album]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with CatalogServer(
        catalog, host=args.host, port=args.port, supports_range=not args.no_range
    ) as server:
        print(server.base_url, flush=True)
        for album_id in added:
            print(f"album {album_id}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
