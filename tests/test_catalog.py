"""The local catalog upstream: §6 shapes, real audio bytes, Range, faults, throttle, CLI."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mutagen.flac
import mutagen.mp4
import pytest
from defusedxml import ElementTree

from dlqd.demo import audio
from dlqd.demo.catalog import (
    AAC_ONLY_TRACK_ID,
    ARTIST_ALBUM_IDS,
    ARTIST_EP_IDS,
    ARTIST_ID,
    ARTIST_NAME,
    ARTIST_RELEASE_IDS,
    ARTIST_SINGLE_IDS,
    BIG_ALBUM_ID,
    BIG_ALBUM_TRACKS,
    BIG_PLAYLIST_TRACK_IDS,
    BIG_PLAYLIST_UUID,
    DASH_NO_TIMELINE_TRACK_ID,
    DASH_TIMELINE_TRACK_ID,
    ENCRYPTED_TRACK_ID,
    HOSTILE_ALBUM_ID,
    LIVE_TRACK_ID,
    MIX_ID,
    MIX_TITLE,
    MIX_TRACK_IDS,
    MULTI_ARTIST_TRACK_ID,
    PLAYLIST_TITLE,
    PLAYLIST_TRACK_IDS,
    PLAYLIST_UUID,
    PREVIEW_TRACK_ID,
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    UNKNOWN_ID,
    VIDEO_ID,
    Catalog,
    CatalogServer,
    Scripted,
)

TRACK_FIELDS = {
    "id",
    "title",
    "version",
    "duration",
    "trackNumber",
    "volumeNumber",
    "isrc",
    "copyright",
    "bpm",
    "replayGain",
    "peak",
    "streamStartDate",
    "artist",
    "artists",
    "album",
}
ALBUM_FIELDS = {
    "id",
    "title",
    "type",
    "numberOfTracks",
    "numberOfVolumes",
    "releaseDate",
    "copyright",
    "cover",
    "upc",
    "artist",
    "artists",
    "items",
}
PLAYBACK_FIELDS = {
    "trackId",
    "assetPresentation",
    "audioQuality",
    "bitDepth",
    "sampleRate",
    "manifestMimeType",
    "manifest",
    "albumReplayGain",
    "albumPeakAmplitude",
    "trackReplayGain",
    "trackPeakAmplitude",
}
MPD_NS = {"m": "urn:mpeg:dash:schema:mpd:2011"}
FLAC_BIN = shutil.which("flac")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture
def server(catalog: Catalog) -> Iterator[CatalogServer]:
    with CatalogServer(catalog) as srv:
        yield srv


@pytest.fixture
def client(server: CatalogServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=5.0) as c:
        yield c


def data(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"].startswith("2.")
    return body["data"]


def decode_manifest(text: str) -> bytes:
    """Decode as §6 says a client must: standard or URL-safe, padding optional."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def playback(client: httpx.Client, track_id: int, quality: str) -> dict[str, Any]:
    return data(client.get("/track/", params={"id": track_id, "quality": quality}))


def bts_urls(info: dict[str, Any]) -> list[str]:
    assert info["manifestMimeType"] == "application/vnd.tidal.bts"
    return json.loads(decode_manifest(info["manifest"]))["urls"]


