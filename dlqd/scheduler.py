"""Which work runs when: job order, the track slot limiter, and in-flight cancellation.

Jobs start in priority order, then oldest first. `max_concurrent` bounds
running *tracks* across all jobs through one `trio.CapacityLimiter`; a job's
tracks take slots in order, and the next job starts only when a slot is free
and no running job still has a track waiting for one. Every running job owns a
`CancelScope` in `self.running`, so cancel and pause stop it in flight; every
track runs under its own deadline scope, so nothing stays `processing`
forever. The scheduler journals each transition through the store and never
touches files or the network itself — `JobWork` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio

from dlqd.errors import DlqdError, ErrorCode
from dlqd.meta import TrackMeta
from dlqd.model import PRIORITIES, Job, JobStatus, Track, TrackStatus
from dlqd.naming import JobNames
from dlqd.state import job_outcome
from dlqd.store import RecordRefused, Store

log = structlog.get_logger("dlqd.scheduler")


@dataclass(frozen=True)
class ResolvedJob:
    """A job's upstream metadata: display fields and one TrackMeta per track, in order."""

    title: str
    artist: str
    tracks: tuple[TrackMeta, ...]


@dataclass(frozen=True)
class TrackResult:
    path: str
    outcome: str
    bytes: int


@dataclass
class TrackRun:
    """The handle a running track reports through; its fields are live, not journaled."""

    job_id: str
    track: Track
    meta: TrackMeta
    quality: str
    on_progress: Callable[[TrackRun], None]
    names: JobNames = field(default_factory=JobNames)  # shared by the job's tracks

    def attempt_started(self) -> None:
        self.track.attempts += 1
        self.track.bytes_done = 0

    def progress(self, done: int, total: int | None) -> None:
        self.track.bytes_done = done
        if total:
            self.track.bytes_total = total
        self.on_progress(self)


class JobWork(Protocol):
    """What the scheduler asks of the download side (dlqd.worker)."""

    async def resolve(self, job: Job) -> ResolvedJob: ...

    async def run_track(self, run: TrackRun) -> TrackResult: ...


@dataclass
class _RunningJob:
    scope: trio.CancelScope
    finished: trio.Event = field(default_factory=trio.Event)
    handing_out: bool = True  # resolving, or tracks still waiting for a slot


