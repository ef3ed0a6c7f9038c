"""Text building blocks for dlqctl's screens: safe strings, sizes, rates, times, bars, columns.

Owns how one value looks on a terminal. Every string that came from the
daemon (and so maybe from the upstream) passes `printable` before it is
shown, so a title cannot move the cursor, ring the bell or reorder the line.
Never: talks to the daemon, reads the terminal, or imports anything beyond
the standard library.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

# C0 and C1 controls, DEL, and the invisible marks that reorder text (bidi overrides).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character written out as `\\xNN` / `\\uNNNN`."""
    return _UNSAFE.sub(_escape, text)


def printable_doc(value: Any) -> Any:
    """A daemon answer with `printable` applied to every string in it, for text output."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: printable_doc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [printable_doc(item) for item in value]
    return value


def size(count: int | float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def rate(bytes_per_s: Any) -> str:
    """`1.2 MiB/s`; `-` when unknown (an older daemon) and when nothing moves."""
    if not isinstance(bytes_per_s, int | float) or bytes_per_s <= 0:
        return "-"
    return size(bytes_per_s) + "/s"


def duration(seconds: Any) -> str:
    """`42s`, `3:07`, `1:02:03`, `3d04h`; `-` when unknown."""
    if not isinstance(seconds, int | float) or seconds < 0 or seconds != seconds:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    if hours == 0:
        return f"{minutes}:{secs:02d}"
    if hours < 24:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def bar(fraction: float, width: int) -> str:
    """A progress bar `width` cells wide, in eighths of a cell."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    return ("█" * full + partial).ljust(width, "·")[:width]


def percent(fraction: float) -> str:
    return f"{min(1.0, max(0.0, fraction)) * 100:3.0f}%"


def cell_width(text: str) -> int:
    """Terminal cells `text` takes: wide (CJK) characters 2, combining marks 0."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def fit(text: str, width: int) -> str:
    """`text` cut to `width` cells, with `…` where it was cut; padded to exactly `width`."""
    if width <= 0:
        return ""
    if cell_width(text) <= width:
        return text + " " * (width - cell_width(text))
    kept, used = [], 0
    for char in text:
        step = cell_width(char)
        if used + step > width - 1:
            break
        kept.append(char)
        used += step
    return "".join(kept) + "…" + " " * (width - 1 - used)


def columns(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, stretch: int | None, width: int
) -> list[str]:
    """Rows lined up under `headers`, two spaces apart, no line wider than `width`.

    Column `stretch` (usually the title) takes the room the others leave and
    is cut with `…` to fit; the others keep their natural width.
    """
    widths = [
        max(cell_width(cell) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    if stretch is not None:
        others = sum(w for i, w in enumerate(widths) if i != stretch) + 2 * (len(widths) - 1)
        widths[stretch] = max(1, min(widths[stretch], width - others))
    lines = []
    for row in (headers, *rows):
        line = "  ".join(fit(cell, w) for cell, w in zip(row, widths, strict=True)).rstrip()
        lines.append(line if cell_width(line) <= width else fit(line, width).rstrip())
    return lines
