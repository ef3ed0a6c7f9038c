"""Which work runs when: per-track slots, resolving ahead, holds, later passes, cancellation.

`max_concurrent` bounds running *tracks* through one `trio.CapacityLimiter`.
Whenever a slot frees, `picking.next_track` names the next track: the first
pending one of the highest-priority runnable job, so no job hands out its
tracks ahead of others. Jobs are resolved (their upstream metadata read)
soon after they are submitted, by a small pool of their own that never takes
a track slot. While `Holds` says the queue is held nothing new starts and
nothing is resolved; a fault hold also stops the running tracks and keeps
their partial files, and the tries it interrupted do not count. A track out of retries on a
transient error comes back for a later pass after `requeue_after_s`, up to
`max_passes` passes, before its job may finish. An artist job takes no
track slot: its resolve reads the discography and expands it into album
jobs (`expand`, with their `submit` records, in one commit), and it
finishes once every one of those children has, with their outcome summed
up. Every running track owns a
`CancelScope`, so cancel and pause stop it in flight, and runs under its own
deadline, so nothing stays `processing` forever. The scheduler journals each
transition through the store and never touches files or the network itself
— `JobWork` does.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import trio

from dlqd import expansion
from dlqd.codes import DEFERRABLE_CODES
from dlqd.errors import DlqdError, ErrorCode
from dlqd.holds import FAULT_REASONS, Holds, QueueHeld
from dlqd.meta import TrackMeta
from dlqd.model import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    Job,
    JobStatus,
    Track,
    TrackStatus,
)
from dlqd.naming import JobNames
from dlqd.picking import (
    RUNNABLE_STATUSES,
    TrackKey,
    is_finished,
    next_pass_due,
    next_track,
    resolve_order,
)
from dlqd.rates import RateMeter
from dlqd.source import Discography
from dlqd.state import artist_outcome, is_expanded, job_outcome
from dlqd.store import RecordRefused, Store
from dlqd.summary import (
    error_text,
    human_bytes,
    job_name,
    job_summary,
    track_summary,
)

log = structlog.get_logger("dlqd.scheduler")

IDLE_WAKE_S = 5.0  # the loop's heartbeat when nothing happens (health reads it)


@dataclass(frozen=True)
class UnavailableTrack:
    """A listed track the upstream says does not exist (`error`): it fails as it is resolved.

    `title` and `duration` are what the listing said of it ("" and None when nothing).
    """

    track_id: int
    title: str
    duration: int | None
    error: dict[str, str]


@dataclass(frozen=True)
class ResolvedJob:
    """A job's upstream metadata: display fields and each of its tracks, in order.

    A track is its TrackMeta, or for a playlist or mix an `UnavailableTrack`.
    """

    title: str
    artist: str
    listed: tuple[TrackMeta | UnavailableTrack, ...]

    @property
    def tracks(self) -> tuple[TrackMeta, ...]:
        """The tracks that can be fetched."""
        return tuple(meta for meta in self.listed if isinstance(meta, TrackMeta))

    @property
    def unavailable(self) -> tuple[UnavailableTrack, ...]:
        return tuple(gone for gone in self.listed if isinstance(gone, UnavailableTrack))


@dataclass(frozen=True)
class TrackResult:
    path: str
    outcome: str
    bytes: int
    quality: str | None = None  # delivered, with bit depth and sample rate when the upstream says
    bit_depth: int | None = None
    sample_rate: int | None = None


@dataclass
class TrackRun:
    """The handle a running track reports through; its fields are live, not journaled."""

    job_id: str
    track: Track
    meta: TrackMeta
    quality: str
    on_progress: Callable[[TrackRun], None]
    names: JobNames = field(default_factory=JobNames)  # shared by the job's tracks
    keep_partial: bool = False  # set when a fault hold stops the track: resume it later
    meter: RateMeter = field(default_factory=RateMeter)  # the job's, shared by its tracks
    _counted: int | None = None  # bytes of this attempt already given to the meter

    def attempt_started(self) -> None:
        self.track.attempts += 1
        self.track.bytes_done = 0
        self._counted = None

    def progress(self, done: int, total: int | None) -> None:
        # The first report of an attempt is where it starts (a resumed partial file):
        # bytes already on disk are not speed.
        if self._counted is not None and done > self._counted:
            self.meter.add(done - self._counted)
        self._counted = done
        self.track.bytes_done = done
        if total:
            self.track.bytes_total = total
        self.on_progress(self)


class JobWork(Protocol):
    """What the scheduler asks of the download side (dlqd.worker)."""

    async def resolve(self, job: Job) -> ResolvedJob: ...

    async def discography(self, job: Job) -> Discography: ...

    async def run_track(self, run: TrackRun) -> TrackResult: ...

    async def before_finish(self, job: Job, metas: Mapping[int, TrackMeta]) -> str | None:
        """A job's last step once its tracks are done (a playlist's M3U8), before its finish.

        Returns the library-relative path of the file it wrote, if any. Raises
        QueueHeld to wait for a hold, DlqdError when the step failed.
        """


@dataclass
class _Task:
    """A running track or resolve: the scope that stops it and the event that says it has."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    run: TrackRun | None = None  # tracks only


