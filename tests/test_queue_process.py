"""The durable queue against real dlqd processes (issue 2's "done when").

Every test starts real daemons on real sockets (tests/support.py) and holds
the scheduler (`pause` with no id) so jobs stay queued: what is checked here
is the queue itself — acknowledgement means durable, crashes lose nothing
acknowledged, damage is refused clearly, bad input never hurts the daemon.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dlqctl.client import Client, NotPermitted, Refused
from dlqd.journal import SEGMENT_HEADER, iter_records, list_segments, segment_path
from dlqd.protocol import read_frame_blocking
from tests.conftest import DaemonFactory
from tests.support import (
    DaemonProcess,
    as_nobody,
    assert_closed,
    dlqctl,
    held_daemon,
    raw_connection,
    send_body,
    send_request,
)

QUALITIES = ("LOW", "HIGH", "LOSSLESS", "HI_RES_LOSSLESS")
JOB_KEYS = {
    "id",
    "type",
    "target_id",
    "quality",
    "priority",
    "status",
    "position",
    "bytes_total_estimated",
    "speed_bps",
    "eta_s",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "progress",
    "bytes_done",
    "bytes_total",
    "error",
    "title",
    "artist",
    "parent",
    "include",
    "children",
    "playlist_path",
    "tracks",
}
TRACK_KEYS = {
    "track_id",
    "title",
    "disc",
    "number",
    "duration_s",
    "quality",
    "bit_depth",
    "sample_rate",
    "status",
    "path",
    "bytes_done",
    "bytes_total",
    "attempts",
    "outcome",
    "error",
    "passes",
    "next_pass_at",
}


def newest_segment(daemon: DaemonProcess) -> Path:
    journal = daemon.state_dir / "journal"
    return segment_path(journal, list_segments(journal)[-1])


def record_spans(segment: Path) -> list[tuple[int, int]]:
    spans = []
    for offset, end, body in iter_records(segment.read_bytes(), SEGMENT_HEADER.size):
        assert body is not None
        spans.append((offset, end))
    return spans


def exit_code(daemon: DaemonProcess, timeout: float = 20) -> int:
    assert daemon.proc is not None
    return daemon.proc.wait(timeout=timeout)


# --- durability ---------------------------------------------------------------------------


def test_every_acknowledged_submit_from_8_clients_survives_sigkill(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, limits={"max_queue": 2000})
    acknowledged: list[tuple[str, tuple[str, int, str]]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client_thread(index: int) -> None:
        try:
            with Client(str(daemon.socket)) as client:
                for n in range(125):
                    target = index * 1000 + n + 1
                    key = ("album" if n % 2 else "track", target, QUALITIES[n % 4])
                    args = {"type": key[0], "target_id": key[1], "quality": key[2]}
                    result = client.call("submit", args)
                    assert result["created"] is True
                    with lock:
                        acknowledged.append((result["id"], key))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(acknowledged) == 1000

    daemon.kill()
    daemon.start()
    jobs = daemon.jobs()
    ids = [job["id"] for job in jobs]
    assert len(ids) == len(set(ids)) == 1000
    found = {job["id"]: (job["type"], job["target_id"], job["quality"]) for job in jobs}
    assert found == dict(acknowledged)
    assert all(job["status"] == "queued" for job in jobs)
    assert daemon.call("stats")["worker"]["running"] is False  # the hold was journaled too


def test_sigterm_exits_0_and_the_next_start_finds_every_job(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    ids = [daemon.submit("track", n) for n in range(1, 21)]
    daemon.call("cancel", id=ids[0])
    before = daemon.jobs()
    assert daemon.stop() == 0
    assert (daemon.state_dir / "snapshot").exists()  # the drain checkpoints
    assert not daemon.socket.exists()
    daemon.start()
    assert daemon.jobs() == before


# --- torn tail and corruption -----------------------------------------------------------------


def test_a_journal_cut_short_recovers_every_whole_record_with_a_warning(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    ids = [daemon.submit("track", n) for n in range(1, 6)]
    daemon.kill()
    segment = newest_segment(daemon)
    with open(segment, "r+b") as handle:
        handle.truncate(segment.stat().st_size - 3)  # the last submit loses 3 bytes

    daemon.start()
    assert [job["id"] for job in daemon.jobs()] == ids[:4]
    warnings = [
        json.loads(line)
        for line in daemon.logs().splitlines()
        if line.startswith("{") and "torn tail" in line
    ]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["bytes"] > 0
    # the journal is whole again: a new job is acknowledged and survives a crash
    new_id = daemon.submit("track", 99)
    daemon.kill()
    daemon.start()
    assert [job["id"] for job in daemon.jobs()] == [*ids[:4], new_id]


def test_a_corrupted_record_in_the_middle_stops_start_up_with_a_repair_hint(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    for n in range(1, 6):
        daemon.submit("track", n)
    daemon.kill()
    segment = newest_segment(daemon)
    offset, end = record_spans(segment)[2]
    data = bytearray(segment.read_bytes())
    data[end - 2] ^= 0x20  # one flipped bit inside a record with records after it
    segment.write_bytes(bytes(data))

    daemon.start(wait=False)
    assert exit_code(daemon) == 1
    message = daemon.logs()
    assert segment.name in message
    assert f"byte {offset}" in message
    assert "To repair" in message
    assert segment.read_bytes() == bytes(data)  # nothing was cut or rewritten


def test_compaction_keeps_the_journal_bounded_and_the_state_intact(
    make_daemon: DaemonFactory,
) -> None:
    compact_bytes = 4096
    daemon = held_daemon(make_daemon, daemon={"journal_compact_bytes": compact_bytes})
    journal = daemon.state_dir / "journal"
    largest = 0
    with daemon.client() as client:
        for n in range(1, 301):
            args = {"type": "track", "target_id": n, "quality": "LOSSLESS"}
            job_id = client.call("submit", args)["id"]
            if n % 3:
                client.call("cancel", {"id": job_id})
            if n % 3 == 1:
                client.call("remove", {"id": job_id})
            segment_bytes = sum(p.stat().st_size for p in journal.glob("*.seg"))
            largest = max(largest, segment_bytes)
        stats = client.call("stats")
    # One client: at most one small batch lands after the threshold before compacting.
    assert largest < compact_bytes + 1024
    assert stats["journal"]["compactions"] >= 5
    assert (daemon.state_dir / "snapshot").exists()
    before = daemon.jobs()
    assert len(before) == 200
    daemon.kill()
    daemon.start()
    assert daemon.jobs() == before


# --- bad input on a raw socket -------------------------------------------------------------------


def test_an_undecodable_body_is_malformed_frame_and_closes_the_connection(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    with raw_connection(daemon) as sock:
        response = send_body(sock, b"\xc1\xff\x00garbage\xc1")
        assert response["ok"] is False
        assert response["error"]["code"] == "MALFORMED_FRAME"
        assert_closed(sock)
    assert daemon.call("health")["ok"] is True


def test_an_oversize_length_prefix_is_frame_too_large_and_closes_the_connection(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, limits={"max_frame_bytes": 4096})
    with raw_connection(daemon) as sock:
        sock.sendall(struct.pack(">I", 4097))  # refused before any body is read
        response = read_frame_blocking(sock)
        assert response["error"]["code"] == "FRAME_TOO_LARGE"
        assert "4096" in response["error"]["message"]
        assert_closed(sock)
    with raw_connection(daemon) as sock:  # exactly the limit is fine
        message: dict[str, Any] = {"v": 1, "id": 1, "cmd": "stats", "args": {}, "pad": ""}
        while len(frame := msgpack.packb(message)) < 4096:
            message["pad"] += "x"
        assert len(frame) == 4096
        response = send_body(sock, frame)
        assert response["error"]["code"] == "INVALID_ARGUMENT"  # read whole, then judged


def test_bad_requests_get_an_error_and_the_same_connection_keeps_working(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    cases: list[tuple[Any, str]] = [
        ([1, 2, 3], "INVALID_ARGUMENT"),  # not a map
        ({"id": 1, "cmd": "stats", "args": {}}, "INVALID_ARGUMENT"),  # missing v
        ({"v": 9, "id": 2, "cmd": "stats", "args": {}}, "INVALID_ARGUMENT"),  # unknown v
        ({"v": 1, "id": 3, "cmd": "explode", "args": {}}, "UNKNOWN_COMMAND"),
        ({"v": 1, "id": 4, "cmd": "stats", "args": [1]}, "INVALID_ARGUMENT"),
        (
            {
                "v": 1,
                "id": 5,
                "cmd": "submit",
                "args": {"type": "track", "target_id": True, "quality": "LOSSLESS"},
            },
            "INVALID_ARGUMENT",
        ),
        (
            {
                "v": 1,
                "id": 6,
                "cmd": "submit",
                "args": {"type": "track", "target_id": 5, "quality": "lossy"},
            },
            "INVALID_ARGUMENT",
        ),
        ({"v": 1, "id": 7, "cmd": "get", "args": {"id": "1", "x": 1}}, "INVALID_ARGUMENT"),
    ]
    with raw_connection(daemon) as sock:
        for message, code in cases:
            response = send_request(sock, message)
            assert response["ok"] is False, message
            assert response["error"]["code"] == code, message
            if isinstance(message, dict) and message.get("v") == 1:
                assert response["id"] == message["id"]
        response = send_request(sock, {"v": 1, "id": 8, "cmd": "stats", "args": {}})
        assert response["ok"] is True
        assert response["id"] == 8
    assert daemon.jobs() == []


def test_a_client_holding_half_a_frame_does_not_block_others(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    with raw_connection(daemon) as stalled:
        body = msgpack.packb({"v": 1, "id": 1, "cmd": "stats", "args": {}})
        stalled.sendall(struct.pack(">I", len(body)) + body[:3])
        job_id = daemon.submit("track", 1)  # other clients are served meanwhile
        assert daemon.job(job_id)["status"] == "queued"
        stalled.sendall(body[3:])  # and the stalled one is answered once it finishes
        assert read_frame_blocking(stalled)["ok"] is True


# --- one daemon per state dir and per socket ----------------------------------------------------


def test_a_second_daemon_on_the_same_state_dir_exits_1(make_daemon: DaemonFactory) -> None:
    first = held_daemon(make_daemon, "first")
    second = make_daemon("second", settings={"daemon": {"state_dir": str(first.state_dir)}})
    second.start(wait=False)
    assert exit_code(second) == 1
    assert f"already using state dir {first.state_dir}" in second.logs()
    assert str(first.proc.pid) in second.logs()  # names the holder
    assert first.call("health")["ok"] is True


def test_a_stale_socket_file_is_replaced(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(daemon.socket))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    assert daemon.socket.exists()
    daemon.start()
    assert daemon.call("health")["ok"] is True


def test_a_live_socket_of_another_daemon_is_not_taken(make_daemon: DaemonFactory) -> None:
    first = held_daemon(make_daemon, "first")
    second = make_daemon("second", settings={"daemon": {"socket": str(first.socket)}})
    second.start(wait=False)
    assert exit_code(second) == 1
    assert f"another daemon answers on {first.socket}" in second.logs()
    assert first.call("health")["ok"] is True  # its socket is untouched


# --- dlqctl --json -------------------------------------------------------------------------------


def test_dlqctl_json_documents_and_exit_codes(make_daemon: DaemonFactory, tmp_path: Path) -> None:
    daemon = held_daemon(make_daemon)
    code, out, _ = dlqctl(daemon.socket, "--json", "add", "album", "4242", "--priority", "high")
    assert code == 0
    added = json.loads(out)
    assert added == {"id": added["id"], "created": True}
    code, out, _ = dlqctl(daemon.socket, "--json", "add", "album", "4242", "--priority", "high")
    assert (code, json.loads(out)) == (0, {"id": added["id"], "created": False})
    dlqctl(daemon.socket, "--json", "add", "track", "7", "--quality", "HI_RES_LOSSLESS")

    code, out, _ = dlqctl(daemon.socket, "--json", "ls")
    jobs = json.loads(out)
    assert code == 0
    assert [(j["type"], j["target_id"]) for j in jobs] == [("album", 4242), ("track", 7)]
    assert all(set(job) == JOB_KEYS for job in jobs)
    track_job = jobs[1]
    assert (track_job["quality"], track_job["status"], track_job["priority"]) == (
        "HI_RES_LOSSLESS",
        "queued",
        "normal",
    )
    assert track_job["created_at"].endswith("Z")
    assert set(track_job["tracks"][0]) == TRACK_KEYS

    code, out, _ = dlqctl(daemon.socket, "--json", "ls", "--status", "cancelled")
    assert (code, json.loads(out)) == (0, [])

    code, out, _ = dlqctl(daemon.socket, "--json", "show", added["id"])
    shown = json.loads(out)
    assert code == 0
    assert set(shown) == JOB_KEYS
    assert (shown["id"], shown["priority"], shown["tracks"]) == (added["id"], "high", [])

    code, out, _ = dlqctl(daemon.socket, "--json", "stats")
    stats = json.loads(out)
    assert code == 0
    assert set(stats) >= {"queue", "worker", "metrics", "journal", "speed_bps"}
    assert set(stats["queue"]) == {
        "queued",
        "paused",
        "processing",
        "completed",
        "partial",
        "failed",
        "cancelled",
        "total",
    }
    assert (stats["queue"]["queued"], stats["queue"]["total"]) == (2, 2)
    assert set(stats["worker"]) >= {"running", "active_tracks", "max_concurrent"}
    assert stats["worker"]["running"] is False

    code, out, err = dlqctl(daemon.socket, "--json", "show", "999")
    assert (code, json.loads(out)["error"]["code"]) == (1, "NOT_FOUND")
    assert err.startswith("error: NOT_FOUND: ")

    code, _, err = dlqctl(daemon.socket, "add", "track", "not-a-number")
    assert code == 2
    code, _, _ = dlqctl(daemon.socket, "add", "track", "5", "--quality", "lossy")
    assert code == 2
    code, _, _ = dlqctl(daemon.socket, "frobnicate")
    assert code == 2

    code, out, err = dlqctl(tmp_path / "none.sock", "--json", "stats")
    assert (code, json.loads(out)["error"]["code"]) == (3, "UNREACHABLE")
    assert "cannot reach dlqd" in err
    assert [job["id"] for job in daemon.jobs()] == [added["id"], jobs[1]["id"]]


# --- refusals ---------------------------------------------------------------------------------


def test_queue_full_counts_active_jobs_only(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon, limits={"max_queue": 3})
    ids = [daemon.submit("track", n) for n in (1, 2, 3)]
    refusal = daemon.refused("submit", type="track", target_id=4, quality="LOSSLESS")
    assert refusal.code == "QUEUE_FULL"
    assert "max_queue" in refusal.message
    # an identical job is still answered with its id: nothing new is queued
    same = daemon.call("submit", type="track", target_id=1, quality="LOSSLESS")
    assert same == {"id": ids[0], "created": False}
    daemon.call("cancel", id=ids[0])  # finished jobs do not count
    assert daemon.call("submit", type="track", target_id=4, quality="LOSSLESS")["created"]
    assert daemon.refused("retry", id=ids[0]).code == "QUEUE_FULL"
    assert len(daemon.jobs()) == 4


def test_submits_over_the_rate_limit_are_refused(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon, limits={"submit_rate_per_min": 3})
    for n in (1, 2, 3):
        daemon.submit("track", n)
    refusal = daemon.refused("submit", type="track", target_id=4, quality="LOSSLESS")
    assert refusal.code == "RATE_LIMITED"
    assert daemon.call("stats")["queue"]["total"] == 3  # other commands are not limited
    assert len(daemon.jobs()) == 3


def test_an_identical_active_job_is_returned_instead_of_a_duplicate(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon)
    first = daemon.call("submit", type="album", target_id=9, quality="LOSSLESS")
    assert first["created"] is True
    again = daemon.call("submit", type="album", target_id=9, quality="LOSSLESS", priority="high")
    assert again == {"id": first["id"], "created": False}
    other_quality = daemon.call("submit", type="album", target_id=9, quality="HIGH")
    other_type = daemon.call("submit", type="track", target_id=9, quality="LOSSLESS")
    assert other_quality["created"] and other_type["created"]
    daemon.call("cancel", id=first["id"])
    after_cancel = daemon.call("submit", type="album", target_id=9, quality="LOSSLESS")
    assert after_cancel["created"] is True
    assert after_cancel["id"] != first["id"]
    # the old cancelled twin cannot be retried while the new one is active
    assert daemon.refused("retry", id=first["id"]).code == "INVALID_STATE"
    assert len(daemon.jobs()) == 4


def test_commands_refuse_jobs_in_the_wrong_state(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    queued = daemon.submit("track", 1)
    cancelled = daemon.submit("track", 2)
    daemon.call("cancel", id=cancelled)

    for cmd in ("remove", "retry"):
        refusal = daemon.refused(cmd, id=queued)
        assert refusal.code == "INVALID_STATE", cmd
        assert "queued" in refusal.message
    for cmd in ("cancel", "pause", "resume"):
        refusal = daemon.refused(cmd, id=cancelled)
        assert refusal.code == "INVALID_STATE", cmd
        assert "cancelled" in refusal.message
    for cmd in ("get", "cancel", "remove", "retry", "pause", "resume"):
        assert daemon.refused(cmd, id="404").code == "NOT_FOUND", cmd

    # the accepted paths, and their journaled effects survive a crash
    daemon.call("pause", id=queued)
    assert daemon.job(queued)["status"] == "paused"
    daemon.call("pause", id=queued)  # already paused: fine, nothing changes
    assert daemon.call("retry", id=cancelled)["job"]["status"] == "queued"
    daemon.kill()
    daemon.start()
    assert daemon.job(queued)["status"] == "paused"
    assert daemon.job(cancelled)["status"] == "queued"
    daemon.call("resume", id=queued)
    assert daemon.job(queued)["status"] == "queued"
    daemon.call("cancel", id=queued)
    assert daemon.call("remove", id=queued) == {"removed": queued}
    assert daemon.refused("get", id=queued).code == "NOT_FOUND"


def call_as_nobody(socket_path: Path) -> dict[str, Any]:
    """One `stats` call from a forked child running as uid/gid 65534."""

    def call_stats() -> dict[str, Any]:
        try:
            with Client(str(socket_path), timeout_s=10) as client:
                return {"ok": True, "result": client.call("stats")}
        except Refused as exc:
            return {"ok": False, "code": exc.code, "message": exc.message}
        except NotPermitted as exc:  # dlqd's PERMISSION_DENIED, as the client reports it
            return {"ok": False, "code": "PERMISSION_DENIED", "message": str(exc)}

    outcome = as_nobody(call_stats)
    assert "child_error" not in outcome, outcome
    return outcome


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_peers_outside_the_allowed_uids_and_gids_are_refused(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(settings={"daemon": {"socket_mode": "0666"}})
    daemon.socket_dir.chmod(0o755)  # let uid 65534 reach the socket file itself
    daemon.start()
    denied = call_as_nobody(daemon.socket)
    assert denied["ok"] is False
    assert denied["code"] == "PERMISSION_DENIED"
    assert "uid 65534" in denied["message"]
    daemon.stop()

    daemon.settings["daemon"]["allowed_uids"] = [65534]
    daemon.start()
    assert call_as_nobody(daemon.socket)["ok"] is True
    daemon.stop()

    daemon.settings["daemon"]["allowed_uids"] = []
    daemon.settings["daemon"]["allowed_gids"] = [65534]
    daemon.start()
    assert call_as_nobody(daemon.socket)["ok"] is True


# --- the journal cannot be written ------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 256 KiB tmpfs for a state dir that can really run out of space."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_up(directory: Path) -> Path:
    """Write a file until the filesystem has not one byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 64, 8, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def test_a_journal_write_failure_is_journal_unavailable_and_changes_nothing(
    make_daemon: DaemonFactory, small_tmpfs: Path
) -> None:
    daemon = held_daemon(make_daemon, daemon={"state_dir": str(small_tmpfs / "state")})
    kept = daemon.submit("track", 1)
    filler = fill_up(small_tmpfs)

    # The segment's last page may still have room: submit until the disk says no.
    refusal = None
    for target in range(2, 200):
        try:
            daemon.call("submit", type="track", target_id=target, quality="LOSSLESS")
        except Refused as exc:
            refusal = exc
            break
    assert refusal is not None, "the full tmpfs never refused a write"
    assert refusal.code == "JOURNAL_UNAVAILABLE"
    assert "nothing was changed" in refusal.message
    before = daemon.jobs()
    assert target not in [job["target_id"] for job in before]  # rolled back
    assert daemon.call("stats")["journal"]["writable"] is False
    assert daemon.call("health")["ok"] is False
    again = daemon.refused("submit", type="track", target_id=target, quality="LOSSLESS")
    assert again.code == "JOURNAL_UNAVAILABLE"
    assert daemon.jobs() == before
    assert daemon.job(kept)["status"] == "queued"

    filler.unlink()
    after = daemon.call("submit", type="track", target_id=target, quality="LOSSLESS")
    assert after["created"] is True
    assert daemon.call("stats")["journal"]["writable"] is True
    expected = daemon.jobs()
    daemon.kill()
    daemon.start()
    assert daemon.jobs() == expected
