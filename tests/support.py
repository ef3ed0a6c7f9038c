"""Test support: a real dlqd process on a real socket, and polling with deadlines.

Tests drive the daemon exactly as users do — a subprocess started from the
command line with a TOML config, spoken to over its Unix socket with the
dlqctl client — and wait for outcomes by polling with a deadline, never by
sleeping a guessed amount. The hostile-input tests share one check that the
daemon was not hurt (`outside_snapshot`, `assert_unharmed`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgpack

from dlqctl.client import Client, Refused, Unreachable
from dlqd.finalize import TMP_DIRNAME
from dlqd.protocol import read_frame_blocking

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
FINISHED = ("completed", "partial", "failed", "cancelled")


def unread_json_response(payload: Any) -> httpx.Response:
    """A 200 JSON answer for `httpx.MockTransport` whose body is still unread, as from a socket.

    `httpx.Response(json=...)` is read when built, and Source reads bodies raw
    (`aiter_raw`, to bound them), which httpx refuses on a body already read.
    """
    body = json.dumps(payload).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    return httpx.Response(200, content=chunks())


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


@dataclass
class DaemonProcess:
    """One dlqd subprocess with its own state dir, library and socket.

    `env` is laid over this process's environment; a None value unsets that
    variable (e.g. `SSL_CERT_FILE`, which this sandbox sets for everything).
    """

    root: Path
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str | None] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.state_dir = self.root / "state"
        self.library = self.root / "library"
        self.library.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 108 bytes: keep it short, outside tmp_path.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="dlqd-", dir="/tmp"))
        self.socket = self.socket_dir / "dlqd.sock"
        self.config_path = self.root / "dlqd.toml"
        self.log_path = self.root / "dlqd.log"
        self.starts = 0

    def config(self) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = {
            "daemon": {
                "state_dir": str(self.state_dir),
                "socket": str(self.socket),
                "library": str(self.library),
            },
            "upstream": {
                "base_url": ["http://127.0.0.1:9"],
                "connect_timeout_s": 2,
                "read_timeout_s": 5,
            },
            # One pass: a track out of retries fails at once, as the tests of
            # retries expect; tests of later passes set max_passes themselves.
            "worker": {"backoff_s": [0.05, 0.1], "max_passes": 1},
            "limits": {"submit_rate_per_min": 0, "min_free_mb": 0},
        }
        for section, values in self.settings.items():
            sections.setdefault(section, {}).update(values)
        return sections

    def write_config(self) -> None:
        lines = []
        for section, values in self.config().items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(
        self,
        *,
        wait: bool = True,
        extra_args: Iterable[str] = (),
        launcher: Sequence[str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """Start dlqd; `launcher` replaces `python -m dlqd` (e.g. a socket-activation shim)."""
        self.write_config()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DLQD_", "JOURNAL_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))
        }
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        log = open(self.log_path, "ab")  # noqa: SIM115 — the child keeps it
        self.proc = subprocess.Popen(
            [
                *(launcher or (sys.executable, "-m", "dlqd")),
                "--config",
                str(self.config_path),
                "--log-format",
                "json",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=tuple(pass_fds),
        )
        log.close()
        self.starts += 1
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dlqd exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with Client(str(self.socket), timeout_s=2) as client:
                    return bool(client.call("health"))
            except (Unreachable, Refused):
                return False

        wait_until(answers, timeout=timeout, what="dlqd to answer on its socket")

    def client(self) -> Client:
        return Client(str(self.socket))

    def call(self, cmd: str, **args: Any) -> Any:
        with self.client() as client:
            return client.call(cmd, args)

    def refused(self, cmd: str, **args: Any) -> Refused:
        """Call a command that must be refused; return the refusal."""
        try:
            result = self.call(cmd, **args)
        except Refused as exc:
            return exc
        raise AssertionError(f"{cmd} {args} was accepted: {result}")

    def submit(self, type_: str, target_id: int, quality: str = "LOSSLESS", **extra: Any) -> str:
        result = self.call("submit", type=type_, target_id=target_id, quality=quality, **extra)
        return str(result["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("get", id=job_id)["job"]

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, oldest first (all `list` pages)."""
        with self.client() as client:
            return client.list_all()

    def wait_job(
        self, job_id: str, statuses: Iterable[str] = FINISHED, timeout: float = 60.0
    ) -> dict[str, Any]:
        wanted = tuple(statuses)

        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in wanted else None

        return wait_until(reached, timeout=timeout, what=f"job {job_id} to be {wanted}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup — a crash."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        for entry in self.socket_dir.iterdir():
            entry.unlink()
        self.socket_dir.rmdir()


def held_daemon(
    make_daemon: Callable[..., DaemonProcess], name: str = "d", **sections: Any
) -> DaemonProcess:
    """A started daemon (its upstream unreachable) whose scheduler is held: jobs stay queued."""
    daemon = make_daemon(name, settings=sections)
    daemon.start()
    daemon.call("pause")
    return daemon


def dlqctl(socket_path: Path, *args: str) -> tuple[int, str, str]:
    """Run the dlqctl command line against `socket_path`: (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLQD_")}
    done = subprocess.run(
        [sys.executable, "-m", "dlqctl", "--socket", str(socket_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    return done.returncode, done.stdout, done.stderr


# --- a raw control socket, for bad input a client library would not send ----------------


def raw_connection(daemon: DaemonProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket))
    return sock


def send_body(sock: socket.socket, body: bytes) -> dict[str, Any]:
    sock.sendall(struct.pack(">I", len(body)) + body)
    return read_frame_blocking(sock)


def send_request(sock: socket.socket, message: Any) -> dict[str, Any]:
    return send_body(sock, msgpack.packb(message, use_bin_type=True))


def assert_closed(sock: socket.socket) -> None:
    assert sock.recv(1) == b""


NOBODY = 65534  # uid and gid


def as_nobody(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `action` in a forked child as uid/gid 65534; its JSON-able result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, act, report, exit without cleanup
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome = action()
        except BaseException as exc:
            outcome = {"child_error": repr(exc)}
        os.write(write_end, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def library_files(library: Path) -> set[str]:
    """Every file in the library, relative, except the temp directory's."""
    return {
        str(p.relative_to(library))
        for p in library.rglob("*")
        if p.is_file() and TMP_DIRNAME not in p.parts
    }


def flac_parts(data: bytes) -> tuple[bytes, bytes]:
    """(STREAMINFO block body, the audio frames after the last metadata block).

    Everything tagging may not touch: walks the metadata block headers (1 byte
    last-flag + type, 3 bytes length) from the `fLaC` marker to the last block.
    """
    assert data[:4] == b"fLaC", "not a FLAC stream"
    pos, streaminfo = 4, b""
    while True:
        header = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        if header & 0x7F == 0:
            streaminfo = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if header & 0x80:
            frames = data[pos:]
            assert frames[:2] in (b"\xff\xf8", b"\xff\xf9"), "no frame sync after the metadata"
            return streaminfo, frames


def flac_audio(data: bytes) -> bytes:
    """STREAMINFO plus every audio frame, as one comparable value."""
    streaminfo, frames = flac_parts(data)
    return streaminfo + frames


# --- "the daemon was not hurt": the check every hostile-input test ends with -------------


def tree(root: Path, *, contents_left_out: Collection[Path] = ()) -> dict[str, str]:
    """Every entry below `root`, links not followed, as a comparable description.

    A file is its size and SHA-256, a link its target, a folder "dir". The
    folders in `contents_left_out` appear, but nothing below them does.
    """
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here in contents_left_out:
            dirs.clear()
            continue
        for name in (*dirs, *files):
            path = here / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                entry = "-> " + os.readlink(path)
            elif stat.S_ISDIR(mode):
                entry = "dir"
            elif stat.S_ISREG(mode):
                entry = f"{path.stat().st_size} bytes, sha256 {file_digest(path)}"
            else:
                entry = "socket" if stat.S_ISSOCK(mode) else f"mode {mode:o}"
            found[path.relative_to(root).as_posix()] = entry
    return found


def file_digest(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def outside_snapshot(daemon: DaemonProcess) -> dict[str, str]:
    """What the daemon may neither create, delete nor change, to compare before and after.

    The test's folder (the daemon root's parent: `tmp_path` under `make_daemon`)
    and the socket dir, with their contents; the library and the state dir
    only as folders; the log only as present (it grows); the names in the
    current directory, the daemon's cwd.
    """
    inside = (daemon.library, daemon.state_dir)
    test_root = daemon.root.parent
    found = {
        f"test root/{name}": entry
        for name, entry in tree(test_root, contents_left_out=inside).items()
    }
    log = f"test root/{daemon.log_path.relative_to(test_root).as_posix()}"
    if log in found:
        found[log] = "the log"
    found.update({f"socket dir/{name}": entry for name, entry in tree(daemon.socket_dir).items()})
    found.update({f"cwd/{name}": "present" for name in os.listdir(Path.cwd())})
    return found


def job_outcome(job: dict[str, Any]) -> tuple[Any, ...]:
    """What a restart must keep of a finished job: its status, error, and each track's."""
    tracks = tuple((t["status"], t["outcome"], t["path"], t["error"]) for t in job["tracks"])
    return job["status"], job["error"], tracks


def assert_answers_health(daemon: DaemonProcess) -> None:
    health = daemon.call("health")
    assert health["version"] and health["ok"] is True, health


def assert_unharmed(
    daemon: DaemonProcess,
    innocent_job: str,
    before: dict[str, str],
    *,
    hostile_job: str | None = None,
    planted: Collection[str] = (),
) -> None:
    """The daemon was not hurt by the hostile input it met (issue 8's "Done when").

    The innocent job queued alongside completes; the daemon answers `health`,
    stops cleanly and, restarted on the same state dir, answers again with the
    innocent (and the hostile) job's outcome and the library's files as they
    were. The library holds the completed tracks of those jobs (in their
    folders, beside their covers), the files the test `planted` there itself
    (relative paths) and no temp file. Nothing outside the library and the
    state dir differs from `before`, an `outside_snapshot` taken once the
    daemon was up.
    """
    assert daemon.wait_job(innocent_job)["status"] == "completed", daemon.job(innocent_job)
    assert_answers_health(daemon)
    kept = [job_id for job_id in (innocent_job, hostile_job) if job_id is not None]
    outcomes = [job_outcome(daemon.job(job_id)) for job_id in kept]
    landed = library_files(daemon.library)

    assert daemon.stop() == 0
    daemon.start()

    assert_answers_health(daemon)
    jobs = [daemon.job(job_id) for job_id in kept]
    assert [job_outcome(job) for job in jobs] == outcomes
    assert library_files(daemon.library) == landed
    completed_folders = {
        Path(track["path"]).parent
        for job in jobs
        for track in job["tracks"]
        if track["status"] == "completed"
    }
    assert {Path(name).parent for name in landed - set(planted)} == completed_folders
    assert os.listdir(daemon.library / TMP_DIRNAME) == []
    assert outside_snapshot(daemon) == before


# --- a certificate authority of our own, for TLS upstreams --------------------------------


@dataclass(frozen=True)
class Certificates:
    """A CA certificate, and a server certificate + key it signed, as PEM files."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """What a TLS server (`CatalogServer(ssl_context=...)`) presents."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_certificates(
    directory: Path, *, names: str = "IP:127.0.0.1, DNS:localhost", ca: Certificates | None = None
) -> Certificates:
    """A server certificate for `names` (subjectAltName syntax), via the openssl CLI.

    Signed by `ca`'s key when given, else by a new CA made in `directory`.
    The extensions are the ones strict verifiers want (CA basicConstraints and
    keyUsage critical, SAN, serverAuth, key identifiers), so the same files
    work for stdlib `ssl`, httpx and GnuTLS (aria2c).
    """
    directory.mkdir(parents=True)
    (directory / "server.ext").write_text(
        f"subjectAltName = {names}\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    commands = []
    if ca is None:
        commands.append(
            f"req -x509 {new_key} -days 2 -subj '/CN=dlqd test CA'"
            " -addext basicConstraints=critical,CA:TRUE"
            " -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.pem"
        )
        ca_cert, ca_key = directory / "ca.pem", directory / "ca.key"
    else:
        ca_cert, ca_key = ca.ca, ca.ca.with_suffix(".key")
    commands += [
        f"req {new_key} -subj /CN=dlqd-test-server -keyout server.key -out server.csr",
        f"x509 -req -in server.csr -CA {shlex.quote(str(ca_cert))}"
        f" -CAkey {shlex.quote(str(ca_key))} -days 2 -extfile server.ext"
        f" -set_serial 0x{secrets.token_hex(8)} -out server.pem",
    ]
    for command in commands:
        openssl = ["openssl", *shlex.split(command)]
        subprocess.run(openssl, cwd=directory, check=True, capture_output=True)
    return Certificates(ca_cert, directory / "server.pem", directory / "server.key")
