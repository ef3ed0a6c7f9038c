"""A local user on the control socket cannot lock it up (issue 8, "the control socket").

Every test runs a real daemon and speaks to its real socket, as a hostile or
careless client would: connections that never send a frame, or never read
their replies, a peer that is not allowed, pages of `list`, sloppy envelopes,
and a hypothesis state machine throwing random frames and command sequences
at one daemon against a model of its queue. Throughout, `health` answers.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from dlqctl.client import Client, Refused, Unreachable
from dlqd.control import LogThrottle
from dlqd.model import PRIORITIES, QUALITIES
from dlqd.protocol import (
    COMMANDS,
    ProtocolError,
    Request,
    decode_body,
    encode_frame,
    parse_request,
    read_frame_blocking,
)
from tests.conftest import DaemonFactory
from tests.support import (
    NOBODY,
    DaemonProcess,
    as_nobody,
    dlqctl,
    held_daemon,
    raw_connection,
    send_request,
    wait_until,
)

CLIENT_ERRORS = {
    "INVALID_ARGUMENT",
    "UNKNOWN_COMMAND",
    "MALFORMED_FRAME",
    "FRAME_TOO_LARGE",
    "NOT_FOUND",
    "INVALID_STATE",
    "QUEUE_FULL",
}


def answers_health(daemon: DaemonProcess) -> bool:
    try:
        with Client(str(daemon.socket), timeout_s=5) as client:
            return bool(client.call("health")["ok"])
    except (Unreachable, Refused):
        return False


def peer_closed(sock: socket.socket) -> bool:
    """True once the daemon has closed its end (POLLHUP), without reading anything."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


def open_silent(daemon: DaemonProcess, count: int) -> list[socket.socket]:
    """`count` connections that never send a byte."""
    opened = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(daemon.socket))  # blocking: waits while the listen backlog is full
        sock.settimeout(10)
        opened.append(sock)
    return opened


def close_all(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def submit_frame(request_id: int, target_id: int) -> bytes:
    args = {"type": "track", "target_id": target_id, "quality": "LOSSLESS"}
    return encode_frame({"v": 1, "id": request_id, "cmd": "submit", "args": args})


def submit_many(daemon: DaemonProcess, targets: Iterable[int], connections: int = 8) -> list[str]:
    """Submit a track job per target, pipelined over a few connections; their ids in order."""
    wanted = list(targets)
    ids: dict[int, str] = {}
    errors: list[BaseException] = []

    def pipeline(share: list[int]) -> None:
        try:
            with raw_connection(daemon) as sock:
                sock.sendall(b"".join(submit_frame(target, target) for target in share))
                for _ in share:
                    response = read_frame_blocking(sock)
                    assert response["ok"] is True, response
                    ids[response["id"]] = response["result"]["id"]
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=pipeline, args=(wanted[n::connections],))
        for n in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return [ids[target] for target in wanted]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def log_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]


# --- connections that never send a frame ---------------------------------------------------


def test_600_silent_connections_are_closed_and_a_good_client_is_still_answered(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, daemon={"first_frame_timeout_s": 1})
    silent = open_silent(daemon, 600)  # more than the 512 the daemon serves at once
    try:
        wait_until(lambda: answers_health(daemon), what="health beside 600 silent connections")
        wait_until(
            lambda: all(peer_closed(sock) for sock in silent),
            what="every silent connection to be closed",
        )
        assert all(sock.recv(1) == b"" for sock in silent)  # closed without an answer
        assert daemon.submit("track", 1)
    finally:
        close_all(silent)


def test_a_full_connection_table_closes_the_longest_idle_never_a_watcher(
    make_daemon: DaemonFactory,
) -> None:
    # A first-frame timeout far beyond the test's deadlines: only making room can free a slot.
    daemon = held_daemon(make_daemon, daemon={"first_frame_timeout_s": 600})
    watcher = raw_connection(daemon)
    assert send_request(watcher, {"v": 1, "id": 1, "cmd": "watch", "args": {}})["ok"] is True
    idle = raw_connection(daemon)  # answered once, then quiet between frames
    assert send_request(idle, {"v": 1, "id": 1, "cmd": "health", "args": {}})["ok"] is True
    silent = open_silent(daemon, 600)
    try:
        wait_until(lambda: answers_health(daemon), what="health with the table full")
        wait_until(lambda: peer_closed(idle), what="the longest-idle connection to be closed")
        assert not peer_closed(watcher)
        job_id = daemon.submit("track", 7)
        event = read_frame_blocking(watcher)  # the watcher still streams
        assert (event["event"], event["job_id"]) == ("submit", job_id)
        warnings = [
            line
            for line in log_lines(daemon)
            if line["level"] == "warning" and "connection limit reached" in line["event"]
        ]
        assert len(warnings) == 1  # hundreds of evictions, one line a minute
        assert warnings[0]["limit"] == 512
    finally:
        close_all([watcher, idle, *silent])


