"""Resilience under real faults (issue 4): a real dlqd process against a misbehaving upstream.

Every test here injects a fault into the real HTTP upstream (`CatalogServer.inject`,
throttling), the real filesystem (a tiny tmpfs) or the real process (SIGKILL,
SIGTERM), and checks the state the contract documents: job and track status,
error code, attempts, what is left on disk, and that the daemon keeps working.
Waiting is always polling with a deadline (`wait_until`), never a guessed sleep.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from dlqd.demo.catalog import SINGLE_TRACK_ID, Catalog, CatalogServer
from dlqd.errors import DlqdError, ErrorCode, from_oserror
from dlqd.journal import JournalFiles, encode_record
from dlqd.retention import expired_job_ids, run_retention
from dlqd.state import QueueState, apply
from tests.support import DaemonProcess, flac_audio, library_files, wait_until

TMP = ".dlqd-tmp"


# --- helpers ---------------------------------------------------------------------


def tmp_entries(daemon: DaemonProcess) -> list[str]:
    directory = daemon.library / TMP
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def track_of(job: dict[str, Any], track_id: int | None = None) -> dict[str, Any]:
    if track_id is None:
        (track,) = job["tracks"]
        return track
    return next(t for t in job["tracks"] if t["track_id"] == track_id)


def wait_bytes(daemon: DaemonProcess, job_id: str, at_least: int, timeout: float = 30.0) -> None:
    """Poll until the processing job has received `at_least` bytes (live progress)."""

    def enough() -> bool:
        job = daemon.job(job_id)
        assert job["status"] in ("queued", "processing"), job
        return job["bytes_done"] >= at_least

    wait_until(enough, timeout=timeout, interval=0.01, what=f"job {job_id} to pass {at_least} B")


def active_tracks(daemon: DaemonProcess) -> int:
    return int(daemon.call("stats")["worker"]["active_tracks"])


def assert_slot_free_and_new_job_starts(
    daemon: DaemonProcess, upstream: CatalogServer, catalog: Catalog
) -> None:
    """No slot leaked: nothing is active, and a fresh job completes straight away."""
    upstream.clear_faults()
    upstream.throttle_bps = None
    wait_until(lambda: active_tracks(daemon) == 0, timeout=5, what="no active tracks")
    album = catalog.add_album(1, 20_000)
    job_id = daemon.submit("album", album)
    job = daemon.wait_job(job_id, timeout=15)
    assert job["status"] == "completed", job
    assert active_tracks(daemon) == 0


# --- the fault matrix on one daemon --------------------------------------------------

MATRIX_SETTINGS = {
    "worker": {"max_retries": 2, "backoff_s": [0.05, 0.1], "max_concurrent": 2},
    "upstream": {"read_timeout_s": 1.0, "connect_timeout_s": 1.0},
    # Each test fetches the same track into one library: `overwrite` downloads it every
    # time (the default would skip it before any request the test injects a fault into).
    "files": {"conflict": "overwrite"},
}


@pytest.fixture(scope="module")
def matrix_catalog() -> Catalog:
    return Catalog()


@pytest.fixture(scope="module")
def matrix_upstream(matrix_catalog: Catalog) -> Iterator[CatalogServer]:
    with CatalogServer(matrix_catalog) as server:
        yield server


@pytest.fixture(scope="module")
def matrix_daemon(
    tmp_path_factory: pytest.TempPathFactory, matrix_upstream: CatalogServer
) -> Iterator[DaemonProcess]:
    settings = {k: dict(v) for k, v in MATRIX_SETTINGS.items()}
    settings["upstream"].update(
        base_url=[matrix_upstream.base_url], cover_base_url=matrix_upstream.cover_base_url
    )
    daemon = DaemonProcess(tmp_path_factory.mktemp("matrix"), settings=settings)
    daemon.start()
    yield daemon
    daemon.cleanup()


@pytest.fixture
def fresh_upstream(matrix_upstream: CatalogServer) -> Iterator[CatalogServer]:
    matrix_upstream.clear_faults()
    matrix_upstream.clear_requests()
    matrix_upstream.throttle_bps = None
    yield matrix_upstream
    matrix_upstream.clear_faults()


# (route, fault, times, inject kwargs) that heal after one bad try: retried to success.
# A manifest lists two mirrors and falling back between them stays inside one try,
# so a media fault must hit both (times=2) to cost a try — but a 429 asks no other
# mirror: it holds the upstream (test_outages.py), and the track runs again after.
HEALING_TRACK_FAULTS = [
    ("media", "status", 2, {"status": 500}),
    ("media", "status", 2, {"status": 502}),
    ("media", "status", 2, {"status": 503}),
    ("media", "status", 1, {"status": 429}),
    ("media", "reset", 2, {"after_bytes": 1000}),
    ("media", "short", 2, {}),
    ("media", "stall", 2, {"after_bytes": 1000}),
    ("media", "hang", 2, {}),
    ("track", "status", 1, {"status": 503}),
    ("track", "status", 1, {"status": 429}),
    ("track", "reset", 1, {}),
    ("track", "hang", 1, {}),
]


@pytest.mark.parametrize(
    ("route", "fault", "times", "kwargs"),
    HEALING_TRACK_FAULTS,
    ids=[f"{r}-{f}-{kw.get('status', '')}" for r, f, _, kw in HEALING_TRACK_FAULTS],
)
def test_transient_fault_that_heals_is_retried_to_success(
    matrix_daemon: DaemonProcess,
    fresh_upstream: CatalogServer,
    route: str,
    fault: str,
    times: int,
    kwargs: dict[str, Any],
) -> None:
    fresh_upstream.inject(route, fault, times, track_id=SINGLE_TRACK_ID, **kwargs)
    job_id = matrix_daemon.submit("track", SINGLE_TRACK_ID)
    job = matrix_daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed", job
    track = track_of(job)
    assert track["status"] == "completed"
    assert track["attempts"] == 2, track
    assert job["attempts"] == 2
    assert track["error"] is None and job["error"] is None
    assert fresh_upstream.pending_faults() == 0
    assert tmp_entries(matrix_daemon) == []


@pytest.mark.parametrize(
    ("route", "fault"),
    [("info", "status"), ("album", "status"), ("info", "reset"), ("album", "hang")],
)
def test_transient_metadata_fault_is_retried_while_resolving(
    matrix_daemon: DaemonProcess, fresh_upstream: CatalogServer, route: str, fault: str
) -> None:
    target = {"track_id": SINGLE_TRACK_ID} if route == "info" else {"album_id": 300}
    fresh_upstream.inject(route, fault, 1, status=502, **target)
    job_id = matrix_daemon.submit("track", SINGLE_TRACK_ID)
    job = matrix_daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed", job
    assert len(fresh_upstream.requests_for(route)) >= 2
    assert track_of(job)["attempts"] == 1  # resolving is not a track try


# (route, fault, times, kwargs, expected code, expected track attempts)
FAILING_TRACK_FAULTS = [
    ("track", "status", None, {"status": 404}, "UPSTREAM_NOT_FOUND", 1),
    ("track", "status", None, {"status": 403}, "UPSTREAM_BAD_RESPONSE", 1),
    ("track", "bad_json", None, {}, "UPSTREAM_BAD_RESPONSE", 1),
    ("track", "bad_shape", None, {}, "UPSTREAM_BAD_RESPONSE", 1),
    ("track", "bad_manifest", None, {}, "UPSTREAM_BAD_RESPONSE", 1),
    ("media", "status", None, {"status": 404}, "UPSTREAM_NOT_FOUND", 1),
    ("media", "status", None, {"status": 500}, "UPSTREAM_UNAVAILABLE", 3),
    ("media", "reset", None, {"after_bytes": 1000}, "NETWORK_ERROR", 3),
    ("media", "short", None, {}, "INTEGRITY_ERROR", 3),
    ("media", "stall", None, {"after_bytes": 1000}, "TIMEOUT", 3),
    ("track", "hang", None, {}, "TIMEOUT", 3),
]


@pytest.mark.parametrize(
    ("route", "fault", "times", "kwargs", "code", "attempts"),
    FAILING_TRACK_FAULTS,
    ids=[f"{r}-{f}-{kw.get('status', '')}" for r, f, _, kw, _, _ in FAILING_TRACK_FAULTS],
)
def test_lasting_or_permanent_fault_fails_the_track_with_its_code(
    matrix_daemon: DaemonProcess,
    fresh_upstream: CatalogServer,
    route: str,
    fault: str,
    times: int | None,
    kwargs: dict[str, Any],
    code: str,
    attempts: int,
) -> None:
    fresh_upstream.inject(route, fault, times, track_id=SINGLE_TRACK_ID, **kwargs)
    job_id = matrix_daemon.submit("track", SINGLE_TRACK_ID)
    job = matrix_daemon.wait_job(job_id, timeout=30)
    track = track_of(job)
    assert job["status"] == "failed", job
    assert track["status"] == "failed"
    assert track["error"]["code"] == code, track
    assert job["error"]["code"] == code
    assert track["attempts"] == attempts, track
    # Exactly `attempts` tries reached the upstream's playback route (a media 404
    # refetches the manifest once inside the same try).
    playback = fresh_upstream.requests_for("track", track_id=SINGLE_TRACK_ID)
    expected_playback = 2 if (route, kwargs.get("status")) == ("media", 404) else attempts
    assert len(playback) == expected_playback
    assert tmp_entries(matrix_daemon) == []


@pytest.mark.parametrize(
    ("route", "fault", "status", "code"),
    [
        ("info", "status", 404, "UPSTREAM_NOT_FOUND"),
        ("info", "bad_shape", 0, "UPSTREAM_BAD_RESPONSE"),
        ("album", "bad_json", 0, "UPSTREAM_BAD_RESPONSE"),
        ("album", "status", 404, "UPSTREAM_NOT_FOUND"),
    ],
)
def test_permanent_metadata_fault_fails_the_job_at_once(
    matrix_daemon: DaemonProcess,
    fresh_upstream: CatalogServer,
    route: str,
    fault: str,
    status: int,
    code: str,
) -> None:
    target = {"track_id": SINGLE_TRACK_ID} if route == "info" else {"album_id": 300}
    fresh_upstream.inject(route, fault, None, status=status or 503, **target)
    job_id = matrix_daemon.submit("track", SINGLE_TRACK_ID)
    job = matrix_daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == code
    assert len(fresh_upstream.requests_for(route)) == 1  # permanent: not retried
    assert fresh_upstream.requests_for("media") == []


def test_expired_media_url_refetches_the_manifest_within_one_try(
    matrix_daemon: DaemonProcess, fresh_upstream: CatalogServer
) -> None:
    # Both mirrors of the first manifest answer 404 (expired signed URLs).
    fresh_upstream.inject("media", "status", 2, status=404, track_id=SINGLE_TRACK_ID)
    job_id = matrix_daemon.submit("track", SINGLE_TRACK_ID)
    job = matrix_daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed", job
    assert track_of(job)["attempts"] == 1
    assert len(fresh_upstream.requests_for("track", track_id=SINGLE_TRACK_ID)) == 2


def test_cover_failure_never_fails_the_track(
    matrix_daemon: DaemonProcess, fresh_upstream: CatalogServer
) -> None:
    fresh_upstream.inject("cover", "status", None, status=500)
    job_id = matrix_daemon.submit("track", SINGLE_TRACK_ID)
    job = matrix_daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed", job
    assert track_of(job)["attempts"] == 1


def test_short_body_retry_resumes_with_a_range_request(
    matrix_daemon: DaemonProcess, fresh_upstream: CatalogServer, matrix_catalog: Catalog
) -> None:
    album = matrix_catalog.add_album(1, 3_000_000)
    track_id = album * 1000 + 1
    size = len(matrix_catalog.audio_for(track_id, "LOSSLESS"))
    # 1.5 MiB arrive before the cut: at least one 1 MiB block reached the temp file.
    fresh_upstream.inject("media", "short", 2, track_id=track_id, after_bytes=1_600_000)
    job_id = matrix_daemon.submit("album", album)
    job = matrix_daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed", job
    assert track_of(job)["attempts"] == 2
    first, *later = fresh_upstream.requests_for("media", track_id=track_id)
    assert "range" not in first.headers
    ranges = [r.headers.get("range") for r in later]
    # Every later request continues the partial file instead of starting over.
    assert ranges and all(r is not None for r in ranges), ranges
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges]
    assert all(1_000_000 <= s < size for s in starts), starts
    assert all(r.headers.get("if-range", "").startswith('"') for r in later)
    final = (matrix_daemon.library / track_of(job)["path"]).read_bytes()
    assert flac_audio(final) == flac_audio(matrix_catalog.audio_for(track_id, "LOSSLESS"))


def test_after_the_fault_matrix_no_slot_is_leaked(
    matrix_daemon: DaemonProcess, fresh_upstream: CatalogServer, matrix_catalog: Catalog
) -> None:
    stats = matrix_daemon.call("stats")
    assert stats["worker"]["active_tracks"] == 0
    assert stats["queue"]["processing"] == 0 and stats["queue"]["queued"] == 0
    assert_slot_free_and_new_job_starts(matrix_daemon, fresh_upstream, matrix_catalog)


# --- timeouts ------------------------------------------------------------------------


def test_track_deadline_fails_a_hung_track_with_timeout(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(
        upstream=upstream,
        settings={"worker": {"track_timeout_s": 1.5}, "upstream": {"read_timeout_s": 30}},
    )
    daemon.start()
    upstream.inject("media", "hang", None, track_id=SINGLE_TRACK_ID)
    started = time.monotonic()
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    job = daemon.wait_job(job_id, timeout=10)
    elapsed = time.monotonic() - started
    assert job["status"] == "failed", job
    assert track_of(job)["error"]["code"] == "TIMEOUT"
    assert job["error"]["code"] == "TIMEOUT"
    assert 1.4 <= elapsed < 5, elapsed  # the deadline, not the 30 s read timeout
    assert tmp_entries(daemon) == []
    assert_slot_free_and_new_job_starts(daemon, upstream, catalog)


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP port whose accept queue is full: connecting to it never completes."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue (backlog 0 still admits one or two)
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        fillers.append(sock)
    yield f"http://127.0.0.1:{port}"
    for sock in fillers:
        sock.close()
    server.close()


def test_connect_timeout_is_a_transient_timeout(
    make_daemon: Any, upstream: CatalogServer, blackhole: str
) -> None:
    daemon = make_daemon(
        upstream=upstream,
        settings={
            "upstream": {"base_url": [blackhole], "connect_timeout_s": 0.3},
            "worker": {"max_retries": 1},
        },
    )
    daemon.start()
    started = time.monotonic()
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    job = daemon.wait_job(job_id, timeout=10)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "TIMEOUT", job
    assert time.monotonic() - started < 5


# --- cancellation ----------------------------------------------------------------------


def test_cancel_during_a_throttled_download_is_prompt_and_leaves_nothing(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    album = catalog.add_album(1, 2_000_000)
    upstream.throttle_bps = 200_000  # ~10 s for the track
    job_id = daemon.submit("album", album)
    wait_bytes(daemon, job_id, 100_000)
    assert tmp_entries(daemon), "the download has a temp file while running"

    started = time.monotonic()
    job = daemon.call("cancel", id=job_id)["job"]
    cancel_s = time.monotonic() - started

    assert cancel_s < 1.0, f"cancel took {cancel_s:.3f} s"
    # Answered only after the work stopped and the temp file was removed.
    assert tmp_entries(daemon) == []
    assert library_files(daemon.library) == set()
    assert active_tracks(daemon) == 0
    job = daemon.job(job_id)
    assert job["status"] == "cancelled"
    assert job["error"]["code"] == "CANCELLED"
    assert track_of(job)["status"] == "cancelled"
    assert_slot_free_and_new_job_starts(daemon, upstream, catalog)


def test_cancel_while_a_retry_after_holds_the_queue_is_prompt(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    upstream.inject("media", "status", None, status=429, retry_after=60, track_id=SINGLE_TRACK_ID)
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    wait_until(
        lambda: [h["reason"] for h in daemon.call("stats")["holds"]] == ["rate_limited"],
        what="the 429 to hold the queue",
    )
    started = time.monotonic()
    daemon.call("cancel", id=job_id)
    assert time.monotonic() - started < 1.0
    job = daemon.job(job_id)
    assert job["status"] == "cancelled"
    assert track_of(job)["attempts"] == 1  # it waited for the hold before a second try
    assert tmp_entries(daemon) == []
    daemon.call("resume", force=True)  # else the hold lasts its 60 s
    assert_slot_free_and_new_job_starts(daemon, upstream, catalog)


# --- disk -------------------------------------------------------------------------------


def test_oserror_mapping_at_the_filesystem_edge() -> None:
    import errno

    assert from_oserror(OSError(errno.ENOSPC, "full"), "x").code == ErrorCode.DISK_FULL
    assert from_oserror(OSError(errno.EDQUOT, "quota"), "x").code == ErrorCode.DISK_FULL
    for number in (errno.EACCES, errno.EROFS, errno.EIO, errno.EPERM):
        error = from_oserror(OSError(number, os.strerror(number)), "x")
        assert error.code == ErrorCode.FILESYSTEM_ERROR
        assert not error.transient
    assert isinstance(error, DlqdError)


# --- crash and restart ------------------------------------------------------------------


def test_resume_after_kill_requests_only_the_missing_byte_range(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    album = catalog.add_album(2, 3_000_000)
    first_id, second_id = album * 1000 + 1, album * 1000 + 2
    size = len(catalog.audio_for(second_id, "LOSSLESS"))
    upstream.throttle_bps = 3_000_000  # ~1 s per track
    job_id = daemon.submit("album", album)

    def second_track_past_first_block() -> bool:
        tracks = {t["track_id"]: t for t in daemon.job(job_id)["tracks"]}
        second = tracks.get(second_id)
        # Past 1 MiB the first write block has reached the temp file.
        return second is not None and second["bytes_done"] >= 1_300_000

    wait_until(second_track_past_first_block, interval=0.01, what="track 2 past 1.3 MB")
    assert track_of(daemon.job(job_id), first_id)["status"] == "completed"
    daemon.kill()
    partial = daemon.library / TMP / f"{job_id}-{second_id}.part"
    kept = partial.stat().st_size
    assert 0 < kept < size

    upstream.throttle_bps = None
    upstream.clear_requests()
    sent_before = upstream.media_bytes_sent
    daemon.start()
    job = daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed", job

    # The finished track is not fetched again; the interrupted one only from `kept` on.
    assert upstream.requests_for("media", track_id=first_id) == []
    (request,) = upstream.requests_for("media", track_id=second_id)
    assert request.headers["range"] == f"bytes={kept}-"
    assert request.headers["if-range"].startswith('"')
    assert upstream.media_bytes_sent - sent_before == size - kept
    for track_id in (first_id, second_id):
        final = (daemon.library / track_of(job, track_id)["path"]).read_bytes()
        assert flac_audio(final) == flac_audio(catalog.audio_for(track_id, "LOSSLESS"))
    assert tmp_entries(daemon) == []


def test_resume_without_range_support_restarts_the_track_cleanly(
    make_daemon: Any, catalog: Catalog
) -> None:
    with CatalogServer(catalog, supports_range=False) as upstream:
        daemon = make_daemon(upstream=upstream)
        daemon.start()
        album = catalog.add_album(1, 3_000_000)
        track_id = album * 1000 + 1
        upstream.throttle_bps = 1_000_000
        job_id = daemon.submit("album", album)
        wait_bytes(daemon, job_id, 1_300_000)
        daemon.kill()
        assert (daemon.library / TMP / f"{job_id}-{track_id}.part").stat().st_size > 0

        upstream.throttle_bps = None
        upstream.clear_requests()
        daemon.start()
        job = daemon.wait_job(job_id, timeout=30)
        assert job["status"] == "completed", job
        requests = upstream.requests_for("media", track_id=track_id)
        assert requests[0].headers.get("range")  # it asked, the server said 200
        final = (daemon.library / track_of(job)["path"]).read_bytes()
        assert flac_audio(final) == flac_audio(catalog.audio_for(track_id, "LOSSLESS"))
        assert tmp_entries(daemon) == []
        daemon.kill()


def test_orphaned_temp_files_are_swept_at_start_up(
    make_daemon: Any, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    tmp = daemon.library / TMP
    tmp.mkdir(parents=True)
    for name in ("7-7001.part", "7-7001.part.meta", "cover-abc.jpg"):
        (tmp / name).write_bytes(b"leftover")
    (tmp / "stray-dir").mkdir()
    daemon.start()
    assert tmp_entries(daemon) == []
    assert '"count": 4' in daemon.logs() and "removed leftover temp files" in daemon.logs()


# --- graceful shutdown -------------------------------------------------------------------


def test_sigterm_during_downloads_exits_within_grace_and_restart_completes_everything(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    grace = 1.0
    daemon = make_daemon(
        upstream=upstream,
        settings={"worker": {"drain_grace_s": grace, "max_concurrent": 2}},
    )
    daemon.start()
    albums = [catalog.add_album(3, 1_500_000), catalog.add_album(2, 1_500_000)]
    upstream.throttle_bps = 150_000  # each track takes ~10 s: none finishes in the grace
    job_ids = [daemon.submit("album", album) for album in albums]
    wait_bytes(daemon, job_ids[0], 200_000)

    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM, timeout=10)
    elapsed = time.monotonic() - started
    assert code == 0, daemon.logs()[-2000:]
    assert elapsed < grace + 1.0, elapsed
    # Drained tracks keep their partial files so the restart can resume them.
    assert any(name.endswith(".part") for name in tmp_entries(daemon))

    upstream.throttle_bps = None
    upstream.clear_requests()
    daemon.start()
    for job_id, album in zip(job_ids, albums, strict=True):
        job = daemon.wait_job(job_id, timeout=30)
        assert job["status"] == "completed", job
        for track in job["tracks"]:
            final = (daemon.library / track["path"]).read_bytes()
            want = catalog.audio_for(track["track_id"], "LOSSLESS")
            assert flac_audio(final) == flac_audio(want)
        assert len(job["tracks"]) == len(catalog.album(album).track_ids)
    assert any("range" in r.headers for r in upstream.requests_for("media"))
    assert tmp_entries(daemon) == []


def test_sigterm_lets_a_running_track_finish_within_the_grace_and_starts_no_new_one(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(
        upstream=upstream,
        settings={"worker": {"drain_grace_s": 8, "max_concurrent": 1}},
    )
    daemon.start()
    album = catalog.add_album(2, 400_000)
    first_id, second_id = album * 1000 + 1, album * 1000 + 2
    upstream.throttle_bps = 400_000  # ~1 s per track, well inside the grace
    job_id = daemon.submit("album", album)
    wait_bytes(daemon, job_id, 50_000)
    assert daemon.stop(signal.SIGTERM, timeout=15) == 0
    assert upstream.requests_for("media", track_id=second_id) == []

    upstream.throttle_bps = None
    daemon.start()
    job = daemon.job(job_id)
    assert track_of(job, first_id)["status"] == "completed"  # finished during the drain
    job = daemon.wait_job(job_id, timeout=30)
    assert job["status"] == "completed", job
    assert len(upstream.requests_for("media", track_id=first_id)) == 1


# --- retention ---------------------------------------------------------------------------

HOUR = 3600.0


def _state_with(jobs: list[tuple[str, str, float]]) -> QueueState:
    """A state holding one track job per (id, status, finished_at); active ones unfinished."""
    state = QueueState()
    for job_id, status, finished_at in jobs:
        apply(
            state,
            {"e": "submit", "id": job_id, "type": "track", "target_id": 1000 + int(job_id),
             "quality": "LOSSLESS", "priority": "normal", "at": finished_at - 60},
        )  # fmt: skip
        if status in ("completed", "failed", "partial", "cancelled"):
            apply(
                state,
                {"e": "finish", "id": job_id, "status": status, "error": None, "at": finished_at},
            )
    return state


def test_expired_job_ids_applies_each_status_retention() -> None:
    now = 1_000_000.0
    state = _state_with(
        [
            ("1", "completed", now - 3 * HOUR),
            ("2", "completed", now - 0.5 * HOUR),
            ("3", "failed", now - 3 * HOUR),
            ("4", "partial", now - 5 * HOUR),
            ("5", "cancelled", now - 4.1 * HOUR),
            ("6", "queued", now - 100 * HOUR),
        ]
    )
    assert expired_job_ids(state, now, completed_h=1, failed_h=4) == ["1", "4", "5"]
    assert expired_job_ids(state, now, completed_h=0, failed_h=0) == []  # 0 keeps forever
    assert expired_job_ids(state, now, completed_h=4, failed_h=1) == ["3", "4", "5"]


class _FakeStore:
    def __init__(self, state: QueueState) -> None:
        self.state = state
        self.committed: list[dict[str, Any]] = []

    async def commit(self, *events: dict[str, Any]) -> None:
        for event in events:
            apply(self.state, event)
            self.committed.append(event)


async def test_run_retention_sweeps_on_a_schedule_with_an_injected_clock(
    autojump_clock: trio.abc.Clock,
) -> None:
    wall = [1_000_000.0]
    store = _FakeStore(
        _state_with([("1", "completed", wall[0] - 2 * HOUR), ("2", "completed", wall[0] - 60)])
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_retention(
                store,  # type: ignore[arg-type]
                completed_h=1,
                failed_h=1,
                interval_s=600,
                clock=lambda: wall[0],
            )
        )
        await trio.sleep(1)  # the start-up sweep runs at once
        assert store.committed == [{"e": "expire", "ids": ["1"]}]
        assert list(store.state.jobs) == ["2"]
        wall[0] += HOUR
        await trio.sleep(600)  # the next scheduled sweep
        assert store.committed[-1] == {"e": "expire", "ids": ["2"]}
        assert store.state.jobs == {}
        committed = len(store.committed)
        await trio.sleep(600)  # nothing left: a sweep journals nothing
        assert len(store.committed) == committed
        nursery.cancel_scope.cancel()


def test_retention_sweep_runs_at_start_up_journals_and_logs_the_count(
    make_daemon: Any, upstream: CatalogServer
) -> None:
    daemon = make_daemon(
        upstream=upstream, settings={"retention": {"completed_h": 1, "failed_h": 2}}
    )
    now = time.time()
    # History written with dlqd's own journal: jobs finished hours ago.
    files = JournalFiles(daemon.state_dir)
    state, _ = files.recover()
    events = []
    for job_id, status, age_h in [
        ("1", "completed", 3),
        ("2", "failed", 3),
        ("3", "failed", 1.5),
        ("4", "completed", 0.1),
    ]:
        events.append(
            {"e": "submit", "id": job_id, "type": "track", "target_id": SINGLE_TRACK_ID,
             "quality": "LOSSLESS", "priority": "normal", "at": now - age_h * HOUR - 60}
        )  # fmt: skip
        events.append(
            {"e": "finish", "id": job_id, "status": status, "error": None,
             "at": now - age_h * HOUR}
        )  # fmt: skip
    for event in events:
        apply(state, event)
    files.append(b"".join(encode_record(event) for event in events))
    files.close()

    daemon.start()
    wait_until(lambda: "retention sweep" in daemon.logs(), what="the start-up sweep")
    sweep = next(line for line in daemon.logs().splitlines() if "retention sweep" in line)
    assert '"removed": 2' in sweep
    assert sorted(j["id"] for j in daemon.jobs()) == ["3", "4"]
    daemon.kill()
    daemon.start()  # the expiry was journaled: it survives a crash
    assert sorted(j["id"] for j in daemon.jobs()) == ["3", "4"]
