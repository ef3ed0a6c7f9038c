"""Batch forms (one round-trip for many jobs) and the run order (move, priority, list
order=run), proven on a real daemon over its socket, across restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlqctl.client import Refused
from dlqd.demo.catalog import SINGLE_TRACK_ID, UNKNOWN_ID, Catalog, CatalogServer
from dlqd.protocol import read_frame_blocking
from tests.conftest import DaemonFactory
from tests.support import DaemonProcess, held_daemon, raw_connection, send_request, wait_until
from tests.test_queue_process import fill_up

SLOW_BPS = 400_000


def item(target_id: int, type_: str = "track", quality: str = "LOSSLESS", **extra: Any) -> dict:
    return {"type": type_, "target_id": target_id, "quality": quality, **extra}


def outcomes(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(id, ok, status or error code) per entry: what a client prints one line for."""
    return [
        (e["id"], True, e["status"]) if e["ok"] else (e["id"], False, e["error"]["code"])
        for e in results
    ]


def run_order(daemon: DaemonProcess) -> list[str]:
    return [job["id"] for job in daemon.call("list", order="run")["jobs"]]


# --- batch submit ----------------------------------------------------------------------------


def test_a_batch_submit_answers_each_item_in_order_and_journals_them_together(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, limits={"max_queue": 4, "submit_rate_per_min": 0})
    existing = daemon.submit("track", 10)
    results = daemon.call(
        "submit",
        items=[
            item(11),
            item(12, "album", "HIGH", priority="high"),
            item(11),  # the same as the first item: one job
            item(10),  # already queued before this request
            item(13),  # the queue's fourth active job
            item(14),  # no room left
        ],
    )["results"]

    assert [(e["type"], e["target_id"], e["ok"]) for e in results] == [
        ("track", 11, True),
        ("album", 12, True),
        ("track", 11, True),
        ("track", 10, True),
        ("track", 13, True),
        ("track", 14, False),
    ]
    ids = [e.get("id") for e in results]
    assert [e.get("created") for e in results[:5]] == [True, True, False, False, True]
    assert ids[2] == ids[0] and ids[3] == existing
    assert results[5]["error"]["code"] == "QUEUE_FULL"
    assert "id" not in results[5]
    assert daemon.job(ids[1])["priority"] == "high"

    daemon.kill()  # acknowledged means durable: all of them are back after a crash
    daemon.start()
    assert {job["id"] for job in daemon.jobs()} == {existing, ids[0], ids[1], ids[4]}


def test_a_batch_submit_past_the_rate_limit_refuses_only_the_items_over_it(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, limits={"submit_rate_per_min": 3})
    results = daemon.call("submit", items=[item(n) for n in range(1, 6)])["results"]
    assert [e["ok"] for e in results] == [True, True, True, False, False]
    assert {e["error"]["code"] for e in results[3:]} == {"RATE_LIMITED"}
    assert [e["target_id"] for e in results[3:]] == [4, 5]
    assert len(daemon.jobs()) == 3
    # The bucket is empty: the next request is refused as a whole, as a one-job submit is.
    refused = daemon.refused("submit", items=[item(6)])
    assert refused.code == "RATE_LIMITED"


def test_a_batch_the_journal_cannot_hold_refuses_every_item_it_held_and_changes_nothing(
    make_daemon: DaemonFactory, small_fs: Callable[[Path, str], Path], tmp_path: Path
) -> None:
    state = small_fs(tmp_path / "tmpfs", "256k")
    daemon = held_daemon(make_daemon, daemon={"state_dir": str(state / "state")})
    kept = daemon.submit("track", 1)
    filler = fill_up(state)
    # The segment's last page may still have room: submit until the disk says no.
    for target in range(2, 400, 2):
        before = daemon.jobs()
        results = daemon.call("submit", items=[item(1), item(target), item(target + 1)])["results"]
        if not results[1]["ok"]:
            break
    else:
        raise AssertionError("the full tmpfs never refused a write")
    assert results[0] == {"type": "track", "target_id": 1, "ok": True, "id": kept, "created": False}
    for entry in results[1:]:
        assert entry["error"]["code"] == "JOURNAL_UNAVAILABLE"
        assert "id" not in entry and entry["ok"] is False
    assert daemon.jobs() == before  # neither new job is left, in memory or on disk
    filler.unlink()
    daemon.kill()
    daemon.start()
    assert daemon.jobs() == before


