"""fetch_to_file against the real local catalog: bytes, resume, faults, limits."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from dlqd.demo.catalog import (
    DASH_NO_TIMELINE_TRACK_ID,
    DASH_TIMELINE_TRACK_ID,
    SINGLE_TRACK_ID,
    Catalog,
    CatalogServer,
)
from dlqd.errors import DlqdError, ErrorCode
from dlqd.fetch import (
    BUFFER_BYTES,
    BURST_S,
    PROGRESS_EVERY_BYTES,
    FetchResult,
    FreeSpaceFloor,
    MediaNotFoundError,
    TokenBucket,
    fetch_to_file,
    sidecar_path,
)
from dlqd.meta import MediaPlan
from dlqd.source import Source

BIG_TRACK_BYTES = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture(scope="module")
def big_track_id(catalog: Catalog) -> int:
    album_id = catalog.add_album(1, BIG_TRACK_BYTES)
    return catalog.album(album_id).track_ids[0]


@pytest.fixture
def server(catalog: Catalog) -> Iterator[CatalogServer]:
    with CatalogServer(catalog) as running:
        yield running


@pytest.fixture
async def source(server: CatalogServer) -> AsyncIterator[Source]:
    upstream = Source([server.base_url], server.cover_base_url, 2.0, 2.0, "dlqd-test")
    yield upstream
    await upstream.aclose()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    tmp_dir = tmp_path / "library" / ".dlqd-tmp"
    tmp_dir.mkdir(parents=True)
    return tmp_dir / "track.part"


class ProgressLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))


async def fetch(
    source: Source,
    plan: MediaPlan,
    dest: Path,
    *,
    progress: ProgressLog | None = None,
    read_timeout_s: float = 2.0,
    bandwidth_limit_kbps: int = 0,
    resume: bool = True,
    max_bytes: int | None = None,
    floor: FreeSpaceFloor | None = None,
) -> FetchResult:
    """`fetch_to_file` with the source's client, a 2 s read timeout unless told otherwise."""
    return await fetch_to_file(
        source.media,
        plan,
        dest,
        progress=progress or ProgressLog(),
        read_timeout_s=read_timeout_s,
        bandwidth=TokenBucket.for_kbps(bandwidth_limit_kbps),
        resume=resume,
        max_bytes=max_bytes,
        floor=floor,
    )


def media_ranges(server: CatalogServer, track_id: int) -> list[str | None]:
    return [r.headers.get("range") for r in server.requests_for("media", track_id=track_id)]


async def test_bts_flac_fetch_equals_catalog_bytes(
    source: Source, catalog: Catalog, dest: Path
) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    progress = ProgressLog()
    result = await fetch(source, plan, dest, progress=progress)
    expected = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    assert dest.read_bytes() == expected
    assert result == FetchResult(bytes_written=len(expected), total=len(expected), resumed_from=0)
    assert progress.calls[0] == (0, len(expected))
    assert progress.calls[-1] == (len(expected), len(expected))


async def test_progress_is_reported_once_64_kib_accrue_at_read_boundaries(
    source: Source, big_track_id: int, dest: Path
) -> None:
    plan = await source.media_plan(big_track_id, "LOSSLESS")
    progress = ProgressLog()
    await fetch(source, plan, dest, progress=progress)
    done = [d for d, _ in progress.calls]
    assert done == sorted(done) and done[-1] == dest.stat().st_size >= BIG_TRACK_BYTES
    # Reports land on socket-read boundaries once 64 KiB have accrued; one read is at
    # most the transfer's buffer (dlqd.transfer.BUFFER_BYTES: it reads into its free part).
    largest_read = BUFFER_BYTES
    assert largest_read <= 1 << 20
    assert max(b - a for a, b in itertools.pairwise(done)) < PROGRESS_EVERY_BYTES + largest_read
    assert len(done) >= BIG_TRACK_BYTES // (PROGRESS_EVERY_BYTES + largest_read)


