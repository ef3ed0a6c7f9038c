"""Download benchmark (issue 11), run by hand: `.venv/bin/python bench/bench_download.py`.

Wall time and CPU to download one album (default 20 tracks x 30 MiB of FLAC)
whose media a real web server serves, by dlqd and by `aria2c -j4`, per protocol:
  https    nginx on 127.0.0.1 over TLS 1.3, with a CA and server certificate this
           script generates (openssl CLI); dlqd trusts the CA via `upstream.ca_file`
           (its environment has no SSL_CERT_FILE/SSL_CERT_DIR: certifi + that CA),
           aria2c via --ca-certificate.
  http     the same nginx, plain HTTP.
  catalog  the media served by the Python test catalog (`CatalogServer`), as the
           issue 3 benchmark did: a threaded Python server in this process, which
           can be the limit for both tools; a reference line only.
/info/, /album/ and the cover always come from the catalog (they are small). For
https and http the catalog's /track/ answer is its own JSON with the BTS
manifest's `urls` rewritten to the nginx URL of the same bytes
(`CatalogServer.script`), so dlqd runs its real code path end to end.

  - dlqd: a real daemon process (started before the clock, max_concurrent 4),
    `submit` album, clock stops when `get` says `completed`. Includes what
    aria2c does not do: /album/ + 20 /track/ manifests + the cover, tagging each
    file (mutagen rewrites the FLAC header into a new file when the padding is
    short), an fsync per file, the atomic rename and a directory fsync.
    CPU: utime + stime of the daemon process (all threads) from /proc/<pid>/stat;
    the report also gives its main thread's share (the trio event loop), from
    /proc/<pid>/task/<pid>/stat.
  - aria2c -j4 -x1 (4 files at once, like dlqd's max_concurrent) on the same
    media URLs, known before the clock starts; `--file-allocation=none`, no
    fsync. CPU: getrusage(RUSAGE_CHILDREN) delta around the run.
Rounds are paired and cycle through the tools' orders (two tools: alternate which
goes first; with --baseline, the six orders of three, so use a multiple of 6 rounds
there); `sync` runs (unclocked) before each run so none pays for another's dirty
pages. The media bytes are generated and written to nginx's directory before the
first round.
Target (issue 11): dlqd <= 1.0 x aria2c wall time over https and over http,
dlqd <= 1.5 CPU-s per GiB over https.

With `--health-interval MS`, a thread of this script sends `health` on a fresh
control-socket connection (connect + request + answer, as `dlqctl health`
does) every MS milliseconds while each dlqd run downloads, and the report adds
the latency percentiles per protocol over every round (target, issue 11: p99
< 5 ms while 4 HTTPS transfers run). The probes run in this process, beside
the catalog's threads (idle then: the media comes from nginx).

With `--baseline DIR`, each round also runs the daemon from the checkout at DIR
(`python -m dlqd` with DIR as its working directory, e.g. main's worktree) right
after this checkout's, and the report adds this checkout against that one,
paired per round: an A/B of two versions of dlqd under the same load.

nginx and aria2c are installed from Debian packages (apt-get) when missing.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import itertools
import json
import math
import os
import platform
import resource
import shlex
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlqctl.client import Client, Refused, Unreachable
from dlqd.demo.catalog import Catalog, CatalogServer, RequestRecord, Responder, Scripted
from tests.support import DaemonProcess, make_certificates

PROTOCOLS = ("https", "http", "catalog")
LABELS = {
    "https": "HTTPS (nginx, TLS 1.3)",
    "http": "HTTP (nginx)",
    "catalog": "server-bound (Python catalog)",
}
TOOLS = ("dlqd", "aria2c")
BASELINE = "dlqd@baseline"  # the daemon of `--baseline DIR`
QUALITY = "LOSSLESS"
MIB = 1 << 20
GIB = 1 << 30
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


# -- tools and the machine -------------------------------------------------------


def ensure_tools() -> tuple[str, str]:
    """Paths of nginx and aria2c, installing their Debian packages when missing."""
    wanted = {"nginx": "nginx", "aria2c": "aria2"}  # binary -> package
    missing = [pkg for binary, pkg in wanted.items() if not shutil.which(binary, path=SBIN_PATH)]
    if missing:
        print(f"installing {' '.join(missing)} (apt-get) ...", file=sys.stderr, flush=True)
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*apt, "update"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            [*apt, "install", "-y", "--no-install-recommends", *missing],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    paths = [shutil.which(binary, path=SBIN_PATH) for binary in wanted]
    if None in paths:
        raise SystemExit(f"still missing after apt-get install: {wanted}")
    nginx, aria2c = paths
    assert nginx is not None and aria2c is not None
    return nginx, aria2c


def first_line(command: Sequence[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    return (done.stdout or done.stderr).splitlines()[0].strip()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def loop_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the main thread of `pid` (dlqd's event loop) so far."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/task/{pid}/stat"))


def _stat_cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the certificate and nginx ---------------------------------------------------


NGINX_CONF = """\
worker_processes 2;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ audio/flac flac; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        root {root};
    }}
}}
"""


class Nginx:
    """nginx in the foreground on two loopback ports, serving `root`, until `stop`."""

    def __init__(self, binary: str, prefix: Path, root: Path, cert: Path, key: Path) -> None:
        self.http_port, self.https_port = free_port(), free_port()
        (prefix / "tmp").mkdir(parents=True)
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                prefix=prefix,
                http_port=self.http_port,
                https_port=self.https_port,
                cert=cert,
                key=key,
                root=root,
            )
        )
        self.proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit("nginx did not start") from None
                time.sleep(0.05)

    def base_url(self, protocol: str) -> str:
        port = self.https_port if protocol == "https" else self.http_port
        return f"{protocol}://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


# -- the album's media URLs ------------------------------------------------------


def nginx_path(track_id: int) -> str:
    return f"/media/{track_id}.flac"


def write_media(catalog: Catalog, track_ids: tuple[int, ...], root: Path) -> int:
    """Write each track's served bytes where nginx serves them; returns the total size."""
    (root / "media").mkdir(parents=True)
    total = 0
    for track_id in track_ids:
        data = catalog.audio_for(track_id, QUALITY)
        (root / nginx_path(track_id).lstrip("/")).write_bytes(data)
        total += len(data)
    return total