def test_a_frame_must_arrive_whole_in_time_but_quiet_clients_and_watchers_stay(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, daemon={"first_frame_timeout_s": 1})
    health = {"v": 1, "id": 2, "cmd": "health", "args": {}}
    silent = raw_connection(daemon)
    half = raw_connection(daemon)
    assert send_request(half, health)["ok"] is True
    body = msgpack.packb(health)
    half.sendall(struct.pack(">I", len(body)) + body[:3])  # a second frame, never finished
    quiet = raw_connection(daemon)
    assert send_request(quiet, health)["ok"] is True
    watcher = raw_connection(daemon)
    assert send_request(watcher, {"v": 1, "id": 1, "cmd": "watch", "args": {}})["ok"] is True
    try:
        wait_until(lambda: peer_closed(silent), what="the silent connection to be closed")
        wait_until(lambda: peer_closed(half), what="the half-sent frame's connection to close")
        # Both took longer than the timeout: the quiet client and the watcher outlived it.
        assert send_request(quiet, health)["ok"] is True
        job_id = daemon.submit("track", 3)
        assert read_frame_blocking(watcher)["job_id"] == job_id
    finally:
        close_all([silent, half, quiet, watcher])


@pytest.mark.skipif(not Path("/usr/bin/prlimit").exists(), reason="needs prlimit(1)")
def test_connections_never_take_the_descriptors_the_journal_needs(
    make_daemon: DaemonFactory,
) -> None:
    settings = {"first_frame_timeout_s": 600, "journal_compact_bytes": 4096}
    daemon = make_daemon(settings={"daemon": settings})
    daemon.start(launcher=("prlimit", "--nofile=64:64", sys.executable, "-m", "dlqd"))
    daemon.call("pause")
    silent = open_silent(daemon, 200)  # far more connections than descriptors
    try:
        wait_until(lambda: answers_health(daemon), what="health under a low descriptor limit")
        # Compaction opens a new segment and a snapshot: it needs fresh descriptors.
        with daemon.client() as client:
            for target in range(1, 101):
                args = {"type": "album", "target_id": target, "quality": "LOSSLESS"}
                client.call("submit", args)
            journal = client.call("stats")["journal"]
        assert journal["compactions"] >= 1
        assert (journal["writable"], journal["failed_batches"]) == (True, 0)
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert len(daemon.jobs()) == 100
    finally:
        close_all(silent)


def test_the_log_throttle_says_how_many_lines_it_held_back() -> None:
    now = [1000.0]
    throttle = LogThrottle(interval_s=60, clock=lambda: now[0])
    assert throttle.allow("uid 7") == 0  # the first line is logged
    assert [throttle.allow("uid 7") for _ in range(5)] == [None] * 5
    assert throttle.allow("uid 8") == 0  # keys are independent
    now[0] += 60
    assert throttle.allow("uid 7") == 5  # logged again, with the count held back
    assert throttle.allow("uid 7") is None


# --- a peer that is not allowed ---------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_a_peer_that_is_not_allowed_is_refused_at_accept_without_sending_anything(
    make_daemon: DaemonFactory,
) -> None:
    daemon = make_daemon(settings={"daemon": {"socket_mode": "0666"}})
    daemon.socket_dir.chmod(0o755)  # uid 65534 reaches the socket file; dlqd must say no
    daemon.start()

    def connect_and_only_listen() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(daemon.socket))
            frame = read_frame_blocking(sock)  # nothing was sent
            return {"frame": frame, "closed": sock.recv(1) == b"", "pid": os.getpid()}

    outcome = as_nobody(connect_and_only_listen)
    assert "child_error" not in outcome, outcome
    frame = outcome["frame"]
    assert (frame["id"], frame["ok"], frame["error"]["code"]) == (None, False, "PERMISSION_DENIED")
    assert f"uid {NOBODY}" in frame["error"]["message"]
    assert outcome["closed"] is True
    refusals = [
        line
        for line in log_lines(daemon)
        if line["level"] == "warning" and line.get("uid") == NOBODY
    ]
    assert len(refusals) == 1
    assert refusals[0]["pid"] == outcome["pid"]
    assert answers_health(daemon)  # root still is


