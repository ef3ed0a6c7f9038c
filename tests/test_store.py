"""The store's writer: group commit and compaction under a failing disk (trio, real files)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import trio

from dlqd.journal import JournalFiles
from dlqd.store import Store
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
