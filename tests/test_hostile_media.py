"""Hostile media bodies (issue 8): endless, oversized, lying about their length, filling the disk.

Three layers, each against real parts:
- the integrity check (`dlqd.integrity`) on real FLAC bytes from the catalog's
  encoder, cut at frame boundaries, inside frames and padded with garbage;
- `fetch_to_file` over real HTTP from a local `CatalogServer`, with the
  free-space probe injected (a full disk cannot be made here safely; what the
  daemon does about one — hold the queue — is in tests/test_library_holds.py);
- a real daemon against a scripted upstream (`CatalogServer.script`): the hostile
  track ends in its documented code, the daemon answers `health`, a restart on
  the same state dir stays up, an innocent job alongside completes, and nothing
  outside the library and the state dir appears or disappears.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlqd.integrity
from dlqd.demo import audio
from dlqd.demo.catalog import (
    AAC_ONLY_TRACK_ID,
    DASH_TIMELINE_TRACK_ID,
    SINGLE_TRACK_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Scripted,
)
from dlqd.errors import DlqdError, ErrorCode
from dlqd.fetch import MIB, FreeSpaceFloor, sidecar_path
from dlqd.integrity import MAX_CRC16_CHECKS, Box, boxes_in, check_media_integrity, crc8, crc16
from dlqd.source import Source
from tests.support import DaemonProcess, assert_unharmed, outside_snapshot, wait_until
from tests.test_fetch import fetch

CHUNK = b"\0" * 65536
HEAD_BYTES = 8 + 34  # "fLaC", the STREAMINFO block header and body


# --- FLAC bytes to cut ----------------------------------------------------------------


@dataclass(frozen=True)
class Flac:
    """A real FLAC file from the catalog's encoder and where its frames start."""

    data: bytes
    block_size: int
    total_samples: int
    frame_starts: tuple[int, ...]


def encoded(data: bytes) -> Flac:
    """Frame offsets of an encoder-made file: verbatim frames, all full ones the same size."""
    assert data[:4] == b"fLaC" and data[4] == 0x80  # STREAMINFO is the only metadata block
    info = dlqd.integrity.StreamInfo.parse(data[8:HEAD_BYTES])
    starts = tuple(range(HEAD_BYTES, len(data), info.max_frame_bytes))
    assert all(data[s : s + 2] == b"\xff\xf8" for s in starts)
    return Flac(data, info.max_block_size, info.total_samples, starts)


def as_variable_block_size(flac: Flac) -> Flac:
    """The same audio with every frame header carrying its first sample number (0xFFF9)."""
    frames = []
    ends = (*flac.frame_starts[1:], len(flac.data))
    for number, (start, end) in enumerate(zip(flac.frame_starts, ends, strict=True)):
        frame = flac.data[start:end]
        size_code = frame[2] >> 4
        fields = frame[5 : 5 + (2 if size_code == 7 else 0)]  # after the 1-byte frame number
        # FLAC codes numbers below 0x110000 exactly as UTF-8 (surrogates included).
        first_sample = chr(number * flac.block_size).encode("utf-8", "surrogatepass")
        head = b"\xff\xf9" + frame[2:4] + first_sample + fields
        head += bytes([crc8(head)])
        body = head + frame[len(head) - len(first_sample) + 1 : -2]
        frames.append(body + crc16(body).to_bytes(2, "big"))
    data = flac.data[:HEAD_BYTES] + b"".join(frames)
    starts, position = [], HEAD_BYTES
    for frame in frames:
        starts.append(position)
        position += len(frame)
    return Flac(data, flac.block_size, flac.total_samples, tuple(starts))


def with_total_samples(data: bytes, total: int) -> bytes:
    """`data` with STREAMINFO's 36-bit total sample count replaced."""
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | total
    return data[:18] + packed.to_bytes(8, "big") + data[26:]