# --- clients that never read ----------------------------------------------------------------


def test_a_client_that_never_reads_its_replies_is_dropped_and_memory_stays_bounded(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, daemon={"send_timeout_s": 1}, limits={"max_queue": 2000})
    submit_many(daemon, range(1, 301))
    assert daemon.proc is not None
    baseline_kib = rss_kib(daemon.proc.pid)
    list_page = encode_frame({"v": 1, "id": 1, "cmd": "list", "args": {"limit": 5000}})
    readers = []
    for _ in range(20):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.settimeout(10)
        sock.connect(str(daemon.socket))
        sock.sendall(list_page * 30)  # 30 pages of 300 jobs asked for; none read
        readers.append(sock)
    peak_kib = baseline_kib

    def all_dropped() -> bool:
        nonlocal peak_kib
        peak_kib = max(peak_kib, rss_kib(daemon.proc.pid))  # type: ignore[union-attr]
        return all(peer_closed(sock) for sock in readers)

    try:
        wait_until(all_dropped, what="every non-reading client to be dropped")
        assert answers_health(daemon)
        replies = 0
        with readers[0] as sock:  # what it got before the drop: less than it asked for
            while True:
                try:
                    read_frame_blocking(sock)
                except ConnectionError:
                    break
                replies += 1
        assert replies < 30
        assert (peak_kib - baseline_kib) < 64 * 1024
    finally:
        close_all(readers)


def test_a_watcher_that_never_reads_is_dropped(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon, daemon={"send_timeout_s": 1}, limits={"max_queue": 5000})
    lazy = raw_connection(daemon)
    lazy.sendall(encode_frame({"v": 1, "id": 1, "cmd": "watch", "args": {}}))  # never read
    targets = iter(range(1, 5001))

    def dropped_after_more_events() -> bool:
        submit_many(daemon, [next(targets) for _ in range(100)], connections=4)
        return peer_closed(lazy)

    try:
        wait_until(dropped_after_more_events, what="the non-reading watcher to be dropped")
        assert answers_health(daemon)
        with raw_connection(daemon) as watcher:  # a reading watcher is served as before
            assert send_request(watcher, {"v": 1, "id": 1, "cmd": "watch", "args": {}})["ok"]
            job_id = daemon.submit("album", 1)
            assert read_frame_blocking(watcher)["job_id"] == job_id
    finally:
        lazy.close()


# --- list is paged ----------------------------------------------------------------------------


def test_list_pages_return_every_job_exactly_once_and_dlqctl_ls_follows_them(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, limits={"max_queue": 2000})
    ids = submit_many(daemon, range(1, 1201))
    by_age = sorted(ids, key=int)
    with daemon.client() as client:
        pages = []
        args: dict[str, Any] = {"limit": 500}
        while True:
            result = client.call("list", args)
            pages.append([job["id"] for job in result["jobs"]])
            if "next" not in result:
                break
            assert result["next"] == pages[-1][0]  # the oldest job of the page
            args["before"] = result["next"]
        assert [len(page) for page in pages] == [500, 500, 200]
        assert pages[0] == by_age[700:]  # newest page first, oldest first inside
        assert [job_id for page in reversed(pages) for job_id in page] == by_age

        default_page = client.call("list")
        assert len(default_page["jobs"]) == 500
        assert default_page["next"] == by_age[700]

        cancelled = by_age[::3]
        for job_id in cancelled:
            client.call("cancel", {"id": job_id})
        filtered = client.call("list", {"status": ["cancelled"], "limit": 150})
        assert len(filtered["jobs"]) == 150
        assert {job["status"] for job in filtered["jobs"]} == {"cancelled"}
        assert client.list_all(["cancelled"]) == [
            job for job in client.list_all() if job["id"] in set(cancelled)
        ]
        assert "next" not in client.call("list", {"status": ["paused"]})  # none: no cursor

        gone = by_age[601]  # a cursor whose job was removed meanwhile still walks on
        client.call("cancel", {"id": gone})
        client.call("remove", {"id": gone})
        older = client.call("list", {"before": gone, "limit": 5000})["jobs"]
        assert [job["id"] for job in older] == by_age[:601]
        assert "next" not in client.call("list", {"before": by_age[0]})
        assert client.call("list", {"before": by_age[0]})["jobs"] == []

    code, out, _ = dlqctl(daemon.socket, "--json", "ls")
    listed = json.loads(out)
    assert code == 0
    history = [job_id for job_id in by_age if job_id in set(cancelled)]
    queue = [job_id for job_id in by_age if job_id not in set(cancelled) and job_id != gone]
    assert [job["id"] for job in listed] == history + queue  # finished, then the run order
    code, out, _ = dlqctl(daemon.socket, "ls")
    assert code == 0
    assert len(out.splitlines()) == 1 + 1199  # the header, then every job
    code, out, _ = dlqctl(daemon.socket, "--json", "ls", "--status", "cancelled")
    assert len(json.loads(out)) == len(cancelled)


