"""Jobs, tracks and their statuses: plain data that the state machine mutates.

Nothing here does I/O or knows about the journal; `to_wire` renders the job
object of DESIGN §5 for the protocol and `--json`. Times are stored as float
seconds since the epoch and rendered as RFC 3339 UTC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from dlqd.rates import BYTES_PER_SECOND, estimated_bytes


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
JOB_TYPES = ("track", "album", "playlist", "mix", "artist")
STRING_TARGET_TYPES = frozenset({"playlist", "mix"})  # target: a UUID / mix id string, not an int
# Jobs whose tracks come from many albums and that end by writing an M3U8 playlist file.
LISTING_TYPES = frozenset({"playlist", "mix"})
RELEASE_KINDS = ("album", "ep", "single")  # what an artist job may `include`
DEFAULT_INCLUDE = ("album", "ep")
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
    duration: int | None = None  # seconds, from the upstream's listing; sizes unstarted tracks
    quality: str | None = None  # delivered (the playback info's audioQuality), once completed
    bit_depth: int | None = None
    sample_rate: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "title": self.title,
            "disc": self.disc,
            "number": self.number,
            "duration_s": self.duration,
            "status": str(self.status),
            "path": self.path,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "attempts": self.attempts,
            "outcome": self.outcome,
            "quality": self.quality,
            "bit_depth": self.bit_depth,
            "sample_rate": self.sample_rate,
            "error": self.error,
            "passes": self.passes,
            "next_pass_at": rfc3339(self.next_pass_at),
        }


@dataclass(slots=True)
class Job:
    """A queued track, album, playlist, mix or artist. `seq` orders jobs oldest first.

    `seq` never repeats. `rank` is the job's place in the run order among jobs
    of its priority (lower runs first): new jobs take the next rank up, `move`
    changes it. `parent` is the artist job an album job was queued for;
    `include` the release kinds an artist job queues (None for other types);
    `children` the album jobs an artist job waits on once expanded (those it
    queued, and albums already active that it took by reference).
    `playlist_path` the M3U8 file a playlist or mix job's last finish wrote.
    """

    id: str
    seq: int
    type: str
    target_id: int | str  # str for playlist and mix jobs
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
    rank: float = 0  # an int, except for an artist's album jobs: between its rank and the next
    parent: str | None = None
    include: tuple[str, ...] | None = None
    children: list[str] = field(default_factory=list)
    playlist_path: str | None = None  # a playlist's or mix's M3U8, library-relative, once written

    @property
    def dedupe_key(self) -> tuple[str, int | str, str]:
        return (self.type, self.target_id, self.quality)

    @property
    def target_number(self) -> int:
        """The integer target of a track, album or artist job (checked at submit)."""
        if not isinstance(self.target_id, int):
            raise TypeError(f"a {self.type} job's target is not a number: {self.target_id!r}")
        return self.target_id

    @property
    def run_key(self) -> tuple[int, float, int]:
        """Where the job stands in the run order: priority, then rank, then age."""
        return (PRIORITIES.index(self.priority), self.rank, self.seq)

    @property
    def attempts(self) -> int:
        return max((t.attempts for t in self.tracks), default=0)

    @property
    def bytes_done(self) -> int:
        """Completed tracks whole, downloading ones so far; failed and cancelled ones not at all."""
        return sum(
            t.bytes_done
            for t in self.tracks
            if t.status in (TrackStatus.COMPLETED, TrackStatus.DOWNLOADING)
        )

    def sizes(self) -> JobSizes:
        """Each track's size (real once known, else estimated from its duration) and the sums."""
        rate = self._bytes_per_second()
        sizes: list[int | None] = []
        estimated = False
        for track in self.tracks:
            # A completed track of 0 bytes was skipped without a download: nothing to fetch.
            if track.bytes_total or track.status == TrackStatus.COMPLETED:
                sizes.append(track.bytes_total)
                continue
            guess = estimated_bytes(track.duration, rate)
            if guess is not None:
                guess = max(guess, track.bytes_done)
                estimated = True
            sizes.append(guess)
        return JobSizes(tuple(sizes), estimated)

    def _bytes_per_second(self) -> float:
        """Bytes per second of audio: as this job's completed tracks came, else by quality."""
        done_bytes = done_seconds = 0
        for track in self.tracks:
            if track.status == TrackStatus.COMPLETED and track.duration and track.bytes_total:
                done_bytes += track.bytes_total
                done_seconds += track.duration
        if done_seconds:
            return done_bytes / done_seconds
        return BYTES_PER_SECOND.get(self.quality, BYTES_PER_SECOND["LOSSLESS"])

    def progress(self, sizes: JobSizes | None = None) -> float:
        """Done bytes over the job's size when every track has one, else tracks counted one each.

        Only completed tracks count as done: failed and cancelled ones add nothing.
        """
        if not self.tracks:
            return 1.0 if self.status == JobStatus.COMPLETED else 0.0
        sizes = sizes or self.sizes()
        total = sizes.total
        if sizes.complete and total:
            return round(min(1.0, self.bytes_done / total), 4)
        done = 0.0
        for track in self.tracks:
            if track.status == TrackStatus.COMPLETED:
                done += 1.0
            elif track.status == TrackStatus.DOWNLOADING and track.bytes_total:
                done += min(1.0, track.bytes_done / track.bytes_total)
        return round(done / len(self.tracks), 4)

    def eta_s(self, speed_bps: int, sizes: JobSizes | None = None) -> int | None:
        """Seconds until the pending and downloading tracks are fetched at `speed_bps`."""
        if self.status != JobStatus.PROCESSING or speed_bps <= 0:
            return None
        remaining = self.remaining_bytes(sizes)
        return None if remaining is None else math.ceil(remaining / speed_bps)

    def remaining_bytes(self, sizes: JobSizes | None = None) -> int | None:
        """Bytes left to fetch for pending and downloading tracks; None when a size is unknown."""
        sizes = sizes or self.sizes()
        remaining = 0
        for track, size in zip(self.tracks, sizes.per_track, strict=True):
            if track.status in (TrackStatus.PENDING, TrackStatus.DOWNLOADING):
                if size is None:
                    return None
                remaining += max(0, size - track.bytes_done)
        return remaining

    def track(self, track_id: int) -> Track | None:
        for track in self.tracks:
            if track.track_id == track_id:
                return track
        return None

    def to_wire(
        self,
        *,
        speed_bps: int = 0,
        position: int | None = None,
        children: Sequence[Job] = (),
    ) -> dict[str, Any]:
        """The job object; `speed_bps`, `position` and an artist job's `children` the caller knows.

        An artist job has no tracks of its own: its progress, bytes and ETA are
        its children's summed (`speed_bps` is theirs too, summed by the caller),
        and `children_status` counts its children by status.
        """
        running = self.status == JobStatus.PROCESSING
        if self.type == "artist":
            progress = _summed_progress(self, children, speed_bps)
        else:
            sizes = self.sizes()
            progress = _Progress(
                attempts=self.attempts,
                progress=self.progress(sizes),
                bytes_done=self.bytes_done,
                bytes_total=sizes.total,
                estimated=sizes.estimated,
                eta_s=self.eta_s(speed_bps, sizes),
            )
        wire: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "target_id": self.target_id,
            "quality": self.quality,
            "priority": self.priority,
            "status": str(self.status),
            "position": position,
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "attempts": progress.attempts,
            "progress": progress.progress,
            "bytes_done": progress.bytes_done,
            "bytes_total": progress.bytes_total,
            "bytes_total_estimated": progress.estimated,
            "speed_bps": speed_bps if running else 0,
            "eta_s": progress.eta_s,
            "error": self.error,
            "title": self.title,
            "artist": self.artist,
            "parent": self.parent,
            "include": list(self.include) if self.include is not None else None,
            "children": list(self.children),
            "playlist_path": self.playlist_path,
            "tracks": [t.to_wire() for t in self.tracks],
        }
        if self.type == "artist":
            counts: dict[str, int] = {}
            for child in children:
                counts[str(child.status)] = counts.get(str(child.status), 0) + 1
            wire["children_status"] = counts
        return wire


