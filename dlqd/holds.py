"""Why the queue is held: the one place that knows every reason no new track may start.

A hold has a reason (`user`, `upstream_unavailable`, `rate_limited`,
`library_unavailable`, `disk_full`), when it began, until when it is expected
to last (epoch seconds, or None when unknown) and a detail for the operator.
The `user` hold is the journaled `pause` of the whole queue; the others are
faults, found again after a restart, so they live in memory only. The
scheduler asks `blocking` before starting a track; `stats`, `health`, the
systemd status line and `watch` read `active()`. This module never decides
when a fault starts or ends — the upstream source and the library checks do —
and never does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dlqd.errors import DlqdError, ErrorCode


class HoldReason(StrEnum):
    USER = "user"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    RATE_LIMITED = "rate_limited"
    LIBRARY_UNAVAILABLE = "library_unavailable"
    DISK_FULL = "disk_full"


FAULT_REASONS = frozenset(HoldReason) - {HoldReason.USER}


@dataclass(frozen=True)
class Hold:
    reason: HoldReason
    since: float  # epoch seconds
    until: float | None  # epoch seconds; None: until a check says otherwise
    detail: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "reason": str(self.reason),
            "since": round(self.since, 3),
            "until": None if self.until is None else round(self.until, 3),
            "detail": self.detail,
        }


class QueueHeld(DlqdError):
    """Raised by a track's try when the fault it met holds the whole queue.

    The scheduler puts the track back to pending without counting the try, and
    keeps its partial file when `keep_partial` says the bytes are intact.
    """

    def __init__(self, reason: HoldReason, detail: str, *, keep_partial: bool = True) -> None:
        code = _CODES[reason]
        super().__init__(code, detail)
        self.reason = reason
        self.keep_partial = keep_partial

    @property
    def transient(self) -> bool:
        """Not retried with backoff: the track waits for the hold to end instead."""
        return False


_CODES = {
    HoldReason.USER: ErrorCode.CANCELLED,
    HoldReason.UPSTREAM_UNAVAILABLE: ErrorCode.UPSTREAM_UNAVAILABLE,
    HoldReason.RATE_LIMITED: ErrorCode.UPSTREAM_RATE_LIMITED,
    HoldReason.LIBRARY_UNAVAILABLE: ErrorCode.FILESYSTEM_ERROR,
    HoldReason.DISK_FULL: ErrorCode.DISK_FULL,
}


class Holds:
    """The active holds; `on_change` runs after every change (the scheduler wakes on it)."""

    def __init__(
        self,
        *,
        user_held: Callable[[], bool],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._user_held = user_held  # the journaled `pause`, read from the queue state
        self._on_change = on_change
        self._clock = clock
        self._faults: dict[HoldReason, Hold] = {}
        self._user_since: float | None = None

    def hold(self, reason: HoldReason, detail: str, *, until: float | None = None) -> None:
        """Start a fault hold, or update its detail and `until` (its `since` stays)."""
        if reason not in FAULT_REASONS:
            raise ValueError(f"{reason} is not a fault hold")
        current = self._faults.get(reason)
        since = current.since if current is not None else self._clock()
        updated = Hold(reason, since, until, detail)
        if updated != current:
            self._faults[reason] = updated
            self._on_change()

    def release(self, reason: HoldReason) -> None:
        if self._faults.pop(reason, None) is not None:
            self._on_change()

    def is_held(self, reason: HoldReason) -> bool:
        if reason == HoldReason.USER:
            return self._user_held()
        return reason in self._faults

    def faults(self) -> list[Hold]:
        return list(self._faults.values())

    def active(self) -> list[Hold]:
        """Every hold in force now, the user's first."""
        holds = self.faults()
        if self._user_held():
            if self._user_since is None:
                self._user_since = self._clock()
            holds.insert(0, Hold(HoldReason.USER, self._user_since, None, "paused by dlqctl pause"))
        else:
            self._user_since = None
        return holds

    @property
    def blocking(self) -> bool:
        """No new track may start."""
        return bool(self._faults) or self._user_held()
