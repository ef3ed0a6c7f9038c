"""Hostile-upstream benchmark (issue 8), run by hand: `.venv/bin/python bench/bench_hostile.py`.

The daemon's memory and responsiveness while the upstream attacks it. Per
scenario, a fresh daemon (own state dir, library and socket) is started
against the local catalog upstream (`CatalogServer`, in this process), its
idle RSS (VmRSS once it answers) is read, one hostile job is submitted, and
until that job ends (and `--settle` s more, for work or memory that outlives
it) or `--timeout` passes, this process samples every `--interval` seconds:
  - VmRSS / VmHWM of the daemon from /proc/<pid>/status (a watcher thread);
  - the latency of a `health` request on a fresh control-socket connection
    (connect + request + answer; no answer within `--health-timeout` is a
    failed sample).
Targets (issue 8, "Done when"): peak RSS (VmHWM) < idle RSS + 100 MiB, and
every `health` answered in < 100 ms.

Scenarios (the upstream's answers are scripted with `CatalogServer.script`):
  baseline      an ordinary one-track job, nothing hostile: the reference row.
  gzip-bomb     /info/ of the track is ~2 MB of gzip inflating to 2 GiB of
                JSON whitespace (`Content-Encoding: gzip`); whitespace, not
                garbage, so only a size cap, not a syntax error, can stop it.
  big-mpd       /track/ answers ~50 MB of valid JSON whose DASH manifest is a
                ~37 MB MPD of ~2.5 million `<S>` timeline entries (its media
                URLs lead nowhere: the job can only fail).
  endless-album an album claiming numberOfTracks 10^9 whose every page holds
                100 new track items, so a naive pager never stops.

The bench never lets a scenario hang or eat the machine: each ends after
`--timeout` s, and a daemon whose RSS grows more than `--abort-mib` above idle
is killed (SIGKILL, its own pid only) and the scenario fails. Every daemon is
killed at the end of its scenario. Both keep the run bounded on today's code.

Latencies are measured from this process, which also serves the catalog: the
bomb and the MPD answer are built before the daemon starts (the album's pages
per request), but serving them competes for this process's GIL, so figures
err on the slow side, never the fast one.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlqctl.client import Client, Refused, Unreachable
from dlqd.demo import audio
from dlqd.demo.catalog import (
    DASH_TIMELINE_TRACK_ID,
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Responder,
    Scripted,
)
from tests.support import FINISHED, DaemonProcess

MIB = 1024 * 1024
RSS_LIMIT_MIB = 100  # the target: peak RSS under idle + 100 MiB
HEALTH_LIMIT_MS = 100.0  # the target: every `health` under 100 ms
CLAIMED_TRACKS = 10**9
FAKE_TRACK_ID_BASE = 1_000_000_000  # fake album items: ids stay below 2^31 - 1
PAGE_LIMIT = 100  # the catalog's own page cap
SCENARIO_NAMES = ("baseline", "gzip-bomb", "big-mpd", "endless-album")


# -- the hostile answers ---------------------------------------------------------


def gzip_bomb(inflated_bytes: int, cache_dir: Path) -> bytes:
    """Gzip of `inflated_bytes` of spaces, cached in `cache_dir` (building it takes seconds)."""
    path = cache_dir / f"dlqd-bench-gzip-bomb-{inflated_bytes}.gz"
    if path.is_file() and path.stat().st_size > 0:
        return path.read_bytes()
    print(f"building the gzip bomb ({inflated_bytes} B inflated) into {path} ...", flush=True)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    block = b" " * MIB
    parts = []
    for start in range(0, inflated_bytes, MIB):
        parts.append(compressor.compress(block[: min(MIB, inflated_bytes - start)]))
    parts.append(compressor.flush())
    bomb = b"".join(parts)
    partial = path.with_suffix(".partial")
    partial.write_bytes(bomb)
    partial.replace(path)
    return bomb


def huge_mpd_answer(catalog: Catalog, mpd_bytes: int) -> bytes:
    """A whole /track/ body: the catalog's own DASH answer, its timeline grown to `mpd_bytes`."""
    data = catalog.playback_json(
        DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS", "http://127.0.0.1:9", "bench"
    )
    mpd = base64.b64decode(data["manifest"]).decode()
    entry = f'<S d="{audio.DASH_SEGMENT_DURATIONS[0]}"/>'
    count = max(1, (mpd_bytes - len(mpd)) // len(entry))
    head, tail = re.split(r"<SegmentTimeline>.*</SegmentTimeline>", mpd, flags=re.DOTALL)
    grown = f"{head}<SegmentTimeline>{entry * count}</SegmentTimeline>{tail}".encode()
    data["manifest"] = base64.b64encode(grown).decode()
    return json.dumps({"version": "2.0", "data": data}).encode()


def endless_album_page(template: dict[str, Any]) -> Responder:
    """A responder for /album/: numberOfTracks 10^9, each page `limit` new fake tracks."""

    def respond(request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        assert data is not None, "the scripted album must exist in the catalog"
        offset = int(request.query.get("offset", "0"))
        limit = min(int(request.query.get("limit", str(PAGE_LIMIT))), PAGE_LIMIT)
        data["numberOfTracks"] = CLAIMED_TRACKS
        data["items"] = [
            {
                "type": "track",
                "item": {
                    **template,
                    "id": FAKE_TRACK_ID_BASE + number,
                    "title": f"Endless {number}",
                    "trackNumber": number,
                },
            }
            for number in range(offset + 1, offset + limit + 1)
        ]
        body = json.dumps({"version": "2.0", "data": data}).encode()
        return Scripted(200, {"Content-Type": "application/json"}, body)

    return respond


@dataclass(frozen=True)
class Scenario:
    name: str
    job_type: str  # "track" | "album"
    target_id: int
    quality: str
    install: Callable[[CatalogServer], None]  # scripts the hostile answers


def scenarios(args: argparse.Namespace, catalog: Catalog) -> dict[str, Callable[[], Scenario]]:
    """Each scenario by name, built lazily so `--scenario X` prepares only X's body."""

    def baseline() -> Scenario:
        return Scenario("baseline", "track", SINGLE_TRACK_ID, "LOSSLESS", lambda _server: None)

    def bomb() -> Scenario:
        body = gzip_bomb(args.bomb_mib * MIB, Path(args.cache_dir))
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        answer = Scripted(200, headers, body)
        print(f"gzip bomb: {len(body):,} B on the wire, {args.bomb_mib} MiB inflated", flush=True)
        return Scenario(
            "gzip-bomb",
            "track",
            SINGLE_TRACK_ID,
            "LOSSLESS",
            lambda server: server.script("info", lambda _r, _d: answer, track_id=SINGLE_TRACK_ID),
        )

    def mpd() -> Scenario:
        body = huge_mpd_answer(catalog, args.mpd_mb * 1_000_000)
        answer = Scripted(200, {"Content-Type": "application/json"}, body)
        print(f"big MPD: /track/ body of {len(body):,} B", flush=True)
        return Scenario(
            "big-mpd",
            "track",
            DASH_TIMELINE_TRACK_ID,
            "HI_RES_LOSSLESS",
            lambda server: server.script(
                "track", lambda _r, _d: answer, track_id=DASH_TIMELINE_TRACK_ID
            ),
        )

    def album() -> Scenario:
        template = catalog.track_json(SINGLE_TRACK_ID)
        responder = endless_album_page(template)
        return Scenario(
            "endless-album",
            "album",
            SINGLE_ALBUM_ID,
            "LOSSLESS",
            lambda server: server.script("album", responder, album_id=SINGLE_ALBUM_ID),
        )

    return dict(zip(SCENARIO_NAMES, (baseline, bomb, mpd, album), strict=True))


# -- measuring -------------------------------------------------------------------


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in KiB; empty once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


class MemoryWatch(threading.Thread):
    """Samples the daemon's VmHWM; SIGKILLs it when its VmRSS passes idle + `abort_kib`."""

    def __init__(
        self, proc: subprocess.Popen[bytes], idle_kib: int, abort_kib: int, interval: float
    ) -> None:
        super().__init__(name="memory-watch", daemon=True)
        self.proc = proc
        self.idle_kib = idle_kib
        self.abort_kib = abort_kib
        self.interval = interval
        self.peak_hwm_kib = 0
        self.aborted = False
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.sample()
            self._stopping.wait(self.interval)

    def sample(self) -> None:
        if self.proc.returncode is not None:
            return  # reaped: its pid may belong to another process now
        fields = status_kib(self.proc.pid)
        if "VmRSS" not in fields:
            return  # a zombie
        self.peak_hwm_kib = max(self.peak_hwm_kib, fields["VmHWM"])
        if not self.aborted and fields["VmRSS"] - self.idle_kib > self.abort_kib:
            self.aborted = True
            self.proc.kill()  # Popen signals only a child it has not reaped

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        self.sample()  # a last reading, in case the peak came after the previous one


@dataclass
class Result:
    name: str
    health_timeout_s: float
    idle_rss_kib: int = 0
    peak_hwm_kib: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # answered probes
    failed_samples: int = 0  # no answer within --health-timeout
    longest_wait_ms: float = 0.0  # see sample_until_done
    seconds: float = 0.0
    outcome: str = ""  # final job status, or what ended the scenario
    code: str = ""
    daemon_alive: bool = True
    finished: bool = False

    @property
    def peak_above_idle_mib(self) -> float:
        return (self.peak_hwm_kib - self.idle_rss_kib) / 1024

    @property
    def max_ms(self) -> float:
        """Slowest sample; inf when one went unanswered, nan when there were none."""
        return self.percentile_ms(100)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)

    def percentile_ms(self, percent: float) -> float:
        """Nearest-rank percentile over every sample, an unanswered one counting as inf."""
        ordered = sorted(self.latencies_ms) + [math.inf] * self.failed_samples
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]

    @property
    def rss_ok(self) -> bool:
        return self.peak_above_idle_mib < RSS_LIMIT_MIB

    @property
    def health_ok(self) -> bool:
        return self.max_ms < HEALTH_LIMIT_MS  # False for no samples (nan) or an unanswered one

    @property
    def passed(self) -> bool:
        return self.rss_ok and self.health_ok and self.daemon_alive and self.finished