def manifests_pointing_at(media_base: str) -> Responder:
    """A /track/ responder: the catalog's own answer, its BTS `urls` moved to `media_base`."""

    def answer(_request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        if data is None:
            return Scripted(404, {"Content-Type": "application/json"}, b'{"detail": "Not found"}')
        bts = json.loads(base64.b64decode(data["manifest"]))
        bts["urls"] = [media_base + nginx_path(data["trackId"])]
        data["manifest"] = base64.b64encode(json.dumps(bts).encode()).decode()
        body = json.dumps({"version": "2.0", "data": data}).encode()
        return Scripted(200, {"Content-Type": "application/json"}, body)

    return answer


def catalog_media_urls(server: CatalogServer, track_ids: tuple[int, ...]) -> list[str]:
    """The first BTS url per track, from the catalog's own /track/ manifests."""
    urls = []
    with httpx.Client(base_url=server.base_url) as client:
        for track_id in track_ids:
            data = client.get("/track/", params={"id": track_id, "quality": QUALITY}).json()
            manifest = json.loads(base64.b64decode(data["data"]["manifest"]))
            urls.append(manifest["urls"][0])
    return urls


# -- one run of each tool --------------------------------------------------------


class HealthSampler(threading.Thread):
    """`health` on a fresh connection every `interval_s` until stopped; latencies in ms.

    A probe with no answer within 1 s counts as 1000 ms.
    """

    def __init__(self, socket_path: str, interval_s: float) -> None:
        super().__init__(name="health-sampler", daemon=True)
        self.socket_path = socket_path
        self.interval_s = interval_s
        self.latencies_ms: list[float] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            started = time.perf_counter()
            try:
                with Client(self.socket_path, timeout_s=1.0) as client:
                    client.call("health")
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
            except (Unreachable, Refused):
                self.latencies_ms.append(1000.0)
            self._stopping.wait(max(0.0, self.interval_s - (time.perf_counter() - started)))

    def stop(self) -> list[float]:
        self._stopping.set()
        self.join()
        return self.latencies_ms


def run_dlqd(
    root: Path,
    server: CatalogServer,
    album_id: int,
    media_base: str | None,
    max_concurrent: int,
    ca_cert: Path,
    health_ms: list[float] | None = None,
    health_interval_s: float = 0.01,
    checkout: Path | None = None,
) -> tuple[float, float, float]:
    """(wall s, daemon CPU s, of which its event-loop thread) from submit to `completed`.

    `media_base`: where /track/ manifests send dlqd for media (None: the catalog).
    With `health_ms`, `health` latencies sampled during the download are added to it.
    `checkout`: run the dlqd of that checkout instead of this one.
    """
    server.clear_faults()
    server.clear_requests()
    if media_base is not None:
        server.script("track", manifests_pointing_at(media_base))
    daemon = DaemonProcess(
        root,
        settings={
            "upstream": {
                "base_url": [server.base_url],
                "cover_base_url": server.cover_base_url,
                "ca_file": str(ca_cert),
            },
            "worker": {"max_concurrent": max_concurrent},
        },
        env={"SSL_CERT_FILE": None, "SSL_CERT_DIR": None},
    )
    # `python -m dlqd` imports dlqd from its working directory: the checkout's code runs.
    in_checkout = ["env", "-C", str(checkout), sys.executable, "-m", "dlqd"] if checkout else None
    daemon.start(launcher=in_checkout)
    try:
        assert daemon.proc is not None
        os.sync()
        cpu_before = cpu_seconds(daemon.proc.pid)
        loop_before = loop_cpu_seconds(daemon.proc.pid)
        started = time.perf_counter()
        # One connection polled every 20 ms: cheap for the daemon, fine-grained enough.
        sampler = HealthSampler(str(daemon.socket), health_interval_s)
        with Client(str(daemon.socket)) as client:
            submit = {"type": "album", "target_id": album_id, "quality": QUALITY}
            job_id = client.call("submit", submit)["id"]
            if health_ms is not None:
                sampler.start()
            while True:
                job = client.call("get", {"id": job_id})["job"]
                if job["status"] in ("completed", "partial", "failed", "cancelled"):
                    break
                time.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(daemon.proc.pid) - cpu_before
        loop_cpu = loop_cpu_seconds(daemon.proc.pid) - loop_before
        if health_ms is not None:
            health_ms.extend(sampler.stop())
        if job["status"] != "completed":
            raise SystemExit(f"dlqd job ended {job['status']}: {job['error']}\n{daemon.logs()}")
        if media_base is not None and server.requests_for("media"):
            raise SystemExit(f"dlqd fetched media from the catalog, not from {media_base}")
        return elapsed, cpu, loop_cpu
    finally:
        daemon.stop()
        daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def run_aria2c(
    aria2c: str, root: Path, urls: list[str], jobs: int, ca_cert: Path
) -> tuple[float, float]:
    """(wall seconds, aria2c CPU seconds)."""
    root.mkdir(parents=True)
    listing = root / "urls.txt"
    listing.write_text("".join(f"{url}\n  out={i}.flac\n" for i, url in enumerate(urls)))
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
        f"--ca-certificate={ca_cert}",
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


# -- the report ------------------------------------------------------------------


def percentile(samples: list[float], percent: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(len(ordered) * percent / 100) - 1)]


