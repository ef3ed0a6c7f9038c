"""Warnings when the queue grows long: `limits.warn_active_jobs` (by default 100 and 500).

Owns when the operator hears about a long queue: one warning line each time
the active jobs (queued, paused, processing) reach a threshold from below,
and a note in `health` while they are at or above one. A long queue is not
a fault — `limits.max_queue` refuses what does not fit — so the note never
makes `health` fail. A threshold warns again only after the queue fell back
under `REARM_SHARE` of it, so a queue hovering at 100 does not log a line
per job. This module only reads the queue's size; it never changes the
queue and never refuses anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

log = structlog.get_logger("dlqd.backlog")

REARM_SHARE = 0.9  # a threshold warns again once the queue fell under 90% of it


class BacklogWarnings:
    """The warning thresholds and which of them have warned since the queue last fell back."""

    def __init__(self, thresholds: Iterable[int], active_jobs: Callable[[], int]):
        self.thresholds = tuple(sorted(set(thresholds)))
        self._active_jobs = active_jobs
        self._warned: set[int] = set()

    def observe(self, _event: Mapping[str, Any] | None = None) -> None:
        """Warn for each threshold the active jobs just reached; re-arm those left behind.

        Called at start-up and after each durable change (a store commit listener).
        """
        count = self._active_jobs()
        for threshold in self.thresholds:
            if count >= threshold and threshold not in self._warned:
                self._warned.add(threshold)
                log.warning(
                    "many active jobs: the queue reached a warning threshold",
                    active_jobs=count,
                    threshold=threshold,
                    setting="limits.warn_active_jobs",
                )
            elif count < threshold * REARM_SHARE:
                self._warned.discard(threshold)

    def check(self) -> dict[str, Any]:
        """The `health` check `active_jobs`: always ok; a `note` at or above a threshold."""
        count = self._active_jobs()
        check: dict[str, Any] = {"ok": True, "active_jobs": count, "warn_at": list(self.thresholds)}
        reached = [threshold for threshold in self.thresholds if count >= threshold]
        if reached:
            check["note"] = (
                f"{count} active jobs, at or above the warning threshold of {reached[-1]} "
                "(limits.warn_active_jobs)"
            )
        return check
