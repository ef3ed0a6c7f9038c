"""The queue's state machine: `apply(state, event)` used live and on replay.

Every state change is an event (a msgpack-able dict with an "e" key) that the
journal records before it is acknowledged. The same `apply` builds the state
at start-up from the snapshot and journal, so recovery cannot drift from normal
operation. `apply` mutates `state` in place (replaying 100,000 jobs must be
quick) but is otherwise pure: no I/O, no clock, no randomness — times arrive
inside the events. Live download progress (`downloading`, byte counts) is kept
on the same objects by the scheduler but is never part of an event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from dlqd.model import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    Job,
    JobStatus,
    Track,
    TrackStatus,
)

Event = dict[str, Any]
DedupeKey = tuple[str, int | str, str]


@dataclass
class QueueState:
    """All jobs (oldest first), the dedupe index of active jobs, and the global hold."""

    jobs: dict[str, Job] = field(default_factory=dict)
    active_by_key: dict[DedupeKey, str] = field(default_factory=dict)
    next_seq: int = 1
    held: bool = False  # `pause` without a job id: the scheduler starts nothing new
    # The lowest and highest rank ever given (`Job.rank`): a new or `move`d job takes
    # a rank beyond them, so no two jobs ever share one.
    rank_low: int = 1
    rank_high: int = 0
    # Finished jobs whose completion hook has not run yet, in the order they finished,
    # each with the `at` of that finish: `finish` with `hook` adds one, `hook_done` for
    # the same finish removes it (a retried job that finished again keeps its new one).
    hooks_pending: dict[str, float] = field(default_factory=dict)

    @property
    def active_count(self) -> int:
        return len(self.active_by_key)

    def active_job_for(self, key: DedupeKey) -> Job | None:
        job_id = self.active_by_key.get(key)
        return self.jobs[job_id] if job_id is not None else None

    def active_jobs(self) -> Iterator[Job]:
        """Queued, paused and processing jobs: at most limits.max_queue, not the history."""
        return (self.jobs[job_id] for job_id in self.active_by_key.values())

    def children_of(self, job: Job) -> list[Job]:
        """An artist job's children that are still in the queue, in its order."""
        return [self.jobs[child] for child in job.children if child in self.jobs]

    def run_order(self) -> list[Job]:
        """The active jobs in the order they run: priority, then rank (see `Job.run_key`)."""
        return sorted(self.active_jobs(), key=lambda job: job.run_key)

    def status_counts(self) -> dict[str, int]:
        """How many jobs are in each status (every status present, zeros included)."""
        counts = {str(status): 0 for status in JobStatus}
        for job in self.jobs.values():
            counts[job.status] += 1
        return counts


class ReplayError(Exception):
    """An event that cannot apply to the state: the journal and snapshot disagree."""


def apply(state: QueueState, event: Event) -> QueueState:
    """Apply one event to `state` (in place) and return it."""
    kind = event.get("e")
    handler = _HANDLERS.get(kind)  # type: ignore[arg-type]
    if handler is None:
        raise ReplayError(f"unknown event kind {kind!r}")
    handler(state, event)
    return state


def apply_all(state: QueueState, events: Iterable[Event]) -> QueueState:
    for event in events:
        apply(state, event)
    return state


def recover_interrupted(state: QueueState) -> list[str]:
    """After a restart: jobs that were processing are queued again.

    Finished tracks stay finished (their files are in the library); a track
    that was downloading is pending again. An expanded artist job stays
    processing: its children carry its work. Returns the re-queued job ids.
    """
    requeued = []
    for job in state.active_jobs():
        for track in job.tracks:
            _reset_unfinished_track(track)
        if job.status == JobStatus.PROCESSING and not is_expanded(job):
            job.status = JobStatus.QUEUED
            requeued.append(job.id)
    return requeued


def is_expanded(job: Job) -> bool:
    """An artist job that has queued (or taken on) its album jobs: it is never resolved again."""
    return job.type == "artist" and bool(job.children)


