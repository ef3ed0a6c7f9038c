"""Debug hooks: deliberate faults for tests and for operators trying their set-up.

Nothing here runs unless the daemon's environment has `DLQD_DEBUG_HOOKS=1`
(the shipped unit never sets it); docs/operations.md ("Debug hooks") lists
what each hook does. Two hooks:
- SIGUSR1 blocks the event loop for `DLQD_DEBUG_BLOCK_S` seconds, so the
  watchdog pings stop (`block_loop_on_sigusr1`);
- `DLQD_DEBUG_FAIL_TRACK=<track id>[,…]` makes those tracks raise an
  unexpected exception once their first bytes arrive — a stand-in for a bug
  inside one track, which must fail that track with INTERNAL_ERROR while the
  daemon goes on (`FailingTrackWork`).
This module never changes what dlqd does without those variables.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping

import structlog
import trio

from dlqd.meta import TrackMeta
from dlqd.model import Job
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


def with_debug_faults(work: JobWork, environ: Mapping[str, str]) -> JobWork:
    """`work`, wrapped in `FailingTrackWork` when DLQD_DEBUG_FAIL_TRACK names tracks."""
    parts = [part.strip() for part in environ.get("DLQD_DEBUG_FAIL_TRACK", "").split(",")]
    track_ids = frozenset(int(part) for part in parts if part.isdigit())
    if any(part and not part.isdigit() for part in parts):
        log.warning("debug hook: DLQD_DEBUG_FAIL_TRACK holds something not a track id; ignored")
    if not track_ids:
        return work
    log.warning("debug hook: these tracks will fail with a bug", track_ids=sorted(track_ids))
    return FailingTrackWork(work, track_ids)
