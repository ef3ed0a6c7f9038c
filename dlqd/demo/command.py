"""`dlqd demo`: the whole product in one command, against a built-in local catalog.

Starts the generated catalog (dlqd.demo.catalog) as a real HTTP upstream on
127.0.0.1, a real dlqd process on a fresh state dir and library, queues an
album over the control socket, shows live progress, then prints the resulting
tree and the tags of one file. With `--playlist` it then queues the catalog's
playlist too (tracks of two albums, one of them the album just fetched) and
shows its M3U8 file and where each entry points. Nothing here is used by the
daemon itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mutagen

from dlqctl.client import Client, Refused, Unreachable
from dlqd import m3u8
from dlqd.config import FilesConfig
from dlqd.demo.catalog import PLAYLIST_UUID, TWO_DISC_ALBUM_ID, CatalogServer

FINISHED = ("completed", "partial", "failed", "cancelled")
DEMO_THROTTLE_BPS = 1_000_000  # slow enough on loopback that the progress bar is seen moving


def _config(root: Path, upstream: CatalogServer) -> Path:
    state, library, sock = root / "state", root / "library", root / "dlqd.sock"
    library.mkdir(parents=True, exist_ok=True)
    path = root / "dlqd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{state}"\nsocket = "{sock}"\nlibrary = "{library}"\n'
        f'[upstream]\nbase_url = ["{upstream.base_url}"]\n'
        f'cover_base_url = "{upstream.cover_base_url}"\n'
    )
    return path


def _connect(sock: Path, daemon: subprocess.Popen[bytes], timeout: float = 20.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        if daemon.poll() is not None:
            raise SystemExit(f"dlqd demo: the daemon exited with {daemon.returncode}")
        try:
            client = Client(str(sock))
            client.call("health")
            return client
        except (Unreachable, Refused):
            if time.monotonic() > deadline:
                raise SystemExit("dlqd demo: the daemon did not start in time") from None
            time.sleep(0.05)


def _bar(fraction: float, width: int = 30) -> str:
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


def _follow(client: Client, job_id: str) -> dict[str, Any]:
    """Redraw one progress line until the job finishes."""
    while True:
        job: dict[str, Any] = client.call("get", {"id": job_id})["job"]
        done = sum(1 for t in job["tracks"] if t["status"] == "completed")
        line = f"  {_bar(job['progress'])}  {done}/{len(job['tracks'])} tracks  {job['status']}"
        print("\r" + line, end="", flush=True)
        if job["status"] in FINISHED:
            print()
            return job
        time.sleep(0.1)


def _print_tree(library: Path) -> None:
    for path in sorted(library.rglob("*")):
        if ".dlqd-tmp" in path.parts:
            continue
        depth = len(path.relative_to(library).parts) - 1
        size = f"  ({path.stat().st_size:,} bytes)" if path.is_file() else "/"
        print(f"  {'    ' * depth}{path.name}{size}")


def _print_tags(path: Path) -> None:
    audio = mutagen.File(path)
    print(f"\nTags of {path.name}:")
    for key in sorted(audio.tags.keys()):
        values = audio.tags[key]
        shown = ", ".join(str(v) for v in values) if isinstance(values, list) else str(values)
        shown = " / ".join(shown.splitlines())  # lyrics: one line per tag in the listing
        print(f"  {key:<24} {shown[:70]}")
    pictures = getattr(audio, "pictures", [])
    if pictures:
        print(f"  {'(embedded cover)':<24} {pictures[0].mime}, {len(pictures[0].data):,} bytes")


def _queue_and_follow(client: Client, job_type: str, target: int | str) -> dict[str, Any]:
    submitted = client.call(
        "submit", {"type": job_type, "target_id": target, "quality": "LOSSLESS"}
    )
    print(f"Queued {job_type} {target} as job {submitted['id']}:")
    return _follow(client, submitted["id"])


def _print_playlist(library: Path, job: dict[str, Any]) -> bool:
    """The playlist job's tracks, its M3U8 file and where each entry points; False if one is off."""
    print(f"\nJob {job['id']} {job['status']}: playlist {job['title']!r}")
    for track in job["tracks"]:
        print(f"  {track['outcome'] or track['status']:<18} {track['path'] or '-'}")
    folder = library / FilesConfig().playlist_dir
    playlist = folder / m3u8.file_name(job["title"])
    if not playlist.is_file():
        print(f"\nNo playlist file at {playlist}")
        return False
    print(f"\nPlaylist file {playlist.relative_to(library)}:")
    all_found = True
    for line in playlist.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            print(f"  {line}")
            continue
        target = (folder / line).resolve()
        found = target.is_file()
        all_found = all_found and found
        mark = "ok, the file is there" if found else "MISSING"
        print(f"  {line}\n      -> {target.relative_to(library.resolve())} ({mark})")
    return all_found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlqd demo",
        description="Start a local catalog and a daemon, download an album, show the result.",
    )
    parser.add_argument("--dir", type=Path, help="where to put state and library (default: temp)")
    parser.add_argument(
        "--playlist",
        action="store_true",
        help="then download the catalog's playlist (two albums) and show its M3U8 file",
    )
    args = parser.parse_args(argv)
    root = (args.dir or Path(tempfile.mkdtemp(prefix="dlqd-demo-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with CatalogServer() as upstream:
        upstream.throttle_bps = DEMO_THROTTLE_BPS
        print(f"Local catalog serving on {upstream.base_url}")
        config = _config(root, upstream)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLQD_")}
        log_path = root / "dlqd.log"
        with open(log_path, "ab") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "dlqd", "--config", str(config), "--log-format", "json"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            client = _connect(root / "dlqd.sock", daemon)
            print(f"dlqd running (pid {daemon.pid}), state and library under {root}")
            job = _queue_and_follow(client, "album", TWO_DISC_ALBUM_ID)
            playlist_job = None
            if args.playlist:
                playlist_job = _queue_and_follow(client, "playlist", PLAYLIST_UUID)
            client.close()
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    library = root / "library"
    print(f"\nJob {job['id']} {job['status']}: {job['artist']} – {job['title']}")
    print(f"\nLibrary {library}:")
    _print_tree(library)
    tracks = [t for t in job["tracks"] if t["path"]]
    if tracks:
        _print_tags(library / tracks[0]["path"])
    playlist_ok = True
    if playlist_job is not None:
        playlist_ok = _print_playlist(library, playlist_job)
        playlist_ok = playlist_ok and playlist_job["status"] == "completed"
    print(f"\nDaemon log: {log_path}")
    ok = job["status"] == "completed" and playlist_ok and daemon.returncode == 0
    return 0 if ok else 1
