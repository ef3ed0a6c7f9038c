"""The live queue: in-memory state kept in step with the journal, with group commit.

`commit(event)` encodes the event's record first — an event that cannot be
encoded is refused with `RecordRefused` and changes nothing, in memory or on
disk — then applies it at once (so the next command already sees it) and
returns only when its record is fsynced; every command that arrives
while a write is in flight joins the next batch and shares its fsync. If a
batch cannot be made durable, every not-yet-durable event is dropped by
rebuilding the state from disk — the failed commands get JOURNAL_UNAVAILABLE
and nothing they did remains. Compaction (snapshot + fresh segment) starts by
itself when the journal passes `compact_bytes`.

This module never interprets events; `dlqd.state` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from dlqd.errors import DlqdError, ErrorCode
from dlqd.journal import JournalFiles, UnencodableRecord, encode_record
from dlqd.state import Event, QueueState, apply, recover_interrupted, to_snapshot

log = structlog.get_logger("dlqd.store")


class RecordRefused(DlqdError):
    """An event that cannot be journaled (see `encode_record`); nothing was changed."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            ErrorCode.INVALID_ARGUMENT,
            f"the change cannot be recorded in the journal ({reason}); nothing was changed",
        )


@dataclass
class _Batch:
    frames: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # the frames' events, for the watchers
    done: trio.Event = field(default_factory=trio.Event)
    error: OSError | None = None


