"""The upstream circuit: which base URLs are up, when a down one is probed, and the 429 hold.

Owns, per upstream base URL, the count of consecutive transient failures
(connection errors, timeouts, 5xx) and the moment it counts as down
(`upstream.failure_threshold` of them); the backoff between probes of a down
base (`PROBE_STEPS_S`, jittered, capped at `upstream.max_cooldown_s`); and the
upstream-wide rate limit a 429 starts: max(Retry-After capped at
`upstream.max_retry_after_s`, the next backoff step). While every base is down the queue is
held (`upstream_unavailable`, `until` the next probe), and while rate limited
(`rate_limited`, `until` its end); during either, `check_open` raises
`QueueHeld` so that nothing is sent upstream and no try counts. `run` is the
one task that sends the probes and ends the rate limit on time; `force`
(`dlqctl resume --force`) cuts a backoff short.

Never sends a request itself (the probe is Source's), never retries anything,
and never decides what becomes of a job: it only says whether the upstream
may be asked now.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
import trio

from dlqd.errors import DlqdError, ErrorCode, redact_url
from dlqd.holds import HoldReason, Holds, QueueHeld

log = structlog.get_logger("dlqd.circuit")

# Waits before successive probes of a down base, and the floor of successive
# rate limits, each capped at `upstream.max_cooldown_s` and jittered by ±25%.
PROBE_STEPS_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
JITTER = 0.25
FAILURE_THRESHOLD = 5  # upstream.failure_threshold
MAX_COOLDOWN_S = 600.0  # upstream.max_cooldown_s
MAX_RETRY_AFTER_S = 600.0  # upstream.max_retry_after_s
# A base answering this way has failed (failover, and it counts towards the
# circuit); any other error is an answer.
BASE_FAILURES = frozenset(
    {ErrorCode.NETWORK_ERROR, ErrorCode.TIMEOUT, ErrorCode.UPSTREAM_UNAVAILABLE}
)

# One request to a base: returns when it answered below 500, raises the
# `DlqdError` of its failure (or of its 429) otherwise.
Probe = Callable[[str], Awaitable[None]]


@dataclass
class BaseReport:
    """What `dlqctl health` shows for one base (wall-clock times)."""

    last_success: float | None = None  # Unix time
    last_failure: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    down: bool = False
    next_probe: float | None = None  # Unix time; only while down


@dataclass
class _Base:
    """The live state of one base; times are trio's clock."""

    report: BaseReport
    steps: int = 0  # probe steps taken since its last real success: the next wait's index
    next_probe: float = float("inf")
    probing: bool = False