@pytest.mark.parametrize("track_id", [DASH_TIMELINE_TRACK_ID, DASH_NO_TIMELINE_TRACK_ID])
async def test_dash_fetch_is_init_then_segments(
    source: Source, catalog: Catalog, server: CatalogServer, dest: Path, track_id: int
) -> None:
    plan = await source.media_plan(track_id, "HI_RES_LOSSLESS")
    progress = ProgressLog()
    result = await fetch(source, plan, dest, progress=progress)
    parts = catalog.media_parts(track_id, "HI_RES_LOSSLESS")
    assert dest.read_bytes() == b"".join(parts)
    assert result.total == sum(len(p) for p in parts)
    assert [r.path.rsplit("/", 1)[-1] for r in server.requests_for("media")] == [
        p.split("?")[0].rsplit("/", 1)[-1] for p in plan.segments
    ]
    assert progress.calls[-1] == (result.total, None)


async def test_falls_back_to_the_next_url_within_one_call(
    source: Source, catalog: Catalog, server: CatalogServer, dest: Path
) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    server.inject("media", "status", status=503, path_contains="/media/a/")
    await fetch(source, plan, dest)
    assert dest.read_bytes() == catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    paths = [r.path for r in server.requests_for("media")]
    assert [p.split("/")[2] for p in paths] == ["a", "b"]


async def test_short_body_is_integrity_error_and_resume_asks_only_the_missing_bytes(
    source: Source, catalog: Catalog, server: CatalogServer, dest: Path
) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    expected = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    # Both mirrors cut the body after 50,000 bytes: the second resumes from the first's bytes.
    server.inject("media", "short", times=2, track_id=SINGLE_TRACK_ID, after_bytes=50_000)
    with pytest.raises(DlqdError) as caught:
        await fetch(source, plan, dest)
    assert caught.value.code == ErrorCode.INTEGRITY_ERROR and caught.value.transient
    assert dest.read_bytes() == expected[:100_000]  # partial bytes kept for the next try

    result = await fetch(source, plan, dest)
    assert dest.read_bytes() == expected
    assert result == FetchResult(
        bytes_written=len(expected) - 100_000, total=len(expected), resumed_from=100_000
    )
    assert media_ranges(server, SINGLE_TRACK_ID) == [None, "bytes=50000-", "bytes=100000-"]


async def test_resume_off_restarts_from_zero(
    source: Source, catalog: Catalog, server: CatalogServer, dest: Path
) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    server.inject("media", "short", times=2, track_id=SINGLE_TRACK_ID, after_bytes=1000)
    with pytest.raises(DlqdError):
        await fetch(source, plan, dest, resume=False)
    result = await fetch(source, plan, dest, resume=False)
    assert result.resumed_from == 0
    assert dest.read_bytes() == catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    assert media_ranges(server, SINGLE_TRACK_ID) == [None, None, None]


@pytest.mark.parametrize(
    ("etag", "total_delta", "ranges"),
    [
        ('"some-other-file"', 0, ["bytes=5000-"]),  # If-Range mismatch: the server sends 200
        (None, 1, ["bytes=5000-", None]),  # Content-Range total differs: we ask again
    ],
)
async def test_resume_with_stale_validators_starts_cleanly_from_zero(
    source: Source,
    catalog: Catalog,
    server: CatalogServer,
    dest: Path,
    etag: str | None,
    total_delta: int,
    ranges: list[str | None],
) -> None:
    expected = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    dest.write_bytes(b"\xff" * 5000)
    sidecar_path(dest).write_text(json.dumps({"etag": etag, "total": len(expected) + total_delta}))
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    result = await fetch(source, plan, dest)
    assert result.resumed_from == 0
    assert dest.read_bytes() == expected
    assert media_ranges(server, SINGLE_TRACK_ID) == ranges


