"""Metrics (`dlqctl metrics`, the node_exporter textfile) and `dlqctl health`.

Counters are checked against what the jobs actually did; the text is parsed
with prometheus_client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dlqd.circuit import BaseReport
from dlqd.demo.catalog import TWO_DISC_ALBUM_ID, Catalog, CatalogServer
from dlqd.health import upstream_check
from dlqd.metrics import Metrics, write_textfile
from tests.conftest import DaemonFactory
from tests.support import DaemonProcess, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample as (name, sorted labels) → value, through the Prometheus parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def dlqctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlqctl", "--socket", str(daemon.socket), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def cli_metrics(daemon: DaemonProcess) -> Samples:
    result = dlqctl(daemon, "metrics")
    assert result.returncode == 0, result.stderr
    return parse(result.stdout)


# --- unit: events → counters ------------------------------------------------------


def test_events_move_the_counters_and_every_name_starts_with_dlqd() -> None:
    metrics = Metrics()
    for event in (
        {"e": "submit", "id": "1", "at": 100.0},
        {"e": "track_done", "id": "1", "track_id": 1, "outcome": "written", "bytes": 1000},
        {"e": "track_done", "id": "1", "track_id": 2, "outcome": "skipped_identical", "bytes": 5},
        {"e": "track_failed", "id": "1", "track_id": 3, "error": {"code": "TIMEOUT"}},
        {"e": "finish", "id": "1", "status": "partial", "error": None, "at": 130.0},
        {"e": "submit", "id": "2", "at": 150.0},
        {"e": "cancel", "id": "2", "at": 152.0},
        {"e": "retry", "id": "1", "at": 200.0},  # counts again from the retry
        {"e": "finish", "id": "1", "status": "completed", "error": None, "at": 203.0},
        {"e": "hold"},
    ):
        metrics.observe_event(event)
    metrics.count_retry("UPSTREAM_UNAVAILABLE")
    metrics.observe_track_seconds(0.7)
    samples = parse(metrics.text())
    assert value(samples, "dlqd_jobs_submitted_total") == 2
    assert value(samples, "dlqd_jobs_finished_total", status="partial") == 1
    assert value(samples, "dlqd_jobs_finished_total", status="cancelled") == 1
    assert value(samples, "dlqd_jobs_finished_total", status="completed") == 1
    assert value(samples, "dlqd_tracks_written_total", outcome="written") == 1
    assert value(samples, "dlqd_tracks_skipped_total", outcome="skipped_identical") == 1
    assert value(samples, "dlqd_tracks_failed_total", error_code="TIMEOUT") == 1
    assert value(samples, "dlqd_downloaded_bytes_total") == 1005
    assert value(samples, "dlqd_retries_total", error_code="UPSTREAM_UNAVAILABLE") == 1
    assert value(samples, "dlqd_track_download_seconds_count") == 1
    assert value(samples, "dlqd_track_download_seconds_bucket", le="1.0") == 1
    assert value(samples, "dlqd_job_duration_seconds_sum", status="partial") == 30
    assert value(samples, "dlqd_job_duration_seconds_sum", status="cancelled") == 2
    assert value(samples, "dlqd_job_duration_seconds_sum", status="completed") == 3
    assert value(samples, "dlqd_job_duration_seconds_count", status="failed") == 0
    assert all(name.startswith("dlqd_") for name, _ in samples)
    assert not [name for name, _ in samples if name.endswith("_created")]


def test_textfile_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "dlqd.prom"
    write_textfile(target, "dlqd_x 1\n")
    write_textfile(target, "dlqd_x 2\n")
    assert target.read_text() == "dlqd_x 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["dlqd.prom"]  # no temp file left


# --- a real daemon -------------------------------------------------------------------


def test_metrics_and_textfile_count_what_the_jobs_did(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, tmp_path: Path
) -> None:
    textfile = tmp_path / "textfile" / "dlqd.prom"
    textfile.parent.mkdir()
    album = catalog.album(TWO_DISC_ALBUM_ID)
    # One track is gone upstream (permanent); another answers 503 once (one retry).
    upstream.inject("track", "status", times=None, track_id=album.track_ids[1], status=404)
    upstream.inject("track", "status", times=1, track_id=album.track_ids[3], status=503)
    daemon = make_daemon(
        upstream=upstream,
        settings={
            "metrics": {"textfile": str(textfile), "interval_s": 0.2},
            "worker": {"max_concurrent": 2},
        },
    )
    daemon.start()
    # Written at start-up, before any job.
    initial = parse(wait_until(lambda: textfile.exists() and textfile.read_text(), what="file"))
    assert value(initial, "dlqd_jobs_submitted_total") == 0

    first = daemon.wait_job(daemon.submit("album", TWO_DISC_ALBUM_ID))
    assert first["status"] == "partial"
    # The same album again: four tracks are already in the library, identical.
    upstream.clear_faults()
    second = daemon.wait_job(daemon.submit("album", TWO_DISC_ALBUM_ID))
    assert second["status"] == "completed"
    # A job cancelled while the queue is held never starts.
    daemon.call("pause")
    third = daemon.submit("track", album.track_ids[0])
    daemon.call("cancel", id=third)
    daemon.call("resume")

    tracks = first["tracks"] + second["tracks"]
    outcomes = [t["outcome"] for t in tracks if t["status"] == "completed"]
    downloaded = sum(t["bytes_total"] for t in tracks if t["status"] == "completed")
    expected = {
        ("dlqd_jobs_submitted_total", ()): 3,
        ("dlqd_jobs_finished_total", (("status", "completed"),)): 1,
        ("dlqd_jobs_finished_total", (("status", "partial"),)): 1,
        ("dlqd_jobs_finished_total", (("status", "failed"),)): 0,
        ("dlqd_jobs_finished_total", (("status", "cancelled"),)): 1,
        ("dlqd_tracks_written_total", (("outcome", "written"),)): outcomes.count("written"),
        ("dlqd_tracks_skipped_total", (("outcome", "skipped_identical"),)): outcomes.count(
            "skipped_identical"
        ),
        ("dlqd_tracks_failed_total", (("error_code", "UPSTREAM_NOT_FOUND"),)): 1,
        ("dlqd_retries_total", (("error_code", "UPSTREAM_UNAVAILABLE"),)): 1,
        ("dlqd_downloaded_bytes_total", ()): downloaded,
        ("dlqd_track_download_seconds_count", ()): len(outcomes),
        ("dlqd_jobs", (("status", "completed"),)): 1,
        ("dlqd_jobs", (("status", "partial"),)): 1,
        ("dlqd_jobs", (("status", "cancelled"),)): 1,
        ("dlqd_jobs", (("status", "queued"),)): 0,
        ("dlqd_active_tracks", ()): 0,
        ("dlqd_oldest_queued_job_age_seconds", ()): 0,
    }
    assert outcomes.count("written") == 5 and outcomes.count("skipped_identical") == 4
    assert downloaded > 0

    def matches(samples: Samples) -> bool:
        return all(samples.get(key) == count for key, count in expected.items())

    served = cli_metrics(daemon)
    assert {key: served.get(key) for key in expected} == expected
    assert served[("dlqd_journal_bytes", ())] > 0
    assert all(name.startswith("dlqd_") for name, _ in served)
    # The textfile catches up within an interval or two.
    wait_until(lambda: matches(parse(textfile.read_text())), timeout=10, what="the textfile")
    assert daemon.call("stats")["metrics"]["jobs_submitted"] == 3


def test_oldest_queued_job_age_grows_while_held(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    daemon.start()
    daemon.call("pause")
    daemon.submit("album", TWO_DISC_ALBUM_ID)
    samples = wait_until(
        lambda: (s := cli_metrics(daemon))[("dlqd_oldest_queued_job_age_seconds", ())] > 0 and s,
        what="a queued job to age",
    )
    assert value(samples, "dlqd_jobs", status="queued") == 1


# --- health ----------------------------------------------------------------------------


def test_health_exits_0_and_reports_each_check(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    daemon.wait_job(daemon.submit("album", TWO_DISC_ALBUM_ID))
    result = dlqctl(daemon, "health")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("healthy")
    for check in ("scheduler", "journal", "state_dir_space", "library_space", "upstream"):
        assert f"ok  {check}:" in result.stdout
    health = daemon.call("health")
    base = health["checks"]["upstream"]["bases"][upstream.base_url.rstrip("/")]
    assert base["last_success"] is not None and base["last_failure"] is None
    assert health["checks"]["scheduler"]["heartbeat_age_s"] < 30


def test_health_exits_1_and_says_why(make_daemon: DaemonFactory) -> None:
    # No upstream listens on port 9, and no disk has a petabyte free.
    daemon = make_daemon(settings={"limits": {"min_free_mb": 10**9}})
    daemon.start()
    job = daemon.wait_job(daemon.submit("album", TWO_DISC_ALBUM_ID))
    assert job["error"]["code"] == "NETWORK_ERROR"
    result = dlqctl(daemon, "health")
    assert result.returncode == 1
    first_line = result.stdout.splitlines()[0]
    assert first_line.startswith("UNHEALTHY")
    for problem in ("state_dir_space", "library_space", "upstream"):
        assert problem in first_line
    assert "BAD upstream" in result.stdout
    assert "NETWORK_ERROR" in result.stdout  # the base's last error
    assert "ok  journal" in result.stdout and "ok  scheduler" in result.stdout


def test_health_shows_a_base_url_without_its_credentials_or_query() -> None:
    secret_base = "https://user:hunter2@proxy.example:8443/api?key=SECRET"
    check = upstream_check({secret_base: BaseReport(last_success=1.0)}, now=2.0)
    assert list(check["bases"]) == ["https://proxy.example:8443/api"]
    assert check["ok"] is True
