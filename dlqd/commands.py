"""What each control command does to the queue (DESIGN §4), given validated arguments.

A handler checks the request against the live state, journals at most one
event through the store, and returns the protocol `result`. Refusals raise
`DlqdError` with a client code and change nothing. Framing, peer checks and
rate limits belong to `dlqd.control`; in-flight cancellation to the scheduler.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dlqd import __version__
from dlqd.codes import PERMANENT_CODES
from dlqd.errors import DlqdError, ErrorCode
from dlqd.model import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    RETRYABLE_STATUSES,
    Job,
    JobStatus,
    TrackStatus,
)
from dlqd.protocol import LIST_DEFAULT_LIMIT
from dlqd.scheduler import Scheduler
from dlqd.store import Store

Handler = Callable[["CommandContext", dict[str, Any]], Awaitable[Any]]


@dataclass
class CommandContext:
    """What handlers may use: the queue, the scheduler and a few daemon facts."""

    store: Store
    scheduler: Scheduler
    max_queue: int
    started_monotonic: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = time.time
    shutting_down: bool = False
    health_checks: Callable[[], dict[str, Any]] = dict
    metrics_text: Callable[[], str] = str
    metrics_families: Callable[[], list[dict[str, Any]]] = list
    metrics_summary: Callable[[], dict[str, Any]] = dict


def _get_job(ctx: CommandContext, job_id: str) -> Job:
    job = ctx.store.state.jobs.get(job_id)
    if job is None:
        raise DlqdError(ErrorCode.NOT_FOUND, f"no job with id {job_id!r}")
    return job


def _refuse_state(job: Job, action: str) -> DlqdError:
    return DlqdError(ErrorCode.INVALID_STATE, f"cannot {action} job {job.id}: it is {job.status}")


def _check_accepting(ctx: CommandContext) -> None:
    if ctx.shutting_down:
        raise DlqdError(ErrorCode.SHUTTING_DOWN, "dlqd is shutting down; try again after restart")


def _check_room(ctx: CommandContext) -> None:
    if ctx.store.state.active_count >= ctx.max_queue:
        raise DlqdError(
            ErrorCode.QUEUE_FULL,
            f"the queue holds {ctx.max_queue} active jobs (limits.max_queue); wait or cancel some",
        )


async def submit(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    _check_accepting(ctx)
    key = (args["type"], args["target_id"], args["quality"])
    existing = ctx.store.state.active_job_for(key)
    if existing is not None:
        return {"id": existing.id, "created": False}
    _check_room(ctx)
    job_id = str(ctx.store.state.next_seq)
    event = {
        "e": "submit",
        "id": job_id,
        "type": args["type"],
        "target_id": args["target_id"],
        "quality": args["quality"],
        "priority": args.get("priority", "normal"),
        "at": ctx.clock(),
    }
    await ctx.store.commit(event)
    return {"id": job_id, "created": True}


async def list_jobs(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """One page: the newest `limit` matching jobs older than `before`, oldest first.

    `next` (present only when older matching jobs remain) is the oldest job of
    this page: passed back as `before`, it walks on toward the oldest job. Jobs
    submitted meanwhile are newer than any cursor, so a walk never repeats one.
    """
    wanted = frozenset(args.get("status") or ())
    limit: int = args.get("limit", LIST_DEFAULT_LIMIT)
    before = args.get("before")
    page: list[Job] = []
    more = False
    for job in _newest_first(ctx.store.state.jobs, None if before is None else int(before)):
        if wanted and job.status not in wanted:
            continue
        if len(page) == limit:
            more = True
            break
        page.append(job)
    page.reverse()
    result: dict[str, Any] = {"jobs": [job.to_wire() for job in page]}
    if more:
        result["next"] = page[0].id
    return result


def _newest_first(jobs: dict[str, Job], before_seq: int | None) -> Iterator[Job]:
    """Jobs from the newest down, starting below `before_seq` when given.

    `jobs` is kept oldest first (by `seq`), so the start is found by bisection:
    a page costs what it returns plus one copy of the id list, never a walk
    over the jobs it skips.
    """
    if before_seq is None:
        return reversed(jobs.values())
    ids = list(jobs)
    end = bisect_left(ids, before_seq, key=lambda job_id: jobs[job_id].seq)
    return (jobs[ids[index]] for index in range(end - 1, -1, -1))


async def get(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"job": _get_job(ctx, args["id"]).to_wire()}


async def cancel(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    job = _get_job(ctx, args["id"])
    if job.status not in ACTIVE_STATUSES:
        raise _refuse_state(job, "cancel")
    async with ctx.scheduler.stopped(job.id):  # entered once temp files are gone
        job = _get_job(ctx, args["id"])
        if job.status not in ACTIVE_STATUSES:  # it finished while being stopped
            raise _refuse_state(job, "cancel")
        await ctx.store.commit({"e": "cancel", "id": job.id, "at": ctx.clock()})
    return {"job": job.to_wire()}


async def retry(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    _check_accepting(ctx)
    job = _get_job(ctx, args["id"])
    if job.status not in RETRYABLE_STATUSES:
        raise _refuse_state(job, "retry")
    twin = ctx.store.state.active_job_for(job.dedupe_key)
    if twin is not None:
        raise DlqdError(
            ErrorCode.INVALID_STATE, f"an identical job {twin.id} is already {twin.status}"
        )
    _check_room(ctx)
    warning = _retry_warning(job)  # read before the retry clears the errors
    await ctx.store.commit({"e": "retry", "id": job.id, "at": ctx.clock()})
    result: dict[str, Any] = {"job": job.to_wire()}
    if warning is not None:
        result["warning"] = warning
    return result


def _retry_warning(job: Job) -> str | None:
    """A hint when what the retry re-runs failed on the upstream's final answer."""
    errors = [t.error for t in job.tracks if t.status == TrackStatus.FAILED and t.error]
    if not errors and job.error is not None:
        errors = [job.error]  # failed before its tracks were known
    permanent = [error for error in errors if error.get("code") in PERMANENT_CODES]
    if not permanent:
        return None
    first = permanent[0]
    which = "it failed" if len(errors) == 1 else f"{len(permanent)} of its failed tracks failed"
    return (
        f"{which} on the upstream's final answer ({first['code']}: {first['message']}); "
        "a retry will most likely fail the same way unless the upstream's catalog changed"
    )


