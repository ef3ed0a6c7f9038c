"""Download benchmark (issue 3), run by hand: `.venv/bin/python bench/bench_download.py`.

Wall time to download one album (default 20 tracks x 30 MiB of FLAC) from the
local catalog upstream on 127.0.0.1, by:
  - dlqd: a real daemon process (started before the clock), `submit` album,
    clock stops when `get` says `completed`. Includes what aria2c does not do:
    /album/ + 20 /track/ manifests + the cover, tagging each file (mutagen
    rewrites the FLAC header into a new file when the padding is short), an
    fsync per file, the atomic rename and a directory fsync.
  - aria2c -j4 (4 files at once, like dlqd's default max_concurrent = 4) on the
    same media URLs, read from /track/ manifests before the clock starts;
    `--file-allocation=none`, no fsync.
Rounds alternate which tool goes first; `sync` runs (unclocked) before each
run so neither pays for the other's dirty pages. The catalog's audio is
generated and cached before the first round, so generation is never timed.
Target: dlqd <= 1.1 x aria2c (median over rounds).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlqctl.client import Client
from dlqd.catalog import Catalog, CatalogServer
from tests.support import DaemonProcess


def ensure_aria2c() -> str:
    found = shutil.which("aria2c")
    if found:
        return found
    print("aria2c missing: apt-get install -y aria2", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "aria2"], check=True)
    found = shutil.which("aria2c")
    if not found:
        raise SystemExit("aria2c still not found after installing aria2")
    return found


def media_urls(server: CatalogServer, track_ids: tuple[int, ...]) -> list[tuple[int, str]]:
    """(track id, first BTS url) per track, from the upstream's /track/ manifests."""
    urls = []
    with httpx.Client(base_url=server.base_url) as client:
        for track_id in track_ids:
            data = client.get("/track/", params={"id": track_id, "quality": "LOSSLESS"}).json()
            manifest = json.loads(base64.b64decode(data["data"]["manifest"]))
            urls.append((track_id, manifest["urls"][0]))
    return urls


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_dlqd(
    root: Path, server: CatalogServer, album_id: int, max_concurrent: int
) -> tuple[float, float]:
    """(wall seconds, daemon CPU seconds) from submit to `completed`."""
    daemon = DaemonProcess(
        root,
        settings={
            "upstream": {"base_url": [server.base_url], "cover_base_url": server.cover_base_url},
            "worker": {"max_concurrent": max_concurrent},
        },
    )
    daemon.start()
    try:
        assert daemon.proc is not None
        os.sync()
        cpu_before = cpu_seconds(daemon.proc.pid)
        started = time.perf_counter()
        # One connection polled every 20 ms: cheap for the daemon, fine-grained enough.
        with Client(str(daemon.socket)) as client:
            submit = {"type": "album", "target_id": album_id, "quality": "LOSSLESS"}
            job_id = client.call("submit", submit)["id"]
            while True:
                job = client.call("get", {"id": job_id})["job"]
                if job["status"] in ("completed", "partial", "failed", "cancelled"):
                    break
                time.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(daemon.proc.pid) - cpu_before
        if job["status"] != "completed":
            raise SystemExit(f"dlqd job ended {job['status']}: {job['error']}\n{daemon.logs()}")
        return elapsed, cpu
    finally:
        daemon.stop()
        daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def run_aria2c(
    aria2c: str, root: Path, urls: list[tuple[int, str]], jobs: int
) -> tuple[float, float]:
    """(wall seconds, aria2c CPU seconds)."""
    root.mkdir(parents=True)
    listing = root / "urls.txt"
    listing.write_text("".join(f"{url}\n  out={track_id}.flac\n" for track_id, url in urls))
    command = [
        aria2c,
        f"-j{jobs}",
        "-x1",
        "--file-allocation=none",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--console-log-level=warn",
        "--summary-interval=0",
        "--download-result=hide",
        "-d",
        str(root / "out"),
        "-i",
        str(listing),
    ]
    try:
        os.sync()
        cpu_before = children_cpu_seconds()
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        return elapsed, children_cpu_seconds() - cpu_before
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--bytes-per-track", type=int, default=30 * 1024 * 1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="dlqd max_concurrent = aria2 -j")
    parser.add_argument("--dir", type=Path, default=None, help="scratch dir (default: a temp dir)")
    args = parser.parse_args()

    aria2c = ensure_aria2c()
    version = subprocess.run([aria2c, "--version"], capture_output=True, text=True).stdout
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="dlqd-bench-"))
    catalog = Catalog(cache_bytes=args.tracks * args.bytes_per_track * 2)
    album_id = catalog.add_album(args.tracks, args.bytes_per_track)
    track_ids = catalog.album(album_id).track_ids
    print(f"generating {args.tracks} x {args.bytes_per_track} B of FLAC ...", flush=True)
    total_bytes = sum(len(catalog.audio_for(t, "LOSSLESS")) for t in track_ids)

    times: dict[str, list[float]] = {"dlqd": [], "aria2c": []}
    cpus: dict[str, list[float]] = {"dlqd": [], "aria2c": []}
    with CatalogServer(catalog) as server:
        urls = media_urls(server, track_ids)
        for round_number in range(args.rounds):
            order = ["dlqd", "aria2c"] if round_number % 2 == 0 else ["aria2c", "dlqd"]
            for tool in order:
                root = scratch / f"{tool}-{round_number}"
                if tool == "dlqd":
                    elapsed, cpu = run_dlqd(root, server, album_id, args.concurrency)
                else:
                    elapsed, cpu = run_aria2c(aria2c, root, urls, args.concurrency)
                times[tool].append(elapsed)
                cpus[tool].append(cpu)
                rate = total_bytes / elapsed / 1e6
                print(
                    f"round {round_number + 1} {tool:7s} {elapsed:7.3f} s  {rate:7.1f} MB/s"
                    f"  cpu {cpu:6.2f} s",
                    flush=True,
                )
    shutil.rmtree(scratch, ignore_errors=True)

    dlqd_median = statistics.median(times["dlqd"])
    aria_median = statistics.median(times["aria2c"])
    print()
    print(
        f"date: {datetime.date.today().isoformat()}; nproc {os.cpu_count()}; "
        f"Python {platform.python_version()}; {version.splitlines()[0]}"
    )
    print(
        f"album: {args.tracks} tracks, {total_bytes} bytes; concurrency {args.concurrency}; "
        f"{args.rounds} rounds, alternating"
    )
    print()
    print("| tool | wall per run (s) | median wall (s) | MB/s (median) | median CPU (s) |")
    print("|---|---|---|---|---|")
    for tool, median in (("dlqd", dlqd_median), ("aria2c -j4", aria_median)):
        key = tool.split()[0]
        runs = ", ".join(f"{t:.2f}" for t in times[key])
        cpu = statistics.median(cpus[key])
        print(f"| {tool} | {runs} | {median:.3f} | {total_bytes / median / 1e6:.1f} | {cpu:.2f} |")
    print()
    ratio = dlqd_median / aria_median
    verdict = "meets" if ratio <= 1.1 else "misses"
    print(f"ratio dlqd / aria2c = {ratio:.3f} ({verdict} the <= 1.1 target)")


if __name__ == "__main__":
    main()
