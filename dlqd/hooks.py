"""The completion hook: `[hooks] on_job_finished`, run once a job finishes, at least once.

Owns running that program and its delivery record. The scheduler's `finish`
record marks the job's hook pending (`hook: true`, see dlqd.state); this
module runs the pending hooks one at a time, in the order the jobs finished,
and journals `hook_done` after each. A hook pending when dlqd died runs after
the restart, so a crash can run a hook twice but never lose one. The program
runs without a shell, in a process group of its own, with the job described
in `DLQD_*` environment variables and a file listing its tracks' paths; at
`timeout_s` the whole group is killed. Its output goes to the log, bounded.

It must never change a job: a hook that fails, hangs or cannot start is
logged and counted (`dlqd_hook_failures_total`), and nothing else happens.
It never blocks the scheduler: processes are awaited off the loop's work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from dlqd.errors import DlqdError
from dlqd.model import Job, TrackStatus
from dlqd.store import Store
from dlqd.summary import printable

log = structlog.get_logger("dlqd.hooks")

MAX_OUTPUT_BYTES = 8192  # of a hook's stdout and stderr, kept for the log; the rest is dropped
OUTPUT_GRACE_S = 1.0  # after the program exits, how long its children may keep the pipe open
JOURNAL_RETRY_S = 5.0  # a hook_done the journal refused is written again after this
HOOK_FILES_DIR = "hooks"  # under the state dir: the DLQD_FILES listings of running hooks


@dataclass(frozen=True)
class HookRun:
    """How one run of the program ended: its exit status (None: killed at the timeout)."""

    returncode: int | None
    output: bytes
    output_cut: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def hook_environment(job: Job, library: Path, files_list: Path) -> dict[str, str]:
    """The documented `DLQD_*` variables of a job's hook; NUL (not allowed there) dropped."""
    values = {
        "DLQD_JOB_ID": job.id,
        "DLQD_STATUS": str(job.status),
        "DLQD_TYPE": job.type,
        "DLQD_TITLE": job.title,
        "DLQD_ARTIST": job.artist,
        "DLQD_LIBRARY": str(library),
        "DLQD_FILES": str(files_list),
    }
    return {name: value.replace("\0", "") for name, value in values.items()}


def job_paths(job: Job, children: Sequence[Job] = ()) -> list[str]:
    """The library-relative paths of the job's files: completed tracks in order, then its M3U8.

    An artist job's are its album jobs' (`children`), album after album. A
    playlist's or mix's M3U8 file (`playlist_path`) comes last.
    """
    tracks = [t for owner in (job, *children) for t in owner.tracks]
    paths = [t.path for t in tracks if t.status == TrackStatus.COMPLETED and t.path]
    return [*paths, job.playlist_path] if job.playlist_path else paths


async def run_program(program: Path, env: Mapping[str, str], timeout_s: float) -> HookRun:
    """Run `program` (no shell, stdin closed) in a new session; kill its group at `timeout_s`.

    Raises OSError when it cannot be started. If the caller is cancelled the
    group is killed too, so no hook outlives the daemon's wish to stop it.
    """
    process = await trio.lowlevel.open_process(
        [str(program)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        start_new_session=True,
    )
    assert process.stdout is not None
    output = bytearray()
    cut = False
    read_all = trio.Event()

    async def collect(stream: trio.abc.ReceiveStream) -> None:
        nonlocal cut
        while chunk := await stream.receive_some(65536):
            room = MAX_OUTPUT_BYTES - len(output)
            cut |= len(chunk) > room
            output.extend(chunk[: max(0, room)])
        read_all.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, process.stdout)
            with trio.move_on_after(timeout_s):
                await process.wait()
            timed_out = process.returncode is None
            if timed_out:
                _kill_group(process.pid)
                await process.wait()
            with trio.move_on_after(OUTPUT_GRACE_S):  # a child left behind may hold the pipe
                await read_all.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:  # cancelled: the daemon is stopping
            _kill_group(process.pid)
            with trio.CancelScope(shield=True):
                await process.wait()
        await trio.aclose_forcefully(process.stdout)
    return HookRun(None if timed_out else process.returncode, bytes(output), cut)


def _kill_group(pid: int) -> None:
    """SIGKILL the hook's process group (its session: it is the leader)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class HookRunner:
    """Runs the pending completion hooks, one at a time, and journals each as done."""

    def __init__(
        self,
        store: Store,
        program: Path | None,
        *,
        timeout_s: float,
        library: Path,
        state_dir: Path,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.program = program
        self.timeout_s = timeout_s
        self.library = library
        self.files_dir = state_dir / HOOK_FILES_DIR
        self.on_failure = on_failure  # the metrics' dlqd_hook_failures_total

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            pending = self.store.state.hooks_pending
            if not pending:
                await self.store.wait_changed()
                continue
            job_id, finished_at = next(iter(pending.items()))
            job = self.store.state.jobs.get(job_id)
            if job is not None and self.program is not None:
                await self._run_hook(self.program, job)
            elif job is not None:
                log.warning(
                    "completion hook dropped: [hooks] on_job_finished is off", job_id=job_id
                )
            await self._record_done(job_id, finished_at)

    async def _record_done(self, job_id: str, finished_at: float) -> None:
        """Journal `hook_done`, retrying while the journal is unavailable (a full state disk
        can last hours): the hook itself ran once and must not run again each retry. A
        crash meanwhile runs it again after the restart (at least once)."""
        while True:
            try:
                await self.store.commit(
                    {"e": "hook_done", "id": job_id, "finished_at": finished_at}
                )
                return
            except DlqdError as exc:
                log.error("hook_done not journaled", job_id=job_id, error_code=str(exc.code))
                await trio.sleep(JOURNAL_RETRY_S)

    async def _run_hook(self, program: Path, job: Job) -> None:
        log_ = log.bind(job_id=job.id, program=str(program))
        files_list = self.files_dir / f"job-{job.id}.files"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLQD_")}
        env.update(hook_environment(job, self.library, files_list))
        try:
            await trio.to_thread.run_sync(
                self._write_list, files_list, job_paths(job, self.store.state.children_of(job))
            )
            run = await run_program(program, env, self.timeout_s)
        except OSError as exc:
            self.on_failure()
            log_.error("completion hook could not start", error=exc.strerror or str(exc))
            return
        finally:
            await trio.to_thread.run_sync(_unlink, files_list)
        fields = {"returncode": run.returncode, "status": str(job.status)}
        if run.output:
            text = run.output.decode("utf-8", errors="replace")
            fields["output"] = printable(text, MAX_OUTPUT_BYTES) + (
                " [cut]" if run.output_cut else ""
            )
        if run.ok:
            log_.info("completion hook ran", **fields)
        elif run.returncode is None:
            self.on_failure()
            log_.error(f"completion hook killed after {self.timeout_s:g} s", **fields)
        else:
            self.on_failure()
            log_.error("completion hook failed", **fields)

    def _write_list(self, path: Path, paths: list[str]) -> None:
        self.files_dir.mkdir(mode=0o700, exist_ok=True)
        path.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