async def test_a_stall_is_a_timeout_and_keeps_the_bytes_received(
    source: Source, server: CatalogServer, dest: Path
) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    server.inject("media", "stall", times=2, track_id=SINGLE_TRACK_ID, after_bytes=20_000)
    with trio.fail_after(5):
        with pytest.raises(DlqdError) as caught:
            await fetch(source, plan, dest, read_timeout_s=0.3)
    assert caught.value.code == ErrorCode.TIMEOUT
    assert dest.stat().st_size == 40_000  # 20,000 from each mirror, the second resumed


async def test_a_hung_server_is_a_timeout(
    source: Source, server: CatalogServer, dest: Path
) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    server.inject("media", "hang", times=2, track_id=SINGLE_TRACK_ID)
    with trio.fail_after(5):
        with pytest.raises(DlqdError) as caught:
            await fetch(source, plan, dest, read_timeout_s=0.3)
    assert caught.value.code == ErrorCode.TIMEOUT


async def test_expired_media_urls_raise_media_not_found_then_a_fresh_plan_works(
    source: Source, catalog: Catalog, server: CatalogServer, dest: Path
) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    server.expire_tokens()
    with pytest.raises(MediaNotFoundError) as caught:
        await fetch(source, plan, dest)
    assert caught.value.code == ErrorCode.UPSTREAM_NOT_FOUND
    fresh = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    await fetch(source, fresh, dest)
    assert dest.read_bytes() == catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")


async def test_expired_dash_segment_raises_media_not_found(
    source: Source, server: CatalogServer, dest: Path
) -> None:
    plan = await source.media_plan(DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS")
    server.inject("media", "status", status=404, path_contains="/2.m4s")
    with pytest.raises(MediaNotFoundError):
        await fetch(source, plan, dest)


async def test_disk_full_is_raised_without_trying_the_other_url(
    source: Source, server: CatalogServer, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /dev/full answers every write with ENOSPC. (A link to it at `dest` would now be
    # refused: temp files are opened without following links.)
    monkeypatch.setattr(
        "dlqd.fetch.open_beneath",
        lambda _path, mode: open("/dev/full", mode),  # noqa: SIM115
    )
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    with pytest.raises(DlqdError) as caught:
        await fetch(source, plan, dest, resume=False)
    assert caught.value.code == ErrorCode.DISK_FULL
    assert len(server.requests_for("media")) == 1


async def test_missing_temp_dir_is_a_filesystem_error(source: Source, tmp_path: Path) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    with pytest.raises(DlqdError) as caught:
        await fetch(source, plan, tmp_path / "gone" / "track.part")
    assert caught.value.code == ErrorCode.FILESYSTEM_ERROR


async def test_token_bucket_holds_the_average_rate(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(100_000)  # bytes/s
    start = trio.current_time()
    for _ in range(100):
        await bucket.take(10_000)  # 1 MB in all
    elapsed = trio.current_time() - start
    assert elapsed == pytest.approx(1_000_000 / 100_000 - BURST_S)


async def test_a_shared_bucket_limits_concurrent_takers_together(
    autojump_clock: trio.abc.Clock,
) -> None:
    bucket = TokenBucket(100_000)  # bytes/s, shared by two transfers
    start = trio.current_time()

    async def transfer() -> None:
        for _ in range(50):
            await bucket.take(10_000)  # 500 kB each, 1 MB together

    async with trio.open_nursery() as nursery:
        nursery.start_soon(transfer)
        nursery.start_soon(transfer)
    elapsed = trio.current_time() - start
    assert elapsed >= 1_000_000 / 100_000 - BURST_S  # the pair, not each, holds the rate


async def test_bandwidth_limit_slows_a_real_transfer(
    source: Source, big_track_id: int, dest: Path
) -> None:
    plan = await source.media_plan(big_track_id, "LOSSLESS")
    start = trio.current_time()
    result = await fetch(source, plan, dest, bandwidth_limit_kbps=80_000)  # 10 MB/s
    elapsed = trio.current_time() - start
    assert elapsed >= result.total / 10_000_000 - BURST_S
