"""dlqctl as people and scripts use it: the real `dlqctl` program against a real dlqd.

Every test runs the installed `dlqctl` console script as a subprocess —
global options anywhere, JSON documents and errors, exit codes 0/1/2/3/130
and a quiet closed pipe, share links, batch commands, the run order, the
`ls` filters, and `watch` following the queue, one job or an artist job with
its albums, across a daemon restart and on a pseudo-terminal read back
through a terminal emulator.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import Any

import pyte
import pytest

from dlqctl.render import worker_state
from dlqctl.watch import job_lines
from dlqd.demo.catalog import (
    ARTIST_ID,
    BIG_ALBUM_ID,
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    UNKNOWN_ID,
    Catalog,
    CatalogServer,
)
from tests.conftest import DaemonFactory
from tests.support import REPO, DaemonProcess, as_nobody, held_daemon, wait_until

DLQCTL = str(Path(sys.executable).with_name("dlqctl"))  # the console script pip installed
SLOW_BPS = 200_000
CRAWL_BPS = 30_000  # an artist's short tracks still take seconds each: its watch lines move
DISCOGRAPHY = "The Examples – discography (album, ep)"  # the artist job's label


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


class Running:
    """A dlqctl process left running (watch), its output collected line by line as it comes."""

    def __init__(self, daemon: DaemonProcess, *args: str):
        self.proc = subprocess.Popen(
            [DLQCTL, "--socket", str(daemon.socket), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _collect(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_out(self, needle: str, what: str = "") -> str:
        return wait_until(
            lambda: next((line for line in self.out if needle in line), None),
            timeout=60,
            what=what or f"{needle!r} on stdout of {self.proc.args}: {self.out} {self.err}",
        )

    def wait_err(self, needle: str) -> str:
        return wait_until(
            lambda: next((line for line in self.err if needle in line), None),
            timeout=60,
            what=f"{needle!r} on stderr of {self.proc.args}: {self.err}",
        )

    def exit_code(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


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
        ["add", "track", "5", "--quality", "lossy"],
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
    assert complete("dlqctl", "add", "album", "5", "--quality", "hi") == ["high", "hi_res_lossless"]
    assert complete("dlqctl", "move", "3", "to") == ["top"]
    assert "--no-reconnect" in complete("dlqctl", "watch", "--")
    zsh = run("completion", "zsh")
    assert zsh.returncode == 0
    assert zsh.stdout.startswith("#compdef dlqctl")
    assert "'--status[repeatable]:value:(queued paused processing" in zsh.stdout
    if Path("/usr/bin/zsh").exists() or Path("/bin/zsh").exists():
        checked = subprocess.run(["zsh", "-n"], input=zsh.stdout, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


# --- add: several ids, share links, stdin ------------------------------------------


ALBUM_LINKS = {
    "https://tidal.com/browse/album/501": 501,
    "http://tidal.com/album/502?u": 502,
    "https://www.tidal.com/browse/album/503/u": 503,
    "tidal.com/browse/album/504": 504,
    "listen.tidal.com/album/505": 505,
    "https://listen.tidal.com/album/506?utm_source=share&play=true#top": 506,
    "HTTPS://TIDAL.COM/BROWSE/ALBUM/507": 507,
    "508": 508,
}
TRACK_LINKS = {
    "https://listen.tidal.com/track/601": 601,
    "tidal.com/browse/track/602?u": 602,
    "https://tidal.com/track/603/u": 603,
    "https://listen.tidal.com/album/9/track/604": 604,  # a track shown inside its album
}


def test_add_takes_several_ids_and_every_share_link_form(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    albums = ctl(daemon, "add", "album", *ALBUM_LINKS, "--priority", "high")
    assert albums.returncode == 0, albums.stderr
    tracks = ctl(daemon, "add", "track", *TRACK_LINKS, "--quality", "HIGH", "--json")
    assert tracks.returncode == 0, tracks.stderr

    jobs = daemon.jobs()
    assert [(j["type"], j["target_id"]) for j in jobs] == [
        *(("album", target) for target in ALBUM_LINKS.values()),
        *(("track", target) for target in TRACK_LINKS.values()),
    ]
    assert {j["priority"] for j in jobs[:8]} == {"high"}
    assert {j["quality"] for j in jobs[8:]} == {"HIGH"}
    assert albums.stdout.splitlines() == [
        f"queued job {job['id']}: album {job['target_id']}" for job in jobs[:8]
    ]
    entries = json_of(tracks)["results"]
    assert [(e["ok"], e["id"], e["created"], e["target_id"]) for e in entries] == [
        (True, job["id"], True, job["target_id"]) for job in jobs[8:]
    ]


def test_add_reads_ids_and_links_from_stdin(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    listing = "\n".join(
        [
            "# my wish list",
            "701  https://tidal.com/browse/album/702?u",
            "",
            "listen.tidal.com/album/703   # from a friend",
            "701",  # already queued by the line above: the same job again
        ]
    )
    done = ctl(daemon, "add", "album", "700", "-", stdin=listing)
    assert done.returncode == 0, done.stderr
    jobs = daemon.jobs()
    assert [job["target_id"] for job in jobs] == [700, 701, 702, 703]
    assert done.stdout.splitlines() == [
        *(f"queued job {job['id']}: album {job['target_id']}" for job in jobs),
        f"already queued as job {jobs[1]['id']}: album 701",
    ]
    nothing = ctl(daemon, "--json", "add", "album", "-", stdin="# nothing today\n")
    assert (nothing.returncode, json_of(nothing)) == (0, {"results": []})


def test_add_refuses_what_is_not_an_id_or_a_link_of_that_type(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    for bad in (
        "https://tidal.com/browse/track/5",  # a track link given to add album
        "https://example.com/album/5",
        "https://tidal.com/browse/playlist/5",
        "0",
        "2147483648",
        "12abc",
    ):
        done = ctl(daemon, "--json", "add", "album", "1", bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert json_of(done)["error"]["code"] == "USAGE"
    track_link = ctl(daemon, "add", "album", "https://tidal.com/browse/track/5")
    assert "is not a TIDAL album link (it is a track link)" in track_link.stderr
    assert daemon.jobs() == []  # nothing is queued when one input is wrong


def test_add_prints_one_line_per_job_and_exits_1_when_any_is_refused(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, limits={"max_queue": 2})
    done = ctl(daemon, "add", "album", "801", "802", "803", "801")
    assert done.returncode == 1
    first, second = daemon.jobs()
    assert done.stdout.splitlines() == [
        f"queued job {first['id']}: album 801",
        f"queued job {second['id']}: album 802",
        f"already queued as job {first['id']}: album 801",
    ]
    assert done.stderr.startswith("album 803: error: QUEUE_FULL: ")
    as_json = ctl(daemon, "--json", "add", "album", "804", "801")
    assert as_json.returncode == 1
    refused, repeated = json_of(as_json)["results"]
    assert (refused["ok"], refused["error"]["code"], refused["target_id"]) == (
        False,
        "QUEUE_FULL",
        804,
    )
    assert (repeated["ok"], repeated["created"], repeated["id"]) == (True, False, first["id"])
    single = ctl(daemon, "--json", "add", "album", "805")  # one id: the one-job form
    assert (single.returncode, json_of(single)["error"]["code"]) == (1, "QUEUE_FULL")
    none_fit = ctl(daemon, "add", "album", "806", "807")
    assert (none_fit.returncode, none_fit.stdout) == (1, "")  # no blank line either
    assert [line.split(": ")[:2] for line in none_fit.stderr.splitlines()] == [
        ["album 806", "error"],
        ["album 807", "error"],
    ]


# --- ls: the table, run order, filters -------------------------------------------------

HEADERS = ["ID", "STATUS", "PROGRESS", "TRACKS", "SPEED", "ETA", "QUALITY", "ARTIST – TITLE"]


def table_ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:]]


def test_ls_shows_the_history_then_the_queue_in_run_order(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    low = daemon.submit("album", 901, priority="low")
    normal_old = daemon.submit("album", 902)
    high = daemon.submit("track", 903, priority="high")
    normal_new = daemon.submit("album", 904)
    gone = daemon.submit("album", 905, priority="high")
    daemon.call("cancel", id=gone)

    done = ctl(daemon, "ls")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == " ".join(HEADERS).split()
    assert table_ids(done.stdout) == [gone, high, normal_old, normal_new, low]
    listed = json_of(ctl(daemon, "ls", "--json"))  # the same jobs, in the same order
    assert [job["id"] for job in listed] == [gone, high, normal_old, normal_new, low]
    queued = json_of(ctl(daemon, "--json", "ls", "--status", "queued"))
    assert [job["id"] for job in queued] == [high, normal_old, normal_new, low]
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "album 902" in rows[normal_old]  # not resolved yet: its type and id
    assert "track 903" in rows[high]


def test_ls_fits_the_terminal_width(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    daemon.submit("album", 910)
    wide = run("--socket", str(daemon.socket), "ls", env=clean_env(COLUMNS="160"))
    narrow = run("--socket", str(daemon.socket), "ls", env=clean_env(COLUMNS="60"))
    assert "█" in wide.stdout or "·" in wide.stdout  # room for the bar
    assert "album 910" in wide.stdout
    assert all(len(line) <= 60 for line in narrow.stdout.splitlines()), narrow.stdout
    assert "·" not in narrow.stdout  # the bar gave its room to the title first


def test_ls_filters_by_status_type_artist_album_and_since(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    night = daemon.submit("album", TWO_DISC_ALBUM_ID)
    lone = daemon.submit("album", SINGLE_ALBUM_ID)
    track = daemon.submit("track", SINGLE_TRACK_ID)
    big = daemon.submit("album", BIG_ALBUM_ID)
    for job_id in (night, lone, track, big):
        assert daemon.wait_job(job_id)["status"] == "completed"
    daemon.call("pause")
    queued = daemon.submit("album", 999)

    def ids(*args: str) -> list[str]:
        done = ctl(daemon, "--json", "ls", *args)
        assert done.returncode == 0, done.stderr
        return [job["id"] for job in json_of(done)]

    assert ids() == [night, lone, track, big, queued]
    assert ids("--status", "completed") == [night, lone, track, big]
    assert ids("--status", "queued", "--status", "failed") == [queued]
    assert ids("--type", "track") == [track]
    assert ids("--type", "album", "--status", "completed") == [night, lone, big]
    assert ids("--artist", "the EXAMPLES") == [night, lone, track]
    assert ids("--artist", "long", "--album", "hundred") == [big]
    assert ids("--album", "lone signal") == [lone]  # an album job's own title
    assert ids("--since", "2h") == [night, lone, track, big, queued]
    assert ids("--since", "2999-01-01") == [queued]  # the queue is always current
    assert ids("--since", "1970-01-02", "--status", "completed") == [night, lone, track, big]
    text = ctl(daemon, "ls", "--artist", "examples", "--status", "completed")
    assert table_ids(text.stdout) == [night, lone, track]
    assert "The Examples – Night Lines" in text.stdout
    assert "2/2" not in text.stdout and "5/5" in text.stdout  # tracks n/m
    nothing = ctl(daemon, "ls", "--artist", "nobody at all")
    assert (nothing.returncode, nothing.stdout) == (0, "no jobs\n")


# --- watch ---------------------------------------------------------------------------------


def test_watch_on_an_idle_queue_says_so_and_exits_0(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    daemon.start()
    done = ctl(daemon, "watch")
    assert done.returncode == 0
    assert done.stdout.rstrip().endswith("queue: idle")
    as_json = ctl(daemon, "watch", "--json")
    assert (as_json.returncode, json_of(as_json)) == (0, {"event": "idle"})


def test_watch_job_exits_with_the_jobs_outcome(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    completes = daemon.submit("album", catalog.add_album(2, 300_000))
    fails = daemon.submit("album", UNKNOWN_ID, priority="low")  # UPSTREAM_NOT_FOUND
    following = Running(daemon, "watch", completes)
    following_failure = Running(daemon, "watch", fails)
    try:
        following.wait_out(f"job {completes}")  # it follows the job while it runs
        upstream.throttle_bps = None
        assert following.exit_code() == 0
        assert following_failure.exit_code() == 1
    finally:
        following.stop()
        following_failure.stop()
    assert f"job {completes} finished: completed" in following.out[-1]
    assert all(f"job {fails}" not in line for line in following.out)  # only the followed job
    assert f"job {fails} finished: failed" in following_failure.out[-1]

    already = ctl(daemon, "watch", completes, "--json")  # finished before watch began
    assert already.returncode == 0
    assert json_of(already) == {
        "event": "finish",
        "job_id": completes,
        "status": "completed",
        "error": None,
    }
    assert ctl(daemon, "watch", fails).returncode == 1
    missing = ctl(daemon, "watch", "999", "--json")
    assert (missing.returncode, json_of(missing)["error"]["code"]) == (1, "NOT_FOUND")


def test_watch_job_exits_1_when_the_job_is_cancelled(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    job_id = daemon.submit("album", TWO_DISC_ALBUM_ID)
    watcher = Running(daemon, "watch", job_id)
    try:
        watcher.wait_out("held: user")  # up, and showing why nothing moves
        daemon.call("cancel", id=job_id)
        assert watcher.exit_code() == 1
    finally:
        watcher.stop()
    assert f"job {job_id} finished: cancelled" in watcher.out[-1]


def test_watch_without_a_terminal_prints_one_line_per_event_with_the_facts(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_id = catalog.add_album(3, 300_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("album", album_id)
    watcher = Running(daemon, "watch")
    try:
        progress = watcher.wait_out("KiB/s, ETA ", "a progress line with speed and ETA")
        upstream.throttle_bps = None
        assert watcher.exit_code() == 0
    finally:
        watcher.stop()
    assert re.search(
        rf"job {job_id}: processing +\d+%, \d/3 tracks, [\d.]+ KiB/s, ETA \d", progress
    )
    assert any(re.search(rf"job {job_id}: track 1-01 “Load 1” written; .* 1/3 tracks", line)
               for line in watcher.out)  # fmt: skip
    assert f"job {job_id} finished: completed 100%, 3/3 tracks — Bench Ensemble" in "\n".join(
        watcher.out
    )
    assert watcher.out[-1].endswith("queue: idle")
    progress_lines = [line for line in watcher.out if f"job {job_id}: processing" in line]
    assert len(progress_lines) < 10  # a few per job, not one per 64 KiB


def test_watch_reconnects_after_a_daemon_restart_and_goes_on(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_id = catalog.add_album(3, 300_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("album", album_id)
    lines = Running(daemon, "watch")
    events = Running(daemon, "watch", "--json")
    gives_up = Running(daemon, "watch", "--no-reconnect")
    try:
        for watcher in (lines, events, gives_up):
            wait_until(lambda w=watcher: w.out, what="the watchers to print their first event")
        assert daemon.stop() == 0  # a clean restart: SIGTERM, drain, exit

        assert gives_up.exit_code() == 3
        assert any("lost the watch stream" in line for line in gives_up.err), gives_up.err
        lines.wait_err("dlqd went away")
        events.wait_out('"event": "disconnected"')
        assert lines.proc.poll() is None and events.proc.poll() is None  # still waiting

        daemon.start()
        upstream.throttle_bps = None
        assert lines.exit_code() == 0
        assert events.exit_code() == 0
    finally:
        for watcher in (lines, events, gives_up):
            watcher.stop()
    assert "dlqctl: reconnected to dlqd" in lines.err
    assert f"job {job_id} finished: completed" in "\n".join(lines.out)
    assert lines.out[-1].endswith("queue: idle")
    kinds = [json.loads(line)["event"] for line in events.out]
    assert kinds.index("disconnected") < kinds.index("reconnected") < kinds.index("finish")
    assert kinds[-1] == "idle"


def test_watch_artist_job_moves_its_line_with_its_albums_and_exits_with_its_summary(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = CRAWL_BPS
    job_id = daemon.submit("artist", ARTIST_ID)
    lines = Running(daemon, "watch", job_id)
    events = Running(daemon, "watch", job_id, "--json")
    everything = Running(daemon, "watch")  # the whole queue: the artist job among its albums
    standing = re.compile(
        rf"job {job_id}: processing +(\d+)%, (\d)/3 albums, .* — {re.escape(DISCOGRAPHY)}$"
    )

    def percents() -> list[int]:
        """The artist job's percentages since its first line (where it stood when watch began)."""
        return [int(m.group(1)) for line in lines.out if (m := standing.search(line))][1:]

    try:
        wait_until(
            lambda: len(percents()) >= 2 and max(percents()) > percents()[0],
            timeout=60,
            what="the artist job's line to rise while its albums download",
        )
        upstream.throttle_bps = None
        assert lines.exit_code() == 0
        assert events.exit_code() == 0
        assert everything.exit_code() == 0
    finally:
        for watcher in (lines, events, everything):
            watcher.stop()
    children = daemon.job(job_id)["children"]
    assert len(children) == 3
    for child in children:  # each album's end, under the artist job's lines
        assert any(re.search(rf"^\S+   └ job {child} finished: completed 100%, \d/\d tracks", line)
                   for line in lines.out), lines.out  # fmt: skip
    assert re.search(r" KiB/s, ETA \S+ — ", "\n".join(lines.out))  # its albums' speed and ETA
    assert lines.out[-1].endswith(
        f"job {job_id} finished: completed 100%, 3/3 albums — {DISCOGRAPHY}"
    )

    # Following the queue: each album's lines as its own, and where the artist job stands
    # after each album but the last, then its end.
    queue_lines = "\n".join(everything.out)
    for done in (1, 2):
        assert re.search(rf"job {job_id}: processing +\d+%, {done}/3 albums, ", queue_lines)
    assert f"job {job_id} finished: completed 100%, 3/3 albums — {DISCOGRAPHY}" in queue_lines
    assert all(f"job {child} finished: completed" in queue_lines for child in children)
    assert "└" not in queue_lines

    documents = [json.loads(line) for line in events.out]
    progress_from = {doc["job_id"] for doc in documents if doc["event"] == "progress"}
    assert progress_from and progress_from <= set(children)  # the daemon's events, as they came
    assert documents[-1] == {
        "event": "finish",
        "job_id": job_id,
        "status": "completed",
        "error": None,
    }