# --- batch cancel, retry, remove ---------------------------------------------------------------


def test_batch_cancel_retry_and_remove_by_ids_and_by_selector(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    ids = [daemon.submit("track", n) for n in range(1, 5)]

    cancelled = daemon.call("cancel", ids=[ids[0], ids[1], "99", ids[0]])["results"]
    assert outcomes(cancelled) == [
        (ids[0], True, "cancelled"),
        (ids[1], True, "cancelled"),
        ("99", False, "NOT_FOUND"),
    ]  # a repeated id is answered once
    assert {e["title"] for e in cancelled if e["ok"]} == {""}  # not resolved: the upstream is off
    assert outcomes(daemon.call("cancel", ids=[ids[0]])["results"]) == [
        (ids[0], False, "INVALID_STATE")
    ]

    twin = daemon.submit("track", 2)  # identical to the cancelled job 2, and active
    retried = daemon.call("retry", failed=True)["results"]
    assert outcomes(retried) == [(ids[0], True, "queued"), (ids[1], False, "INVALID_STATE")]
    assert twin in retried[1]["error"]["message"]
    assert daemon.job(ids[0])["status"] == "queued"

    everything = daemon.call("cancel", all=True)["results"]
    assert outcomes(everything) == [
        (job_id, True, "cancelled") for job_id in (ids[0], ids[2], ids[3], twin)
    ]
    assert daemon.call("cancel", all=True) == {"results": []}  # nothing left to cancel

    assert daemon.call("remove", finished=True, status=["completed"]) == {"results": []}
    assert outcomes(daemon.call("remove", ids=[ids[1], ids[2]])["results"]) == [
        (ids[1], True, "cancelled"),
        (ids[2], True, "cancelled"),
    ]
    removed = daemon.call("remove", finished=True)["results"]
    assert outcomes(removed) == [(j, True, "cancelled") for j in (ids[0], ids[3], twin)]

    daemon.kill()
    daemon.start()
    assert daemon.jobs() == []  # every removal was journaled


def test_a_batch_retry_warns_per_job_when_it_failed_on_the_upstreams_final_answer(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    missing = daemon.submit("track", UNKNOWN_ID)
    upstream.inject("media", "status", None, status=503, track_id=SINGLE_TRACK_ID)
    passing_fault = daemon.submit("track", SINGLE_TRACK_ID)
    for job_id in (missing, passing_fault):
        assert daemon.wait_job(job_id)["status"] == "failed"
    upstream.clear_faults()
    daemon.call("pause")

    results = daemon.call("retry", ids=[missing, passing_fault])["results"]
    assert outcomes(results) == [(missing, True, "queued"), (passing_fault, True, "queued")]
    assert "UPSTREAM_NOT_FOUND" in results[0]["warning"]
    assert "warning" not in results[1]  # a transient failure may well pass now


def test_a_batch_cancel_stops_the_running_tracks_first(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    albums = [catalog.add_album(2, 300_000) for _ in range(2)]
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 2}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    ids = [daemon.submit("album", album_id) for album_id in albums]
    wait_until(
        lambda: any(t["status"] == "downloading" for t in daemon.job(ids[0])["tracks"]),
        what="a track to download",
    )
    results = daemon.call("cancel", all=True)["results"]
    upstream.throttle_bps = None
    assert outcomes(results) == [(ids[0], True, "cancelled"), (ids[1], True, "cancelled")]
    assert results[0]["title"]  # resolved: the entry names the album
    assert daemon.call("stats")["worker"]["active_tracks"] == 0
    assert not any((daemon.library / ".dlqd-tmp").iterdir())  # in-flight temp files removed
    for job_id in ids:
        assert {t["status"] for t in daemon.job(job_id)["tracks"]} <= {"completed", "cancelled"}


# --- the run order ---------------------------------------------------------------------------


def test_move_and_priority_change_the_run_order_which_survives_restarts_and_runs(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    albums = [catalog.add_album(1, 150_000) for _ in range(5)]
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    daemon.call("pause")  # hold the queue: nothing starts while it is ordered
    ids = [daemon.submit("album", album_id) for album_id in albums]
    assert run_order(daemon) == ids

    moved = daemon.call("move", id=ids[4], to="top")["job"]
    assert moved["position"] == 1
    daemon.call("move", id=ids[0], to="bottom")
    daemon.call("move", id=ids[1], to="down")
    assert run_order(daemon) == [ids[4], ids[2], ids[1], ids[3], ids[0]]
    daemon.call("move", id=ids[3], to="up")
    assert run_order(daemon) == [ids[4], ids[2], ids[3], ids[1], ids[0]]
    raised = daemon.call("priority", id=ids[0], priority="high")["job"]
    assert (raised["priority"], raised["position"]) == ("high", 1)
    daemon.call("priority", id=ids[4], priority="low")
    expected = [ids[0], ids[2], ids[3], ids[1], ids[4]]
    assert run_order(daemon) == expected
    assert daemon.call("move", id=ids[2], to="top")["job"]["position"] == 2  # after the high job
    # Every job object says where it stands, in either order of `list`.
    assert {job["id"]: job["position"] for job in daemon.jobs()} == {
        job_id: place for place, job_id in enumerate(expected, start=1)
    }

    daemon.kill()  # replayed from the journal's move and priority records
    daemon.start()
    assert run_order(daemon) == expected
    assert daemon.stop() == 0  # a clean stop compacts: the next start reads the snapshot
    daemon.start()
    assert run_order(daemon) == expected

    # Throttled, each track runs long enough for the next jobs to be resolved meanwhile
    # (a job still being resolved would let the next one of its priority go first).
    upstream.throttle_bps = SLOW_BPS
    daemon.call("resume")
    finished = [daemon.wait_job(job_id) for job_id in ids]
    upstream.throttle_bps = None
    assert all(job["status"] == "completed" for job in finished)
    started = [job["id"] for job in sorted(finished, key=lambda job: job["started_at"])]
    assert started == expected  # one slot: the jobs ran exactly in the run order
    assert daemon.call("list", order="run") == {"jobs": []}  # finished jobs have no place


def test_move_and_priority_refuse_finished_and_unknown_jobs(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    job_id = daemon.submit("track", 1)
    assert daemon.call("move", id=job_id, to="up")["job"]["position"] == 1  # already first
    daemon.call("cancel", id=job_id)
    for cmd, args in (("move", {"to": "top"}), ("priority", {"priority": "high"})):
        refused = daemon.refused(cmd, id=job_id, **args)
        assert refused.code == "INVALID_STATE"
        assert isinstance(daemon.refused(cmd, id="404", **args), Refused)
        assert daemon.refused(cmd, id="404", **args).code == "NOT_FOUND"


def test_watchers_see_move_and_priority_events(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)
    first, second = daemon.submit("track", 1), daemon.submit("track", 2)
    watcher = raw_connection(daemon)  # reads time out: a missing event fails, never hangs
    try:
        answer = send_request(watcher, {"v": 1, "id": 1, "cmd": "watch"})
        assert answer["result"] == {"watching": True}
        daemon.call("move", id=second, to="up")
        daemon.call("priority", id=first, priority="low")
        seen = [read_frame_blocking(watcher) for _ in range(3)]
    finally:
        watcher.close()
    assert [(e["event"], e["job_id"]) for e in seen] == [
        ("move", second),
        ("move", first),
        ("priority", first),
    ]
