"""Library and disk holds (issue 9, Build 4): a library that is gone, unmounted or read-only,
and a disk that is full or below `limits.min_free_mb`, hold the queue instead of failing
tracks; dlqd re-checks every `files.recheck_s` and resumes by itself.

The daemon-level tests run a real dlqd against the real catalog upstream, watch `list` and
`stats` from a thread for the whole test (no job or track may ever show failed or partial),
and change the library as an operator or a NAS would: rename it away, fill or unmount the
tmpfs it lives on, remount it read-only. The tmpfs ones need root (they skip cleanly
otherwise). The worker-level tests drive `DownloadWork` with an injected free-space probe,
as a real disk cannot be made to shrink on cue.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import trio

from dlqd.config import FilesConfig
from dlqd.demo.catalog import SINGLE_TRACK_ID, Catalog, CatalogServer
from dlqd.errors import DlqdError, ErrorCode
from dlqd.fetch import MIB, FreeSpaceFloor, sidecar_path
from dlqd.finalize import TMP_DIRNAME
from dlqd.holds import HoldReason, Holds, QueueHeld
from dlqd.library_watch import RESUME_FREE_BYTES, LibraryWatch
from dlqd.model import Track
from dlqd.scheduler import TrackRun
from dlqd.source import Source
from dlqd.worker import DownloadWork, RetryPolicy, temp_name
from tests.conftest import DaemonFactory
from tests.support import FINISHED, DaemonProcess, flac_audio, library_files, wait_until

RECHECK_S = 0.2
BAD_STATUSES = ("failed", "partial")

# --- watching the queue from a thread ------------------------------------------------------


class Observer:
    """Polls `list` and `stats` for as long as the block runs: every failure and hold it saw.

    `absent` names a path that must not exist while it is set (the library while
    it is renamed away): each poll that finds it records a violation.
    """

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.failures: list[str] = []
        self.reasons: set[str] = set()
        self.violations: list[str] = []
        self.absent: Path | None = None
        self.empty: Path | None = None  # a folder that must stay empty while set
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Observer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            absent, empty = self.absent, self.empty
            for job in self.daemon.jobs():
                if job["status"] in BAD_STATUSES:
                    self.failures.append(f"job {job['id']} {job['status']}: {job['error']}")
                for track in job["tracks"]:
                    if track["status"] in BAD_STATUSES:
                        self.failures.append(f"track {track['track_id']}: {track['error']}")
            self.reasons.update(hold["reason"] for hold in self.daemon.call("stats")["holds"])
            if absent is not None and os.path.lexists(absent):
                self.violations.append(f"{absent} exists again")
            if empty is not None and os.listdir(empty):
                self.violations.append(f"{empty} holds {sorted(os.listdir(empty))}")
            self.polls += 1
            self._stop.wait(0.03)

    def wait_polls(self, count: int) -> None:
        """Let `count` more polls happen (each one a chance to see a violation)."""
        target = self.polls + count
        wait_until(lambda: self.polls >= target, what=f"{count} more polls")


def wait_for_hold(daemon: DaemonProcess, reason: str, timeout: float = 30.0) -> dict[str, Any]:
    def held() -> dict[str, Any] | None:
        holds = {hold["reason"]: hold for hold in daemon.call("stats")["holds"]}
        return holds.get(reason)

    return wait_until(held, timeout=timeout, what=f"a {reason} hold")


def wait_unheld(daemon: DaemonProcess) -> None:
    wait_until(lambda: daemon.call("stats")["holds"] == [], what="every hold released")


def count(job: dict[str, Any], status: str) -> int:
    return sum(track["status"] == status for track in job["tracks"])


def settled(daemon: DaemonProcess) -> bool:
    """No track of any job is downloading: everything a hold stopped has stopped."""
    return not any(count(job, "downloading") for job in daemon.jobs())


def temp_entries(daemon: DaemonProcess) -> list[str]:
    return sorted(os.listdir(daemon.library / TMP_DIRNAME))


def media_ranges(upstream: CatalogServer, track_id: int) -> list[str | None]:
    """The Range header of every media request for `track_id`, in order (None: a plain GET)."""
    return [r.headers.get("range") for r in upstream.requests_for("media", track_id=track_id)]


def assert_completed_with_every_track(
    daemon: DaemonProcess, catalog: Catalog, job_id: str, album_id: int
) -> None:
    job = daemon.wait_job(job_id, timeout=60)
    assert job["status"] == "completed", job
    assert [t["track_id"] for t in job["tracks"]] == list(catalog.album(album_id).track_ids)
    for track in job["tracks"]:
        assert track["status"] == "completed", track
        final = (daemon.library / track["path"]).read_bytes()
        assert flac_audio(final) == flac_audio(catalog.audio_for(track["track_id"], "LOSSLESS"))


def remount(directory: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], check=True)


# --- the library goes away and comes back ----------------------------------------------------


def test_the_library_renamed_away_mid_album_holds_the_queue_and_the_album_completes(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, tmp_path: Path
) -> None:
    album = catalog.add_album(8, 400_000)
    settings = {"files": {"recheck_s": RECHECK_S}, "worker": {"max_concurrent": 2}}
    daemon = make_daemon(upstream=upstream, settings=settings)
    daemon.start()
    upstream.throttle_bps = 800_000  # half a second a track: the album is under way
    elsewhere = tmp_path / "elsewhere"
    job_id = daemon.submit("album", album)

    with Observer(daemon) as seen:
        wait_until(lambda: count(daemon.job(job_id), "completed") >= 2, what="2 tracks done")
        os.rename(daemon.library, elsewhere)  # the NAS share goes away mid-album
        seen.absent = daemon.library

        hold = wait_for_hold(daemon, "library_unavailable")
        assert "does not exist" in hold["detail"] and hold["until"] is None
        wait_until(lambda: settled(daemon), what="the running tracks to stop")
        health = daemon.call("health")
        assert {"library_space", "holds"} <= set(health["problems"]), health
        later = daemon.submit("track", SINGLE_TRACK_ID)  # the journal is in the state dir
        assert daemon.job(later)["status"] == "queued"
        seen.wait_polls(20)  # several re-checks happen while the library is gone
        assert daemon.job(job_id)["status"] == "processing"

        upstream.throttle_bps = None
        seen.absent = None
        os.rename(elsewhere, daemon.library)
        assert_completed_with_every_track(daemon, catalog, job_id, album)
        assert daemon.wait_job(later)["status"] == "completed"

    assert seen.failures == []
    assert seen.violations == []  # the daemon never recreated the library
    assert "library_unavailable" in seen.reasons
    wait_unheld(daemon)
    assert daemon.call("health")["ok"] is True
    assert temp_entries(daemon) == []


def test_a_library_mount_unmounted_mid_album_holds_the_queue_and_nothing_lands_beneath(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, small_fs: Any
) -> None:
    album = catalog.add_album(6, 400_000)
    settings = {"files": {"recheck_s": RECHECK_S}, "worker": {"max_concurrent": 2}}
    daemon = make_daemon(upstream=upstream, settings=settings)
    small_fs(daemon.library, "32m")
    daemon.start()
    try:
        upstream.throttle_bps = 800_000
        job_id = daemon.submit("album", album)
        with Observer(daemon) as seen:
            wait_until(lambda: count(daemon.job(job_id), "completed") >= 2, what="2 tracks done")
            # Lazily: the daemon holds files open there, as it would on a NAS share.
            subprocess.run(["umount", "-l", str(daemon.library)], check=True)
            seen.empty = daemon.library  # the bare mount point must stay empty

            hold = wait_for_hold(daemon, "library_unavailable")
            assert "no longer a mount point" in hold["detail"]
            wait_until(lambda: settled(daemon), what="the running tracks to stop")
            seen.wait_polls(20)
            assert daemon.job(job_id)["status"] == "processing"

            upstream.throttle_bps = None
            seen.empty = None
            small_fs(daemon.library, "32m")  # the share is back (empty: a fresh tmpfs)
            job = daemon.wait_job(job_id, timeout=60)
        assert job["status"] == "completed", job
        assert seen.failures == [] and seen.violations == []
    finally:
        daemon.kill()


def test_a_library_remounted_read_only_holds_the_queue_until_it_is_writable_again(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, small_fs: Any
) -> None:
    album = catalog.add_album(2, 200_000)
    daemon = make_daemon(upstream=upstream, settings={"files": {"recheck_s": RECHECK_S}})
    small_fs(daemon.library, "16m")
    daemon.start()
    try:
        remount(daemon.library, "ro")  # root ignores modes, but not a read-only filesystem
        with Observer(daemon) as seen:
            job_id = daemon.submit("album", album)
            hold = wait_for_hold(daemon, "library_unavailable")
            assert "Read-only file system" in hold["detail"]
            assert upstream.requests_for("media") == []  # held before fetching a byte
            seen.wait_polls(10)
            remount(daemon.library, "rw")
            assert_completed_with_every_track(daemon, catalog, job_id, album)
        assert seen.failures == []
    finally:
        daemon.kill()


# --- the disk fills up ---------------------------------------------------------------------


def test_a_library_tmpfs_filled_mid_album_holds_disk_full_and_resumes_by_range_once_freed(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, small_fs: Any
) -> None:
    # 12 MiB of room, a 7 MB filler, four 2 MB tracks one at a time: the third track
    # meets ENOSPC about 1.5 MB in. Without the filler the whole album fits.
    album = catalog.add_album(4, 2_000_000)
    settings = {"files": {"recheck_s": RECHECK_S}, "worker": {"max_concurrent": 1}}
    daemon = make_daemon(upstream=upstream, settings=settings)
    small_fs(daemon.library, "12m")
    filler = daemon.library / "filler.bin"
    filler.write_bytes(b"\0" * 7_000_000)
    daemon.start()
    try:
        with Observer(daemon) as seen:
            job_id = daemon.submit("album", album)
            hold = wait_for_hold(daemon, "disk_full")
            assert "no space left on device" in hold["detail"]
            wait_until(lambda: settled(daemon), what="the running track to stop")
            job = daemon.job(job_id)
            assert job["status"] == "processing" and count(job, "completed") == 2, job
            cut = catalog.album(album).track_ids[2]
            partial = daemon.library / TMP_DIRNAME / temp_name(job_id, cut)
            kept = partial.stat().st_size  # the intact prefix, kept for resume
            assert 0 < kept < len(catalog.audio_for(cut, "LOSSLESS"))
            assert sidecar_path(partial).exists()
            assert "library_space" in daemon.call("health")["problems"]
            later = daemon.submit("track", SINGLE_TRACK_ID)  # accepted while held
            seen.wait_polls(20)  # re-checks find no room: still held
            assert [h["reason"] for h in daemon.call("stats")["holds"]] == ["disk_full"]

            filler.unlink()  # the operator frees space
            assert_completed_with_every_track(daemon, catalog, job_id, album)
            assert daemon.wait_job(later)["status"] == "completed"
        assert seen.failures == []
        assert media_ranges(upstream, cut)[-1] == f"bytes={kept}-"
        wait_unheld(daemon)
        assert temp_entries(daemon) == []
    finally:
        daemon.kill()


def test_the_free_space_floor_reached_mid_transfer_holds_disk_full_and_resumes_by_range(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, small_fs: Any
) -> None:
    # 48 MiB with an 8 MiB filler and a 30 MiB floor: the preflight sees 40 MiB free;
    # 16 MiB into the 19 MiB track the writer's check finds about 24 MiB and stops.
    big_album = catalog.add_album(1, 20_000_000)
    track_id = catalog.album(big_album).track_ids[0]
    settings = {"limits": {"min_free_mb": 30}, "files": {"recheck_s": RECHECK_S}}
    daemon = make_daemon(upstream=upstream, settings=settings)
    small_fs(daemon.library, "48m")
    filler = daemon.library / "filler.bin"
    filler.write_bytes(b"\0" * (8 * MIB))
    daemon.start()
    try:
        with Observer(daemon) as seen:
            job_id = daemon.submit("album", big_album)
            hold = wait_for_hold(daemon, "disk_full")
            assert "below limits.min_free_mb = 30" in hold["detail"]
            wait_until(lambda: settled(daemon), what="the running track to stop")
            kept = (daemon.library / TMP_DIRNAME / temp_name(job_id, track_id)).stat().st_size
            assert kept >= 16 * MIB
            seen.wait_polls(10)
            filler.unlink()
            assert_completed_with_every_track(daemon, catalog, job_id, big_album)
        assert seen.failures == []
        assert media_ranges(upstream, track_id) == [None, f"bytes={kept}-"]
    finally:
        daemon.kill()


def test_free_space_below_the_floor_before_a_try_holds_the_queue_and_submit_still_works(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream, settings={"limits": {"min_free_mb": 10**9}})
    daemon.start()
    job_id = daemon.submit("track", SINGLE_TRACK_ID)

    hold = wait_for_hold(daemon, "disk_full")
    free_mb = shutil.disk_usage(daemon.library).free // MIB
    assert hold["detail"].startswith(f"library {daemon.library}: ")
    assert hold["detail"].endswith("below limits.min_free_mb = 1000000000")
    assert abs(int(hold["detail"].split(": ")[1].split()[0]) - free_mb) < 1024
    later = daemon.submit("album", 300)  # accepted while held
    job = daemon.job(job_id)
    assert job["status"] in ("queued", "processing")
    assert [t["status"] for t in job["tracks"]] == ["pending"]
    assert daemon.job(later)["status"] == "queued"
    assert upstream.requests_for("media") == []  # held before fetching a byte
    health = daemon.call("health")
    assert {"library_space", "holds"} <= set(health["problems"]), health
    assert health["checks"]["library_space"]["held"] == [f"disk_full: {hold['detail']}"]

    # A restart finds the same hold again; nothing was failed in between.
    assert daemon.stop() == 0
    daemon.start()
    again = wait_for_hold(daemon, "disk_full")["detail"]
    assert again.endswith("below limits.min_free_mb = 1000000000")
    for job in daemon.jobs():
        assert job["status"] not in FINISHED, job


# --- the watch on its own ---------------------------------------------------------------------


class Disk:
    """A free-space probe the test sets: `free` bytes, whatever path is asked about."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path: Path) -> int:
        return self.free