def flac_test(tmp_path: Path, blob: bytes) -> None:
    if FLAC_BIN is None:
        pytest.skip("the flac binary is not installed")
    path = tmp_path / "t.flac"
    path.write_bytes(blob)
    result = subprocess.run([FLAC_BIN, "-t", "-s", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- §6 shapes -------------------------------------------------------------------


def test_info_has_every_field(client: httpx.Client, catalog: Catalog) -> None:
    track = data(client.get("/info/", params={"id": MULTI_ARTIST_TRACK_ID}))
    assert set(track) == TRACK_FIELDS
    spec = catalog.tracks[MULTI_ARTIST_TRACK_ID]
    assert track["title"] == spec.title and track["version"] is None
    assert track["artist"] == {"id": spec.artists[0].id, "name": spec.artists[0].name}
    assert [a["type"] for a in track["artists"]] == ["MAIN", "FEATURED"]
    assert track["album"]["id"] == TWO_DISC_ALBUM_ID
    live = data(client.get("/info/", params={"id": LIVE_TRACK_ID}))
    assert (live["title"], live["version"]) == ("Third Rail", "Live")


def test_two_disc_album(client: httpx.Client, catalog: Catalog) -> None:
    album = data(client.get("/album/", params={"id": TWO_DISC_ALBUM_ID}))
    assert set(album) == ALBUM_FIELDS
    assert album["numberOfVolumes"] == 2
    assert album["numberOfTracks"] == len(album["items"]) == 5
    discs = [(i["item"]["volumeNumber"], i["item"]["trackNumber"]) for i in album["items"]]
    assert discs == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    assert all(i["type"] == "track" and set(i["item"]) == TRACK_FIELDS for i in album["items"])
    assert album["cover"] == catalog.albums[TWO_DISC_ALBUM_ID].cover


def test_big_album_pages_with_limit_capped_at_100(client: httpx.Client, catalog: Catalog) -> None:
    first = data(client.get("/album/", params={"id": BIG_ALBUM_ID, "limit": 500}))
    assert first["numberOfTracks"] == BIG_ALBUM_TRACKS
    assert len(first["items"]) == 100
    ids = [i["item"]["id"] for i in first["items"]]
    offset = len(ids)
    while offset < first["numberOfTracks"]:
        page = data(
            client.get("/album/", params={"id": BIG_ALBUM_ID, "limit": 7, "offset": offset})
        )
        assert 0 < len(page["items"]) <= 7
        ids += [i["item"]["id"] for i in page["items"]]
        offset += len(page["items"])
    assert ids == list(catalog.albums[BIG_ALBUM_ID].track_ids)
    past = data(client.get("/album/", params={"id": BIG_ALBUM_ID, "offset": 1000}))
    assert past["items"] == []


def test_unknown_ids_and_bad_parameters(client: httpx.Client) -> None:
    for path in ("/info/", "/album/", "/track/"):
        response = client.get(path, params={"id": UNKNOWN_ID})
        assert response.status_code == 404
        assert "detail" in response.json()
        assert client.get(path, params={"id": "x"}).status_code == 400
    assert (
        client.get("/track/", params={"id": SINGLE_TRACK_ID, "quality": "NOPE"}).status_code == 400
    )
    assert client.get("/images/00/11/22/33/44/1280x1280.jpg").status_code == 404
    assert client.get("/media/a/1/LOSSLESS.flac").status_code == 404
    assert client.get("/nowhere").status_code == 404


def unenveloped(response: httpx.Response) -> dict[str, Any]:
    """The answer of a route without a `data` envelope (/playlist/, /mix/, /artist/)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"].startswith("2.") and "data" not in body
    return body


def test_playlist_lists_two_albums_out_of_order_with_a_video_item(
    client: httpx.Client, catalog: Catalog
) -> None:
    answer = unenveloped(client.get("/playlist/", params={"id": PLAYLIST_UUID}))
    header = answer["playlist"]
    assert (header["uuid"], header["title"]) == (PLAYLIST_UUID, PLAYLIST_TITLE)
    assert header["numberOfTracks"] == len(PLAYLIST_TRACK_IDS)
    assert [(i["type"], i["item"]["id"]) for i in answer["items"]] == [
        ("track", PLAYLIST_TRACK_IDS[0]),
        ("track", PLAYLIST_TRACK_IDS[1]),
        ("video", VIDEO_ID),
        ("track", PLAYLIST_TRACK_IDS[2]),
        ("track", PLAYLIST_TRACK_IDS[3]),
    ]
    tracks = [i["item"] for i in answer["items"] if i["type"] == "track"]
    assert all(set(track) == TRACK_FIELDS for track in tracks)
    assert {track["album"]["id"] for track in tracks} == {TWO_DISC_ALBUM_ID, SINGLE_ALBUM_ID}
    in_album_order = sorted(PLAYLIST_TRACK_IDS, key=lambda t: (catalog.track(t).album_id, t))
    assert list(PLAYLIST_TRACK_IDS) != in_album_order


def test_big_playlist_pages_with_limit_capped_at_500(client: httpx.Client) -> None:
    whole = unenveloped(client.get("/playlist/", params={"id": BIG_PLAYLIST_UUID, "limit": 999}))
    assert whole["playlist"]["numberOfTracks"] == len(BIG_PLAYLIST_TRACK_IDS)
    listed = [i["item"]["id"] for i in whole["items"] if i["type"] == "track"]
    assert listed == list(BIG_PLAYLIST_TRACK_IDS)
    assert len(whole["items"]) == len(BIG_PLAYLIST_TRACK_IDS) + 1  # the video
    page = unenveloped(
        client.get("/playlist/", params={"id": BIG_PLAYLIST_UUID, "limit": 100, "offset": 100})
    )
    assert [i["item"]["id"] for i in page["items"]] == [i["item"]["id"] for i in whole["items"]][
        100:
    ]
    default = unenveloped(client.get("/playlist/", params={"id": BIG_PLAYLIST_UUID}))
    assert len(default["items"]) == 100


def test_mix_items_are_bare_tracks_of_two_albums_and_a_video(client: httpx.Client) -> None:
    answer = unenveloped(client.get("/mix/", params={"id": MIX_ID}))
    assert (answer["mix"]["id"], answer["mix"]["title"]) == (MIX_ID, MIX_TITLE)
    items = answer["items"]
    assert [i["id"] for i in items if i["album"] is not None] == list(MIX_TRACK_IDS)
    (video,) = [i for i in items if i["album"] is None]
    assert video["id"] == VIDEO_ID and video["type"] == "Music Video"
    assert len({i["album"]["id"] for i in items if i["album"] is not None}) == 2


def test_artist_answers_who_it_is_and_its_albums_then_eps_and_singles(
    client: httpx.Client, catalog: Catalog
) -> None:
    who = unenveloped(client.get("/artist/", params={"id": ARTIST_ID}))
    assert who["artist"]["id"] == ARTIST_ID and who["artist"]["name"] == ARTIST_NAME
    assert who["cover"] is None
    releases = unenveloped(client.get("/artist/", params={"f": ARTIST_ID, "skip_tracks": "true"}))
    albums = releases["albums"]["items"]
    assert [a["id"] for a in albums] == list(ARTIST_RELEASE_IDS)
    types = {a["id"]: a["type"] for a in albums}
    assert {types[i] for i in ARTIST_ALBUM_IDS} == {"ALBUM"}
    assert {types[i] for i in ARTIST_EP_IDS} == {"EP"}
    assert {types[i] for i in ARTIST_SINGLE_IDS} == {"SINGLE"}
    assert set(albums[0]) == ALBUM_FIELDS - {"items"}
    assert all(a["numberOfTracks"] == len(catalog.album(a["id"]).track_ids) for a in albums)
    assert releases["tracks"] and all(set(t) == TRACK_FIELDS for t in releases["tracks"])


def test_new_routes_answer_404_for_unknown_ids_and_400_for_bad_parameters(
    client: httpx.Client,
) -> None:
    unknown = [
        ("/playlist/", {"id": "00000000-0000-4000-8000-000000000000"}),
        ("/mix/", {"id": "nope"}),
        ("/artist/", {"id": UNKNOWN_ID}),
        ("/artist/", {"f": UNKNOWN_ID}),
    ]
    for path, params in unknown:
        response = client.get(path, params=params)
        assert response.status_code == 404 and "detail" in response.json()
    bad = [
        ("/playlist/", {}),
        ("/playlist/", {"id": PLAYLIST_UUID, "offset": -1}),
        ("/mix/", {"id": ""}),
        ("/artist/", {}),
        ("/artist/", {"f": "x"}),
    ]
    for path, params in bad:
        assert client.get(path, params=params).status_code == 400, (path, params)


def test_faults_and_scripts_reach_the_new_routes(
    client: httpx.Client, server: CatalogServer
) -> None:
    server.inject("mix", "bad_shape")
    assert client.get("/mix/", params={"id": MIX_ID}).json() == {
        "version": "2.0",
        "unexpected": True,
    }
    server.inject("playlist", "status", status=503)
    assert client.get("/playlist/", params={"id": PLAYLIST_UUID}).status_code == 503
    seen: list[dict[str, Any] | None] = []

    def whole_answer(_request: object, data: dict[str, Any] | None) -> Scripted:
        seen.append(data)
        return Scripted(200, {"Content-Type": "application/json"}, b"{}")

    server.script("artist", whole_answer, times=1)
    assert client.get("/artist/", params={"id": ARTIST_ID}).json() == {}
    assert seen == [unenveloped(client.get("/artist/", params={"id": ARTIST_ID}))]
    assert [r.route for r in server.requests] == ["mix", "playlist", "artist", "artist"]


def test_hostile_strings_survive_json(client: httpx.Client, catalog: Catalog) -> None:
    album = data(client.get("/album/", params={"id": HOSTILE_ALBUM_ID}))
    assert "/" in album["title"] and ".." in album["title"]
    assert all(ch in album["title"] for ch in '<>:"\\|?*')
    titles = [i["item"]["title"] for i in album["items"]]
    assert titles == [catalog.tracks[t].title for t in catalog.albums[HOSTILE_ALBUM_ID].track_ids]
    assert "../../../etc/passwd" in titles
    assert any("\x00" in t and "\x07" in t and "\n" in t for t in titles)
    assert any(len(t.encode()) == 300 for t in titles)
    names = {a["name"] for i in album["items"] for a in i["item"]["artists"]}
    assert {"/", "..", '<>:"\\|?*', "AC/DC"} <= names


# -- audio -------------------------------------------------------------------------


def test_bts_flac_is_valid_and_identical_on_both_urls(
    client: httpx.Client, catalog: Catalog, tmp_path: Path
) -> None:
    info = playback(client, SINGLE_TRACK_ID, "LOSSLESS")
    assert set(info) == PLAYBACK_FIELDS
    assert (info["audioQuality"], info["bitDepth"], info["sampleRate"]) == ("LOSSLESS", 16, 44100)
    assert info["assetPresentation"] == "FULL"
    urls = bts_urls(info)
    assert len(urls) == 2
    blobs = [client.get(url) for url in urls]
    assert all(r.status_code == 200 and r.headers["content-type"] == "audio/flac" for r in blobs)
    assert blobs[0].content == blobs[1].content == catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    flac = mutagen.flac.FLAC(io.BytesIO(blobs[0].content))
    assert flac.info.total_samples == round(catalog.tracks[SINGLE_TRACK_ID].flac_seconds * 44100)
    assert (flac.info.channels, flac.info.bits_per_sample) == (2, 16)
    flac_test(tmp_path, blobs[0].content)


def test_each_track_has_its_own_audio(catalog: Catalog) -> None:
    first, second = catalog.albums[TWO_DISC_ALBUM_ID].track_ids[:2]
    assert catalog.audio_for(first, "LOSSLESS") != catalog.audio_for(second, "LOSSLESS")


@pytest.mark.parametrize(
    ("seconds", "rate", "channels", "bits"),
    [(0.0, 44100, 2, 16), (0.3, 44100, 2, 16), (1.05, 96000, 2, 24), (0.5, 22050, 1, 8)],
)
def test_make_flac_variants(
    seconds: float, rate: int, channels: int, bits: int, tmp_path: Path
) -> None:
    blob = audio.make_flac(seconds, seed=3, sample_rate=rate, channels=channels, bits=bits)
    info = mutagen.flac.FLAC(io.BytesIO(blob)).info
    assert info.total_samples == max(16, round(seconds * rate))
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (rate, channels, bits)
    flac_test(tmp_path, blob)


def test_make_flac_of_size_is_close_to_the_size(tmp_path: Path) -> None:
    blob = audio.make_flac_of_size(3 << 20, seed=9)
    assert abs(len(blob) - (3 << 20)) < 64 << 10
    flac_test(tmp_path, blob)


def test_urlsafe_manifest_without_padding(client: httpx.Client, catalog: Catalog) -> None:
    info = playback(client, LIVE_TRACK_ID, "LOSSLESS")
    assert not info["manifest"].endswith("=")
    url = bts_urls(info)[0]
    assert client.get(url).content == catalog.audio_for(LIVE_TRACK_ID, "LOSSLESS")


def test_aac_for_high_and_lossy_only_tracks(client: httpx.Client, catalog: Catalog) -> None:
    for track_id, asked in ((SINGLE_TRACK_ID, "HIGH"), (AAC_ONLY_TRACK_ID, "LOSSLESS")):
        info = playback(client, track_id, asked)
        assert info["audioQuality"] == "HIGH"
        manifest = json.loads(decode_manifest(info["manifest"]))
        assert (manifest["mimeType"], manifest["encryptionType"]) == ("audio/mp4", "NONE")
        blob = client.get(manifest["urls"][0]).content
        assert blob == catalog.audio_for(track_id, asked)
        assert mutagen.mp4.MP4(io.BytesIO(blob)).info.codec.startswith("mp4a")


def test_hi_res_falls_back_to_lossless_without_dash(client: httpx.Client) -> None:
    info = playback(client, SINGLE_TRACK_ID, "HI_RES_LOSSLESS")
    assert info["audioQuality"] == "LOSSLESS"
    assert info["manifestMimeType"] == "application/vnd.tidal.bts"


def dash_segment_urls(mpd_text: bytes) -> list[str]:
    """The init + media URLs an MPD describes, resolved against its BaseURL."""
    root = ElementTree.fromstring(mpd_text)
    base = root.find("m:BaseURL", MPD_NS).text
    template = root.find(".//m:SegmentTemplate", MPD_NS)
    start = int(template.get("startNumber", "1"))
    timeline = template.find("m:SegmentTimeline", MPD_NS)
    if timeline is not None:
        count = sum(int(s.get("r", "0")) + 1 for s in timeline.findall("m:S", MPD_NS))
    else:
        seconds = float(root.get("mediaPresentationDuration").removeprefix("PT").removesuffix("S"))
        scale, duration = int(template.get("timescale")), int(template.get("duration"))
        count = math.ceil(seconds * scale / duration)
    media = template.get("media")
    numbers = range(start, start + count)
    return [base + template.get("initialization")] + [
        base + media.replace("$Number$", str(n)) for n in numbers
    ]


@pytest.mark.parametrize("track_id", [DASH_TIMELINE_TRACK_ID, DASH_NO_TIMELINE_TRACK_ID])
def test_dash_concatenation_is_a_valid_mp4(
    client: httpx.Client, catalog: Catalog, track_id: int
) -> None:
    info = playback(client, track_id, "HI_RES_LOSSLESS")
    assert info["manifestMimeType"] == "application/dash+xml"
    assert (info["bitDepth"], info["sampleRate"]) == (24, 48000)
    urls = dash_segment_urls(decode_manifest(info["manifest"]))
    assert len(urls) == 1 + len(audio.DASH_SEGMENT_DURATIONS)
    blob = b"".join(client.get(url).raise_for_status().content for url in urls)
    assert blob == catalog.audio_for(track_id, "HI_RES_LOSSLESS")
    assert mutagen.mp4.MP4(io.BytesIO(blob)).info.codec == "fLaC"
    past_end = re.sub(r"/\d+\.m4s", "/99.m4s", urls[-1])
    assert client.get(past_end).status_code == 404


def test_preview_and_encrypted_are_flagged(client: httpx.Client) -> None:
    assert playback(client, PREVIEW_TRACK_ID, "LOSSLESS")["assetPresentation"] == "PREVIEW"
    locked = playback(client, ENCRYPTED_TRACK_ID, "LOSSLESS")
    assert json.loads(decode_manifest(locked["manifest"]))["encryptionType"] != "NONE"


def test_cover_served_at_the_design_path(client: httpx.Client, catalog: Catalog) -> None:
    cover = catalog.albums[TWO_DISC_ALBUM_ID].cover
    response = client.get(f"/images/{cover.replace('-', '/')}/1280x1280.jpg")
    assert response.status_code == 200
    assert response.content[:2] == b"\xff\xd8"


def test_added_album_has_large_tracks(catalog: Catalog) -> None:
    album_id = catalog.add_album(2, 400_000)
    assert len(catalog.albums[album_id].track_ids) == 2
    blob = catalog.audio_for(catalog.albums[album_id].track_ids[0], "LOSSLESS")
    assert abs(len(blob) - 400_000) < 20_000
    assert mutagen.flac.FLAC(io.BytesIO(blob)).info.channels == 2


# -- media: Range, tokens ----------------------------------------------------------


def test_range_returns_the_tail(client: httpx.Client, catalog: Catalog) -> None:
    url = bts_urls(playback(client, SINGLE_TRACK_ID, "LOSSLESS"))[0]
    full = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    whole = client.get(url)
    etag = whole.headers["etag"]
    assert int(whole.headers["content-length"]) == len(full)
    tail = client.get(url, headers={"Range": "bytes=1000-", "If-Range": etag})
    assert tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes 1000-{len(full) - 1}/{len(full)}"
    assert tail.content == full[1000:]
    assert tail.headers["etag"] == etag
    stale = client.get(url, headers={"Range": "bytes=1000-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == full
    beyond = client.get(url, headers={"Range": f"bytes={len(full)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(full)}"


def test_server_without_range_support_sends_everything(catalog: Catalog) -> None:
    with CatalogServer(catalog, supports_range=False) as srv, httpx.Client(timeout=5) as c:
        info = data(c.get(f"{srv.base_url}/track/", params={"id": SINGLE_TRACK_ID}))
        response = c.get(bts_urls(info)[0], headers={"Range": "bytes=1000-"})
        assert response.status_code == 200
        assert response.content == catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")


def test_expired_tokens_answer_404(client: httpx.Client, server: CatalogServer) -> None:
    url = bts_urls(playback(client, SINGLE_TRACK_ID, "LOSSLESS"))[0]
    server.expire_tokens()
    assert client.get(url).status_code == 404
    fresh = bts_urls(playback(client, SINGLE_TRACK_ID, "LOSSLESS"))[0]
    assert client.get(fresh).status_code == 200


def test_request_log(client: httpx.Client, server: CatalogServer) -> None:
    url = bts_urls(playback(client, SINGLE_TRACK_ID, "LOSSLESS"))[0]
    client.get(url, headers={"Range": "bytes=5-"})
    client.get("/info/", params={"id": LIVE_TRACK_ID})
    (media,) = server.requests_for("media", track_id=SINGLE_TRACK_ID)
    assert media.headers["range"] == "bytes=5-"
    assert "token" in media.query
    (track,) = server.requests_for("track")
    assert track.query == {"id": str(SINGLE_TRACK_ID), "quality": "LOSSLESS"}
    assert [r.route for r in server.requests] == ["track", "media", "info"]
    assert server.wait_for_request("info", timeout=0)


# -- faults -------------------------------------------------------------------------


def test_status_fault_with_retry_after_heals_after_times(
    client: httpx.Client, server: CatalogServer
) -> None:
    server.inject("info", "status", times=2, status=429, retry_after=3)
    for _ in range(2):
        response = client.get("/info/", params={"id": LIVE_TRACK_ID})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
    assert server.pending_faults() == 0
    assert client.get("/info/", params={"id": LIVE_TRACK_ID}).status_code == 200


def test_fault_restricted_to_one_id(client: httpx.Client, server: CatalogServer) -> None:
    server.inject("track", "status", status=503, track_id=LIVE_TRACK_ID)
    assert client.get("/track/", params={"id": SINGLE_TRACK_ID}).status_code == 200
    assert client.get("/track/", params={"id": LIVE_TRACK_ID}).status_code == 503
    server.inject("album", "status", status=500, album_id=BIG_ALBUM_ID)
    assert client.get("/album/", params={"id": TWO_DISC_ALBUM_ID}).status_code == 200
    assert client.get("/album/", params={"id": BIG_ALBUM_ID}).status_code == 500


def test_hang_never_answers(server: CatalogServer) -> None:
    server.inject("info", "hang")
    with httpx.Client(base_url=server.base_url, timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get("/info/", params={"id": LIVE_TRACK_ID})
        assert c.get("/info/", params={"id": LIVE_TRACK_ID}).status_code == 200


def test_stop_ends_a_hung_request(catalog: Catalog) -> None:
    srv = CatalogServer(catalog)
    srv.start()
    srv.inject("album", "hang")
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            httpx.get(f"{srv.base_url}/album/", params={"id": TWO_DISC_ALBUM_ID}, timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    worker = threading.Thread(target=fetch)
    worker.start()
    assert srv.wait_for_request("album")
    srv.stop()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert len(errors) == 1 and not isinstance(errors[0], httpx.TimeoutException)


def test_stall_sends_headers_and_part_of_the_body(server: CatalogServer, catalog: Catalog) -> None:
    with httpx.Client(base_url=server.base_url, timeout=5) as c:
        url = bts_urls(playback(c, SINGLE_TRACK_ID, "LOSSLESS"))[0]
    server.inject("media", "stall", after_bytes=1000)
    received = bytearray()
    with httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c, c.stream("GET", url) as response:
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == len(
            catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
        )
        with pytest.raises(httpx.ReadTimeout):
            for chunk in response.iter_raw():
                received += chunk
    assert bytes(received) == catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")[:1000]


@pytest.mark.parametrize(
    ("fault", "error"), [("reset", httpx.ReadError), ("short", httpx.RemoteProtocolError)]
)
def test_reset_and_short_cut_the_body(
    client: httpx.Client,
    server: CatalogServer,
    catalog: Catalog,
    fault: str,
    error: type[httpx.HTTPError],
) -> None:
    url = bts_urls(playback(client, SINGLE_TRACK_ID, "LOSSLESS"))[0]
    server.inject("media", fault, track_id=SINGLE_TRACK_ID, after_bytes=5000)
    received = bytearray()
    with (
        pytest.raises(error),
        client.stream("GET", url) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
    full = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    assert len(received) <= 5000  # a reset may drop bytes still in flight
    assert full.startswith(bytes(received))
    assert client.get(url).content == full  # healed


def test_bad_json_bad_shape_bad_manifest(client: httpx.Client, server: CatalogServer) -> None:
    server.inject("info", "bad_json")
    response = client.get("/info/", params={"id": LIVE_TRACK_ID})
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    server.inject("album", "bad_shape")
    shape = data(client.get("/album/", params={"id": TWO_DISC_ALBUM_ID}))
    assert not ALBUM_FIELDS & set(shape)
    server.inject("track", "bad_manifest")
    info = playback(client, SINGLE_TRACK_ID, "LOSSLESS")
    with pytest.raises(binascii.Error):
        decode_manifest(info["manifest"])


def test_cover_fault_and_validation(
    client: httpx.Client, server: CatalogServer, catalog: Catalog
) -> None:
    cover_path = (
        f"/images/{catalog.albums[TWO_DISC_ALBUM_ID].cover.replace('-', '/')}/1280x1280.jpg"
    )
    server.inject("cover", "status", status=502, album_id=TWO_DISC_ALBUM_ID)
    assert client.get(cover_path).status_code == 502
    assert client.get(cover_path).status_code == 200
    with pytest.raises(ValueError):
        server.inject("media", "bad_manifest")
    with pytest.raises(ValueError):
        server.inject("nowhere", "hang")


def test_persistent_fault_until_cleared(client: httpx.Client, server: CatalogServer) -> None:
    server.inject("info", "status", times=None, status=500)
    assert all(
        client.get("/info/", params={"id": LIVE_TRACK_ID}).status_code == 500 for _ in range(3)
    )
    server.clear_faults()
    assert client.get("/info/", params={"id": LIVE_TRACK_ID}).status_code == 200


# -- throttle -----------------------------------------------------------------------


def test_throttle_bounds_the_bytes_sent(
    client: httpx.Client, server: CatalogServer, catalog: Catalog
) -> None:
    url = bts_urls(playback(client, SINGLE_TRACK_ID, "LOSSLESS"))[0]
    full = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    bps = 20_000
    server.throttle_bps = bps
    received = bytearray()
    with client.stream("GET", url) as response:
        chunks = response.iter_raw()
        started = time.monotonic()
        for chunk in chunks:
            received += chunk
            if time.monotonic() - started >= 0.3:
                break
        elapsed = time.monotonic() - started
        # Upper bound only: a slow machine sends less, never more.
        assert len(received) <= bps * elapsed + 2 * bps // 10 + 1024
        assert len(received) < len(full)
        server.throttle_bps = None
        for chunk in chunks:
            received += chunk
    assert bytes(received) == full


# -- CLI ----------------------------------------------------------------------------


def test_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlqd.demo.catalog", "--port", "0", "--add-album", "1", "50000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        album_line = proc.stdout.readline().split()
        assert album_line[0] == "album"
        response = httpx.get(f"{base_url}/album/", params={"id": album_line[1]}, timeout=5)
        assert data(response)["numberOfTracks"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_scripted_answers_alter_catalog_json_then_stop(
    server: CatalogServer, client: httpx.Client
) -> None:
    def lone_surrogate_title(_request: object, data: dict[str, Any] | None) -> Scripted:
        assert data is not None
        data["title"] = "\ud800"
        body = json.dumps({"version": "2.0", "data": data}).encode()  # ASCII escapes
        return Scripted(200, {"Content-Type": "application/json"}, body)

    server.script("info", lone_surrogate_title, times=1, track_id=SINGLE_TRACK_ID)
    scripted = client.get("/info/", params={"id": SINGLE_TRACK_ID})
    assert b'"title": "\\ud800"' in scripted.content
    assert client.get("/info/", params={"id": SINGLE_TRACK_ID}).json()["data"]["title"] != "\ud800"


def test_scripted_endless_body_streams_without_length(server: CatalogServer) -> None:
    def endless(_request: object, _data: object) -> Scripted:
        return Scripted(200, {"Content-Type": "audio/flac"}, iter(lambda: b"x" * 65536, b""))

    server.script("media", endless)
    with (
        httpx.Client(timeout=5.0) as http,
        http.stream(
            "GET", f"{server.base_url}/media/a/{SINGLE_TRACK_ID}/LOSSLESS.flac"
        ) as response,
    ):
        assert "content-length" not in response.headers
        received = 0
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > 4 * 1024 * 1024:
                break
    assert received > 4 * 1024 * 1024
