"""Is a downloaded track whole? The check run on a finished temp file before finalize.

Owns: FLAC's frame checksums (CRC-8 of a frame header, CRC-16 of a frame, also
used by the catalog's encoder), the one MP4 box walker (`boxes_in`) and
`check_media_integrity`. A server that lies in `Content-Length` (announces N
bytes and sends N, but the real file is longer), ends a chunked body early, or
lists a DASH stream without its last segment passes every length check of the
transfer; this module asks the file itself. Pure and blocking (the worker runs
it in a thread). It only reads headers, tables and one bounded window, never
the audio, so a 1 GB file costs what a 1 MB file does. It never writes, and
raises nothing but `DlqdError` (INTEGRITY_ERROR, or FILESYSTEM_ERROR when the
file cannot be read). INTEGRITY_ERROR is transient: the track is downloaded
again, up to `worker.max_retries`, then it fails.

The FLAC check: STREAMINFO gives the total sample count and the stream's shape
(block sizes, largest frame, rate, channels, bits). The last frame is found by
scanning backwards from the end of the file for a frame header (sync code
0xFFF8/0xFFF9, fields consistent with STREAMINFO, valid CRC-8) whose frame runs
exactly to the end of the file (the CRC-16 over the header-to-end bytes checks
out). Its first sample (frame number x block size, or the sample number of a
variable-block-size stream) plus its block size is where the audio ends: short
of the announced total means the file was cut at a frame boundary; no whole
frame at the end means it was cut inside a frame. The scan covers at most the
largest frame STREAMINFO announces (else the largest frame the stream's shape
allows, and never more than `MAX_TAIL_BYTES`) and examines a bounded number of
candidate headers, so a hostile file cannot make it slow.

The MP4 check (a file with `ftyp` at byte 4, as finalize recognises one; AAC
`.m4a` and DASH FLAC-in-MP4 alike), one header read per top-level box:
- the top-level boxes lie end to end and end exactly at the end of the file
  (a box running past it is a cut: "MP4 truncated: box 'mdat' at byte B claims
  N bytes, M present"); `ftyp` and `moov` are there;
- each track's sample tables (`stsz`, `stsc`, `stco`/`co64`): the bytes they
  claim fit in the `mdat` boxes, and the chunk furthest into the file lies
  whole inside an `mdat` (this catches a cut in an `mdat` of size 0, "to the
  end of the file");
- fragmented (`mvex` in the `moov`; DASH is `moov`, then `styp`/`sidx`/`moof`/
  `mdat` per segment): every `sidx` indexes bytes that are present; every
  `trun`'s samples (sizes from the run, `tfhd` or `trex`) lie whole in an
  `mdat`; decode times (`tfdt`) never jump by more than one sample (a segment
  missing between two others); the fragments exist at all; and the longest
  track lasts what `mehd` and the caller's `expected_seconds` (the MPD's
  `mediaPresentationDuration`) announce, within one sample. `mvhd`/`mdhd`
  durations are not used: a fragmented file gives 0 or only the `moov`'s part.
Every fault is INTEGRITY_ERROR, malformed boxes included ("MP4 malformed: …"):
in a file assembled from segments a cut segment makes the next one's bytes
read as nonsense, so damage cannot be told from a cut, and a retry may cure
both. Bounded work for hostile files: `moov` is read whole only up to
`MAX_MOOV_BYTES`, a `moof` or `sidx` up to `MAX_FRAGMENT_BOX_BYTES`; a table
may not claim more rows than its box holds; at most `MAX_TRACKS` tracks per
`moov` or `moof`; at most `MAX_STEPS` boxes, runs and `stsc` rows per file.
Larger is refused as malformed. Sample sizes are summed in C (`array`), so
memory and time follow the size of the tables, never of the audio.

Out of scope, and passed as they are: a FLAC whose STREAMINFO says 0 total
samples (unknown); a FLAC not starting with `fLaC` and a STREAMINFO block
(e.g. an ID3v2-prefixed file); a metadata chain of more than
`MAX_METADATA_BLOCKS` blocks; an MP4 track whose sizes are in `stz2`; a
fragmented MP4 cut at a fragment boundary when neither `mehd` nor the manifest
says how long it is (a BTS `.m4a` that is fragmented); anything else.
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
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


def check_media_integrity(path: Path, expected_seconds: Decimal | None = None) -> None:
    """Raise INTEGRITY_ERROR when `path` is a FLAC or MP4 file that is not whole.

    `expected_seconds` is how long the stream lasts when its manifest says so
    (a DASH MPD's `mediaPresentationDuration`): a fragmented MP4 must reach it.
    """
    try:
        with open_beneath(path, "rb") as file:  # a link swapped in is refused, not read
            size = file.seek(0, 2)
            file.seek(0)
            head = file.read(8)
            if head[:4] == b"fLaC":
                _check_flac(file, size)
            elif head[4:8] == b"ftyp":  # how finalize recognises an MP4 (naming.detect_extension)
                _check_mp4(file, size, expected_seconds)
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


# --- MP4 (ISO BMFF): AAC in .m4a, FLAC in fragmented MP4 from DASH -------------------

MAX_STEPS = 1 << 20  # boxes, track runs and sample-to-chunk rows one check may walk
MAX_MOOV_BYTES = 32 * 1024 * 1024  # a 7-hour AAC track's sample tables are ~5 MiB
MAX_FRAGMENT_BOX_BYTES = 4 * 1024 * 1024  # one `moof` or `sidx`: a few KiB in practice
MAX_TRACKS = 64  # `trak` boxes in a `moov`, `traf` boxes in a `moof`

_BOX_HEADER_BYTES = 8
_LARGE_BOX_HEADER_BYTES = 16
_SAMPLE_SIZE_WORD = "I"  # array typecode of an unsigned 32-bit table entry
_CHUNK_OFFSET_64 = "Q"


@dataclass(frozen=True)
class Box:
    """One ISO BMFF box: its four-character type and where it lies (absolute offsets)."""

    kind: str
    start: int
    payload_start: int
    end: int


class _Steps:
    """What is left of `MAX_STEPS`: a file with millions of tiny boxes is refused, not slow."""

    def __init__(self) -> None:
        self.left = MAX_STEPS

    def spend(self, count: int = 1) -> None:
        self.left -= count
        if self.left < 0:
            raise _mp4_malformed(f"more than {MAX_STEPS} boxes and table rows to walk")


def _mp4_truncated(detail: str) -> DlqdError:
    return DlqdError(ErrorCode.INTEGRITY_ERROR, f"MP4 truncated: {detail}")


def _mp4_malformed(detail: str) -> DlqdError:
    return DlqdError(ErrorCode.INTEGRITY_ERROR, f"MP4 malformed: {detail}")


def _kind(raw: bytes) -> str:
    return raw.decode("ascii", "backslashreplace")


def boxes_in(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    """The boxes laid end to end in `data[start:end]`; INTEGRITY_ERROR if they do not fit exactly.

    The one MP4 box walker (the check below and the tests use it).
    """
    return _walk(lambda at, count: data[at : at + count], start, len(data) if end is None else end)


def _walk(
    read: Callable[[int, int], bytes],
    start: int,
    end: int,
    steps: _Steps | None = None,
    parent: Box | None = None,
) -> list[Box]:
    """The boxes from `start` to exactly `end`, read through `read(offset, count)`.

    `parent` None means the file itself, where running past `end` is a cut
    (truncated); inside a whole box it is damage (malformed).
    """
    steps = steps or _Steps()
    boxes: list[Box] = []
    position = start
    while position < end:
        steps.spend()
        left = end - position
        header = read(position, min(_LARGE_BOX_HEADER_BYTES, left))
        size = int.from_bytes(header[:4], "big")
        header_bytes = _LARGE_BOX_HEADER_BYTES if size == 1 else _BOX_HEADER_BYTES
        if len(header) < header_bytes:
            where = f"{left} bytes at byte {position} cannot hold a box header"
            raise _mp4_truncated(where) if parent is None else _mp4_malformed(where)
        kind = _kind(header[4:8])
        if size == 1:
            size = int.from_bytes(header[8:16], "big")
        elif size == 0:
            size = left  # "to the end": only the last box can say so
        if size < header_bytes:
            raise _mp4_malformed(f"box '{kind}' at byte {position} claims {size} bytes")
        if size > left:
            if parent is None:
                raise _mp4_truncated(
                    f"box '{kind}' at byte {position} claims {size} bytes, {left} present"
                )
            raise _mp4_malformed(
                f"box '{kind}' at byte {position} claims {size} bytes, "
                f"its '{parent.kind}' holds {left}"
            )
        boxes.append(Box(kind, position, position + header_bytes, position + size))
        position += size
    return boxes


@dataclass(frozen=True)
class _Loaded:
    """A box read whole into memory; its children and fields keep absolute offsets."""

    box: Box
    data: bytes

    def read(self, at: int, count: int) -> bytes:
        offset = at - self.box.start
        return self.data[offset : offset + count]

    def children(self, box: Box, steps: _Steps) -> dict[str, list[Box]]:
        found: dict[str, list[Box]] = {}
        for child in _walk(self.read, box.payload_start, box.end, steps, box):
            found.setdefault(child.kind, []).append(child)
        return found

    def fields(self, box: Box, layout: str, at: int = 0) -> tuple[int, ...]:
        """`struct` fields (big-endian `layout`) at `at` in the payload of `box`."""
        layout = ">" + layout
        if box.end - box.payload_start < at + struct.calcsize(layout):
            raise _mp4_malformed(f"box '{box.kind}' at byte {box.start} is too short")
        return struct.unpack_from(layout, self.data, box.payload_start - self.box.start + at)

    def table(self, box: Box, at: int, count: int, row_bytes: int, typecode: str) -> array[int]:
        """`count` rows of `row_bytes` at `at` in the payload, as big-endian words."""
        room = box.end - box.payload_start - at
        if count * row_bytes > room:
            raise _mp4_malformed(
                f"box '{box.kind}' at byte {box.start} claims {count} rows, "
                f"room for {max(0, room) // row_bytes}"
            )
        offset = box.payload_start - self.box.start + at
        words = array(typecode, self.data[offset : offset + count * row_bytes])
        if sys.byteorder == "little":
            words.byteswap()
        return words


def _load(file: BinaryIO, box: Box, cap: int) -> _Loaded:
    if box.end - box.start > cap:
        raise _mp4_malformed(
            f"box '{box.kind}' at byte {box.start} is {box.end - box.start} bytes, "
            f"more than the {cap} this check reads"
        )
    file.seek(box.start)
    return _Loaded(box, file.read(box.end - box.start))


def _one(found: dict[str, list[Box]], kind: str) -> Box | None:
    boxes = found.get(kind)
    return boxes[0] if boxes else None


@dataclass
class _Track:
    """A `trak`: its timescale, trex defaults, and what its fragments added up to so far."""

    track_id: int
    timescale: int
    moov_duration: int = 0  # of the samples in the moov's own tables (stts)
    default_duration: int = 0
    default_size: int = 0
    fragment_duration: int = 0
    longest_sample: int = 0
    next_decode_time: int | None = None
    fragments: int = 0


def _check_mp4(file: BinaryIO, size: int, expected_seconds: Decimal | None) -> None:
    steps = _Steps()

    def read(at: int, count: int) -> bytes:
        file.seek(at)
        return file.read(count)

    top = _walk(read, 0, size, steps)
    kinds = {box.kind for box in top}
    for needed in ("ftyp", "moov"):
        if needed not in kinds:
            raise _mp4_truncated(f"no '{needed}' box in {size} bytes")
    mdats = _MediaData(top, size)
    moov_box = next(box for box in top if box.kind == "moov")
    moov = _load(file, moov_box, MAX_MOOV_BYTES)
    moov_children = moov.children(moov_box, steps)
    traks = moov_children.get("trak", [])
    if len(traks) > MAX_TRACKS:
        raise _mp4_malformed(f"{len(traks)} tracks, more than {MAX_TRACKS}")
    tracks: dict[int, _Track] = {}
    sample_bytes = 0
    for trak in traks:
        track, trak_bytes = _read_trak(moov, trak, mdats, steps)
        tracks[track.track_id] = track
        sample_bytes += trak_bytes
    mdat_bytes = mdats.payload_bytes
    if sample_bytes > mdat_bytes:
        raise _mp4_truncated(
            f"the sample tables claim {sample_bytes} bytes, the 'mdat' boxes hold {mdat_bytes}"
        )
    mvex = _one(moov_children, "mvex")
    if mvex is not None:
        mvex_children = moov.children(mvex, steps)
        _read_trex(moov, mvex_children, tracks)
        announced = _announced_by_mehd(moov, moov_children, mvex_children)
        _check_fragments(file, top, mdats, tracks, steps)
        _check_duration(tracks, announced, expected_seconds)


def _read_trak(moov: _Loaded, trak: Box, mdats: _MediaData, steps: _Steps) -> tuple[_Track, int]:
    """The track's ids and timescale; checks its sample tables and returns the bytes they claim."""
    children = moov.children(trak, steps)
    tkhd = _one(children, "tkhd")
    mdia = _one(children, "mdia")
    if tkhd is None or mdia is None:
        raise _mp4_malformed(f"'trak' at byte {trak.start} lacks 'tkhd' or 'mdia'")
    (version,) = moov.fields(tkhd, "B")
    (track_id,) = moov.fields(tkhd, "I", 20 if version == 1 else 12)
    mdia_children = moov.children(mdia, steps)
    mdhd = _one(mdia_children, "mdhd")
    if mdhd is None:
        raise _mp4_malformed(f"'mdia' at byte {mdia.start} lacks 'mdhd'")
    (version,) = moov.fields(mdhd, "B")
    (timescale,) = moov.fields(mdhd, "I", 20 if version == 1 else 12)
    if timescale == 0:
        raise _mp4_malformed(f"'mdhd' at byte {mdhd.start} has timescale 0")
    track = _Track(track_id, timescale)
    minf = _one(mdia_children, "minf")
    stbl = _one(moov.children(minf, steps), "stbl") if minf is not None else None
    if stbl is None:
        return track, 0
    tables = moov.children(stbl, steps)
    stts = _one(tables, "stts")
    if stts is not None:
        (rows,) = moov.fields(stts, "I", 4)
        deltas = moov.table(stts, 8, rows, 8, _SAMPLE_SIZE_WORD)
        steps.spend(rows)  # summed in Python below: bounded like every other table
        track.moov_duration = sum(
            count * delta for count, delta in zip(deltas[0::2], deltas[1::2], strict=True)
        )
    return track, _check_sample_tables(moov, tables, track_id, mdats, steps)


def _check_sample_tables(
    moov: _Loaded,
    tables: dict[str, list[Box]],
    track_id: int,
    mdats: _MediaData,
    steps: _Steps,
) -> int:
    """The bytes `stsz` claims; the chunk furthest into the file must lie whole in an `mdat`.

    A track whose sizes are in `stz2` (compact, rare) or which lacks a table
    is not checked here and claims 0 bytes.
    """
    stsz, stsc = _one(tables, "stsz"), _one(tables, "stsc")
    stco, co64 = _one(tables, "stco"), _one(tables, "co64")
    if stsz is None or stsc is None or (stco is None and co64 is None):
        return 0
    fixed_size, sample_count = moov.fields(stsz, "II", 4)
    sizes = None if fixed_size else moov.table(stsz, 12, sample_count, 4, _SAMPLE_SIZE_WORD)
    claimed = fixed_size * sample_count if sizes is None else sum(sizes)
    offsets_box = co64 if co64 is not None else stco
    assert offsets_box is not None
    (chunk_count,) = moov.fields(offsets_box, "I", 4)
    row = 8 if co64 is not None else 4
    typecode = _CHUNK_OFFSET_64 if co64 is not None else _SAMPLE_SIZE_WORD
    offsets = moov.table(offsets_box, 8, chunk_count, row, typecode)
    if not sample_count or not chunk_count:
        return claimed
    (rows,) = moov.fields(stsc, "I", 4)
    runs = moov.table(stsc, 8, rows, 12, _SAMPLE_SIZE_WORD)
    steps.spend(rows)
    last_offset = max(offsets)
    last_chunk = offsets.index(last_offset) + 1
    first_sample, samples = _chunk_samples(runs, last_chunk, chunk_count, stsc)
    if first_sample + samples > sample_count:
        raise _mp4_malformed(
            f"track {track_id}: 'stsc' maps chunk {last_chunk} past the {sample_count} samples"
        )
    chunk_bytes = (
        fixed_size * samples if sizes is None else sum(sizes[first_sample : first_sample + samples])
    )
    mdats.check(last_offset, last_offset + chunk_bytes, f"track {track_id}")
    return claimed


def _chunk_samples(runs: array[int], chunk: int, chunk_count: int, stsc: Box) -> tuple[int, int]:
    """(index of the first sample, samples) of 1-based `chunk`, from `stsc` rows."""
    samples_before = 0
    rows = len(runs) // 3
    for row in range(rows):
        first_chunk, per_chunk = runs[3 * row], runs[3 * row + 1]
        next_first = runs[3 * row + 3] if row + 1 < rows else chunk_count + 1
        if first_chunk < 1 or next_first <= first_chunk or (row == 0 and first_chunk != 1):
            raise _mp4_malformed(f"'stsc' at byte {stsc.start} has chunk runs out of order")
        if chunk < next_first:
            return samples_before + (chunk - first_chunk) * per_chunk, per_chunk
        samples_before += (next_first - first_chunk) * per_chunk
    raise _mp4_malformed(f"'stsc' at byte {stsc.start} maps no sample to chunk {chunk}")


class _MediaData:
    """The file's top-level `mdat` boxes, where every sample's bytes must lie."""

    def __init__(self, top: list[Box], size: int) -> None:
        self.boxes = [box for box in top if box.kind == "mdat"]
        self.starts = [box.start for box in self.boxes]
        self.size = size

    @property
    def payload_bytes(self) -> int:
        return sum(box.end - box.payload_start for box in self.boxes)

    def check(self, begin: int, end: int, what: str) -> None:
        """Sample data at [begin, end) must be present, inside one `mdat`'s payload."""
        if end > self.size:
            raise _mp4_truncated(f"{what}: samples run to byte {end}, {self.size} present")
        index = bisect.bisect_right(self.starts, begin) - 1
        box = self.boxes[index] if index >= 0 else None
        if box is None or not box.payload_start <= begin <= end <= box.end:
            raise _mp4_malformed(
                f"{what}: samples at bytes {begin}..{end} lie outside every 'mdat'"
            )


def _announced_by_mehd(
    moov: _Loaded, moov_children: dict[str, list[Box]], mvex_children: dict[str, list[Box]]
) -> Fraction | None:
    """Seconds the `mehd` says the fragmented movie lasts (None: no `mehd`, or 0)."""
    mehd = _one(mvex_children, "mehd")
    mvhd = _one(moov_children, "mvhd")
    if mehd is None or mvhd is None:
        return None
    (version,) = moov.fields(mehd, "B")
    (duration,) = moov.fields(mehd, "Q" if version == 1 else "I", 4)
    (version,) = moov.fields(mvhd, "B")
    (timescale,) = moov.fields(mvhd, "I", 20 if version == 1 else 12)
    if not duration or not timescale:
        return None
    return Fraction(duration, timescale)


def _read_trex(
    moov: _Loaded, mvex_children: dict[str, list[Box]], tracks: dict[int, _Track]
) -> None:
    """Each track's default sample duration and size, for fragments that do not give theirs."""
    for trex in mvex_children.get("trex", []):
        track_id, _, duration, size = moov.fields(trex, "IIII", 4)
        if track_id in tracks:
            tracks[track_id].default_duration = duration
            tracks[track_id].default_size = size


# tfhd flags: which optional fields follow the track id.
_TFHD_BASE_OFFSET = 0x1
_TFHD_DESCRIPTION = 0x2
_TFHD_DURATION = 0x8
_TFHD_SIZE = 0x10
_TFHD_BASE_IS_MOOF = 0x20000
# trun flags: the data offset, the first sample's flags, then four per-sample fields.
_TRUN_DATA_OFFSET = 0x1
_TRUN_FIRST_FLAGS = 0x4
_TRUN_DURATION = 0x100
_TRUN_SIZE = 0x200
_TRUN_SAMPLE_FIELDS = (0x100, 0x200, 0x400, 0x800)


def _check_fragments(
    file: BinaryIO,
    top: list[Box],
    mdats: _MediaData,
    tracks: dict[int, _Track],
    steps: _Steps,
) -> None:
    """Every `sidx` indexes bytes present; every `moof`'s samples lie whole in an `mdat`;
    no fragment is missing between two others (decode times jump by more than a sample)."""
    for box in top:
        if box.kind == "sidx":
            _check_sidx(_load(file, box, MAX_FRAGMENT_BOX_BYTES), mdats.size)
        elif box.kind == "moof":
            _check_moof(_load(file, box, MAX_FRAGMENT_BOX_BYTES), mdats, tracks, steps)
    if not any(track.fragments for track in tracks.values()) and not any(
        track.moov_duration for track in tracks.values()
    ):
        raise _mp4_truncated("a fragmented MP4 without a fragment")


def _check_sidx(sidx: _Loaded, size: int) -> None:
    box = sidx.box
    (version,) = sidx.fields(box, "B")
    offset_layout = "QQ" if version == 1 else "II"
    _, first_offset = sidx.fields(box, offset_layout, 12)
    at = 12 + struct.calcsize(">" + offset_layout)
    _, count = sidx.fields(box, "HH", at)
    references = sidx.table(box, at + 4, count, 12, _SAMPLE_SIZE_WORD)
    indexed = sum(word & 0x7FFFFFFF for word in references[0::3])
    end = box.end + first_offset + indexed
    if end > size:
        raise _mp4_truncated(
            f"'sidx' at byte {box.start} indexes bytes up to {end}, {size} present"
        )


def _check_moof(moof: _Loaded, mdats: _MediaData, tracks: dict[int, _Track], steps: _Steps) -> None:
    trafs = moof.children(moof.box, steps).get("traf", [])
    if len(trafs) > MAX_TRACKS:
        raise _mp4_malformed(f"'moof' at byte {moof.box.start} has more than {MAX_TRACKS} 'traf'")
    data_end = moof.box.start  # where a traf without a base offset starts its data
    for traf in trafs:
        data_end = _check_traf(moof, traf, data_end, mdats, tracks, steps)


def _check_traf(
    moof: _Loaded,
    traf: Box,
    previous_end: int,
    mdats: _MediaData,
    tracks: dict[int, _Track],
    steps: _Steps,
) -> int:
    """Check one track fragment's runs; return where its data ends."""
    children = moof.children(traf, steps)
    tfhd = _one(children, "tfhd")
    if tfhd is None:
        raise _mp4_malformed(f"'traf' at byte {traf.start} lacks 'tfhd'")
    flags, track_id = moof.fields(tfhd, "II")
    flags &= 0xFFFFFF
    track = tracks.get(track_id)
    if track is None:
        raise _mp4_malformed(f"'tfhd' at byte {tfhd.start} names track {track_id}, not in 'moov'")
    at = 8
    base = moof.box.start if flags & _TFHD_BASE_IS_MOOF else previous_end
    if flags & _TFHD_BASE_OFFSET:
        (base,) = moof.fields(tfhd, "Q", at)
        at += 8
    at += 4 if flags & _TFHD_DESCRIPTION else 0
    default_duration, default_size = track.default_duration, track.default_size
    if flags & _TFHD_DURATION:
        (default_duration,) = moof.fields(tfhd, "I", at)
        at += 4
    if flags & _TFHD_SIZE:
        (default_size,) = moof.fields(tfhd, "I", at)
    tfdt = _one(children, "tfdt")
    if tfdt is not None:
        (version,) = moof.fields(tfdt, "B")
        (decode_time,) = moof.fields(tfdt, "Q" if version == 1 else "I", 4)
        expected = track.next_decode_time
        if expected is not None and decode_time > expected + track.longest_sample:
            raise _mp4_truncated(
                f"track {track_id} jumps from time {expected} to {decode_time} at byte "
                f"{traf.start}: a fragment is missing"
            )
        track.next_decode_time = decode_time
    data_end = base
    duration = 0
    for trun in children.get("trun", []):
        steps.spend()
        run_flags, count = moof.fields(trun, "II")
        at = 8
        start = data_end
        if run_flags & _TRUN_DATA_OFFSET:
            (data_offset,) = moof.fields(trun, "i", at)
            start = base + data_offset
            at += 4
        at += 4 if run_flags & _TRUN_FIRST_FLAGS else 0
        present = [field for field in _TRUN_SAMPLE_FIELDS if run_flags & field]
        rows = moof.table(trun, at, count, 4 * len(present), _SAMPLE_SIZE_WORD)
        if run_flags & _TRUN_SIZE:
            run_bytes = sum(rows[present.index(_TRUN_SIZE) :: len(present)])
        else:
            run_bytes = count * default_size
        if run_flags & _TRUN_DURATION:
            durations = rows[present.index(_TRUN_DURATION) :: len(present)]
            duration += sum(durations)
            longest = max(durations, default=0)
        else:
            duration += count * default_duration
            longest = default_duration if count else 0
        track.longest_sample = max(track.longest_sample, longest)
        data_end = start + run_bytes
        if run_bytes:
            mdats.check(start, data_end, f"fragment at byte {moof.box.start}")
    track.fragments += 1
    track.fragment_duration += duration
    track.next_decode_time = (track.next_decode_time or 0) + duration
    return data_end


def _check_duration(
    tracks: dict[int, _Track], by_mehd: Fraction | None, by_manifest: Decimal | None
) -> None:
    """The longest track must last what `mehd` and the manifest announce, less one sample."""
    for source, announced in (("'mehd'", by_mehd), ("the manifest", by_manifest)):
        if announced is None:
            continue
        lasting = [
            Fraction(track.moov_duration + track.fragment_duration + track.longest_sample)
            / track.timescale
            for track in tracks.values()
        ]
        if not lasting or max(lasting) < Fraction(announced):
            held = max(
                (
                    Fraction(track.moov_duration + track.fragment_duration, track.timescale)
                    for track in tracks.values()
                ),
                default=Fraction(0),
            )
            raise _mp4_truncated(
                f"the fragments hold {float(held):.3f} s of the "
                f"{float(announced):.3f} s {source} announces"
            )
