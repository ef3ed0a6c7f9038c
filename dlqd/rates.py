"""Transfer rates and size estimates: what `speed_bps`, `eta_s` and estimated sizes rest on.

Owns the per-job rate meter (bytes per second over a short sliding window,
fed by download progress) and the bytes per second of audio that each
quality is expected to take, used to size tracks that have not started.
Pure arithmetic over numbers it is given and a monotonic clock: it never
looks at the queue, never does I/O, and imports only the standard library
(the job model and dlqctl's protocol module import it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

RATE_WINDOW_S = 5.0  # `speed_bps` is the rate over this many seconds
_MIN_SPAN_S = 0.5  # a meter younger than this divides by it: no spike at the first sample
_BUCKET_S = 0.1  # bytes arriving this close together share one sample: the window stays small

# Bytes per second of audio, per quality asked, for sizing tracks not yet started.
# LOSSLESS: CD audio (44.1 kHz x 16 bit x 2 channels = 1,411.2 kbit/s) compressed
# by FLAC to about 60 %; HI_RES_LOSSLESS: about twice that (24 bit, 48-96 kHz);
# HIGH and LOW: the AAC bitrates the upstream serves (320 and 96 kbit/s).
_CD_BITS_PER_S = 44_100 * 16 * 2
FLAC_RATIO = 0.6
BYTES_PER_SECOND = {
    "LOW": 96_000 // 8,
    "HIGH": 320_000 // 8,
    "LOSSLESS": round(_CD_BITS_PER_S * FLAC_RATIO / 8),
    "HI_RES_LOSSLESS": 2 * round(_CD_BITS_PER_S * FLAC_RATIO / 8),
}


def estimated_bytes(duration_s: int | None, bytes_per_second: float) -> int | None:
    """A track's expected size from its duration, or None when the duration is unknown."""
    if not duration_s or duration_s <= 0:
        return None
    return round(duration_s * bytes_per_second)


class RateMeter:
    """Bytes per second over the last `window_s` seconds, from byte counts as they arrive.

    `add` records bytes moved now; `rate` sums what arrived within the window
    and divides by the window — or, for a meter started (or idle past the
    window and started again) less than a window ago, by the time since then.
    """

    def __init__(
        self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self._since = clock()

    def start(self) -> None:
        """Work begins (again): a meter idle for a whole window counts from now."""
        now = self.clock()
        self._drop_old(now)
        if not self._samples and now - self._since >= self.window_s:
            self._since = now

    def add(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        now = self.clock()
        if self._samples and now - self._samples[-1][0] < _BUCKET_S:
            stamp, earlier = self._samples[-1]
            self._samples[-1] = (stamp, earlier + nbytes)
        else:
            self._samples.append((now, nbytes))

    def rate(self) -> int:
        now = self.clock()
        self._drop_old(now)
        if not self._samples:
            return 0
        span = max(_MIN_SPAN_S, min(self.window_s, now - self._since))
        return round(sum(n for _, n in self._samples) / span)

    def _drop_old(self, now: float) -> None:
        horizon = now - self.window_s
        while self._samples and self._samples[0][0] <= horizon:  # a sample covers bytes before it
            self._samples.popleft()