class UpstreamCircuit:
    """Per-base failure counts, probes of down bases, and the upstream-wide rate limit."""

    def __init__(
        self,
        bases: Sequence[str],
        holds: Holds | None = None,
        *,
        failure_threshold: int = FAILURE_THRESHOLD,
        max_cooldown_s: float = MAX_COOLDOWN_S,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._bases = {base: _Base(BaseReport()) for base in bases}
        # A Source built alone (tools, tests) keeps its holds to itself.
        self._holds = holds if holds is not None else Holds(user_held=lambda: False)
        self._threshold = failure_threshold
        self._max_cooldown_s = max_cooldown_s
        self._max_retry_after_s = max_retry_after_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng
        self._rate_until: float | None = None  # trio time the rate limit ends
        self._rate_detail = ""
        self._rate_steps = 0  # 429s since the last 200: the next rate limit's floor
        self._wake = trio.Event()

    # --- asked before every request ----------------------------------------------------

    def check_open(self) -> None:
        """Raise QueueHeld while rate limited or while every base is down."""
        if self._rate_until is not None:
            raise QueueHeld(HoldReason.RATE_LIMITED, self._rate_detail)
        if all(state.report.down for state in self._bases.values()):
            raise QueueHeld(HoldReason.UPSTREAM_UNAVAILABLE, self._down_detail())

    def is_down(self, base: str) -> bool:
        return self._bases[base].report.down

    # --- told after every request ------------------------------------------------------

    def succeeded(self, base: str) -> None:
        """`base` answered 200: it is up, and every backoff starts again from its first step."""
        self.answered(base)
        self._bases[base].steps = 0
        self._rate_steps = 0

    def answered(self, base: str) -> None:
        """`base` answered (a 404, a 429, a body dlqd refuses...): it is up, whatever it said."""
        state = self._bases[base]
        state.report.consecutive_failures = 0
        state.report.last_success = self._wall_clock()
        if state.report.down:
            state.report.down = False
            state.report.next_probe = None
            state.next_probe = float("inf")
            log.info("upstream base is up again", base=redact_url(base))
        self._holds.release(HoldReason.UPSTREAM_UNAVAILABLE)

    def failed(self, base: str, error: DlqdError) -> DlqdError:
        """Count a transient failure of `base`; the error to raise.

        That is `error` itself while some base is up, and QueueHeld once every
        base is down: the failure that completes the set holds the queue
        instead of costing a try.
        """
        state = self._bases[base]
        report = state.report
        report.consecutive_failures += 1
        report.last_failure = self._wall_clock()
        report.last_error = f"{error.code}: {error.message}"
        if not report.down and report.consecutive_failures >= self._threshold:
            report.down = True
            self._schedule_probe(state, error.retry_after)
            log.warning(
                "upstream base is down",
                base=redact_url(base),
                failures=report.consecutive_failures,
                error_code=str(error.code),
                next_probe_in_s=round(state.next_probe - self._clock(), 3),
            )
        if not self._hold_if_all_down():
            return error
        return QueueHeld(HoldReason.UPSTREAM_UNAVAILABLE, self._down_detail())

    def rate_limited(self, error: DlqdError) -> QueueHeld:
        """A 429: hold the whole upstream for max(Retry-After, the next backoff step).

        The cap applies to Retry-After (a hostile one may ask for a year); the
        backoff step is dlqd's own, within max_cooldown_s, so a cap of 0 never
        turns a lasting 429 into a busy loop.
        """
        now = self._clock()
        step = self._step_s(self._rate_steps)
        delay = max(min(error.retry_after or 0.0, self._max_retry_after_s), step)
        until = now + delay
        if self._rate_until is None or until > self._rate_until:
            if self._rate_until is None:
                self._rate_steps += 1
            self._rate_until = until
            self._rate_detail = f"{error.message}; no request goes upstream for {delay:.3g} s"
            self._holds.hold(
                HoldReason.RATE_LIMITED, self._rate_detail, until=self._wall_clock() + delay
            )
            log.warning(
                "upstream rate limited",
                retry_after_s=error.retry_after,
                hold_s=round(delay, 3),
            )
            self._wake.set()
        return QueueHeld(HoldReason.RATE_LIMITED, self._rate_detail)

    # --- the operator ---------------------------------------------------------------------

    def force(self) -> None:
        """End a rate limit now and probe every down base now (`dlqctl resume --force`)."""
        if self._rate_until is not None:
            self._end_rate_limit("ended early by dlqctl resume --force")
        now = self._clock()
        for state in self._bases.values():
            if state.report.down and state.next_probe > now:
                state.next_probe = now
                state.report.next_probe = self._wall_clock()
        self._wake.set()

    def reports(self) -> dict[str, BaseReport]:
        """Per base URL: a copy of what health shows."""
        return {base: _copy(state.report) for base, state in self._bases.items()}

    # --- the probe and timer task ------------------------------------------------------------

    async def run(
        self, probe: Probe, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Probe down bases when due, end the rate limit on time; runs for the daemon's life."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = self._clock()
                if self._rate_until is not None and self._rate_until <= now:
                    self._end_rate_limit("its time is up")
                if self._rate_until is None:  # a probe is a request: none while rate limited
                    for base, state in self._bases.items():
                        if state.report.down and not state.probing and state.next_probe <= now:
                            state.probing = True
                            nursery.start_soon(self._probe, base, state, probe)
                wake = self._wake
                with trio.move_on_at(self._next_due()):
                    await wake.wait()
                if wake.is_set():
                    self._wake = trio.Event()

    async def _probe(self, base: str, state: _Base, probe: Probe) -> None:
        try:
            await probe(base)
        except DlqdError as exc:
            if exc.code == ErrorCode.UPSTREAM_RATE_LIMITED:
                self.answered(base)
                self.rate_limited(exc)
            elif exc.code in BASE_FAILURES:
                self._probe_failed(base, state, exc)
            else:
                self.answered(base)  # an answer below 500 is an upstream that is up
        except Exception as exc:  # a bug must not end the probes, nor the daemon
            log.exception("internal error in an upstream probe", base=redact_url(base))
            self._probe_failed(base, state, DlqdError(ErrorCode.INTERNAL_ERROR, repr(exc)))
        else:
            self.answered(base)
        finally:
            state.probing = False
            self._wake.set()

    def _probe_failed(self, base: str, state: _Base, error: DlqdError) -> None:
        state.report.consecutive_failures += 1
        state.report.last_failure = self._wall_clock()
        state.report.last_error = f"{error.code}: {error.message}"
        if state.report.down:  # not brought up by a request meanwhile
            self._schedule_probe(state, error.retry_after)
            self._hold_if_all_down()
        log.info(
            "upstream probe failed",
            base=redact_url(base),
            error_code=str(error.code),
            next_probe_in_s=round(state.next_probe - self._clock(), 3),
        )

    # --- helpers -----------------------------------------------------------------------------

    def _step_s(self, step: int) -> float:
        """The backoff's `step`-th wait, jittered, within max_cooldown_s."""
        base = min(PROBE_STEPS_S[min(step, len(PROBE_STEPS_S) - 1)], self._max_cooldown_s)
        jittered = base * (1 - JITTER + 2 * JITTER * self._rng())
        return min(jittered, self._max_cooldown_s)

    def _schedule_probe(self, state: _Base, retry_after: float | None = None) -> None:
        """The next probe: after the backoff step, or a 503's Retry-After when longer (capped)."""
        delay = max(self._step_s(state.steps), min(retry_after or 0.0, self._max_retry_after_s))
        state.steps += 1
        state.next_probe = self._clock() + delay
        state.report.next_probe = self._wall_clock() + delay
        self._wake.set()

    def _hold_if_all_down(self) -> bool:
        """Hold the queue (or update the hold's `until`) when every base is down."""
        down = [state for state in self._bases.values() if state.report.down]
        if len(down) < len(self._bases):
            return False
        until = min((s.report.next_probe for s in down if s.report.next_probe), default=None)
        self._holds.hold(HoldReason.UPSTREAM_UNAVAILABLE, self._down_detail(), until=until)
        return True

    def _down_detail(self) -> str:
        failing = "; ".join(
            f"{redact_url(base)}: {state.report.last_error}" for base, state in self._bases.items()
        )
        return f"no upstream base answers, probing with backoff ({failing})"

    def _end_rate_limit(self, why: str) -> None:
        self._rate_until = None
        self._holds.release(HoldReason.RATE_LIMITED)
        log.info("upstream rate limit over", why=why)

    def _next_due(self) -> float:
        if self._rate_until is not None:
            return self._rate_until
        waiting = [
            state.next_probe
            for state in self._bases.values()
            if state.report.down and not state.probing
        ]
        return min(waiting, default=float("inf"))


def _copy(report: BaseReport) -> BaseReport:
    return BaseReport(**vars(report))
