"""An artist job's expansion: which album jobs its discography queues, as journal records.

Pure over the queue state: the scheduler reads the discography, asks `plan`
and commits what it returns in one batch (the children's `submit` records,
then `expand`), so no crash can leave an artist half expanded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from dlqd.codes import ErrorCode
from dlqd.model import DEFAULT_INCLUDE, Job
from dlqd.picking import ranks_behind
from dlqd.source import Discography, Release
from dlqd.state import Event, QueueState
from dlqd.summary import printable


@dataclass(frozen=True)
class Expansion:
    """The records to commit together, and how many releases they cover and queue."""

    events: tuple[Event, ...]
    releases: int
    queued: int


def plan(
    state: QueueState,
    artist: Job,
    discography: Discography,
    *,
    at: float,
    max_queue: int,
    max_releases: int,
) -> Expansion | dict[str, str]:
    """One album job per release of the included kinds, or the error that refuses them all.

    An album already active (same album and quality) is not queued again: the
    artist job waits on it by reference. All or nothing: when the new album
    jobs do not all fit under `limits.max_queue`, none is queued (QUEUE_FULL).
    """
    include = artist.include or DEFAULT_INCLUDE
    releases = [release for release in discography.releases if release.kind in include]
    who = f"artist {artist.target_id} ({printable(discography.name)})"
    if not releases:
        listed = _kind_counts(discography.releases)
        return _error(
            ErrorCode.UPSTREAM_NOT_FOUND,
            f"{who} has no release of the kinds {', '.join(include)}"
            + (f"; it lists {listed}" if listed else ""),
        )
    if len(releases) > max_releases:
        return _error(
            ErrorCode.UPSTREAM_BAD_RESPONSE,
            f"{who} lists {len(releases)} releases of the kinds {', '.join(include)}, "
            f"more than limits.max_job_tracks = {max_releases}",
        )
    children: list[str] = []
    new: list[tuple[str, Release]] = []
    next_seq = state.next_seq
    for release in releases:
        twin = state.active_job_for(("album", release.album_id, artist.quality))
        if twin is not None:
            children.append(twin.id)
            continue
        child_id = str(next_seq)
        next_seq += 1
        children.append(child_id)
        new.append((child_id, release))
    # The albums run where the artist job stands, not behind what was queued since.
    ranks = ranks_behind(artist.rank, (job.rank for job in state.jobs.values()), len(new))
    submits = [
        _child_submit(artist, child_id, release, at, rank=rank)
        for (child_id, release), rank in zip(new, ranks, strict=True)
    ]
    room = max_queue - state.active_count
    if len(submits) > room:
        return _error(
            ErrorCode.QUEUE_FULL,
            f"{who} has {len(submits)} albums to queue but the queue has room for "
            f"{max(room, 0)} (limits.max_queue = {max_queue}); none was queued",
        )
    expand: Event = {
        "e": "expand",
        "id": artist.id,
        "name": discography.name,
        "children": children,
        "at": at,
    }
    return Expansion(events=(*submits, expand), releases=len(releases), queued=len(submits))


def _child_submit(artist: Job, child_id: str, release: Release, at: float, rank: float) -> Event:
    """The `submit` of an album job an artist job queues: its quality, priority, place, parent."""
    return {
        "e": "submit",
        "id": child_id,
        "type": "album",
        "target_id": release.album_id,
        "quality": artist.quality,
        "priority": artist.priority,
        "at": at,
        "parent": artist.id,
        "rank": rank,
    }


def _kind_counts(releases: Sequence[Release]) -> str:
    """`2 singles, 1 ep`: what a discography holds, by kind."""
    counts = Counter(release.kind for release in releases)
    return ", ".join(f"{count} {kind}{'s' if count > 1 else ''}" for kind, count in counts.items())


def _error(code: ErrorCode, message: str) -> dict[str, str]:
    return {"code": str(code), "message": message}
