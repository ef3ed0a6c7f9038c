"""`dlqctl watch [JOB]`: follow the queue, or one job, until it is done — across daemon restarts.

Owns the watch loop: one connection carries dlqd's event stream, a second
asks for the facts the events do not carry (speed, ETA, n/m, holds). Three
ways to show them: on a terminal a live table redrawn in place (`Screen`),
otherwise one plain line per event (`EventLines`), or with `--json` the
events themselves (`JsonEvents`). When dlqd goes away the loop says so and
reconnects with backoff (`--no-reconnect`: exit 3).
An artist job has no tracks of its own: following one follows its album
jobs (`children`) too, and their progress moves the artist job's line.
Exit: 0 when the queue is idle (nothing queued or processing) or the
followed job completed; 1 when the followed job ended otherwise or is gone.
Never: parses the command line or handles Ctrl-C (`__main__` does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TextIO

from dlqctl import render, text
from dlqctl.client import Client, NotPermitted, Refused, Unreachable
from dlqctl.commands import artist_children, queue_in_run_order

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 3
FINISHED = ("completed", "partial", "failed", "cancelled")
TICK_S = 1.0  # the live table is refreshed at least this often, events or not
REDRAW_MIN_S = 0.25  # ...and at most this often
PROGRESS_LINE_S = 5.0  # plain lines: at most one progress line per job this often
LAST_EVENTS_S = 1.0  # the watch is over: how long the ends on their way may still take
RECENT_FINISHED = 5  # finished jobs shown under the live table
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # waits between reconnection attempts; the last repeats
QUEUE_EVENTS = ("finish", "cancel", "pause", "remove", "hold", "release")  # may end the watch
ACTIVE = ("processing", "queued", "paused")
EVENT_VERBS = {
    "submit": "submitted",
    "resolve": "resolved",
    "start": "started",
    "expand": "expanded",
    "finish": "finished",
    "cancel": "cancelled",
    "pause": "paused",
    "resume": "resumed",
    "requeue": "requeued",
    "retry": "retried",
    "remove": "removed",
    "move": "moved",
    "priority": "given a new priority",
}


@dataclass
class Snapshot:
    """What the daemon said at one moment: enough to draw the table and decide to stop."""

    stats: dict[str, Any]
    queue: list[dict[str, Any]] = field(default_factory=list)  # active jobs, run order
    recent: list[dict[str, Any]] = field(default_factory=list)  # finished, newest last
    job: dict[str, Any] | None = None  # the followed job
    children: list[dict[str, Any]] = field(default_factory=list)  # its album jobs (artist job)

    @property
    def idle(self) -> bool:
        counts = self.stats.get("queue", {})
        return not counts.get("queued") and not counts.get("processing")


class View(Protocol):
    wants_jobs: bool  # does `event` need the job the event is about?
    wants_table: bool  # does `show` need the queue and the recent jobs?

    def show(self, snapshot: Snapshot) -> None: ...
    def event(self, event: dict[str, Any], job: dict[str, Any] | None) -> None: ...
    def finished(self, snapshot: Snapshot) -> None: ...
    def lost(self, reason: str, retry_in: float) -> None: ...
    def back(self) -> None: ...
    def close(self) -> None: ...


class Watch:
    """One `dlqctl watch` run: connections, snapshots, the exit decision."""

    def __init__(self, args: argparse.Namespace, connect: Callable[[], Client], view: View):
        self.job_id: str | None = args.job
        self.reconnect = not args.no_reconnect
        self.connect = connect
        self.view = view
        self.last_progress_line: dict[str, float] = {}
        self.connected_once = False
        self.failures = 0  # reconnection attempts since the daemon went away
        self.unfinished: set[str] = set()  # active jobs whose end the view has not shown
        self.children: frozenset[str] = frozenset()  # the followed artist job's album jobs

    def run(self) -> int:
        while True:
            try:
                return self._session()
            except Unreachable as exc:
                if not self.connected_once or not self.reconnect or isinstance(exc, NotPermitted):
                    raise
                wait = BACKOFF_S[min(self.failures, len(BACKOFF_S) - 1)]
                self.failures += 1
                self.view.lost(str(exc), wait)
                time.sleep(wait)

    def _session(self) -> int:
        """Watch over one pair of connections: an exit code, or Unreachable when dlqd goes."""
        with self.connect() as stream, self.connect() as requests:
            stream.call("watch")  # subscribe before the first snapshot: no event falls between
            reconnected, self.connected_once, self.failures = self.connected_once, True, 0
            self.view.back()
            if self.job_id is None:
                if reconnected:
                    self._tell_unseen_ends(requests, set(self.unfinished))
                self.unfinished.update(job["id"] for job in requests.list_all(list(ACTIVE)))
            snapshot = self._snapshot(requests)
            self.view.show(snapshot)
            refreshed = time.monotonic()
            stale = ended_here = False  # did the end come while this session watched?
            while (done := self._outcome(snapshot)) is None:
                ended_here = True
                event = stream.next_event(TICK_S)
                now = time.monotonic()
                if event is not None and self._concerns_us(event):
                    stale = True
                    self._show_event(requests, event, now)
                    if event.get("event") in QUEUE_EVENTS:
                        refreshed = 0.0  # ask now whether the watch is over
                if now - refreshed >= (REDRAW_MIN_S if stale else TICK_S):
                    snapshot = self._snapshot(requests)
                    refreshed, stale = now, False
                    self.view.show(snapshot)
            if ended_here:  # else its events came before the subscription, or were lost
                self._take_last_events(stream, requests)
            self.view.finished(snapshot)
            return done

    def _show_event(self, client: Client, event: dict[str, Any], now: float) -> None:
        self._note(event)
        job = self._event_job(client, event, now)
        self.view.event(event, job)
        self._tell_artist_standing(client, event, job)

    def _take_last_events(self, stream: Client, client: Client) -> None:
        """The watch is over: show the ends the stream has not told yet, before the summary.

        A snapshot can tell the end before the stream does. Events come in journal
        order, so the followed job's own `finish` comes after its albums'
        (an artist job); following the queue, each job that was active and is
        not paused now has ended. An end whose event does not come within
        LAST_EVENTS_S still gets its line (the queue), or the summary tells it.
        """
        if self.job_id is not None:
            awaited = self.unfinished & {self.job_id}
        else:
            held = client.call("list", {"order": "run", "status": ["paused"]})["jobs"]
            awaited = self.unfinished - {job["id"] for job in held}
        deadline = time.monotonic() + LAST_EVENTS_S
        while awaited and (left := deadline - time.monotonic()) > 0:
            try:
                event = stream.next_event(left)
            except Unreachable:
                return  # the outcome is known: the summary says it
            if event is None:
                break
            if self._concerns_us(event):
                self._show_event(client, event, time.monotonic())
                awaited &= self.unfinished
        if self.job_id is None:
            self._tell_unseen_ends(client, awaited)

    def _note(self, event: dict[str, Any]) -> None:
        """Keep `unfinished` current: the jobs whose end the view has not shown yet."""
        job_id, kind = event.get("job_id"), event.get("event")
        if isinstance(job_id, str):
            if kind in ("finish", "cancel", "remove"):  # a cancelled job has no `finish`
                self.unfinished.discard(job_id)
            elif kind != "hook_done":  # the hook of a job that finished
                self.unfinished.add(job_id)

    def _tell_unseen_ends(self, client: Client, job_ids: set[str]) -> None:
        """A `finish` for each of `job_ids` that ended unseen (while dlqd was away, say)."""
        for job_id in sorted(job_ids, key=lambda text: (len(text), text)):
            try:
                job = client.call("get", {"id": job_id})["job"]
            except Refused:
                self.unfinished.discard(job_id)  # removed meanwhile
                continue
            if job["status"] in FINISHED:
                ended = {"event": "finish", "job_id": job_id}
                ended.update(status=job["status"], error=job["error"])
                self.view.event(ended, job)
                self.unfinished.discard(job_id)

    def _concerns_us(self, event: dict[str, Any]) -> bool:
        """Every event when following the queue; else the followed job's, its album jobs'
        (an artist job) and the queue's own (no job id)."""
        job_id = event.get("job_id")
        if self.job_id is None or job_id in (None, self.job_id):
            return True
        return isinstance(job_id, str) and job_id in self.children

    def _event_job(
        self, client: Client, event: dict[str, Any], now: float
    ) -> dict[str, Any] | None:
        """The job whose line an event moves, when the view prints one (progress: rarely).

        Usually the event's job; for an album job's progress while its artist job
        is followed, the artist job: its bytes, speed and ETA are its albums' summed.
        """
        job_id = event.get("job_id")
        if not self.view.wants_jobs or not isinstance(job_id, str):
            return None
        if event.get("event") == "progress":
            if job_id in self.children and self.job_id is not None:
                job_id = self.job_id
            if now - self.last_progress_line.get(job_id, 0.0) < PROGRESS_LINE_S:
                return None
            self.last_progress_line[job_id] = now
        return self._get(client, job_id)

    def _tell_artist_standing(
        self, client: Client, event: dict[str, Any], job: dict[str, Any] | None
    ) -> None:
        """After an album job (`job`) of an artist job finished: where the artist job stands.

        Its `n/m albums` moved on. Only while the artist job is still active: its
        own `finish` line follows otherwise.
        """
        if event.get("event") != "finish" or job is None:
            return
        if self.job_id is None:
            parent = job.get("parent")
        else:
            parent = self.job_id if job["id"] in self.children else None
        artist = self._get(client, parent) if isinstance(parent, str) else None
        if artist is not None and artist["status"] not in FINISHED:
            self.view.event({"event": "progress", "job_id": artist["id"]}, artist)

    @staticmethod
    def _get(client: Client, job_id: str) -> dict[str, Any] | None:
        try:
            return dict(client.call("get", {"id": job_id})["job"])
        except Refused:
            return None  # removed meanwhile: the line says what the event says

    def _snapshot(self, client: Client) -> Snapshot:
        snapshot = Snapshot(client.call("stats"))
        if self.job_id is not None:
            try:
                snapshot.job = client.call("get", {"id": self.job_id})["job"]
            except Refused as refusal:
                if refusal.code != "NOT_FOUND":
                    raise
            if snapshot.job is not None:
                if snapshot.job["status"] not in FINISHED:
                    self.unfinished.add(self.job_id)  # its end is news to wait for
                self.children = frozenset(snapshot.job.get("children") or [])
                if self.view.wants_table:
                    snapshot.children = artist_children(client, snapshot.job)
        elif self.view.wants_table:
            snapshot.queue = queue_in_run_order(client, ACTIVE)
            finished = client.call("list", {"status": list(FINISHED), "limit": 50})["jobs"]
            by_end = sorted(finished, key=lambda job: job.get("finished_at") or "")
            snapshot.recent = by_end[-RECENT_FINISHED:]
        return snapshot

    def _outcome(self, snapshot: Snapshot) -> int | None:
        """The exit code when the watch is over, else None."""
        if self.job_id is None:
            return EXIT_OK if snapshot.idle else None
        if snapshot.job is None:
            raise Refused("NOT_FOUND", f"no job with id {self.job_id!r} (removed?)")
        status = snapshot.job["status"]
        if status in FINISHED:
            return EXIT_OK if status == "completed" else EXIT_FAILED
        return None


