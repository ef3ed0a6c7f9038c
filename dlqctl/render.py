"""The text screens of dlqctl: the job table, one job, stats, health.

Owns what each screen says and in which order. Inputs are the daemon's
answers already passed through `text.printable_doc`; fields a daemon does
not send (an older one) show as `-`. Never: talks to the daemon, or writes
to the terminal itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlqctl import text
from dlqd.model import LISTING_TYPES

BAR_CELLS = 10
MIN_TITLE_CELLS = 20  # below this the bar is dropped to leave the title room
JOB_HEADERS = ("ID", "STATUS", "PROGRESS", "TRACKS", "SPEED", "ETA", "QUALITY", "ARTIST – TITLE")
CHILD_HEADERS = ("ID", "STATUS", "PROGRESS", "TRACKS", "TARGET", "ARTIST – TITLE")
SHORT_QUALITY = {"HI_RES_LOSSLESS": "HI_RES"}
STATUSES = ("queued", "paused", "processing", "completed", "partial", "failed", "cancelled")
RUNNING = ("processing",)


# --- one job's facts ------------------------------------------------------------


def label(job: dict[str, Any]) -> str:
    """`Artist – Title`, or `album 1102` until the daemon has read the title.

    An artist job reads `Artist – discography (album, ep)`.
    """
    if job.get("type") == "artist" and job.get("artist"):
        kinds = ", ".join(job.get("include") or [])
        return f"{job['artist']} – discography" + (f" ({kinds})" if kinds else "")
    title = job.get("title") or f"{job.get('type', 'job')} {job.get('target_id', '?')}"
    return f"{job['artist']} – {title}" if job.get("artist") else str(title)


def children_cell(job: dict[str, Any]) -> str:
    """`3 albums: 2 completed, 1 processing` from an artist job's `children_status`."""
    counts = job.get("children_status") or {}
    total = sum(counts.values())
    parts = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
    return f"{total} album{'s' if total != 1 else ''}" + (f": {parts}" if parts else "")


def tracks_done(job: dict[str, Any]) -> str:
    """`n/m` finished tracks; `-` while an album's track list is unknown."""
    tracks = job.get("tracks") or []
    if job.get("type") == "artist" and job.get("children_status"):
        counts = job["children_status"]
        return f"{counts.get('completed', 0)}/{sum(counts.values())} albums"
    if not tracks:
        return "-"
    done = sum(1 for track in tracks if track.get("status") == "completed")
    return f"{done}/{len(tracks)}"


def count_text(job: dict[str, Any]) -> str:
    """`5/12 tracks`, an artist job's `1/3 albums`, or `-` while the tracks are unknown."""
    done = tracks_done(job)
    return done if done == "-" or done.endswith(" albums") else f"{done} tracks"


def progress_cell(job: dict[str, Any], bar_cells: int = BAR_CELLS) -> str:
    fraction = float(job.get("progress") or 0.0)
    if bar_cells <= 0:
        return text.percent(fraction)
    return f"{text.bar(fraction, bar_cells)} {text.percent(fraction)}"


def speed_cell(job: dict[str, Any]) -> str:
    return text.rate(job.get("speed_bps")) if job.get("status") in RUNNING else "-"


def eta_cell(job: dict[str, Any]) -> str:
    if job.get("status") not in ("queued", "processing"):
        return "-"
    return text.duration(job.get("eta_s"))


def quality_label(job: dict[str, Any]) -> str:
    """What was delivered (`LOSSLESS 16/44.1`); what was asked until a track is done."""
    delivered = {
        (t.get("quality"), t.get("bit_depth"), t.get("sample_rate"))
        for t in job.get("tracks") or []
        if t.get("status") == "completed" and t.get("quality")
    }
    if not delivered:
        return SHORT_QUALITY.get(job.get("quality", ""), str(job.get("quality", "-")))
    if len({quality for quality, _, _ in delivered}) > 1:
        return "mixed"
    quality, bit_depth, sample_rate = next(iter(delivered))
    name = SHORT_QUALITY.get(quality, str(quality))
    if len(delivered) == 1 and bit_depth and sample_rate:
        return f"{name} {bit_depth}/{_khz(sample_rate)}"
    return name


def _khz(sample_rate: Any) -> str:
    return f"{sample_rate / 1000:g}" if isinstance(sample_rate, int | float) else str(sample_rate)


