"""The stable error codes of DESIGN §5, importable without any third-party package.

dlqctl and the protocol module need the codes but must stay light (no httpx,
no trio), so they live here; `dlqd.errors` adds the exception and the mappings.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # Client errors: answered on the control socket, change nothing.
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    MALFORMED_FRAME = "MALFORMED_FRAME"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    NOT_FOUND = "NOT_FOUND"
    INVALID_STATE = "INVALID_STATE"
    QUEUE_FULL = "QUEUE_FULL"
    RATE_LIMITED = "RATE_LIMITED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    JOURNAL_UNAVAILABLE = "JOURNAL_UNAVAILABLE"
    # Job and track errors: recorded on the job.
    UPSTREAM_NOT_FOUND = "UPSTREAM_NOT_FOUND"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED"
    UPSTREAM_BAD_RESPONSE = "UPSTREAM_BAD_RESPONSE"
    NETWORK_ERROR = "NETWORK_ERROR"
    TIMEOUT = "TIMEOUT"
    INTEGRITY_ERROR = "INTEGRITY_ERROR"
    DISK_FULL = "DISK_FULL"
    FILESYSTEM_ERROR = "FILESYSTEM_ERROR"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    TAGGING_FAILED = "TAGGING_FAILED"
    CANCELLED = "CANCELLED"
    # Not in DESIGN §5: a bug in dlqd itself, recorded on the track instead of
    # taking the daemon down (docs/protocol.md).
    INTERNAL_ERROR = "INTERNAL_ERROR"


# Retried with backoff; every other job error fails the track at once.
# INTEGRITY_ERROR is retried too (a short body is usually a broken connection),
# and becomes permanent once the retries are spent.
TRANSIENT_CODES = frozenset(
    {
        ErrorCode.UPSTREAM_UNAVAILABLE,
        ErrorCode.UPSTREAM_RATE_LIMITED,
        ErrorCode.NETWORK_ERROR,
        ErrorCode.TIMEOUT,
        ErrorCode.INTEGRITY_ERROR,
    }
)

# Transient failures a later pass can cure (the upstream or the network comes
# back): a track out of retries on one of these is deferred, not failed
# (worker.requeue_after_s, worker.max_passes). A body that keeps arriving
# broken is not one: INTEGRITY_ERROR after its retries is permanent.
DEFERRABLE_CODES = TRANSIENT_CODES - {ErrorCode.INTEGRITY_ERROR}

# The upstream's final answer about a track, not a passing fault: a `retry`
# asks the same question and, unless the catalog changes, gets the same
# answer (not found; an encrypted stream or a preview). `retry` warns.
PERMANENT_CODES = frozenset({ErrorCode.UPSTREAM_NOT_FOUND, ErrorCode.UNSUPPORTED_FORMAT})