class Scheduler:
    def __init__(
        self,
        store: Store,
        work: JobWork,
        *,
        max_concurrent: int,
        track_timeout_s: float,
        clock: Callable[[], float] = time.time,
        observe_track_seconds: Callable[[float], None] = lambda seconds: None,
    ):
        self.store = store
        self.observe_track_seconds = observe_track_seconds  # the metrics' histogram
        self.work = work
        self.limiter = trio.CapacityLimiter(max_concurrent)
        self.track_timeout_s = track_timeout_s
        self.clock = clock
        self.running: dict[str, _RunningJob] = {}
        self.draining = False
        self.heartbeat = trio.current_time()
        self._nursery: trio.Nursery | None = None
        store.on_rebuild(self._stop_everything)

    # --- the loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self.heartbeat = trio.current_time()
                job = self._next_job() if self._may_start() else None
                if job is None:
                    with trio.move_on_after(5):  # heartbeat for health, not a poll
                        await self.store.wait_changed()
                    continue
                running = _RunningJob(scope=trio.CancelScope())
                self.running[job.id] = running
                nursery.start_soon(self._run_job, job.id, running)
                await trio.lowlevel.checkpoint()

    def _may_start(self) -> bool:
        if self.draining or self.store.state.held:
            return False
        if self.limiter.available_tokens < 1:
            return False
        return not any(r.handing_out for r in self.running.values())

    def _next_job(self) -> Job | None:
        best: Job | None = None
        best_key: tuple[int, int] | None = None
        for job in self.store.state.active_jobs():
            if job.status != JobStatus.QUEUED or job.id in self.running:
                continue
            key = (PRIORITIES.index(job.priority), job.seq)
            if best_key is None or key < best_key:
                best, best_key = job, key
        return best

    @property
    def active_tracks(self) -> int:
        return self.limiter.borrowed_tokens

    # --- one job ------------------------------------------------------------------

    async def _run_job(self, job_id: str, running: _RunningJob) -> None:
        log_ = log.bind(job_id=job_id)
        # Task-local: every line logged below this task (worker, fetch) carries job_id too.
        structlog.contextvars.bind_contextvars(job_id=job_id)
        try:
            with running.scope:
                await self._job_body(job_id, running, log_)
        except DlqdError as exc:  # the journal refused a transition: state was rebuilt
            log_.error("job stopped: journal unavailable", error_code=str(exc.code))
        finally:
            running.handing_out = False
            self.running.pop(job_id, None)
            running.finished.set()
            self.store.notify_changed()

    async def _job_body(
        self, job_id: str, running: _RunningJob, log_: structlog.BoundLogger
    ) -> None:
        store = self.store
        await store.commit({"e": "start", "id": job_id, "at": self.clock()})
        job = store.state.jobs[job_id]
        log_.info("job started", type=job.type, target_id=job.target_id, quality=job.quality)
        try:
            resolved = await self.work.resolve(job)
        except DlqdError as exc:
            running.handing_out = False
            await self._finish(job_id, JobStatus.FAILED, exc.to_dict(), log_)
            return
        if not job.title or [t.track_id for t in job.tracks] != [
            m.track_id for m in resolved.tracks
        ]:
            try:
                await store.commit(_resolve_event(job_id, resolved))
            except RecordRefused as exc:
                running.handing_out = False
                log_.error("upstream metadata cannot be journaled", error=exc.message)
                await self._finish(job_id, JobStatus.FAILED, _unrecordable(exc), log_)
                return
        metas = {m.track_id: m for m in resolved.tracks}
        job = store.state.jobs[job_id]
        # Completed tracks (of an earlier run of this job) keep their names.
        done = (t.path for t in job.tracks if t.status == TrackStatus.COMPLETED and t.path)
        names = JobNames(resolved.tracks, held=done)
        async with trio.open_nursery() as tracks:
            for track in job.tracks:
                if track.status != TrackStatus.PENDING:
                    continue
                await self.limiter.acquire_on_behalf_of(slot := (job_id, track.track_id))
                if self.draining:
                    self.limiter.release_on_behalf_of(slot)
                    break
                meta = metas[track.track_id]
                tracks.start_soon(self._run_track, job, track, meta, names, slot, log_)
            running.handing_out = False
            self.store.notify_changed()
        if self.draining:
            log_.info("job left for re-queueing at shutdown")
            return
        status, error = job_outcome(store.state.jobs[job_id])
        await self._finish(job_id, status, error, log_)

    async def _finish(
        self,
        job_id: str,
        status: JobStatus,
        error: dict[str, str] | None,
        log_: structlog.BoundLogger,
    ) -> None:
        event = {"e": "finish", "id": job_id, "status": str(status), "error": error}
        await self.store.commit({**event, "at": self.clock()})
        log_.info("job finished", status=str(status), error_code=(error or {}).get("code"))

    async def _run_track(
        self,
        job: Job,
        track: Track,
        meta: TrackMeta,
        names: JobNames,
        slot: tuple[str, int],
        log_: structlog.BoundLogger,
    ) -> None:
        log_ = log_.bind(track_id=track.track_id)
        structlog.contextvars.bind_contextvars(track_id=track.track_id)
        run = TrackRun(job.id, track, meta, job.quality, self._publish_progress, names)
        started = trio.current_time()
        try:
            track.status = TrackStatus.DOWNLOADING
            with trio.move_on_after(self.track_timeout_s) as deadline:
                try:
                    result = await self.work.run_track(run)
                except (DlqdError, trio.Cancelled):
                    raise
                except Exception as exc:  # a bug must fail one track, not the daemon
                    log_.exception("internal error in track")
                    raise DlqdError(ErrorCode.INTERNAL_ERROR, f"internal error: {exc!r}") from exc
            if deadline.cancelled_caught:
                raise DlqdError(
                    ErrorCode.TIMEOUT, f"track took longer than {self.track_timeout_s:g} s"
                )
        except DlqdError as exc:
            log_.warning("track failed", error_code=str(exc.code), error=exc.message)
            await self._record_track(job.id, track, _track_failed(job.id, track, exc.to_dict()))
        else:
            self.observe_track_seconds(trio.current_time() - started)
            log_.info("track finished", outcome=result.outcome, path=result.path)
            event = {
                "e": "track_done",
                "id": job.id,
                "track_id": track.track_id,
                "path": result.path,
                "outcome": result.outcome,
                "bytes": result.bytes,
                "attempts": track.attempts,
            }
            await self._record_track(job.id, track, event)
        finally:
            if track.status == TrackStatus.DOWNLOADING:
                track.status = TrackStatus.PENDING
            self.limiter.release_on_behalf_of(slot)
            self.store.notify_changed()

    async def _record_track(self, job_id: str, track: Track, event: dict[str, object]) -> None:
        """Journal a track's outcome; nothing raised here may leave the job's nursery.

        A refused record fails the track instead (its fixed message always encodes);
        a journal that cannot write has already rolled back and stopped the job.
        """
        try:
            try:
                await self.store.commit(event)
            except RecordRefused as exc:
                log.error("track outcome cannot be journaled", job_id=job_id, error=exc.message)
                await self.store.commit(_track_failed(job_id, track, _unrecordable(exc)))
        except DlqdError as exc:
            log.error("track outcome lost: journal unavailable", error_code=str(exc.code))

    def _publish_progress(self, run: TrackRun) -> None:
        self.store.publish(
            {
                "event": "progress",
                "job_id": run.job_id,
                "track_id": run.track.track_id,
                "bytes_done": run.track.bytes_done,
                "bytes_total": run.track.bytes_total,
            }
        )

    # --- control ------------------------------------------------------------------

    async def stop_job(self, job_id: str) -> None:
        """Cancel a running job in flight and wait until its tasks have cleaned up."""
        running = self.running.get(job_id)
        if running is None:
            return
        running.scope.cancel()
        await running.finished.wait()

    async def drain(self, grace_s: float) -> list[str]:
        """Start nothing new; let running tracks finish within `grace_s`; stop the rest.

        Returns the ids of jobs left `processing`, which the caller re-queues.
        """
        self.draining = True
        self.store.notify_changed()
        with trio.move_on_after(grace_s):
            while self.active_tracks:  # a job still resolving has nothing worth waiting for
                await self.store.wait_changed()
        for job_id in list(self.running):
            await self.stop_job(job_id)
        jobs = self.store.state.active_jobs()
        return [job.id for job in jobs if job.status == JobStatus.PROCESSING]

    def _stop_everything(self) -> None:
        """After a journal rollback: running work may belong to undone events."""
        for running in self.running.values():
            running.scope.cancel()


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


def _resolve_event(job_id: str, resolved: ResolvedJob) -> dict[str, object]:
    return {
        "e": "resolve",
        "id": job_id,
        "title": resolved.title,
        "artist": resolved.artist,
        "tracks": [
            [m.track_id, m.display_title, m.disc_number, m.track_number] for m in resolved.tracks
        ],
    }
