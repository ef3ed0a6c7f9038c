"""The daemon's lifetime: lock, recover, serve, drain — its `main` reads like the architecture.

One nursery holds the journal writer, the scheduler, the control server, the
library watch (its re-checks while the library or its disk holds the queue), the
upstream circuit's probes, the retention sweeper, the metrics textfile writer
and the systemd watchdog.
Start-up refuses clearly (exit 1) when the library or the state dir is not a
directory, when the socket path is taken (by a live daemon, or by anything
that is not a stale socket), when another daemon holds the state dir, when
the journal is damaged, or when `library/.dlqd-tmp` is a link or not a
directory. The checks that need nothing of the state dir come first: a
refused start creates, locks and reads nothing there. SIGTERM/SIGINT drain
and exit 0.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import signal
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog
import trio

from dlqd import __version__, debug_hooks
from dlqd.backlog import BacklogWarnings
from dlqd.circuit import UpstreamCircuit
from dlqd.commands import CommandContext, queue_counts
from dlqd.config import Config
from dlqd.control import ControlServer, SocketFile, SocketInUse, SocketPathTaken, bind_unix_socket
from dlqd.fetch import FreeSpaceFloor
from dlqd.finalize import TMP_DIRNAME, sweep_tmp
from dlqd.health import (
    free_space_check,
    holds_check,
    journal_check,
    library_space_check,
    scheduler_check,
    upstream_check,
)
from dlqd.holds import Holds
from dlqd.hooks import HookRunner
from dlqd.journal import JournalCorrupt, JournalFiles
from dlqd.library_watch import LibraryWatch
from dlqd.metrics import LiveView, Metrics, run_textfile_writer
from dlqd.model import TrackStatus
from dlqd.notify import Notifications, UnusableUrl, notify_targets
from dlqd.retention import run_retention
from dlqd.safefs import UnsafePathError, describe
from dlqd.scheduler import Scheduler
from dlqd.source import Source
from dlqd.state import QueueState, recover_interrupted
from dlqd.store import Store
from dlqd.systemd import Notifier, activation_socket
from dlqd.transfer import trust_context
from dlqd.worker import DownloadWork, RetryPolicy, temp_name

log = structlog.get_logger("dlqd.daemon")


class StartupError(Exception):
    """A reason not to start, worded for the operator; the process exits 1."""


def check_directory(path: Path, what: str, *, fix: str, missing_ok: bool = False) -> None:
    """Refuse to start unless `path` is a directory (or absent, when `missing_ok`).

    The configured path itself may be a link (to a mounted disk, say): it is
    followed. `fix` tells the operator what to do when something else is there.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if missing_ok:
            return
        raise StartupError(f"{what} {path} does not exist (is it mounted?)") from None
    except OSError as exc:
        raise StartupError(f"cannot use {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(mode):
        raise StartupError(f"{what} {path} is {describe(mode)}, not a directory; {fix}")


@contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[None]:
    """flock on state_dir/dlqd.lock: one daemon per state directory.

    The lock file is opened without following a link: the pid is written into
    it, and a planted link must not aim that write at another file.
    """
    path = state_dir / "dlqd.lock"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        handle: TextIO = os.fdopen(os.open(path, flags, 0o644), "r+")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StartupError(
                f"{path} is a symbolic link; dlqd writes its pid there and will not "
                f"follow it (remove it: rm {path})"
            ) from None
        raise StartupError(f"cannot use state directory {state_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StartupError(
                f"another dlqd (pid {holder}) is already using state dir {state_dir}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def recover_state(state_dir: Path) -> tuple[JournalFiles, QueueState]:
    files = JournalFiles(state_dir)
    try:
        state, report = files.recover()
    except OSError as exc:
        raise StartupError(
            f"cannot read the journal in {state_dir}: {exc.strerror or exc}"
        ) from None
    except JournalCorrupt as exc:
        raise StartupError(
            f"the journal in {state_dir} is damaged: {exc}.\n"
            "dlqd will not guess which jobs to drop. To repair: stop dlqd, copy the state "
            f"directory aside, then either restore {state_dir} from a backup, or move the "
            "damaged segment (and any later ones) out of journal/ to start from the snapshot "
            "and the intact segments, losing the records they held."
        ) from None
    if report.truncated_bytes:
        log.warning(
            "journal had a torn tail; truncated it",
            segment=report.truncated_segment,
            bytes=report.truncated_bytes,
        )
    requeued = recover_interrupted(state)
    for job_id in requeued:  # processing when the last dlqd died without draining
        log.warning("job recovered from crash: queued again", job_id=job_id)
    log.info(
        "journal recovered",
        jobs=len(state.jobs),
        snapshot_jobs=report.snapshot_jobs,
        replayed_records=report.replayed_records,
        requeued=len(requeued),
    )
    return files, state


def resumable_partials(state: QueueState) -> set[str]:
    """Temp file names a queued job can still resume with a Range request."""
    names = set()
    for job in state.active_jobs():
        for track in job.tracks:
            if track.status == TrackStatus.PENDING:
                name = temp_name(job.id, track.track_id)
                names.update({name, name + ".meta"})
    return names


def sweep_leftovers(library: Path, keep: set[str]) -> None:
    """Empty `library/.dlqd-tmp` of what no queued job can resume; refuse to start if unsafe."""
    path = library / TMP_DIRNAME
    try:
        swept = sweep_tmp(library, keep=keep)
    except UnsafePathError as exc:
        raise StartupError(
            f"{path} is {exc.found}. dlqd keeps its temp files only in a real directory "
            "there and will not follow a link (a link there could make it delete or write "
            f"files elsewhere). Remove it — `rm {path}` removes a link, not what it points "
            "to — or move it away, then start dlqd again: it creates the directory itself."
        ) from None
    except OSError as exc:
        raise StartupError(f"cannot use temp directory {path}: {exc.strerror}") from None
    if swept:
        log.info("removed leftover temp files", count=swept)


def open_listener(config: Config) -> tuple[socket.socket, SocketFile | None]:
    """The control socket: systemd's when socket-activated, else our own (with its file)."""
    activated = activation_socket()
    if activated is not None:
        return activated, None
    try:
        return bind_unix_socket(config.daemon.socket, config.daemon.socket_mode)
    except (SocketInUse, SocketPathTaken) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.daemon.socket}: {exc.strerror}") from None


def status_line(ctx: CommandContext, bytes_per_s: float = 0.0) -> str:
    """The one line `systemctl status` shows (sent as STATUS=)."""
    counts = queue_counts(ctx)
    holds = ", ".join(str(hold.reason) for hold in ctx.scheduler.holds.active())
    state = "draining: " if ctx.shutting_down else f"held ({holds}): " if holds else ""
    return (
        f"{state}{counts['queued']} queued, {counts['processing']} processing, "
        f"{ctx.scheduler.active_tracks} tracks downloading at {_rate(bytes_per_s)}; "
        f"{counts['completed']} completed, {counts['partial'] + counts['failed']} failed"
    )


def _speed(scheduler: Scheduler) -> int:
    """Every running job's rate together: the figure `stats.speed_bps` gives."""
    return sum(scheduler.speeds().values())


def _rate(bytes_per_s: float) -> str:
    for unit in ("B/s", "KiB/s", "MiB/s"):
        if bytes_per_s < 1024 or unit == "MiB/s":
            return f"{bytes_per_s:.0f} {unit}" if unit == "B/s" else f"{bytes_per_s:.1f} {unit}"
        bytes_per_s /= 1024
    raise AssertionError("unreachable")


async def serve(config: Config) -> None:
    """Run the daemon until SIGTERM/SIGINT; raises StartupError for operator mistakes."""
    library, state_dir = config.daemon.library, config.daemon.state_dir
    check_directory(
        library,
        "library directory",
        fix="point [daemon] library (--library) at the folder that holds your music",
    )
    check_directory(
        state_dir,
        "state directory",
        fix="move it away, or point [daemon] state_dir (--state-dir) at a directory "
        "(dlqd creates a missing one)",
        missing_ok=True,
    )
    tls = upstream_trust(config)
    stop_signals = trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)
    listener, socket_file = open_listener(config)  # a taken socket refuses before the state dir
    try:
        with stop_signals as signals, state_dir_lock(state_dir):
            files, state = recover_state(state_dir)
            try:
                sweep_leftovers(library, resumable_partials(state))
                await _run(config, tls, files, state, listener, signals)
            finally:
                files.close()
    finally:
        listener.close()
        if socket_file is not None:
            socket_file.remove()  # only the socket we bound, not what replaced it


