"""The queue state machine: `apply` per event, restart recovery, job outcome, snapshot form.

Pure tests, no files: `apply` is the single function used both live and on
replay, so what holds here holds after a crash too.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlqd.model import PRIORITIES, QUALITIES, JobStatus, TrackStatus
from dlqd.state import (
    QueueState,
    ReplayError,
    apply,
    apply_all,
    artist_outcome,
    awaited_children,
    from_snapshot,
    job_outcome,
    recover_interrupted,
    to_snapshot,
)

AT = 1_700_000_000.0


def submit(job_id: str, type_: str = "album", target_id: int = 7, **changes: Any) -> dict:
    event = {
        "e": "submit",
        "id": job_id,
        "type": type_,
        "target_id": target_id,
        "quality": "LOSSLESS",
        "priority": "normal",
        "at": AT,
    }
    return {**event, **changes}


def resolve(job_id: str, track_ids: list[int], durations: list[int] | None = None) -> dict:
    """A resolve record; with `durations`, the rows carry them (issue 10), else the old 4 fields."""
    tracks: list[list[Any]] = [[t, f"Title {t}", 1, n] for n, t in enumerate(track_ids, start=1)]
    if durations is not None:
        tracks = [[*row, duration] for row, duration in zip(tracks, durations, strict=True)]
    return {"e": "resolve", "id": job_id, "title": "Album", "artist": "Artist", "tracks": tracks}


def done(job_id: str, track_id: int, size: int = 100, **delivered: Any) -> dict:
    """A track_done record; `delivered` adds quality, bit_depth, sample_rate (issue 10)."""
    return {
        "e": "track_done",
        "id": job_id,
        "track_id": track_id,
        "path": f"A/B/{track_id:02d}.flac",
        "outcome": "written",
        "bytes": size,
        "attempts": 1,
        **delivered,
    }


def failed(job_id: str, track_id: int, code: str = "NETWORK_ERROR") -> dict:
    error = {"code": code, "message": "boom"}
    return {"e": "track_failed", "id": job_id, "track_id": track_id, "error": error, "attempts": 3}


def replay(*events: dict) -> QueueState:
    return apply_all(QueueState(), events)


def album_with_tracks(job_id: str = "1", track_ids: tuple[int, ...] = (11, 12, 13)) -> QueueState:
    return replay(
        submit(job_id),
        {"e": "start", "id": job_id, "at": AT + 1},
        resolve(job_id, list(track_ids)),
    )


# --- apply ---------------------------------------------------------------------------


def test_submit_of_a_track_creates_a_queued_job_with_that_one_track() -> None:
    state = replay(submit("1", "track", 42))
    job = state.jobs["1"]
    assert job.status == JobStatus.QUEUED
    assert [t.track_id for t in job.tracks] == [42]
    assert job.tracks[0].status == TrackStatus.PENDING
    assert (job.seq, state.next_seq) == (1, 2)
    assert job.created_at == AT


def test_submit_of_an_album_has_no_tracks_until_resolved() -> None:
    state = replay(submit("1", "album", 7))
    assert state.jobs["1"].tracks == []
    apply(state, resolve("1", [5, 6]))
    job = state.jobs["1"]
    assert [(t.track_id, t.title, t.number) for t in job.tracks] == [
        (5, "Title 5", 1),
        (6, "Title 6", 2),
    ]
    assert (job.title, job.artist) == ("Album", "Artist")


def test_resolve_keeps_tracks_that_already_finished() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11))
    apply(state, resolve("1", [11, 12, 13]))
    track = state.jobs["1"].tracks[0]
    assert (track.status, track.path) == (TrackStatus.COMPLETED, "A/B/11.flac")


def test_resolve_records_durations_and_rows_from_before_them_replay_without() -> None:
    state = replay(submit("1"), resolve("1", [5, 6], durations=[241, 187]), submit("2"))
    assert [t.duration for t in state.jobs["1"].tracks] == [241, 187]
    apply(state, resolve("2", [7]))  # a four-field row, as journaled before issue 10
    assert [(t.track_id, t.duration) for t in state.jobs["2"].tracks] == [(7, None)]


def test_track_done_records_the_delivered_quality_and_old_records_replay_without() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11, quality="HI_RES_LOSSLESS", bit_depth=24, sample_rate=96000))
    apply(state, done("1", 12))  # as journaled before issue 10
    first, second = state.jobs["1"].tracks[:2]
    assert (first.quality, first.bit_depth, first.sample_rate) == ("HI_RES_LOSSLESS", 24, 96000)
    assert (second.quality, second.bit_depth, second.sample_rate) == (None, None, None)
    wire = first.to_wire()
    assert (wire["quality"], wire["bit_depth"], wire["sample_rate"]) == (
        "HI_RES_LOSSLESS",
        24,
        96000,
    )


def test_jobs_rank_in_submission_order_and_move_and_priority_change_the_run_order() -> None:
    state = replay(submit("1", target_id=1), submit("2", target_id=2), submit("3", target_id=3))
    assert [job.rank for job in state.jobs.values()] == [1, 2, 3]
    assert [job.id for job in state.run_order()] == ["1", "2", "3"]
    apply(state, {"e": "move", "id": "3", "rank": state.rank_low - 1})  # top
    assert [job.id for job in state.run_order()] == ["3", "1", "2"]
    apply(state, {"e": "priority", "id": "2", "priority": "high"})
    assert [job.id for job in state.run_order()] == ["2", "3", "1"]
    apply(state, {"e": "move", "id": "1", "rank": state.rank_high + 1})  # bottom: already
    apply(state, submit("4", target_id=4))
    assert state.jobs["4"].rank > state.jobs["1"].rank  # a new job ranks after every move
    assert [job.id for job in state.run_order()] == ["2", "3", "1", "4"]
    apply(state, {"e": "cancel", "id": "3", "at": AT})
    assert [job.id for job in state.run_order()] == ["2", "1", "4"]  # active jobs only


def test_dedupe_index_holds_active_jobs_only() -> None:
    state = replay(submit("1", "track", 42), submit("2", "track", 42, quality="HIGH"))
    assert state.active_job_for(("track", 42, "LOSSLESS")).id == "1"
    assert state.active_job_for(("track", 42, "HIGH")).id == "2"
    assert state.active_count == 2
    apply(state, {"e": "cancel", "id": "1", "at": AT})
    assert state.active_job_for(("track", 42, "LOSSLESS")) is None
    assert state.active_count == 1
    apply(state, {"e": "retry", "id": "1", "at": AT})
    assert state.active_job_for(("track", 42, "LOSSLESS")).id == "1"


def test_a_finished_job_leaves_the_index_but_a_newer_identical_job_keeps_its_entry() -> None:
    state = replay(submit("1", "track", 42), {"e": "cancel", "id": "1", "at": AT})
    apply(state, submit("2", "track", 42))
    apply(state, {"e": "remove", "id": "1"})  # removing the old job must not unindex the new
    assert state.active_job_for(("track", 42, "LOSSLESS")).id == "2"
    assert list(state.jobs) == ["2"]


def test_tracks_done_and_failed_then_finish() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11, size=1234))
    apply(state, failed("1", 12))
    apply(state, done("1", 13))
    job = state.jobs["1"]
    assert job.started_at == AT + 1
    first = job.tracks[0]
    assert (first.status, first.bytes_done, first.bytes_total) == (
        TrackStatus.COMPLETED,
        1234,
        1234,
    )
    assert job.tracks[1].status == TrackStatus.FAILED
    status, error = job_outcome(job)
    assert status == JobStatus.PARTIAL
    apply(state, {"e": "finish", "id": "1", "status": str(status), "error": error, "at": AT + 9})
    assert (job.status, job.finished_at, job.error["code"]) == ("partial", AT + 9, "NETWORK_ERROR")
    assert state.active_count == 0


def test_cancel_marks_unfinished_tracks_cancelled_and_keeps_finished_ones() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11))
    apply(state, {"e": "cancel", "id": "1", "at": AT + 5})
    job = state.jobs["1"]
    assert job.status == JobStatus.CANCELLED
    assert job.error["code"] == "CANCELLED"
    assert [t.status for t in job.tracks] == ["completed", "cancelled", "cancelled"]


def test_retry_requeues_only_unfinished_tracks() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11))
    apply(state, failed("1", 12))
    apply(state, {"e": "cancel", "id": "1", "at": AT})
    apply(state, {"e": "retry", "id": "1", "at": AT})
    job = state.jobs["1"]
    assert (job.status, job.error, job.finished_at) == (JobStatus.QUEUED, None, None)
    assert [t.status for t in job.tracks] == ["completed", "pending", "pending"]
    assert job.tracks[1].error is None


def test_pause_resets_unfinished_tracks_and_resume_queues_again() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11))
    job = state.jobs["1"]
    job.tracks[1].status = TrackStatus.DOWNLOADING  # live progress, never journaled
    job.tracks[1].bytes_done = 500
    apply(state, {"e": "pause", "id": "1"})
    assert job.status == JobStatus.PAUSED
    assert [t.status for t in job.tracks] == ["completed", "pending", "pending"]
    assert job.tracks[1].bytes_done == 0
    assert state.active_count == 1  # paused jobs are active
    apply(state, {"e": "resume", "id": "1"})
    assert job.status == JobStatus.QUEUED


def test_requeue_hands_a_processing_job_back() -> None:
    state = album_with_tracks()
    apply(state, {"e": "requeue", "id": "1"})
    assert state.jobs["1"].status == JobStatus.QUEUED


def test_hold_and_release_toggle_the_global_hold() -> None:
    state = replay({"e": "hold"})
    assert state.held
    apply(state, {"e": "release"})
    assert not state.held


def test_expire_removes_finished_jobs_and_refuses_active_ones() -> None:
    state = replay(submit("1", "track", 1), submit("2", "track", 2))
    apply(state, {"e": "cancel", "id": "1", "at": AT})
    apply(state, {"e": "expire", "ids": ["1", "gone-already"]})
    assert list(state.jobs) == ["2"]
    with pytest.raises(ReplayError, match="active job 2"):
        apply(state, {"e": "expire", "ids": ["2"]})


@pytest.mark.parametrize(
    "event",
    [
        {"e": "no-such-event"},
        {"e": "start", "id": "404", "at": AT},
        {"e": "remove", "id": "404"},
        done("1", 999),  # job exists, track does not
    ],
)
def test_events_that_do_not_fit_the_state_raise_replay_error(event: dict) -> None:
    state = replay(submit("1", "track", 5))
    with pytest.raises(ReplayError):
        apply(state, event)


# --- restart recovery ---------------------------------------------------------------


def test_recover_interrupted_requeues_processing_jobs_and_keeps_finished_tracks() -> None:
    state = album_with_tracks()
    apply(state, submit("2", "track", 99))
    apply(state, done("1", 11))
    job = state.jobs["1"]
    job.tracks[1].status = TrackStatus.DOWNLOADING
    job.tracks[1].bytes_done = 77
    assert recover_interrupted(state) == ["1"]
    assert job.status == JobStatus.QUEUED
    assert [t.status for t in job.tracks] == ["completed", "pending", "pending"]
    assert [t.bytes_done for t in job.tracks] == [100, 0, 0]
    assert state.jobs["2"].status == JobStatus.QUEUED


# --- job outcome ----------------------------------------------------------------------


def test_job_outcome_completed_partial_failed() -> None:
    state = album_with_tracks(track_ids=(1, 2))
    job = state.jobs["1"]
    apply(state, done("1", 1))
    apply(state, done("1", 2))
    assert job_outcome(job) == (JobStatus.COMPLETED, None)

    state = album_with_tracks(track_ids=(1, 2))
    job = state.jobs["1"]
    apply(state, failed("1", 1, "UPSTREAM_NOT_FOUND"))
    apply(state, failed("1", 2, "TIMEOUT"))
    status, error = job_outcome(job)
    assert (status, error["code"]) == (JobStatus.FAILED, "UPSTREAM_NOT_FOUND")  # the first one

    state = album_with_tracks(track_ids=(1, 2))
    job = state.jobs["1"]
    apply(state, done("1", 1))
    apply(state, failed("1", 2, "TIMEOUT"))
    status, error = job_outcome(job)
    assert (status, error["code"]) == (JobStatus.PARTIAL, "TIMEOUT")


def test_job_outcome_of_an_album_without_tracks_is_failed() -> None:
    assert job_outcome(replay(submit("1")).jobs["1"])[0] == JobStatus.FAILED


# --- snapshot form ----------------------------------------------------------------------


def describe(state: QueueState) -> dict[str, Any]:
    """Everything a restart must reproduce, in a comparable form (order included)."""
    return {
        "next_seq": state.next_seq,
        "held": state.held,
        "ranks": (state.rank_low, state.rank_high),
        "active": dict(sorted(state.active_by_key.items())),
        "jobs": [(job.seq, job.rank, job.to_wire()) for job in state.jobs.values()],
        "run order": [job.id for job in state.run_order()],
    }


def through_msgpack(state: QueueState) -> QueueState:
    data = msgpack.packb(to_snapshot(state), use_bin_type=True)
    return from_snapshot(msgpack.unpackb(data, raw=False, strict_map_key=False))


def test_snapshot_round_trip_keeps_every_job_field() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11))
    apply(state, failed("1", 12))
    apply(state, submit("2", "track", 8, priority="high", quality="HI_RES_LOSSLESS"))
    apply(state, {"e": "pause", "id": "2"})
    apply(state, submit("3", "track", 9))
    apply(state, {"e": "cancel", "id": "3", "at": AT + 3})
    apply(state, {"e": "hold"})
    restored = through_msgpack(state)
    assert describe(restored) == describe(state)
    assert restored.jobs["1"].tracks[0].bytes_done == 100  # finished bytes come back


def test_an_artists_album_job_takes_the_rank_its_submit_gives_and_no_new_one() -> None:
    state = replay(submit("1", "artist", 5), submit("2", "album", 7))
    assert (state.jobs["1"].rank, state.jobs["2"].rank, state.rank_high) == (1, 2, 2)
    apply(state, {**submit("3", "album", 8), "parent": "1", "rank": 1.5})
    assert state.jobs["3"].rank == 1.5 and state.rank_high == 2
    assert [job.id for job in state.run_order()] == ["1", "3", "2"]
    assert [job.id for job in through_msgpack(state).run_order()] == ["1", "3", "2"]


def test_snapshot_round_trip_keeps_a_string_target_an_artist_include_and_a_parent() -> None:
    playlist_uuid = "0d6d6c02-5b2e-4b8c-9f2e-6d8f4b1a2c3e"
    state = replay(
        {**submit("1", "artist", 5), "include": ["album", "single"]},
        {**submit("2", "album", 7), "parent": "1"},
        submit("3", "track", 9),
    )
    apply(state, {**submit("4", "track", 1), "type": "playlist", "target_id": playlist_uuid})
    restored = through_msgpack(state)
    assert describe(restored) == describe(state)
    jobs = restored.jobs
    assert (jobs["1"].include, jobs["1"].parent) == (("album", "single"), None)
    assert (jobs["2"].include, jobs["2"].parent) == (None, "1")
    assert jobs["4"].target_id == playlist_uuid
    assert restored.active_job_for(("playlist", playlist_uuid, "LOSSLESS")) is jobs["4"]


def test_finish_records_a_playlists_m3u8_path_through_replay_and_snapshot() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11))
    finish = {"e": "finish", "id": "1", "status": "partial", "error": None, "at": AT + 5}
    apply(state, {**finish, "playlist_path": "Playlists/Road.m3u8"})
    assert state.jobs["1"].playlist_path == "Playlists/Road.m3u8"
    assert state.jobs["1"].to_wire()["playlist_path"] == "Playlists/Road.m3u8"
    assert through_msgpack(state).jobs["1"].playlist_path == "Playlists/Road.m3u8"

    apply(state, {"e": "retry", "id": "1", "at": AT + 6})
    assert state.jobs["1"].playlist_path == "Playlists/Road.m3u8"  # until its next finish
    apply(state, {**finish, "at": AT + 7})  # a finish that wrote no file (or an older record)
    assert state.jobs["1"].playlist_path is None

    old = to_snapshot(state)  # a snapshot from before the field: job rows one shorter
    for row in old["jobs"]:
        row.pop()
    assert from_snapshot(old).jobs["1"].playlist_path is None


def expanded_artist() -> QueueState:
    """Artist job 2 expanded into album 3 (queued by it) and album 1 (active, by reference)."""
    return replay(
        submit("1", "album", 100),
        {**submit("2", "artist", 10), "include": ["album", "ep"]},
        {**submit("3", "album", 600), "parent": "2"},
        {"e": "expand", "id": "2", "name": "The Examples", "children": ["3", "1"], "at": AT + 2},
    )


def test_expand_makes_an_artist_job_processing_with_its_children_and_name() -> None:
    state = expanded_artist()
    artist = state.jobs["2"]
    assert artist.status == JobStatus.PROCESSING and artist.started_at == AT + 2
    assert artist.children == ["3", "1"]
    assert (artist.title, artist.artist, artist.tracks) == ("The Examples", "The Examples", [])
    assert (state.jobs["3"].parent, state.jobs["1"].parent) == ("2", None)
    assert awaited_children(state) == {"1", "3"}


def test_an_expanded_artist_job_stays_processing_through_restart_requeue_and_resume() -> None:
    state = expanded_artist()
    assert recover_interrupted(state) == []
    assert state.jobs["2"].status == JobStatus.PROCESSING
    for event in (
        {"e": "requeue", "id": "2"},
        {"e": "pause", "id": "2"},
        {"e": "resume", "id": "2"},
    ):
        apply(state, event)
    assert state.jobs["2"].status == JobStatus.PROCESSING


def test_expand_naming_an_unknown_child_is_a_replay_error() -> None:
    state = replay(submit("1", "artist", 10))
    with pytest.raises(ReplayError):
        apply(state, {"e": "expand", "id": "1", "name": "X", "children": ["9"], "at": AT})


def test_retry_of_an_artist_job_can_name_its_children_anew_and_keeps_it_processing() -> None:
    state = expanded_artist()
    for job_id in ("3", "1"):
        apply(state, {"e": "cancel", "id": job_id, "at": AT + 3})
    apply(state, {"e": "finish", "id": "2", "status": "failed", "error": None, "at": AT + 4})
    apply(state, {"e": "retry", "id": "3", "at": AT + 5})
    apply(state, {"e": "retry", "id": "2", "at": AT + 5, "children": ["3"]})
    artist = state.jobs["2"]
    assert (artist.status, artist.children, artist.finished_at) == (
        JobStatus.PROCESSING,
        ["3"],
        None,
    )


def test_snapshot_round_trip_keeps_an_artist_jobs_children() -> None:
    state = expanded_artist()
    restored = through_msgpack(state)
    assert describe(restored) == describe(state)
    assert restored.jobs["2"].children == ["3", "1"]


def test_artist_outcome_sums_its_children() -> None:
    state = expanded_artist()
    three, one = state.jobs["3"], state.jobs["1"]
    error = {"code": "UPSTREAM_NOT_FOUND", "message": "gone"}
    three.status = one.status = JobStatus.COMPLETED
    assert artist_outcome([three, one]) == (JobStatus.COMPLETED, None)
    one.status, one.error = JobStatus.FAILED, error
    status, first = artist_outcome([three, one])
    assert status == JobStatus.PARTIAL and first is not None
    assert first["code"] == "UPSTREAM_NOT_FOUND" and "album job 1" in first["message"]
    three.status = JobStatus.PARTIAL  # some of its tracks: the artist delivered something
    assert artist_outcome([three, one])[0] == JobStatus.PARTIAL
    three.status = JobStatus.CANCELLED
    assert artist_outcome([three, one])[0] == JobStatus.FAILED
    assert artist_outcome([None, one])[0] == JobStatus.FAILED  # a child removed meanwhile


def test_snapshot_stores_a_downloading_track_as_pending_without_its_bytes() -> None:
    state = album_with_tracks()
    track = state.jobs["1"].tracks[0]
    track.status, track.bytes_done, track.bytes_total = TrackStatus.DOWNLOADING, 10, 100
    restored = through_msgpack(state).jobs["1"].tracks[0]
    assert (restored.status, restored.bytes_done, restored.bytes_total) == ("pending", 0, 0)


# --- property: snapshot + rest of the journal == whole journal ----------------------------


def valid_events(state: QueueState, data: st.DataObject, steps: int) -> list[dict]:
    """Draw `steps` events that the daemon could have journaled, applying each as we go."""
    events = []
    clock = AT
    for _ in range(steps):
        clock += 1
        jobs = list(state.jobs.values())
        by_status: dict[str, list] = {}
        for job in jobs:
            by_status.setdefault(str(job.status), []).append(job)
        finished = [j for j in jobs if j.status not in ("queued", "paused", "processing")]
        options = ["submit", "hold", "release"]
        if by_status.get("queued"):
            options += ["start", "pause", "cancel"]
        if by_status.get("paused"):
            options += ["resume", "cancel"]
        processing = by_status.get("processing", [])
        if processing:
            options += ["resolve", "track", "finish", "requeue", "pause", "cancel"]
        if finished:
            options += ["remove", "expire", "retry"]
        active = list(state.active_jobs())
        if active:
            options += ["move", "priority"]
        kind = data.draw(st.sampled_from(options))
        event: dict[str, Any]
        if kind == "submit":
            key = (
                data.draw(st.sampled_from(["track", "album"])),
                data.draw(st.integers(1, 6)),
                data.draw(st.sampled_from(QUALITIES[:2])),
            )
            twin = state.active_job_for(key)
            if twin is not None:  # what the daemon does: dedupe, no event
                continue
            event = submit(str(state.next_seq), *key[:2], quality=key[2], at=clock)
            event["priority"] = data.draw(st.sampled_from(PRIORITIES))
        elif kind in ("hold", "release"):
            event = {"e": kind}
        elif kind in ("start", "pause", "cancel", "resume", "requeue"):
            wanted = {
                "start": ["queued"],
                "pause": ["queued", "processing"],
                "cancel": ["queued", "paused", "processing"],
                "resume": ["paused"],
                "requeue": ["processing"],
            }[kind]
            pool = [j for s in wanted for j in by_status.get(s, [])]
            event = {"e": kind, "id": data.draw(st.sampled_from(pool)).id, "at": clock}
        elif kind == "resolve":
            job = data.draw(st.sampled_from(processing))
            count = data.draw(st.integers(0, 3))
            durations = data.draw(
                st.none() | st.lists(st.integers(1, 600), min_size=count, max_size=count)
            )
            event = resolve(job.id, [job.target_id * 10 + n for n in range(count)], durations)
        elif kind == "move":
            job = data.draw(st.sampled_from(active))
            rank = data.draw(st.sampled_from([state.rank_low - 1, state.rank_high + 1]))
            event = {"e": "move", "id": job.id, "rank": rank}
        elif kind == "priority":
            job = data.draw(st.sampled_from(active))
            event = {
                "e": "priority",
                "id": job.id,
                "priority": data.draw(st.sampled_from(PRIORITIES)),
            }
        elif kind == "track":
            job = data.draw(st.sampled_from(processing))
            pending = [t for t in job.tracks if t.status == "pending"]
            if not pending:
                continue
            track = data.draw(st.sampled_from(pending))
            if data.draw(st.booleans()):
                size = data.draw(st.integers(0, 10**9))
                delivered = data.draw(
                    st.sampled_from(
                        [{}, {"quality": "LOSSLESS", "bit_depth": 16, "sample_rate": 44100}]
                    )
                )
                event = done(job.id, track.track_id, size=size, **delivered)
            else:
                event = failed(job.id, track.track_id)
        elif kind == "finish":
            job = data.draw(st.sampled_from(processing))
            status, error = job_outcome(job)
            event = {"e": "finish", "id": job.id, "status": str(status), "error": error}
            event["at"] = clock
        elif kind == "remove":
            event = {"e": "remove", "id": data.draw(st.sampled_from(finished)).id}
        elif kind == "expire":
            ids = [j.id for j in finished]
            event = {"e": "expire", "ids": data.draw(st.lists(st.sampled_from(ids), min_size=1))}
            event["ids"] = list(dict.fromkeys(event["ids"]))
        else:  # retry
            job = data.draw(st.sampled_from(finished))
            if state.active_job_for(job.dedupe_key) is not None:
                continue
            event = {"e": "retry", "id": job.id, "at": clock}
        apply(state, event)
        events.append(event)
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), steps=st.integers(0, 60))
def test_snapshot_then_remaining_events_equals_replaying_every_event(
    data: st.DataObject, steps: int
) -> None:
    live = QueueState()
    events = valid_events(live, data, steps)
    cut = data.draw(st.integers(0, len(events)), label="snapshot after event")

    replayed = apply_all(QueueState(), events)
    compacted = apply_all(through_msgpack(apply_all(QueueState(), events[:cut])), events[cut:])

    assert describe(replayed) == describe(live)
    assert describe(compacted) == describe(replayed)
    # what the daemon does after either start-up
    recover_interrupted(replayed)
    recover_interrupted(compacted)
    assert describe(compacted) == describe(replayed)


def test_a_snapshot_from_before_later_passes_and_ranks_loads_with_defaults() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11, quality="LOSSLESS"))
    apply(state, submit("2", "track", 8))
    data = to_snapshot(state)
    del data["rank_low"], data["rank_high"]
    for row in data["jobs"]:  # the first snapshots: 13 job fields, tracks of ten fields
        row[:] = [*row[:13], [track_row[:10] for track_row in row[13]]]
    restored = from_snapshot(data)
    tracks = restored.jobs["1"].tracks
    assert [(t.passes, t.next_pass_at) for t in tracks] == [(0, None)] * 3
    assert [(t.duration, t.quality, t.bit_depth, t.sample_rate) for t in tracks] == [
        (None, None, None, None)
    ] * 3
    assert tracks[0].status == TrackStatus.COMPLETED
    assert tracks[0].bytes_done == 100
    assert [job.rank for job in restored.jobs.values()] == [1, 2]  # rank = seq
    assert (restored.rank_low, restored.rank_high) == (1, 2)
    apply(restored, submit("3", "track", 9))
    assert restored.jobs["3"].rank == 3  # beyond every rank the old snapshot held


def test_a_deferred_track_survives_the_snapshot_and_retry_clears_its_passes() -> None:
    state = album_with_tracks()
    apply(state, done("1", 11))
    deferral = {
        "e": "track_deferred",
        "id": "1",
        "track_id": 12,
        "error": {"code": "TIMEOUT", "message": "slow"},
        "attempts": 4,
        "passes": 1,
        "due_at": AT + 900,
    }
    apply(state, deferral)
    restored = through_msgpack(state)
    track = restored.jobs["1"].tracks[1]
    assert (track.status, track.passes, track.next_pass_at) == ("pending", 1, AT + 900)
    apply(restored, failed("1", 12))
    apply(restored, failed("1", 13))
    apply(restored, {"e": "finish", "id": "1", "status": "partial", "error": None, "at": AT})
    apply(restored, {"e": "retry", "id": "1", "at": AT})
    assert [(t.passes, t.next_pass_at) for t in restored.jobs["1"].tracks[1:]] == [(0, None)] * 2
