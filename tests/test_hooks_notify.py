"""The completion hook (`[hooks]`) and notifications (`[notify]`), with a real daemon.

Hooks are small shell scripts that record what they were given into files
the test reads; a hook that must block waits for a gate file the test makes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from dlqd import hooks
from dlqd.demo.catalog import SINGLE_TRACK_ID, TWO_DISC_ALBUM_ID, CatalogServer
from dlqd.errors import DlqdError, ErrorCode
from dlqd.model import Job, JobStatus, Track, TrackStatus
from dlqd.notify import Notifications, UnusableUrl, job_message, notify_targets
from dlqd.state import QueueState, apply_all, from_snapshot, to_snapshot
from tests.conftest import DaemonFactory
from tests.support import DaemonProcess, wait_until


def write_hook(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def hook_daemon(
    make_daemon: DaemonFactory, upstream: CatalogServer, hook: Path, timeout_s: float = 60
) -> DaemonProcess:
    daemon = make_daemon(
        upstream=upstream,
        settings={"hooks": {"on_job_finished": str(hook), "timeout_s": timeout_s}},
    )
    daemon.start()
    return daemon


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def hook_failures(daemon: DaemonProcess) -> float:
    for family in daemon.call("metrics")["families"]:
        if family["name"] == "dlqd_hook_failures":
            return float(family["samples"][0]["value"])
    raise AssertionError("no dlqd_hook_failures metric")


def log_lines_with(daemon: DaemonProcess, text: str) -> list[str]:
    return [line for line in daemon.logs().splitlines() if text in line]


# --- the completion hook ------------------------------------------------------------------


def submitted(job_id: str) -> dict[str, object]:
    return {"e": "submit", "id": job_id, "type": "track", "target_id": int(job_id)}


def test_pending_hooks_follow_finish_and_hook_done_records_and_survive_a_snapshot() -> None:
    state = QueueState()
    common = {"quality": "LOSSLESS", "priority": "normal", "at": 1.0}
    finish = {"e": "finish", "status": "completed", "error": None}
    apply_all(
        state,
        [
            *({**submitted(job_id), **common} for job_id in ("1", "2", "3", "4")),
            {**finish, "id": "1", "at": 10.0},  # before hooks existed: none pending
            {**finish, "id": "2", "at": 11.0, "hook": True},
            {**finish, "id": "3", "at": 12.0, "hook": True},
            {**finish, "id": "4", "at": 13.0, "hook": True},
            {"e": "remove", "id": "4"},
            {"e": "retry", "id": "2", "at": 14.0},
            {**finish, "id": "2", "at": 15.0, "hook": True},
            {"e": "hook_done", "id": "2", "finished_at": 11.0},  # the finish before the retry
        ],
    )
    assert state.hooks_pending == {"3": 12.0, "2": 15.0}
    assert from_snapshot(to_snapshot(state)).hooks_pending == state.hooks_pending

    apply_all(
        state,
        [
            {"e": "hook_done", "id": job_id, "finished_at": at}
            for job_id, at in [("3", 12.0), ("2", 15.0)]
        ],
    )
    assert state.hooks_pending == {}
    old_snapshot = {k: v for k, v in to_snapshot(state).items() if k != "hooks_pending"}
    assert from_snapshot(old_snapshot).hooks_pending == {}


class RefusingStore:
    """A store whose journal refuses the first `refusals` commits (a full state disk)."""

    def __init__(self, state: QueueState, refusals: int) -> None:
        self.state = state
        self.refusals = refusals
        self.committed = trio.Event()

    async def commit(self, *events: dict[str, Any]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise DlqdError(ErrorCode.JOURNAL_UNAVAILABLE, "the journal could not be made durable")
        apply_all(self.state, events)
        self.committed.set()

    async def wait_changed(self) -> None:
        await trio.sleep_forever()


async def test_a_hook_done_the_journal_refuses_is_retried_without_running_the_hook_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hooks, "JOURNAL_RETRY_S", 0.01)
    runs = tmp_path / "runs"
    program = write_hook(tmp_path / "hook.sh", f'echo "$DLQD_JOB_ID" >> {runs}\n')
    common = {"quality": "LOSSLESS", "priority": "normal", "at": 1.0}
    finish = {"e": "finish", "id": "7", "status": "completed", "error": None, "hook": True}
    state = apply_all(QueueState(), [{**submitted("7"), **common}, {**finish, "at": 2.0}])
    store = RefusingStore(state, refusals=3)
    runner = hooks.HookRunner(
        store,  # type: ignore[arg-type]
        program,
        timeout_s=10,
        library=tmp_path,
        state_dir=tmp_path,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        with trio.fail_after(10):
            await store.committed.wait()
        nursery.cancel_scope.cancel()
    assert store.refusals == 0 and state.hooks_pending == {}
    assert lines(runs) == ["7"]  # ran once, however often the journal refused its record


def test_hook_runs_once_per_finished_job_with_its_environment_and_file_list(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hook = write_hook(
        tmp_path / "hook.sh",
        f'dir={out}/"$DLQD_JOB_ID.$$"\n'
        'mkdir "$dir"\n'
        'env | grep "^DLQD_" | sort > "$dir/env"\n'
        'cp "$DLQD_FILES" "$dir/files"\n'
        f'echo "$DLQD_JOB_ID" >> {out}/runs\n',
    )
    daemon = hook_daemon(make_daemon, upstream, hook)
    album = daemon.submit("album", TWO_DISC_ALBUM_ID)
    track = daemon.submit("track", SINGLE_TRACK_ID)
    jobs = {job_id: daemon.wait_job(job_id) for job_id in (album, track)}
    wait_until(lambda: len(lines(out / "runs")) == 2, what="both hooks to run")

    for job_id, job in jobs.items():
        assert job["status"] == "completed"
        (run,) = out.glob(f"{job_id}.*")
        env = dict(line.split("=", 1) for line in lines(run / "env"))
        listing = env.pop("DLQD_FILES")
        assert env == {
            "DLQD_JOB_ID": job_id,
            "DLQD_STATUS": "completed",
            "DLQD_TYPE": job["type"],
            "DLQD_TITLE": job["title"],
            "DLQD_ARTIST": job["artist"],
            "DLQD_LIBRARY": str(daemon.library),
        }
        assert lines(run / "files") == [t["path"] for t in job["tracks"]]
        assert all((daemon.library / t["path"]).is_file() for t in job["tracks"])
        wait_until(lambda path=listing: not Path(path).exists(), what="the list to be removed")
    assert len(jobs[album]["tracks"]) == 5

    # Once: a restart runs no hook again; a later job's hook runs after any re-run would.
    daemon.stop()
    daemon.start()
    later = daemon.submit("track", SINGLE_TRACK_ID, quality="HIGH")
    daemon.wait_job(later)
    wait_until(lambda: len(lines(out / "runs")) == 3, what="the later job's hook")
    assert sorted(lines(out / "runs")) == sorted([album, track, later])
    assert hook_failures(daemon) == 0


def test_hanging_hook_is_killed_with_its_children_at_its_timeout(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    hook = write_hook(
        tmp_path / "hook.sh",
        f"sleep 600 &\necho $! >> {pids}\necho $$ >> {pids}\necho waiting\nwait\n",
    )
    daemon = hook_daemon(make_daemon, upstream, hook, timeout_s=1)
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    before = daemon.wait_job(job_id)
    wait_until(lambda: log_lines_with(daemon, "completion hook killed"), what="the kill")

    (line,) = log_lines_with(daemon, "completion hook killed")
    assert "waiting" in line and f'"job_id": "{job_id}"' in line
    assert hook_failures(daemon) == 1
    wait_until(lambda: not any(alive(int(p)) for p in lines(pids)), what="hook and child gone")
    assert len(lines(pids)) == 2
    after = daemon.job(job_id)
    assert (after["status"], after["finished_at"], after["error"]) == (
        before["status"],
        before["finished_at"],
        before["error"],
    )
    assert daemon.call("health")["ok"]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_failing_hook_is_logged_and_counted_and_the_job_stays_completed(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    hook = write_hook(tmp_path / "hook.sh", "echo 'scan refused' >&2\nexit 3\n")
    daemon = hook_daemon(make_daemon, upstream, hook)
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    assert daemon.wait_job(job_id)["status"] == "completed"
    wait_until(lambda: hook_failures(daemon) == 1, what="the failure to be counted")

    (line,) = log_lines_with(daemon, "completion hook failed")
    assert '"returncode": 3' in line and "scan refused" in line
    assert daemon.job(job_id)["status"] == "completed"


def test_hook_that_cannot_start_is_counted(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    daemon = hook_daemon(make_daemon, upstream, tmp_path / "missing-hook")
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    assert daemon.wait_job(job_id)["status"] == "completed"
    wait_until(lambda: hook_failures(daemon) == 1, what="the failure to be counted")
    assert log_lines_with(daemon, "completion hook could not start")


def test_hook_pending_at_kill_9_runs_again_after_the_restart(
    make_daemon: DaemonFactory, upstream: CatalogServer, tmp_path: Path
) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    hook = write_hook(
        tmp_path / "hook.sh",
        f'echo "start $DLQD_JOB_ID $$" >> {runs}\n'
        f"while [ ! -e {gate} ]; do sleep 0.05; done\n"
        f'echo "done $DLQD_JOB_ID" >> {runs}\n',
    )
    daemon = hook_daemon(make_daemon, upstream, hook)
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    daemon.wait_job(job_id)
    wait_until(lambda: len(lines(runs)) == 1, what="the hook to start")

    daemon.kill()
    # The hook has its own session, so it outlives a kill -9 of dlqd: end it as a crash would.
    orphan = int(lines(runs)[0].split()[2])
    os.kill(orphan, 9)
    wait_until(lambda: not alive(orphan), what="the first run to end")
    daemon.start()
    wait_until(lambda: len(lines(runs)) == 2, what="the hook to run again")
    gate.touch()
    wait_until(lambda: len(lines(runs)) == 3, what="the second run to finish")
    assert [line.split()[:2] for line in lines(runs)] == [
        ["start", job_id],
        ["start", job_id],
        ["done", job_id],
    ]
    assert daemon.job(job_id)["status"] == "completed"
    assert hook_failures(daemon) == 0


# --- notifications ------------------------------------------------------------------------


@dataclass
class Receiver:
    """A tiny HTTP server on 127.0.0.1 recording each POST; answers `status`."""

    status: int = 200
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/dlqd") -> str:
        return f"json://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            box.posts.append((self.path, json.loads(body)))
            self.send_response(box.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box
    server.shutdown()
    server.server_close()


def test_notification_reaches_a_json_receiver_with_title_and_body(
    make_daemon: DaemonFactory, upstream: CatalogServer, receiver: Receiver
) -> None:
    failing = 100003
    upstream.inject("track", "status", times=None, track_id=failing, status=404)
    daemon = make_daemon(upstream=upstream, settings={"notify": {"urls": [receiver.url()]}})
    daemon.start()
    job_id = daemon.submit("album", TWO_DISC_ALBUM_ID)
    job = daemon.wait_job(job_id)
    assert job["status"] == "partial"
    wait_until(lambda: receiver.posts, what="the notification")

    ((path, message),) = receiver.posts
    assert path == "/dlqd"
    assert message["title"] == f"dlqd: {job['artist']} – {job['title']} partial"
    (failed,) = [t for t in job["tracks"] if t["status"] == "failed"]
    body = message["message"]
    assert body.startswith(f"{job['artist']} – {job['title']}: 4/5 tracks, ")
    assert f"{failed['number']:02d} {failed['title']} ({failed['error']['code']})" in body
    assert f"Job {job_id} (album {TWO_DISC_ALBUM_ID})." in body
    assert message["type"] == "warning"


def test_notify_on_limits_the_statuses_announced(
    make_daemon: DaemonFactory, upstream: CatalogServer, receiver: Receiver
) -> None:
    settings = {"notify": {"urls": [receiver.url()], "on": ["failed"]}}
    daemon = make_daemon(upstream=upstream, settings=settings)
    daemon.start()
    completed = daemon.submit("track", SINGLE_TRACK_ID)
    daemon.wait_job(completed)
    failed = daemon.submit("album", 999_999_999)
    assert daemon.wait_job(failed)["status"] == "failed"
    wait_until(lambda: receiver.posts, what="the notification")
    # Sent in finish order: had the completed job been announced, it would come first.
    assert [m["title"] for _, m in receiver.posts] == ["dlqd: album 999999999 failed"]


def test_a_receiver_that_errors_never_fails_the_job(
    make_daemon: DaemonFactory, upstream: CatalogServer, receiver: Receiver
) -> None:
    receiver.status = 500
    daemon = make_daemon(upstream=upstream, settings={"notify": {"urls": [receiver.url()]}})
    daemon.start()
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    assert daemon.wait_job(job_id)["status"] == "completed"
    wait_until(lambda: len(receiver.posts) >= 2, what="a retry of the notification")
    assert daemon.job(job_id)["status"] == "completed" and daemon.job(job_id)["error"] is None
    later = daemon.submit("track", SINGLE_TRACK_ID, quality="HIGH")  # the queue goes on
    assert daemon.wait_job(later)["status"] == "completed"
    assert daemon.call("health")["ok"]


def finished_job(status: JobStatus) -> Job:
    job = Job("7", 7, "album", 1102, "LOSSLESS", "normal", 100.0, status=status)
    job.title, job.artist, job.started_at, job.finished_at = "Album", "Artist", 100.0, 148.0
    job.tracks = [
        Track(1, "One", status=TrackStatus.COMPLETED, bytes_done=3 << 20, bytes_total=3 << 20),
        Track(2, "Two", number=2, status=TrackStatus.FAILED, error={"code": "TIMEOUT"}),
    ]
    return job


async def test_an_undeliverable_notification_is_retried_then_logged_and_counted(
    receiver: Receiver,
) -> None:
    receiver.status = 500
    failures: list[None] = []
    job = finished_job(JobStatus.PARTIAL)
    sender = Notifications(
        notify_targets([receiver.url()]),
        ["partial"],
        {job.id: job}.get,
        on_failure=lambda: failures.append(None),
        retry_delays_s=(0.0, 0.0),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        sender.observe_event({"e": "finish", "id": job.id, "status": "partial"})
        sender.observe_event({"e": "finish", "id": job.id, "status": "completed"})  # not wanted
        with trio.fail_after(20):  # polled with a deadline, as wait_until does
            while not failures:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(receiver.posts) == 3  # one try and two retries, all for the partial finish
    assert failures == [None]


def test_job_message_names_sizes_time_and_failed_tracks() -> None:
    message = job_message(finished_job(JobStatus.PARTIAL))
    assert message.title == "dlqd: Artist – Album partial"
    assert message.body == (
        "Artist – Album: 1/2 tracks, 3.0 MiB in 48 s. Failed: 02 Two (TIMEOUT). Job 7 (album 1102)."
    )


def test_a_url_apprise_cannot_use_is_refused_without_showing_it() -> None:
    with pytest.raises(UnusableUrl) as refused:
        notify_targets(["json://127.0.0.1/x", "nosuchscheme://secret-token@host"])
    assert "#2 nosuchscheme" in str(refused.value) and "secret" not in str(refused.value)


def test_apprise_is_loaded_only_when_notification_urls_are_configured() -> None:
    # ~70 ms of start-up that a daemon without [notify] urls must not pay.
    probe = (
        "import sys, dlqd.daemon, dlqd.notify as n; n.notify_targets([]);"
        "print('apprise' in sys.modules);"
        "n.notify_targets(['json://127.0.0.1:9/']); print('apprise' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