async def remove(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    job = _get_job(ctx, args["id"])
    if job.status not in FINISHED_STATUSES:
        raise _refuse_state(job, "remove")
    await ctx.store.commit({"e": "remove", "id": job.id})
    return {"removed": job.id}


async def pause(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    if "id" not in args:
        if not ctx.store.state.held:
            await ctx.store.commit({"e": "hold"})
        return {}
    job = _get_job(ctx, args["id"])
    if job.status == JobStatus.PAUSED:
        return {}
    if job.status not in (JobStatus.QUEUED, JobStatus.PROCESSING):
        raise _refuse_state(job, "pause")
    async with ctx.scheduler.stopped(job.id):
        if job.status not in (JobStatus.QUEUED, JobStatus.PROCESSING):
            raise _refuse_state(job, "pause")
        await ctx.store.commit({"e": "pause", "id": job.id})
    return {}


async def resume(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    if "id" not in args:
        if ctx.store.state.held:
            await ctx.store.commit({"e": "release"})
        return {}
    job = _get_job(ctx, args["id"])
    if job.status in FINISHED_STATUSES:
        raise _refuse_state(job, "resume")
    if job.status == JobStatus.PAUSED:
        await ctx.store.commit({"e": "resume", "id": job.id})
    return {}


def queue_counts(ctx: CommandContext) -> dict[str, int]:
    state = ctx.store.state
    return {**state.status_counts(), "total": len(state.jobs)}


async def stats(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    scheduler = ctx.scheduler
    return {
        "queue": queue_counts(ctx),
        "worker": {
            "running": scheduler.running,
            "active_tracks": scheduler.active_tracks,
            "max_concurrent": int(scheduler.limiter.total_tokens),
        },
        "holds": [hold.to_wire() for hold in scheduler.holds.active()],
        "metrics": ctx.metrics_summary(),
        "journal": ctx.store.journal_stats(),
    }


async def health(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    checks = ctx.health_checks()
    problems = [name for name, check in checks.items() if not check.get("ok", True)]
    notes = [f"{name}: {check['note']}" for name, check in checks.items() if "note" in check]
    return {
        "ok": not problems,
        "version": __version__,
        "uptime_s": round(time.monotonic() - ctx.started_monotonic, 3),
        "problems": problems,
        "notes": notes,
        "checks": checks,
    }


async def metrics(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"text": ctx.metrics_text(), "families": ctx.metrics_families()}


HANDLERS: dict[str, Handler] = {
    "submit": submit,
    "list": list_jobs,
    "get": get,
    "cancel": cancel,
    "retry": retry,
    "remove": remove,
    "pause": pause,
    "resume": resume,
    "stats": stats,
    "health": health,
    "metrics": metrics,
}
