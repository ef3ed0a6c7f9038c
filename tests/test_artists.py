"""Artist jobs against a real daemon and the real test catalog: expansion, outcome, commands, crash.

An artist job reads the discography (`/artist/`), queues one album job per
release of the included kinds (journaled as its children), and finishes with
their outcome summed up.
"""

from __future__ import annotations

import json
from typing import Any

from dlqd.demo.catalog import (
    ARTIST_ALBUM_IDS,
    ARTIST_EP_IDS,
    ARTIST_ID,
    ARTIST_NAME,
    ARTIST_SINGLE_IDS,
    EP_ALBUM_ID,
    SECOND_ALBUM_ID,
    TWO_DISC_ALBUM_ID,
    UNKNOWN_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Scripted,
)
from tests.conftest import DaemonFactory
from tests.support import DaemonProcess, dlqctl, library_files, wait_until

SLOW_BPS = 200_000  # media bytes per second per response: children stay running for a while


def children_of(daemon: DaemonProcess, artist: dict[str, Any]) -> list[dict[str, Any]]:
    return [daemon.job(child_id) for child_id in artist["children"]]


def expanded(daemon: DaemonProcess, job_id: str) -> dict[str, Any]:
    return wait_until(
        lambda: (job := daemon.job(job_id))["children"] and job,
        timeout=30,
        what=f"artist job {job_id} to expand",
    )


def album_requests(upstream: CatalogServer) -> set[int]:
    return {r.album_id for r in upstream.requests if r.route == "album" and r.album_id}