def probe_health(socket_path: str, timeout_s: float) -> float | None:
    """Milliseconds for connect + `health` + answer; None when there is no answer in time."""
    started = time.perf_counter()
    try:
        with Client(socket_path, timeout_s=timeout_s) as client:
            client.call("health")
    except (Unreachable, Refused):
        return None
    return (time.perf_counter() - started) * 1000


def job_state(socket_path: str, job_id: str, timeout_s: float) -> dict[str, Any] | None:
    try:
        with Client(socket_path, timeout_s=timeout_s) as client:
            job: dict[str, Any] = client.call("get", {"id": job_id})["job"]
            return job
    except (Unreachable, Refused):
        return None


def run_scenario(
    scenario: Scenario, catalog: Catalog, scratch: Path, args: argparse.Namespace
) -> Result:
    """A fresh daemon and upstream, the hostile job submitted, sampled until it ends."""
    result = Result(scenario.name, args.health_timeout)
    with CatalogServer(catalog) as server:
        scenario.install(server)
        daemon = DaemonProcess(
            scratch / scenario.name,
            settings={
                "upstream": {
                    "base_url": [server.base_url],
                    "cover_base_url": server.cover_base_url,
                },
                "worker": {"max_retries": 1, "backoff_s": [0.1]},
                "limits": {"min_free_mb": 0, "submit_rate_per_min": 0},
            },
        )
        try:
            daemon.start()
            assert daemon.proc is not None
            result.idle_rss_kib = status_kib(daemon.proc.pid)["VmRSS"]
            watch = MemoryWatch(
                daemon.proc, result.idle_rss_kib, args.abort_mib * 1024, args.interval
            )
            watch.start()
            job_id = daemon.submit(scenario.job_type, scenario.target_id, scenario.quality)
            job = sample_until_done(daemon, job_id, result, args)
            watch.stop()
            result.peak_hwm_kib = watch.peak_hwm_kib
            result.outcome = describe_end(result, job, daemon, watch, args)
            result.code = error_code(job)
        finally:
            daemon.cleanup()  # SIGKILL if still running, remove the socket dir
            shutil.rmtree(scratch / scenario.name, ignore_errors=True)
    return result


