"""What `dlqctl health` checks, each answer a dict with `ok` and the numbers behind it.

Checks only read: the scheduler's heartbeat, whether the journal can take a
record, free space against `limits.min_free_mb` (and the library's holds),
and what the upstream bases last did (as the upstream circuit counts it). A
check never repairs anything; `dlqd.commands.health` turns the dicts into the
protocol result (unhealthy when any `ok` is false).
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlqd.circuit import BaseReport
from dlqd.errors import redact_url
from dlqd.holds import Hold, HoldReason

# The scheduler wakes at least every 5 s even when idle; six missed wake-ups is a stuck loop.
HEARTBEAT_LIMIT_S = 30.0
_LIBRARY_HOLDS = (HoldReason.LIBRARY_UNAVAILABLE, HoldReason.DISK_FULL)


def scheduler_check(heartbeat_age_s: float) -> dict[str, Any]:
    return {
        "ok": heartbeat_age_s < HEARTBEAT_LIMIT_S,
        "heartbeat_age_s": round(heartbeat_age_s, 3),
        "limit_s": HEARTBEAT_LIMIT_S,
    }


def journal_check(journal_dir: Path, last_write_ok: bool) -> dict[str, Any]:
    """Bad when the last journal write failed or the directory cannot be written (EROFS, modes)."""
    writable = os.access(journal_dir, os.W_OK)
    check: dict[str, Any] = {
        "ok": last_write_ok and writable,
        "last_write_ok": last_write_ok,
        "dir_writable": writable,
        "path": str(journal_dir),
    }
    return check


def free_space_check(path: Path, min_free_mb: int) -> dict[str, Any]:
    try:
        free_mb = shutil.disk_usage(path).free // (1024 * 1024)
    except OSError as exc:
        return {"ok": False, "path": str(path), "error": exc.strerror or str(exc)}
    return {
        "ok": free_mb >= min_free_mb,
        "path": str(path),
        "free_mb": free_mb,
        "min_free_mb": min_free_mb,
    }


def library_space_check(path: Path, min_free_mb: int, faults: list[Hold]) -> dict[str, Any]:
    """`free_space_check` of the library, also bad while the library or its disk holds the queue.

    A full disk (ENOSPC) can hold the queue above the floor, and an unmounted
    share can leave a folder with room: the hold's detail says which.
    """
    check = free_space_check(path, min_free_mb)
    held = [f"{h.reason}: {h.detail}" for h in faults if h.reason in _LIBRARY_HOLDS]
    if held:
        check["ok"] = False
        check["held"] = held
    return check


def holds_check(faults: list[Hold]) -> dict[str, Any]:
    """Bad while a fault holds the queue (the upstream, the library or the disk).

    A `user` pause is the operator's choice, not a problem: it is not passed here.
    """
    return {"ok": not faults, "holds": [hold.to_wire() for hold in faults]}


def upstream_check(reports: dict[str, BaseReport], now: float | None = None) -> dict[str, Any]:
    """Bad when no base answered its latest request: each is down, or failing on its way there.

    It agrees with the circuit (`dlqd.circuit`): a base that is down shows when
    it is probed next. One failing base of several is a degradation failover
    handles, shown but not fatal.
    """
    now = time.time() if now is None else now
    # A base URL may carry credentials or a token (user:pass@, ?key=): shown redacted.
    bases = {redact_url(url): _describe_base(report, now) for url, report in reports.items()}
    answering = any(report.consecutive_failures == 0 for report in reports.values())
    return {"ok": answering, "bases": bases}


def _describe_base(report: BaseReport, now: float) -> dict[str, Any]:
    described: dict[str, Any] = {
        "last_success": _rfc3339(report.last_success),
        "last_failure": _rfc3339(report.last_failure),
        "consecutive_failures": report.consecutive_failures,
        "down": report.down,
    }
    if report.last_success is not None:
        described["last_success_age_s"] = round(now - report.last_success, 1)
    if report.last_failure is not None:
        described["last_failure_age_s"] = round(now - report.last_failure, 1)
        described["last_error"] = report.last_error
    if report.next_probe is not None:
        described["next_probe"] = _rfc3339(report.next_probe)
        described["next_probe_in_s"] = round(max(0.0, report.next_probe - now), 1)
    return described


def _rfc3339(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
