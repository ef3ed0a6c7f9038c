"""The job object's live facts on a real daemon: speed, ETA, whole-job size, real progress,
the quality each track was delivered in, and a journal from before these fields."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from dlqd.demo.audio import DASH_BIT_DEPTH, DASH_SAMPLE_RATE
from dlqd.demo.catalog import (
    DASH_NO_TIMELINE_TRACK_ID,
    DASH_TIMELINE_TRACK_ID,
    FORMATS_ALBUM_ID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    Catalog,
    CatalogServer,
)
from dlqd.journal import JournalFiles, encode_record
from dlqd.protocol import read_frame_blocking
from dlqd.rates import BYTES_PER_SECOND
from tests.conftest import DaemonFactory
from tests.support import library_files, raw_connection, send_request, wait_until

SLOW_BPS = 400_000  # media bytes per second per response: a 600 KB track takes ~1.5 s


def test_a_throttled_album_shows_its_speed_and_a_falling_eta_while_the_next_waits_sized(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    running_album = catalog.add_album(3, 600_000)
    waiting_album = catalog.add_album(2, 300_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    watcher = raw_connection(daemon)
    assert send_request(watcher, {"v": 1, "id": 1, "cmd": "watch"})["ok"]
    running = daemon.submit("album", running_album)
    waiting = daemon.submit("album", waiting_album)

    samples: list[dict[str, Any]] = []
    stats_speeds: list[int] = []

    def sample() -> bool:
        job = daemon.job(running)
        if job["status"] == "processing":
            samples.append(job)
            stats_speeds.append(daemon.call("stats")["speed_bps"])
        return job["status"] in ("completed", "partial", "failed", "cancelled")

    queued = wait_until(
        lambda: (job := daemon.job(waiting))["status"] == "queued" and job["tracks"] and job,
        what="the waiting album to be resolved while queued",
    )
    # Queued behind the running album, it is already resolved and sized from durations.
    assert queued["title"] and queued["artist"]
    assert queued["position"] == 2
    assert [t["duration_s"] for t in queued["tracks"]] == [2, 2]  # 300 KB / 176,400 B/s
    assert queued["bytes_total"] == 2 * 2 * BYTES_PER_SECOND["LOSSLESS"]
    assert queued["bytes_total_estimated"] is True
    assert (queued["speed_bps"], queued["eta_s"], queued["progress"]) == (0, None, 0.0)

    wait_until(sample, timeout=60, what="the throttled album to finish")
    upstream.throttle_bps = None

    speeds = [job["speed_bps"] for job in samples]
    etas = [job["eta_s"] for job in samples if job["eta_s"] is not None]
    assert max(speeds) > 0, speeds
    # One response at a time, throttled: a rate far above the throttle would be miscounted.
    assert max(speeds) < 3 * SLOW_BPS, speeds
    assert max(stats_speeds) > 0
    assert len(etas) >= 2 and etas[-1] < etas[0], etas
    assert any(later < earlier for earlier, later in itertools.pairwise(etas)), etas
    assert samples[0]["bytes_total_estimated"] is True  # tracks not started yet were estimated

    done = daemon.job(running)
    assert done["status"] == "completed"
    sizes = [len(catalog.audio_for(t, "LOSSLESS")) for t in catalog.album(running_album).track_ids]
    assert (done["bytes_total"], done["bytes_done"]) == (sum(sizes), sum(sizes))
    assert done["bytes_total_estimated"] is False
    assert (done["progress"], done["speed_bps"], done["eta_s"], done["position"]) == (
        1.0,
        0,
        None,
        None,
    )
    assert daemon.wait_job(waiting)["status"] == "completed"
    assert daemon.call("stats")["speed_bps"] == 0

    # `watch` progress events carry the job's speed too.
    progress: list[int] = []
    while (event := read_frame_blocking(watcher))["event"] != "finish" or (
        event["job_id"] != running
    ):
        if event["event"] == "progress" and event["job_id"] == running:
            progress.append(event["speed_bps"])
    watcher.close()
    assert max(progress) > 0, progress


def test_each_track_reports_the_quality_delivered_and_names_use_it(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    naming = "{album_artist}/{album}/{quality}/{track:02d} - {title}"
    daemon = make_daemon(upstream=upstream, settings={"files": {"naming": naming}})
    daemon.start()
    job_id = daemon.submit("album", FORMATS_ALBUM_ID, quality="HI_RES_LOSSLESS")
    job = daemon.wait_job(job_id)

    assert job["status"] == "partial"  # the preview and the encrypted track fail
    by_title = {t["title"]: t for t in job["tracks"]}
    delivered = {
        title: (t["status"], t["quality"], t["bit_depth"], t["sample_rate"])
        for title, t in by_title.items()
    }
    assert delivered == {
        "Timeline": ("completed", "HI_RES_LOSSLESS", DASH_BIT_DEPTH, DASH_SAMPLE_RATE),
        "Template": ("completed", "HI_RES_LOSSLESS", DASH_BIT_DEPTH, DASH_SAMPLE_RATE),
        "Preview Only": ("failed", None, None, None),
        "Locked": ("failed", None, None, None),
        "Lossy": ("completed", "HIGH", None, 44100),  # asked HI_RES_LOSSLESS, got AAC
    }
    assert job["quality"] == "HI_RES_LOSSLESS"  # what was asked
    # A partial job is not 100%: the failed tracks count nothing.
    assert 0 < job["progress"] < 1
    # `{quality}` renders what each file holds (it always rendered LOSSLESS before).
    files = library_files(daemon.library)
    assert "Second Band/Formats/HI_RES_LOSSLESS/01 - Timeline.m4a" in files, files
    assert "Second Band/Formats/HIGH/05 - Lossy.m4a" in files, files

    daemon.kill()  # the journal's track_done records carry the delivered quality
    daemon.start()
    again = {t["title"]: t for t in daemon.job(job_id)["tracks"]}
    assert {
        title: (t["quality"], t["bit_depth"], t["sample_rate"]) for title, t in again.items()
    } == {title: facts[1:] for title, facts in delivered.items()}
    assert by_title["Timeline"]["track_id"] == DASH_TIMELINE_TRACK_ID
    assert by_title["Template"]["track_id"] == DASH_NO_TIMELINE_TRACK_ID


def test_a_cancelled_album_reports_the_share_it_finished_not_all_of_it(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_id = catalog.add_album(4, 300_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("album", album_id)
    wait_until(
        lambda: (
            [t["status"] for t in daemon.job(job_id)["tracks"]][:2] == ["completed", "downloading"]
        ),
        timeout=30,
        what="one track done, the next downloading",
    )
    cancelled = daemon.call("cancel", id=job_id)["job"]
    upstream.throttle_bps = None

    assert cancelled["status"] == "cancelled"
    statuses = [t["status"] for t in cancelled["tracks"]]
    assert statuses == ["completed", "cancelled", "cancelled", "cancelled"]
    assert 0.2 <= cancelled["progress"] <= 0.3, cancelled["progress"]  # 1 of 4 equal tracks
    assert cancelled["bytes_done"] == len(
        catalog.audio_for(catalog.album(album_id).track_ids[0], "LOSSLESS")
    )
    assert (cancelled["speed_bps"], cancelled["eta_s"]) == (0, None)

    daemon.kill()
    daemon.start()
    replayed = daemon.job(job_id)
    assert 0.2 <= replayed["progress"] <= 0.3, replayed["progress"]
    assert replayed["bytes_total_estimated"] is True  # the cancelled tracks never started


def _old_records(track_ids: list[int], at: float) -> list[dict[str, Any]]:
    """A journal as dlqd wrote it before issue 10: no durations, qualities or ranks.

    It ends held, so the test reads the replayed state before anything runs;
    `at` is recent, or the retention sweep would forget the finished job.
    """
    return [
        {
            "e": "submit",
            "id": "1",
            "type": "track",
            "target_id": SINGLE_TRACK_ID,
            "quality": "LOSSLESS",
            "priority": "normal",
            "at": at,
        },
        {"e": "start", "id": "1", "at": at + 1},
        {
            "e": "resolve",
            "id": "1",
            "title": "Lone Signal",
            "artist": "The Examples",
            "tracks": [[SINGLE_TRACK_ID, "Lone Signal", 1, 1]],
        },
        {
            "e": "track_done",
            "id": "1",
            "track_id": SINGLE_TRACK_ID,
            "path": "The Examples/Lone Signal/01 - Lone Signal.flac",
            "outcome": "written",
            "bytes": 1234,
            "attempts": 1,
        },
        {"e": "finish", "id": "1", "status": "completed", "error": None, "at": at + 2},
        {
            "e": "submit",
            "id": "2",
            "type": "album",
            "target_id": TWO_DISC_ALBUM_ID,
            "quality": "LOSSLESS",
            "priority": "normal",
            "at": at + 3,
        },
        {
            "e": "resolve",
            "id": "2",
            "title": "Night Lines",
            "artist": "The Examples",
            "tracks": [[t, f"old title {n}", 1, n] for n, t in enumerate(track_ids, start=1)],
        },
        {
            "e": "submit",
            "id": "3",
            "type": "track",
            "target_id": SINGLE_TRACK_ID,
            "quality": "HIGH",
            "priority": "normal",
            "at": at + 4,
        },
        {"e": "hold"},
    ]


def test_a_journal_from_before_these_fields_replays_and_gains_them(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(upstream=upstream)
    state_dir = Path(daemon.state_dir)
    state_dir.mkdir(parents=True)
    files = JournalFiles(state_dir)
    files.recover()
    track_ids = list(catalog.album(TWO_DISC_ALBUM_ID).track_ids)
    files.append(
        b"".join(encode_record(event) for event in _old_records(track_ids, time.time() - 60))
    )
    files.close()
    daemon.settings["worker"] = {"max_concurrent": 1}
    daemon.start()

    old_done = daemon.job("1")
    assert old_done["status"] == "completed"
    assert (old_done["tracks"][0]["quality"], old_done["tracks"][0]["duration_s"]) == (None, None)
    assert (old_done["bytes_total"], old_done["progress"], old_done["position"]) == (
        1234,
        1.0,
        None,
    )
    queue = daemon.call("list", order="run")["jobs"]
    assert [(job["id"], job["position"]) for job in queue] == [("2", 1), ("3", 2)]  # rank = seq
    album = daemon.job("2")
    assert [t["duration_s"] for t in album["tracks"]] == [None] * len(track_ids)
    assert (album["bytes_total"], album["bytes_total_estimated"]) == (0, False)

    daemon.call("resume")
    album = daemon.wait_job("2")
    assert album["status"] == "completed"
    # Resolved again, the album's tracks now carry durations and delivered qualities.
    assert all(t["duration_s"] for t in album["tracks"]), album["tracks"]
    assert {t["quality"] for t in album["tracks"]} == {"LOSSLESS"}
    assert album["tracks"][0]["title"] == catalog.track(track_ids[0]).title
    assert daemon.wait_job("3")["tracks"][0]["quality"] == "HIGH"