# --- the facts of one job, as one line -------------------------------------------------


def job_facts(job: dict[str, Any]) -> str:
    """`processing 45%, 5/12 tracks, 1.2 MiB/s, ETA 0:42 — Artist – Album` (escaped).

    An artist job counts albums: `processing 30%, 1/3 albums, …`.
    """
    job = text.printable_doc(job)  # idempotent: escapes leave no control character behind
    parts = [f"{job['status']} {render.progress_cell(job, 0).strip()}"]
    if (counted := render.count_text(job)) != "-":
        parts.append(counted)
    if job["status"] == "processing":
        parts.append(text.rate(job.get("speed_bps")))
        parts.append(f"ETA {render.eta_cell(job)}")
    return ", ".join(parts) + f" — {render.label(job)}"


def event_line(event: dict[str, Any], job: dict[str, Any] | None) -> str | None:
    """One plain line for an event; None for progress without its job (not due yet) and holds."""
    kind = str(event.get("event"))
    job_id = text.printable(str(event.get("job_id", "")))
    if kind in ("hold", "release"):
        return None  # the hold lines that follow say which and why
    if not job_id:
        return f"queue: {text.printable(kind)}"
    if job is None:
        return None if kind == "progress" else f"job {job_id}: {text.printable(kind)}"
    job = text.printable_doc(job)
    facts = job_facts(job)
    if kind == "track_done":
        title = _track_title(job, event.get("track_id"))
        return f"job {job_id}: track {title} {text.printable(str(event.get('outcome')))}; {facts}"
    if kind == "track_failed":
        error = event.get("error") or {}
        title = _track_title(job, event.get("track_id"))
        code = text.printable(str(error.get("code")))
        return f"job {job_id}: track {title} failed {code}; {facts}"
    if kind == "progress":  # the line of the job given: an artist job's for its albums' bytes
        return f"job {job['id']}: {facts}"
    return f"job {job_id} {EVENT_VERBS.get(kind, text.printable(kind))}: {facts}"