class Scheduler:
    def __init__(
        self,
        store: Store,
        work: JobWork,
        *,
        max_concurrent: int,
        track_timeout_s: float,
        holds: Holds,
        requeue_after_s: float = 900.0,
        max_passes: int = 3,
        resolve_concurrency: int = 2,
        clock: Callable[[], float] = time.time,
        observe_track_seconds: Callable[[float], None] = lambda seconds: None,
        hook_on_finish: bool = False,
        max_queue: int = 1000,
        max_job_releases: int = 5000,
    ):
        self.store = store
        self.work = work
        self.holds = holds
        self.limiter = trio.CapacityLimiter(max_concurrent)
        self.track_timeout_s = track_timeout_s
        self.requeue_after_s = requeue_after_s
        self.max_passes = max_passes
        self.clock = clock
        self.observe_track_seconds = observe_track_seconds  # the metrics' histogram
        # A completion hook is configured: each finish record marks it pending (dlqd.hooks).
        self.hook_on_finish = hook_on_finish
        self.max_queue = max_queue  # an artist job's children must all fit (limits.max_queue)
        self.max_job_releases = max_job_releases  # limits.max_job_tracks bounds them too
        self.draining = False
        self.heartbeat = trio.current_time()
        self._resolve_limiter = trio.CapacityLimiter(resolve_concurrency)
        self._metas: dict[str, dict[int, TrackMeta]] = {}  # resolved jobs' metadata
        self._names: dict[str, JobNames] = {}  # resolved jobs' file names, kept distinct
        self._resolving: dict[str, _Task] = {}
        self._tracks: dict[TrackKey, _Task] = {}
        self._finishing: dict[str, _Task] = {}  # jobs whose last step runs (a playlist's M3U8)
        self._meters: dict[str, RateMeter] = {}  # per job: its download rate
        # A job whose metadata read ends on a transient error gets later passes too.
        self._resolve_passes = _LaterPasses(requeue_after_s, max_passes)
        self._stopped_jobs: Counter[str] = Counter()  # jobs a command holds still
        store.on_rebuild(self._stop_everything)

    # --- the loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self.heartbeat = trio.current_time()
                self._forget_inactive()
                if self._fault_held():
                    self._stop_tracks_for_hold()
                if not self.draining:
                    await self._finish_done_jobs(nursery)
                if self.running:  # a held queue does not talk to the upstream at all
                    self._start_resolves(nursery)
                    self._start_tracks(nursery)
                with trio.move_on_after(self._idle_wait()):
                    await self.store.wait_changed()

    @property
    def active_tracks(self) -> int:
        return self.limiter.borrowed_tokens

    @property
    def running(self) -> bool:
        """Tracks may start: not draining and nothing holds the queue."""
        return not self.draining and not self.holds.blocking

    def _fault_held(self) -> bool:
        return any(hold.reason in FAULT_REASONS for hold in self.holds.faults())

    def _idle_wait(self) -> float:
        dues = [next_pass_due(self.store.state.active_jobs()), *self._resolve_passes.due()]
        due = min((d for d in dues if d is not None), default=None)
        if due is None:
            return IDLE_WAKE_S
        return min(IDLE_WAKE_S, max(0.0, due - self.clock()) + 0.01)

    def _startable_jobs(self) -> Iterator[Job]:
        return (j for j in self.store.state.active_jobs() if j.id not in self._stopped_jobs)

    def _forget_inactive(self) -> None:
        """Drop what the scheduler keeps of jobs no longer active (finished, cancelled, removed)."""
        jobs = self.store.state.jobs
        for job_id in [j for j in self._metas if jobs.get(j) is None or not _active(jobs[j])]:
            del self._metas[job_id]
            del self._names[job_id]
        for job_id in [j for j in self._meters if jobs.get(j) is None or not _active(jobs[j])]:
            del self._meters[job_id]
        self._resolve_passes.keep_only(lambda j: j in jobs and _active(jobs[j]))

    def speeds(self) -> dict[str, int]:
        """Bytes per second of each job with running tracks, over the last few seconds."""
        running = {job_id for job_id, _ in self._tracks}
        return {job_id: self._meters[job_id].rate() for job_id in running if job_id in self._meters}

    # --- resolving ----------------------------------------------------------------

    def _start_resolves(self, nursery: trio.Nursery) -> None:
        now = self.clock()
        for job in resolve_order(self._startable_jobs()):
            if (
                job.id not in self._metas
                and not is_expanded(job)
                and job.id not in self._resolving
                and self._resolve_passes.ready(job.id, now)
            ):
                task = _Task()
                self._resolving[job.id] = task
                nursery.start_soon(self._resolve, job.id, task)

    def _resolving_now(self, now: float) -> set[str]:
        """Jobs whose resolve runs or is due; not those waiting for a later pass."""
        return {
            job.id
            for job in self._startable_jobs()
            if job.id in self._resolving
            or (job.id not in self._metas and self._resolve_passes.ready(job.id, now))
        }

    async def _resolve(self, job_id: str, task: _Task) -> None:
        log_ = log.bind(job_id=job_id)
        try:
            with task.scope:
                async with self._resolve_limiter:
                    await self._resolve_job(job_id, log_)
        except DlqdError as exc:  # the journal refused a transition: state was rebuilt
            log_.error("resolve stopped: journal unavailable", error_code=str(exc.code))
        finally:
            self._resolving.pop(job_id, None)
            task.finished.set()
            self.store.notify_changed()

    async def _resolve_job(self, job_id: str, log_: structlog.BoundLogger) -> None:
        discography: Discography | None = None  # an artist job's, read instead of tracks
        while True:
            job = self.store.state.jobs.get(job_id)
            if job is None or job.status not in RUNNABLE_STATUSES:
                return
            try:
                if job.type == "artist":
                    discography = await self.work.discography(job)
                else:
                    resolved = await self.work.resolve(job)
            except QueueHeld as held:
                log_.info("resolve waits for a hold", reason=str(held.reason))
                while self.holds.is_held(held.reason):
                    await self.store.wait_changed()
                continue
            except DlqdError as exc:
                later = self._resolve_passes
                if exc.code in DEFERRABLE_CODES and later.defer(job_id, self.clock()):
                    log_.warning(
                        "resolve deferred to a later pass",
                        error_code=str(exc.code),
                        error=exc.message,
                        due_in_s=self.requeue_after_s,
                    )
                    return
                await self._fail_unresolved(job_id, exc.to_dict(), log_)
                return
            break
        if discography is not None:
            await self._expand(job_id, discography, log_)
            return
        self._resolve_passes.forget(job_id)
        job = self.store.state.jobs[job_id]
        event = _resolve_event(job_id, resolved)
        events = [] if job.title and _rows_match(job.tracks, event["tracks"]) else [event]
        # Tracks the upstream does not have fail with the resolve, in the same commit.
        events += _unavailable_failed(job, resolved.unavailable)
        if events:
            try:
                await self.store.commit(*events)
            except RecordRefused as exc:
                log_.error("upstream metadata cannot be journaled", error=exc.message)
                await self._fail_unresolved(job_id, _unrecordable(exc), log_)
                return
        # Completed tracks (of an earlier run of this job) keep their names.
        job = self.store.state.jobs[job_id]
        done = (t.path for t in job.tracks if t.status == TrackStatus.COMPLETED and t.path)
        self._names[job_id] = JobNames(resolved.tracks, held=done)
        self._metas[job_id] = {meta.track_id: meta for meta in resolved.tracks}
        gone = len(resolved.unavailable)
        line = f"job {job_id} resolved: {job_name(job)} ({len(resolved.tracks)} tracks" + (
            f", {gone} not available upstream)" if gone else ")"
        )
        log_.info(
            "job resolved",
            title=resolved.title,
            tracks=len(resolved.tracks),
            unavailable=gone,
            summary=line,
        )

    async def _expand(
        self, job_id: str, discography: Discography, log_: structlog.BoundLogger
    ) -> None:
        """Queue the artist job's album jobs (dlqd.expansion), in one commit with `expand`."""
        self._resolve_passes.forget(job_id)
        state = self.store.state
        job = state.jobs[job_id]
        if job.status not in RUNNABLE_STATUSES:  # paused or cancelled while reading
            return
        planned = expansion.plan(
            state,
            job,
            discography,
            at=self.clock(),
            max_queue=self.max_queue,
            max_releases=self.max_job_releases,
        )
        if not isinstance(planned, expansion.Expansion):
            await self._fail_unresolved(job_id, planned, log_)
            return
        try:
            await self.store.commit(*planned.events)
        except RecordRefused as exc:
            log_.error("the discography cannot be journaled", error=exc.message)
            await self._fail_unresolved(job_id, _unrecordable(exc), log_)
            return
        job = self.store.state.jobs[job_id]
        line = (
            f"job {job_id} expanded: {job_name(job)} ({planned.releases} releases, "
            f"{planned.queued} album jobs queued)"
        )
        log_.info("artist expanded", releases=planned.releases, queued=planned.queued, summary=line)

    # --- tracks -------------------------------------------------------------------

    def _start_tracks(self, nursery: trio.Nursery) -> None:
        while self.running and self.limiter.available_tokens >= 1:
            now = self.clock()
            choice = next_track(
                self._startable_jobs(),
                resolved=self._metas,
                resolving=self._resolving_now(now),
                running=self._tracks,
                now=now,
            )
            if choice is None:
                return
            job, track = choice
            key = (job.id, track.track_id)
            self.limiter.acquire_on_behalf_of_nowait(key)
            meta = self._metas[job.id][track.track_id]
            meter = self._meters.setdefault(job.id, RateMeter())
            meter.start()
            run = TrackRun(
                job.id, track, meta, job.quality, self._publish, self._names[job.id], meter=meter
            )
            task = _Task(run=run)
            self._tracks[key] = task
            track.status = TrackStatus.DOWNLOADING
            nursery.start_soon(self._run_track, job.id, track, task)

    async def _run_track(self, job_id: str, track: Track, task: _Task) -> None:
        key = (job_id, track.track_id)
        log_ = log.bind(job_id=job_id, track_id=track.track_id)
        # Task-local: every line logged below this task (worker, fetch) carries the ids too.
        structlog.contextvars.bind_contextvars(job_id=job_id, track_id=track.track_id)
        assert task.run is not None
        started = trio.current_time()
        try:
            with task.scope:
                job = self.store.state.jobs[job_id]
                if job.status == JobStatus.QUEUED:
                    await self.store.commit({"e": "start", "id": job_id, "at": self.clock()})
                    line = f"job {job_id} started: {job_name(job)}"
                    log_.info("job started", type=job.type, target_id=job.target_id, summary=line)
                outcome = await self._attempt(task.run, log_)
                if outcome is not None:
                    if isinstance(outcome, TrackResult):
                        self.observe_track_seconds(trio.current_time() - started)
                    await self._record_outcome(job_id, track, outcome, log_)
        except DlqdError as exc:  # the journal refused a transition: state was rebuilt
            log_.error("track stopped: journal unavailable", error_code=str(exc.code))
        finally:
            if track.status == TrackStatus.DOWNLOADING:
                track.status = TrackStatus.PENDING  # stopped: it runs again later
            self._tracks.pop(key, None)
            self.limiter.release_on_behalf_of(key)
            task.finished.set()
            self.store.notify_changed()

    async def _attempt(
        self, run: TrackRun, log_: structlog.BoundLogger
    ) -> TrackResult | DlqdError | None:
        """One run of the track's tries: its result, its error, or None when held or stopped."""
        with trio.move_on_after(self.track_timeout_s):
            try:
                return await self.work.run_track(run)
            except QueueHeld as held:
                log_.info("track held", reason=str(held.reason), detail=held.message)
                return None
            except DlqdError as exc:
                return exc
            except Exception as exc:  # a bug must fail one track, not the daemon
                log_.exception("internal error in track")
                return DlqdError(ErrorCode.INTERNAL_ERROR, f"internal error: {exc!r}")
        # Only the deadline ends the block without returning.
        return DlqdError(ErrorCode.TIMEOUT, f"track took longer than {self.track_timeout_s:g} s")

    async def _record_outcome(
        self,
        job_id: str,
        track: Track,
        outcome: TrackResult | DlqdError,
        log_: structlog.BoundLogger,
    ) -> None:
        """Journal a track's outcome; a refused record fails the track instead."""
        if isinstance(outcome, TrackResult):
            detail = f"{human_bytes(outcome.bytes)}, {outcome.outcome}"
            log_.info(
                "track finished",
                outcome=outcome.outcome,
                path=outcome.path,
                summary=self._track_line(job_id, track, "completed", detail),
            )
            event: dict[str, object] = {
                "e": "track_done",
                "id": job_id,
                "track_id": track.track_id,
                "path": outcome.path,
                "outcome": outcome.outcome,
                "bytes": outcome.bytes,
                "attempts": track.attempts,
            }
            delivered = {
                "quality": outcome.quality,
                "bit_depth": outcome.bit_depth,
                "sample_rate": outcome.sample_rate,
            }
            event.update({key: value for key, value in delivered.items() if value is not None})
        elif outcome.code in DEFERRABLE_CODES and track.passes + 1 < self.max_passes:
            due = self.clock() + self.requeue_after_s
            log_.warning(
                "track deferred to a later pass",
                error_code=str(outcome.code),
                error=outcome.message,
                passes=track.passes + 1,
                due_in_s=self.requeue_after_s,
                summary=self._track_line(
                    job_id, track, "deferred to a later pass", error_text(outcome.to_dict())
                ),
            )
            event = {
                "e": "track_deferred",
                "id": job_id,
                "track_id": track.track_id,
                "error": outcome.to_dict(),
                "attempts": track.attempts,
                "passes": track.passes + 1,
                "due_at": due,
            }
        else:
            log_.warning(
                "track failed",
                error_code=str(outcome.code),
                error=outcome.message,
                summary=self._track_line(job_id, track, "failed", error_text(outcome.to_dict())),
            )
            event = _track_failed(job_id, track, outcome.to_dict())
        try:
            await self.store.commit(event)
        except RecordRefused as exc:
            log_.error("track outcome cannot be journaled", error=exc.message)
            await self.store.commit(_track_failed(job_id, track, _unrecordable(exc)))

    def _track_line(self, job_id: str, track: Track, what: str, detail: str) -> str:
        """The journald MESSAGE of a track line: job, place, artist – title, how it went."""
        meta = self._metas.get(job_id, {}).get(track.track_id)
        artist, title = (meta.display_artist, meta.display_title) if meta else ("", track.title)
        job = self.store.state.jobs[job_id]
        return track_summary(job, track.track_id, artist, title, what, detail)

    def _stop_tracks_for_hold(self) -> None:
        """A fault hold: stop every running track, keep its partial file, count nothing."""
        for task in self._tracks.values():
            if task.run is not None and not task.scope.cancel_called:
                task.run.keep_partial = True
                task.scope.cancel()

    def _publish(self, run: TrackRun) -> None:
        self.store.publish(
            {
                "event": "progress",
                "job_id": run.job_id,
                "track_id": run.track.track_id,
                "bytes_done": run.track.bytes_done,
                "bytes_total": run.track.bytes_total,
                "speed_bps": run.meter.rate(),  # the job's, as `speed_bps` in its job object
            }
        )

    # --- finishing ----------------------------------------------------------------

    async def _finish_done_jobs(self, nursery: trio.Nursery) -> None:
        """Start the last step of resolved jobs whose every track has an outcome; finish artists.

        Each job's last step (its M3U8 on a slow share, say) runs as a task of
        its own, one per job at a time, so it never holds up starting tracks.
        """
        running_jobs = {job_id for job_id, _ in self._tracks}
        done = [
            job
            for job in self.store.state.active_jobs()
            if job.status in RUNNABLE_STATUSES
            and job.id in self._metas
            and job.id not in running_jobs
            and job.id not in self._finishing
            and job.id not in self._stopped_jobs
            and is_finished(job)
        ]
        for job in done:
            task = _Task()
            self._finishing[job.id] = task
            nursery.start_soon(self._finish_job, job, self._metas[job.id], task)
        await self._finish_done_artists()

    async def _finish_job(self, job: Job, metas: Mapping[int, TrackMeta], task: _Task) -> None:
        """Run a job's last step, then journal its finish; stopped, it leaves the job as it is.

        A step that meets a hold waits for the hold to end (or for a drain),
        then runs again.
        """
        job_id = job.id
        log_ = log.bind(job_id=job_id)
        try:
            with task.scope:
                while True:
                    try:
                        outcome = await self._last_step(job, metas, log_)
                    except QueueHeld as held:
                        log_.info("job finish waits for a hold", reason=str(held.reason))
                        while self.holds.is_held(held.reason) and not self.draining:
                            await self.store.wait_changed()
                        if self.draining:  # re-queued: the restart runs the step
                            return
                        continue
                    break
                await self._finish(
                    job_id, outcome.status, outcome.error, log_, playlist_path=outcome.written
                )
        except DlqdError as exc:
            log_.error("job finish lost: journal unavailable", error_code=str(exc.code))
        finally:
            self._finishing.pop(job_id, None)
            task.finished.set()
            self.store.notify_changed()

    async def _finish_done_artists(self) -> None:
        """Finish expanded artist jobs whose every child has finished (or was removed).

        Each is checked again right before its finish is applied: the finish
        before it waited for an fsync, and a command (cancel, remove) may have
        changed it meanwhile.
        """
        for job_id in [job.id for job in self.store.state.active_jobs() if is_expanded(job)]:
            job = self.store.state.jobs.get(job_id)
            if job is None or not self._artist_done(job):
                continue
            jobs = self.store.state.jobs
            status, error = artist_outcome([jobs.get(child) for child in job.children])
            try:
                await self._finish(job.id, status, error, log.bind(job_id=job.id))
            except DlqdError as exc:
                log.error("job finish lost: journal unavailable", error_code=str(exc.code))

    def _artist_done(self, job: Job) -> bool:
        jobs = self.store.state.jobs
        return (
            job.status == JobStatus.PROCESSING
            and job.id not in self._stopped_jobs
            and all(
                child not in jobs or jobs[child].status in FINISHED_STATUSES
                for child in job.children
            )
        )

    async def _last_step(
        self, job: Job, metas: Mapping[int, TrackMeta], log_: structlog.BoundLogger
    ) -> _LastStep:
        """The job's status, error and file after `JobWork.before_finish`.

        Raises QueueHeld when the step must wait for a hold.

        A failed last step (the playlist file not written) keeps the tracks'
        outcome, but a job it leaves incomplete is not `completed`: it is
        `partial`, with the step's error, so `retry` can run the step again.
        """
        status, error = job_outcome(job)
        try:
            written = await self.work.before_finish(job, metas)
        except QueueHeld:
            raise
        except Exception as exc:  # a bug in the step must fail the step, not the daemon
            failure = exc if isinstance(exc, DlqdError) else None
            if failure is None:
                log_.exception("internal error in a job's last step")
                failure = DlqdError(ErrorCode.INTERNAL_ERROR, f"internal error: {exc!r}")
            log_.error(
                "job's last step failed", error_code=str(failure.code), error=failure.message
            )
            status = JobStatus.PARTIAL if status == JobStatus.COMPLETED else status
            return _LastStep(status, failure.to_dict(), None)
        return _LastStep(status, error, written)

    async def _fail_unresolved(
        self, job_id: str, error: dict[str, str], log_: structlog.BoundLogger
    ) -> None:
        """A job whose metadata cannot be had fails, and so does each track it already lists.

        A track job knows its one track from the submit: without this it would
        show `pending` under a failed job. One commit, so no state shows half.
        """
        job = self.store.state.jobs[job_id]
        unrun = [t for t in job.tracks if t.status == TrackStatus.PENDING]
        failed = [_track_failed(job_id, track, error) for track in unrun]
        await self._finish(job_id, JobStatus.FAILED, error, log_, with_events=failed)

    async def _finish(
        self,
        job_id: str,
        status: JobStatus,
        error: dict[str, str] | None,
        log_: structlog.BoundLogger,
        *,
        with_events: Sequence[dict[str, object]] = (),
        playlist_path: str | None = None,
    ) -> None:
        event: dict[str, object] = {
            "e": "finish",
            "id": job_id,
            "status": str(status),
            "error": error,
        }
        if playlist_path is not None:
            event["playlist_path"] = playlist_path
        if self.hook_on_finish:
            event["hook"] = True
        await self.store.commit(*with_events, {**event, "at": self.clock()})
        # A retry resolves the job afresh: what the upstream has may have changed.
        self._metas.pop(job_id, None)
        self._names.pop(job_id, None)
        state = self.store.state
        job = state.jobs[job_id]
        log_.info(
            "job finished",
            status=str(status),
            error_code=(error or {}).get("code"),
            summary=job_summary(job, state.children_of(job)),
        )

    # --- control ------------------------------------------------------------------

    @asynccontextmanager
    async def stopped(self, job_id: str) -> AsyncIterator[None]:
        """Stop a job in flight and start none of its work until the block ends.

        A command journals its change (cancel, pause) inside the block, so the
        scheduler cannot restart a track between the stop and that record.
        """
        self._stopped_jobs[job_id] += 1
        try:
            await self._stop_job(job_id)
            yield
        finally:
            self._stopped_jobs[job_id] -= 1
            if not self._stopped_jobs[job_id]:
                del self._stopped_jobs[job_id]
            self.store.notify_changed()

    async def _stop_job(self, job_id: str) -> None:
        """Stop a job's resolve, running tracks and last step; return once they cleaned up."""
        tasks = [task for (owner, _), task in self._tracks.items() if owner == job_id]
        for other in (self._resolving.get(job_id), self._finishing.get(job_id)):
            if other is not None:
                tasks.append(other)
        for task in tasks:
            task.scope.cancel()
        for task in tasks:
            await task.finished.wait()

    async def drain(self, grace_s: float) -> list[str]:
        """Start nothing new; let running tracks and last steps end within `grace_s`; stop the rest.

        Returns the ids of jobs left `processing`, which the caller re-queues.
        """
        self.draining = True
        self.store.notify_changed()
        for task in self._resolving.values():  # metadata is read again after the restart
            task.scope.cancel()
        with trio.move_on_after(grace_s):
            while self._tracks or self._finishing:
                await self.store.wait_changed()
        # A last step cut short leaves its job processing: re-queued, it runs after the restart.
        for job_id in {owner for owner, _ in self._tracks} | set(self._finishing):
            await self._stop_job(job_id)
        jobs = self.store.state.active_jobs()
        return [
            job.id for job in jobs if job.status == JobStatus.PROCESSING and not is_expanded(job)
        ]

    def _stop_everything(self) -> None:
        """After a journal rollback: running work may belong to undone events."""
        for task in [*self._tracks.values(), *self._resolving.values(), *self._finishing.values()]:
            task.scope.cancel()
        self._metas.clear()
        self._names.clear()