def sample_until_done(
    daemon: DaemonProcess, job_id: str, result: Result, args: argparse.Namespace
) -> dict[str, Any] | None:
    """Probe `health` every `args.interval` s into `result`; the job as last seen.

    Stops `args.settle` s after the job ends, at `args.timeout`, or when the
    daemon is gone. A probe with no answer in time is a failed sample; the
    longest wait is how long a client retrying at this pace went without an
    answer (from its first unanswered probe to the next answer).
    """
    assert daemon.proc is not None
    socket_path = str(daemon.socket)
    started = time.perf_counter()
    deadline = started + args.timeout
    waiting_since: float | None = None  # start of the first unanswered probe in a row
    job: dict[str, Any] | None = None
    while daemon.proc.poll() is None:
        probe_started = time.perf_counter()
        latency = probe_health(socket_path, args.health_timeout)
        if latency is None:
            if daemon.proc.poll() is not None:  # it died during the probe: not a sample
                break
            result.failed_samples += 1
            waiting_since = waiting_since if waiting_since is not None else probe_started
        else:
            result.latencies_ms.append(latency)
            waited = time.perf_counter() - (waiting_since or probe_started)
            result.longest_wait_ms = max(result.longest_wait_ms, waited * 1000)
            waiting_since = None
            if not result.finished:
                job = job_state(socket_path, job_id, args.health_timeout) or job
                if job is not None and job["status"] in FINISHED:
                    result.finished = True
                    result.seconds = time.perf_counter() - started
                    deadline = min(deadline, time.perf_counter() + args.settle)
        if time.perf_counter() > deadline:
            break
        time.sleep(max(0.0, args.interval - (time.perf_counter() - probe_started)))
    if waiting_since is not None:  # never answered again: a lower bound
        waited = time.perf_counter() - waiting_since
        result.longest_wait_ms = max(result.longest_wait_ms, waited * 1000)
    result.daemon_alive = daemon.proc.poll() is None
    if not result.finished:
        result.seconds = time.perf_counter() - started
    return job