def _track_title(job: dict[str, Any], track_id: Any) -> str:
    for track in job.get("tracks") or []:
        if track.get("track_id") == track_id:
            number = f"{track.get('disc', 1)}-{track.get('number', 0):02d}"  # as `show` lists it
            return f"{number} “{track.get('title') or track_id}”"
    return str(track_id)


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


# --- the three views --------------------------------------------------------------------


class EventLines:
    """Not a terminal: one plain line per event on stdout; connection news on stderr."""

    wants_jobs = True
    wants_table = False

    def __init__(self, job_id: str | None, out: TextIO, err: TextIO):
        self.job_id = job_id  # the followed job: lines about its album jobs sit under it
        self.out, self.err = out, err
        self.shown_holds: tuple[str, ...] = ()
        self.reconnecting = False
        self.finish_shown = False  # the followed job's end already has its line
        self.job_shown = False  # the followed job's first line is out

    def _print(self, line: str) -> None:
        print(f"{_clock()} {line}", file=self.out, flush=True)

    def show(self, snapshot: Snapshot) -> None:
        holds = tuple(
            render.hold_lines(text.printable_doc(snapshot.stats.get("holds") or []), time.time())
        )
        if holds != self.shown_holds:  # the holds are news only when they change
            for line in holds or ("queue: not held any more",):
                self._print(line)
            self.shown_holds = holds
        if snapshot.job is not None and not self.job_shown:  # where the followed job stands
            self._print(f"job {text.printable(snapshot.job['id'])}: {job_facts(snapshot.job)}")
            self.job_shown = True

    def event(self, event: dict[str, Any], job: dict[str, Any] | None) -> None:
        line = event_line(event, job)
        about = job["id"] if job is not None else event.get("job_id")
        if line is not None:
            if self.job_id is not None and isinstance(about, str) and about != self.job_id:
                line = f"  └ {line}"  # one of the followed artist job's albums, as `ls` shows it
            self._print(line)
        self.finish_shown |= event.get("event") == "finish" and about == self.job_id

    def finished(self, snapshot: Snapshot) -> None:
        if snapshot.job is None:
            self._print("queue: idle")
        elif not self.finish_shown:  # it ended unseen: before the watch, or while dlqd was away
            line = event_line({"event": "finish", "job_id": snapshot.job["id"]}, snapshot.job)
            self._print(str(line))

    def lost(self, reason: str, retry_in: float) -> None:
        message = f"dlqd went away ({text.printable(reason)}); reconnecting in {retry_in:g} s"
        print(f"dlqctl: {message}", file=self.err, flush=True)
        self.reconnecting = True

    def back(self) -> None:
        if self.reconnecting:
            print("dlqctl: reconnected to dlqd", file=self.err, flush=True)
            self.reconnecting = False

    def close(self) -> None:
        pass


