"""The daemon's Prometheus metrics: one `Metrics` object owning its own registry.

Counters move on journaled facts — `observe_event` is handed each event once
it is durable (submits, finishes, cancels, finished or failed tracks, and
how long each job took from its submit or retry to its final status) — plus
calls for what is not journaled: retries (`count_retry`), how long a track
took (`observe_track_seconds`), failed completion hooks and notifications
(`count_hook_failure`, `count_notify_failure`). Gauges (jobs by status,
active tracks, the oldest queued job's age, journal size) are read from the
live queue when the text is rendered. The text is served by `dlqctl metrics` and, when
`[metrics] textfile` is set, written atomically for node_exporter's textfile
collector. This module never changes the queue and never logs per event.

Every metric name starts with `dlqd_`; docs/operations.md lists them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dlqd import __version__
from dlqd.model import FINISHED_STATUSES, JobStatus
from dlqd.state import QueueState

log = structlog.get_logger("dlqd.metrics")

WRITTEN_OUTCOMES = ("written", "overwritten", "renamed")
SKIPPED_OUTCOMES = ("skipped_identical", "skipped_exists")
# Tracks here are seconds to a few minutes; the top buckets catch stalled retries.
TRACK_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Jobs wait in the queue too: from seconds (a failed lookup) to a day (a long held queue).
JOB_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)


@dataclass(frozen=True)
class LiveView:
    """What the gauges read at render time; the daemon fills it from the store and scheduler."""

    state: Callable[[], QueueState]
    active_tracks: Callable[[], int]
    journal_stats: Callable[[], Mapping[str, Any]]


class Metrics:
    """Counters, gauges and a histogram in a private `CollectorRegistry` (never the global one)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        # `_created` series double the output and mean nothing to a textfile reader.
        prometheus_client.disable_created_metrics()
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.live: LiveView | None = None
        r = self.registry
        self.jobs_submitted = Counter(
            "dlqd_jobs_submitted", "Jobs accepted into the queue (not duplicates).", registry=r
        )
        self.jobs_finished = Counter(
            "dlqd_jobs_finished",
            "Jobs that reached a final status, by status.",
            ["status"],
            registry=r,
        )
        self.tracks_written = Counter(
            "dlqd_tracks_written",
            "Tracks that put a file into the library, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.tracks_skipped = Counter(
            "dlqd_tracks_skipped",
            "Tracks finished without writing because the library already had them, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.tracks_failed = Counter(
            "dlqd_tracks_failed", "Tracks that failed, by error code.", ["error_code"], registry=r
        )
        self.downloaded_bytes = Counter(
            "dlqd_downloaded_bytes", "Bytes downloaded for tracks that finished.", registry=r
        )
        self.retries = Counter(
            "dlqd_retries",
            "Retries of upstream requests and track downloads, by the error that caused them.",
            ["error_code"],
            registry=r,
        )
        self.hook_failures = Counter(
            "dlqd_hook_failures",
            "Completion hooks that failed: exit status not 0, killed at their timeout, or not "
            "started.",
            registry=r,
        )
        self.notify_failures = Counter(
            "dlqd_notify_failures",
            "Notifications not delivered to at least one of their URLs after their retries.",
            registry=r,
        )
        self.jobs = Gauge(
            "dlqd_jobs", "Jobs known to the daemon, by status.", ["status"], registry=r
        )
        self.active_tracks = Gauge(
            "dlqd_active_tracks", "Tracks downloading right now.", registry=r
        )
        self.oldest_queued_age = Gauge(
            "dlqd_oldest_queued_job_age_seconds",
            "Age of the oldest queued job (0 when none is queued).",
            registry=r,
        )
        self.journal_bytes = Gauge(
            "dlqd_journal_bytes", "Size of the journal since the last snapshot.", registry=r
        )
        self.snapshot_bytes = Gauge("dlqd_snapshot_bytes", "Size of the last snapshot.", registry=r)
        self.track_seconds = Histogram(
            "dlqd_track_download_seconds",
            "Time from a track's first try to its file in the library (successful tracks).",
            buckets=TRACK_SECONDS_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "dlqd_job_duration_seconds",
            "Time from a job's submit (or retry) to its final status, by status; queue wait "
            "included.",
            ["status"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=r,
        )
        self._queued_at: dict[str, float] = {}  # active jobs: when they were submitted or retried
        self.start_time = Gauge(
            "dlqd_start_time_seconds", "When this dlqd process started (Unix time).", registry=r
        )
        self.build_info = Gauge(
            "dlqd_build_info", "Always 1; the version is a label.", ["version"], registry=r
        )
        self.start_time.set(clock())
        self.build_info.labels(version=__version__).set(1)
        for status in JobStatus:  # zero series exist from the start, in a stable order
            if status in FINISHED_STATUSES:
                self.jobs_finished.labels(status=str(status))
                self.job_seconds.labels(status=str(status))
        for outcome in WRITTEN_OUTCOMES:
            self.tracks_written.labels(outcome=outcome)
        for outcome in SKIPPED_OUTCOMES:
            self.tracks_skipped.labels(outcome=outcome)
        for status in JobStatus:
            self.jobs.labels(status=str(status))

    # --- what happened ---------------------------------------------------------

    def observe_event(self, event: Mapping[str, Any]) -> None:
        """Count one durable journal event (see dlqd.state for the kinds)."""
        kind = event.get("e")
        if kind == "submit":
            self.jobs_submitted.inc()
            self._job_queued(event)
        elif kind == "retry":
            self._job_queued(event)
        elif kind == "finish":
            self.jobs_finished.labels(status=str(event["status"])).inc()
            self._job_ended(event, str(event["status"]))
        elif kind == "cancel":
            self.jobs_finished.labels(status=str(JobStatus.CANCELLED)).inc()
            self._job_ended(event, str(JobStatus.CANCELLED))
        elif kind == "track_done":
            outcome = str(event.get("outcome"))
            if outcome in SKIPPED_OUTCOMES:
                self.tracks_skipped.labels(outcome=outcome).inc()
            else:
                self.tracks_written.labels(outcome=outcome).inc()
            self.downloaded_bytes.inc(max(0, int(event.get("bytes") or 0)))
        elif kind == "track_failed":
            code = (event.get("error") or {}).get("code", "UNKNOWN")
            self.tracks_failed.labels(error_code=str(code)).inc()

    def _job_queued(self, event: Mapping[str, Any]) -> None:
        if event.get("at") is not None:
            self._queued_at[event["id"]] = event["at"]

    def _job_ended(self, event: Mapping[str, Any], status: str) -> None:
        """Observe how long the job took; one queued before this process started counts
        from its submit (a retry made then is not known)."""
        queued_at = self._queued_at.pop(event["id"], None)
        if queued_at is None and self.live is not None:
            job = self.live.state().jobs.get(event["id"])
            queued_at = None if job is None else job.created_at
        ended_at = event.get("at")
        if queued_at is not None and ended_at is not None:
            self.job_seconds.labels(status=status).observe(max(0.0, ended_at - queued_at))

    def count_retry(self, error_code: str) -> None:
        self.retries.labels(error_code=error_code).inc()

    def count_hook_failure(self) -> None:
        self.hook_failures.inc()

    def count_notify_failure(self) -> None:
        self.notify_failures.inc()

    def observe_track_seconds(self, seconds: float) -> None:
        self.track_seconds.observe(max(0.0, seconds))

    # --- rendering ---------------------------------------------------------------

    def refresh_gauges(self) -> None:
        if self.live is None:
            return
        state = self.live.state()
        queued = (job.created_at for job in state.active_jobs() if job.status == JobStatus.QUEUED)
        oldest = min(queued, default=None)
        for status, count in state.status_counts().items():
            self.jobs.labels(status=status).set(count)
        self.active_tracks.set(self.live.active_tracks())
        self.oldest_queued_age.set(0 if oldest is None else max(0.0, self.clock() - oldest))
        journal = self.live.journal_stats()
        self.journal_bytes.set(journal.get("journal_bytes", 0))
        self.snapshot_bytes.set(journal.get("snapshot_bytes", 0))

    def text(self) -> str:
        """The Prometheus text exposition format, gauges read fresh."""
        self.refresh_gauges()
        return generate_latest(self.registry).decode("utf-8")

    def families(self) -> list[dict[str, Any]]:
        """The same metrics as `text`, as data (what `dlqctl --json metrics` prints).

        One map per family — `name`, `type`, `help` and its `samples`, each
        with its `name`, `labels` and `value` — named as the Prometheus text
        parser names them (a counter's family has no `_total`, its samples do).
        """
        self.refresh_gauges()
        return [
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": sample.name, "labels": dict(sample.labels), "value": sample.value}
                    for sample in family.samples
                ],
            }
            for family in self.registry.collect()
        ]

    def summary(self) -> dict[str, int]:
        """A few totals for `dlqctl stats` (every one counts whole things)."""

        def total(counter: Counter) -> int:
            return int(
                sum(
                    s.value
                    for metric in counter.collect()
                    for s in metric.samples
                    if s.name.endswith("_total")
                )
            )

        return {
            "jobs_submitted": total(self.jobs_submitted),
            "jobs_finished": total(self.jobs_finished),
            "tracks_written": total(self.tracks_written),
            "tracks_skipped": total(self.tracks_skipped),
            "tracks_failed": total(self.tracks_failed),
            "downloaded_bytes": total(self.downloaded_bytes),
            "retries": total(self.retries),
        }


def write_textfile(path: Path, text: str) -> None:
    """Replace `path` atomically: node_exporter never reads a half-written file.

    The temporary name does not end in `.prom`, so the collector ignores it.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


async def run_textfile_writer(metrics: Metrics, path: Path, interval_s: float) -> None:
    """Write the textfile now and then every `interval_s`; a failed write is logged, not fatal."""
    failing = False
    while True:
        text = metrics.text()
        try:
            await trio.to_thread.run_sync(write_textfile, path, text)
        except OSError as exc:
            if not failing:  # once per outage, not every interval
                log.warning("cannot write metrics textfile", path=str(path), error=str(exc))
            failing = True
        else:
            if failing:
                log.info("metrics textfile written again", path=str(path))
            failing = False
        await trio.sleep(interval_s)