def job_row(job: dict[str, Any], bar_cells: int = BAR_CELLS, child: bool = False) -> list[str]:
    """One `ls` row; a `child` (an album job under its artist job, just above) is indented."""
    return [
        str(job.get("id", "?")),
        str(job.get("status", "?")),
        progress_cell(job, bar_cells),
        tracks_done(job),
        speed_cell(job),
        eta_cell(job),
        quality_label(job),
        f"  └ {label(job)}" if child else label(job),
    ]


# --- screens --------------------------------------------------------------------


def job_table(jobs: Sequence[dict[str, Any]], width: int) -> list[str]:
    """The `ls` table fitted to `width` cells; the bar goes first when room is short."""
    return placed_job_table(with_children_under_parents(jobs), width)


def placed_job_table(placed: Sequence[tuple[dict[str, Any], bool]], width: int) -> list[str]:
    """`job_table` of jobs already in their rows' order, each with whether it sits under its
    parent (`with_children_under_parents`): one row per entry, under one header."""
    if not placed:
        return []
    rows = [job_row(job, child=child) for job, child in placed]
    if width - _fixed_cells(rows) < MIN_TITLE_CELLS:
        rows = [job_row(job, bar_cells=0, child=child) for job, child in placed]
    return text.columns(JOB_HEADERS, rows, stretch=len(JOB_HEADERS) - 1, width=width)


def with_children_under_parents(
    jobs: Sequence[dict[str, Any]],
) -> list[tuple[dict[str, Any], bool]]:
    """The jobs in their order, except that an artist job's listed children follow it.

    Each with whether it sits under its parent. A child whose artist job is not
    listed (filtered out, or removed) keeps its own place.
    """
    by_id = {job.get("id"): job for job in jobs}
    under = {
        child_id
        for job in jobs
        if job.get("type") == "artist"
        for child_id in job.get("children") or []
        if child_id in by_id
    }
    placed: list[tuple[dict[str, Any], bool]] = []
    for job in jobs:
        if job.get("id") in under:
            continue
        placed.append((job, False))
        if job.get("type") == "artist":
            placed.extend(
                (by_id[child_id], True)
                for child_id in job.get("children") or []
                if child_id in by_id
            )
    return placed


def _fixed_cells(rows: Sequence[Sequence[str]]) -> int:
    """Cells every column but the title takes, with the gaps between columns."""
    fixed = zip(JOB_HEADERS[:-1], *(row[:-1] for row in rows), strict=True)
    return sum(max(text.cell_width(cell) for cell in column) for column in fixed) + 2 * (
        len(JOB_HEADERS) - 1
    )


def render_job(job: dict[str, Any], children: Sequence[dict[str, Any]] = ()) -> str:
    """`show`: the job, then its tracks, or an artist job's album jobs (`children`)."""
    speed = f"  {text.rate(job.get('speed_bps'))}" if job.get("status") in RUNNING else ""
    eta = f"  ETA {eta_cell(job)}" if eta_cell(job) != "-" else ""
    estimated = " (estimated)" if job.get("bytes_total_estimated") else ""
    lines = [
        f"job {job['id']}: {job['type']} {job['target_id']} ({job['quality']}, "
        f"{job.get('priority', 'normal')} priority)",
        f"  status:   {job['status']}  {progress_cell(job)}  {count_text(job)}{speed}{eta}",
        f"  bytes:    {text.size(job['bytes_done'])} of {text.size(job['bytes_total'])}"
        f"{estimated}  attempts {job['attempts']}  delivered {quality_label(job)}",
        f"  title:    {job['title'] or '-'}",
        f"  artist:   {job['artist'] or '-'}",
        f"  created:  {job['created_at']}  started: {job['started_at'] or '-'}  "
        f"finished: {job['finished_at'] or '-'}",
    ]
    if job.get("parent"):
        lines.append(f"  parent:   artist job {job['parent']}")
    if job.get("playlist_path"):
        lines.append(f"  playlist: {job['playlist_path']}")
    if job.get("type") == "artist":
        kinds = ", ".join(job.get("include") or [])
        lines.append(f"  albums:   {children_cell(job)}  (include {kinds})")
    if job["error"]:
        lines.append(f"  error:    {job['error']['code']}: {job['error']['message']}")
    if children:
        rows = [
            [
                str(child["id"]),
                str(child["status"]),
                progress_cell(child),
                tracks_done(child),
                f"{child['type']} {child['target_id']}",
                label(child),
            ]
            for child in children
        ]
        lines.append("")
        lines.extend(text.columns(CHILD_HEADERS, rows, stretch=None, width=10**6))
    if job["tracks"]:
        rows = []
        # A playlist's or mix's tracks come from many albums: their place is the listing's.
        listed = job["type"] in LISTING_TYPES
        for position, t in enumerate(job["tracks"], start=1):
            detail = t["path"] or (
                f"{t['error']['code']}: {t['error']['message']}" if t["error"] else ""
            )
            rows.append(
                [
                    str(position) if listed else f"{t['disc']}-{t['number']:02d}",
                    t["status"],
                    t["outcome"] or "",
                    text.size(t["bytes_done"]),
                    str(t["attempts"]),
                    _track_quality(t),
                    t["title"] or str(t["track_id"]),
                    detail,
                ]
            )
        headers = ("#", "STATUS", "OUTCOME", "BYTES", "TRIES", "QUALITY", "TITLE", "PATH")
        lines.append("")
        lines.extend(text.columns(headers, rows, stretch=None, width=10**6))
    return "\n".join(lines)