@dataclass(frozen=True)
class _LastStep:
    """How a job's last step ended: its finish's status and error, and the file it wrote."""

    status: JobStatus
    error: dict[str, str] | None
    written: str | None


class _LaterPasses:
    """Later passes of jobs whose resolve ended on a transient error (in memory only).

    Like a track's, a job's metadata read that runs out of retries during an
    outage is tried again after `requeue_after_s`, for up to `max_passes`
    passes, instead of failing the job; a restart starts the count afresh.
    """

    def __init__(self, requeue_after_s: float, max_passes: int) -> None:
        self._requeue_after_s = requeue_after_s
        self._max_passes = max_passes
        self._passes: dict[str, int] = {}
        self._due: dict[str, float] = {}

    def defer(self, job_id: str, now: float) -> bool:
        """Schedule another pass; False when the job has had all of its passes."""
        passes = self._passes.get(job_id, 0) + 1
        if passes >= self._max_passes:
            return False
        self._passes[job_id] = passes
        self._due[job_id] = now + self._requeue_after_s
        return True

    def ready(self, job_id: str, now: float) -> bool:
        return self._due.get(job_id, now) <= now

    def due(self) -> list[float]:
        return list(self._due.values())

    def forget(self, job_id: str) -> None:
        self._passes.pop(job_id, None)
        self._due.pop(job_id, None)

    def keep_only(self, wanted: Callable[[str], bool]) -> None:
        for job_id in [j for j in self._passes if not wanted(j)]:
            self.forget(job_id)


