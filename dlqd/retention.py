"""Retention: finished jobs past their age leave the queue (the library is untouched).

`expired_job_ids` is the pure rule; `run_retention` applies it on a schedule,
journaling one `expire` record per sweep and logging the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
import trio

from dlqd.model import JobStatus
from dlqd.state import QueueState, awaited_children
from dlqd.store import Store

log = structlog.get_logger("dlqd.retention")


def expired_job_ids(
    state: QueueState, now: float, completed_h: float, failed_h: float
) -> list[str]:
    """Completed jobs older than `completed_h`; failed, partial and cancelled older than `failed_h`.

    A retention of 0 hours keeps jobs forever; a job an active artist job
    waits on stays until that job finishes (its outcome is part of it).
    """
    expired = []
    awaited = awaited_children(state)
    for job in state.jobs.values():
        if job.finished_at is None or job.id in awaited:
            continue
        if job.status == JobStatus.COMPLETED:
            hours = completed_h
        elif job.status in (JobStatus.FAILED, JobStatus.PARTIAL, JobStatus.CANCELLED):
            hours = failed_h
        else:
            continue
        if hours > 0 and now - job.finished_at >= hours * 3600:
            expired.append(job.id)
    return expired


async def run_retention(
    store: Store,
    *,
    completed_h: float,
    failed_h: float,
    interval_s: float,
    clock: Callable[[], float] = time.time,
) -> None:
    while True:
        ids = expired_job_ids(store.state, clock(), completed_h, failed_h)
        if ids:
            await store.commit({"e": "expire", "ids": ids})
        log.info("retention sweep", removed=len(ids))
        await trio.sleep(interval_s)