def test_an_artist_job_queues_one_album_job_per_album_and_ep_and_completes_with_them(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = daemon.wait_job(job_id)
    assert artist["status"] == "completed", artist
    assert artist["include"] == ["album", "ep"]
    assert artist["artist"] == ARTIST_NAME
    assert artist["tracks"] == []
    children = children_of(daemon, artist)
    # One album job per album and EP, in the discography's order; the single is left out.
    assert [c["target_id"] for c in children] == [*ARTIST_ALBUM_IDS, *ARTIST_EP_IDS]
    assert all(c["type"] == "album" and c["parent"] == job_id for c in children)
    assert all(c["quality"] == "LOSSLESS" and c["priority"] == "normal" for c in children)
    assert all(c["status"] == "completed" for c in children)
    assert artist["children_status"] == {"completed": len(children)}
    assert artist["progress"] == 1.0
    assert artist["bytes_done"] == sum(c["bytes_done"] for c in children) > 0
    paths = {t["path"] for c in children for t in c["tracks"]}
    assert paths <= library_files(daemon.library)
    assert album_requests(upstream) == {*ARTIST_ALBUM_IDS, *ARTIST_EP_IDS}
    assert any(r.route == "artist" for r in upstream.requests)
    assert "3 albums: 3 completed" in daemon.logs()


def test_include_single_queues_the_single_too(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    job_id = daemon.submit("artist", ARTIST_ID, include=["album", "ep", "single"])
    artist = daemon.wait_job(job_id)
    assert artist["status"] == "completed", artist
    targets = [c["target_id"] for c in children_of(daemon, artist)]
    assert targets == [*ARTIST_ALBUM_IDS, *ARTIST_EP_IDS, *ARTIST_SINGLE_IDS]


def test_include_only_single_queues_only_the_single(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    job_id = daemon.submit("artist", ARTIST_ID, include=["single"])
    artist = daemon.wait_job(job_id)
    assert artist["status"] == "completed", artist
    assert [c["target_id"] for c in children_of(daemon, artist)] == list(ARTIST_SINGLE_IDS)
    assert album_requests(upstream) == set(ARTIST_SINGLE_IDS)


def test_a_child_failing_makes_the_artist_partial_and_retry_requeues_only_that_child(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    upstream.inject("album", "status", None, album_id=EP_ALBUM_ID, status=404)
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = daemon.wait_job(job_id)
    assert artist["status"] == "partial", artist
    assert artist["error"]["code"] == "UPSTREAM_NOT_FOUND"
    failed = next(c for c in children_of(daemon, artist) if c["target_id"] == EP_ALBUM_ID)
    assert failed["status"] == "failed"
    assert f"album job {failed['id']}" in artist["error"]["message"]
    assert artist["children_status"] == {"completed": 2, "failed": 1}

    upstream.clear_faults()
    before = len(upstream.requests)
    retried = daemon.call("retry", id=job_id)["job"]
    assert retried["status"] == "processing"  # no discography read again
    artist = daemon.wait_job(job_id)
    assert artist["status"] == "completed", artist
    assert artist["children"] == retried["children"]  # the same jobs, no new ones
    later = upstream.requests[before:]
    assert not any(r.route == "artist" for r in later)
    assert {r.album_id for r in later if r.route == "album"} == {EP_ALBUM_ID}
    assert len([j for j in daemon.jobs() if j["type"] == "album"]) == 3


def test_every_child_failing_fails_the_artist(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    upstream.inject("album", "status", None, status=404)
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = daemon.wait_job(job_id)
    assert artist["status"] == "failed", artist
    assert artist["error"]["code"] == "UPSTREAM_NOT_FOUND"


def test_an_album_already_active_is_not_queued_twice(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    album_id = daemon.submit("album", TWO_DISC_ALBUM_ID)
    daemon.call("pause", id=album_id)  # stays active while the artist job expands
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = expanded(daemon, job_id)
    assert album_id in artist["children"]
    albums = [j for j in daemon.jobs() if j["type"] == "album"]
    assert [j["target_id"] for j in albums].count(TWO_DISC_ALBUM_ID) == 1
    assert daemon.job(album_id)["parent"] is None  # taken by reference, not adopted
    daemon.wait_job(artist["children"][0])  # the others finish; the artist still waits
    assert daemon.job(job_id)["status"] == "processing"
    daemon.call("resume", id=album_id)
    assert daemon.wait_job(job_id)["status"] == "completed"


def test_cancel_of_an_artist_job_cancels_the_album_jobs_it_queued(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    album_id = daemon.submit("album", TWO_DISC_ALBUM_ID)
    daemon.call("pause", id=album_id)
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = expanded(daemon, job_id)
    result = daemon.call("cancel", id=job_id)["job"]
    assert result["status"] == "cancelled"
    for child in children_of(daemon, artist):
        expected = "paused" if child["id"] == album_id else "cancelled"
        assert child["status"] == expected, child
    assert daemon.job(job_id)["status"] == "cancelled"


def test_batch_cancel_all_cancels_an_artist_and_its_children_once(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = expanded(daemon, job_id)
    results = daemon.call("cancel", all=True)["results"]
    assert sorted(r["id"] for r in results) == sorted([job_id, *artist["children"]])  # once each
    assert all(r["ok"] for r in results), results
    assert {j["status"] for j in daemon.jobs()} == {"cancelled"}


def test_pause_and_resume_of_an_artist_job_reach_its_children(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = expanded(daemon, job_id)
    daemon.call("pause", id=job_id)
    assert daemon.job(job_id)["status"] == "paused"
    assert {c["status"] for c in children_of(daemon, artist)} == {"paused"}
    upstream.throttle_bps = None
    daemon.call("resume", id=job_id)
    assert daemon.job(job_id)["status"] == "processing"
    assert daemon.wait_job(job_id)["status"] == "completed"


def test_a_child_cannot_be_removed_while_its_artist_job_waits_on_it(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    album_id = daemon.submit("album", TWO_DISC_ALBUM_ID)
    daemon.call("pause", id=album_id)
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = expanded(daemon, job_id)
    finished = daemon.wait_job(artist["children"][0])
    refusal = daemon.refused("remove", id=finished["id"])
    assert refusal.code == "INVALID_STATE" and job_id in refusal.message
    swept = daemon.call("remove", finished=True)["results"]
    assert finished["id"] not in {r["id"] for r in swept}
    daemon.call("resume", id=album_id)
    daemon.wait_job(job_id)
    # Once it finished: the artist job goes, its children stay as their own jobs.
    daemon.call("remove", id=job_id)
    child = daemon.job(finished["id"])
    assert child["parent"] == job_id and child["status"] == "completed"


def test_kill_after_expansion_recovers_every_child_once_and_finishes_the_artist(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    upstream.throttle_bps = SLOW_BPS
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = expanded(daemon, job_id)
    wait_until(
        lambda: any(
            t["status"] == "downloading" for c in children_of(daemon, artist) for t in c["tracks"]
        ),
        timeout=30,
        what="a child's track to be downloading",
    )
    daemon.kill()
    upstream.throttle_bps = None
    daemon.start()
    finished = daemon.wait_job(job_id)
    assert finished["status"] == "completed", finished
    assert finished["children"] == artist["children"]
    albums = [j for j in daemon.jobs() if j["type"] == "album"]
    assert sorted(j["target_id"] for j in albums) == sorted([*ARTIST_ALBUM_IDS, *ARTIST_EP_IDS])
    assert all(j["status"] == "completed" and j["parent"] == job_id for j in albums)
    # The discography was read once: the restart did not expand the artist again.
    artist_reads = [r for r in upstream.requests if r.route == "artist" and "f" in r.query]
    assert len(artist_reads) == 1


def test_an_unknown_artist_fails_upstream_not_found(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    job_id = daemon.submit("artist", UNKNOWN_ID)
    job = daemon.wait_job(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "UPSTREAM_NOT_FOUND"
    assert job["children"] == []
    assert not [j for j in daemon.jobs() if j["type"] == "album"]


def test_a_discography_without_the_included_kinds_fails_naming_them(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    def only_singles(record: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        assert data is not None
        if "f" in record.query:
            items = data["albums"]["items"]
            data["albums"]["items"] = [a for a in items if a["type"] == "SINGLE"]
        return Scripted(body=json.dumps({"version": "2.0", **data}).encode())

    upstream.script("artist", only_singles)
    job_id = daemon.submit("artist", ARTIST_ID)
    job = daemon.wait_job(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "UPSTREAM_NOT_FOUND"
    assert "album, ep" in job["error"]["message"]
    assert "1 single" in job["error"]["message"]
    assert not [j for j in daemon.jobs() if j["type"] == "album"]


def test_an_artist_whose_albums_do_not_fit_the_queue_queues_none(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream, settings={"limits": {"max_queue": 3}})
    daemon.start()
    job_id = daemon.submit("artist", ARTIST_ID)  # needs 3 album jobs beside itself
    job = daemon.wait_job(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "QUEUE_FULL"
    assert not [j for j in daemon.jobs() if j["type"] == "album"]


def test_a_bad_include_is_invalid_argument_and_queues_nothing(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    refusal = daemon.refused(
        "submit", type="artist", target_id=ARTIST_ID, quality="LOSSLESS", include=["live"]
    )
    assert refusal.code == "INVALID_ARGUMENT" and "include" in refusal.message
    assert daemon.jobs() == []


def test_dlqctl_add_artist_takes_ids_share_links_and_include(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    daemon.call("pause")  # nothing runs: each add is a distinct job or the same one
    forms = [
        str(ARTIST_ID),
        f"https://tidal.com/browse/artist/{ARTIST_ID}",
        f"https://tidal.com/artist/{ARTIST_ID}/",
        f"https://listen.tidal.com/artist/{ARTIST_ID}?u",
        f"tidal.com/browse/artist/{ARTIST_ID}?play=true",
    ]
    ids = set()
    for form in forms:
        code, out, err = dlqctl(daemon.socket, "--json", "add", "artist", form)
        assert code == 0, err
        ids.add(json.loads(out)["id"])
    assert len(ids) == 1
    job = daemon.job(ids.pop())
    assert job["type"] == "artist" and job["target_id"] == ARTIST_ID
    assert job["include"] == ["album", "ep"]

    code, out, err = dlqctl(
        daemon.socket, "--json", "add", "artist", "11", "--include", "single,ALBUM"
    )
    assert code == 0, err
    assert daemon.job(json.loads(out)["id"])["include"] == ["album", "single"]

    code, out, err = dlqctl(daemon.socket, "add", "artist", "12", "--include", "album,live")
    assert code == 2
    assert "live" in err and "album, ep, single" in err
    code, out, err = dlqctl(daemon.socket, "add", "album", "12", "--include", "single")
    assert code == 2 and "--include" in err
    code, out, err = dlqctl(
        daemon.socket, "add", "artist", f"https://tidal.com/browse/album/{SECOND_ALBUM_ID}"
    )
    assert code == 2 and "album link" in err


def test_dlqctl_ls_and_show_list_an_artist_jobs_children(
    daemon: DaemonProcess, upstream: CatalogServer
) -> None:
    job_id = daemon.submit("artist", ARTIST_ID)
    artist = daemon.wait_job(job_id)
    code, out, err = dlqctl(daemon.socket, "ls")
    assert code == 0, err
    lines = out.splitlines()
    parent_line = next(i for i, line in enumerate(lines) if line.split()[0] == job_id)
    assert "3/3 albums" in lines[parent_line] and ARTIST_NAME[:8] in lines[parent_line]
    for offset, child_id in enumerate(artist["children"], start=1):  # indented under it
        child_line = lines[parent_line + offset]
        assert child_line.split()[0] == child_id and "└" in child_line, out
    code, out, err = dlqctl(daemon.socket, "show", job_id)
    assert code == 0, err
    assert "3 albums: 3 completed" in out
    (status_line,) = (line for line in out.splitlines() if line.strip().startswith("status:"))
    assert "100%  3/3 albums" in status_line and "tracks" not in status_line, status_line
    for child in children_of(daemon, artist):
        assert any(line.split()[:2] == [child["id"], "completed"] for line in out.splitlines()), out


def test_an_artists_albums_run_at_its_place_not_behind_jobs_queued_after_it(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    blocker = catalog.add_album(1, 1_000_000)
    queued_after = catalog.add_album(1, 100_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS  # the one slot stays taken while the artist expands
    first = daemon.submit("album", blocker)
    wait_until(lambda: daemon.job(first)["status"] == "processing", what="the blocker to start")
    # One request: the album is queued after the artist, before the artist can expand.
    results = daemon.call(
        "submit",
        items=[
            {"type": "artist", "target_id": ARTIST_ID, "quality": "LOSSLESS"},
            {"type": "album", "target_id": queued_after, "quality": "LOSSLESS"},
        ],
    )["results"]
    artist_id, later_id = (entry["id"] for entry in results)
    children = expanded(daemon, artist_id)["children"]

    run_order = [job["id"] for job in daemon.call("list", order="run")["jobs"]]
    places = [run_order.index(child) for child in children]
    assert places == sorted(places)  # in the discography's order
    assert max(places) < run_order.index(later_id), run_order
    upstream.throttle_bps = None
    assert daemon.wait_job(artist_id)["status"] == "completed"
    later = daemon.wait_job(later_id)
    assert later["status"] == "completed"
    # One slot, per-track picking in run order: the later album starts after every child.
    assert all(daemon.job(child)["started_at"] <= later["started_at"] for child in children)


def test_moving_an_artist_job_moves_its_albums_with_it(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    blocker = catalog.add_album(1, 1_000_000)
    other = catalog.add_album(1, 100_000)
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.throttle_bps = SLOW_BPS  # the one slot stays taken while jobs are moved
    first = daemon.submit("album", blocker)
    wait_until(lambda: daemon.job(first)["status"] == "processing", what="the blocker to start")
    other_id = daemon.submit("album", other)
    artist_id = daemon.submit("artist", ARTIST_ID)
    children = expanded(daemon, artist_id)["children"]

    def order() -> list[str]:
        return [job["id"] for job in daemon.call("list", order="run")["jobs"]]

    assert order() == [first, other_id, artist_id, *children]
    daemon.call("move", id=artist_id, to="top")
    assert order() == [artist_id, *children, first, other_id]
    daemon.call("move", id=artist_id, to="down")  # past the next job, not into its own albums
    assert order() == [first, artist_id, *children, other_id]
    daemon.call("move", id=artist_id, to="down")
    assert order() == [first, other_id, artist_id, *children]
    daemon.call("move", id=artist_id, to="up")
    assert order() == [first, artist_id, *children, other_id]
    daemon.call("move", id=children[-1], to="top")  # an album alone still moves alone
    assert order() == [children[-1], first, artist_id, *children[:-1], other_id]
    upstream.throttle_bps = None
    assert daemon.wait_job(artist_id)["status"] == "completed"
    assert daemon.wait_job(other_id)["status"] == "completed"