def waiting_status(job: Job) -> JobStatus:
    """Where a job set to run again stands: queued, or processing for an expanded artist job."""
    return JobStatus.PROCESSING if is_expanded(job) else JobStatus.QUEUED


def awaited_children(state: QueueState) -> set[str]:
    """Jobs an active artist job waits on: removing one would lose part of its outcome."""
    return {child for job in state.active_jobs() if job.type == "artist" for child in job.children}


def _job(state: QueueState, event: Event) -> Job:
    try:
        return state.jobs[event["id"]]
    except KeyError:
        raise ReplayError(
            f"event {event.get('e')!r} names unknown job {event.get('id')!r}"
        ) from None


def _track(job: Job, track_id: int) -> Track:
    track = job.track(track_id)
    if track is None:
        raise ReplayError(f"job {job.id} has no track {track_id}")
    return track


def _reset_unfinished_track(track: Track) -> None:
    if track.status == TrackStatus.DOWNLOADING:
        track.status = TrackStatus.PENDING
    if track.status != TrackStatus.COMPLETED:
        track.bytes_done = 0


def _leave_active(state: QueueState, job: Job) -> None:
    if state.active_by_key.get(job.dedupe_key) == job.id:
        del state.active_by_key[job.dedupe_key]


def _on_submit(state: QueueState, event: Event) -> None:
    job = Job(
        id=event["id"],
        seq=state.next_seq,
        type=event["type"],
        target_id=event["target_id"],
        quality=event["quality"],
        priority=event["priority"],
        created_at=event["at"],
        parent=event.get("parent"),
        include=tuple(event["include"]) if "include" in event else None,
    )
    if "rank" in event:  # an artist job's album job: at the artist's place (dlqd.expansion)
        job.rank = event["rank"]
    else:
        state.rank_high += 1
        job.rank = state.rank_high
    if job.type == "track":
        job.tracks.append(Track(track_id=job.target_number))
    state.next_seq += 1
    state.jobs[job.id] = job
    state.active_by_key[job.dedupe_key] = job.id


def _on_resolve(state: QueueState, event: Event) -> None:
    """The upstream's metadata: title, artist and the track list of the job.

    A track row is `[track_id, title, disc, number, duration]`; rows written
    before durations were carried (issue 10) have four fields.
    """
    job = _job(state, event)
    job.title = event["title"]
    job.artist = event["artist"]
    known = {t.track_id: t for t in job.tracks}
    resolved = []
    for track_id, title, disc, number, *later in event["tracks"]:
        track = known.get(track_id) or Track(track_id=track_id)
        track.title, track.disc, track.number = title, disc, number
        track.duration = later[0] if later else None
        resolved.append(track)
    job.tracks = resolved


def _on_expand(state: QueueState, event: Event) -> None:
    """An artist job's discography read: its name and the album jobs it now waits on.

    The child jobs' own `submit` records come in the same batch, before this one.
    """
    job = _job(state, event)
    for child_id in event["children"]:
        if child_id not in state.jobs:
            raise ReplayError(f"expand of job {job.id} names unknown job {child_id!r}")
    job.title = job.artist = event["name"]
    job.children = list(event["children"])
    job.status = JobStatus.PROCESSING
    if job.started_at is None:
        job.started_at = event["at"]


def _on_start(state: QueueState, event: Event) -> None:
    job = _job(state, event)
    job.status = JobStatus.PROCESSING
    if job.started_at is None:
        job.started_at = event["at"]


def _on_track_done(state: QueueState, event: Event) -> None:
    track = _track(_job(state, event), event["track_id"])
    track.status = TrackStatus.COMPLETED
    track.path = event["path"]
    track.outcome = event["outcome"]
    track.bytes_done = track.bytes_total = event["bytes"]
    track.attempts = event["attempts"]
    track.error = None
    track.next_pass_at = None
    # What was delivered; absent when the upstream did not say, and from records before issue 10.
    track.quality = event.get("quality")
    track.bit_depth = event.get("bit_depth")
    track.sample_rate = event.get("sample_rate")


