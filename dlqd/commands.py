"""What each control command does to the queue (DESIGN §4), given validated arguments.

A handler checks the request against the live state, journals its events
through the store in one commit, and returns the protocol `result`. Refusals
raise `DlqdError` with a client code and change nothing. A command on an
artist job reaches the album jobs it queued (`parent` = it): cancel, pause,
resume and priority cascade to them, retry re-queues its children that did
not complete; a job an active artist job waits on cannot be removed. Framing, peer checks and
rate limits belong to `dlqd.control`; in-flight cancellation to the scheduler.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

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
from dlqd.picking import moved_ranks, ranks_behind
from dlqd.protocol import LIST_DEFAULT_LIMIT
from dlqd.scheduler import Scheduler
from dlqd.state import Event, QueueState, awaited_children, is_expanded, waiting_status
from dlqd.store import Store
from dlqd.summary import job_summary

log = structlog.get_logger("dlqd.commands")

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
    force_upstream: Callable[[], None] = lambda: None  # `resume --force`: probe now, end a 429 hold


def _get_job(ctx: CommandContext, job_id: str) -> Job:
    job = ctx.store.state.jobs.get(job_id)
    if job is None:
        raise DlqdError(ErrorCode.NOT_FOUND, f"no job with id {job_id!r}")
    return job


WIRE_BATCH = 250  # job objects rendered between checkpoints of a `list` (~2.5 ms)


class _Live:
    """What the job object needs beyond the job: run-order positions and speeds, read once."""

    def __init__(self, ctx: CommandContext) -> None:
        self.state = ctx.store.state
        order = ctx.store.state.run_order()
        self.positions = {job.id: place for place, job in enumerate(order, start=1)}
        self.speeds = ctx.scheduler.speeds()

    async def wire_all(self, jobs: Iterable[Job]) -> list[dict[str, Any]]:
        """Job objects of a page, letting other requests in every `WIRE_BATCH` jobs.

        A 5,000-job page takes tens of milliseconds to render; `health` and
        the other clients must not wait for all of it.
        """
        wired = []
        for index, job in enumerate(jobs, start=1):
            wired.append(self.wire(job))
            if index % WIRE_BATCH == 0:
                await trio.lowlevel.checkpoint()
        return wired

    def wire(self, job: Job) -> dict[str, Any]:
        if job.type != "artist":
            speed = self.speeds.get(job.id, 0)
            return job.to_wire(speed_bps=speed, position=self.positions.get(job.id))
        children = self.state.children_of(job)
        speed = sum(self.speeds.get(child.id, 0) for child in children)
        return job.to_wire(speed_bps=speed, position=self.positions.get(job.id), children=children)


def _wire(ctx: CommandContext, job: Job) -> dict[str, Any]:
    return _Live(ctx).wire(job)


RUNNABLE = (JobStatus.QUEUED, JobStatus.PROCESSING)  # what `pause` takes


def _refuse_state(job: Job, action: str) -> DlqdError:
    return DlqdError(ErrorCode.INVALID_STATE, f"cannot {action} job {job.id}: it is {job.status}")


def _own_children(state: QueueState, job: Job, statuses: Iterable[JobStatus]) -> list[Job]:
    """The album jobs an artist job queued itself (not those taken by reference), in `statuses`."""
    wanted = frozenset(statuses)
    children = (state.jobs.get(child_id) for child_id in job.children)
    return [c for c in children if c is not None and c.parent == job.id and c.status in wanted]


def _awaiting_artist(state: QueueState, job: Job) -> Job | None:
    """The active artist job that waits on `job`, if any."""
    return next(
        (
            artist
            for artist in state.active_jobs()
            if artist.type == "artist" and job.id in artist.children
        ),
        None,
    )


def _check_accepting(ctx: CommandContext) -> None:
    if ctx.shutting_down:
        raise DlqdError(ErrorCode.SHUTTING_DOWN, "dlqd is shutting down; try again after restart")


def _check_room(ctx: CommandContext) -> None:
    if ctx.store.state.active_count >= ctx.max_queue:
        raise _queue_full(ctx)


def _queue_full(ctx: CommandContext) -> DlqdError:
    return DlqdError(
        ErrorCode.QUEUE_FULL,
        f"the queue holds {ctx.max_queue} active jobs (limits.max_queue); wait or cancel some",
    )


async def submit(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    if "items" in args:
        return await _submit_many(ctx, args["items"])
    _check_accepting(ctx)
    key = (args["type"], args["target_id"], args["quality"])
    existing = ctx.store.state.active_job_for(key)
    if existing is not None:
        return {"id": existing.id, "created": False}
    _check_room(ctx)
    job_id = str(ctx.store.state.next_seq)
    await ctx.store.commit(_submit_event(ctx, job_id, args))
    return {"id": job_id, "created": True}


async def _submit_many(ctx: CommandContext, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Each item as `submit` would take it, each seeing the ones before; one journal batch."""
    state = ctx.store.state
    batch = _Batch()
    created: dict[tuple[str, int | str, str], str] = {}  # by this request
    room = ctx.max_queue - state.active_count
    next_seq = state.next_seq
    for item in items:
        entry: dict[str, Any] = {"type": item["type"], "target_id": item["target_id"]}
        key = (item["type"], item["target_id"], item["quality"])
        try:
            _check_accepting(ctx)
            existing = state.active_job_for(key)
            if existing is not None:
                batch.answer(entry, {"id": existing.id, "created": False})
            elif key in created:
                batch.answer(entry, {"id": created[key], "created": False}, needs_commit=True)
            else:
                if room <= 0:
                    raise _queue_full(ctx)
                created[key] = job_id = str(next_seq)
                next_seq, room = next_seq + 1, room - 1
                batch.events.append(_submit_event(ctx, job_id, item))
                batch.answer(entry, {"id": job_id, "created": True}, needs_commit=True)
        except DlqdError as exc:
            batch.refuse(entry, exc)
    await batch.commit(ctx)
    return batch.result()


