"""Issue 12, items 2 and 3: a track the library already holds is skipped without being
downloaded, and lyrics are embedded and/or written as `.lrc` beside the track.

Real dlqd processes against the real catalog upstream; the catalog's request log
says which requests were made, and mutagen reads the tags back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mutagen.flac import FLAC
from mutagen.mp4 import MP4

from dlqd.demo.catalog import (
    AAC_ONLY_TRACK_ID,
    LIVE_TRACK_ID,
    PLAIN_LYRICS_TRACK_ID,
    SINGLE_TRACK_ID,
    SYNCED_LYRICS_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Scripted,
)
from tests.conftest import DaemonFactory
from tests.support import DaemonProcess, file_digest

SKIPPED_IDENTICAL = "skipped_identical"


def start(make_daemon: DaemonFactory, upstream: CatalogServer, **files: Any) -> DaemonProcess:
    daemon = make_daemon(upstream=upstream, settings={"files": files} if files else None)
    daemon.start()
    return daemon


def finished(daemon: DaemonProcess, type_: str, target: int, quality: str = "LOSSLESS") -> Any:
    job = daemon.wait_job(daemon.submit(type_, target, quality))
    assert job["status"] == "completed", job
    return job


def outcomes(job: dict[str, Any]) -> list[str]:
    return [track["outcome"] for track in job["tracks"]]


def requests_for_tracks(upstream: CatalogServer, route: str, job: dict[str, Any]) -> list[Any]:
    return [
        request
        for track in job["tracks"]
        for request in upstream.requests_for(route, track_id=track["track_id"])
    ]


# --- skip without downloading ----------------------------------------------------------


def test_files_record_their_track_id_and_delivered_quality(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = start(make_daemon, upstream)
    flac_job = finished(daemon, "track", SINGLE_TRACK_ID)
    aac_job = finished(daemon, "track", AAC_ONLY_TRACK_ID)  # asked LOSSLESS, delivered HIGH

    flac = FLAC(daemon.library / flac_job["tracks"][0]["path"])
    assert flac["TIDAL_TRACK_ID"] == [str(SINGLE_TRACK_ID)]
    assert flac["TIDAL_QUALITY"] == ["LOSSLESS"]
    mp4 = MP4(daemon.library / aac_job["tracks"][0]["path"])
    assert mp4["----:com.dlqd:TIDAL_TRACK_ID"] == [str(AAC_ONLY_TRACK_ID).encode()]
    assert mp4["----:com.dlqd:TIDAL_QUALITY"] == [b"HIGH"]


def test_a_repeated_album_is_skipped_without_any_playback_or_media_request(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = start(make_daemon, upstream)
    first = finished(daemon, "album", TWO_DISC_ALBUM_ID)
    digests = {t["path"]: file_digest(daemon.library / t["path"]) for t in first["tracks"]}
    upstream.clear_requests()

    again = finished(daemon, "album", TWO_DISC_ALBUM_ID)  # the first job is finished: a new one

    assert again["id"] != first["id"]
    assert outcomes(again) == [SKIPPED_IDENTICAL] * len(first["tracks"])
    assert [t["path"] for t in again["tracks"]] == [t["path"] for t in first["tracks"]]
    assert requests_for_tracks(upstream, "media", again) == []
    assert requests_for_tracks(upstream, "track", again) == []
    assert [(t["bytes_done"], t["bytes_total"]) for t in again["tracks"]] == [(0, 0)] * 5
    assert {p: file_digest(daemon.library / p) for p in digests} == digests


def test_a_higher_quality_asked_but_the_same_delivered_is_skipped_without_media_requests(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    # The album's tracks have no hi-res stream: HI_RES_LOSSLESS delivers LOSSLESS again,
    # which only the playback info can tell; the media are never asked for.
    daemon = start(make_daemon, upstream)
    first = finished(daemon, "album", TWO_DISC_ALBUM_ID, "LOSSLESS")
    upstream.clear_requests()

    again = finished(daemon, "album", TWO_DISC_ALBUM_ID, "HI_RES_LOSSLESS")

    assert outcomes(again) == [SKIPPED_IDENTICAL] * len(first["tracks"])
    assert requests_for_tracks(upstream, "media", again) == []
    assert [t["quality"] for t in again["tracks"]] == ["LOSSLESS"] * len(first["tracks"])


def test_a_lower_quality_on_record_is_downloaded_again_when_a_higher_one_is_delivered(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    # Same name (the template has no {quality}), but a file recorded as LOW is not the
    # HIGH stream a later job gets: it is downloaded and replaced.
    daemon = start(make_daemon, upstream)
    low = finished(daemon, "track", AAC_ONLY_TRACK_ID, "LOW")
    upstream.clear_requests()

    high = finished(daemon, "track", AAC_ONLY_TRACK_ID, "HIGH")

    assert high["tracks"][0]["path"] == low["tracks"][0]["path"]
    assert outcomes(high) == ["overwritten"]
    assert upstream.requests_for("media", track_id=AAC_ONLY_TRACK_ID)
    tags = MP4(daemon.library / high["tracks"][0]["path"])
    assert tags["----:com.dlqd:TIDAL_QUALITY"] == [b"HIGH"]


def test_a_file_retagged_by_the_user_still_counts_as_the_same_track(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    # Identity is the recorded track id and quality, not the bytes: a tag editor's
    # changes are kept, and nothing is downloaded again.
    daemon = start(make_daemon, upstream)
    first = finished(daemon, "track", SINGLE_TRACK_ID)
    path = daemon.library / first["tracks"][0]["path"]
    edited = FLAC(path)
    edited["TITLE"] = ["My Own Title"]
    edited.save()
    retagged = path.read_bytes()
    upstream.clear_requests()

    again = finished(daemon, "track", SINGLE_TRACK_ID)

    assert outcomes(again) == [SKIPPED_IDENTICAL]
    assert upstream.requests_for("media", track_id=SINGLE_TRACK_ID) == []
    assert path.read_bytes() == retagged


def test_under_skip_a_foreign_file_at_the_path_is_kept_without_a_media_request(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = start(make_daemon, upstream, conflict="skip")
    first = finished(daemon, "track", SINGLE_TRACK_ID)
    path = daemon.library / first["tracks"][0]["path"]
    path.write_bytes(b"the user's own file, no tags at all")
    upstream.clear_requests()

    again = finished(daemon, "track", SINGLE_TRACK_ID)

    assert outcomes(again) == ["skipped_exists"]
    assert again["tracks"][0]["path"] == first["tracks"][0]["path"]
    assert upstream.requests_for("media", track_id=SINGLE_TRACK_ID) == []
    assert path.read_bytes() == b"the user's own file, no tags at all"


def test_a_broken_file_at_the_path_is_not_identical_and_is_replaced(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    # Hostile library content: a file that starts like FLAC and then is garbage.
    daemon = start(make_daemon, upstream)
    first = finished(daemon, "track", SINGLE_TRACK_ID)
    path = daemon.library / first["tracks"][0]["path"]
    good = path.read_bytes()
    path.write_bytes(b"fLaC" + b"\xff" * 64 + b"TIDAL_TRACK_ID=300001")
    upstream.clear_requests()

    again = finished(daemon, "track", SINGLE_TRACK_ID)

    assert outcomes(again) == ["overwritten"]
    assert upstream.requests_for("media", track_id=SINGLE_TRACK_ID)
    assert path.read_bytes() == good
    assert daemon.call("health")["ok"] is True


def test_a_link_at_the_path_is_never_read_and_fails_the_track_as_before(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    daemon = start(make_daemon, upstream)
    first = finished(daemon, "track", SINGLE_TRACK_ID)
    path = daemon.library / first["tracks"][0]["path"]
    outside = tmp_path / "outside.flac"
    original = path.read_bytes()  # the very file, tags and all, but outside the library
    outside.write_bytes(original)
    path.unlink()
    path.symlink_to(outside)

    job = daemon.wait_job(daemon.submit("track", SINGLE_TRACK_ID))

    assert job["status"] == "failed"
    assert job["tracks"][0]["error"]["code"] == "FILESYSTEM_ERROR"
    assert path.is_symlink() and outside.read_bytes() == original


# --- lyrics --------------------------------------------------------------------------


def lrc_beside(library: Path, track_path: str) -> Path:
    return (library / track_path).with_suffix(".lrc")


def lyrics_tag(path: Path) -> list[str] | None:
    tags = FLAC(path).tags
    assert tags is not None
    return tags.get("LYRICS")


@pytest.mark.parametrize(
    ("setting", "embedded", "lrc"),
    [("embed", True, False), ("lrc", False, True), ("both", True, True), ("none", False, False)],
)
def test_lyrics_are_embedded_and_or_written_as_lrc_per_the_setting(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    catalog: Catalog,
    setting: str,
    embedded: bool,
    lrc: bool,
) -> None:
    spec = catalog.track(SYNCED_LYRICS_TRACK_ID)
    daemon = start(make_daemon, upstream, lyrics=setting)

    job = finished(daemon, "track", SYNCED_LYRICS_TRACK_ID)

    path = job["tracks"][0]["path"]
    assert lyrics_tag(daemon.library / path) == ([spec.lyrics] if embedded else None)
    lrc_file = lrc_beside(daemon.library, path)
    if lrc:
        assert lrc_file.read_text(encoding="utf-8") == spec.subtitles + "\n"
        assert lrc_file.stat().st_mode == (daemon.library / path).stat().st_mode
    else:
        assert not lrc_file.exists()
    asked = upstream.requests_for("lyrics", track_id=SYNCED_LYRICS_TRACK_ID)
    assert len(asked) == (0 if setting == "none" else 1)
    assert not [p for p in (daemon.library / path).parent.iterdir() if ".dlqd-tmp" in p.name]


def test_lyrics_without_synced_subtitles_write_no_lrc(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = start(make_daemon, upstream, lyrics="both")

    job = finished(daemon, "track", PLAIN_LYRICS_TRACK_ID)

    path = job["tracks"][0]["path"]
    assert lyrics_tag(daemon.library / path) == [catalog.track(PLAIN_LYRICS_TRACK_ID).lyrics]
    assert not lrc_beside(daemon.library, path).exists()


def test_a_404_from_lyrics_leaves_the_track_completed_without_lyrics(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = start(make_daemon, upstream, lyrics="both")

    job = finished(daemon, "track", LIVE_TRACK_ID)  # the catalog has no lyrics for it

    [asked] = upstream.requests_for("lyrics", track_id=LIVE_TRACK_ID)
    assert asked.route == "lyrics"
    path = job["tracks"][0]["path"]
    assert lyrics_tag(daemon.library / path) is None
    assert not lrc_beside(daemon.library, path).exists()


def test_lyrics_are_embedded_in_mp4_as_the_lyr_atom(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    body = {
        "version": "2.0",
        "lyrics": {"trackId": AAC_ONLY_TRACK_ID, "lyrics": "Lossy words", "subtitles": ""},
    }
    upstream.script(
        "lyrics",
        lambda _r, _d: Scripted(
            200, {"Content-Type": "application/json"}, json.dumps(body).encode()
        ),
        track_id=AAC_ONLY_TRACK_ID,
    )
    daemon = start(make_daemon, upstream)

    job = finished(daemon, "track", AAC_ONLY_TRACK_ID)

    assert MP4(daemon.library / job["tracks"][0]["path"])["\xa9lyr"] == ["Lossy words"]


GARBAGE = {
    "not json": b"<html>lyrics</html>",
    "no lyrics object": b'{"version": "2.0", "data": {"lyrics": "x"}}',
    "lyrics not a string": b'{"version": "2.0", "lyrics": {"lyrics": ["x"], "subtitles": 7}}',
    "lone surrogate": b'{"version": "2.0", "lyrics": {"lyrics": "\\ud800 words"}}',
    "too long": b'{"version": "2.0", "lyrics": {"lyrics": "' + b"la " * 100_000 + b'"}}',
    "another track": b'{"version": "2.0", "lyrics": {"trackId": 7, "lyrics": "not ours"}}',
    "a list": b"[1, 2, 3]",
}


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_lyrics_route_answering_garbage_leaves_the_track_completed(
    make_daemon: DaemonFactory, upstream: CatalogServer, body: bytes
) -> None:
    def garbage(_record: RequestRecord, _data: Any) -> Scripted:
        return Scripted(200, {"Content-Type": "application/json"}, body)

    upstream.script("lyrics", garbage)
    daemon = start(make_daemon, upstream, lyrics="both")

    job = finished(daemon, "track", SYNCED_LYRICS_TRACK_ID)

    path = job["tracks"][0]["path"]
    assert lyrics_tag(daemon.library / path) is None
    assert not lrc_beside(daemon.library, path).exists()
    assert daemon.call("health")["ok"] is True


def test_a_failing_lyrics_route_neither_fails_tracks_nor_holds_the_queue(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    # Five tracks, one 503 each: as many as upstream.failure_threshold, were they counted.
    upstream.inject("lyrics", "status", status=503, times=None)
    daemon = start(make_daemon, upstream, lyrics="both")

    job = finished(daemon, "album", TWO_DISC_ALBUM_ID)

    for track in job["tracks"]:
        assert len(upstream.requests_for("lyrics", track_id=track["track_id"])) == 1
        assert lyrics_tag(daemon.library / track["path"]) is None
    assert daemon.call("stats")["holds"] == []


def test_a_link_at_the_lrc_name_is_neither_followed_nor_replaced(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    daemon = start(make_daemon, upstream, lyrics="lrc")
    first = finished(daemon, "track", SYNCED_LYRICS_TRACK_ID)
    lrc_file = lrc_beside(daemon.library, first["tracks"][0]["path"])
    lrc_file.unlink()
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    lrc_file.symlink_to(outside)
    (daemon.library / first["tracks"][0]["path"]).write_bytes(b"foreign: downloaded again")

    again = finished(daemon, "track", SYNCED_LYRICS_TRACK_ID)

    assert again["tracks"][0]["outcome"] == "overwritten"
    assert lrc_file.is_symlink() and outside.read_text() == "not yours"
