"""Real, valid audio bytes for the local catalog, made without external tools.

Owns: a pure-Python FLAC encoder (verbatim subframes, exact STREAMINFO, CRC-8
headers and CRC-16 footers, the checksums `dlqd.integrity` verifies) and access
to the small committed MP4 assets (AAC, and FLAC in fragmented MP4 split for
DASH; see assets/README.md).
Never: runs ffmpeg or any subprocess, touches the network, or writes files.
"""

from __future__ import annotations

import hashlib
import math
import random
from functools import cache
from importlib import resources

from dlqd.integrity import crc8, crc16

FLAC_BLOCK_SIZE = 4608

# Facts about the committed DASH asset (see assets/README.md).
DASH_TIMESCALE = 48000
DASH_SEGMENT_DURATIONS: tuple[int, ...] = (50688, 50688, 50688, 43008)
DASH_PRESENTATION_SECONDS = 4.0
DASH_SAMPLE_RATE = 48000
DASH_BIT_DEPTH = 24
AAC_SAMPLE_RATE = 44100

# Frame-header codes (FLAC format §frame header); 0 means "see STREAMINFO".
_BLOCK_SIZE_CODES = {192: 1, 576: 2, 1152: 3, 2304: 4, 4608: 5, 256: 8, 512: 9, 1024: 10}
_RATE_CODES = {
    88200: 1,
    176400: 2,
    192000: 3,
    8000: 4,
    16000: 5,
    22050: 6,
    24000: 7,
    32000: 8,
    44100: 9,
    48000: 10,
    96000: 11,
}
_BITS_CODES = {8: 1, 12: 2, 16: 4, 20: 5, 24: 6}


def _utf8_number(n: int) -> bytes:
    """FLAC's UTF-8-like coding of the frame number (up to 36 bits)."""
    if n < 0x80:
        return bytes([n])
    payload = []
    while True:
        payload.append(0x80 | (n & 0x3F))
        n >>= 6
        length = len(payload) + 1
        if n < (1 << (7 - length)):
            lead = (0xFF << (8 - length)) & 0xFF
            return bytes([lead | n, *reversed(payload)])


def _pcm(n_samples: int, seed: int, channels: int, bits: int) -> bytes:
    """Interleaved little-endian signed PCM: a seeded tone (top byte) plus noise (low bytes).

    Built only with C-level bytes operations so tens of MiB take well under a second.
    """
    width = bits // 8
    rng = random.Random(seed)
    period = 80 + rng.randrange(320)  # 110..551 Hz at 44.1 kHz
    pattern = bytearray()
    for j in range(period):
        for c in range(channels):
            phase = 2 * math.pi * j / period + c * math.pi / 3
            pattern.append(int(90 * math.sin(phase)) & 0xFF)
    n_values = n_samples * channels
    reps = -(-n_values // len(pattern))
    pcm = bytearray(n_values * width)
    pcm[width - 1 :: width] = (bytes(pattern) * reps)[:n_values]
    for k in range(width - 1):
        pcm[k::width] = _randbytes(rng, n_values)
    return bytes(pcm)


def _randbytes(rng: random.Random, n: int) -> bytes:
    """`rng.randbytes(n)`, in pieces: one call overflows past 2**31 bits (a ~1 GB file).

    Pieces are whole 32-bit words, so the bytes equal those of a single call.
    """
    piece = 1 << 26
    if n <= piece:
        return rng.randbytes(n)
    return b"".join(rng.randbytes(min(piece, n - start)) for start in range(0, n, piece))


def _channel_be(block: bytes, channel: int, channels: int, width: int) -> bytes:
    """One channel's samples from interleaved little-endian PCM, as big-endian."""
    stride = channels * width
    n = len(block) // stride
    out = bytearray(n * width)
    for k in range(width):
        out[k::width] = block[channel * width + (width - 1 - k) :: stride]
    return bytes(out)


def make_flac(
    seconds: float, seed: int, sample_rate: int = 44100, channels: int = 2, bits: int = 16
) -> bytes:
    """A valid FLAC file of `seconds` of seeded audio (verbatim subframes, no tags)."""
    if bits not in (8, 16, 24) or not 1 <= channels <= 8:
        raise ValueError("bits must be 8, 16 or 24 and channels 1..8")
    total = max(16, round(seconds * sample_rate))
    width = bits // 8
    pcm = _pcm(total, seed, channels, bits)
    frames = []
    stride = FLAC_BLOCK_SIZE * channels * width
    for number, start in enumerate(range(0, len(pcm), stride)):
        frames.append(_frame(pcm[start : start + stride], number, sample_rate, channels, bits))
    block = min(total, FLAC_BLOCK_SIZE)
    sizes = [len(f) for f in frames]
    md5 = hashlib.md5(pcm).digest()
    info = (
        block.to_bytes(2, "big")
        + block.to_bytes(2, "big")
        + min(sizes).to_bytes(3, "big")
        + max(sizes).to_bytes(3, "big")
        + ((sample_rate << 44) | ((channels - 1) << 41) | ((bits - 1) << 36) | total).to_bytes(
            8, "big"
        )
        + md5
    )
    header = b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info
    return header + b"".join(frames)


def _frame(block: bytes, number: int, sample_rate: int, channels: int, bits: int) -> bytes:
    width = bits // 8
    n = len(block) // (channels * width)
    size_code = _BLOCK_SIZE_CODES.get(n, 7)
    rate_code = _RATE_CODES.get(sample_rate, 0)
    head = bytearray(b"\xff\xf8")
    head.append((size_code << 4) | rate_code)
    head.append(((channels - 1) << 4) | (_BITS_CODES[bits] << 1))
    head += _utf8_number(number)
    if size_code == 7:
        head += (n - 1).to_bytes(2, "big")
    head.append(crc8(head))
    parts = [bytes(head)]
    for c in range(channels):
        parts.append(b"\x02")  # subframe header: VERBATIM, no wasted bits
        parts.append(_channel_be(block, c, channels, width))
    body = b"".join(parts)
    return body + crc16(body).to_bytes(2, "big")


def make_flac_of_size(n_bytes: int, seed: int) -> bytes:
    """A FLAC file of roughly `n_bytes` (16-bit stereo 44.1 kHz), for benchmarks."""
    return make_flac(max(n_bytes, 1) / (44100 * 4), seed)


def _asset(name: str) -> bytes:
    return resources.files("dlqd.demo").joinpath("assets", name).read_bytes()


@cache
def aac_m4a() -> bytes:
    """A 3 s AAC LC stream in MP4 (the HIGH/LOW quality)."""
    return _asset("aac.m4a")


@cache
def dash_init() -> bytes:
    """The initialization segment of the FLAC-in-fragmented-MP4 DASH stream."""
    return _asset("dash_init.mp4")


@cache
def dash_segments() -> tuple[bytes, ...]:
    """The media segments of the DASH stream, in order."""
    return tuple(_asset(f"dash_seg_{i}.m4s") for i in range(1, len(DASH_SEGMENT_DURATIONS) + 1))


@cache
def cover_jpeg() -> bytes:
    """A 64x64 JPEG used as every album's cover."""
    return _asset("cover.jpg")
