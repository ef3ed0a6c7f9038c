"""The store's writer: group commit and compaction under a failing disk (trio, real files)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import trio

from dlqd.errors import ErrorCode
from dlqd.journal import (
    MAX_RECORD_BYTES,
    RECORD_HEADER,
    JournalFiles,
    UnencodableRecord,
    encode_record,
)
from dlqd.store import RecordRefused, Store
from tests.test_journal import submit_event


async def test_concurrent_commits_share_fsyncs_and_all_survive_recovery(tmp_path: Path) -> None:
    files = JournalFiles(tmp_path)
    state, _ = files.recover()
    store = Store(files, state, compact_bytes=1 << 30)
    fsyncs = 0
    append = files.append

    def counting_append(data: bytes) -> None:
        nonlocal fsyncs
        fsyncs += 1
        append(data)

    files.append = counting_append  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        async with trio.open_nursery() as clients:
            for n in range(1, 201):
                clients.start_soon(store.commit, submit_event(n))
        nursery.cancel_scope.cancel()
    files.close()

    assert fsyncs < 200  # commits arriving together shared a write + fsync
    recovered, report = JournalFiles(tmp_path).recover()
    assert sorted(recovered.jobs, key=int) == [str(n) for n in range(1, 201)]
    assert report.replayed_records == 200


async def test_a_failed_compaction_waits_for_another_compact_bytes_before_retrying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = JournalFiles(tmp_path)
    state, _ = files.recover()
    store = Store(files, state, compact_bytes=2000)
    attempts: list[int] = []

    def disk_full(snapshot: dict[str, Any], first_segment: int) -> int:
        attempts.append(first_segment)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "write_snapshot", disk_full)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for n in range(1, 201):  # one commit at a time: one batch each
            await store.commit(submit_event(n))
        nursery.cancel_scope.cancel()
    journal_bytes = store.files.journal_bytes
    files.close()

    assert attempts, "compaction was never attempted"
    assert len(attempts) <= journal_bytes // 2000 + 1  # not once per batch
    recovered, _ = JournalFiles(tmp_path).recover()
    assert len(recovered.jobs) == 200  # nothing lost to the failed snapshots


@pytest.mark.parametrize(
    "poison",
    [
        {"title": "\ud800"},  # a lone surrogate: not UTF-8
        {"target_id": 2**70},  # beyond msgpack's 64-bit integers
        {"target_id": -(2**64)},
        {"title": "x" * (MAX_RECORD_BYTES + 1)},  # larger than recovery reads back
    ],
    ids=["lone-surrogate", "int-2^70", "int--2^64", "oversized"],
)
async def test_a_record_that_cannot_be_encoded_is_refused_and_changes_nothing(
    tmp_path: Path, poison: dict[str, Any]
) -> None:
    files = JournalFiles(tmp_path)
    state, _ = files.recover()
    store = Store(files, state, compact_bytes=1 << 30)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.commit(submit_event(1))
        journal_bytes = store.files.journal_bytes
        with pytest.raises(RecordRefused) as refused:
            await store.commit(submit_event(2), {**submit_event(3), **poison})
        assert refused.value.code == ErrorCode.INVALID_ARGUMENT
        assert sorted(store.state.jobs) == ["1"]  # neither event of the call applied
        assert store.state.next_seq == 2
        assert store.files.journal_bytes == journal_bytes
        await store.commit(submit_event(4))  # the store goes on
        nursery.cancel_scope.cancel()
    files.close()

    recovered, _ = JournalFiles(tmp_path).recover()
    assert sorted(recovered.jobs) == ["1", "4"]


def test_the_largest_record_written_is_the_largest_read_back(tmp_path: Path) -> None:
    event = submit_event(1)
    overhead = len(encode_record({**event, "title": ""})) - RECORD_HEADER.size
    largest = {**event, "title": "x" * (MAX_RECORD_BYTES - overhead - 4)}
    while len(encode_record(largest)) - RECORD_HEADER.size < MAX_RECORD_BYTES:
        largest["title"] += "x"
    files = JournalFiles(tmp_path)
    files.recover()
    files.append(encode_record(largest))
    files.close()
    with pytest.raises(UnencodableRecord):
        encode_record({**largest, "title": largest["title"] + "x"})

    recovered, report = JournalFiles(tmp_path).recover()
    assert report.replayed_records == 1 and report.truncated_bytes == 0
    assert "1" in recovered.jobs
