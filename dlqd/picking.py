"""The run order and which track starts next: the scheduler's decisions as pure functions.

Whenever a track slot frees, the next track is the first pending one of the
first runnable job in the run order (priority, then the job's rank — its
submission order unless `move` changed it; a job's tracks in order). No job
hands out its tracks ahead of the others, so a high-priority job submitted
while a long album runs gets the very next free slot. A job still being
resolved holds back only jobs of a lower priority (its tracks are not known
yet, and they would otherwise be passed over); a slow resolve never delays
jobs of its own priority, and a job whose resolve was deferred to a later pass
holds back nothing while it waits. An artist job has no tracks: it is never picked,
and once expanded it holds nothing back (its album jobs are picked like any
other). `moved_ranks` decides where `move` puts a job.
This module never looks at holds or slots — the scheduler asks only when one
is free and nothing holds the queue — and never does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Sequence

from dlqd.model import PRIORITIES, Job, JobStatus, Track, TrackStatus
from dlqd.state import is_expanded

RUNNABLE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})

TrackKey = tuple[str, int]  # (job id, track id)


def next_track(
    jobs: Iterable[Job],
    *,
    resolved: Container[str],
    resolving: Container[str],
    running: Collection[TrackKey],
    now: float,
) -> tuple[Job, Track] | None:
    """The (job, track) to start now, or None when nothing may start.

    `resolved` holds the ids of jobs whose upstream metadata is at hand (a
    track cannot be named without it); `resolving` those of jobs whose resolve
    runs now or is due (an unresolved job not in it waits for a later pass);
    `running` the tracks already running;
    a deferred track (`next_pass_at` after `now`) waits for its later pass.
    """
    best: tuple[Job, Track] | None = None
    best_key: tuple[int, float, int] | None = None
    waiting_rank = len(PRIORITIES)  # the best priority of a job still being resolved
    for job in jobs:
        if job.status not in RUNNABLE_STATUSES or is_expanded(job):
            continue
        if job.id not in resolved:
            if job.id in resolving:
                waiting_rank = min(waiting_rank, PRIORITIES.index(job.priority))
            continue
        key = job.run_key
        if best_key is not None and key >= best_key:
            continue
        track = first_startable_track(job, running=running, now=now)
        if track is not None:
            best, best_key = (job, track), key
    if best_key is not None and best_key[0] > waiting_rank:
        return None
    return best


def resolve_order(jobs: Iterable[Job]) -> list[Job]:
    """Runnable jobs in the order they are resolved: the run order."""
    runnable = [job for job in jobs if job.status in RUNNABLE_STATUSES]
    return sorted(runnable, key=lambda job: job.run_key)


def first_startable_track(job: Job, *, running: Collection[TrackKey], now: float) -> Track | None:
    for track in job.tracks:
        if (
            track.status == TrackStatus.PENDING
            and (job.id, track.track_id) not in running
            and (track.next_pass_at is None or track.next_pass_at <= now)
        ):
            return track
    return None


def next_pass_due(jobs: Iterable[Job]) -> float | None:
    """The earliest time a deferred track of a runnable job becomes startable."""
    due = [
        track.next_pass_at
        for job in jobs
        if job.status in RUNNABLE_STATUSES
        for track in job.tracks
        if track.status == TrackStatus.PENDING and track.next_pass_at is not None
    ]
    return min(due, default=None)


def is_finished(job: Job) -> bool:
    """Every track has an outcome: nothing pending, nothing downloading."""
    return all(
        track.status not in (TrackStatus.PENDING, TrackStatus.DOWNLOADING) for track in job.tracks
    )


def ranks_behind(lead: float, taken: Iterable[float], count: int) -> list[float]:
    """`count` ranks, in order, between `lead` and the next of the `taken` ranks above it.

    How an artist job's album jobs stand right behind it: fractions of the gap,
    so no rank another job holds is reused and `move`'s swaps stay exact.
    """
    after = min((rank for rank in taken if rank > lead), default=lead + 1)
    step = (after - lead) / (count + 1)
    return [lead + place * step for place in range(1, count + 1)]


def moved_ranks(
    run_order: Sequence[Job], job: Job, to: str, *, rank_low: int, rank_high: int
) -> dict[str, float]:
    """The ranks `move` gives, by job id; empty when the job already stands there.

    `run_order` is the active jobs in run order; a job moves among those of its
    own priority. `top`/`bottom` take a rank beyond every rank given so far
    (`rank_low`, `rank_high`); `up`/`down` swap ranks with the neighbour.
    """
    peers = [other.id for other in run_order if other.priority == job.priority]
    index = peers.index(job.id)
    if to == "top":
        return {job.id: rank_low - 1} if index > 0 else {}
    if to == "bottom":
        return {job.id: rank_high + 1} if index < len(peers) - 1 else {}
    neighbour_index = index + {"up": -1, "down": 1}[to]
    if not 0 <= neighbour_index < len(peers):
        return {}
    neighbour = next(other for other in run_order if other.id == peers[neighbour_index])
    return {job.id: neighbour.rank, neighbour.id: job.rank}
