"""One-line summaries of jobs and tracks for people: the MESSAGE journald shows.

`journalctl -u dlqd` prints only MESSAGE, so the scheduler's job and track
lines carry one of these (as `summary`; `dlqd.logs` makes it the MESSAGE):
which job, what it is (artist – title) and how it went, e.g.
`job 17 completed: Artist – Album (12/12 tracks, 412 MiB in 48 s)`.
Upstream text is shown with control and separator characters escaped and
cut short, so a title can neither forge log lines nor drive a terminal.
Pure: reads jobs and numbers, returns strings; never logs.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence

from dlqd.model import Job, JobStatus, TrackStatus

MAX_TEXT_CHARS = 120  # of one upstream string in a summary
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` with control, format and separator characters escaped (`\\x1b`), cut to `limit`."""
    cut = text[:limit]
    shown = "".join(
        ascii(ch)[1:-1] if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in cut
    )
    return shown + "…" if len(text) > limit else shown


def job_name(job: Job) -> str:
    """`Artist – Title`, or what was asked for (`album 1102`) before the job was resolved.

    An artist job is `Artist – discography` once its discography was read.
    """
    if job.type == "artist" and job.artist:
        return f"{printable(job.artist)} – discography"
    if job.title:
        return (
            f"{printable(job.artist)} – {printable(job.title)}"
            if job.artist
            else printable(job.title)
        )
    return f"{job.type} {job.target_id}"


def job_facts(job: Job, children: Sequence[Job] = ()) -> list[str]:
    """`12/12 tracks`, `412 MiB in 48 s`: what a finished job's summary and notification say.

    An artist job (`children`: its album jobs) says `3 albums: 2 completed, 1 partial`
    and its children's bytes.
    """
    facts = []
    if job.tracks:
        done = sum(1 for t in job.tracks if t.status == TrackStatus.COMPLETED)
        facts.append(f"{done}/{len(job.tracks)} tracks")
    if children:
        facts.append(album_counts(children))
    bytes_done = sum(child.bytes_done for child in children) if children else job.bytes_done
    if bytes_done:
        size = human_bytes(bytes_done)
        if job.started_at is not None and job.finished_at is not None:
            size += f" in {human_seconds(job.finished_at - job.started_at)}"
        facts.append(size)
    return facts


def album_counts(children: Sequence[Job]) -> str:
    """`3 albums: 2 completed, 1 partial`: an artist job's children by status."""
    counts = Counter(child.status for child in children)
    parts = ", ".join(f"{counts[status]} {status}" for status in JobStatus if counts[status])
    return f"{len(children)} album{'s' if len(children) != 1 else ''}: {parts}"


def job_summary(job: Job, children: Sequence[Job] = ()) -> str:
    """`job 17 completed: Artist – Album (12/12 tracks, 412 MiB in 48 s)`, and the error if any."""
    facts = job_facts(job, children)
    line = f"job {job.id} {job.status}: {job_name(job)}"
    if facts:
        line += f" ({', '.join(facts)})"
    if job.error and job.status != JobStatus.CANCELLED:
        line += f"; {error_text(job.error)}"
    return line


def track_summary(
    job: Job, track_id: int, artist: str, title: str, what: str, detail: str = ""
) -> str:
    """`job 17 track 3/12 completed: Artist – Title (41.2 MiB)`; `what` is how it went."""
    numbers = [t.track_id for t in job.tracks]
    place = f"{numbers.index(track_id) + 1}/{len(numbers)}" if track_id in numbers else track_id
    name = f"{printable(artist)} – {printable(title)}" if artist else printable(title)
    line = f"job {job.id} track {place} {what}: {name}"
    return f"{line} ({detail})" if detail else line


def error_text(error: dict[str, str]) -> str:
    return f"{error.get('code', '')}: {printable(error.get('message', ''), 200)}"


def human_bytes(count: float) -> str:
    """412 MiB, 41.2 MiB, 8.0 KiB, 120 B."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            if unit == "B":
                return f"{count:.0f} B"
            return f"{count:.1f} {unit}" if count < 100 else f"{count:.0f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """48 s, 3 min 12 s, 1 h 02 min."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