def report(
    protocols: list[str],
    times: dict[tuple[str, str], list[float]],
    cpus: dict[tuple[str, str], list[float]],
    total_bytes: int,
    health: dict[str, list[float]],
    loop_cpus: dict[str, list[float]],
    baseline: Path | None = None,
) -> None:
    gib = total_bytes / GIB
    print(
        "| protocol | dlqd wall (s) | aria2c -j4 wall (s) | ratio dlqd/aria2c | "
        "dlqd MiB/s | aria2c MiB/s | dlqd CPU s/GiB | aria2c CPU s/GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for protocol in protocols:
        wall = {tool: statistics.median(times[protocol, tool]) for tool in TOOLS}
        cpu = {tool: statistics.median(cpus[protocol, tool]) / gib for tool in TOOLS}
        rate = {tool: total_bytes / MIB / wall[tool] for tool in TOOLS}
        print(
            f"| {LABELS[protocol]} | {wall['dlqd']:.2f} | {wall['aria2c']:.2f} | "
            f"**{wall['dlqd'] / wall['aria2c']:.2f}x** | {rate['dlqd']:.0f} | "
            f"{rate['aria2c']:.0f} | {cpu['dlqd']:.2f} | {cpu['aria2c']:.2f} |"
        )
    print()
    print("Walls per round (dlqd / aria2c, s) and the paired ratio of each round:")
    for protocol in protocols:
        pairs = zip(times[protocol, "dlqd"], times[protocol, "aria2c"], strict=True)
        rounds = ", ".join(f"{d:.2f}/{a:.2f} ({d / a:.2f}x)" for d, a in pairs)
        print(f"  {protocol}: {rounds}")
    print()
    print("dlqd CPU s/GiB per round, and of it dlqd's event-loop thread (the rest: worker threads,")
    print("i.e. the transfers, the integrity check, tagging, fsync and the moves):")
    for protocol in protocols:
        pairs = zip(cpus[protocol, "dlqd"], loop_cpus[protocol], strict=True)
        rounds = ", ".join(f"{cpu / gib:.2f} (loop {loop / gib:.2f})" for cpu, loop in pairs)
        print(f"  {protocol}: {rounds}")
    if baseline is not None:
        print()
        print(f"this checkout's dlqd against the baseline's ({baseline}), same rounds:")
        print()
        print(
            "| protocol | this dlqd wall (s) | baseline dlqd wall (s) | ratio this/baseline | "
            "this CPU s/GiB | baseline CPU s/GiB |"
        )
        print("|---|---|---|---|---|---|")
        for protocol in protocols:
            this, base = times[protocol, "dlqd"], times[protocol, BASELINE]
            ratios = [a / b for a, b in zip(this, base, strict=True)]
            print(
                f"| {LABELS[protocol]} | {statistics.median(this):.2f} | "
                f"{statistics.median(base):.2f} | **{statistics.median(ratios):.2f}x** | "
                f"{statistics.median(cpus[protocol, 'dlqd']) / gib:.2f} | "
                f"{statistics.median(cpus[protocol, BASELINE]) / gib:.2f} |"
            )
        print()
        print("Walls per round (this / baseline, s) and the paired ratio of each round:")
        for protocol in protocols:
            pairs = zip(times[protocol, "dlqd"], times[protocol, BASELINE], strict=True)
            rounds = ", ".join(f"{a:.2f}/{b:.2f} ({a / b:.2f}x)" for a, b in pairs)
            print(f"  {protocol}: {rounds}")
    if any(health.values()):
        print()
        print("`health` latency while dlqd downloads (connect + request + answer, ms):")
        print()
        print("| protocol | samples | p50 | p99 | max |")
        print("|---|---|---|---|---|")
        for protocol in protocols:
            samples = health[protocol]
            if samples:
                print(
                    f"| {LABELS[protocol]} | {len(samples)} | {percentile(samples, 50):.2f} | "
                    f"{percentile(samples, 99):.2f} | {max(samples):.2f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--track-mib", type=float, default=30.0, help="size of each track")
    parser.add_argument(
        "--protocol",
        action="append",
        choices=PROTOCOLS,
        help="repeatable; default: https, http and catalog",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="dlqd max_concurrent = aria2 -j")
    parser.add_argument("--dir", type=Path, default=None, help="scratch dir (default: a temp dir)")
    parser.add_argument(
        "--health-interval",
        type=float,
        default=0,
        metavar="MS",
        help="probe `health` every MS ms during dlqd runs and report its latency (0: off)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the dlqd of the checkout at DIR each round, paired (an A/B)",
    )
    args = parser.parse_args()
    tools: tuple[str, ...] = TOOLS if args.baseline is None else (*TOOLS, BASELINE)
    # Round r runs the tools in the r-th of their orders: over len(orders) rounds each
    # tool runs in each place equally often (a run's place in a round changes its wall).
    orders = list(itertools.permutations(tools))
    protocols: list[str] = args.protocol or list(PROTOCOLS)
    command = shlex.join(["python", *sys.argv])

    nginx_binary, aria2c = ensure_tools()
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="dlqd-bench-"))
    scratch.chmod(0o755)  # nginx's workers run as nobody and read www/ below it
    track_bytes = int(args.track_mib * MIB)
    # The catalog keeps every track in memory only when it serves the media itself.
    total_estimate = args.tracks * track_bytes
    catalog = Catalog(cache_bytes=2 * total_estimate if "catalog" in protocols else track_bytes)
    album_id = catalog.add_album(args.tracks, track_bytes)
    track_ids = catalog.album(album_id).track_ids
    print(f"generating {args.tracks} x {args.track_mib:g} MiB of FLAC ...", flush=True)
    www = scratch / "www"
    total_bytes = write_media(catalog, track_ids, www)
    certificates = make_certificates(scratch / "tls")
    ca_cert, cert, key = certificates.ca, certificates.cert, certificates.key
    machine = (
        f"nproc {os.cpu_count()}; {cpu_model()}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; {ssl.OPENSSL_VERSION}; "
        f"{first_line([nginx_binary, '-v'])}; {first_line([aria2c, '--version'])}"
    )

    times: dict[tuple[str, str], list[float]] = {(p, t): [] for p in protocols for t in tools}
    cpus: dict[tuple[str, str], list[float]] = {(p, t): [] for p in protocols for t in tools}
    health: dict[str, list[float]] = {p: [] for p in protocols}
    loop_cpus: dict[str, list[float]] = {p: [] for p in protocols}
    nginx = Nginx(nginx_binary, scratch / "nginx", www, cert, key)
    load_before = load_average()
    try:
        with CatalogServer(catalog) as server:
            urls = {
                p: (
                    catalog_media_urls(server, track_ids)
                    if p == "catalog"
                    else [nginx.base_url(p) + nginx_path(t) for t in track_ids]
                )
                for p in protocols
            }
            for round_number in range(args.rounds):
                order = orders[round_number % len(orders)]
                for protocol in protocols:
                    for tool in order:
                        root = scratch / f"{protocol}-{tool}-{round_number}"
                        if tool in ("dlqd", BASELINE):
                            media_base = None if protocol == "catalog" else nginx.base_url(protocol)
                            elapsed, cpu, loop_cpu = run_dlqd(
                                root,
                                server,
                                album_id,
                                media_base,
                                args.concurrency,
                                ca_cert,
                                health[protocol]
                                if args.health_interval > 0 and tool == "dlqd"
                                else None,
                                args.health_interval / 1000,
                                checkout=args.baseline if tool == BASELINE else None,
                            )
                            if tool == "dlqd":
                                loop_cpus[protocol].append(loop_cpu)
                        else:
                            elapsed, cpu = run_aria2c(
                                aria2c, root, urls[protocol], args.concurrency, ca_cert
                            )
                        times[protocol, tool].append(elapsed)
                        cpus[protocol, tool].append(cpu)
                        print(
                            f"round {round_number + 1} {protocol:7s} {tool:13s} {elapsed:7.3f} s"
                            f"  {total_bytes / MIB / elapsed:6.0f} MiB/s  cpu {cpu:6.2f} s",
                            flush=True,
                        )
    finally:
        nginx.stop()
    load_after = load_average()
    shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"command: {command}")
    print(f"date: {datetime.datetime.now().isoformat(timespec='minutes')}; {machine}")
    print(f"load average (1/5/15 min): before {load_before}; after {load_after}")
    print(
        f"album: {args.tracks} tracks, {total_bytes} bytes ({total_bytes / MIB:.0f} MiB); "
        f"concurrency {args.concurrency}; {args.rounds} paired rounds, cycling the order; "
        "medians"
    )
    print()
    report(protocols, times, cpus, total_bytes, health, loop_cpus, args.baseline)


if __name__ == "__main__":
    main()
