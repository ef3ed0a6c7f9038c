"""Is a downloaded track whole? The check run on a finished temp file before finalize.

Owns: FLAC's frame checksums (CRC-8 of a frame header, CRC-16 of a frame, also
used by the catalog's encoder) and `check_media_integrity`. A server that lies
in `Content-Length` (announces N bytes and sends N, but the real file is longer)
passes every length check of the transfer; this module asks the file itself.
Pure and blocking (the worker runs it in a thread). It only reads: the metadata
block headers at the head and one bounded window at the end, so a 1 GB file
costs what a 1 MB file does. It never writes, and raises nothing but
`DlqdError` (INTEGRITY_ERROR, or FILESYSTEM_ERROR when the file cannot be read).

The FLAC check: STREAMINFO gives the total sample count and the stream's shape
(block sizes, largest frame, rate, channels, bits). The last frame is found by
scanning backwards from the end of the file for a frame header (sync code
0xFFF8/0xFFF9, fields consistent with STREAMINFO, valid CRC-8) whose frame runs
exactly to the end of the file (the CRC-16 over the header-to-end bytes checks
out). Its first sample (frame number x block size, or the sample number of a
variable-block-size stream) plus its block size is where the audio ends: short
of the announced total means the file was cut at a frame boundary; no whole
frame at the end means it was cut inside a frame. Both are INTEGRITY_ERROR,
which is transient: the track is downloaded again. The scan covers at most the
largest frame STREAMINFO announces (else the largest frame the stream's shape
allows, and never more than `MAX_TAIL_BYTES`) and examines a bounded number of
candidate headers, so a hostile file cannot make it slow.

Out of scope, and passed as they are: FLAC inside MP4 (the DASH streams) and
AAC, whose lengths live in MP4 boxes this module does not read; a FLAC whose
STREAMINFO says 0 total samples (unknown); anything that does not start with
`fLaC` and a STREAMINFO block (e.g. an ID3v2-prefixed file); a metadata chain
of more than `MAX_METADATA_BLOCKS` blocks.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dlqd.errors import DlqdError, ErrorCode, from_oserror
from dlqd.safefs import open_beneath

# The largest legal frame is 65535 samples x 8 channels x 32 bits (2 MiB) plus headers.
MAX_TAIL_BYTES = 4 * 1024 * 1024
MAX_METADATA_BLOCKS = 1024
# An honest last frame is found after a handful of false syncs in its payload;
# these bound the work a crafted tail full of sync codes can cause.
MAX_CANDIDATE_HEADERS = 4096
MAX_CRC16_CHECKS = 8

_STREAMINFO_BYTES = 34
_ID3V1_BYTES = 128
# Frame-header codes (FLAC format, frame header); None marks reserved or "see elsewhere".
_RATES_BY_CODE: dict[int, int] = {
    1: 88200,
    2: 176400,
    3: 192000,
    4: 8000,
    5: 16000,
    6: 22050,
    7: 24000,
    8: 32000,
    9: 44100,
    10: 48000,
    11: 96000,
}
_BITS_BY_CODE: dict[int, int] = {1: 8, 2: 12, 4: 16, 5: 20, 6: 24, 7: 32}


def _crc8_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


def _crc16_word_table() -> array[int]:
    """CRC-16 (poly 0x8005, MSB first) of every 16-bit word: one lookup per two bytes."""
    byte_table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        byte_table.append(crc)
    # Feeding word w (hi, lo) into a zero state: two byte steps.
    table = array("H", bytes(2 * 65536))
    for word in range(65536):
        crc = byte_table[word >> 8]
        table[word] = ((crc << 8) & 0xFFFF) ^ byte_table[(crc >> 8) ^ (word & 0xFF)]
    return table


_CRC8 = _crc8_table()
_CRC16_WORD = _crc16_word_table()
_CRC16_BYTE = [_CRC16_WORD[b] for b in range(256)]  # a lone byte b is the word 0x00b


def crc8(data: bytes | bytearray) -> int:
    """FLAC frame-header CRC-8 (poly 0x07, init 0)."""
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc


def crc16(data: bytes) -> int:
    """FLAC frame CRC-16 (poly 0x8005, init 0), two bytes per table lookup.

    A whole frame, its big-endian CRC-16 footer included, checks to 0.
    """
    even = len(data) & ~1
    words = array("H", data[:even])
    if sys.byteorder == "little":
        words.byteswap()  # make each word big-endian
    table = _CRC16_WORD
    crc = 0
    for word in words:
        crc = table[crc ^ word]
    if even != len(data):
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16_BYTE[(crc >> 8) ^ data[-1]]
    return crc


@dataclass(frozen=True)
class StreamInfo:
    """The STREAMINFO fields the check uses; 0 means "unknown" where FLAC allows it."""

    min_block_size: int
    max_block_size: int
    max_frame_bytes: int
    sample_rate: int
    channels: int
    bits: int
    total_samples: int

    @classmethod
    def parse(cls, body: bytes) -> StreamInfo:
        """The 34-byte STREAMINFO block body."""
        packed = int.from_bytes(body[10:18], "big")
        return cls(
            min_block_size=int.from_bytes(body[0:2], "big"),
            max_block_size=int.from_bytes(body[2:4], "big"),
            max_frame_bytes=int.from_bytes(body[7:10], "big"),
            sample_rate=packed >> 44,
            channels=((packed >> 41) & 0x7) + 1,
            bits=((packed >> 36) & 0x1F) + 1,
            total_samples=packed & ((1 << 36) - 1),
        )

    def tail_window(self) -> int:
        """How far from the end of the file the last frame's header can be."""
        if self.max_frame_bytes:
            return min(self.max_frame_bytes, MAX_TAIL_BYTES)
        # A verbatim frame is the largest an encoder writes: header, subframes, footer.
        verbatim = 18 + self.channels * (2 + (self.max_block_size * (self.bits + 1) + 7) // 8)
        return min(verbatim, MAX_TAIL_BYTES)


@dataclass(frozen=True)
class FrameHeader:
    """A frame header that passed its CRC-8: which samples the frame holds."""

    first_sample: int
    block_size: int

    @property
    def end_sample(self) -> int:
        return self.first_sample + self.block_size


def check_media_integrity(path: Path) -> None:
    """Raise INTEGRITY_ERROR when `path` is a FLAC stream cut short (see the module doc)."""
    try:
        with open_beneath(path, "rb") as file:  # a link swapped in is refused, not read
            size = file.seek(0, 2)
            _check_flac(file, size)
    except OSError as exc:
        raise from_oserror(exc, f"checking {path.name}") from exc


def _truncated(detail: str) -> DlqdError:
    return DlqdError(ErrorCode.INTEGRITY_ERROR, f"FLAC stream cut short: {detail}")


def _check_flac(file: BinaryIO, size: int) -> None:
    file.seek(0)
    head = file.read(8 + _STREAMINFO_BYTES)
    if len(head) < 8 + _STREAMINFO_BYTES or head[:4] != b"fLaC":
        return  # not a FLAC stream (or too short to say): out of scope
    if head[4] & 0x7F != 0 or int.from_bytes(head[5:8], "big") != _STREAMINFO_BYTES:
        return  # no STREAMINFO where it belongs: not understood
    info = StreamInfo.parse(head[8:])
    if not (info.total_samples and info.max_block_size and info.sample_rate):
        return  # length unknown (or a stream that is not audio): nothing to compare against
    audio_start = _audio_start(file, size)
    if audio_start is None:
        return
    if audio_start >= size:
        raise _truncated(f"no audio frame, {info.total_samples} samples announced")
    window_start = max(audio_start, size - info.tail_window() - _ID3V1_BYTES)
    file.seek(window_start)
    tail = file.read(size - window_start)
    ends = [len(tail)]
    if len(tail) > _ID3V1_BYTES and tail[-_ID3V1_BYTES:].startswith(b"TAG"):
        ends.append(len(tail) - _ID3V1_BYTES)  # a trailing ID3v1 tag is not a cut
    found = [frame for end in ends if (frame := _last_whole_frame(tail[:end], info))]
    if not found:
        raise _truncated(
            f"no whole frame ends at the end of the file, {info.total_samples} samples announced"
        )
    end_sample = max(frame.end_sample for frame in found)
    if end_sample < info.total_samples:
        raise _truncated(f"the audio ends at sample {end_sample} of {info.total_samples} announced")


def _audio_start(file: BinaryIO, size: int) -> int | None:
    """Offset just past the last metadata block (`size` or more if cut inside them)."""
    position = 4
    for _ in range(MAX_METADATA_BLOCKS):
        file.seek(position)
        block_header = file.read(4)
        if len(block_header) < 4:
            return size
        position += 4 + int.from_bytes(block_header[1:4], "big")
        if block_header[0] & 0x80:
            return position
    return None


def _last_whole_frame(data: bytes, info: StreamInfo) -> FrameHeader | None:
    """The rightmost frame in `data` that runs exactly to its end with a valid CRC-16."""
    next_f8 = data.rfind(b"\xff\xf8")
    next_f9 = data.rfind(b"\xff\xf9")
    crc16_checks = 0
    for _ in range(MAX_CANDIDATE_HEADERS):
        position = max(next_f8, next_f9)
        if position < 0:
            return None
        if position == next_f8:
            next_f8 = data.rfind(b"\xff\xf8", 0, position)
        else:
            next_f9 = data.rfind(b"\xff\xf9", 0, position)
        header = _frame_header(data, position, info)
        if header is None:
            continue
        if crc16(data[position:]) == 0:
            return header
        crc16_checks += 1
        if crc16_checks == MAX_CRC16_CHECKS:
            return None
    return None


def _frame_header(data: bytes, start: int, info: StreamInfo) -> FrameHeader | None:
    """The header at `start` if it is well formed, fits STREAMINFO and passes its CRC-8."""
    if start + 5 > len(data):
        return None
    variable = data[start + 1] & 1
    size_code, rate_code = data[start + 2] >> 4, data[start + 2] & 0x0F
    channel_code, bits_code = data[start + 3] >> 4, (data[start + 3] >> 1) & 0x7
    if size_code == 0 or rate_code == 15 or channel_code > 10 or data[start + 3] & 1:
        return None  # reserved codes
    if (channel_code + 1 if channel_code < 8 else 2) != info.channels:
        return None
    if (_BITS_BY_CODE.get(bits_code) if bits_code else info.bits) != info.bits:
        return None
    coded = _coded_number(data, start + 4, max_bytes=7 if variable else 6)
    if coded is None:
        return None
    number, position = coded
    size_bytes = {6: 1, 7: 2}.get(size_code, 0)
    rate_bytes = {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    crc_at = position + size_bytes + rate_bytes
    if crc_at >= len(data) or crc8(data[start:crc_at]) != data[crc_at]:
        return None
    size_field = int.from_bytes(data[position : position + size_bytes], "big")
    rate_field = int.from_bytes(data[position + size_bytes : crc_at], "big")
    block_size = _block_size(size_code, size_field)
    rate = {0: info.sample_rate, 12: rate_field * 1000, 13: rate_field, 14: rate_field * 10}.get(
        rate_code, _RATES_BY_CODE.get(rate_code, 0)
    )
    if rate != info.sample_rate or block_size > info.max_block_size:
        return None
    first_sample = number if variable else number * info.max_block_size
    return FrameHeader(first_sample, block_size)


def _block_size(code: int, field: int) -> int:
    """Samples per channel in a frame from its 4-bit code (and the extra field for 6, 7)."""
    if code == 1:
        return 192
    if code < 6:
        return 576 << (code - 2)
    if code < 8:
        return field + 1
    return 256 << (code - 8)


def _coded_number(data: bytes, start: int, *, max_bytes: int) -> tuple[int, int] | None:
    """FLAC's UTF-8-like coded frame/sample number at `start`: (value, offset after it)."""
    if start >= len(data):
        return None
    lead = data[start]
    ones = 0
    while ones < 8 and lead & (0x80 >> ones):
        ones += 1
    if ones == 1 or ones == 8 or ones > max_bytes:
        return None  # a continuation byte, or longer than the field allows
    length = max(ones, 1)
    if start + length > len(data):
        return None
    value = lead & (0xFF >> (ones + 1))
    for byte in data[start + 1 : start + length]:
        if byte & 0xC0 != 0x80:
            return None
        value = (value << 6) | (byte & 0x3F)
    return value, start + length
