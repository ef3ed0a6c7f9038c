"""Kill -9 torture: crash the daemon at random moments during album downloads, restart it.

Each round starts the real daemon, lets it work until a kill moment chosen by a
seeded RNG (a byte count to reach, polled through live progress, or a short
delay — the delay is *when to crash*, not synchronisation), then SIGKILLs it.
New albums are submitted whenever fewer than two jobs are active. Some rounds
begin an upstream outage (503 on every route) that lasts one to three rounds:
the daemon trips its circuit and holds the queue, is killed while held, starts
again into the outage, and in the outage's last round sees the upstream come
back while it is held (its probe finds out) before the next kill. With
`worker.max_passes = 1` a track that an outage had failed would fail its job.
After the last round one clean run must finish everything, and then: every job
is completed, every file's audio equals the upstream's byte for byte, no track
exists twice in the library, and `.dlqd-tmp` is empty.

The normal suite runs 20 rounds; `-m slow` runs 200.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dlqd.demo.catalog import Catalog, CatalogServer
from tests.support import DaemonProcess, flac_audio, library_files, wait_until
from tests.test_resilience import tmp_entries

# Mostly small tracks (fast rounds), one over the 1 MiB write block so a crash
# can leave a partial file worth resuming with a Range request.
TRACK_SIZES = (60_000, 150_000, 1_500_000)
OUTAGE_ROUTES = ("info", "album", "track", "media")


def _active(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [j for j in jobs if j["status"] in ("queued", "processing", "paused")]


def _after(seconds: float) -> None:
    """Return `seconds` from now: a moment to crash at (or to end an outage), not a sync."""
    deadline = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= deadline, interval=0.005)


def _kill_moment(daemon: DaemonProcess, rng: random.Random) -> None:
    """Return at a random moment of the daemon's work (or when it runs out of work)."""
    if rng.random() < 0.4:
        _after(rng.uniform(0.0, 0.4))
        return
    start = sum(j["bytes_done"] for j in daemon.jobs())
    target = start + rng.randrange(0, 2_500_000)

    def reached() -> bool:
        jobs = daemon.jobs()
        return not _active(jobs) or sum(j["bytes_done"] for j in jobs) >= target

    wait_until(reached, timeout=30, interval=0.005, what="the kill moment")


def run_torture(
    daemon: DaemonProcess,
    upstream: CatalogServer,
    catalog: Catalog,
    *,
    rounds: int,
    seed: int,
    outage_rate: float = 0.0,
) -> dict[str, int]:
    rng = random.Random(seed)
    albums: dict[str, int] = {}  # job id -> album id
    outage_rounds_left = outages = held_rounds = 0
    for _ in range(rounds):
        daemon.start()
        while len(_active(daemon.jobs())) < 2:
            n_tracks = rng.randint(2, 4)
            album = catalog.add_album(n_tracks, rng.choice(TRACK_SIZES))
            albums[daemon.submit("album", album)] = album
        if not outage_rounds_left and rng.random() < outage_rate:
            outage_rounds_left = rng.randint(1, 3)  # begins while tracks download
            for route in OUTAGE_ROUTES:
                upstream.inject(route, "status", None, status=503)
        if outage_rounds_left:
            _after(rng.uniform(0.0, 1.0))  # down, or already held
            held_rounds += bool(daemon.call("stats")["holds"])
            outage_rounds_left -= 1
            if not outage_rounds_left:
                upstream.clear_faults()  # back while the daemon may be held: a probe notices
                outages += 1
                _kill_moment(daemon, rng)
        else:
            _kill_moment(daemon, rng)
        daemon.kill()

    upstream.clear_faults()  # an outage still on at the last kill ends before the final run
    daemon.start()
    for job_id in albums:
        daemon.wait_job(job_id, timeout=60)
    jobs = {j["id"]: j for j in daemon.jobs()}

    expected_files: set[str] = set()
    track_paths: list[str] = []
    for job_id, album in albums.items():
        job = jobs[job_id]
        assert job["status"] == "completed", job
        assert [t["track_id"] for t in job["tracks"]] == list(catalog.album(album).track_ids)
        for track in job["tracks"]:
            assert track["status"] == "completed", track
            track_paths.append(track["path"])
            final = (daemon.library / track["path"]).read_bytes()
            want = catalog.audio_for(track["track_id"], "LOSSLESS")
            assert flac_audio(final) == flac_audio(want), track["path"]
            expected_files.add(track["path"])
            expected_files.add(str(Path(track["path"]).parent / "cover.jpg"))
    duplicated = [path for path, n in Counter(track_paths).items() if n > 1]
    assert duplicated == []
    # Nothing else in the library: no renamed copy, no stray partial under a final name.
    assert library_files(daemon.library) == expected_files
    assert tmp_entries(daemon) == []
    assert daemon.call("stats")["worker"]["active_tracks"] == 0
    ranged = sum(1 for r in upstream.requests_for("media") if "range" in r.headers)
    return {
        "jobs": len(albums),
        "tracks": len(track_paths),
        "ranged": ranged,
        "outages": outages,
        "held_rounds": held_rounds,
    }


TORTURE_SETTINGS = {
    "worker": {"max_concurrent": 2, "backoff_s": [0.02, 0.05]},  # max_retries 3: four tries
    # Down after two failures in a row (before any track runs out of tries), probed every 0.2 s.
    "upstream": {"failure_threshold": 2, "max_cooldown_s": 0.2},
}


def test_kill_during_album_downloads_resumes_without_loss_or_duplicates(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    upstream.throttle_bps = 4_000_000  # per connection: a round's work takes a moment
    daemon = make_daemon(upstream=upstream, settings=TORTURE_SETTINGS)
    summary = run_torture(daemon, upstream, catalog, rounds=20, seed=4, outage_rate=0.2)
    assert summary["jobs"] >= 4
    assert summary["outages"] >= 1 and summary["held_rounds"] >= 1, summary


@pytest.mark.slow
def test_kill_torture_200_rounds(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    upstream.throttle_bps = 4_000_000
    daemon = make_daemon(upstream=upstream, settings=TORTURE_SETTINGS)
    summary = run_torture(daemon, upstream, catalog, rounds=200, seed=2004, outage_rate=0.2)
    # Enough albums went through the kills to mean something; how many depends on
    # the machine's speed (18 on a loaded 2-core run), so the floor is low.
    assert summary["jobs"] >= 10
    assert summary["outages"] >= 10 and summary["held_rounds"] >= 10, summary