def changes() -> tuple[Holds, Callable[[], trio.Event]]:
    """Holds whose every change sets the current event; the getter gives a fresh one."""
    event = [trio.Event()]

    def changed() -> None:
        event[0].set()

    def fresh() -> trio.Event:
        event[0] = trio.Event()
        return event[0]

    return Holds(user_held=lambda: False, on_change=changed), fresh


@pytest.fixture
def library(tmp_path: Path) -> Path:
    path = tmp_path / "library"
    path.mkdir()
    return path


async def test_the_recheck_releases_a_disk_full_hold_once_the_disk_has_room(
    library: Path,
) -> None:
    holds, next_change = changes()
    disk = Disk(50 * MIB)
    floor = FreeSpaceFloor(100, free_bytes=disk)
    watch = LibraryWatch(library, holds, floor=floor, recheck_s=0.01)

    hold = await watch.check_now()
    assert hold is not None and hold.reason == HoldReason.DISK_FULL
    assert hold.detail == f"library {library}: 50 MiB free, below limits.min_free_mb = 100"
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        released = next_change()
        disk.free = 100 * MIB
        with trio.fail_after(10):
            await released.wait()
        assert holds.faults() == []
        nursery.cancel_scope.cancel()


async def test_after_enospc_the_watch_waits_for_room_even_without_a_floor(
    library: Path,
) -> None:
    holds, _ = changes()
    disk = Disk(0)
    watch = LibraryWatch(library, holds, floor=FreeSpaceFloor(0, free_bytes=disk), recheck_s=1)
    assert await watch.check_now() is None  # no floor: an empty disk alone holds nothing

    watch.disk_full("writing x.part: no space left on device")
    disk.free = RESUME_FREE_BYTES - 1
    hold = await watch.check_now()
    assert hold is not None and hold.detail == "writing x.part: no space left on device"
    disk.free = RESUME_FREE_BYTES
    assert await watch.check_now() is None
    assert holds.faults() == []


