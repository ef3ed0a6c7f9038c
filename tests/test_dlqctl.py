"""dlqctl as people and scripts use it: the real `dlqctl` program against a real dlqd.

Every test runs the installed `dlqctl` console script as a subprocess —
global options anywhere, JSON documents and errors, exit codes 0/1/2/3/130
and a quiet closed pipe, share links, batch commands, the run order, the
`ls` filters, and `watch` following the queue or one job, across a daemon
restart and on a pseudo-terminal read back through a terminal emulator.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dlqd.catalog import (
    TWO_DISC_ALBUM_ID,
    Catalog,
    CatalogServer,
)
from tests.conftest import DaemonFactory
from tests.support import REPO, DaemonProcess, as_nobody, held_daemon

DLQCTL = str(Path(sys.executable).with_name("dlqctl"))  # the console script pip installed
SLOW_BPS = 200_000


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without dlqd's variables; tables 200 columns wide unless told."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLQD_")}
    env.update({"COLUMNS": "200", **extra})
    return env


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The real dlqctl program, as a shell runs it."""
    return subprocess.run(
        [DLQCTL, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env or clean_env(),
    )


def ctl(daemon: DaemonProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run("--socket", str(daemon.socket), *args, stdin=stdin)


def json_of(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


# --- scripting comfort ---------------------------------------------------------------


def test_global_options_work_before_and_after_the_command(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    socket_path = str(daemon.socket)
    before = run("--json", "--socket", socket_path, "--timeout", "5", "stats")
    after = run("stats", "--json", "--socket", socket_path, "--timeout", "5")
    mixed = run("--timeout", "5", "stats", "--socket", socket_path, "--json")
    from_env = run("stats", "--json", env=clean_env(DLQD_SOCKET=socket_path))
    for done in (before, after, mixed, from_env):
        assert done.returncode == 0, done.stderr
        assert json_of(done)["worker"]["running"] is False
    # An option after the command wins over the same option before it.
    wrong_first = run("--socket", "/nonexistent.sock", "stats", "--socket", socket_path)
    assert wrong_first.returncode == 0, wrong_first.stderr
    assert wrong_first.stdout.startswith("jobs:")


def test_json_errors_are_one_document_on_stdout_with_their_exit_codes(
    make_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = held_daemon(make_daemon)
    refused = ctl(daemon, "show", "999", "--json")
    assert refused.returncode == 1
    assert json_of(refused)["error"]["code"] == "NOT_FOUND"
    assert refused.stderr.startswith("error: NOT_FOUND: ")

    usage = ctl(daemon, "--json", "add", "track", "not-a-number")
    assert usage.returncode == 2
    assert json_of(usage)["error"]["code"] == "USAGE"
    assert "not an integer id" in json_of(usage)["error"]["message"]

    unreachable = run("--socket", str(tmp_path / "none.sock"), "health", "--json")
    assert unreachable.returncode == 3
    assert json_of(unreachable)["error"]["code"] == "UNREACHABLE"
    assert "cannot reach dlqd" in unreachable.stderr

    text_refusal = ctl(daemon, "show", "999")  # without --json, stdout stays empty
    assert (text_refusal.returncode, text_refusal.stdout) == (1, "")


def test_version_names_the_package_version() -> None:
    from dlqd import __version__

    done = run("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"dlqctl {__version__}")


def test_usage_errors_exit_2(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    for args in (
        [],
        ["frobnicate"],
        ["add", "track", "5", "--quality", "lossless"],
        ["ls", "--since", "yesterday-ish"],
        ["retry"],  # neither JOB nor --failed
        ["cancel", "4", "--all"],  # both
        ["rm", "--status", "failed"],  # --status without --finished
        ["move", "1", "sideways"],
        ["priority", "1", "urgent"],
        ["stats", "--timeout", "0"],
    ):
        done = ctl(daemon, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "usage:" in done.stderr and "Traceback" not in done.stderr


def test_a_closed_pipe_ends_dlqctl_quietly(make_daemon: DaemonFactory) -> None:
    """`dlqctl ls | head -1`: the reader is gone before dlqctl writes; no traceback."""
    daemon = held_daemon(make_daemon)
    daemon.submit("album", TWO_DISC_ALBUM_ID)
    for args in (["ls"], ["--json", "ls"], ["show", "1"], ["watch"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader went away: every write gets EPIPE
        try:
            done = subprocess.run(
                [DLQCTL, "--socket", str(daemon.socket), *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                env=clean_env(),
            )
        finally:
            os.close(write_end)
        assert done.returncode == 141, (args, done.stderr)  # 128 + SIGPIPE, as a shell shows
        assert done.stderr == "", (args, done.stderr)
    shell = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{DLQCTL} --socket {daemon.socket} ls | head -1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert shell.stdout.split() == ["ID", "STATUS", "PROGRESS", "TRACKS", "SPEED", "ETA",
                                    "QUALITY", "ARTIST", "–", "TITLE"]  # fmt: skip
    assert "Traceback" not in shell.stderr and "Broken pipe" not in shell.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run dlqctl as another uid")
def test_permission_denied_on_the_socket_says_so_and_exits_3(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(settings={"daemon": {"socket_mode": "0666"}})
    daemon.start()

    def dlqctl_as_nobody() -> dict[str, Any]:
        # Python lives under /root here, out of nobody's reach: so the forked child runs
        # dlqctl's own main() rather than exec'ing the console script.
        from dlqctl.__main__ import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--socket", str(daemon.socket), "--json", "stats"])
        return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}

    daemon.socket_dir.chmod(0o700)  # the file system says no (EACCES at connect)
    by_the_file_system = as_nobody(dlqctl_as_nobody)
    daemon.socket_dir.chmod(0o755)  # the socket is reachable; dlqd's peer check says no
    by_dlqd = as_nobody(dlqctl_as_nobody)
    for outcome in (by_the_file_system, by_dlqd):
        assert outcome["code"] == 3, outcome
        assert json.loads(outcome["stdout"])["error"]["code"] == "PERMISSION_DENIED"
        assert "permission denied" in outcome["stderr"]
        assert "is it running" not in outcome["stderr"]


def test_timeout_bounds_the_wait_on_a_daemon_that_does_not_answer(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGSTOP)  # alive, socket open, answers nothing
    try:
        done = ctl(daemon, "health", "--timeout", "0.5", "--json")
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    assert done.returncode == 3
    assert json_of(done)["error"]["code"] == "UNREACHABLE"
    assert "did not answer within 0.5 s" in done.stderr
    assert ctl(daemon, "health").returncode == 0


def test_text_output_escapes_control_characters_from_the_upstream(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    hostile = "Clear\x1b[2J Bell\x07 Back\u202eward\x9b"
    album_id = catalog.add_album(1, title=hostile)
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    job_id = daemon.submit("album", album_id)
    assert daemon.wait_job(job_id)["status"] == "completed"
    assert json_of(ctl(daemon, "--json", "show", job_id))["title"] == hostile  # JSON: the value
    escaped = "Clear\\x1b[2J Bell\\x07 Back\\u202eward\\x9b"
    for args in (["ls"], ["show", job_id], ["watch", job_id], ["ls", "--album", "CLEAR"]):
        done = ctl(daemon, *args)
        printed = done.stdout + done.stderr
        assert escaped in printed, (args, printed)
        assert not any(c in printed for c in "\x1b\x07\u202e\x9b"), (args, printed)


def test_ctrl_c_exits_130(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    daemon.submit("album", TWO_DISC_ALBUM_ID)  # held and queued: watch has no reason to stop
    watcher = subprocess.Popen(
        [DLQCTL, "--socket", str(daemon.socket), "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # the hold line: watch is up and waiting
        assert "held: user" in first
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 130
        assert watcher.stderr is not None
        assert "Traceback" not in watcher.stderr.read()
    finally:
        watcher.kill()
        watcher.wait()


def test_completion_scripts_are_generated_from_the_parser() -> None:
    bash = run("completion", "bash")
    assert bash.returncode == 0

    def complete(*words: str) -> list[str]:
        script = (
            f"{bash.stdout}\n"
            f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
            '_dlqctl; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert {"add", "ls", "watch", "move", "priority", "completion"} <= set(complete("dlqctl", ""))
    assert complete("dlqctl", "wa") == ["watch"]
    assert complete("dlqctl", "--socket", "/tmp/x", "sta") == ["stats"]
    assert complete("dlqctl", "ls", "--sta") == ["--status"]
    assert set(complete("dlqctl", "ls", "--status", "")) == {
        "queued", "paused", "processing", "completed", "partial", "failed", "cancelled"
    }  # fmt: skip
    assert complete("dlqctl", "add", "album", "5", "--quality", "HI") == ["HIGH", "HI_RES_LOSSLESS"]
    assert complete("dlqctl", "move", "3", "to") == ["top"]
    assert "--no-reconnect" in complete("dlqctl", "watch", "--")
    zsh = run("completion", "zsh")
    assert zsh.returncode == 0
    assert zsh.stdout.startswith("#compdef dlqctl")
    assert "'--status[repeatable]:value:(queued paused processing" in zsh.stdout
    if Path("/usr/bin/zsh").exists() or Path("/bin/zsh").exists():
        checked = subprocess.run(["zsh", "-n"], input=zsh.stdout, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
