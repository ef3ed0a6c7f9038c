"""The scheduler survives events the journal refuses (real store on real files, fake work).

Upstream data is validated in dlqd.source; this proves the second wall: should
anything unencodable still reach a job's events, that job fails with a code and
the scheduler, the store and the next job go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import trio

from dlqd.holds import Holds
from dlqd.journal import JournalFiles
from dlqd.meta import TrackMeta
from dlqd.model import Job
from dlqd.scheduler import ResolvedJob, Scheduler, TrackResult, TrackRun
from dlqd.store import Store
from tests.test_journal import submit_event

GOOD_TRACK = 1
SURROGATE_TITLE_TRACK = 2  # resolves to a title msgpack cannot encode
SURROGATE_PATH_TRACK = 3  # resolves fine, but "finishes" at an unencodable path


def meta(track_id: int, title: str) -> TrackMeta:
    return TrackMeta(
        track_id=track_id,
        title=title,
        version="",
        artists=("Artist",),
        album_artist="Artist",
        album="Album",
        album_id=9,
        track_number=1,
        track_total=1,
        disc_number=1,
        disc_total=1,
        date="",
    )


class PoisonedWork:
    """Resolves each track job to its own track; some carry data no record can hold."""

    async def resolve(self, job: Job) -> ResolvedJob:
        title = "\ud800" if job.target_id == SURROGATE_TITLE_TRACK else f"Track {job.target_id}"
        return ResolvedJob(title, "Artist", (meta(job.target_id, title),))

    async def run_track(self, run: TrackRun) -> TrackResult:
        path = "Artist/\ud800.flac" if run.track.track_id == SURROGATE_PATH_TRACK else "a.flac"
        return TrackResult(path=path, outcome="written", bytes=10)

    async def before_finish(self, job: Job, metas: Mapping[int, TrackMeta]) -> str | None:
        """Nothing to do once a track job's track is done."""


async def run_jobs(tmp_path: Path, target_ids: list[int]) -> Store:
    files = JournalFiles(tmp_path)
    state, _ = files.recover()
    store = Store(files, state, compact_bytes=1 << 30)
    holds = Holds(user_held=lambda: store.state.held, on_change=store.notify_changed)
    scheduler = Scheduler(store, PoisonedWork(), max_concurrent=2, track_timeout_s=10, holds=holds)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await nursery.start(scheduler.run)
            for n, target in enumerate(target_ids, start=1):
                await store.commit({**submit_event(n), "target_id": target})
            while any(True for _ in store.state.active_jobs()):
                await store.wait_changed()
            await store.checkpoint()  # every applied event on disk before stopping
            nursery.cancel_scope.cancel()
    files.close()
    return store


async def test_unrecordable_metadata_fails_its_job_and_the_next_job_completes(
    tmp_path: Path,
) -> None:
    store = await run_jobs(tmp_path, [SURROGATE_TITLE_TRACK, GOOD_TRACK])
    poisoned, good = store.state.jobs["1"], store.state.jobs["2"]
    assert poisoned.status == "failed"
    assert poisoned.error is not None and poisoned.error["code"] == "UPSTREAM_BAD_RESPONSE"
    assert good.status == "completed"

    recovered, _ = JournalFiles(tmp_path).recover()  # what a restart sees
    assert recovered.jobs["1"].status == "failed"
    assert recovered.jobs["2"].status == "completed"


async def test_an_unrecordable_track_result_fails_that_track_not_the_scheduler(
    tmp_path: Path,
) -> None:
    store = await run_jobs(tmp_path, [SURROGATE_PATH_TRACK, GOOD_TRACK])
    poisoned, good = store.state.jobs["1"], store.state.jobs["2"]
    assert poisoned.status == "failed"
    assert [t.status for t in poisoned.tracks] == ["failed"]
    error = poisoned.tracks[0].error
    assert error is not None and error["code"] == "UPSTREAM_BAD_RESPONSE"
    assert good.status == "completed"
