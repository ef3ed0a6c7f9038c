"""`health` while clients page through a big queue; by hand: `.venv/bin/python bench/bench_list.py`.

A real dlqd (started from the current directory's checkout, so running this
from another checkout measures that one) holds JOBS queued jobs (the queue
is paused: nothing downloads). CLIENTS threads each ask `list` for
LIMIT-job pages back to back for SECONDS, while a probe thread sends
`health` on a fresh connection every 10 ms (connect + request + answer, as
`dlqctl health` does). Reports the probe's latency percentiles and the
pages' own latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlqctl.client import Client
from dlqd.protocol import BATCH_MAX_ITEMS
from tests.support import DaemonProcess


def percentile(samples: list[float], percent: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, round(len(ordered) * percent / 100 + 0.5) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlqd-bench-list-") as scratch:
        daemon = DaemonProcess(
            Path(scratch),
            settings={"limits": {"max_queue": args.jobs + 10, "submit_rate_per_min": 0}},
        )
        daemon.start()
        try:
            socket_path = str(daemon.socket)
            daemon.call("pause")
            with Client(socket_path) as client:
                for start in range(1, args.jobs + 1, BATCH_MAX_ITEMS):
                    ids = range(start, min(args.jobs + 1, start + BATCH_MAX_ITEMS))
                    items = [{"type": "album", "target_id": n, "quality": "LOSSLESS"} for n in ids]
                    client.call("submit", {"items": items})
            stop = threading.Event()
            pages: list[float] = []
            probes: list[float] = []

            def pager() -> None:
                with Client(socket_path, timeout_s=60) as client:
                    while not stop.is_set():
                        started = time.perf_counter()
                        client.call("list", {"limit": args.limit})
                        pages.append((time.perf_counter() - started) * 1000)

            def prober() -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    with Client(socket_path, timeout_s=60) as client:
                        client.call("health")
                    probes.append((time.perf_counter() - started) * 1000)
                    time.sleep(0.01)

            threads = [threading.Thread(target=pager) for _ in range(args.clients)]
            threads.append(threading.Thread(target=prober))
            for thread in threads:
                thread.start()
            time.sleep(args.seconds)
            stop.set()
            for thread in threads:
                thread.join()
        finally:
            daemon.stop()
    print(f"load average {os.getloadavg()}, {args.jobs} jobs, {args.clients} clients x list")
    print(f"limit={args.limit} for {args.seconds:g} s\n")
    print("| what | samples | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|")
    for name, samples in (("health", probes), (f"list page of {args.limit}", pages)):
        print(
            f"| {name} | {len(samples)} | {statistics.median(samples):.1f} | "
            f"{percentile(samples, 99):.1f} | {max(samples):.1f} |"
        )


if __name__ == "__main__":
    main()