class JsonEvents:
    """`--json`: each event as one JSON line, and dlqctl's own `disconnected`, `reconnected`,
    `idle` (the queue is idle) and `finish` (the followed job had finished while unseen)."""

    wants_jobs = False
    wants_table = False

    def __init__(self, out: TextIO):
        self.out = out
        self.reconnecting = False
        self.finish_shown: set[str] = set()  # jobs whose `finish` event is out

    def _print(self, document: dict[str, Any]) -> None:
        print(json.dumps(document, ensure_ascii=False), file=self.out, flush=True)

    def show(self, snapshot: Snapshot) -> None:
        pass

    def event(self, event: dict[str, Any], job: dict[str, Any] | None) -> None:
        self._print(event)
        if event.get("event") == "finish":
            self.finish_shown.add(str(event.get("job_id")))

    def finished(self, snapshot: Snapshot) -> None:
        job = snapshot.job
        if job is None:
            self._print({"event": "idle"})
        elif job["id"] not in self.finish_shown:  # it ended unseen
            self._print(
                {
                    "event": "finish",
                    "job_id": job["id"],
                    "status": job["status"],
                    "error": job["error"],
                }
            )

    def lost(self, reason: str, retry_in: float) -> None:
        self._print({"event": "disconnected", "reason": reason, "retry_in_s": retry_in})
        self.reconnecting = True

    def back(self) -> None:
        if self.reconnecting:
            self._print({"event": "reconnected"})
            self.reconnecting = False

    def close(self) -> None:
        pass