async def test_a_missing_library_is_held_and_never_recreated(library: Path, tmp_path: Path) -> None:
    holds, next_change = changes()
    watch = LibraryWatch(library, holds, floor=FreeSpaceFloor(0), recheck_s=0.01)
    inspections = [0]
    inspect = watch.inspect

    def counted() -> Any:
        inspections[0] += 1
        return inspect()

    watch.inspect = counted  # type: ignore[method-assign]
    library.rename(tmp_path / "away")

    hold = await watch.check_now()
    assert hold is not None and hold.reason == HoldReason.LIBRARY_UNAVAILABLE
    assert hold.detail == f"library {library} does not exist (unmounted or moved away?)"
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        with trio.fail_after(10):  # re-checks while it is gone create nothing
            while inspections[0] < 6:
                await trio.sleep(0.01)
        assert not library.exists()
        released = next_change()
        (tmp_path / "away").rename(library)
        with trio.fail_after(10):
            await released.wait()
        assert holds.faults() == []
        nursery.cancel_scope.cancel()


async def test_a_library_that_is_a_file_is_held(tmp_path: Path, library: Path) -> None:
    holds, _ = changes()
    watch = LibraryWatch(library, holds, floor=FreeSpaceFloor(0), recheck_s=1)
    library.rmdir()
    library.write_bytes(b"not a folder")
    hold = await watch.check_now()
    assert hold is not None and hold.detail == f"library {library} is not a directory"


