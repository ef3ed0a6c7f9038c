"""Debug hooks: deliberate faults for tests and for operators trying their set-up.

Nothing here runs unless the daemon's environment has `DLQD_DEBUG_HOOKS=1`
(the shipped unit never sets it); docs/operations.md ("Debug hooks") lists
what each hook does. Three hooks:
- SIGUSR1 blocks the event loop for `DLQD_DEBUG_BLOCK_S` seconds, so the
  watchdog pings stop (`block_loop_on_sigusr1`);
- `DLQD_DEBUG_FAIL_TRACK=<track id>[,…]` makes those tracks raise an
  unexpected exception once their first bytes arrive — a stand-in for a bug
  inside one track, which must fail that track with INTERNAL_ERROR while the
  daemon goes on (`FailingTrackWork`);
- `DLQD_DEBUG_STALL_LAST_STEP=<path>` makes the last step of every
  playlist and mix job (its M3U8 write) wait, in a worker thread, for as
  long as that file exists — a stand-in for a share that stops answering, which must not hold
  up other jobs, a cancel or a shutdown (`StallingLastStepWork`).
This module never changes what dlqd does without those variables.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from pathlib import Path

import structlog
import trio

from dlqd.meta import TrackMeta
from dlqd.model import LISTING_TYPES, Job
from dlqd.scheduler import JobWork, ResolvedJob, TrackResult, TrackRun
from dlqd.source import Discography

log = structlog.get_logger("dlqd.debug")


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get("DLQD_DEBUG_HOOKS") == "1"


async def block_loop_on_sigusr1(
    block_s: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """SIGUSR1 blocks the event loop for `block_s` seconds.

    A deliberately stuck loop, so tests (and operators trying WatchdogSec=)
    can see the watchdog pings stop. `time.sleep` on purpose: it holds the loop.
    """
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        task_status.started()
        async for _ in signals:
            log.warning("debug hook: blocking the event loop", seconds=block_s)
            time.sleep(block_s)
            log.warning("debug hook: event loop released")


class InjectedFault(RuntimeError):
    """The unexpected exception `FailingTrackWork` raises: deliberately not a DlqdError."""


class FailingTrackWork:
    """A `JobWork` that behaves like the one it wraps, except that the named tracks hit a bug.

    The fault is raised from the track's progress report, deep inside the
    transfer, after its temp file exists: the path a real bug would take.
    """

    def __init__(self, work: JobWork, track_ids: frozenset[int]):
        self.work = work
        self.track_ids = track_ids

    async def resolve(self, job: Job) -> ResolvedJob:
        return await self.work.resolve(job)

    async def discography(self, job: Job) -> Discography:
        return await self.work.discography(job)

    async def before_finish(self, job: Job, metas: Mapping[int, TrackMeta]) -> str | None:
        return await self.work.before_finish(job, metas)

    async def run_track(self, run: TrackRun) -> TrackResult:
        if run.track.track_id in self.track_ids:
            report = run.on_progress

            def fail_after_first_bytes(progressing: TrackRun) -> None:
                report(progressing)
                raise InjectedFault(f"debug hook: a bug in track {progressing.track.track_id}")

            run.on_progress = fail_after_first_bytes
        return await self.work.run_track(run)


STALL_POLL_S = 0.05  # how often a stalled last step looks for its file again


def _wait_while_exists(path: Path) -> None:
    while path.exists():
        time.sleep(STALL_POLL_S)


class StallingLastStepWork:
    """A `JobWork` like the one it wraps, but a playlist's or mix's last step first waits on a file.

    The wait runs in a worker thread that a stop abandons, as the real
    playlist write does: a blocked filesystem call, not an event-loop sleep.
    """

    def __init__(self, work: JobWork, stall_file: Path):
        self.work = work
        self.stall_file = stall_file

    async def resolve(self, job: Job) -> ResolvedJob:
        return await self.work.resolve(job)

    async def discography(self, job: Job) -> Discography:
        return await self.work.discography(job)

    async def run_track(self, run: TrackRun) -> TrackResult:
        return await self.work.run_track(run)

    async def before_finish(self, job: Job, metas: Mapping[int, TrackMeta]) -> str | None:
        if job.type in LISTING_TYPES and self.stall_file.exists():
            log.warning("debug hook: last step stalled", job_id=job.id, file=str(self.stall_file))
            await trio.to_thread.run_sync(
                _wait_while_exists, self.stall_file, abandon_on_cancel=True
            )
        return await self.work.before_finish(job, metas)


def with_debug_faults(work: JobWork, environ: Mapping[str, str]) -> JobWork:
    """`work`, wrapped in `FailingTrackWork` and `StallingLastStepWork` as the variables ask."""
    stall_file = environ.get("DLQD_DEBUG_STALL_LAST_STEP", "")
    if stall_file:
        log.warning("debug hook: last steps stall while this file exists", file=stall_file)
        work = StallingLastStepWork(work, Path(stall_file))
    parts = [part.strip() for part in environ.get("DLQD_DEBUG_FAIL_TRACK", "").split(",")]
    track_ids = frozenset(int(part) for part in parts if part.isdigit())
    if any(part and not part.isdigit() for part in parts):
        log.warning("debug hook: DLQD_DEBUG_FAIL_TRACK holds something not a track id; ignored")
    if not track_ids:
        return work
    log.warning("debug hook: these tracks will fail with a bug", track_ids=sorted(track_ids))
    return FailingTrackWork(work, track_ids)