def error_code(job: dict[str, Any] | None) -> str:
    """The job's error code, else its first failed track's, else ""."""
    if job is None:
        return ""
    errors = [job.get("error")] + [track.get("error") for track in job.get("tracks", [])]
    return next((str(e["code"]) for e in errors if isinstance(e, dict) and "code" in e), "")


def describe_end(
    result: Result,
    job: dict[str, Any] | None,
    daemon: DaemonProcess,
    watch: MemoryWatch,
    args: argparse.Namespace,
) -> str:
    """What ended the scenario: the job's final status, or why it has none."""
    if watch.aborted:
        return f"killed by the bench: RSS > idle + {args.abort_mib} MiB"
    if not result.daemon_alive:
        assert daemon.proc is not None
        print(f"--- {result.name}: daemon log tail ---\n{daemon.logs()[-3000:]}", file=sys.stderr)
        return f"daemon died (exit {daemon.proc.returncode})"
    if not result.finished:
        status = job["status"] if job is not None else "unknown"
        return f"still {status} after {args.timeout:g} s"
    assert job is not None
    return str(job["status"])


# -- reporting -------------------------------------------------------------------


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def max_cell(result: Result) -> str:
    """The slowest answer; with unanswered probes, the longest a retrying client waited."""
    if result.failed_samples:
        return f"no answer for {result.longest_wait_ms:,.0f}"
    return "–" if math.isnan(result.max_ms) else f"{result.max_ms:.1f}"


def p99_cell(result: Result) -> str:
    if math.isinf(result.p99_ms):
        return f"≥ {result.health_timeout_s * 1000:.0f} (unanswered)"
    return "–" if math.isnan(result.p99_ms) else f"{result.p99_ms:.1f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def table(results: list[Result]) -> list[str]:
    lines = [
        "| scenario | idle RSS (MiB) | peak above idle (MiB) | health max (ms) "
        "| health p99 (ms) | health samples (unanswered) | s | job ended | code "
        f"| peak < idle + {RSS_LIMIT_MIB} MiB | health < {HEALTH_LIMIT_MS:.0f} ms | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        samples = len(r.latencies_ms) + r.failed_samples
        lines.append(
            f"| {r.name} | {r.idle_rss_kib / 1024:.1f} | {r.peak_above_idle_mib:.1f} "
            f"| {max_cell(r)} | {p99_cell(r)} "
            f"| {samples} ({r.failed_samples}) | {r.seconds:.1f} | {r.outcome} | {r.code or '–'} "
            f"| {verdict(r.rss_ok)} | {verdict(r.health_ok)} | {verdict(r.passed)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIO_NAMES,
        help="run only this one (repeatable); default: all, in the order listed",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per scenario")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds to keep sampling after the job ends (work or memory that outlives it)",
    )
    parser.add_argument(
        "--health-timeout", type=float, default=1.0, help="seconds before a probe counts as failed"
    )
    parser.add_argument(
        "--abort-mib",
        type=int,
        default=1024,
        help="kill the daemon when its RSS grows this far above idle (protects the machine)",
    )
    parser.add_argument("--bomb-mib", type=int, default=2048, help="inflated size of the gzip bomb")
    parser.add_argument("--mpd-mb", type=int, default=37, help="size of the hostile MPD (MB)")
    parser.add_argument(
        "--cache-dir", default=tempfile.gettempdir(), help="where the gzip bomb is cached"
    )
    args = parser.parse_args()

    command = shlex.join([".venv/bin/python", "bench/bench_hostile.py", *sys.argv[1:]])
    load_at_start = load_average()
    catalog = Catalog()
    builders = scenarios(args, catalog)
    scratch = Path(tempfile.mkdtemp(prefix="dlqd-bench-hostile-"))
    results = []
    try:
        for name in args.scenario or SCENARIO_NAMES:
            scenario = builders[name]()
            print(f"{name}: running (load average {load_average()}) ...", flush=True)
            result = run_scenario(scenario, catalog, scratch, args)
            results.append(result)
            print(
                f"{name}: {' '.join(filter(None, (result.outcome, result.code)))} "
                f"after {result.seconds:.1f} s; "
                f"peak {result.peak_above_idle_mib:.1f} MiB above idle; "
                f"health max {max_cell(result)} ms",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"Command: `{command}`")
    print()
    print(
        f"Machine: {os.cpu_count()} CPUs (`nproc`), {cpu_model()}, Python "
        f"{platform.python_version()}, Linux {platform.release()}, "
        f"{datetime.date.today().isoformat()}; load average at start {load_at_start}."
    )
    print()
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