def _on_track_deferred(state: QueueState, event: Event) -> None:
    """A track out of retries on a transient error: pending again at `due_at`, for a later pass."""
    track = _track(_job(state, event), event["track_id"])
    track.status = TrackStatus.PENDING
    track.error = event["error"]
    track.attempts = event["attempts"]
    track.passes = event["passes"]
    track.next_pass_at = event["due_at"]
    track.bytes_done = 0


def _on_track_failed(state: QueueState, event: Event) -> None:
    track = _track(_job(state, event), event["track_id"])
    track.status = TrackStatus.FAILED
    track.error = event["error"]
    track.attempts = event["attempts"]
    track.next_pass_at = None
    track.bytes_done = 0


def _on_finish(state: QueueState, event: Event) -> None:
    job = _job(state, event)
    job.status = JobStatus(event["status"])
    job.error = event["error"]
    job.finished_at = event["at"]
    # The M3U8 this finish wrote; absent when none was (and in records before it existed).
    job.playlist_path = event.get("playlist_path")
    _leave_active(state, job)
    if event.get("hook"):  # absent before completion hooks existed: those jobs run none
        state.hooks_pending[job.id] = event["at"]


def _on_hook_done(state: QueueState, event: Event) -> None:
    """The hook of the job's finish at `finished_at` ran (or failed); the job may be gone."""
    if state.hooks_pending.get(event["id"]) == event["finished_at"]:
        del state.hooks_pending[event["id"]]


def _on_cancel(state: QueueState, event: Event) -> None:
    job = _job(state, event)
    job.status = JobStatus.CANCELLED
    job.error = {"code": "CANCELLED", "message": "cancelled by request"}
    job.finished_at = event["at"]
    for track in job.tracks:
        if track.status in (TrackStatus.PENDING, TrackStatus.DOWNLOADING):
            track.status = TrackStatus.CANCELLED
            track.bytes_done = 0
    _leave_active(state, job)


def _set_aside(job: Job, status: JobStatus) -> None:
    """A job taken off the workers: unfinished tracks are pending again."""
    job.status = status
    for track in job.tracks:
        _reset_unfinished_track(track)


def _on_pause(state: QueueState, event: Event) -> None:
    _set_aside(_job(state, event), JobStatus.PAUSED)


def _on_resume(state: QueueState, event: Event) -> None:
    job = _job(state, event)
    job.status = waiting_status(job)


def _on_requeue(state: QueueState, event: Event) -> None:
    """A processing job handed back to the queue (drain at shutdown)."""
    job = _job(state, event)
    _set_aside(job, waiting_status(job))


def _on_retry(state: QueueState, event: Event) -> None:
    """A finished job runs again; an artist job's record may name its children anew."""
    job = _job(state, event)
    if "children" in event:
        job.children = list(event["children"])
    job.status = waiting_status(job)
    job.error = None
    job.finished_at = None
    state.hooks_pending.pop(job.id, None)  # its next finish decides
    for track in job.tracks:
        if track.status in (TrackStatus.FAILED, TrackStatus.CANCELLED):
            track.status = TrackStatus.PENDING
            track.error = None
        if track.status == TrackStatus.PENDING:
            track.passes, track.next_pass_at = 0, None
    state.active_by_key[job.dedupe_key] = job.id


def _on_remove(state: QueueState, event: Event) -> None:
    job = _job(state, event)
    _leave_active(state, job)
    del state.jobs[job.id]
    state.hooks_pending.pop(job.id, None)


def _on_expire(state: QueueState, event: Event) -> None:
    """Retention: finished jobs past their age, removed in one record."""
    for job_id in event["ids"]:
        job = state.jobs.pop(job_id, None)
        state.hooks_pending.pop(job_id, None)
        if job is not None and job.status not in FINISHED_STATUSES:
            raise ReplayError(f"expire names active job {job_id}")


def _on_move(state: QueueState, event: Event) -> None:
    """A job's new place in the run order (`move`; `up`/`down` swap two jobs in one batch)."""
    job = _job(state, event)
    job.rank = rank = event["rank"]
    state.rank_low = min(state.rank_low, rank)
    state.rank_high = max(state.rank_high, rank)