def upstream_trust(config: Config) -> ssl.SSLContext:
    """The TLS context of every upstream request: httpx's default trust plus `upstream.ca_file`."""
    ca_file = config.upstream.ca_file
    try:
        return trust_context(ca_file)
    except OSError as exc:  # ssl.SSLError included: not a PEM certificate
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise StartupError(f"cannot use upstream.ca_file {ca_file}: {reason}") from None


async def _run(
    config: Config,
    tls: ssl.SSLContext,
    files: JournalFiles,
    state: QueueState,
    listener: socket.socket,
    signals: AsyncIterator[int],
) -> None:
    notifier = Notifier()
    metrics = Metrics()
    store = Store(files, state, config.daemon.journal_compact_bytes)
    store.on_commit(metrics.observe_event)
    try:
        targets = notify_targets(config.notify.urls)
    except UnusableUrl as exc:
        raise StartupError(str(exc)) from None
    notifications = Notifications(
        targets,
        config.notify.on,
        lambda job_id: store.state.jobs.get(job_id),  # the state is replaced on a rebuild
        on_failure=metrics.count_notify_failure,
    )
    store.on_commit(notifications.observe_event)
    backlog = BacklogWarnings(config.limits.warn_active_jobs, lambda: store.state.active_count)
    backlog.observe()  # a queue recovered long warns at once
    store.on_commit(backlog.observe)
    upstream = config.upstream
    holds = Holds(user_held=lambda: store.state.held, on_change=store.notify_changed)
    source = Source(
        upstream.base_url,
        upstream.cover_base_url,
        upstream.connect_timeout_s,
        upstream.read_timeout_s,
        upstream.user_agent,
        circuit=functools.partial(
            UpstreamCircuit,
            holds=holds,
            failure_threshold=upstream.failure_threshold,
            max_cooldown_s=upstream.max_cooldown_s,
            max_retry_after_s=upstream.max_retry_after_s,
        ),
        max_job_tracks=config.limits.max_job_tracks,
        max_metadata_bytes=config.limits.max_metadata_mb * 1024 * 1024,
        ssl_context=tls,
    )
    watch = LibraryWatch(
        config.daemon.library,
        holds,
        floor=FreeSpaceFloor(config.limits.min_free_mb),
        recheck_s=config.files.recheck_s,
    )
    work = DownloadWork(
        source,
        library=config.daemon.library,
        files=config.files,
        retry=RetryPolicy(
            config.worker.max_retries,
            config.worker.backoff_s,
            max_retry_after_s=upstream.max_retry_after_s,
            on_retry=metrics.count_retry,
        ),
        read_timeout_s=upstream.read_timeout_s,
        watch=watch,
        resolve_timeout_s=upstream.resolve_timeout_s,
        bandwidth_limit_kbps=config.worker.bandwidth_limit_kbps,
        max_track_mb=config.limits.max_track_mb,
    )
    debugging = debug_hooks.enabled(os.environ)
    scheduler = Scheduler(
        store,
        debug_hooks.with_debug_faults(work, os.environ) if debugging else work,
        max_concurrent=config.worker.max_concurrent,
        track_timeout_s=config.worker.track_timeout_s,
        holds=holds,
        requeue_after_s=config.worker.requeue_after_s,
        max_passes=config.worker.max_passes,
        observe_track_seconds=metrics.observe_track_seconds,
        hook_on_finish=config.hooks.on_job_finished is not None,
        max_queue=config.limits.max_queue,
        max_job_releases=config.limits.max_job_tracks,
    )
    hooks = HookRunner(
        store,
        config.hooks.on_job_finished,
        timeout_s=config.hooks.timeout_s,
        library=config.daemon.library,
        state_dir=config.daemon.state_dir,
        on_failure=metrics.count_hook_failure,
    )
    ctx = CommandContext(store=store, scheduler=scheduler, max_queue=config.limits.max_queue)
    ctx.health_checks = lambda: health_checks(ctx, config, source, backlog)
    ctx.force_upstream = source.circuit.force
    metrics.live = LiveView(
        state=lambda: store.state,
        active_tracks=lambda: scheduler.active_tracks,
        journal_stats=store.journal_stats,
    )
    ctx.metrics_text = metrics.text
    ctx.metrics_families = metrics.families
    ctx.metrics_summary = metrics.summary
    server = ControlServer(
        listener,
        ctx,
        max_frame_bytes=config.limits.max_frame_bytes,
        allowed_uids=frozenset(config.daemon.allowed_uids),
        allowed_gids=frozenset(config.daemon.allowed_gids),
        submit_rate_per_min=config.limits.submit_rate_per_min,
        first_frame_timeout_s=config.daemon.first_frame_timeout_s,
        send_timeout_s=config.daemon.send_timeout_s,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await nursery.start(server.serve)
            await nursery.start(scheduler.run)
            await nursery.start(watch.run)
            await nursery.start(source.run_circuit)
            await nursery.start(hooks.run)
            await nursery.start(notifications.run)
            nursery.start_soon(
                lambda: run_retention(
                    store,
                    completed_h=config.retention.completed_h,
                    failed_h=config.retention.failed_h,
                    interval_s=config.retention.sweep_interval_s,
                )
            )
            if config.metrics.textfile is not None:
                nursery.start_soon(
                    run_textfile_writer, metrics, config.metrics.textfile, config.metrics.interval_s
                )
            if debugging:
                block_s = float(os.environ.get("DLQD_DEBUG_BLOCK_S", "5"))
                await nursery.start(debug_hooks.block_loop_on_sigusr1, block_s)
            if notifier.enabled:
                nursery.start_soon(notifier.watchdog, lambda: status_line(ctx, _speed(scheduler)))
            notifier.send("READY=1")
            log.info("dlqd ready", version=__version__, socket=str(config.daemon.socket))
            signum = await signals.__anext__()
            log.info("stop requested; draining", signal=signal.Signals(signum).name)
            grace = config.worker.drain_grace_s
            notifier.send(f"STOPPING=1\nSTATUS=draining: running tracks have {grace:g} s to finish")
            await _drain(ctx, work, config.worker.drain_grace_s)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await source.aclose()


async def _drain(ctx: CommandContext, work: DownloadWork, grace_s: float) -> None:
    """Stop taking work, let running tracks finish, re-queue the rest, compact."""
    started = time.monotonic()
    ctx.shutting_down = True
    work.keep_partials = True
    stopped = await ctx.scheduler.drain(grace_s)
    for job_id in stopped:
        await ctx.store.commit({"e": "requeue", "id": job_id})
    await ctx.store.checkpoint()  # a failed snapshot is logged there; the journal holds all
    log.info("drained", requeued=len(stopped), seconds=round(time.monotonic() - started, 3))


def health_checks(
    ctx: CommandContext, config: Config, source: Source, backlog: BacklogWarnings
) -> dict[str, Any]:
    """The checks of `dlqctl health` (see dlqd.health); cheap enough to run on each request."""
    state_dir = config.daemon.state_dir
    min_free_mb = config.limits.min_free_mb
    return {
        "scheduler": scheduler_check(trio.current_time() - ctx.scheduler.heartbeat),
        "journal": journal_check(ctx.store.files.journal_dir, ctx.store.writable),
        "state_dir_space": free_space_check(state_dir, min_free_mb),
        "library_space": library_space_check(
            config.daemon.library, min_free_mb, ctx.scheduler.holds.faults()
        ),
        "upstream": upstream_check(source.base_reports()),
        "holds": holds_check(ctx.scheduler.holds.faults()),
        "active_jobs": backlog.check(),
    }
