"""The on-disk journal (docs/journal.md): appends, recovery, torn tails, corruption, compaction.

Unit tests of `JournalFiles` on a real directory, no daemon: what start-up
rebuilds from whatever bytes a crash left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlqd.journal import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    SNAPSHOT_HEADER,
    JournalCorrupt,
    JournalFiles,
    encode_record,
    list_segments,
    segment_path,
)
from dlqd.state import QueueState, apply, to_snapshot


def submit_event(n: int) -> dict:
    return {
        "e": "submit",
        "id": str(n),
        "type": "track",
        "target_id": n,
        "quality": "LOSSLESS",
        "priority": "normal",
        "at": 1_700_000_000.0 + n,
    }


def write_jobs(state_dir: Path, count: int, per_batch: int = 1, start: int = 1) -> list[int]:
    """Append `count` submit records; returns each record's end offset in the segment."""
    files = JournalFiles(state_dir)
    files.recover()
    ends = []
    batch: list[bytes] = []
    for n in range(start, start + count):
        batch.append(encode_record(submit_event(n)))
        if len(batch) == per_batch:
            files.append(b"".join(batch))
            batch = []
        ends.append(files.segment_offset + sum(len(b) for b in batch))
    if batch:
        files.append(b"".join(batch))
    files.close()
    return ends


def recover(state_dir: Path) -> tuple[QueueState, object]:
    files = JournalFiles(state_dir)
    try:
        return files.recover()
    finally:
        files.close()


def only_segment(state_dir: Path) -> Path:
    (number,) = list_segments(state_dir / "journal")
    return segment_path(state_dir / "journal", number)