class Screen:
    """A terminal: the live table, redrawn in place (cursor up, rewrite, clear the rest)."""

    wants_jobs = False
    wants_table = True

    def __init__(self, job_id: str | None, out: TextIO):
        self.job_id = job_id
        self.out = out
        self.drawn = 0  # lines of the last frame, which the next one overwrites
        self.size = shutil.get_terminal_size()  # the terminal's size at the last frame
        self.snapshot: Snapshot | None = None
        self.notice = ""
        self.out.write("\x1b[?25l")  # hide the cursor while the table moves

    def show(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._draw()

    def event(self, event: dict[str, Any], job: dict[str, Any] | None) -> None:
        pass  # the next snapshot shows what it changed

    def finished(self, snapshot: Snapshot) -> None:
        self.show(snapshot)

    def lost(self, reason: str, retry_in: float) -> None:
        self.notice = f"dlqd went away ({text.printable(reason)}); reconnecting in {retry_in:g} s"
        self._draw()

    def back(self) -> None:
        self.notice = ""

    def close(self) -> None:
        self.out.write("\x1b[?25h")
        self.out.flush()

    def _draw(self) -> None:
        size = shutil.get_terminal_size()
        width, height = size.columns - 1, max(3, size.lines - 1)  # never wrap, never scroll
        lines = self._frame(width, height)[:height]
        if size != self.size and self.drawn:  # resized: the old frame may have wrapped
            up = "\x1b[H\x1b[2J"  # start again from a clear screen
        else:
            up = f"\x1b[{self.drawn}F" if self.drawn else "\r"
        self.size = size
        body = "".join(text.fit(line, width).rstrip() + "\x1b[K\n" for line in lines)
        self.out.write(up + body + "\x1b[J")
        self.out.flush()
        self.drawn = len(lines)

    def _frame(self, width: int, height: int) -> list[str]:
        snapshot = self.snapshot
        if snapshot is None:
            return [self.notice or "connecting to dlqd…"]
        stats = text.printable_doc(snapshot.stats)
        lines = [_headline(stats)]
        if self.notice:
            lines.append(self.notice)
        lines.extend(render.hold_lines(stats.get("holds") or [], time.time()))
        if self.job_id is not None:
            room = height - len(lines)
            return lines + job_lines(self.job_id, snapshot.job, snapshot.children, width, room)
        # Each section keeps an artist job's album jobs under it, as `ls` does.
        queue = render.with_children_under_parents([text.printable_doc(j) for j in snapshot.queue])
        recent = render.with_children_under_parents(
            [text.printable_doc(job) for job in snapshot.recent]
        )
        table = render.placed_job_table(queue + recent, width)
        if not table:
            return [*lines, "(nothing queued)"]
        header, rows = table[0], table[1:]
        active = rows[: len(queue)] or ["(nothing queued)"]
        room = max(2, height - len(lines) - 1 - (1 + len(recent) if recent else 0))
        if len(active) > room:
            active = [*active[: room - 1], f"… and {len(queue) - room + 1} more in the queue"]
        lines += [header, *active]
        if recent:
            lines += ["recently finished:", *rows[len(queue) :]]
        return lines


def _headline(stats: dict[str, Any]) -> str:
    """`dlqd 12:03:04 · 1 processing, 3 queued · 1.2 MiB/s · 2/4 slots`."""
    counts = stats.get("queue", {})
    worker = stats.get("worker", {})
    parts = [f"{counts.get(s)} {s}" for s in ("processing", "queued", "paused") if counts.get(s)]
    slots = f"{worker.get('active_tracks', '?')}/{worker.get('max_concurrent', '?')} slots"
    summary = ", ".join(parts) or "idle"
    return f"dlqd {_clock()} · {summary} · {text.rate(stats.get('speed_bps'))} · {slots}"


def job_lines(
    job_id: str,
    job: dict[str, Any] | None,
    children: list[dict[str, Any]],
    width: int,
    room: int,
) -> list[str]:
    """The followed job's row — an artist job's with its album jobs under it, as in `ls` —
    then one line per track downloading now. When `room` lines are too few, the
    finished albums give way to one line counting them."""
    if job is None:
        return [f"job {text.printable(job_id)} is gone"]
    job = text.printable_doc(job)
    children = [text.printable_doc(child) for child in children]
    downloading = [
        _track_line(track)
        for member in (job, *children)
        for track in member.get("tracks") or []
        if track.get("status") == "downloading"
    ]
    shown = children
    if 2 + len(children) + len(downloading) > room:  # the header, the job, its albums
        shown = [child for child in children if child.get("status") not in FINISHED]
    lines = render.job_table([job, *shown], width)
    if hidden := len(children) - len(shown):
        lines.append(f"  … and {hidden} finished album{'s' if hidden != 1 else ''}")
    return lines + downloading


def _track_line(track: dict[str, Any]) -> str:
    """`  ↓   3 ████······  40%  1.2 MiB of 3.0 MiB  Title`: a track downloading now."""
    done, total = track.get("bytes_done") or 0, track.get("bytes_total") or 0
    fraction = done / total if total else 0.0
    return (
        f"  ↓ {track.get('number', '?'):>3} {text.bar(fraction, 10)} {text.percent(fraction)}"
        f"  {text.size(done)} of {text.size(total)}  {track.get('title') or track['track_id']}"
    )


def watch(args: argparse.Namespace, connect: Callable[[], Client]) -> int:
    view: View
    if args.json:
        view = JsonEvents(sys.stdout)
    elif sys.stdout.isatty():
        view = Screen(args.job, sys.stdout)
    else:
        view = EventLines(args.job, sys.stdout, sys.stderr)
    try:
        return Watch(args, connect, view).run()
    finally:
        view.close()
