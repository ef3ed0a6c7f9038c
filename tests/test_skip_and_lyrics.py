"""Issue 12, items 2 and 3: a track the library already holds is skipped without being
downloaded, and lyrics are embedded and/or written as `.lrc` beside the track.

Real dlqd processes against the real catalog upstream; the catalog's request log
says which requests were made, and mutagen reads the tags back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mutagen.flac import FLAC
from mutagen.mp4 import MP4

from dlqd.catalog import AAC_ONLY_TRACK_ID, SINGLE_TRACK_ID, TWO_DISC_ALBUM_ID, CatalogServer
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