async def test_a_temp_folder_replaced_by_a_link_is_no_outage(library: Path, tmp_path: Path) -> None:
    """A link there is hostile: the track meeting it fails FILESYSTEM_ERROR (issue 8)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (library / TMP_DIRNAME).symlink_to(outside)
    holds, _ = changes()
    watch = LibraryWatch(library, holds, floor=FreeSpaceFloor(0), recheck_s=1)
    assert await watch.check_now() is None
    assert os.listdir(outside) == []  # the probe never went through the link


# --- the worker maps faults to holds ------------------------------------------------------------


class FillingDisk:
    """Plenty of room until the partial holds `full_after` bytes, then 5 MiB; `room` ends that."""

    def __init__(self, partial: Path, full_after: int) -> None:
        self.partial = partial
        self.full_after = full_after
        self.room = False

    def __call__(self, path: Path) -> int:
        size = self.partial.stat().st_size if self.partial.exists() else 0
        return 10 * 1024 * MIB if self.room or size < self.full_after else 5 * MIB


@pytest.fixture
async def source(upstream: CatalogServer) -> AsyncIterator[Source]:
    client = Source([upstream.base_url], upstream.cover_base_url, 2.0, 2.0, "dlqd-test")
    yield client
    await client.aclose()


def make_work(source: Source, library: Path, floor: FreeSpaceFloor) -> DownloadWork:
    watch = LibraryWatch(library, Holds(user_held=lambda: False), floor=floor, recheck_s=1)
    retry = RetryPolicy(2, (0.01,))
    return DownloadWork(
        source, library=library, files=FilesConfig(), retry=retry, read_timeout_s=2, watch=watch
    )


async def track_run(source: Source, track_id: int) -> TrackRun:
    meta = await source.track_meta(track_id)
    return TrackRun("job1", Track(track_id), meta, "LOSSLESS", on_progress=lambda run: None)


async def test_a_transfer_cut_by_the_floor_holds_the_queue_and_its_partial_resumes_by_range(
    source: Source, upstream: CatalogServer, catalog: Catalog, library: Path
) -> None:
    track_id = catalog.album(catalog.add_album(1, 6_000_000)).track_ids[0]
    partial = library / TMP_DIRNAME / temp_name("job1", track_id)
    disk = FillingDisk(partial, full_after=2 * MIB)
    work = make_work(source, library, FreeSpaceFloor(100, check_every_bytes=MIB, free_bytes=disk))

    with pytest.raises(QueueHeld) as caught:
        await work.run_track(await track_run(source, track_id))

    assert caught.value.reason == HoldReason.DISK_FULL and caught.value.keep_partial
    assert work.watch.holds.is_held(HoldReason.DISK_FULL)
    kept = partial.stat().st_size
    assert 2 * MIB <= kept < 6_000_000 and sidecar_path(partial).exists()
    assert len(upstream.requests_for("media")) == 1  # held, not retried

    disk.room = True
    assert await work.watch.check_now() is None
    result = await work.run_track(await track_run(source, track_id))

    assert result.outcome == "written"
    assert media_ranges(upstream, track_id) == [None, f"bytes={kept}-"]
    final = (library / result.path).read_bytes()
    assert flac_audio(final) == flac_audio(catalog.audio_for(track_id, "LOSSLESS"))


async def test_enospc_while_finalizing_holds_the_queue_and_keeps_no_partial(
    source: Source, upstream: CatalogServer, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_room(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("dlqd.finalize.write_tags", no_room)  # the real finalize meets ENOSPC
    work = make_work(source, library, FreeSpaceFloor(0))
    partial = library / TMP_DIRNAME / temp_name("job1", SINGLE_TRACK_ID)

    with pytest.raises(QueueHeld) as caught:
        await work.run_track(await track_run(source, SINGLE_TRACK_ID))

    assert caught.value.reason == HoldReason.DISK_FULL
    assert not caught.value.keep_partial  # tagging touched the bytes: nothing to resume
    assert not partial.exists() and not sidecar_path(partial).exists()
    assert work.watch.holds.is_held(HoldReason.DISK_FULL)
    assert library_files(library) == set()


async def test_a_filesystem_error_below_a_healthy_library_fails_only_its_track(
    source: Source, library: Path, tmp_path: Path
) -> None:
    """Issue 8's planted link still fails the track; no hold starts for it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (library / "The Examples").symlink_to(outside)
    work = make_work(source, library, FreeSpaceFloor(0))

    with pytest.raises(DlqdError) as caught:
        await work.run_track(await track_run(source, SINGLE_TRACK_ID))

    assert not isinstance(caught.value, QueueHeld)
    assert caught.value.code == ErrorCode.FILESYSTEM_ERROR
    assert work.watch.holds.faults() == []
    assert os.listdir(outside) == []