def _on_priority(state: QueueState, event: Event) -> None:
    _job(state, event).priority = event["priority"]


def _on_hold(state: QueueState, event: Event) -> None:
    state.held = True


def _on_release(state: QueueState, event: Event) -> None:
    state.held = False


_HANDLERS: dict[str, Callable[[QueueState, Event], None]] = {
    "submit": _on_submit,
    "resolve": _on_resolve,
    "expand": _on_expand,
    "start": _on_start,
    "track_done": _on_track_done,
    "track_deferred": _on_track_deferred,
    "track_failed": _on_track_failed,
    "finish": _on_finish,
    "hook_done": _on_hook_done,
    "cancel": _on_cancel,
    "pause": _on_pause,
    "resume": _on_resume,
    "requeue": _on_requeue,
    "retry": _on_retry,
    "remove": _on_remove,
    "expire": _on_expire,
    "move": _on_move,
    "priority": _on_priority,
    "hold": _on_hold,
    "release": _on_release,
}


# --- snapshot form -----------------------------------------------------------
# A snapshot is the whole state as one msgpack map. Jobs are stored as lists in
# a fixed field order (not maps) so 100,000 jobs load in well under a second.

_JOB_FIELDS = [
    "id",
    "seq",
    "type",
    "target_id",
    "quality",
    "priority",
    "created_at",
    "status",
    "started_at",
    "finished_at",
    "error",
    "title",
    "artist",
]
_TRACK_FIELDS = [
    "track_id",
    "title",
    "disc",
    "number",
    "status",
    "path",
    "bytes_total",
    "attempts",
    "outcome",
    "error",
    "passes",
    "next_pass_at",
    "duration",
    "quality",
    "bit_depth",
    "sample_rate",
]


def to_snapshot(state: QueueState) -> dict[str, Any]:
    jobs = []
    for job in state.jobs.values():
        row: list[Any] = [getattr(job, name) for name in _JOB_FIELDS]
        row[_JOB_FIELDS.index("status")] = str(job.status)
        tracks = []
        for track in job.tracks:
            finished = track.status == TrackStatus.COMPLETED
            tracks.append(
                [
                    track.track_id,
                    track.title,
                    track.disc,
                    track.number,
                    _stable_track_status(track),
                    track.path,
                    track.bytes_total if finished else 0,
                    track.attempts,
                    track.outcome,
                    track.error,
                    track.passes,
                    track.next_pass_at,
                    track.duration,
                    track.quality,
                    track.bit_depth,
                    track.sample_rate,
                ]
            )
        row.append(tracks)
        row.append(job.rank)
        row.append(job.parent)
        row.append(list(job.include) if job.include is not None else None)
        row.append(job.children)
        row.append(job.playlist_path)
        jobs.append(row)
    return {
        "next_seq": state.next_seq,
        "held": state.held,
        "rank_low": state.rank_low,
        "rank_high": state.rank_high,
        "hooks_pending": [[job_id, at] for job_id, at in state.hooks_pending.items()],
        "jobs": jobs,
    }


def _stable_track_status(track: Track) -> str:
    if track.status == TrackStatus.DOWNLOADING:
        return str(TrackStatus.PENDING)
    return str(track.status)