class Store:
    """Owner of the live `QueueState` and the only caller of `JournalFiles` after start-up."""

    def __init__(self, files: JournalFiles, state: QueueState, compact_bytes: int):
        self.files = files
        self.state = state
        self.compact_bytes = compact_bytes
        # After a failed compaction (a full disk), wait for another compact_bytes of
        # journal before trying again, instead of starting a segment per batch.
        self._compact_at_bytes = compact_bytes
        self.compactions = 0
        self.failed_batches = 0
        self.writable = True
        self._pending = _Batch()
        self._io_lock = trio.Lock()  # one writer: batches, compaction, checkpoint
        self._wakeup = trio.Event()
        self._changed = trio.Event()
        self._watchers: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self._rebuild_listeners: list[Callable[[], None]] = []
        self._commit_listeners: list[Callable[[Event], None]] = []

    # --- writing ---------------------------------------------------------------

    async def commit(self, *events: Event) -> None:
        """Apply `events` and wait until they are durable (JOURNAL_UNAVAILABLE if not).

        Every record is encoded before any event applies, so `RecordRefused` leaves
        memory and disk as they were.
        """
        try:
            frames = [encode_record(event) for event in events]
        except UnencodableRecord as exc:
            raise RecordRefused(str(exc)) from None
        batch = self._pending
        for event in events:
            apply(self.state, event)
        batch.frames.extend(frames)
        batch.events.extend(events)
        self._wakeup.set()
        self._notify_changed()
        await batch.done.wait()
        if batch.error is not None:
            raise DlqdError(
                ErrorCode.JOURNAL_UNAVAILABLE,
                f"the journal could not be made durable ({batch.error.strerror or batch.error});"
                " nothing was changed",
            )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The single writer: one write + fsync per batch, compaction between batches."""
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            async with self._io_lock:
                if not await self._write(self._take_pending()):
                    continue
                if self.files.journal_bytes >= self._compact_at_bytes:
                    await self._compact()

    def _take_pending(self) -> _Batch:
        batch, self._pending = self._pending, _Batch()
        return batch

    async def _write(self, batch: _Batch) -> bool:
        if not batch.frames:
            batch.done.set()
            return True
        data = b"".join(batch.frames)
        try:
            await trio.to_thread.run_sync(self.files.append, data)
        except OSError as exc:
            self._fail(batch, exc)
            return False
        self.writable = True
        # Here, in journal order, and even when the committing task was cancelled while
        # it waited for the fsync: the commands' tasks wake in any order, or not at all.
        for event in batch.events:
            for listener in self._commit_listeners:
                listener(event)
            self.publish({"event": event["e"], **_public_fields(event)})
        batch.done.set()
        return True

    def _fail(self, batch: _Batch, exc: OSError) -> None:
        """Drop every event that is not durable: fail their commands, reload from disk.

        Runs without awaiting so no new event can slip in between the failure
        and the rebuilt state.
        """
        self.failed_batches += 1
        self.writable = False
        failed = [batch, self._take_pending()]
        log.error(
            "journal write failed; rolling back",
            error=str(exc),
            records=sum(len(b.frames) for b in failed),
        )
        reopened = JournalFiles(self.files.state_dir)
        try:
            fresh, _report = reopened.recover()
        except Exception:
            # Memory may now hold what the disk does not; only a restart's recovery
            # is trustworthy. Ending the daemon lets systemd restart it.
            log.critical("cannot re-read the journal after a failed write; exiting")
            raise
        self.files.close()
        self.files = reopened
        recover_interrupted(fresh)
        self.state.__dict__.update(fresh.__dict__)
        for failed_batch in failed:
            failed_batch.error = exc
            failed_batch.done.set()
        for listener in self._rebuild_listeners:
            listener()
        self._notify_changed()

    async def _compact(self) -> None:
        """Snapshot the state at a batch boundary, then start a fresh segment."""
        snapshot = to_snapshot(self.state)  # includes the pending batch, written next
        if not await self._write(self._take_pending()):
            return
        try:
            first_segment = await trio.to_thread.run_sync(self.files.rotate)
            size = await trio.to_thread.run_sync(self.files.write_snapshot, snapshot, first_segment)
        except OSError as exc:
            self._compact_at_bytes = self.files.journal_bytes + self.compact_bytes
            log.warning(
                "compaction failed; the journal keeps growing",
                error=str(exc),
                retry_at_journal_bytes=self._compact_at_bytes,
            )
            return
        self._compact_at_bytes = self.compact_bytes
        self.compactions += 1
        log.info("journal compacted", snapshot_bytes=size, jobs=len(self.state.jobs))

    async def checkpoint(self) -> None:
        """Compact now (at clean shutdown), so the next start-up reads one snapshot.

        Holds the writer lock: a batch still being written by `run` must reach
        the journal before the pending one, or replay would see them out of order.
        """
        async with self._io_lock:
            await self._compact()

    # --- observing -------------------------------------------------------------

    def on_rebuild(self, listener: Callable[[], None]) -> None:
        self._rebuild_listeners.append(listener)

    def on_commit(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` with each event once it is durable (metrics count these)."""
        self._commit_listeners.append(listener)

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def notify_changed(self) -> None:
        """For state held outside events (holds released, slots freed)."""
        self._notify_changed()

    @contextmanager
    def watching(self) -> Iterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """A channel of watch events for as long as the block runs."""
        send, receive = trio.open_memory_channel[dict[str, Any]](256)
        self._watchers.add(send)
        try:
            yield receive
        finally:
            self._watchers.discard(send)

    def publish(self, message: dict[str, Any]) -> None:
        """Send a watch event to every watcher; a watcher that lags loses events."""
        for send in list(self._watchers):
            try:
                send.send_nowait(message)
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._watchers.discard(send)

    def journal_stats(self) -> dict[str, Any]:
        return {
            "segment": self.files.segment_number,
            "journal_bytes": self.files.journal_bytes,
            "snapshot_bytes": self.files.snapshot_bytes(),
            "compact_bytes": self.compact_bytes,
            "compactions": self.compactions,
            "failed_batches": self.failed_batches,
            "writable": self.writable,
        }


def _public_fields(event: Event) -> dict[str, Any]:
    fields = {"job_id": event["id"]} if "id" in event else {}
    for key in ("status", "track_id", "outcome", "error"):
        if key in event:
            fields[key] = event[key]
    return fields