@dataclass(frozen=True, slots=True)
class _Progress:
    """The progress fields of a job object."""

    attempts: int
    progress: float
    bytes_done: int
    bytes_total: int
    estimated: bool
    eta_s: int | None


def _summed_progress(job: Job, children: Sequence[Job], speed_bps: int) -> _Progress:
    """An artist job's progress: its children's bytes summed, as one album's tracks are."""
    all_sizes = [child.sizes() for child in children]
    total = sum(sizes.total for sizes in all_sizes)
    done = sum(child.bytes_done for child in children)
    if children and total and all(sizes.complete for sizes in all_sizes):
        progress = round(min(1.0, done / total), 4)
    elif children:
        shares = (child.progress(sizes) for child, sizes in zip(children, all_sizes, strict=True))
        progress = round(sum(shares) / len(children), 4)
    else:
        progress = 1.0 if job.status == JobStatus.COMPLETED else 0.0
    eta: int | None = None
    if job.status == JobStatus.PROCESSING and speed_bps > 0:
        left = [
            child.remaining_bytes(sizes)
            for child, sizes in zip(children, all_sizes, strict=True)
            if child.status in ACTIVE_STATUSES
        ]
        known = [bytes_left for bytes_left in left if bytes_left is not None]
        if len(known) == len(left):
            eta = math.ceil(sum(known) / speed_bps)
    return _Progress(
        attempts=max((child.attempts for child in children), default=0),
        progress=progress,
        bytes_done=done,
        bytes_total=total,
        estimated=any(sizes.estimated for sizes in all_sizes),
        eta_s=eta,
    )


@dataclass(frozen=True, slots=True)
class JobSizes:
    """A job's track sizes in track order (None: unknown) and whether any is an estimate."""

    per_track: tuple[int | None, ...]
    estimated: bool

    @property
    def total(self) -> int:
        return sum(size for size in self.per_track if size is not None)

    @property
    def complete(self) -> bool:
        """Every track has a size, known or estimated."""
        return None not in self.per_track


def rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
