"""dlqd as a systemd service: the unit files, sd_notify, the watchdog, socket activation, journald.

Each protocol is checked from the receiving end against a real dlqd process:
the test owns the notify socket, the journal socket and the activation
socket, exactly the places systemd and journald would own.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlqctl.client import Client
from dlqd.config import WorkerConfig
from dlqd.demo.catalog import TWO_DISC_ALBUM_ID, Catalog, CatalogServer
from tests.conftest import DaemonFactory
from tests.support import wait_until
from tests.test_logs import parse_journal_entry

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
INSTALLED_DLQD = "/opt/dlqd/bin/dlqd"


# --- helpers ----------------------------------------------------------------------


class DatagramSink:
    """A Unix datagram socket we own (like systemd's notify or journal socket), read by a thread."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dlqd-sink-", dir="/tmp"))
        self.path = self.dir / "sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.received.append((time.monotonic(), data))

    def messages(self) -> list[tuple[float, str]]:
        with self._lock:
            return [(stamp, data.decode()) for stamp, data in self.received]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sink() -> Iterator[DatagramSink]:
    made = DatagramSink()
    yield made
    made.close()


def notifications(sink: DatagramSink) -> list[tuple[float, str]]:
    """Each `KEY=value` line of each notify datagram, with its arrival time."""
    return [(stamp, line) for stamp, text in sink.messages() for line in text.split("\n") if line]


def statuses(sink: DatagramSink) -> list[str]:
    return [line[len("STATUS=") :] for _, line in notifications(sink) if line.startswith("STATUS=")]


def pings(sink: DatagramSink) -> list[float]:
    return [stamp for stamp, line in notifications(sink) if line == "WATCHDOG=1"]


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section → key → values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


# --- unit files ---------------------------------------------------------------------


def test_service_unit_declares_notify_watchdog_directories_and_hardening() -> None:
    service = unit_settings(UNITS / "dlqd.service")["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify"
    assert one["ExecStart"].split()[0] == INSTALLED_DLQD
    assert seconds(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure"
    assert (one["User"], one["Group"]) == ("dlqd", "dlqd")
    assert one["StateDirectory"] == one["RuntimeDirectory"] == one["ConfigurationDirectory"]
    # systemd must not SIGKILL a drain that is still inside its grace period.
    assert seconds(one["TimeoutStopSec"]) > WorkerConfig().drain_grace_s + 10
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallFilter": "@system-service",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }
    assert {key: one.get(key) for key in hardening} == hardening
    assert any("/srv/music" in path for path in service["ReadWritePaths"])


def test_socket_unit_listens_where_dlqctl_looks() -> None:
    unit = unit_settings(UNITS / "dlqd.socket")["Socket"]
    assert unit["ListenStream"] == ["/run/dlqd/dlqd.sock"]
    assert unit["SocketMode"] == ["0660"]
    assert unit["SocketGroup"] == ["dlqd"]


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    return tool


def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    """What is verified: both units as shipped, except that ExecStart names this venv's dlqd.

    `verify` insists the ExecStart binary exists; /opt/dlqd is not installed in
    the test environment, so a copy points at the same entry point in the venv.
    verify exits 0 even for unknown or malformed keys, so any output fails too.
    """
    tool = _analyze()
    dlqd_bin = Path(sys.executable).parent / "dlqd"
    assert dlqd_bin.exists(), "the dlqd entry point is not installed in the venv"
    for name in ("dlqd.service", "dlqd.socket"):
        text = (UNITS / name).read_text()
        (tmp_path / name).write_text(text.replace(INSTALLED_DLQD, str(dlqd_bin)))
    result = subprocess.run(
        [tool, "verify", str(tmp_path / "dlqd.socket"), str(tmp_path / "dlqd.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


def test_systemd_analyze_rates_the_service_well_hardened(tmp_path: Path) -> None:
    tool = _analyze()
    unit = tmp_path / "dlqd.service"
    shutil.copy(UNITS / "dlqd.service", unit)
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for dlqd.service: ([\d.]+)", result.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot rate units offline: {result.stderr.strip()}")
    assert float(match[1]) <= 2.5, result.stdout


def test_sysusers_entry_creates_the_dlqd_user_and_group(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed here")
    conf_dir = tmp_path / "usr/lib/sysusers.d"
    conf_dir.mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    shutil.copy(UNITS / "sysusers.d/dlqd.conf", conf_dir / "dlqd.conf")
    result = subprocess.run(
        [tool, f"--root={tmp_path}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    group = (tmp_path / "etc/group").read_text().splitlines()
    user = next(line.split(":") for line in passwd if line.startswith("dlqd:"))
    assert user[5] == "/var/lib/dlqd"
    assert user[6].endswith("nologin")
    assert any(line.startswith("dlqd:") for line in group)


# --- sd_notify and the watchdog ------------------------------------------------------


def test_notify_ready_status_watchdog_and_stopping(
    make_daemon: DaemonFactory, upstream: CatalogServer, sink: DatagramSink
) -> None:
    daemon = make_daemon(
        upstream=upstream,
        env={
            "NOTIFY_SOCKET": str(sink.path),
            "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
            "DLQD_DEBUG_HOOKS": "1",
            "DLQD_DEBUG_BLOCK_S": "2",
        },
    )
    daemon.start(wait=False)
    wait_until(lambda: "READY=1" in [line for _, line in notifications(sink)], what="READY=1")
    # READY=1 promises a listening socket: the very next connection is answered.
    with Client(str(daemon.socket), timeout_s=5) as client:
        assert client.call("health")["version"]

    # STATUS= follows the queue.
    daemon.call("pause")
    job_id = daemon.submit("album", TWO_DISC_ALBUM_ID)
    wait_until(
        lambda: any(s.startswith("held (user): 1 queued") for s in statuses(sink)), what="held"
    )
    daemon.call("resume")
    assert daemon.wait_job(job_id)["status"] == "completed"
    wait_until(
        lambda: "0 queued, 0 processing" in (last := statuses(sink)[-1]) and "1 completed" in last,
        what="STATUS with the finished album",
    )

    # Pings at half of WATCHDOG_USEC: ten of them take about two seconds.
    mark = time.monotonic()
    wait_until(lambda: len([p for p in pings(sink) if p > mark]) >= 10, timeout=15, what="pings")
    tenth = [p for p in pings(sink) if p > mark][9]
    assert 1.0 < tenth - mark < 8.0

    # A blocked event loop sends no pings: SIGUSR1 (debug hook) blocks it for 2 s.
    before = len(pings(sink))
    signalled = time.monotonic()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: "event loop released" in daemon.logs(), timeout=15, what="the block to end")
    wait_until(lambda: len(pings(sink)) >= before + 3, timeout=10, what="pings to resume")
    around = [p for p in pings(sink) if p > signalled - 1.0]
    longest_gap = max(b - a for a, b in itertools.pairwise(around))
    assert longest_gap >= 1.5, f"pings kept coming while the loop was blocked: {around}"

    assert daemon.stop() == 0
    lines = [line for _, line in notifications(sink)]
    assert "STOPPING=1" in lines
    assert lines.index("STOPPING=1") > lines.index("READY=1")
    assert any(s.startswith("draining") for s in statuses(sink))


def test_without_notify_socket_dlqd_runs_the_same(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(env={"WATCHDOG_USEC": "400000"})
    daemon.start()
    assert daemon.call("health")["ok"]
    assert daemon.stop() == 0


# --- socket activation --------------------------------------------------------------

# What systemd does between fork and exec: the listening socket at fd 3 and
# LISTEN_PID naming the process that will run dlqd.
ACTIVATION_SHIM = """
import os, sys
source_fd = int(sys.argv[1])
os.dup2(source_fd, 3)
os.close(source_fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_FDNAMES"] = "dlqd.socket"
os.execv(sys.executable, [sys.executable, "-m", "dlqd", *sys.argv[2:]])
"""


def dlqctl(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlqctl", "--socket", str(path), "--json", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_socket_activation_serves_the_inherited_socket(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    activation_dir = Path(tempfile.mkdtemp(prefix="dlqd-act-", dir="/tmp"))
    path = activation_dir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    launcher = [sys.executable, "-c", ACTIVATION_SHIM, str(listener.fileno())]
    try:
        # A client connecting before dlqd runs waits in the backlog, as with systemd.
        early: dict[str, object] = {}

        def early_client() -> None:
            with Client(str(path), timeout_s=30) as client:
                early["stats"] = client.call("stats")

        thread = threading.Thread(target=early_client)
        thread.start()
        daemon.start(wait=False, launcher=launcher, pass_fds=[listener.fileno()])
        thread.join(timeout=30)
        assert "stats" in early, daemon.logs()

        added = dlqctl(path, "add", "album", str(TWO_DISC_ALBUM_ID))
        assert added.returncode == 0, added.stderr
        job_id = json.loads(added.stdout)["id"]

        def finished() -> dict[str, object] | None:
            shown = dlqctl(path, "show", job_id)
            job = json.loads(shown.stdout)
            return job if job["status"] in ("completed", "partial", "failed") else None

        assert wait_until(finished, what="the album")["status"] == "completed"
        # dlqd used the inherited socket and never bound its configured path.
        assert not daemon.socket.exists()
        assert daemon.stop() == 0
        # The socket is systemd's: dlqd leaves it in place for the next start.
        assert path.exists()
        daemon.start(wait=False, launcher=launcher, pass_fds=[listener.fileno()])
        health = wait_until(lambda: dlqctl(path, "health"), what="the restarted dlqd")
        assert health.returncode == 0, health.stdout + health.stderr
        assert daemon.stop() == 0
    finally:
        listener.close()
        shutil.rmtree(activation_dir, ignore_errors=True)


# --- journald --------------------------------------------------------------------------

LINES_WITH_A_SUMMARY = {
    b"job started",
    b"job resolved",
    b"job finished",
    b"track finished",
    b"track failed",
    b"track deferred to a later pass",
}


def test_journal_format_sends_native_protocol_fields(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, sink: DatagramSink
) -> None:
    failing_track = catalog.album(TWO_DISC_ALBUM_ID).track_ids[1]
    upstream.inject("track", "status", times=None, track_id=failing_track, status=404)
    daemon = make_daemon(upstream=upstream, env={"DLQD_JOURNAL_SOCKET": str(sink.path)})
    daemon.start(extra_args=["--log-format", "journal"])
    job_id = daemon.submit("album", TWO_DISC_ALBUM_ID)
    assert daemon.wait_job(job_id)["status"] == "partial"

    def entries_for_job() -> list[dict[str, bytes]]:
        entries = [parse_journal_entry(data) for _, data in sink.received]
        return [e for e in entries if e.get("JOB_ID") == job_id.encode()]

    wait_until(
        lambda: any(e["EVENT"] == b"job finished" for e in entries_for_job()),
        what="the job's last log line",
    )
    entries = entries_for_job()
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"] == b"dlqd"
        assert entry["PRIORITY"] in (b"3", b"4", b"6", b"7")
    started = next(e for e in entries if e["EVENT"] == b"job started")
    assert started["PRIORITY"] == b"6"
    assert started["TARGET_ID"] == str(TWO_DISC_ALBUM_ID).encode()
    done = [e for e in entries if e["EVENT"] == b"track finished"]
    assert len(done) == 4 and all(e["TRACK_ID"] and e["OUTCOME"] == b"written" for e in done)
    failed = next(e for e in entries if e["EVENT"] == b"track failed")
    assert failed["PRIORITY"] == b"4"
    assert failed["TRACK_ID"] == str(failing_track).encode()
    assert failed["ERROR_CODE"] == b"UPSTREAM_NOT_FOUND"
    finish = next(e for e in entries if e["EVENT"] == b"job finished")
    assert finish["STATUS"] == b"partial"
    # MESSAGE reads as a sentence for `journalctl -u dlqd`: job, artist – title, status.
    assert re.fullmatch(
        rf"job {job_id} partial: The Examples – Night Lines \(4/5 tracks, [0-9.]+ KiB in \d+ s\); "
        r"UPSTREAM_NOT_FOUND: .+",
        finish["MESSAGE"].decode(),
    ), finish["MESSAGE"]
    assert started["MESSAGE"].decode() == f"job {job_id} started: The Examples – Night Lines"
    for entry in done:
        assert re.fullmatch(
            rf"job {job_id} track [1-5]/5 completed: The Examples.* – .+ \([0-9.]+ KiB, written\)",
            entry["MESSAGE"].decode(),
        ), entry["MESSAGE"]
    assert re.fullmatch(
        rf"job {job_id} track 2/5 failed: The Examples, Guest Singer – Shared Ground "
        r"\(UPSTREAM_NOT_FOUND: .+\)",
        failed["MESSAGE"].decode(),
    ), failed["MESSAGE"]
    other = [e for e in entries if e["EVENT"] not in LINES_WITH_A_SUMMARY]
    assert all(e["MESSAGE"] == e["EVENT"] for e in other)
    # Nothing fell back to stderr: every event reached the journal socket.
    assert daemon.stop() == 0
    assert not [line for line in daemon.logs().splitlines() if line.startswith("{")]