def _submit_event(ctx: CommandContext, job_id: str, item: dict[str, Any]) -> Event:
    event: Event = {
        "e": "submit",
        "id": job_id,
        "type": item["type"],
        "target_id": item["target_id"],
        "quality": item["quality"],
        "priority": item.get("priority", "normal"),
        "at": ctx.clock(),
    }
    if "include" in item:  # artist jobs; validated and defaulted by the protocol
        event["include"] = list(item["include"])
    return event


@dataclass
class _Batch:
    """A batch command's answer entries, in order, and the events they wait on.

    Every accepted item's event goes into one `store.commit`: all are durable
    together, or every entry that waited on them says JOURNAL_UNAVAILABLE.
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    _waiting: list[dict[str, Any]] = field(default_factory=list)  # entries needing the commit

    def answer(
        self, entry: dict[str, Any], fields: dict[str, Any], *, needs_commit: bool = False
    ) -> None:
        entry.update(ok=True, **fields)
        self.entries.append(entry)
        if needs_commit:
            self._waiting.append(entry)

    def refuse(self, entry: dict[str, Any], exc: DlqdError) -> None:
        entry.update(ok=False, error=exc.to_dict())
        self.entries.append(entry)

    async def commit(self, ctx: CommandContext) -> None:
        if not self.events:
            return
        try:
            await ctx.store.commit(*self.events)
        except DlqdError as exc:
            for entry in self._waiting:  # what names the item stays; the rest did not happen
                names = ("type", "target_id") if "type" in entry else ("id",)
                kept = {name: entry[name] for name in names}
                entry.clear()
                entry.update(kept, ok=False, error=exc.to_dict())

    def result(self) -> dict[str, Any]:
        return {"results": self.entries}


def _job_entry(job: Job, status: str | None = None) -> dict[str, Any]:
    """The ok entry of a batch cancel/retry/remove: the job's status, title and artist."""
    return {"status": status or str(job.status), "title": job.title, "artist": job.artist}


def _selected(
    ctx: CommandContext, args: dict[str, Any], flag: str, statuses: Iterable[str]
) -> list[str]:
    """The job ids a batch form names: `ids` as given, or every job in `statuses` (id order)."""
    if "ids" in args:
        return list(args["ids"])
    wanted = frozenset(statuses)
    assert args.get(flag) is True, f"the protocol lets through only ids or {flag}"
    return [job.id for job in ctx.store.state.jobs.values() if job.status in wanted]


