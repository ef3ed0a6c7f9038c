"""dlqctl start-up benchmark (issue 10), run by hand: `.venv/bin/python bench/bench_dlqctl.py`.

Measures the wall time of whole `dlqctl` processes — from the shell's point
of view: process start to exit — against a real dlqd (scheduler held, a few
hundred queued jobs), N runs each:
  - `python -c pass` (the interpreter's own floor on this machine),
  - `dlqctl --version` (start-up and argument parsing, no socket),
  - `dlqctl stats` (the target: median under 150 ms),
  - `dlqctl --json stats`, `dlqctl ls` (a 300-job table).
Then the heaviest imports of `dlqctl stats` (python -X importtime).

The installed console script is run exactly as a user runs it. Prints
Markdown tables; give the machine's load with the figures (2 shared CPUs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlqctl.client import Client
from tests.support import DaemonProcess

DLQCTL = str(Path(sys.executable).with_name("dlqctl"))
TARGET_MS = 150.0


def wall_ms(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append((time.perf_counter() - start) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.decode()}")
    return times


def heaviest_imports(
    socket_path: str, env: dict[str, str], count: int = 8
) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the slowest imports in one `dlqctl stats`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dlqctl", "--socket", socket_path, "stats"],
        capture_output=True,
        text=True,
        env=env,
    )
    rows = []
    for line in done.stderr.splitlines():  # "import time:  self_us | cumulative_us | name"
        if not line.startswith("import time:"):
            continue
        _self_us, cumulative_us, name = (part.strip() for part in line[12:].split("|"))
        if cumulative_us.isdigit():
            rows.append((int(cumulative_us), name))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="runs per command (default 50)")
    parser.add_argument("--jobs", type=int, default=300, help="queued jobs for ls (≤ 1000)")
    options = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLQD_")}
    env["COLUMNS"] = "120"
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average before: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-dlqctl-") as scratch:
        daemon = DaemonProcess(Path(scratch), settings={"limits": {"max_queue": 100_000}})
        daemon.start()
        try:
            daemon.call("pause")
            with Client(str(daemon.socket)) as client:
                items = [
                    {"type": "album", "target_id": n, "quality": "LOSSLESS"}
                    for n in range(1, options.jobs + 1)
                ]
                client.call("submit", {"items": items})
            socket_path = str(daemon.socket)
            commands = {
                "`python -c pass`": [sys.executable, "-c", "pass"],
                "`dlqctl --version`": [DLQCTL, "--version"],
                "`dlqctl stats`": [DLQCTL, "--socket", socket_path, "stats"],
                "`dlqctl --json stats`": [DLQCTL, "--socket", socket_path, "--json", "stats"],
                f"`dlqctl ls` ({options.jobs} jobs)": [DLQCTL, "--socket", socket_path, "ls"],
            }
            print("\n| command | median ms | p90 ms | min ms | runs |\n|---|---|---|---|---|")
            medians = {}
            for label, argv in commands.items():
                wall_ms(argv, 3, env)  # warm the page cache
                times = sorted(wall_ms(argv, options.runs, env))
                medians[label] = statistics.median(times)
                p90 = times[int(len(times) * 0.9) - 1]
                figures = f"{medians[label]:.1f} | {p90:.1f} | {times[0]:.1f} | {len(times)}"
                print(f"| {label} | {figures} |")
            verdict = "met" if medians["`dlqctl stats`"] < TARGET_MS else "NOT met"
            print(f"\ntarget: `dlqctl stats` median < {TARGET_MS:.0f} ms: {verdict}")
            print("\n| heaviest imports of `dlqctl stats` | cumulative ms |\n|---|---|")
            for micros, name in heaviest_imports(socket_path, env):
                print(f"| `{name}` | {micros / 1000:.1f} |")
        finally:
            daemon.cleanup()
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
