"""Issue 12 item 1: playlist and mix jobs, end to end.

Real dlqd processes against the real catalog upstream: a playlist's or mix's
tracks land in their own albums' folders, named and tagged exactly as their
album jobs name and tag them (read back with mutagen), and an extended M3U8
in `files.playlist_dir` lists the files, in the listing's order, relative to
itself. The catalog's request log says what was asked upstream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from dlqd import m3u8
from dlqd.demo.catalog import (
    MIX_ID,
    MIX_TITLE,
    MIX_TRACK_IDS,
    PLAYLIST_TITLE,
    PLAYLIST_TRACK_IDS,
    PLAYLIST_UUID,
    SECOND_ALBUM_ID,
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    VIDEO_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Scripted,
)
from dlqd.errors import DlqdError, ErrorCode
from dlqd.finalize import write_playlist
from dlqd.m3u8 import PlaylistEntry
from tests.conftest import DaemonFactory
from tests.support import REPO, DaemonProcess, dlqctl, held_daemon, wait_until
from tests.test_downloads import expected_relpath, expected_vorbis, vorbis_tags
from tests.test_hooks_notify import Receiver, log_lines_with, write_hook
from tests.test_hooks_notify import receiver as receiver  # the fixture

PLAYLISTS = "Playlists"  # files.playlist_dir's default
MISSING_PLAYLIST_UUID = "00000000-0000-4000-8000-000000000000"


def start(
    make_daemon: DaemonFactory, upstream: CatalogServer, name: str = "d", **sections: Any
) -> DaemonProcess:
    daemon = make_daemon(name, upstream=upstream, settings=sections or None)
    daemon.start()
    return daemon


def playlist_path(daemon: DaemonProcess, title: str, folder: str = PLAYLISTS) -> Path:
    return daemon.library / folder / m3u8.file_name(title)


def m3u8_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def entries_of(path: Path) -> list[str]:
    """The file's entries as written: every line that is not a directive or comment."""
    return [line for line in m3u8_lines(path) if not line.startswith("#")]


def resolved_entries(path: Path, library: Path) -> list[str]:
    """Each entry resolved against the playlist's folder, as a library-relative path."""
    return [
        (path.parent / entry).resolve().relative_to(library.resolve()).as_posix()
        for entry in entries_of(path)
    ]


def album_ids(catalog: Catalog, track_ids: tuple[int, ...]) -> set[int]:
    return {catalog.track(track_id).album_id for track_id in track_ids}


def assert_tagged_as_by_album_jobs(
    daemon: DaemonProcess, catalog: Catalog, job: dict[str, Any], track_ids: tuple[int, ...]
) -> None:
    """Each track at its album job's path, with its album job's tags; a cover in each folder."""
    assert [track["track_id"] for track in job["tracks"]] == list(track_ids)
    for track in job["tracks"]:
        assert track["path"] == expected_relpath(catalog, track["track_id"], "flac")
        tags = vorbis_tags(daemon.library / track["path"])
        assert tags == expected_vorbis(catalog, track["track_id"]), track["track_id"]
    for track_id in track_ids:
        folder = PurePosixPath(expected_relpath(catalog, track_id, "flac")).parent
        assert (daemon.library / folder / "cover.jpg").is_file()


def assert_m3u8_lists(
    daemon: DaemonProcess, catalog: Catalog, path: Path, title: str, track_ids: tuple[int, ...]
) -> None:
    """`#EXTM3U`, the source, the title, then `#EXTINF` + a relative path, per track in order."""
    lines = m3u8_lines(path)
    assert lines[0] == "#EXTM3U" and lines[1].startswith("#DLQD-SOURCE:")
    assert lines[2] == f"#PLAYLIST:{title}"
    extinf = [line for line in lines if line.startswith("#EXTINF:")]
    assert extinf == [
        f"#EXTINF:{catalog.track(t).duration},"
        f"{vorbis_tags(daemon.library / expected_relpath(catalog, t, 'flac'))['artist'][0]}"
        f" - {vorbis_tags(daemon.library / expected_relpath(catalog, t, 'flac'))['title'][0]}"
        for t in track_ids
    ]
    assert all(entry.startswith("../") for entry in entries_of(path))  # relative, not absolute
    assert resolved_entries(path, daemon.library) == [
        expected_relpath(catalog, t, "flac") for t in track_ids
    ]


# --- playlists and mixes end to end ---------------------------------------------------