def from_snapshot(data: dict[str, Any]) -> QueueState:
    # Hot at start-up (100,000 jobs in well under a second): positional
    # construction and dict lookups instead of enum calls and per-row dicts.
    # Fields added later are trailing and optional: a snapshot from before issue 9
    # has no passes/next_pass_at, one from before issue 10 no ranks (rank = seq:
    # the order of submission), durations or delivered qualities.
    state = QueueState(
        next_seq=data["next_seq"],
        held=data["held"],
        rank_low=data.get("rank_low", 1),
        rank_high=data.get("rank_high", data["next_seq"] - 1),
        hooks_pending={job_id: at for job_id, at in data.get("hooks_pending", ())},
    )
    jobs = state.jobs
    active_by_key = state.active_by_key
    job_statuses = _JOB_STATUS_BY_NAME
    track_statuses = _TRACK_STATUS_BY_NAME
    completed = TrackStatus.COMPLETED
    job_width = len(_JOB_FIELDS)
    for row in data["jobs"]:
        job = Job(*row[:job_width])
        track_rows: list[list[Any]] = row[job_width]
        job.rank = row[job_width + 1] if len(row) > job_width + 1 else job.seq
        if len(row) > job_width + 2:  # parent and include: since issue 12
            job.parent = row[job_width + 2]
            include = row[job_width + 3]
            job.include = tuple(include) if include is not None else None
        if len(row) > job_width + 4:  # an artist job's children: since issue 12's artists
            job.children = list(row[job_width + 4])
        if len(row) > job_width + 5:  # a playlist's or mix's M3U8 path
            job.playlist_path = row[job_width + 5]
        job.status = status = job_statuses[job.status]
        tracks = job.tracks
        for track_row in track_rows:
            # The row's first six fields, bytes_done (derived), the rest, later defaults.
            later = _LATER_TRACK_DEFAULTS[len(track_row) - _OLDEST_TRACK_WIDTH :]
            values = [*track_row[:6], 0, *track_row[6:], *later]
            track = Track(*values)
            track.status = track_status = track_statuses[track.status]
            if track_status == completed:
                track.bytes_done = track.bytes_total
            tracks.append(track)
        jobs[job.id] = job
        if status in ACTIVE_STATUSES:
            active_by_key[(job.type, job.target_id, job.quality)] = job.id
    return state


# Track rows of the first snapshots had ten fields; these came later, in this order:
# passes, next_pass_at (issue 9); duration, quality, bit_depth, sample_rate (issue 10).
_OLDEST_TRACK_WIDTH = 10
_LATER_TRACK_DEFAULTS: tuple[Any, ...] = (0, None, None, None, None, None)
_JOB_STATUS_BY_NAME = {str(s): s for s in JobStatus}
_TRACK_STATUS_BY_NAME = {str(s): s for s in TrackStatus}
# from_snapshot builds Job and Track positionally: the snapshot's field order
# must be the dataclasses' own (Track's bytes_done is derived, not stored).
assert [f.name for f in fields(Job)][: len(_JOB_FIELDS)] == _JOB_FIELDS
assert [f.name for f in fields(Track)] == [*_TRACK_FIELDS[:6], "bytes_done", *_TRACK_FIELDS[6:]]


def job_outcome(job: Job) -> tuple[JobStatus, dict[str, str] | None]:
    """The terminal status of a job whose tracks have all run, and its error.

    completed: every track completed; failed: none did; partial: some did.
    The error of a partial or failed album is its first track error.
    """
    completed = sum(1 for t in job.tracks if t.status == TrackStatus.COMPLETED)
    first_error = next((t.error for t in job.tracks if t.error), None)
    if job.tracks and completed == len(job.tracks):
        return JobStatus.COMPLETED, None
    if completed == 0:
        return JobStatus.FAILED, first_error
    return JobStatus.PARTIAL, first_error


def artist_outcome(children: list[Job | None]) -> tuple[JobStatus, dict[str, str] | None]:
    """The terminal status of an artist job whose children have all finished, and its error.

    completed: every child completed; failed: none delivered anything (none
    completed or partial); partial otherwise. A cancelled child counts as not
    completed, and so does one removed meanwhile (None). The error is the first
    child error, in the order the discography listed them, naming that child.
    """
    statuses = [child.status if child is not None else None for child in children]
    first_error = next(
        (
            {
                "code": child.error.get("code", ""),
                "message": f"album job {child.id}: {child.error.get('message', '')}",
            }
            for child in children
            if child is not None and child.error and child.status != JobStatus.COMPLETED
        ),
        None,
    )
    if statuses and all(status == JobStatus.COMPLETED for status in statuses):
        return JobStatus.COMPLETED, None
    if not any(status in (JobStatus.COMPLETED, JobStatus.PARTIAL) for status in statuses):
        return JobStatus.FAILED, first_error
    return JobStatus.PARTIAL, first_error