def _track_quality(track: dict[str, Any]) -> str:
    quality = track.get("quality")
    if not quality:
        return "-"
    name = SHORT_QUALITY.get(quality, str(quality))
    if track.get("bit_depth") and track.get("sample_rate"):
        return f"{name} {track['bit_depth']}/{_khz(track['sample_rate'])}"
    return name


def hold_lines(holds: Sequence[dict[str, Any]], now: float) -> list[str]:
    """`held: upstream_unavailable for 2:03 (until 12 s) — detail`, one line per hold."""
    lines = []
    for hold in holds:
        since = hold.get("since")
        held_for = text.duration(now - since) if isinstance(since, int | float) else "-"
        until = hold.get("until")
        left = f", {text.duration(until - now)} left" if isinstance(until, int | float) else ""
        detail = f" — {hold['detail']}" if hold.get("detail") else ""
        lines.append(f"held: {hold.get('reason', '?')} for {held_for}{left}{detail}")
    return lines


def worker_state(running: bool, holds: list[dict[str, Any]]) -> str:
    """`running`, or why not and what ends it: only the user's hold needs `dlqctl resume`."""
    if running:
        return "running"
    reasons = [str(hold.get("reason", "?")) for hold in holds]
    if not reasons:
        return "stopping (draining)"
    faults = [reason for reason in reasons if reason != "user"]
    if not faults:
        hint = "dlqctl resume to continue"
    elif "user" in reasons:
        hint = "dlqctl resume; the faults end by themselves"
    else:
        hint = "resumes by itself"
    return f"held ({', '.join(reasons)}: {hint})"


def render_stats(stats: dict[str, Any], now: float) -> str:
    queue, worker = stats["queue"], stats["worker"]
    counts = ", ".join(f"{queue[s]} {s}" for s in STATUSES if queue.get(s))
    state = worker_state(worker["running"], stats.get("holds") or [])
    journal = stats.get("journal", {})
    lines = [
        f"jobs:     {queue['total']} total" + (f" ({counts})" if counts else ""),
        f"worker:   {state}, {worker['active_tracks']}/{worker['max_concurrent']} "
        f"track slots busy, {text.rate(stats.get('speed_bps'))}",
        f"journal:  {text.size(journal.get('journal_bytes', 0))} in segment "
        f"{journal.get('segment', '?')}, snapshot {text.size(journal.get('snapshot_bytes', 0))}",
    ]
    lines.extend(hold_lines(stats.get("holds") or [], now))
    return "\n".join(lines)


def render_health(health: dict[str, Any]) -> str:
    head = "healthy" if health["ok"] else "UNHEALTHY: " + ", ".join(health.get("problems", []))
    lines = [f"{head} (dlqd {health['version']}, up {health['uptime_s']:.0f} s)"]
    lines.extend(f"  note: {note}" for note in health.get("notes", []))
    for name, check in sorted(health.get("checks", {}).items()):
        flat = {k: v for k, v in check.items() if k != "ok" and not isinstance(v, dict)}
        details = ", ".join(f"{k}={v}" for k, v in flat.items())
        lines.append(f"  {'ok ' if check.get('ok', True) else 'BAD'} {name}: {details}".rstrip())
        for group in (v for v in check.values() if isinstance(v, dict)):
            for item, facts in group.items():  # e.g. one line per upstream base
                shown = facts.items() if isinstance(facts, dict) else [("value", facts)]
                lines.append(f"      {item}: " + ", ".join(f"{k}={v}" for k, v in shown))
    return "\n".join(lines)
