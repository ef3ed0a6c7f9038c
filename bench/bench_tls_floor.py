"""The CPU floor of saving HTTPS bodies on this machine, run by hand (issue 11).

`.venv/bin/python bench/bench_tls_floor.py [--rounds 3]`

Issue 11 asks dlqd for <= 1.5 CPU-seconds per GiB over HTTPS. This measures
what no product logic is in: 4 threads of this process each read one 30 MiB
body at a time from nginx (the same server, certificate and files as
bench_download.py) with a blocking `ssl` socket and `recv_into` one reused
1 MiB buffer, and
  tls-read        throw the bytes away (the issue's single-stream probe);
  tls-read-write  write them to a file in 128 KiB pieces, as dlqd does;
  http-read-write the same over plain HTTP;
and `aria2c -j4` fetches the same 20 files over HTTPS (its CPU from
RUSAGE_CHILDREN). No HTTP parsing beyond skipping the head, no fsync, no
tagging: whatever a real client adds comes on top of these figures.
CPU is this process's utime + stime (all threads) per GiB of body.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_download import Nginx, ensure_tools, run_aria2c

from tests.support import make_certificates

FILES = 20
FILE_BYTES = 30 * 1024 * 1024
THREADS = 4
BUFFER_BYTES = 1024 * 1024
WRITE_PIECE = 128 * 1024
GIB = 1024**3


def skip_head(sock: socket.socket) -> bytes:
    """Read through the end of the response head; the body bytes read past it."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the connection closed inside the response head")
        data += chunk
    return data[end + 4 :]


def read_body(sock: socket.socket, out: Path | None) -> int:
    """Body bytes read from `sock`; written to `out` (then removed) when given."""
    view = memoryview(bytearray(BUFFER_BYTES))
    first = skip_head(sock)
    total = len(first)
    with open(out, "wb", buffering=0) if out else contextlib.nullcontext() as sink:
        if sink is not None:
            sink.write(first)
        while count := sock.recv_into(view, BUFFER_BYTES):
            total += count
            if sink is not None:
                for piece in range(0, count, WRITE_PIECE):
                    sink.write(view[piece : min(count, piece + WRITE_PIECE)])
    if out is not None:
        out.unlink()
    return total


def fetcher(
    port: int, context: ssl.SSLContext | None, scratch: Path, write: bool
) -> Callable[[int, int], int]:
    def fetch(index: int, thread: int) -> int:
        raw = socket.create_connection(("127.0.0.1", port))
        sock: socket.socket = (
            context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        )
        with sock:
            request = f"GET /media/{index}.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            sock.sendall((request + "Connection: close\r\n\r\n").encode())
            return read_body(sock, scratch / f"out-{thread}" if write else None)

    return fetch


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_threads(fetch: Callable[[int, int], int]) -> tuple[float, float]:
    """(wall seconds, CPU-seconds per GiB) for the 20 files over 4 threads."""
    pending = list(range(FILES))
    lock = threading.Lock()
    moved = [0]

    def worker(thread: int) -> None:
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop()
            count = fetch(index, thread)
            with lock:
                moved[0] += count

    os.sync()
    cpu_before, started = cpu_seconds(), time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    if moved[0] != FILES * FILE_BYTES:
        raise SystemExit(f"read {moved[0]} bytes, expected {FILES * FILE_BYTES}")
    return wall, cpu / (moved[0] / GIB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    nginx_binary, aria2c = ensure_tools()
    scratch = Path(tempfile.mkdtemp(prefix="dlqd-tls-floor-"))
    scratch.chmod(0o755)  # nginx's workers read the files as another user
    try:
        www = scratch / "www"
        (www / "media").mkdir(parents=True)
        body = os.urandom(FILE_BYTES)
        for index in range(FILES):
            (www / "media" / f"{index}.bin").write_bytes(body)
        certificates = make_certificates(scratch / "tls")
        nginx = Nginx(nginx_binary, scratch / "nginx", www, certificates.cert, certificates.key)
        try:
            context = ssl.create_default_context(cafile=str(certificates.ca))
            variants: dict[str, Callable[[int, int], int]] = {
                "tls-read": fetcher(nginx.https_port, context, scratch, write=False),
                "tls-read-write": fetcher(nginx.https_port, context, scratch, write=True),
                "http-read-write": fetcher(nginx.http_port, None, scratch, write=True),
            }
            urls = [f"{nginx.base_url('https')}/media/{i}.bin" for i in range(FILES)]
            figures: dict[str, list[float]] = {name: [] for name in [*variants, "aria2c -j4"]}
            for round_ in range(1, args.rounds + 1):
                for name, fetch in variants.items():
                    wall, per_gib = run_threads(fetch)
                    figures[name].append(per_gib)
                    print(f"round {round_} {name:16s} {wall:6.2f} s  {per_gib:5.2f} CPU-s/GiB")
                wall, cpu = run_aria2c(aria2c, scratch / "aria2c", urls, THREADS, certificates.ca)
                per_gib = cpu / (FILES * FILE_BYTES / GIB)
                figures["aria2c -j4"].append(per_gib)
                print(f"round {round_} {'aria2c -j4':16s} {wall:6.2f} s  {per_gib:5.2f} CPU-s/GiB")
        finally:
            nginx.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nload average: {os.getloadavg()}; {os.cpu_count()} CPUs")
    print("| what | CPU-s per GiB (median) |\n|---|---|")
    for name, values in figures.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
