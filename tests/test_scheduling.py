"""Which work runs when, proven on a real daemon: priority order, the track slot
bound across jobs, pausing a job in flight, and holding the whole queue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from dlqd.demo.catalog import SINGLE_TRACK_ID, Catalog, CatalogServer
from tests.conftest import DaemonFactory
from tests.support import library_files, wait_until

SLOW_BPS = 400_000  # media bytes per second per response: a 300 KB track takes ~0.75 s


def _downloading(jobs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [
        (job["id"], track["track_id"])
        for job in jobs
        for track in job["tracks"]
        if track["status"] == "downloading"
    ]


def test_jobs_start_by_priority_then_age(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_ids = [catalog.add_album(1) for _ in range(4)]
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    daemon.call("pause")  # hold the queue while everything is submitted
    low = daemon.submit("album", album_ids[0], priority="low")
    normal_old = daemon.submit("album", album_ids[1])
    normal_new = daemon.submit("album", album_ids[2], priority="normal")
    high = daemon.submit("album", album_ids[3], priority="high")
    daemon.call("resume")

    finished = [daemon.wait_job(job_id) for job_id in (low, normal_old, normal_new, high)]
    assert all(job["status"] == "completed" for job in finished)
    order = [job["id"] for job in sorted(finished, key=lambda job: job["started_at"])]
    assert order == [high, normal_old, normal_new, low]


def test_max_concurrent_bounds_tracks_across_jobs_and_a_job_takes_slots_in_order(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    first_album = catalog.add_album(4, 300_000)
    second_album = catalog.add_album(2, 300_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 2}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    first = daemon.submit("album", first_album)
    # Resolved first: two resolves run at once, and a job of one priority never waits for
    # another's (a later resolve would let the second album start before the first).
    wait_until(lambda: daemon.job(first)["tracks"], what="the first album to be resolved")
    second = daemon.submit("album", second_album)

    seen_busy: set[int] = set()
    second_started_while_first_waited = False

    def all_finished() -> bool:
        nonlocal second_started_while_first_waited
        jobs = daemon.jobs()
        busy = _downloading(jobs)
        seen_busy.add(len(busy))
        assert len(busy) <= 2, f"more than max_concurrent tracks downloading: {busy}"
        by_id = {job["id"]: job for job in jobs}
        first_pending = any(t["status"] == "pending" for t in by_id[first]["tracks"])
        if by_id[second]["status"] == "processing" and first_pending:
            second_started_while_first_waited = True
        return all(job["status"] == "completed" for job in jobs)

    wait_until(all_finished, timeout=60, what="both albums to complete")
    upstream.throttle_bps = None
    assert 2 in seen_busy  # the bound was reached, not merely respected by idling
    assert not second_started_while_first_waited
    assert daemon.call("stats")["worker"]["active_tracks"] == 0


def test_pausing_a_processing_job_stops_its_tracks_and_resume_finishes_only_the_rest(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    # One slot: tracks run one after another, so "one done, the next downloading" lasts.
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    album_id = catalog.add_album(3, 300_000)
    track_ids = catalog.album(album_id).track_ids
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("album", album_id)

    def first_done_second_running() -> dict[str, Any] | None:
        job = daemon.job(job_id)
        statuses = [t["status"] for t in job["tracks"]]
        return job if "completed" in statuses and "downloading" in statuses else None

    wait_until(first_done_second_running, timeout=30, what="one track done, one downloading")
    assert daemon.call("pause", id=job_id) == {}
    paused = daemon.job(job_id)
    assert paused["status"] == "paused"
    statuses = [t["status"] for t in paused["tracks"]]
    assert "downloading" not in statuses
    done_before = {t["track_id"] for t in paused["tracks"] if t["status"] == "completed"}
    assert done_before
    assert not any((daemon.library / ".dlqd-tmp").iterdir())  # in-flight temp file removed
    assert daemon.call("stats")["worker"]["active_tracks"] == 0

    upstream.throttle_bps = None
    upstream.clear_requests()
    daemon.call("resume", id=job_id)
    assert daemon.wait_job(job_id)["status"] == "completed"
    refetched = {r for r in track_ids if upstream.requests_for("media", track_id=r)}
    assert refetched == set(track_ids) - done_before
    assert len(library_files(daemon.library)) == len(track_ids) + 1  # + cover.jpg


def test_holding_the_queue_lets_running_tracks_finish_and_survives_a_restart(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    running_album = catalog.add_album(1, 300_000)
    waiting_album = catalog.add_album(1)
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    running = daemon.submit("album", running_album)
    wait_until(lambda: _downloading(daemon.jobs()), what="a track to start downloading")

    daemon.call("pause")  # the whole queue
    stats = daemon.call("stats")
    assert stats["worker"]["running"] is False
    waiting = daemon.submit("album", waiting_album)
    upstream.throttle_bps = None
    assert daemon.wait_job(running)["status"] == "completed"  # running work finishes
    assert daemon.job(waiting)["status"] == "queued"  # nothing new starts

    daemon.kill()
    daemon.start()
    assert daemon.call("stats")["worker"]["running"] is False  # the hold was journaled
    assert daemon.job(waiting)["status"] == "queued"
    daemon.call("resume")
    assert daemon.wait_job(waiting)["status"] == "completed"


def test_bandwidth_limit_holds_for_all_running_tracks_together(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_id = catalog.add_album(2, 1_000_000)
    total = sum(len(catalog.audio_for(t, "LOSSLESS")) for t in catalog.album(album_id).track_ids)
    limit_bytes_s = 1_000_000
    daemon = make_daemon(
        upstream=upstream,
        settings={"worker": {"max_concurrent": 2, "bandwidth_limit_kbps": limit_bytes_s // 125}},
    )
    daemon.start()
    job = daemon.wait_job(daemon.submit("album", album_id))
    assert job["status"] == "completed"
    assert max(t["attempts"] for t in job["tracks"]) == 1
    started, finished = (
        datetime.fromisoformat(job[key].replace("Z", "+00:00"))
        for key in ("started_at", "finished_at")
    )
    # Both tracks ran at once; a per-transfer limit would let them finish in half the time.
    burst_allowance = 0.2
    assert (finished - started).total_seconds() >= total / limit_bytes_s - burst_allowance


def _started(job: dict[str, Any]) -> set[int]:
    """Tracks that have begun: downloading or done (pending ones have not)."""
    return {t["track_id"] for t in job["tracks"] if t["status"] != "pending"}


def test_pausing_the_queue_during_a_long_album_starts_none_of_its_next_tracks(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_id = catalog.add_album(120, 60_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 2}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("album", album_id)
    wait_until(lambda: len(_started(daemon.job(job_id))) >= 3, what="the album to be under way")

    daemon.call("pause")
    holds = daemon.call("stats")["holds"]
    assert [hold["reason"] for hold in holds] == ["user"]
    assert holds[0]["until"] is None
    # Running tracks finish; then the set of started tracks must stop growing.
    wait_until(lambda: not _downloading(daemon.jobs()), what="the running tracks to finish")
    started = _started(daemon.job(job_id))
    upstream.throttle_bps = None
    with pytest.raises(AssertionError):  # nothing starts within the window
        wait_until(lambda: _started(daemon.job(job_id)) != started, timeout=1.5)
    assert daemon.job(job_id)["status"] == "processing"  # held, not stopped or failed

    daemon.call("resume")
    assert daemon.call("stats")["holds"] == []
    job = daemon.wait_job(job_id, timeout=120)
    assert job["status"] == "completed"


def test_a_high_priority_track_submitted_during_an_album_finishes_while_the_album_runs(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_id = catalog.add_album(12, 120_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 2}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    album_job = daemon.submit("album", album_id)
    wait_until(lambda: len(_started(daemon.job(album_job))) >= 2, what="the album to start")

    track_job = daemon.submit("track", SINGLE_TRACK_ID, priority="high")
    done = daemon.wait_job(track_job, timeout=60)
    assert done["status"] == "completed"
    album = daemon.job(album_job)
    assert album["status"] == "processing"  # it got the next slot, not the album's end
    assert any(t["status"] == "pending" for t in album["tracks"])
    upstream.throttle_bps = None
    assert daemon.wait_job(album_job, timeout=120)["status"] == "completed"


def test_a_hanging_album_resolve_does_not_delay_a_track_job_submitted_after_it(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    hanging_album = catalog.add_album(2)
    upstream.inject("album", "hang", None, album_id=hanging_album)
    daemon = make_daemon(upstream=upstream, settings={"upstream": {"resolve_timeout_s": 60}})
    daemon.start()
    album_job = daemon.submit("album", hanging_album)
    assert upstream.wait_for_request("album")  # its resolve is under way, and hangs
    track_job = daemon.submit("track", SINGLE_TRACK_ID)

    assert daemon.wait_job(track_job, timeout=30)["status"] == "completed"
    assert daemon.job(album_job)["status"] == "queued"  # still resolving
    daemon.call("cancel", id=album_job)


def test_a_high_job_whose_resolve_waits_for_a_later_pass_does_not_hold_back_a_normal_one(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    high_album = catalog.add_album(1)
    upstream.inject("album", "status", None, status=503, album_id=high_album)
    daemon = make_daemon(
        upstream=upstream,
        settings={
            "upstream": {"failure_threshold": 100},
            "worker": {"max_retries": 1, "max_passes": 3, "requeue_after_s": 600},
        },
    )
    daemon.start()
    high_job = daemon.submit("album", high_album, priority="high")
    assert wait_until(lambda: "resolve deferred to a later pass" in daemon.logs(), timeout=30)
    normal_job = daemon.submit("track", SINGLE_TRACK_ID)

    assert daemon.wait_job(normal_job, timeout=30)["status"] == "completed"
    assert daemon.job(high_job)["status"] == "queued"  # still waiting for its later pass
    daemon.call("cancel", id=high_job)


def test_a_track_failing_more_often_than_max_retries_completes_on_a_later_pass(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    # Two tries per pass (max_retries 1), each asking both media mirrors: four 503s
    # end the first pass transiently, and the second pass succeeds.
    upstream.inject("media", "status", 4, status=503, track_id=SINGLE_TRACK_ID)
    daemon = make_daemon(
        upstream=upstream,
        settings={"worker": {"max_retries": 1, "max_passes": 3, "requeue_after_s": 1.0}},
    )
    daemon.start()
    job_id = daemon.submit("track", SINGLE_TRACK_ID)

    def deferred() -> dict[str, Any] | None:
        track = daemon.job(job_id)["tracks"][0]
        return track if track["next_pass_at"] is not None else None

    track = wait_until(deferred, what="the track to be deferred to a later pass")
    assert (track["status"], track["passes"]) == ("pending", 1)
    assert track["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert daemon.job(job_id)["status"] == "processing"  # not failed
    job = daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed"
    assert job["tracks"][0]["next_pass_at"] is None and job["tracks"][0]["error"] is None


def test_a_track_out_of_passes_fails_its_job(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    upstream.inject("media", "status", None, status=503, track_id=SINGLE_TRACK_ID)
    daemon = make_daemon(
        upstream=upstream,
        settings={"worker": {"max_retries": 0, "max_passes": 2, "requeue_after_s": 0.2}},
    )
    daemon.start()
    job = daemon.wait_job(daemon.submit("track", SINGLE_TRACK_ID), timeout=30)
    assert job["status"] == "failed"
    track = job["tracks"][0]
    assert (track["status"], track["passes"]) == ("failed", 1)
    assert track["error"]["code"] == "UPSTREAM_UNAVAILABLE"


def test_a_job_whose_metadata_read_runs_out_of_retries_is_resolved_on_a_later_pass(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    # Before the upstream counts as down (failure_threshold above the tries), a
    # lone job's /album/ reads use up its retries: a later pass, not a failure.
    album_id = catalog.add_album(1)
    upstream.inject("album", "status", 2, status=503, album_id=album_id)
    daemon = make_daemon(
        upstream=upstream,
        settings={
            "upstream": {"failure_threshold": 100},
            "worker": {"max_retries": 1, "max_passes": 3, "requeue_after_s": 0.5},
        },
    )
    daemon.start()
    job_id = daemon.submit("album", album_id)
    assert upstream.wait_for_request("album", 2)  # the first pass: both tries failed
    assert daemon.job(job_id)["status"] == "queued"
    job = daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed"
    assert "resolve deferred to a later pass" in daemon.logs()
