"""The stable error codes of DESIGN §5 and the one exception that carries them.

Every failure that reaches a client or a job record is a `DlqdError` with a code
from `ErrorCode`; whether it is retried is a property of the code, never parsed
from a message. The I/O edges translate foreign exceptions here, in one place:
`from_oserror` for the filesystem, `from_http_status` and `map_httpx_errors` for
the upstream. Nothing in this module does I/O.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from dlqd.codes import TRANSIENT_CODES, ErrorCode

__all__ = [
    "TRANSIENT_CODES",
    "DlqdError",
    "ErrorCode",
    "from_http_status",
    "from_oserror",
    "map_httpx_errors",
    "parse_retry_after",
    "redact_url",
]

# Decimal seconds, as RFC 9110 writes them (digits), leniently with a fraction
# or an exponent; never a sign, "inf" or "nan".
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?")


# Messages go into journal records, logs and client answers: bounded, and
# encodable whatever upstream text they quote.
MAX_MESSAGE_CHARS = 1000


class DlqdError(Exception):
    """A failure with a stable code; `retry_after` is the upstream's hint in seconds."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after: float | None = None):
        message = _recordable(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES

    def to_dict(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message}

    def __repr__(self) -> str:
        return f"DlqdError({self.code!s}, {self.message!r})"


def _recordable(message: str) -> str:
    """`message` with lone surrogates escaped (`\\ud800`) and cut to MAX_MESSAGE_CHARS."""
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= MAX_MESSAGE_CHARS else safe[: MAX_MESSAGE_CHARS - 1] + "…"


def redact_url(url: str) -> str:
    """`url` fit for a log line or an error message: no query, fragment or credentials.

    Signed media URLs carry their token in the query string (`?token=…`).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def from_oserror(exc: OSError, what: str) -> DlqdError:
    """Map a filesystem error to DISK_FULL or FILESYSTEM_ERROR."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DlqdError(ErrorCode.DISK_FULL, f"{what}: no space left on device")
    return DlqdError(ErrorCode.FILESYSTEM_ERROR, f"{what}: {exc.strerror or exc}")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    A date in the past is 0. Anything else — negative, non-finite, garbage —
    is None: ignored, as if the header were absent. Not capped here: the retry
    policy caps every delay it honours (`upstream.max_retry_after_s`).
    """
    text = (value or "").strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds)


def from_http_status(status: int, url: str, retry_after: str | None = None) -> DlqdError:
    """Map a non-2xx upstream status to its job error code; the message names `url` redacted."""
    where = redact_url(url)
    if status == 404:
        return DlqdError(ErrorCode.UPSTREAM_NOT_FOUND, f"{where}: not found (404)")
    if status == 429:
        return DlqdError(
            ErrorCode.UPSTREAM_RATE_LIMITED,
            f"{where}: rate limited (429)",
            retry_after=parse_retry_after(retry_after),
        )
    if status >= 500:
        # A 503's Retry-After says when the service is back (maintenance): honoured, capped.
        return DlqdError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"{where}: server error ({status})",
            retry_after=parse_retry_after(retry_after) if status == 503 else None,
        )
    return DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{where}: unexpected status {status}")


@contextmanager
def map_httpx_errors(url: str) -> Iterator[None]:
    """Translate httpx's exceptions into job errors, most specific first.

    Transport failures are worth retrying; every other request error (too
    many redirects, a URL httpx cannot use, a body it cannot decode) is the
    upstream answering something unusable. httpx's own text may quote the
    upstream (a Location header), so it is shown escaped and truncated.
    """
    where = redact_url(url)
    try:
        yield
    except httpx.TimeoutException as exc:
        raise DlqdError(ErrorCode.TIMEOUT, f"{where}: {type(exc).__name__}") from exc
    except httpx.UnsupportedProtocol as exc:
        raise DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{where}: {_describe(exc)}") from exc
    except httpx.RemoteProtocolError as exc:
        raise DlqdError(
            ErrorCode.NETWORK_ERROR, f"{where}: connection broken: {_describe(exc)}"
        ) from exc
    except httpx.TransportError as exc:
        raise DlqdError(ErrorCode.NETWORK_ERROR, f"{where}: {_describe(exc)}") from exc
    except (httpx.RequestError, httpx.InvalidURL) as exc:
        raise DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{where}: {_describe(exc)}") from exc


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:120]!r}"
