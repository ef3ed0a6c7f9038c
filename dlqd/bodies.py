"""Reading one upstream body into memory, bounded on the wire and once decoded.

Owns: the `Accept-Encoding` dlqd advertises for bodies it keeps in memory
(JSON and cover images), incremental decoding of those encodings, and the
byte caps. Every decoder step yields at most `DECODE_STEP_BYTES`, so a gzip
bomb costs at most the cap plus one step, never its inflated size. Never
parses what it reads and never retries; media bodies stream to disk
through dlqd.transfer instead, uncompressed.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import httpx

from dlqd.errors import DlqdError, ErrorCode, redact_url

# What metadata and cover requests accept. gzip and deflate cost nothing to
# decode within a cap; anything else the upstream sends is refused, since a
# decoder we did not ask for is one we cannot bound.
ACCEPT_ENCODING = "gzip, deflate"
DECODE_STEP_BYTES = 1 << 20

_ZLIB_WINDOW = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


async def read_capped(response: httpx.Response, url: str, cap_bytes: int, what: str) -> bytearray:
    """The whole body of a streamed `response`, decoded; `UPSTREAM_BAD_RESPONSE` past the cap.

    A bytearray, not a copy of it as bytes: near the cap that copy is 16 MiB.

    `cap_bytes` bounds both the bytes received and the bytes they decode to.
    The caller owns the response: leaving its `stream()` block early closes
    the connection, which is what happens on every error raised here.
    """
    where = redact_url(url)

    def too_large(form: str) -> DlqdError:
        return DlqdError(
            ErrorCode.UPSTREAM_BAD_RESPONSE, f"{where}: {what} larger than {cap_bytes} bytes {form}"
        )

    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap_bytes:
        raise too_large("on the wire")
    decoder = _decoder_for(response.headers.get("Content-Encoding", ""), where)
    received = 0
    body = bytearray()
    async for raw in response.aiter_raw():
        received += len(raw)
        if received > cap_bytes:
            raise too_large("on the wire")
        for piece in decoder.decode(raw):
            body += piece
            if len(body) > cap_bytes:
                raise too_large("once decompressed")
    decoder.finish()
    return body


class _Identity:
    def decode(self, data: bytes) -> Iterator[bytes]:
        yield data

    def finish(self) -> None:
        pass


class _Zlib:
    """gzip or zlib-wrapped deflate, inflated `DECODE_STEP_BYTES` at a time."""

    def __init__(self, window_bits: int, where: str) -> None:
        self._inflate = zlib.decompressobj(window_bits)
        self._where = where

    def decode(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._inflate.eof:
                raise self._bad("data after the end of the compressed body")
            try:
                piece = self._inflate.decompress(data, DECODE_STEP_BYTES)
            except zlib.error:
                raise self._bad("compressed body is corrupt") from None
            yield piece
            data = self._inflate.unconsumed_tail

    def finish(self) -> None:
        if not self._inflate.eof:
            raise self._bad("compressed body ends early")
        if self._inflate.unused_data:
            raise self._bad("data after the end of the compressed body")

    def _bad(self, message: str) -> DlqdError:
        return DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{self._where}: {message}")


def _decoder_for(content_encoding: str, where: str) -> _Identity | _Zlib:
    """The decoder for a Content-Encoding we advertised; any other is a bad response."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return _Identity()
    if len(codings) == 1 and codings[0] in _ZLIB_WINDOW:
        return _Zlib(_ZLIB_WINDOW[codings[0]], where)
    raise DlqdError(
        ErrorCode.UPSTREAM_BAD_RESPONSE,
        f"{where}: Content-Encoding {content_encoding[:40]!r} was not asked for",
    )