BAD_PAGING_ARGS: list[dict[str, Any]] = [
    {"limit": 0},
    {"limit": 5001},
    {"limit": True},
    {"limit": 500.0},
    {"limit": "500"},
    {"before": 5},
    {"before": ""},
    {"before": "five"},
    {"before": "0"},
    {"before": "05"},
    {"before": "x" * 100},
    {"after": "5"},
]


def test_bad_list_paging_arguments_are_invalid_argument(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    with raw_connection(daemon) as sock:
        for request_id, args in enumerate(BAD_PAGING_ARGS, start=1):
            response = send_request(sock, {"v": 1, "id": request_id, "cmd": "list", "args": args})
            assert (response["id"], response["ok"]) == (request_id, False), args
            assert response["error"]["code"] == "INVALID_ARGUMENT", args
        good = {"limit": 5000, "before": "999"}
        assert send_request(sock, {"v": 1, "id": 99, "cmd": "list", "args": good})["ok"] is True


# --- the envelope ----------------------------------------------------------------------------


def test_v_must_be_the_integer_1_and_the_connection_stays_usable(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    submit = {"type": "track", "target_id": 5, "quality": "LOSSLESS"}
    with raw_connection(daemon) as sock:
        for request_id, version in enumerate([True, 1.0, "1", 1.5, [1]], start=1):
            response = send_request(
                sock, {"v": version, "id": request_id, "cmd": "submit", "args": submit}
            )
            assert (response["id"], response["ok"]) == (request_id, False), version
            assert response["error"]["code"] == "INVALID_ARGUMENT"
            assert "v must be the integer 1" in response["error"]["message"]
        assert send_request(sock, {"v": 1, "id": 9, "cmd": "stats", "args": {}})["ok"] is True
    assert daemon.jobs() == []  # none of them was taken as a submit


# --- random frames and command sequences against a model of the queue --------------------------

MODEL_MAX_QUEUE = 6
ACTIVE = ("queued", "paused")  # the scheduler is held: nothing ever runs

job_refs = st.from_regex(r"[1-9][0-9]{0,3}", fullmatch=True)
job_picks = st.integers(min_value=0, max_value=63) | job_refs  # see ControlSocketMachine.job_id
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=12,
)
arg_values = (
    st.sampled_from(["track", "album", "playlist", *QUALITIES, "lossless", *PRIORITIES])
    | st.integers(min_value=-2, max_value=2**32)
    | st.lists(st.sampled_from(["queued", "paused", "cancelled", "done"]), max_size=3)
    | job_refs
    | msgpack_scalars
)
arg_names = st.sampled_from(
    ["type", "target_id", "quality", "priority", "status", "limit", "before", "id", "x"]
)
request_maps = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, True, 1.0, "1", 2, None]),
        "id": st.integers(min_value=-(2**31), max_value=2**31)
        | st.booleans()
        | st.text(max_size=3),
        "cmd": st.sampled_from(COMMANDS) | st.text(max_size=8),
        "args": st.dictionaries(arg_names, arg_values, max_size=4) | msgpack_scalars,
        "extra": msgpack_scalars,
    },
)