def cut(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_appended_records_come_back_after_recovery(tmp_path: Path) -> None:
    write_jobs(tmp_path, 10, per_batch=3)
    state, report = recover(tmp_path)
    assert list(state.jobs) == [str(n) for n in range(1, 11)]
    assert report.replayed_records == 10
    assert report.truncated_bytes == 0
    assert report.segments == [1]


def test_a_new_state_dir_gets_one_segment_with_only_a_header(tmp_path: Path) -> None:
    state, _ = recover(tmp_path)
    assert state.jobs == {}
    assert only_segment(tmp_path).stat().st_size == SEGMENT_HEADER.size


def test_recovery_reopens_the_newest_segment_for_more_appends(tmp_path: Path) -> None:
    write_jobs(tmp_path, 3)
    write_jobs(tmp_path, 3, start=4)
    state, _ = recover(tmp_path)
    assert len(state.jobs) == 6
    assert list_segments(tmp_path / "journal") == [1]


@pytest.mark.parametrize("missing", [1, 5, RECORD_HEADER.size - 1, RECORD_HEADER.size + 3])
def test_a_record_cut_short_at_the_end_is_a_torn_tail(tmp_path: Path, missing: int) -> None:
    ends = write_jobs(tmp_path, 5)
    segment = only_segment(tmp_path)
    last_record = ends[-1] - ends[-2]
    size = ends[-1] - min(missing, last_record - 1)
    cut(segment, size)
    state, report = recover(tmp_path)
    assert list(state.jobs) == ["1", "2", "3", "4"]
    assert (report.truncated_segment, report.truncated_bytes) == (1, size - ends[-2])
    assert segment.stat().st_size == ends[-2]  # the torn bytes are gone from disk
    # and appends continue after the last whole record
    write_jobs(tmp_path, 1, start=6)
    state, report = recover(tmp_path)
    assert list(state.jobs) == ["1", "2", "3", "4", "6"]
    assert report.truncated_bytes == 0


def test_a_record_header_cut_short_is_a_torn_tail(tmp_path: Path) -> None:
    ends = write_jobs(tmp_path, 3)
    segment = only_segment(tmp_path)
    cut(segment, ends[-2] + 3)  # 3 of the 8 header bytes of record 3
    state, report = recover(tmp_path)
    assert list(state.jobs) == ["1", "2"]
    assert (report.truncated_segment, report.truncated_bytes) == (1, 3)


def test_a_new_segment_with_its_header_cut_short_is_a_torn_tail(tmp_path: Path) -> None:
    write_jobs(tmp_path, 3)
    journal = tmp_path / "journal"
    segment_path(journal, 2).write_bytes(b"DLQJ\x00\x00")  # crash while rotating
    state, report = recover(tmp_path)
    assert list(state.jobs) == ["1", "2", "3"]
    assert (report.truncated_segment, report.truncated_bytes) == (2, 6)
    files = JournalFiles(tmp_path)
    files.recover()
    files.append(encode_record(submit_event(4)))  # the journal is writable again
    files.close()
    state, _ = recover(tmp_path)
    assert list(state.jobs) == ["1", "2", "3", "4"]


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    # A crash can leave a file extended but its new blocks never written.
    ends = write_jobs(tmp_path, 3)
    segment = only_segment(tmp_path)
    with open(segment, "ab") as handle:
        handle.write(bytes(300))
    state, report = recover(tmp_path)
    assert list(state.jobs) == ["1", "2", "3"]
    assert report.truncated_bytes == 300
    assert segment.stat().st_size == ends[-1]


def test_a_damaged_record_with_records_after_it_is_corruption(tmp_path: Path) -> None:
    ends = write_jobs(tmp_path, 5)
    segment = only_segment(tmp_path)
    flip_byte(segment, ends[1] + RECORD_HEADER.size + 4)  # inside record 3's body
    before = segment.read_bytes()
    with pytest.raises(JournalCorrupt, match=rf"{segment.name}.*byte {ends[1]}"):
        recover(tmp_path)
    assert segment.read_bytes() == before  # nothing cut: the operator decides


def test_a_damaged_length_field_in_the_middle_is_corruption_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    # A length pointing past the end looks like a record cut short; the intact
    # records after it show it is not.
    ends = write_jobs(tmp_path, 5)
    segment = only_segment(tmp_path)
    flip_byte(segment, ends[1])  # high byte of record 3's length
    with pytest.raises(JournalCorrupt, match=segment.name):
        recover(tmp_path)


def test_damage_in_an_older_segment_is_corruption_even_at_its_end(tmp_path: Path) -> None:
    ends = write_jobs(tmp_path, 3)
    files = JournalFiles(tmp_path)
    files.recover()
    files.rotate()
    files.append(encode_record(submit_event(4)))
    files.close()
    first = segment_path(tmp_path / "journal", 1)
    cut(first, ends[-1] - 2)
    with pytest.raises(JournalCorrupt, match=first.name):
        recover(tmp_path)


def test_a_bad_segment_header_is_corruption(tmp_path: Path) -> None:
    write_jobs(tmp_path, 2)
    flip_byte(only_segment(tmp_path), 0)
    with pytest.raises(JournalCorrupt, match="bad segment header"):
        recover(tmp_path)


def snapshot_of(jobs: int) -> tuple[QueueState, dict]:
    state = QueueState()
    for n in range(1, jobs + 1):
        apply(state, submit_event(n))
    return state, to_snapshot(state)


def test_rotate_and_snapshot_delete_the_covered_segments(tmp_path: Path) -> None:
    write_jobs(tmp_path, 4)
    files = JournalFiles(tmp_path)
    state, _ = files.recover()
    first = files.rotate()
    assert list_segments(tmp_path / "journal") == [1, 2]
    files.write_snapshot(to_snapshot(state), first)
    assert list_segments(tmp_path / "journal") == [2]
    assert files.journal_bytes == SEGMENT_HEADER.size
    files.append(encode_record(submit_event(5)))
    files.close()
    restored, report = recover(tmp_path)
    assert list(restored.jobs) == ["1", "2", "3", "4", "5"]
    assert (report.snapshot_jobs, report.replayed_records, report.segments) == (4, 1, [2])


def test_segments_older_than_the_snapshot_left_by_a_crash_are_removed(tmp_path: Path) -> None:
    write_jobs(tmp_path, 2)
    journal = tmp_path / "journal"
    kept = segment_path(journal, 1).read_bytes()
    files = JournalFiles(tmp_path)
    state, _ = files.recover()
    first = files.rotate()
    files.write_snapshot(to_snapshot(state), first)
    files.close()
    segment_path(journal, 1).write_bytes(kept)  # as if the crash came before the unlink
    restored, report = recover(tmp_path)
    assert list(restored.jobs) == ["1", "2"]  # not replayed twice
    assert report.replayed_records == 0
    assert list_segments(journal) == [2]


@pytest.mark.parametrize("where", ["header", "body", "cut"])
def test_a_damaged_snapshot_is_corruption(tmp_path: Path, where: str) -> None:
    _, snapshot = snapshot_of(3)
    files = JournalFiles(tmp_path)
    files.recover()
    files.write_snapshot(snapshot, files.rotate())
    files.close()
    path = tmp_path / "snapshot"
    if where == "header":
        flip_byte(path, 0)
    elif where == "body":
        flip_byte(path, SNAPSHOT_HEADER.size + 5)
    else:
        cut(path, path.stat().st_size - 1)
    with pytest.raises(JournalCorrupt, match="snapshot"):
        recover(tmp_path)


def test_a_failed_append_is_cut_back_and_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jobs(tmp_path, 2)
    files = JournalFiles(tmp_path)
    files.recover()
    before = files.segment_offset
    real_write = os.write

    def half_then_disk_full(fd: int, data: bytes) -> int:
        if len(data) > 8:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("dlqd.journal.os.write", half_then_disk_full)
    batch = encode_record(submit_event(3)) + encode_record(submit_event(4))
    with pytest.raises(OSError):
        files.append(batch)
    monkeypatch.undo()
    assert files.segment_offset == before
    assert only_segment(tmp_path).stat().st_size == before  # the half batch is gone
    files.append(encode_record(submit_event(5)))
    files.close()
    state, report = recover(tmp_path)
    assert list(state.jobs) == ["1", "2", "5"]
    assert report.truncated_bytes == 0


# --- property: a cut at any byte keeps exactly the whole records before it ------------


_JOURNAL_COUNT = 6


@pytest.fixture(scope="module")
def written_journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[int]]:
    state_dir = tmp_path_factory.mktemp("journal")
    ends = write_jobs(state_dir, _JOURNAL_COUNT, per_batch=2)
    return only_segment(state_dir).read_bytes(), ends


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_cutting_the_segment_at_any_byte_recovers_the_whole_records_before_the_cut(
    written_journal: tuple[bytes, list[int]], data: st.DataObject
) -> None:
    full, ends = written_journal
    size = data.draw(st.integers(0, len(full)), label="cut at")
    state_dir = Path(tempfile.mkdtemp(prefix="dlqd-journal-"))
    try:
        (state_dir / "journal").mkdir()
        segment_path(state_dir / "journal", 1).write_bytes(full[:size])
        state, report = recover(state_dir)
        whole = [n for n, end in enumerate(ends, start=1) if end <= size]
        assert list(state.jobs) == [str(n) for n in whole]
        if size < SEGMENT_HEADER.size:
            assert report.truncated_bytes == size
        else:
            last_end = max([SEGMENT_HEADER.size, *(e for e in ends if e <= size)])
            assert report.truncated_bytes == size - last_end
    finally:
        shutil.rmtree(state_dir)