def test_a_playlist_spanning_two_albums_lands_in_both_album_folders_with_an_m3u8_in_order(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = start(make_daemon, upstream)
    assert len(album_ids(catalog, PLAYLIST_TRACK_IDS)) == 2

    job = daemon.wait_job(daemon.submit("playlist", PLAYLIST_UUID))

    assert job["status"] == "completed", job
    assert (job["type"], job["target_id"], job["title"]) == (
        "playlist",
        PLAYLIST_UUID,
        PLAYLIST_TITLE,
    )
    assert job["artist"] == "The Examples"  # every track's main artist: theirs, not "Various"
    assert VIDEO_ID not in [track["track_id"] for track in job["tracks"]]
    assert_tagged_as_by_album_jobs(daemon, catalog, job, PLAYLIST_TRACK_IDS)
    path = playlist_path(daemon, PLAYLIST_TITLE)
    assert_m3u8_lists(daemon, catalog, path, PLAYLIST_TITLE, PLAYLIST_TRACK_IDS)
    assert len(entries_of(path)) == len(PLAYLIST_TRACK_IDS)  # the video has no entry
    for album_id in album_ids(catalog, PLAYLIST_TRACK_IDS):  # each album's metadata read once
        assert len(upstream.requests_for("album", album_id=album_id)) == 1, album_id
    assert upstream.requests_for("info") == []  # every track was in its album's listing


def test_the_m3u8_is_part_of_the_jobs_result_in_show_and_the_hooks_files_and_survives_restart(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    out = tmp_path / "hook-out"
    hook = write_hook(tmp_path / "hook.sh", f'cp "$DLQD_FILES" {out}\n')
    daemon = start(make_daemon, upstream, hooks={"on_job_finished": str(hook)})

    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    job = daemon.wait_job(job_id)

    written = f"{PLAYLISTS}/{m3u8.file_name(PLAYLIST_TITLE)}"
    assert (job["status"], job["playlist_path"]) == ("completed", written)
    assert (daemon.library / written).is_file()
    wait_until(out.exists, what="the completion hook")
    assert out.read_text().splitlines() == [*(t["path"] for t in job["tracks"]), written]
    code, shown, _ = dlqctl(daemon.socket, "show", job_id)
    assert code == 0 and f"  playlist: {written}" in shown.splitlines()

    daemon.kill()  # the finish record holds it: replayed, not recomputed
    daemon.start()
    assert daemon.job(job_id)["playlist_path"] == written
    album = daemon.wait_job(daemon.submit("album", SINGLE_ALBUM_ID))
    assert album["playlist_path"] is None  # only playlists and mixes write one


def test_a_mix_lands_in_its_albums_folders_with_an_m3u8_in_order(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = start(make_daemon, upstream, files={"playlist_dir": "Lists/Mixes"})

    job = daemon.wait_job(daemon.submit("mix", MIX_ID))

    assert job["status"] == "completed", job
    assert (job["type"], job["target_id"], job["title"]) == ("mix", MIX_ID, MIX_TITLE)
    assert VIDEO_ID not in [track["track_id"] for track in job["tracks"]]
    assert_tagged_as_by_album_jobs(daemon, catalog, job, MIX_TRACK_IDS)
    path = playlist_path(daemon, MIX_TITLE, "Lists/Mixes")
    assert_m3u8_lists(daemon, catalog, path, MIX_TITLE, MIX_TRACK_IDS)
    assert entries_of(path)[0].startswith("../../")  # two folders up from Lists/Mixes
    for album_id in album_ids(catalog, MIX_TRACK_IDS):
        assert len(upstream.requests_for("album", album_id=album_id)) == 1, album_id


def test_a_track_its_album_does_not_list_falls_back_to_its_own_metadata(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    unlisted = PLAYLIST_TRACK_IDS[-1]
    album_id = catalog.track(unlisted).album_id

    def without_the_track(_request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        assert data is not None
        items = [item for item in data["items"] if item["item"]["id"] != unlisted]
        body = {"version": "2.0", "data": {**data, "items": items, "numberOfTracks": len(items)}}
        return Scripted(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    upstream.script("album", without_the_track, album_id=album_id)
    daemon = start(make_daemon, upstream)

    job = daemon.wait_job(daemon.submit("playlist", PLAYLIST_UUID))

    assert job["status"] == "completed", job
    assert len(upstream.requests_for("info", track_id=unlisted)) == 1
    assert [r.track_id for r in upstream.requests_for("info")] == [unlisted]
    fallback = job["tracks"][-1]
    assert fallback["track_id"] == unlisted
    tags = vorbis_tags(daemon.library / fallback["path"])
    assert (tags["album"], tags["albumartist"]) == (
        [catalog.album(album_id).title],
        [catalog.album(album_id).artists[0].name],
    )
    assert tags["title"] == [catalog.track(unlisted).title]


# --- tracks the upstream does not have --------------------------------------------------


def listed_title(catalog: Catalog, track_id: int) -> str:
    """A track's title as a listing shows it: with its version ("Third Rail (Live)")."""
    spec = catalog.track(track_id)
    return f"{spec.title} ({spec.version})" if spec.version else spec.title


GONE_TRACK_ID = SINGLE_TRACK_ID  # the playlist's only track of its album (a single)
GONE_ALBUM_ID = SINGLE_ALBUM_ID


def test_a_track_whose_album_and_info_404_fails_alone_and_the_others_download(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    catalog: Catalog,
    receiver: Receiver,
) -> None:
    upstream.inject("album", "status", times=None, album_id=GONE_ALBUM_ID, status=404)
    upstream.inject("info", "status", times=None, track_id=GONE_TRACK_ID, status=404)
    daemon = start(make_daemon, upstream, notify={"urls": [receiver.url()]})

    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    job = daemon.wait_job(job_id)

    assert job["status"] == "partial", job
    assert job["error"]["code"] == "UPSTREAM_NOT_FOUND"
    assert [track["track_id"] for track in job["tracks"]] == list(PLAYLIST_TRACK_IDS)
    place = PLAYLIST_TRACK_IDS.index(GONE_TRACK_ID)
    gone = job["tracks"][place]
    assert (gone["status"], gone["error"]["code"], gone["path"]) == (
        "failed",
        "UPSTREAM_NOT_FOUND",
        None,
    )
    assert gone["title"] == listed_title(catalog, GONE_TRACK_ID)  # as the playlist lists it
    assert gone["duration_s"] == catalog.track(GONE_TRACK_ID).duration
    assert upstream.requests_for("track", track_id=GONE_TRACK_ID) == []  # never tried
    kept = tuple(t for t in PLAYLIST_TRACK_IDS if t != GONE_TRACK_ID)
    assert_tagged_as_by_album_jobs(
        daemon, catalog, {**job, "tracks": [t for t in job["tracks"] if t is not gone]}, kept
    )
    assert_m3u8_lists(daemon, catalog, playlist_path(daemon, PLAYLIST_TITLE), PLAYLIST_TITLE, kept)

    code, shown, _ = dlqctl(daemon.socket, "show", job_id)
    assert code == 0
    (row,) = [line for line in shown.splitlines() if gone["title"] in line]
    assert "failed" in row and "UPSTREAM_NOT_FOUND" in shown
    summary = log_lines_with(daemon, f"job {job_id} partial:")
    assert summary and f"3/{len(PLAYLIST_TRACK_IDS)} tracks" in summary[-1], summary
    wait_until(lambda: receiver.posts, what="the notification")
    ((_, message),) = receiver.posts
    assert f"{place + 1:02d} {gone['title']} (UPSTREAM_NOT_FOUND)" in message["message"]

    upstream.clear_faults()  # back in the catalog: a retry fetches it and only it
    upstream.clear_requests()
    daemon.call("retry", id=job_id)
    job = daemon.wait_job(job_id)

    assert job["status"] == "completed", job
    assert {r.track_id for r in upstream.requests_for("media")} == {GONE_TRACK_ID}
    assert_m3u8_lists(
        daemon, catalog, playlist_path(daemon, PLAYLIST_TITLE), PLAYLIST_TITLE, PLAYLIST_TRACK_IDS
    )


def test_a_track_whose_album_404s_falls_back_to_its_own_info_and_downloads(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    upstream.inject("album", "status", times=None, album_id=GONE_ALBUM_ID, status=404)
    daemon = start(make_daemon, upstream)

    job = daemon.wait_job(daemon.submit("playlist", PLAYLIST_UUID))

    assert job["status"] == "completed", job
    assert [r.track_id for r in upstream.requests_for("info")] == [GONE_TRACK_ID]
    alone = job["tracks"][PLAYLIST_TRACK_IDS.index(GONE_TRACK_ID)]
    tags = vorbis_tags(daemon.library / alone["path"])
    spec = catalog.track(GONE_TRACK_ID)
    assert tags["title"] == [spec.title]
    assert tags["album"] == [catalog.album(GONE_ALBUM_ID).title]  # from /info/'s album
    assert tags["albumartist"] == [spec.artists[0].name]
    assert "tracktotal" not in tags  # its album's listing was never read
    assert len(entries_of(playlist_path(daemon, PLAYLIST_TITLE))) == len(PLAYLIST_TRACK_IDS)


def test_a_playlist_none_of_whose_tracks_the_upstream_has_fails_upstream_not_found(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    upstream.inject("album", "status", times=None, status=404)
    upstream.inject("info", "status", times=None, status=404)
    daemon = start(make_daemon, upstream)

    job = daemon.wait_job(daemon.submit("playlist", PLAYLIST_UUID))

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "UPSTREAM_NOT_FOUND"
    assert [(t["track_id"], t["title"], t["status"]) for t in job["tracks"]] == [
        (t, listed_title(catalog, t), "failed") for t in PLAYLIST_TRACK_IDS
    ]
    assert upstream.requests_for("track") == []
    assert not (daemon.library / PLAYLISTS).exists()


def test_an_album_of_a_playlist_that_answers_503_is_retried_not_taken_for_gone(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    upstream.inject("album", "status", times=2, album_id=GONE_ALBUM_ID, status=503)
    daemon = start(make_daemon, upstream, worker={"backoff_s": [0.05]})

    job = daemon.wait_job(daemon.submit("playlist", PLAYLIST_UUID))

    assert job["status"] == "completed", job
    assert len(upstream.requests_for("album", album_id=GONE_ALBUM_ID)) == 3
    assert upstream.requests_for("info") == []  # no fallback: the album did answer


def test_kill_after_a_playlist_resolved_with_an_unavailable_track_keeps_it_failed(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    upstream.inject("album", "status", times=None, album_id=GONE_ALBUM_ID, status=404)
    upstream.inject("info", "status", times=None, track_id=GONE_TRACK_ID, status=404)
    last = PLAYLIST_TRACK_IDS[-1]
    upstream.inject("media", "hang", times=None, track_id=last)  # the job cannot finish
    daemon = start(make_daemon, upstream)
    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    assert upstream.wait_for_request("media", track_id=last, timeout=30)
    gone = daemon.job(job_id)["tracks"][PLAYLIST_TRACK_IDS.index(GONE_TRACK_ID)]
    assert (gone["status"], gone["error"]["code"]) == ("failed", "UPSTREAM_NOT_FOUND")

    daemon.kill()
    upstream.clear_faults()
    upstream.inject("album", "status", times=None, album_id=GONE_ALBUM_ID, status=404)
    upstream.inject("info", "status", times=None, track_id=GONE_TRACK_ID, status=404)
    daemon.start()
    job = daemon.wait_job(job_id)

    assert job["status"] == "partial", job
    assert [t["status"] for t in job["tracks"]] == [
        "failed" if t == GONE_TRACK_ID else "completed" for t in PLAYLIST_TRACK_IDS
    ]
    kept = tuple(t for t in PLAYLIST_TRACK_IDS if t != GONE_TRACK_ID)
    assert_m3u8_lists(daemon, catalog, playlist_path(daemon, PLAYLIST_TITLE), PLAYLIST_TITLE, kept)


def test_a_track_an_album_job_fetched_is_skipped_by_a_playlist_job_without_media_requests(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = start(make_daemon, upstream)
    album_job = daemon.wait_job(daemon.submit("album", SINGLE_ALBUM_ID))
    assert album_job["status"] == "completed"
    album_file = daemon.library / album_job["tracks"][0]["path"]
    before = album_file.stat().st_mtime_ns
    upstream.clear_requests()

    job = daemon.wait_job(daemon.submit("playlist", PLAYLIST_UUID))

    assert job["status"] == "completed", job
    skipped = job["tracks"][PLAYLIST_TRACK_IDS.index(SINGLE_TRACK_ID)]
    assert (skipped["outcome"], skipped["path"]) == (
        "skipped_identical",
        album_job["tracks"][0]["path"],
    )
    assert upstream.requests_for("track", track_id=SINGLE_TRACK_ID) == []  # no playback info
    assert upstream.requests_for("media", track_id=SINGLE_TRACK_ID) == []
    assert upstream.requests_for("media")  # the playlist's other tracks were fetched
    assert album_file.stat().st_mtime_ns == before
    path = playlist_path(daemon, PLAYLIST_TITLE)
    assert expected_relpath(catalog, SINGLE_TRACK_ID, "flac") in resolved_entries(
        path, daemon.library
    )


def test_a_failed_track_is_left_out_of_the_m3u8_and_a_retry_rewrites_it(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = start(make_daemon, upstream)
    failing = PLAYLIST_TRACK_IDS[2]
    upstream.inject("track", "status", times=None, track_id=failing, status=404)

    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    job = daemon.wait_job(job_id)

    assert job["status"] == "partial", job
    assert job["error"]["code"] == "UPSTREAM_NOT_FOUND"
    path = playlist_path(daemon, PLAYLIST_TITLE)
    kept = tuple(t for t in PLAYLIST_TRACK_IDS if t != failing)
    assert resolved_entries(path, daemon.library) == [
        expected_relpath(catalog, t, "flac") for t in kept
    ]

    upstream.clear_faults()
    daemon.call("retry", id=job_id)
    job = daemon.wait_job(job_id)

    assert job["status"] == "completed", job
    assert_m3u8_lists(daemon, catalog, path, PLAYLIST_TITLE, PLAYLIST_TRACK_IDS)


def test_a_playlist_file_that_cannot_be_written_leaves_the_job_partial_until_a_retry(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = start(make_daemon, upstream)
    blocker = daemon.library / PLAYLISTS
    blocker.write_text("a file where the playlist folder goes\n")

    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    job = daemon.wait_job(job_id)

    assert job["status"] == "partial", job  # not completed: retry must be able to redo it
    assert job["error"]["code"] == "FILESYSTEM_ERROR"
    assert [track["status"] for track in job["tracks"]] == ["completed"] * len(PLAYLIST_TRACK_IDS)
    assert_tagged_as_by_album_jobs(daemon, catalog, job, PLAYLIST_TRACK_IDS)  # tracks kept
    assert blocker.read_text() == "a file where the playlist folder goes\n"

    blocker.unlink()
    upstream.clear_requests()
    daemon.call("retry", id=job_id)
    job = daemon.wait_job(job_id)

    assert (job["status"], job["error"]) == ("completed", None)
    assert upstream.requests_for("media") == []  # nothing fetched again
    assert_m3u8_lists(
        daemon, catalog, playlist_path(daemon, PLAYLIST_TITLE), PLAYLIST_TITLE, PLAYLIST_TRACK_IDS
    )


def test_a_playlist_whose_library_is_gone_at_its_end_waits_for_it_and_then_writes_its_m3u8(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    last = PLAYLIST_TRACK_IDS[-1]
    upstream.inject("track", "hang", times=None, track_id=last)  # ends in TIMEOUT, failed
    daemon = start(
        make_daemon,
        upstream,
        worker={"max_concurrent": 1, "track_timeout_s": 2},
        files={"recheck_s": 0.2},
    )
    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    assert upstream.wait_for_request("track", track_id=last, timeout=30)
    away = daemon.library.with_name("library.away")
    daemon.library.rename(away)  # unmounted while the last track is still trying

    def held_with_every_track_done() -> dict[str, Any] | None:
        job = daemon.job(job_id)
        holds = [hold["reason"] for hold in daemon.call("stats")["holds"]]
        done = all(track["status"] in ("completed", "failed") for track in job["tracks"])
        return job if done and "library_unavailable" in holds else None

    job = wait_until(held_with_every_track_done, timeout=30, what="the library hold")
    assert job["status"] == "processing"  # not finished without its playlist file
    assert job["tracks"][-1]["error"]["code"] == "TIMEOUT"

    away.rename(daemon.library)
    job = daemon.wait_job(job_id)

    assert job["status"] == "partial", job
    kept = PLAYLIST_TRACK_IDS[:-1]
    assert resolved_entries(playlist_path(daemon, PLAYLIST_TITLE), daemon.library) == [
        expected_relpath(catalog, t, "flac") for t in kept
    ]


# --- a playlist write stuck on the filesystem ------------------------------------------


def stalled_daemon(
    make_daemon: DaemonFactory, upstream: CatalogServer, stall: Path, **sections: Any
) -> DaemonProcess:
    """A daemon whose jobs' last steps wait, in a thread, while `stall` exists (debug hook)."""
    stall.touch()
    env = {"DLQD_DEBUG_HOOKS": "1", "DLQD_DEBUG_STALL_LAST_STEP": str(stall)}
    daemon = make_daemon(upstream=upstream, settings=sections or None, env=env)
    daemon.start()
    return daemon


def stuck_in_its_last_step(daemon: DaemonProcess, job_id: str) -> dict[str, Any]:
    """Wait until the job's tracks are all done and its playlist write is stuck; the job."""

    def stuck() -> dict[str, Any] | None:
        job = daemon.job(job_id)
        done = bool(job["tracks"]) and all(t["status"] == "completed" for t in job["tracks"])
        stalled = f'"job_id": "{job_id}", "file"' in daemon.logs()
        return job if done and stalled else None

    return wait_until(stuck, timeout=30, what=f"job {job_id}'s last step to stall")


def test_a_stuck_playlist_write_holds_up_only_its_own_job(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    stall = tmp_path / "stall"
    daemon = stalled_daemon(make_daemon, upstream, stall, worker={"max_concurrent": 1})
    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    assert stuck_in_its_last_step(daemon, job_id)["status"] == "processing"

    other = daemon.wait_job(daemon.submit("album", SECOND_ALBUM_ID))

    assert other["status"] == "completed"  # its tracks started and ran meanwhile
    assert daemon.job(job_id)["status"] == "processing"
    assert not playlist_path(daemon, PLAYLIST_TITLE).exists()

    stall.unlink()
    job = daemon.wait_job(job_id)

    assert (job["status"], job["playlist_path"]) == (
        "completed",
        f"{PLAYLISTS}/{m3u8.file_name(PLAYLIST_TITLE)}",
    )
    assert playlist_path(daemon, PLAYLIST_TITLE).is_file()


def test_cancel_and_pause_of_a_playlist_stuck_in_its_write_answer_and_resume_writes_it(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    stall = tmp_path / "stall"
    daemon = stalled_daemon(make_daemon, upstream, stall)
    playlist = daemon.submit("playlist", PLAYLIST_UUID)
    mix = daemon.submit("mix", MIX_ID)
    stuck_in_its_last_step(daemon, playlist)
    stuck_in_its_last_step(daemon, mix)

    cancelled = daemon.call("cancel", id=mix)["job"]
    daemon.call("pause", id=playlist)

    assert (cancelled["status"], cancelled["playlist_path"]) == ("cancelled", None)
    assert daemon.job(playlist)["status"] == "paused"
    stall.unlink()
    daemon.call("resume", id=playlist)
    job = daemon.wait_job(playlist)

    assert job["status"] == "completed", job
    assert playlist_path(daemon, PLAYLIST_TITLE).is_file()
    assert daemon.job(mix)["status"] == "cancelled"  # its abandoned step finished nothing
    assert not playlist_path(daemon, MIX_TITLE).exists()


def test_shutdown_during_a_stuck_playlist_write_requeues_it_and_the_restart_writes_it(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    stall = tmp_path / "stall"
    daemon = stalled_daemon(make_daemon, upstream, stall, worker={"drain_grace_s": 0.5})
    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    stuck_in_its_last_step(daemon, job_id)

    assert daemon.stop() == 0  # the drain abandons the stuck write
    stall.unlink()
    upstream.clear_requests()
    daemon.start()
    job = daemon.wait_job(job_id)

    assert job["status"] == "completed", job
    assert upstream.requests_for("media") == []  # only the file was left to do
    assert playlist_path(daemon, PLAYLIST_TITLE).is_file()


def test_a_playlist_the_upstream_does_not_have_fails_upstream_not_found(
    daemon: DaemonProcess,
) -> None:
    job = daemon.wait_job(daemon.submit("playlist", MISSING_PLAYLIST_UUID))

    assert job["status"] == "failed"
    assert job["error"]["code"] == "UPSTREAM_NOT_FOUND"
    assert not (daemon.library / PLAYLISTS).exists()


def test_a_playlist_longer_than_max_job_tracks_fails_upstream_bad_response(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = start(make_daemon, upstream, limits={"max_job_tracks": len(PLAYLIST_TRACK_IDS) - 1})

    job = daemon.wait_job(daemon.submit("playlist", PLAYLIST_UUID))

    assert job["status"] == "failed"
    assert job["error"]["code"] == "UPSTREAM_BAD_RESPONSE"
    assert "max_job_tracks" in job["error"]["message"]
    assert upstream.requests_for("media") == []


def test_kill_during_a_playlist_job_and_restart_finishes_it_with_the_m3u8(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    last = PLAYLIST_TRACK_IDS[-1]
    upstream.inject("media", "hang", times=None, track_id=last)  # the job cannot finish
    daemon = start(make_daemon, upstream, worker={"max_concurrent": 1})
    job_id = daemon.submit("playlist", PLAYLIST_UUID)

    def all_but_the_last_done() -> bool:
        tracks = daemon.job(job_id)["tracks"]
        return [track["status"] for track in tracks[:-1]] == ["completed"] * (len(tracks) - 1)

    wait_until(all_but_the_last_done, timeout=30, what="the playlist's first tracks")
    assert upstream.wait_for_request("media", track_id=last)
    daemon.kill()
    playlist = playlist_path(daemon, PLAYLIST_TITLE)
    assert not playlist.exists()
    upstream.clear_faults()
    upstream.clear_requests()
    daemon.start()
    job = daemon.wait_job(job_id)

    assert job["status"] == "completed", job
    fetched_again = {request.track_id for request in upstream.requests_for("media")}
    assert fetched_again == {last}  # finished tracks are not downloaded again
    assert_tagged_as_by_album_jobs(daemon, catalog, job, PLAYLIST_TRACK_IDS)
    assert_m3u8_lists(daemon, catalog, playlist, PLAYLIST_TITLE, PLAYLIST_TRACK_IDS)


def test_dlqd_demo_with_playlist_shows_the_m3u8_and_where_its_entries_point(
    tmp_path: Path, catalog: Catalog
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLQD_")}
    demo = subprocess.run(
        [sys.executable, "-m", "dlqd", "demo", "--playlist", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )

    assert demo.returncode == 0, demo.stdout + demo.stderr
    library = tmp_path / "demo" / "library"
    playlist = library / PLAYLISTS / m3u8.file_name(PLAYLIST_TITLE)
    assert resolved_entries(playlist, library) == [
        expected_relpath(catalog, t, "flac") for t in PLAYLIST_TRACK_IDS
    ]
    assert f"Playlist file {PLAYLISTS}/{playlist.name}:" in demo.stdout
    assert demo.stdout.count("(ok, the file is there)") == len(PLAYLIST_TRACK_IDS)
    assert "MISSING" not in demo.stdout


# --- bad targets and dlqctl ---------------------------------------------------------------


def test_bad_playlist_and_mix_targets_are_refused_and_nothing_is_queued(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    for job_type, target in (
        ("playlist", 5),
        ("playlist", "3f9c2b7e-5a1d-4e8b-9c06"),
        ("playlist", PLAYLIST_UUID + "/../x"),
        ("mix", 5),
        ("mix", "a b"),
        ("mix", "m" * 65),
    ):
        refused = daemon.refused("submit", type=job_type, target_id=target, quality="LOSSLESS")
        assert refused.code == "INVALID_ARGUMENT", (job_type, target)
    assert daemon.jobs() == []


PLAYLIST_LINKS = (
    f"https://tidal.com/browse/playlist/{PLAYLIST_UUID}",
    f"https://tidal.com/playlist/{PLAYLIST_UUID}?u",
    f"https://listen.tidal.com/playlist/{PLAYLIST_UUID}/",
    f"http://www.tidal.com/browse/playlist/{PLAYLIST_UUID.upper()}?utm_source=share#top",
    f"tidal.com/browse/playlist/{PLAYLIST_UUID}",
    PLAYLIST_UUID,
    PLAYLIST_UUID.upper(),
)
MIX_LINKS = (
    f"https://tidal.com/mix/{MIX_ID}",
    f"https://tidal.com/browse/mix/{MIX_ID}?u",
    f"https://listen.tidal.com/mix/{MIX_ID}/",
    f"tidal.com/browse/mix/{MIX_ID}#x",
    MIX_ID,
)


@pytest.mark.parametrize(
    ("job_type", "given", "target"),
    [
        *(("playlist", link, PLAYLIST_UUID) for link in PLAYLIST_LINKS),
        *(("mix", link, MIX_ID) for link in MIX_LINKS),
    ],
)
def test_dlqctl_add_takes_each_playlist_and_mix_share_link_form(
    make_daemon: DaemonFactory, job_type: str, given: str, target: str
) -> None:
    daemon = held_daemon(make_daemon)

    code, out, err = dlqctl(daemon.socket, "add", job_type, given)

    assert code == 0, err
    (job,) = daemon.jobs()
    assert (job["type"], job["target_id"]) == (job_type, target)
    assert out.strip() == f"queued job {job['id']}: {job_type} {target}"


def test_dlqctl_add_refuses_what_is_not_a_playlist_or_mix_of_that_type(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    for job_type, bad, says in (
        ("playlist", f"https://tidal.com/browse/mix/{MIX_ID}", "(it is a mix link)"),
        ("playlist", "https://tidal.com/browse/album/5", "(it is an album link)"),
        ("playlist", "3f9c2b7e", "is not a playlist UUID"),
        ("playlist", "https://tidal.com/browse/playlist/5", "is not a playlist UUID"),
        ("mix", f"https://tidal.com/browse/playlist/{PLAYLIST_UUID}", "(it is a playlist link)"),
        ("mix", "a+b", "is not a mix id"),
        ("album", f"https://tidal.com/browse/playlist/{PLAYLIST_UUID}", "(it is a playlist link)"),
    ):
        code, _, err = dlqctl(daemon.socket, "add", job_type, bad)
        assert code == 2, (job_type, bad, err)
        assert says in err, (job_type, bad, err)
    assert daemon.jobs() == []


def test_dlqctl_ls_and_show_name_a_playlist_and_number_its_tracks_in_order(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = start(make_daemon, upstream)
    job_id = daemon.submit("playlist", PLAYLIST_UUID)
    job = daemon.wait_job(job_id)

    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "dlqctl",
            "--socket",
            str(daemon.socket),
            "ls",
            "--type",
            "playlist",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    ).stdout
    assert f"The Examples – {PLAYLIST_TITLE}" in listing
    code, shown, _ = dlqctl(daemon.socket, "show", job_id)
    assert code == 0
    assert f"job {job_id}: playlist {PLAYLIST_UUID} (LOSSLESS" in shown
    rows = [line.split() for line in shown.splitlines() if line[:1].isdigit()]
    assert [row[0] for row in rows] == [str(n) for n in range(1, len(job["tracks"]) + 1)]
    code, completions, _ = dlqctl(daemon.socket, "completion", "bash")
    assert code == 0 and "playlist mix" in completions


# --- the M3U8 writer on its own (real files) -------------------------------------------


def entry(path: str, title: str = "Song") -> PlaylistEntry:
    return PlaylistEntry(path=path, duration=61, artist="Artist", title=title)


def put(library: Path, path: str) -> str:
    (library / path).parent.mkdir(parents=True, exist_ok=True)
    (library / path).write_bytes(b"fLaC")
    return path


def test_two_playlists_with_one_title_keep_a_file_each(tmp_path: Path) -> None:
    library = tmp_path
    first = [entry(put(library, "A/One/01 - a.flac"))]
    second = [entry(put(library, "B/Two/01 - b.flac"))]
    folder = PurePosixPath("Playlists")

    assert write_playlist(library, folder, "Road", "playlist aaa", first) == "Playlists/Road.m3u8"
    assert (
        write_playlist(library, folder, "Road", "playlist bbb", second)
        == "Playlists/Road (playlist bbb).m3u8"
    )
    assert write_playlist(library, folder, "Road", "playlist aaa", first) == "Playlists/Road.m3u8"

    assert entries_of(library / "Playlists/Road.m3u8") == ["../A/One/01 - a.flac"]
    assert entries_of(library / "Playlists/Road (playlist bbb).m3u8") == ["../B/Two/01 - b.flac"]
    assert sorted(p.name for p in (library / "Playlists").iterdir()) == [
        "Road (playlist bbb).m3u8",
        "Road.m3u8",
    ]


def test_a_users_own_file_at_the_playlist_name_is_left_alone(tmp_path: Path) -> None:
    put(tmp_path, "A/One/01 - a.flac")
    (tmp_path / "Road.m3u8").write_text("#EXTM3U\nmine.flac\n")

    written = write_playlist(
        tmp_path, PurePosixPath("."), "Road", "mix m1", [entry("A/One/01 - a.flac")]
    )

    assert written == "Road (mix m1).m3u8"
    assert (tmp_path / "Road.m3u8").read_text() == "#EXTM3U\nmine.flac\n"
    assert entries_of(tmp_path / written) == ["A/One/01 - a.flac"]


def test_a_link_at_the_playlist_name_is_refused_not_followed(tmp_path: Path) -> None:
    library, outside = tmp_path / "library", tmp_path / "outside.m3u8"
    put(library, "A/01.flac")
    outside.write_text("untouched\n")
    (library / "Playlists").mkdir()
    (library / "Playlists" / "Road.m3u8").symlink_to(outside)

    with pytest.raises(DlqdError) as refused:
        write_playlist(library, PurePosixPath("Playlists"), "Road", "mix m", [entry("A/01.flac")])

    assert refused.value.code == ErrorCode.FILESYSTEM_ERROR
    assert outside.read_text() == "untouched\n"


def test_only_tracks_whose_file_is_in_the_library_are_listed(tmp_path: Path) -> None:
    put(tmp_path, "A/01.flac")
    put(tmp_path, "A/03.flac")
    entries = [entry("A/01.flac"), entry("A/02.flac"), entry("A/03.flac")]

    written = write_playlist(tmp_path, PurePosixPath("P"), "T", "mix m", entries)

    assert written is not None
    assert entries_of(tmp_path / written) == ["../A/01.flac", "../A/03.flac"]
    assert write_playlist(tmp_path, PurePosixPath("P"), "U", "mix n", [entry("A/02.flac")]) is None
    assert not (tmp_path / "P" / "U.m3u8").exists()


def test_the_source_line_is_found_whatever_the_titles_length() -> None:
    # Titles may be 4,096 characters: the line saying whose file it is must not follow them.
    text = m3u8.render("t" * 4096, "playlist u", PurePosixPath("P"), [entry("A/01.flac")])
    assert m3u8.source_of(text.encode()[: m3u8.HEAD_BYTES]) == "playlist u"


def test_a_title_cannot_break_a_line_of_the_m3u8() -> None:
    text = m3u8.render(
        "Two\nLines", "mix m", PurePosixPath("P"), [entry("A/01.flac", title="x\r\n../../etc")]
    )

    assert text.splitlines() == [
        "#EXTM3U",
        "#DLQD-SOURCE:mix m",
        "#PLAYLIST:Two Lines",
        "#EXTINF:61,Artist - x  ../../etc",
        "../A/01.flac",
    ]
    assert m3u8.file_name("a/b: c?") == "a_b_ c_.m3u8"
