"""Memory benchmark (issue 3), run by hand: `.venv/bin/python bench/bench_memory.py`.

The daemon's peak RSS (VmHWM in /proc/<pid>/status) over a whole download of
one big track (default 1 GB) against one small track (10 MB), each in a fresh
daemon process, from the local catalog upstream on 127.0.0.1. Streaming to
disk means the two peaks should differ by little. Target: < 20 MB apart.

The catalog (in this process) holds each file in memory; it is generated
before the daemon starts and is not part of the daemon's RSS.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlqd.demo.catalog import Catalog, CatalogServer
from tests.support import DaemonProcess


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss(root: Path, server: CatalogServer, album_id: int) -> tuple[int, int, float]:
    """(VmHWM at start-up, VmHWM after the download, seconds) of a fresh daemon, in KiB."""
    daemon = DaemonProcess(
        root,
        settings={
            "upstream": {"base_url": [server.base_url], "cover_base_url": server.cover_base_url}
        },
    )
    daemon.start()
    try:
        assert daemon.proc is not None
        idle = status_kib(daemon.proc.pid, "VmHWM")
        started = time.perf_counter()
        job = daemon.wait_job(daemon.submit("album", album_id), timeout=600)
        elapsed = time.perf_counter() - started
        if job["status"] != "completed":
            raise SystemExit(f"job ended {job['status']}: {job['error']}")
        return idle, status_kib(daemon.proc.pid, "VmHWM"), elapsed
    finally:
        daemon.stop()
        daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=1_000_000_000, help="bytes of the big track")
    parser.add_argument("--small", type=int, default=10_000_000, help="bytes of the small track")
    args = parser.parse_args()

    catalog = Catalog(cache_bytes=2 * (args.big + args.small))
    scratch = Path(tempfile.mkdtemp(prefix="dlqd-bench-mem-"))
    results = {}
    for label, size in (("small", args.small), ("big", args.big)):
        album_id = catalog.add_album(1, size)
        [track_id] = catalog.album(album_id).track_ids
        print(f"generating {size} B of FLAC ...", flush=True)
        actual = len(catalog.audio_for(track_id, "LOSSLESS"))
        with CatalogServer(catalog) as server:
            idle, peak, elapsed = peak_rss(scratch / label, server, album_id)
        results[label] = (actual, idle, peak, elapsed)
        print(f"{label}: {actual} B in {elapsed:.1f} s; VmHWM idle {idle} KiB, peak {peak} KiB")
    shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(
        f"date: {datetime.date.today().isoformat()}; nproc {os.cpu_count()}; "
        f"Python {platform.python_version()}"
    )
    print()
    print("| track | bytes | VmHWM after start-up (MiB) | VmHWM after download (MiB) |")
    print("|---|---|---|---|")
    for label, (actual, idle, peak, _elapsed) in results.items():
        print(f"| {label} | {actual:,} | {idle / 1024:.1f} | {peak / 1024:.1f} |")
    difference = (results["big"][2] - results["small"][2]) / 1024
    verdict = "meets" if abs(difference) < 20 else "misses"
    print()
    print(f"peak difference big - small = {difference:.1f} MiB ({verdict} the < 20 MB target)")


if __name__ == "__main__":
    main()