async def list_jobs(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """One page: the newest `limit` matching jobs older than `before`, oldest first.

    With `order: "run"`: the whole queue (active jobs, bounded by max_queue) in run order.

    `next` (present only when older matching jobs remain) is the oldest job of
    this page: passed back as `before`, it walks on toward the oldest job. Jobs
    submitted meanwhile are newer than any cursor, so a walk never repeats one.
    """
    wanted = frozenset(args.get("status") or ())
    live = _Live(ctx)
    if args.get("order") == "run":
        queue = ctx.store.state.run_order()
        return {"jobs": await live.wire_all(j for j in queue if not wanted or j.status in wanted)}
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
    result: dict[str, Any] = {"jobs": await live.wire_all(page)}
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
    return {"job": _wire(ctx, _get_job(ctx, args["id"]))}


async def cancel(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    if "id" not in args:
        return await _cancel_many(ctx, _selected(ctx, args, "all", ACTIVE_STATUSES))
    job = _get_job(ctx, args["id"])
    if job.status not in ACTIVE_STATUSES:
        raise _refuse_state(job, "cancel")
    async with AsyncExitStack() as stopped:  # entered once temp files are gone
        await _stop_with_children(ctx, stopped, [job.id])
        job = _get_job(ctx, args["id"])
        if job.status not in ACTIVE_STATUSES:  # it finished while being stopped
            raise _refuse_state(job, "cancel")
        cascaded = _own_children(ctx.store.state, job, ACTIVE_STATUSES)
        now = ctx.clock()
        await ctx.store.commit(
            *({"e": "cancel", "id": child.id, "at": now} for child in cascaded),
            {"e": "cancel", "id": job.id, "at": now},
        )
    for cancelled in [*cascaded, job]:
        _log_cancelled(ctx, cancelled)
    return {"job": _wire(ctx, job)}


async def _stop_with_children(ctx: CommandContext, stack: AsyncExitStack, ids: list[str]) -> None:
    """Stop the named jobs in flight, then the active album jobs the artist jobs among them queued.

    The artists are stopped first, so an expansion under way has either committed
    (its children are then stopped too) or will not happen.
    """
    for job_id in ids:
        await stack.enter_async_context(ctx.scheduler.stopped(job_id))
    for job_id in ids:
        job = ctx.store.state.jobs.get(job_id)
        if job is not None and job.type == "artist":
            for child in _own_children(ctx.store.state, job, ACTIVE_STATUSES):
                await stack.enter_async_context(ctx.scheduler.stopped(child.id))


def _log_cancelled(ctx: CommandContext, job: Job) -> None:
    summary = job_summary(job, ctx.store.state.children_of(job))
    log.info("job cancelled", job_id=job.id, summary=summary)


async def _cancel_many(ctx: CommandContext, ids: list[str]) -> dict[str, Any]:
    """Stop every named active job's running tracks, then cancel them all in one batch."""
    jobs = ctx.store.state.jobs
    to_stop = [i for i in ids if i in jobs and jobs[i].status in ACTIVE_STATUSES]
    batch = _Batch()
    cancelled: list[str] = []  # by this batch, cascaded children included
    async with AsyncExitStack() as stopped:
        await _stop_with_children(ctx, stopped, to_stop)
        state = ctx.store.state
        for job_id in ids:
            entry: dict[str, Any] = {"id": job_id}
            try:
                job = _get_job(ctx, job_id)
                if job_id not in cancelled and job.status not in ACTIVE_STATUSES:
                    raise _refuse_state(job, "cancel")  # finished already, or while being stopped
            except DlqdError as exc:
                batch.refuse(entry, exc)
                continue
            for target in [*_own_children(state, job, ACTIVE_STATUSES), job]:
                if target.id not in cancelled:
                    cancelled.append(target.id)
                    batch.events.append({"e": "cancel", "id": target.id, "at": ctx.clock()})
            batch.answer(entry, _job_entry(job, str(JobStatus.CANCELLED)), needs_commit=True)
        await batch.commit(ctx)
    for job_id in cancelled:
        done = ctx.store.state.jobs.get(job_id)  # a failed commit rebuilt the state
        if done is not None and done.status == JobStatus.CANCELLED:
            _log_cancelled(ctx, done)
    return batch.result()


async def retry(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    if "id" not in args:
        return await _retry_many(ctx, _selected(ctx, args, "failed", RETRYABLE_STATUSES))
    _check_accepting(ctx)
    job = _get_job(ctx, args["id"])
    room = ctx.max_queue - ctx.store.state.active_count
    events = _retry_events(ctx, job, {}, room)
    warning = _retry_warning(job)  # read before the retry clears the errors
    await ctx.store.commit(*events)
    result: dict[str, Any] = {"job": _wire(ctx, job)}
    if warning is not None:
        result["warning"] = warning
    return result


def _retry_events(
    ctx: CommandContext, job: Job, retried: dict[tuple[str, int | str, str], str], room: int
) -> list[Event]:
    """The records that retry `job`, each making one job active; refusals raise.

    `retried` holds the jobs this request retries already, by dedupe key; the
    ones these records retry are added. An expanded artist job runs again
    without reading its discography: its children that did not complete are
    retried with it (one already active again, or with an identical active job,
    is waited on as it is), children removed since are dropped from its list.
    """
    state = ctx.store.state
    if job.status not in RETRYABLE_STATUSES:
        raise _refuse_state(job, "retry")
    twin_id = _active_twin(state, job, retried)
    if twin_id is not None:
        twin = state.jobs[twin_id]  # retried by this request when it is not active yet
        twin_status = twin.status if twin.status in ACTIVE_STATUSES else JobStatus.QUEUED
        raise DlqdError(
            ErrorCode.INVALID_STATE, f"an identical job {twin_id} is already {twin_status}"
        )
    now = ctx.clock()
    events: list[Event] = []
    record: Event = {"e": "retry", "id": job.id, "at": now}
    newly: dict[tuple[str, int | str, str], str] = {job.dedupe_key: job.id}
    if is_expanded(job):
        children = []
        for child_id in job.children:
            child = state.jobs.get(child_id)
            if child is None:
                continue
            if child.status in RETRYABLE_STATUSES and child_id not in retried.values():
                child_twin = _active_twin(state, child, {**retried, **newly})
                if child_twin is not None:
                    children.append(child_twin)
                    continue
                newly[child.dedupe_key] = child.id
                events.append({"e": "retry", "id": child.id, "at": now})
            children.append(child_id)
        if children != job.children:
            record["children"] = children
    events.append(record)
    if len(events) > room:
        raise _queue_full(ctx)
    retried.update(newly)
    return events


def _active_twin(
    state: QueueState, job: Job, retried: dict[tuple[str, int | str, str], str]
) -> str | None:
    """An active job identical to `job` (or one this request retries), other than `job`."""
    twin = state.active_job_for(job.dedupe_key)
    twin_id = twin.id if twin is not None else retried.get(job.dedupe_key)
    return twin_id if twin_id != job.id else None


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


async def _retry_many(ctx: CommandContext, ids: list[str]) -> dict[str, Any]:
    """Each job as `retry` would take it, each seeing the ones before; one journal batch."""
    state = ctx.store.state
    batch = _Batch()
    retried: dict[tuple[str, int | str, str], str] = {}  # by this request, children included
    room = ctx.max_queue - state.active_count
    for job_id in ids:
        entry: dict[str, Any] = {"id": job_id}
        try:
            _check_accepting(ctx)
            job = _get_job(ctx, job_id)
            if retried.get(job.dedupe_key) == job.id:  # a child its artist job retried above
                batch.answer(entry, _job_entry(job, str(JobStatus.QUEUED)), needs_commit=True)
                continue
            events = _retry_events(ctx, job, retried, room)
        except DlqdError as exc:
            batch.refuse(entry, exc)
            continue
        room -= len(events)
        fields = _job_entry(job, str(waiting_status(job)))
        warning = _retry_warning(job)  # read before the retry clears the errors
        if warning is not None:
            fields["warning"] = warning
        batch.events.extend(events)
        batch.answer(entry, fields, needs_commit=True)
    await batch.commit(ctx)
    return batch.result()


async def remove(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    if "id" not in args:
        statuses = args.get("status") or FINISHED_STATUSES
        selected = _selected(ctx, args, "finished", statuses)
        if "ids" not in args:  # `--finished` leaves the children of running artist jobs be
            awaited = awaited_children(ctx.store.state)
            selected = [job_id for job_id in selected if job_id not in awaited]
        return await _remove_many(ctx, selected)
    job = _get_job(ctx, args["id"])
    _check_removable(ctx.store.state, job)
    await ctx.store.commit({"e": "remove", "id": job.id})
    return {"removed": job.id}


def _check_removable(state: QueueState, job: Job) -> None:
    """A finished job no active artist job waits on (its outcome is part of that job's)."""
    if job.status not in FINISHED_STATUSES:
        raise _refuse_state(job, "remove")
    artist = _awaiting_artist(state, job)
    if artist is not None:
        raise DlqdError(
            ErrorCode.INVALID_STATE,
            f"cannot remove job {job.id}: artist job {artist.id} waits on it until it finishes",
        )


async def _remove_many(ctx: CommandContext, ids: list[str]) -> dict[str, Any]:
    batch = _Batch()
    for job_id in ids:
        entry: dict[str, Any] = {"id": job_id}
        try:
            job = _get_job(ctx, job_id)
            _check_removable(ctx.store.state, job)
        except DlqdError as exc:
            batch.refuse(entry, exc)
            continue
        batch.events.append({"e": "remove", "id": job.id})
        batch.answer(entry, _job_entry(job), needs_commit=True)
    await batch.commit(ctx)
    return batch.result()


async def move(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """A job's place among the active jobs of its priority: top, bottom, up, down.

    An artist job moves with the active album jobs it queued, as one block:
    the artist takes its place among the other jobs, its albums (in their
    order) the ranks between it and the next job.
    """
    job = _get_job(ctx, args["id"])
    if job.status not in ACTIVE_STATUSES:
        raise _refuse_state(job, "move")
    state = ctx.store.state
    block = sorted(_own_children(state, job, ACTIVE_STATUSES), key=lambda child: child.run_key)
    in_block = {child.id for child in block}
    others = [other for other in state.run_order() if other.id not in in_block]
    ranks = moved_ranks(others, job, args["to"], rank_low=state.rank_low, rank_high=state.rank_high)
    if ranks and block:
        ranks.update(_ranks_behind(state, ranks, job.id, block))
    if ranks:  # up/down swap two jobs: every record in one batch
        await ctx.store.commit(
            *({"e": "move", "id": job_id, "rank": rank} for job_id, rank in ranks.items())
        )
    return {"job": _wire(ctx, job)}


def _ranks_behind(
    state: QueueState, ranks: dict[str, float], lead_id: str, block: list[Job]
) -> dict[str, float]:
    """Ranks for `block`, in order, right behind the lead's new rank (see `ranks_behind`)."""
    in_block = {job.id for job in block}
    taken = (
        ranks.get(job_id, other.rank)
        for job_id, other in state.jobs.items()
        if job_id != lead_id and job_id not in in_block
    )
    behind = ranks_behind(ranks[lead_id], taken, len(block))
    return {job.id: rank for job, rank in zip(block, behind, strict=True)}


async def set_priority(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Move an active job to another priority; it keeps its rank among the jobs it joins."""
    job = _get_job(ctx, args["id"])
    if job.status not in ACTIVE_STATUSES:
        raise _refuse_state(job, "change the priority of")
    changed = [
        target
        for target in [*_own_children(ctx.store.state, job, ACTIVE_STATUSES), job]
        if target.priority != args["priority"]
    ]
    if changed:  # an artist job's active album jobs follow it
        await ctx.store.commit(
            *({"e": "priority", "id": t.id, "priority": args["priority"]} for t in changed)
        )
    return {"job": _wire(ctx, job)}


async def pause(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    if "id" not in args:
        if not ctx.store.state.held:
            await ctx.store.commit({"e": "hold"})
        return {}
    job = _get_job(ctx, args["id"])
    if job.status == JobStatus.PAUSED:
        return {}
    if job.status not in RUNNABLE:
        raise _refuse_state(job, "pause")
    async with AsyncExitStack() as stopped:
        await _stop_with_children(ctx, stopped, [job.id])
        job = _get_job(ctx, args["id"])
        if job.status not in RUNNABLE:
            raise _refuse_state(job, "pause")
        children = _own_children(ctx.store.state, job, RUNNABLE)  # an artist job's album jobs
        await ctx.store.commit(*({"e": "pause", "id": t.id} for t in [*children, job]))
    return {}


async def resume(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """A job, or the `user` hold; with `force` also the upstream's backoff (fault holds stay)."""
    if "id" not in args:
        if ctx.store.state.held:
            await ctx.store.commit({"e": "release"})
        if args.get("force"):
            ctx.force_upstream()
        return {}
    job = _get_job(ctx, args["id"])
    if job.status in FINISHED_STATUSES:
        raise _refuse_state(job, "resume")
    paused = [*_own_children(ctx.store.state, job, (JobStatus.PAUSED,)), job]
    resumed = [target for target in paused if target.status == JobStatus.PAUSED]
    if resumed:  # an artist job's paused album jobs go with it
        await ctx.store.commit(*({"e": "resume", "id": target.id} for target in resumed))
    return {}


def queue_counts(ctx: CommandContext) -> dict[str, int]:
    state = ctx.store.state
    return {**state.status_counts(), "total": len(state.jobs)}


async def stats(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    scheduler = ctx.scheduler
    return {
        "queue": queue_counts(ctx),
        "speed_bps": sum(scheduler.speeds().values()),
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
    "move": move,
    "priority": set_priority,
    "stats": stats,
    "health": health,
    "metrics": metrics,
}
