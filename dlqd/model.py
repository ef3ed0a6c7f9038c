"""Jobs, tracks and their statuses: plain data that the state machine mutates.

Nothing here does I/O or knows about the journal; `to_wire` renders the job
object of DESIGN §5 for the protocol and `--json`. Times are stored as float
seconds since the epoch and rendered as RFC 3339 UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    PAUSED = "paused"
    PROCESSING = "processing"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TrackStatus(StrEnum):
    PENDING = "pending"
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.PROCESSING})
FINISHED_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED}
)
RETRYABLE_STATUSES = frozenset({JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED})
QUALITIES = ("LOW", "HIGH", "LOSSLESS", "HI_RES_LOSSLESS")
PRIORITIES = ("high", "normal", "low")  # start order
JOB_TYPES = ("track", "album")
MOVES = ("top", "bottom", "up", "down")  # `move`: where a job goes in the run order
LIST_ORDERS = ("id", "run")  # `list`: by job id (paged), or the queue in run order


def canonical_choice(text: str, choices: Iterable[str]) -> str | None:
    """The one of `choices` that `text` names in any case ("lossless" → "LOSSLESS"), else None.

    Every enum a person types (type, quality, priority, status) is read this
    way, by dlqd and dlqctl alike, and stored as its canonical spelling.
    """
    folded = text.casefold()
    return next((choice for choice in choices if choice.casefold() == folded), None)


@dataclass(slots=True)  # slots: 100,000 jobs load faster and smaller at start-up
class Track:
    """One track of a job. `bytes_done`/`bytes_total` are live progress, not journaled."""

    track_id: int
    title: str = ""
    disc: int = 1
    number: int = 1
    status: TrackStatus = TrackStatus.PENDING
    path: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    attempts: int = 0
    outcome: str | None = None
    error: dict[str, str] | None = None
    passes: int = 0  # passes that ended in a transient failure (worker.max_passes)
    next_pass_at: float | None = None  # a deferred track waits until then

    def to_wire(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "title": self.title,
            "disc": self.disc,
            "number": self.number,
            "status": str(self.status),
            "path": self.path,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "attempts": self.attempts,
            "outcome": self.outcome,
            "error": self.error,
            "passes": self.passes,
            "next_pass_at": rfc3339(self.next_pass_at),
        }


@dataclass(slots=True)
class Job:
    """A queued track or album. `seq` orders jobs oldest first and never repeats."""

    id: str
    seq: int
    type: str
    target_id: int
    quality: str
    priority: str
    created_at: float
    status: JobStatus = JobStatus.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str] | None = None
    title: str = ""
    artist: str = ""
    tracks: list[Track] = field(default_factory=list)

    @property
    def dedupe_key(self) -> tuple[str, int, str]:
        return (self.type, self.target_id, self.quality)

    @property
    def attempts(self) -> int:
        return max((t.attempts for t in self.tracks), default=0)

    @property
    def bytes_done(self) -> int:
        return sum(t.bytes_done for t in self.tracks)

    @property
    def bytes_total(self) -> int:
        return sum(t.bytes_total for t in self.tracks)

    @property
    def progress(self) -> float:
        """Finished tracks count whole; a downloading track by its byte fraction."""
        if not self.tracks:
            return 1.0 if self.status == JobStatus.COMPLETED else 0.0
        done = 0.0
        for track in self.tracks:
            if track.status in (TrackStatus.COMPLETED, TrackStatus.FAILED, TrackStatus.CANCELLED):
                done += 1.0
            elif track.bytes_total:
                done += min(1.0, track.bytes_done / track.bytes_total)
        return round(done / len(self.tracks), 4)

    def track(self, track_id: int) -> Track | None:
        for track in self.tracks:
            if track.track_id == track_id:
                return track
        return None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "target_id": self.target_id,
            "quality": self.quality,
            "priority": self.priority,
            "status": str(self.status),
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "attempts": self.attempts,
            "progress": self.progress,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "error": self.error,
            "title": self.title,
            "artist": self.artist,
            "tracks": [t.to_wire() for t in self.tracks],
        }


def rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