class Terminal:
    """dlqctl on a pseudo-terminal, its output fed to a terminal emulator (pyte) as it comes."""

    def __init__(self, daemon: DaemonProcess, *args: str, columns: int = 120, lines: int = 24):
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = clean_env(TERM="xterm")
        del env["COLUMNS"]  # the size comes from the terminal itself
        self.proc = subprocess.Popen(
            [DLQCTL, "--socket", str(daemon.socket), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
        )
        os.close(slave)

    def pump(self) -> list[str]:
        """Take what dlqctl wrote so far; the screen as it now reads."""
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the program ended and the terminal closed
                break
            if not data:
                break
            self.stream.feed(data)
        return [line.rstrip() for line in self.screen.display]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_watch_on_a_terminal_redraws_speed_eta_and_tracks_in_place(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_id = catalog.add_album(4, 300_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("album", album_id)
    row = re.compile(
        rf"^{job_id} +processing +\S+ +\d+% +(?P<done>\d)/4 +(?P<speed>[\d.]+ KiB/s) +"
        r"(?P<eta>\d+s|\d+:\d\d) +LOSSLESS( 16/44.1)? +Bench Ensemble – Bench Album"
    )
    terminal = Terminal(daemon, "watch")
    seen: list[tuple[str, str, str]] = []  # (tracks done, speed, ETA) as the screen showed them

    def screen_moved_on() -> bool:
        screen = terminal.pump()
        rows = [line for line in screen if line.startswith(f"{job_id} ")]
        assert len(rows) <= 1, screen  # redrawn in place: never a second, scrolled copy
        match = row.match(rows[0]) if rows else None
        if match is not None:  # the headline sums it up at the top
            assert screen[0].startswith("dlqd ") and "1 processing" in screen[0], screen
        if match is not None and (not seen or seen[-1] != match.groups()):
            seen.append(match.group("done", "speed", "eta"))
        advanced = len({done for done, _, _ in seen}) >= 2  # n/m moved on, on the same row
        return advanced and len({eta for _, _, eta in seen}) >= 2  # and so did the ETA

    try:
        wait_until(screen_moved_on, timeout=60, what=f"the live row of job {job_id} to advance")
        upstream.throttle_bps = None
        assert wait_until(lambda: terminal.pump() and terminal.proc.poll() is not None) is True
        assert terminal.proc.returncode == 0  # the queue went idle
        final = terminal.pump()
    finally:
        terminal.close()
    assert "recently finished:" in final
    finished = final[final.index("recently finished:") + 1]
    assert re.match(rf"^{job_id} +completed +█+ 100% +4/4 ", finished), final
    assert not terminal.screen.cursor.hidden  # the cursor is given back


def test_watch_on_a_terminal_shows_an_artist_job_with_its_albums_under_it(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = CRAWL_BPS
    job_id = daemon.submit("artist", ARTIST_ID)
    children = wait_until(lambda: daemon.job(job_id)["children"], what="the artist to expand")
    followed = Terminal(daemon, "watch", job_id)
    queue = Terminal(daemon, "watch")
    artist_row = re.compile(
        rf"^{job_id} +(?P<status>processing|completed) +\S+ +(?P<percent>\d+)% +\d/3 albums +.*"
        rf" {re.escape(DISCOGRAPHY)}$"
    )
    percents: set[str] = set()  # the artist row's percentages on the followed screen
    seen_in_queue = False  # the queue's screen had the albums under their artist job

    def with_albums_under_it(screen: list[str]) -> re.Match[str] | None:
        """The artist job's row when its album rows follow it, indented as in `ls`."""
        rows = [(i, match) for i, line in enumerate(screen) if (match := artist_row.match(line))]
        assert len(rows) <= 1, screen  # redrawn in place: never a second, scrolled copy
        if not rows:
            return None
        below = screen[rows[0][0] + 1 : rows[0][0] + 1 + len(children)]
        ids = [line.split()[0] if line else "" for line in below]
        under = all("└ The Examples – " in line for line in below)
        return rows[0][1] if ids == children and under else None

    def both_moved_on() -> bool:
        nonlocal seen_in_queue
        screen = followed.pump()
        match = with_albums_under_it(screen)
        if match is not None and match.group("status") == "processing":
            percents.add(match.group("percent"))
        seen_in_queue |= with_albums_under_it(queue.pump()) is not None
        downloading = any(line.startswith("  ↓ ") for line in screen)  # the albums' tracks
        return len(percents) >= 2 and downloading and seen_in_queue

    try:
        wait_until(both_moved_on, timeout=60, what="the artist job's live row to advance")
        upstream.throttle_bps = None
        for terminal in (followed, queue):
            assert wait_until(lambda t=terminal: t.pump() and t.proc.poll() is not None) is True
            assert terminal.proc.returncode == 0
        followed_final, queue_final = followed.pump(), queue.pump()
    finally:
        followed.close()
        queue.close()
    done = with_albums_under_it(followed_final)
    assert done is not None and done.group("status", "percent") == ("completed", "100"), (
        followed_final
    )
    recent = queue_final[queue_final.index("recently finished:") + 1 :]
    done = with_albums_under_it(recent)
    assert done is not None and done.group("status") == "completed", queue_final


def test_a_long_discography_on_a_short_terminal_counts_its_finished_albums_in_one_line() -> None:
    def album(job_id: int, status: str) -> dict[str, Any]:
        track = {"track_id": job_id, "number": 1, "title": f"Song {job_id}", "status": "pending"}
        if status == "processing":
            track.update(status="downloading", bytes_done=50, bytes_total=100)
        return {
            "id": str(job_id),
            "type": "album",
            "status": status,
            "quality": "LOSSLESS",
            "title": f"Album {job_id}",
            "artist": "The Examples",
            "parent": "1",
            "tracks": [track],
        }

    albums = [album(2 + n, "completed") for n in range(30)] + [album(32, "processing")]
    artist = {
        "id": "1",
        "type": "artist",
        "status": "processing",
        "quality": "LOSSLESS",
        "artist": "The Examples",
        "include": ["album", "ep"],
        "tracks": [],
        "children": [a["id"] for a in albums],
        "children_status": {"completed": 30},
    }
    tall = job_lines("1", artist, albums, width=120, room=40)
    assert [line.split()[0] for line in tall[1:33]] == ["1", *(a["id"] for a in albums)]
    short = job_lines("1", artist, albums, width=120, room=10)
    assert [line.split()[0] for line in short[1:3]] == ["1", "32"]  # the album still running
    assert short[3:] == ["  … and 30 finished albums", short[4]]
    assert short[4].startswith("  ↓   1 ") and short[4].endswith("Song 32")


# --- cancel, retry, rm: several jobs, or every job that ... --------------------------------


def test_cancel_retry_and_rm_act_on_several_jobs_or_a_selection(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    completed = daemon.submit("album", SINGLE_ALBUM_ID)
    failed = daemon.submit("album", UNKNOWN_ID)
    assert daemon.wait_job(completed)["status"] == "completed"
    assert daemon.wait_job(failed)["status"] == "failed"
    daemon.call("pause")
    first, second = daemon.submit("album", 11), daemon.submit("album", 12)

    cancelled = ctl(daemon, "--json", "cancel", "--all")
    assert cancelled.returncode == 0, cancelled.stderr
    assert [(e["id"], e["ok"], e["status"]) for e in json_of(cancelled)["results"]] == [
        (first, True, "cancelled"),
        (second, True, "cancelled"),
    ]
    retried = ctl(daemon, "retry", "--failed")  # failed, partial and cancelled
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines() == [  # unresolved: no title to show yet
        f"job {failed}: queued",
        f"job {first}: queued",
        f"job {second}: queued",
    ]
    some = ctl(daemon, "cancel", first, "999", second)
    assert some.returncode == 1
    assert some.stdout.splitlines() == [f"job {first}: cancelled", f"job {second}: cancelled"]
    assert some.stderr.startswith("job 999: error: NOT_FOUND: ")
    nothing = ctl(daemon, "--json", "retry", "--failed", "--status", "failed")
    assert nothing.returncode == 2  # --status goes with rm --finished only

    removed = ctl(daemon, "rm", "--finished")  # completed jobs only, unless --status
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines() == [f"removed job {completed}: The Examples – Lone Signal"]
    removed = ctl(daemon, "--json", "rm", "--finished", "--status", "cancelled")
    assert [e["id"] for e in json_of(removed)["results"]] == [first, second]
    assert ctl(daemon, "rm", "--finished").stdout == "no job to act on\n"
    active = ctl(daemon, "rm", failed)  # one job: the one-job form and its refusal
    assert active.returncode == 1
    assert active.stderr.startswith("error: INVALID_STATE: ")
    assert [job["id"] for job in daemon.jobs()] == [failed]


def test_move_and_priority_change_the_run_order_ls_shows(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    a, b, c, d = (daemon.submit("album", target) for target in (21, 22, 23, 24))

    def order() -> list[str]:
        return [job["id"] for job in json_of(ctl(daemon, "--json", "ls"))]

    moved = ctl(daemon, "move", c, "top")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout == f"job {c}: normal priority, runs 1st: album 23\n"
    assert order() == [c, a, b, d]
    assert ctl(daemon, "move", a, "bottom").returncode == 0
    assert ctl(daemon, "move", d, "up").returncode == 0  # swaps places with b
    assert order() == [c, d, b, a]
    assert ctl(daemon, "move", c, "down").returncode == 0
    assert order() == [d, c, b, a]
    raised = ctl(daemon, "--json", "priority", a, "high")
    assert raised.returncode == 0, raised.stderr
    assert (json_of(raised)["job"]["priority"], json_of(raised)["job"]["position"]) == ("high", 1)
    assert order() == [a, d, c, b]  # high runs before normal
    assert table_ids(ctl(daemon, "ls").stdout) == [a, d, c, b]
    daemon.call("cancel", id=d)
    refused = ctl(daemon, "move", d, "top")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: INVALID_STATE: ")


def test_stats_says_why_the_queue_is_held_and_what_ends_it() -> None:
    assert worker_state(True, []) == "running"
    assert worker_state(False, [{"reason": "user"}]) == "held (user: dlqctl resume to continue)"
    assert worker_state(False, [{"reason": "disk_full"}]) == "held (disk_full: resumes by itself)"
    both = worker_state(False, [{"reason": "user"}, {"reason": "rate_limited"}])
    assert both == "held (user, rate_limited: dlqctl resume; the faults end by themselves)"
    assert worker_state(False, []) == "stopping (draining)"