def _active(job: Job) -> bool:
    return job.status in ACTIVE_STATUSES


def _track_failed(job_id: str, track: Track, error: dict[str, str]) -> dict[str, object]:
    return {
        "e": "track_failed",
        "id": job_id,
        "track_id": track.track_id,
        "error": error,
        "attempts": track.attempts,
    }


def _unrecordable(exc: RecordRefused) -> dict[str, str]:
    """The error a job or track gets when upstream data could not be journaled."""
    return {
        "code": str(ErrorCode.UPSTREAM_BAD_RESPONSE),
        "message": f"the upstream sent data dlqd cannot record: {exc.message}",
    }


def _resolve_event(job_id: str, resolved: ResolvedJob) -> dict[str, Any]:
    """The `resolve` record; an unavailable track's row has disc 1 and its listing position."""
    rows = [
        [m.track_id, m.display_title, m.disc_number, m.track_number, m.duration]
        if isinstance(m, TrackMeta)
        else [m.track_id, m.title, 1, position, m.duration]
        for position, m in enumerate(resolved.listed, start=1)
    ]
    return {
        "e": "resolve",
        "id": job_id,
        "title": resolved.title,
        "artist": resolved.artist,
        "tracks": rows,
    }


def _rows_match(tracks: Sequence[Track], rows: Sequence[Sequence[Any]]) -> bool:
    """The job already lists these tracks, in this order, with these durations."""
    return [(t.track_id, t.duration) for t in tracks] == [(row[0], row[4]) for row in rows]


def _unavailable_failed(
    job: Job, unavailable: Sequence[UnavailableTrack]
) -> list[dict[str, object]]:
    """`track_failed` for each unavailable track not failed or completed already.

    A track completed by an earlier run keeps its file and its outcome.
    """
    events: list[dict[str, object]] = []
    for gone in unavailable:
        track = job.track(gone.track_id) or Track(track_id=gone.track_id)
        if track.status == TrackStatus.PENDING:
            events.append(_track_failed(job.id, track, gone.error))
    return events
