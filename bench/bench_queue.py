"""Queue-core benchmark (issue 2), run by hand: `.venv/bin/python bench/bench_queue.py`.

Measures, against a real dlqd process with the scheduler held:
  1. durable submits per second with 1 and with 16 concurrent clients
     (each client its own connection, each submit acknowledged after fsync);
  2. start-up time with 100,000 jobs in the state dir, journal only and with a
     snapshot: a real daemon start until its socket answers, and
     `JournalFiles.recover()` alone.

Targets (DESIGN/issue 2): >= 5,000 durable submits/s with 16 clients;
start-up < 1 s with 100,000 jobs. Prints one Markdown table per part.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlqctl.client import Client
from dlqd.journal import JournalFiles, encode_record
from dlqd.state import to_snapshot
from tests.support import DaemonProcess

SETTINGS = {
    "limits": {"max_queue": 10_000_000, "submit_rate_per_min": 0},
    "daemon": {"journal_compact_bytes": 1 << 30},
}


def submit_rate(root: Path, clients: int, per_client: int) -> tuple[float, float]:
    """Durable submits/s, and the daemon's CPU µs per submit.

    `clients` threads, each on its own connection submitting `per_client`
    distinct jobs one after the other (each waits for its acknowledgement).
    """
    daemon = DaemonProcess(root, settings=SETTINGS)
    daemon.start()
    try:
        daemon.call("pause")  # hold the scheduler: jobs stay queued
        barrier = threading.Barrier(clients + 1)
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            try:
                with Client(str(daemon.socket)) as client:
                    barrier.wait()
                    base = 1 + index * per_client
                    for target in range(base, base + per_client):
                        client.call(
                            "submit", {"type": "track", "target_id": target, "quality": "LOSSLESS"}
                        )
            except BaseException as exc:  # reported after the run
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        assert daemon.proc is not None
        barrier.wait()
        cpu_before = cpu_seconds(daemon.proc.pid)
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu_used = cpu_seconds(daemon.proc.pid) - cpu_before
        if errors:
            raise errors[0]
        total = daemon.call("stats")["queue"]["total"]
        assert total == clients * per_client, total
        return clients * per_client / elapsed, cpu_used / (clients * per_client) * 1e6
    finally:
        daemon.stop()
        daemon.cleanup()


def write_journal(state_dir: Path, jobs: int, snapshot: bool) -> None:
    """Put `jobs` submitted jobs on disk the way the daemon would (one batch per 256)."""
    files = JournalFiles(state_dir)
    state, _ = files.recover()
    from dlqd.state import apply

    now = time.time()
    batch: list[bytes] = []
    for n in range(1, jobs + 1):
        event = {
            "e": "submit",
            "id": str(state.next_seq),
            "type": "album" if n % 3 == 0 else "track",
            "target_id": n,
            "quality": "LOSSLESS",
            "priority": "normal",
            "at": now,
        }
        apply(state, event)
        batch.append(encode_record(event))
        if len(batch) == 256:
            files.append(b"".join(batch))
            batch = []
    if batch:
        files.append(b"".join(batch))
    if snapshot:
        first = files.rotate()
        files.write_snapshot(to_snapshot(state), first)
    files.close()


def time_recover(state_dir: Path, repeat: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `JournalFiles.recover()` in this process."""
    walls, cpus = [], []
    for _ in range(repeat):
        files = JournalFiles(state_dir)
        wall, cpu = time.perf_counter(), time.process_time()
        files.recover()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        files.close()
    return statistics.median(walls), statistics.median(cpus)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_daemon_start(root: Path, repeat: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds from spawning dlqd until its socket answers `health`.

    CPU is the daemon's own user+system time at that moment: steadier than the
    wall time on a shared machine.
    """
    walls, cpus = [], []
    for _ in range(repeat):
        daemon = DaemonProcess(root, settings=SETTINGS)
        try:
            started = time.perf_counter()
            daemon.start()
            walls.append(time.perf_counter() - started)
            assert daemon.proc is not None
            cpus.append(cpu_seconds(daemon.proc.pid))
        finally:
            daemon.kill()  # a crash: leave the state dir exactly as it was
            daemon.cleanup()
    return statistics.median(walls), statistics.median(cpus)


def python_start(repeat: int) -> float:
    """Baseline: the same interpreter importing dlqd.daemon and exiting."""
    import subprocess

    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dlqd.daemon"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fsync_baseline(directory: Path, seconds: float = 2.0) -> float:
    """Sequential 100-byte append + fsync per second: BASELINES.md's first fsync figure."""
    path = directory / "fsync-baseline"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    count = 0
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            count += 1
    finally:
        os.close(fd)
        path.unlink()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=8000, help="submits per run")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs for the start-up part")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--dir", type=Path, help="scratch dir (default: a temp dir)")
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dlqd-bench-", dir=options.dir))
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; scratch {scratch}"
    )
    try:
        print(f"\nbaseline: 100-byte append + fsync, sequential: {fsync_baseline(scratch):,.0f}/s")
        print("\n| clients | durable submits/s (median) | runs | daemon CPU per submit |")
        print("|---|---|---|---|")
        for clients in (1, 16):
            per_client = max(1, options.submits // clients)
            runs = [
                submit_rate(scratch / f"submit-{clients}-{run}", clients, per_client)
                for run in range(options.repeat)
            ]
            rates = [rate for rate, _ in runs]
            shown = ", ".join(f"{r:,.0f}" for r in rates)
            cpu_us = statistics.median(cpu for _, cpu in runs)
            print(f"| {clients} | {statistics.median(rates):,.0f} | {shown} | {cpu_us:.0f} µs |")

        head = f"start-up with {options.jobs:,} jobs"
        print(f"\n| {head} | recover() alone, wall / CPU | daemon start → answers, wall / CPU |")
        print("|---|---|---|")
        for snapshot in (False, None, True):
            label = {False: "journal only", True: "snapshot", None: "empty state dir"}[snapshot]
            root = scratch / f"start-{label.replace(' ', '-')}"
            if snapshot is not None:
                write_journal(root / "state", options.jobs, snapshot)
            recover_s = time_recover(root / "state", options.repeat)
            start_s = time_daemon_start(root, options.repeat)
            print(
                f"| {label} | {recover_s[0]:.3f} s / {recover_s[1]:.3f} s "
                f"| {start_s[0]:.3f} s / {start_s[1]:.3f} s |"
            )
        empty_s = python_start(options.repeat)
        print(f"| (python + import dlqd.daemon, no daemon) | – | {empty_s:.3f} s |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