class ControlSocketMachine(RuleBasedStateMachine):
    """One daemon, shared by every example; the model is read from it at the start of each."""

    daemon: DaemonProcess

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[str, str] = {}  # job id -> status
        self.keys: dict[str, tuple[str, int, str]] = {}
        self.sock = raw_connection(self.daemon)
        self.next_request_id = 1

    def teardown(self) -> None:
        self.sock.close()

    @initialize()
    def start_from_an_empty_queue(self) -> None:
        """Every example starts alike: the jobs of earlier examples are cancelled and removed."""
        with self.daemon.client() as client:
            for job in client.list_all():
                if job["status"] in ACTIVE:
                    client.call("cancel", {"id": job["id"]})
                client.call("remove", {"id": job["id"]})

    # --- talking -------------------------------------------------------------------------

    def _exchange(self, body: bytes) -> dict[str, Any]:
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        return read_frame_blocking(self.sock)

    def _reconnect(self) -> None:
        self.sock.close()
        self.sock = raw_connection(self.daemon)

    def send_valid(self, cmd: str, args: dict[str, Any]) -> None:
        request_id = self.next_request_id
        self.next_request_id += 1
        message = {"v": 1, "id": request_id, "cmd": cmd, "args": args}
        self.check(parse_request(message), message)

    def send_any(self, message: Any) -> None:
        """A frame holding any msgpack value: judged exactly as dlqd's validator judges it."""
        body = msgpack.packb(message, use_bin_type=True)
        try:
            request = parse_request(decode_body(body))
        except ProtocolError as refused:
            response = self._exchange(body)
            assert response["ok"] is False, (message, response)
            assert response["error"]["code"] == refused.code, (message, response)
            assert response["id"] == refused.request_id
            if refused.fatal:
                self._reconnect()
            return
        if request.cmd == "resume" and "id" not in request.args:
            return  # releasing the hold would let jobs run: outside this model
        self.check(request, message)

    def check(self, request: Request, message: Any) -> None:
        """Send a valid request; its answer and the model's must agree, then the model moves."""
        response = self._exchange(msgpack.packb(message, use_bin_type=True))
        assert response["id"] == request.id
        expected_error, on_success = self.expect(request)
        if expected_error is not None:
            assert response["ok"] is False, (request, response)
            assert response["error"]["code"] == expected_error, (request, response)
            return
        assert response["ok"] is True, (request, response)
        on_success(response["result"])
        if request.cmd == "watch":
            self._reconnect()  # the connection now streams events

    # --- the model -----------------------------------------------------------------------

    def active(self) -> dict[tuple[str, int, str], str]:
        return {self.keys[i]: i for i, s in self.statuses.items() if s in ACTIVE}

    def expect(self, request: Request) -> tuple[str | None, Callable[[Any], None]]:
        """(the error code dlqd must answer, or None and a check of the result)."""
        args = request.args
        statuses = self.statuses
        job_id = args.get("id")
        status = statuses.get(job_id) if job_id is not None else None

        def move(to: str | None) -> Callable[[Any], None]:
            def apply(result: Any) -> None:
                if "job" in result:
                    assert (result["job"]["id"], result["job"]["status"]) == (job_id, to)
                if to is None:
                    assert result == {"removed": job_id}
                    del statuses[job_id]
                    del self.keys[job_id]
                else:
                    statuses[job_id] = to

            return apply

        cmd = request.cmd
        if cmd == "submit":
            key = (args["type"], args["target_id"], args["quality"])
            twin = self.active().get(key)
            if twin is not None:
                return None, lambda result: self._expect_equal(
                    result, {"id": twin, "created": False}
                )
            if len(self.active()) >= MODEL_MAX_QUEUE:
                return "QUEUE_FULL", _ignore

            def submitted(result: Any) -> None:
                assert result["created"] is True and result["id"] not in statuses
                statuses[result["id"]] = "queued"
                self.keys[result["id"]] = key

            return None, submitted
        if cmd == "list":
            return None, lambda result: self._check_page(result, args)
        if cmd in ("stats", "health", "metrics", "watch"):
            return None, lambda result: self._check_plain(cmd, result)
        if cmd in ("pause", "resume") and job_id is None:
            return None, lambda result: self._expect_equal(result, {})
        if status is None:
            return "NOT_FOUND", _ignore
        if cmd == "get":
            return None, lambda result: self._expect_equal(result["job"]["status"], status)
        if cmd == "cancel":
            return (None, move("cancelled")) if status in ACTIVE else ("INVALID_STATE", _ignore)
        if cmd == "remove":
            return (None, move(None)) if status not in ACTIVE else ("INVALID_STATE", _ignore)
        if cmd == "retry":
            if status in ACTIVE or self.keys[job_id] in self.active():
                return "INVALID_STATE", _ignore
            if len(self.active()) >= MODEL_MAX_QUEUE:
                return "QUEUE_FULL", _ignore
            return None, move("queued")
        if status not in ACTIVE:  # pause or resume of a finished job
            return "INVALID_STATE", _ignore
        after = {"pause": "paused", "resume": "queued"}[cmd]
        return None, lambda result: (self._expect_equal(result, {}), move(after)(result))

    @staticmethod
    def _expect_equal(found: Any, wanted: Any) -> None:
        assert found == wanted

    def _check_page(self, result: dict[str, Any], args: dict[str, Any]) -> None:
        wanted = set(args.get("status") or ())
        before = int(args["before"]) if "before" in args else None
        newest_first = [
            job_id
            for job_id in sorted(self.statuses, key=int, reverse=True)
            if (before is None or int(job_id) < before)
            and (not wanted or self.statuses[job_id] in wanted)
        ]
        limit = args.get("limit", 500)
        page = newest_first[:limit][::-1]
        assert [(job["id"], job["status"]) for job in result["jobs"]] == [
            (job_id, self.statuses[job_id]) for job_id in page
        ]
        if len(newest_first) > limit:
            assert result["next"] == page[0]
        else:
            assert "next" not in result

    def _check_plain(self, cmd: str, result: dict[str, Any]) -> None:
        if cmd == "stats":
            queue = result["queue"]
            counts = {s: list(self.statuses.values()).count(s) for s in ("queued", "paused")}
            assert (queue["queued"], queue["paused"]) == (counts["queued"], counts["paused"])
            assert queue["total"] == len(self.statuses)
        elif cmd == "watch":
            assert result == {"watching": True}

    # --- rules ---------------------------------------------------------------------------

    @rule(
        type_=st.sampled_from(["track", "album"]),
        target_id=st.integers(min_value=1, max_value=4),
        quality=st.sampled_from(QUALITIES),
        priority=st.none() | st.sampled_from(PRIORITIES),
    )
    def submit(self, type_: str, target_id: int, quality: str, priority: str | None) -> None:
        args: dict[str, Any] = {"type": type_, "target_id": target_id, "quality": quality}
        if priority is not None:
            args["priority"] = priority
        self.send_valid("submit", args)

    @rule(
        cmd=st.sampled_from(["get", "cancel", "retry", "remove", "pause", "resume"]),
        data=st.data(),
    )
    def act_on_a_job(self, cmd: str, data: st.DataObject) -> None:
        known = sorted(self.statuses, key=int)
        choice = st.sampled_from(known) | job_refs if known else job_refs
        self.send_valid(cmd, {"id": data.draw(choice, label="id")})

    @rule(
        limit=st.none() | st.integers(min_value=1, max_value=7),
        status=st.none() | st.lists(st.sampled_from(["queued", "paused", "cancelled"])),
        data=st.data(),
    )
    def list_a_page(self, limit: int | None, status: list[str] | None, data: st.DataObject) -> None:
        args: dict[str, Any] = {}
        if limit is not None:
            args["limit"] = limit
        if status is not None:
            args["status"] = status
        if data.draw(st.booleans(), label="with before"):
            known = sorted(self.statuses, key=int)
            args["before"] = data.draw(st.sampled_from(known) | job_refs if known else job_refs)
        self.send_valid("list", args)

    @rule(cmd=st.sampled_from(["pause", "stats", "health", "metrics"]))
    def queue_wide(self, cmd: str) -> None:
        self.send_valid(cmd, {})

    @rule(message=request_maps)
    def random_request_map(self, message: dict[str, Any]) -> None:
        self.send_any(message)

    @rule(value=msgpack_values)
    def random_msgpack_value(self, value: Any) -> None:
        self.send_any(value)

    @rule(data=st.binary(max_size=64), framed=st.booleans())
    def random_bytes(self, data: bytes, framed: bool) -> None:
        """Bytes on a connection of their own; every answer is an error, then the end."""
        with raw_connection(self.daemon) as sock:
            sock.sendall(struct.pack(">I", len(data)) + data if framed else data)
            sock.shutdown(socket.SHUT_WR)
            while True:
                try:
                    response = read_frame_blocking(sock)
                except ConnectionError:
                    break
                assert response["ok"] is False, (data, response)
                assert response["error"]["code"] in CLIENT_ERRORS, (data, response)

    @invariant()
    def health_answers(self) -> None:
        assert answers_health(self.daemon)


def _ignore(result: Any) -> None:
    pass


def test_random_frames_and_commands_agree_with_a_model_of_the_queue(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, limits={"max_queue": MODEL_MAX_QUEUE})

    class OnThisDaemon(ControlSocketMachine):
        pass

    OnThisDaemon.daemon = daemon
    run_state_machine_as_test(
        OnThisDaemon,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert "connection failed" not in daemon.logs()  # no handler bug surfaced as a crash