@pytest.fixture(scope="module")
def single_flac(catalog: Catalog) -> Flac:
    return encoded(catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS"))


def check_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "track.part"
    path.write_bytes(data)
    check_media_integrity(path)


def integrity_error(tmp_path: Path, data: bytes) -> DlqdError:
    with pytest.raises(DlqdError) as caught:
        check_bytes(tmp_path, data)
    assert caught.value.code == ErrorCode.INTEGRITY_ERROR, caught.value
    assert caught.value.transient
    return caught.value


# --- the integrity check ---------------------------------------------------------------

SHAPES = {
    "16-bit stereo 44.1 kHz": lambda: audio.make_flac(1.3, 6),
    "24-bit mono 96 kHz": lambda: audio.make_flac(0.4, 7, sample_rate=96000, channels=1, bits=24),
    "8-bit 6 channels, rate only in STREAMINFO": lambda: audio.make_flac(
        0.4, 8, sample_rate=12345, channels=6, bits=8
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_an_intact_flac_passes(tmp_path: Path, shape: str) -> None:
    check_bytes(tmp_path, SHAPES[shape]())


def test_the_catalog_track_passes_with_fixed_and_variable_block_sizes(
    tmp_path: Path, single_flac: Flac
) -> None:
    check_bytes(tmp_path, single_flac.data)
    check_bytes(tmp_path, as_variable_block_size(single_flac).data)


@pytest.mark.parametrize("variable", [False, True], ids=["fixed blocks", "variable blocks"])
def test_a_flac_cut_at_a_frame_boundary_fails_integrity_error(
    tmp_path: Path, single_flac: Flac, variable: bool
) -> None:
    flac = as_variable_block_size(single_flac) if variable else single_flac
    for frames_kept in (1, len(flac.frame_starts) // 2, len(flac.frame_starts) - 1):
        error = integrity_error(tmp_path, flac.data[: flac.frame_starts[frames_kept]])
        ends_at = frames_kept * flac.block_size
        assert f"ends at sample {ends_at} of {flac.total_samples}" in error.message


@pytest.mark.parametrize("variable", [False, True], ids=["fixed blocks", "variable blocks"])
def test_a_flac_cut_inside_a_frame_fails_integrity_error(
    tmp_path: Path, single_flac: Flac, variable: bool
) -> None:
    flac = as_variable_block_size(single_flac) if variable else single_flac
    for into_frame in (1, 7, 9000):  # a full frame is 18442 bytes
        integrity_error(tmp_path, flac.data[: flac.frame_starts[5] + into_frame])
    error = integrity_error(tmp_path, flac.data[:-1])
    assert "no whole frame ends at the end of the file" in error.message


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(share=st.integers(min_value=0, max_value=1 << 20))
def test_every_cut_after_the_head_fails_integrity_error(
    tmp_path: Path, single_flac: Flac, share: int
) -> None:
    cut = HEAD_BYTES + share * (len(single_flac.data) - 1 - HEAD_BYTES) // (1 << 20)
    integrity_error(tmp_path, single_flac.data[:cut])


def test_a_flac_of_unknown_length_passes_even_when_cut(tmp_path: Path, single_flac: Flac) -> None:
    unknown = with_total_samples(single_flac.data, 0)
    check_bytes(tmp_path, unknown[: single_flac.frame_starts[3]])
    check_bytes(tmp_path, unknown[: single_flac.frame_starts[3] + 100])


def test_a_trailing_id3v1_tag_is_not_a_cut(tmp_path: Path, single_flac: Flac) -> None:
    tag = b"TAG" + b"\0" * 125
    check_bytes(tmp_path, single_flac.data + tag)
    integrity_error(tmp_path, single_flac.data[: single_flac.frame_starts[-1]] + tag)


@pytest.mark.parametrize(
    "data",
    [
        # Fragmented, no `mehd`, no duration from a manifest: nothing says a segment is missing.
        audio.dash_init() + b"".join(audio.dash_segments()[:-1]),
        b"",
        b"fLaC",
        b"\0\0\0\x18fty",  # cut before `ftyp` says it is an MP4
        bytes(range(256)) * 64,
    ],
    ids=[
        "dash without its last segment, no duration",
        "empty",
        "bare marker",
        "7 bytes of mp4",
        "not audio",
    ],
)
def test_what_the_check_does_not_cover_passes(tmp_path: Path, data: bytes) -> None:
    check_bytes(tmp_path, data)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(max_size=40_000), total=st.integers(min_value=0, max_value=(1 << 36) - 1))
def test_garbage_after_a_flac_head_passes_or_fails_integrity_error(
    tmp_path: Path, single_flac: Flac, garbage: bytes, total: int
) -> None:
    data = with_total_samples(single_flac.data[:HEAD_BYTES], total) + garbage
    try:
        check_bytes(tmp_path, data)
    except DlqdError as exc:
        assert exc.code == ErrorCode.INTEGRITY_ERROR


def test_a_tail_full_of_valid_looking_headers_costs_a_bounded_number_of_crc16_checks(
    tmp_path: Path, single_flac: Flac, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = single_flac.frame_starts[0]
    header = single_flac.data[first : first + 6]  # sync, codes, frame number 0, CRC-8
    calls: list[int] = []

    def counted_crc16(data: bytes) -> int:
        calls.append(len(data))
        return crc16(data)

    monkeypatch.setattr(dlqd.integrity, "crc16", counted_crc16)
    integrity_error(tmp_path, single_flac.data[:HEAD_BYTES] + header * 100_000)
    assert len(calls) == MAX_CRC16_CHECKS


# --- the integrity check on MP4: AAC and DASH-assembled FLAC in MP4 ---------------------

AAC = audio.aac_m4a()
DASH_PARTS = (audio.dash_init(), *audio.dash_segments())
DASH = b"".join(DASH_PARTS)
DASH_SECONDS = Decimal(str(audio.DASH_PRESENTATION_SECONDS))
MP4_FILES = {"aac": (AAC, None), "dash": (DASH, DASH_SECONDS)}
CONTAINERS = {"moov", "trak", "mdia", "minf", "stbl", "mvex", "moof", "traf"}


def every_box(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    """Every box of `data`, the children of the containers the check reads included."""
    found = []
    for box in boxes_in(data, start, end):
        found.append(box)
        if box.kind in CONTAINERS:
            found.extend(every_box(data, box.payload_start, box.end))
    return found


def the_box(data: bytes, kind: str) -> Box:
    return next(box for box in every_box(data) if box.kind == kind)


def with_word(data: bytes, at: int, value: int, width: int = 4) -> bytes:
    return data[:at] + value.to_bytes(width, "big") + data[at + width :]


def check_mp4(tmp_path: Path, data: bytes, seconds: Decimal | None = None) -> None:
    path = tmp_path / "track.part"
    path.write_bytes(data)
    check_media_integrity(path, seconds)


def mp4_integrity_error(tmp_path: Path, data: bytes, seconds: Decimal | None = None) -> DlqdError:
    with pytest.raises(DlqdError) as caught:
        check_mp4(tmp_path, data, seconds)
    assert caught.value.code == ErrorCode.INTEGRITY_ERROR, caught.value
    assert caught.value.transient
    return caught.value


def cuts_at_and_inside_every_box(data: bytes) -> list[int]:
    """Each box's start, payload start, middle and last byte; from the first 8 bytes on."""
    cuts = set()
    for box in every_box(data):
        cuts.update((box.start, box.payload_start, (box.start + box.end) // 2, box.end - 1))
    return sorted(cut for cut in cuts if 8 <= cut < len(data))


@pytest.mark.parametrize(
    ("data", "seconds"),
    [(AAC, None), (DASH, None), (DASH, DASH_SECONDS)],
    ids=["aac", "dash", "dash held to the manifest's duration"],
)
def test_a_whole_aac_and_a_whole_dash_assembled_mp4_pass(
    tmp_path: Path, data: bytes, seconds: Decimal | None
) -> None:
    check_mp4(tmp_path, data, seconds)


@pytest.mark.parametrize("name", MP4_FILES)
def test_an_mp4_cut_at_or_inside_any_box_fails_integrity_error(tmp_path: Path, name: str) -> None:
    data, seconds = MP4_FILES[name]
    cuts = cuts_at_and_inside_every_box(data)
    assert len(cuts) > 40
    for cut in cuts:
        error = mp4_integrity_error(tmp_path, data[:cut], seconds)
        assert error.message.startswith("MP4 truncated: "), (cut, error.message)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(sorted(MP4_FILES)), share=st.integers(min_value=0, max_value=1 << 20))
def test_every_cut_of_an_mp4_fails_integrity_error(tmp_path: Path, name: str, share: int) -> None:
    data, seconds = MP4_FILES[name]
    cut = 8 + share * (len(data) - 1 - 8) // (1 << 20)
    mp4_integrity_error(tmp_path, data[:cut], seconds)


def test_a_truncated_mdat_names_the_box_and_the_bytes_present(tmp_path: Path) -> None:
    mdat = the_box(AAC, "mdat")
    error = mp4_integrity_error(tmp_path, AAC[: mdat.end - 1000])
    claimed, present = mdat.end - mdat.start, mdat.end - mdat.start - 1000
    expected = f"MP4 truncated: box 'mdat' at byte {mdat.start} claims {claimed} bytes, "
    assert error.message == expected + f"{present} present"


def test_a_box_size_lying_past_the_end_fails_integrity_error(tmp_path: Path) -> None:
    for data in (AAC, DASH):
        last = boxes_in(data)[-1]
        lying = with_word(data, last.start, last.end - last.start + 1)
        error = mp4_integrity_error(tmp_path, lying)
        assert f"claims {last.end - last.start + 1} bytes, {last.end - last.start} present" in (
            error.message
        )


def test_an_mdat_running_to_the_end_of_the_file_is_held_to_the_sample_tables(
    tmp_path: Path,
) -> None:
    mdat = the_box(AAC, "mdat")
    to_the_end = with_word(AAC, mdat.start, 0)  # size 0: "the rest of the file"
    check_mp4(tmp_path, to_the_end)
    error = mp4_integrity_error(tmp_path, to_the_end[:-1])
    assert f"track 1: samples run to byte {len(AAC)}, {len(AAC) - 1} present" in error.message


def test_a_dash_stream_missing_its_last_segment_fails_against_the_manifests_duration(
    tmp_path: Path,
) -> None:
    error = mp4_integrity_error(tmp_path, b"".join(DASH_PARTS[:-1]), DASH_SECONDS)
    assert "the fragments hold 3.168 s of the 4.000 s the manifest announces" in error.message


def test_a_dash_stream_missing_a_middle_segment_fails_integrity_error(tmp_path: Path) -> None:
    init, first, _second, third, fourth = DASH_PARTS
    error = mp4_integrity_error(tmp_path, init + first + third + fourth)
    assert "track 1 jumps from time 50688 to 101376" in error.message
    assert "a fragment is missing" in error.message


def test_a_segment_cut_inside_a_dash_stream_fails_integrity_error(tmp_path: Path) -> None:
    init, first, second, third, fourth = DASH_PARTS
    cuts = cuts_at_and_inside_every_box(second)
    for cut in cuts:
        mp4_integrity_error(tmp_path, init + first + second[:cut] + third + fourth, DASH_SECONDS)


def test_a_segment_without_its_mdat_fails_integrity_error(tmp_path: Path) -> None:
    init, *segments = DASH_PARTS
    last = segments[-1]
    without_mdat = last[: the_box(last, "mdat").start]
    error = mp4_integrity_error(tmp_path, init + b"".join(segments[:-1]) + without_mdat)
    assert "indexes bytes up to" in error.message  # its sidx promised the moof and the mdat


HUGE_COUNTS = {
    # (file, box, offset of the count in the box payload, width of the count)
    "stsz sample count": (AAC, "stsz", 8, 4),
    "stco chunk count": (AAC, "stco", 4, 4),
    "stsc row count": (AAC, "stsc", 4, 4),
    "stts row count": (AAC, "stts", 4, 4),
    "trun sample count": (DASH, "trun", 4, 4),
    "sidx reference count": (DASH, "sidx", 30, 2),
}


@pytest.mark.parametrize("table", HUGE_COUNTS)
def test_a_table_claiming_more_rows_than_its_box_holds_fails_without_reading_them(
    tmp_path: Path, table: str
) -> None:
    data, kind, at, width = HUGE_COUNTS[table]
    box = the_box(data, kind)
    huge = (1 << (8 * width)) - 1
    # Were the rows allocated (16 GiB for 2^32 stsz entries), this would die of MemoryError.
    error = mp4_integrity_error(tmp_path, with_word(data, box.payload_start + at, huge, width))
    assert f"box '{kind}' at byte {box.start} claims {huge} rows, room for" in error.message


def test_a_moov_above_the_cap_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moov = the_box(AAC, "moov")
    monkeypatch.setattr(dlqd.integrity, "MAX_MOOV_BYTES", moov.end - moov.start - 1)
    error = mp4_integrity_error(tmp_path, AAC)
    assert f"box 'moov' at byte {moov.start} is {moov.end - moov.start} bytes, more than" in (
        error.message
    )


def test_a_file_of_too_many_boxes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dlqd.integrity, "MAX_STEPS", 1000)
    check_mp4(tmp_path, AAC + b"\0\0\0\x08free" * 100)
    error = mp4_integrity_error(tmp_path, AAC + b"\0\0\0\x08free" * 1000)
    assert "more than 1000 boxes and table rows to walk" in error.message


BOX_STARTS = sorted({box.start for data in (AAC, DASH) for box in every_box(data)})


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(sorted(MP4_FILES)),
    changes=st.lists(
        st.tuples(
            st.sampled_from(BOX_STARTS), st.integers(0, 48), st.binary(min_size=1, max_size=8)
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_damaged_mp4_boxes_pass_or_fail_integrity_error_never_anything_else(
    tmp_path: Path, name: str, changes: list[tuple[int, int, bytes]]
) -> None:
    data, seconds = MP4_FILES[name]
    for box_start, into, patch in changes:  # in a box's header and first fields
        at = box_start + into
        data = data[:at] + patch + data[at + len(patch) :]
    try:
        check_mp4(tmp_path, data, seconds)
    except DlqdError as exc:
        assert exc.code == ErrorCode.INTEGRITY_ERROR, exc


@dataclass
class CountingFile:
    """A file opened for the check, counting the bytes the check reads from it."""

    file: BinaryIO
    bytes_read: int = 0

    def read(self, count: int = -1) -> bytes:
        data = self.file.read(count)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.file.close()


@pytest.mark.parametrize("name", MP4_FILES)
def test_the_mp4_check_reads_the_boxes_never_the_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    data, seconds = MP4_FILES[name]
    opened: list[CountingFile] = []

    def counting_open(path: Path, mode: str) -> CountingFile:
        opened.append(CountingFile(path.open(mode)))
        return opened[-1]

    monkeypatch.setattr(dlqd.integrity, "open_beneath", counting_open)
    check_mp4(tmp_path, data, seconds)
    audio_bytes = sum(box.end - box.payload_start for box in boxes_in(data) if box.kind == "mdat")
    (file,) = opened
    assert file.bytes_read <= len(data) - audio_bytes + 16 * len(boxes_in(data))
    assert file.bytes_read < audio_bytes / 10


# --- fetch: the cap and the free-space floor over real HTTP -----------------------------


@pytest.fixture(scope="module")
def big_track(catalog: Catalog) -> int:
    """A 6 MB FLAC track, added to the session catalog."""
    return catalog.album(catalog.add_album(1, 6_000_000)).track_ids[0]


@pytest.fixture
async def source(upstream: CatalogServer) -> AsyncIterator[Source]:
    client = Source([upstream.base_url], upstream.cover_base_url, 2.0, 2.0, "dlqd-test")
    yield client
    await client.aclose()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    tmp = tmp_path / "library" / ".dlqd-tmp"
    tmp.mkdir(parents=True)
    return tmp / "track.part"


class ShrinkingDisk:
    """A free-space probe: plenty of room until `dest` holds `full_after` bytes, then none."""

    def __init__(self, dest: Path, full_after: int) -> None:
        self.dest = dest
        self.full_after = full_after
        self.probed_at: list[int] = []  # bytes in dest at each probe

    def __call__(self, path: Path) -> int:
        assert path == self.dest.parent
        written = self.dest.stat().st_size
        self.probed_at.append(written)
        return 10 * 1024 * MIB if written < self.full_after else 5 * MIB


async def test_free_space_floor_is_checked_while_writing_and_stops_the_transfer(
    source: Source, upstream: CatalogServer, big_track: int, dest: Path
) -> None:
    disk = ShrinkingDisk(dest, full_after=2 * MIB)
    floor = FreeSpaceFloor(min_free_mb=100, check_every_bytes=MIB, free_bytes=disk)
    plan = await source.media_plan(big_track, "LOSSLESS")
    with pytest.raises(DlqdError) as caught:
        await fetch(source, plan, dest, floor=floor)
    assert caught.value.code == ErrorCode.DISK_FULL
    assert "below limits.min_free_mb = 100" in caught.value.message
    assert disk.probed_at[-1] >= 2 * MIB  # it stopped at the first probe past the drop...
    assert dest.stat().st_size <= disk.probed_at[-1] + MIB  # ...after at most one more block
    assert len(upstream.requests_for("media")) == 1  # the disk, not the URL: no other mirror


async def test_free_space_is_probed_once_per_interval_not_per_read(
    source: Source, catalog: Catalog, big_track: int, dest: Path
) -> None:
    interval = 2 * MIB  # a network read is at most 1 MiB (dlqd.transfer.BUFFER_BYTES)
    disk = ShrinkingDisk(dest, full_after=10**12)
    floor = FreeSpaceFloor(min_free_mb=100, check_every_bytes=interval, free_bytes=disk)
    plan = await source.media_plan(big_track, "LOSSLESS")
    result = await fetch(source, plan, dest, floor=floor)
    assert dest.read_bytes() == catalog.audio_for(big_track, "LOSSLESS")
    gaps = [b - a for a, b in itertools.pairwise([0, *disk.probed_at])]
    assert all(gap >= interval for gap in gaps)
    assert len(gaps) >= result.total // interval - 1 >= 1


async def test_a_body_of_exactly_the_cap_completes_and_one_byte_less_is_refused(
    source: Source, catalog: Catalog, dest: Path
) -> None:
    expected = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    await fetch(source, plan, dest, max_bytes=len(expected))
    assert dest.read_bytes() == expected
    with pytest.raises(DlqdError) as caught:
        await fetch(source, plan, dest, max_bytes=len(expected) - 1, resume=False)
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE
    assert "limits.max_track_mb" in caught.value.message


async def test_dash_segments_count_together_against_the_cap(
    source: Source, catalog: Catalog, upstream: CatalogServer, dest: Path
) -> None:
    parts = catalog.media_parts(DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS")
    cap = sum(len(p) for p in parts[:-1]) + 10  # every segment fits; their sum does not
    assert all(len(p) <= cap for p in parts)
    plan = await source.media_plan(DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS")
    with pytest.raises(DlqdError) as caught:
        await fetch(source, plan, dest, max_bytes=cap)
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE
    # The last segment announced a length past the cap: none of it was written.
    assert dest.read_bytes() == b"".join(parts[:-1])


async def test_a_resumed_transfer_whose_total_is_above_the_cap_is_refused(
    source: Source, catalog: Catalog, upstream: CatalogServer, dest: Path
) -> None:
    expected = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    dest.write_bytes(expected[:5000])
    sidecar_path(dest).write_text(json.dumps({"etag": None, "total": len(expected)}))
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    with pytest.raises(DlqdError) as caught:
        # As if limits.max_track_mb was lowered before a restart.
        await fetch(source, plan, dest, max_bytes=len(expected) - 1)
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE
    ranges = [r.headers.get("range") for r in upstream.requests_for("media")]
    assert ranges == ["bytes=5000-", "bytes=5000-"]  # both mirrors answered 206 with that total
    assert dest.read_bytes() == expected[:5000]


# --- the daemon against a hostile upstream --------------------------------------------------


@dataclass
class CountingBody:
    """A media body made lazily in 64 KiB chunks (endless when `total` is None).

    `sent` counts the chunks the upstream's socket took; `done` is set once the
    server has dropped the body (the client hung up, or it all went out).
    """

    total: int | None = None
    sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def __iter__(self) -> Iterator[bytes]:
        try:
            while self.total is None or self.sent < self.total:
                yield CHUNK
                self.sent += len(CHUNK)
        finally:
            self.done.set()


@dataclass
class HostileMedia:
    """A `Responder` for the media route that hands out a fresh `CountingBody` per request."""

    headers: dict[str, str]
    total: int | None = None
    bodies: list[CountingBody] = field(default_factory=list)

    def __call__(self, _request: RequestRecord, _data: dict[str, Any] | None) -> Scripted:
        body = CountingBody(self.total)
        self.bodies.append(body)
        return Scripted(200, {"Content-Type": "audio/flac", **self.headers}, body)

    def wait_dropped(self) -> None:
        wait_until(lambda: all(b.done.is_set() for b in self.bodies), what="bodies dropped")


def start_with_jobs(
    daemon: DaemonProcess, catalog: Catalog, hostile_track: int, quality: str = "LOSSLESS"
) -> tuple[str, str, dict[str, str]]:
    """Start `daemon`, submit the hostile track and an innocent one-track album alongside.

    Returns both job ids and the `outside_snapshot` taken once the daemon was up.
    """
    innocent_album = catalog.add_album(1, 200_000)
    daemon.start()
    before = outside_snapshot(daemon)
    hostile = daemon.submit("track", hostile_track, quality)
    innocent = daemon.submit("album", innocent_album)
    return hostile, innocent, before


def failed_track(daemon: DaemonProcess, hostile_job: str, code: str) -> dict[str, Any]:
    """The hostile job's one track, once the job has failed with `code` on that track."""
    job = daemon.wait_job(hostile_job)
    assert job["status"] == "failed", job
    (track,) = job["tracks"]
    assert track["error"]["code"] == code, track
    return track


MAX_TRACK_MB = 2
# What the loopback socket buffers may hold past the cap when the daemon hangs up.
SOCKET_SLACK = 16 * MIB


def test_an_endless_media_body_fails_upstream_bad_response_at_max_track_mb(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    hostile_media = HostileMedia(headers={})
    upstream.script("media", hostile_media, track_id=SINGLE_TRACK_ID)
    daemon = make_daemon(upstream=upstream, settings={"limits": {"max_track_mb": MAX_TRACK_MB}})
    hostile, innocent, before = start_with_jobs(daemon, catalog, SINGLE_TRACK_ID)

    track = failed_track(daemon, hostile, "UPSTREAM_BAD_RESPONSE")
    assert "limits.max_track_mb" in track["error"]["message"]
    assert track["attempts"] == 1  # permanent: not retried
    hostile_media.wait_dropped()
    assert 1 <= len(hostile_media.bodies) <= 2  # each mirror of the manifest, once
    for body in hostile_media.bodies:
        assert MAX_TRACK_MB * MIB <= body.sent <= MAX_TRACK_MB * MIB + SOCKET_SLACK
    assert_unharmed(daemon, innocent, before, hostile_job=hostile)


def test_a_content_length_above_max_track_mb_is_refused_before_the_body(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    announced = 64 * MIB
    hostile_media = HostileMedia(headers={"Content-Length": str(announced)}, total=announced)
    upstream.script("media", hostile_media, track_id=SINGLE_TRACK_ID)
    daemon = make_daemon(upstream=upstream, settings={"limits": {"max_track_mb": MAX_TRACK_MB}})
    hostile, innocent, before = start_with_jobs(daemon, catalog, SINGLE_TRACK_ID)

    track = failed_track(daemon, hostile, "UPSTREAM_BAD_RESPONSE")
    assert "limits.max_track_mb" in track["error"]["message"]
    hostile_media.wait_dropped()
    for body in hostile_media.bodies:
        assert body.sent < SOCKET_SLACK < announced  # only what the socket buffers swallowed
    assert_unharmed(daemon, innocent, before, hostile_job=hostile)


@pytest.mark.parametrize("cut", ["inside a frame", "at a frame boundary"])
def test_a_flac_cut_short_by_a_lying_content_length_fails_integrity_error_after_retries(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog, single_flac: Flac, cut: str
) -> None:
    data = single_flac.data
    length = int(len(data) * 0.7) if cut == "inside a frame" else single_flac.frame_starts[10]
    assert (length in single_flac.frame_starts) == (cut == "at a frame boundary")

    def lying(_request: RequestRecord, _data: dict[str, Any] | None) -> Scripted:
        return Scripted(
            200, {"Content-Type": "audio/flac", "Content-Length": str(length)}, data[:length]
        )

    upstream.script("media", lying, track_id=SINGLE_TRACK_ID)
    settings = {"worker": {"max_retries": 1, "backoff_s": [0.05]}}
    daemon = make_daemon(upstream=upstream, settings=settings)
    hostile, innocent, before = start_with_jobs(daemon, catalog, SINGLE_TRACK_ID)

    track = failed_track(daemon, hostile, "INTEGRITY_ERROR")
    assert "FLAC stream cut short" in track["error"]["message"]
    assert track["attempts"] == 2  # transient: retried max_retries times
    assert track["path"] is None
    assert_unharmed(daemon, innocent, before, hostile_job=hostile)


# --- the daemon against an upstream that cuts MP4s short ------------------------------------

RETRYING = {"worker": {"max_retries": 1, "backoff_s": [0.05]}}


def mdat_payloads(data: bytes) -> list[bytes]:
    return [data[box.payload_start : box.end] for box in boxes_in(data) if box.kind == "mdat"]


def mp4_files(library: Path) -> list[Path]:
    return sorted(library.rglob("*.m4a"))


@pytest.mark.parametrize("fault", ["truncate", "truncate_chunked"])
def test_an_aac_track_cut_by_a_lying_server_is_retried_and_completes_when_the_fault_clears(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog, fault: str
) -> None:
    upstream.inject("media", fault, times=1, track_id=AAC_ONLY_TRACK_ID)
    daemon = make_daemon(upstream=upstream, settings=RETRYING)
    daemon.start()
    job = daemon.wait_job(daemon.submit("track", AAC_ONLY_TRACK_ID, "HIGH"))

    assert job["status"] == "completed", job
    (track,) = job["tracks"]
    assert track["attempts"] == 2  # the cut file passed the transfer, not the check
    assert len(upstream.requests_for("media", track_id=AAC_ONLY_TRACK_ID)) == 2
    (path,) = mp4_files(daemon.library)
    upstream_audio = catalog.audio_for(AAC_ONLY_TRACK_ID, "HIGH")
    assert mdat_payloads(path.read_bytes()) == mdat_payloads(upstream_audio)


@pytest.mark.parametrize("fault", ["truncate", "truncate_chunked"])
def test_an_aac_track_cut_on_every_try_fails_integrity_error_and_never_reaches_the_library(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog, fault: str
) -> None:
    upstream.inject("media", fault, times=None, track_id=AAC_ONLY_TRACK_ID)
    daemon = make_daemon(upstream=upstream, settings=RETRYING)
    hostile, innocent, before = start_with_jobs(daemon, catalog, AAC_ONLY_TRACK_ID, "HIGH")

    track = failed_track(daemon, hostile, "INTEGRITY_ERROR")
    assert track["error"]["message"].startswith("MP4 truncated: box 'mdat'")
    assert track["attempts"] == 2  # transient: retried max_retries times
    assert track["path"] is None
    assert mp4_files(daemon.library) == []
    assert_unharmed(daemon, innocent, before, hostile_job=hostile)


@pytest.mark.parametrize(
    ("segment", "fault"),
    [("2", "truncate"), ("4", "truncate_chunked"), ("3", "short")],
    ids=["a middle segment, lying length", "the last segment, chunked", "a short body"],
)
def test_a_dash_track_with_a_cut_segment_is_retried_and_completes_when_the_fault_clears(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog, segment: str, fault: str
) -> None:
    upstream.inject(
        "media", fault, times=1, track_id=DASH_TIMELINE_TRACK_ID, path_contains=f"/{segment}.m4s"
    )
    daemon = make_daemon(upstream=upstream, settings=RETRYING)
    daemon.start()
    job = daemon.wait_job(daemon.submit("track", DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS"))

    assert job["status"] == "completed", job
    (track,) = job["tracks"]
    assert track["attempts"] == 2
    (path,) = mp4_files(daemon.library)
    assert path.read_bytes().endswith(b"".join(audio.dash_segments()))


def test_a_dash_track_whose_last_segment_is_always_cut_fails_integrity_error(
    make_daemon: Any, upstream: CatalogServer, catalog: Catalog
) -> None:
    upstream.inject(
        "media", "truncate", times=None, track_id=DASH_TIMELINE_TRACK_ID, path_contains="/4.m4s"
    )
    daemon = make_daemon(upstream=upstream, settings=RETRYING)
    hostile, innocent, before = start_with_jobs(
        daemon, catalog, DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS"
    )

    track = failed_track(daemon, hostile, "INTEGRITY_ERROR")
    assert track["error"]["message"].startswith("MP4 truncated: box 'mdat'")
    assert track["attempts"] == 2
    assert mp4_files(daemon.library) == []
    assert_unharmed(daemon, innocent, before, hostile_job=hostile)


@dataclass
class WithoutLastSegment:
    """A `Responder` for the track route: the real answer, its MPD's timeline one segment short."""

    answered: int = 0

    def __call__(self, _request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        assert data is not None
        mpd = base64.b64decode(data["manifest"]).decode()
        last = f'<S d="{audio.DASH_SEGMENT_DURATIONS[-1]}"/></SegmentTimeline>'
        assert last in mpd
        short = mpd.replace(last, "</SegmentTimeline>")  # mediaPresentationDuration unchanged
        data["manifest"] = base64.b64encode(short.encode()).decode()
        self.answered += 1
        body = json.dumps({"version": "2.0", "data": data}).encode()
        return Scripted(200, {"Content-Type": "application/json"}, body)


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
def test_a_dash_segment_list_missing_its_last_segment_is_caught_by_the_manifests_duration(
    make_daemon: Any, upstream: CatalogServer, times: int | None
) -> None:
    short_manifest = WithoutLastSegment()
    upstream.script("track", short_manifest, times, track_id=DASH_TIMELINE_TRACK_ID)
    daemon = make_daemon(upstream=upstream, settings=RETRYING)
    daemon.start()
    job = daemon.wait_job(daemon.submit("track", DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS"))

    (track,) = job["tracks"]
    assert track["attempts"] == 2
    assert short_manifest.answered == (1 if times else 2)
    segments = [r.path for r in upstream.requests_for("media", track_id=DASH_TIMELINE_TRACK_ID)]
    assert sum(path.endswith("/4.m4s") for path in segments) == (1 if times else 0)
    if times:
        assert job["status"] == "completed", job
        (path,) = mp4_files(daemon.library)
        assert path.read_bytes().endswith(b"".join(audio.dash_segments()))
    else:
        assert job["status"] == "failed", job
        assert track["error"]["code"] == "INTEGRITY_ERROR"
        assert "of the 4.000 s the manifest announces" in track["error"]["message"]
        assert mp4_files(daemon.library) == []
