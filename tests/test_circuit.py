"""UpstreamCircuit on its own: the backoff of probes, the 429 hold's length, and `force`.

No network here: the circuit is told what requests did and read back through
its holds and reports, with fixed clocks and jitter. Source's use of it, with a
real upstream, is in test_source.py; the daemon's, in test_outages.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import trio

from dlqd.circuit import PROBE_STEPS_S, UpstreamCircuit
from dlqd.errors import DlqdError, ErrorCode, from_http_status
from dlqd.holds import HoldReason, Holds, QueueHeld

BASE = "http://up.test"
WALL = 10_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def circuit(
    holds: Holds, clock: Clock, *, jitter: float = 0.5, **settings: float
) -> UpstreamCircuit:
    """A one-base circuit whose wall clock is WALL + the trio clock's advance; no jitter at 0.5."""
    return UpstreamCircuit(
        [BASE],
        holds,
        clock=clock,
        wall_clock=lambda: WALL + clock.now - 100.0,
        rng=lambda: jitter,
        **settings,  # type: ignore[arg-type]
    )


def failure() -> DlqdError:
    return DlqdError(ErrorCode.UPSTREAM_UNAVAILABLE, "http://up.test/info/: server error (503)")


def rate_limit(retry_after: float | None) -> DlqdError:
    return DlqdError(
        ErrorCode.UPSTREAM_RATE_LIMITED,
        "http://up.test/info/: rate limited (429)",
        retry_after=retry_after,
    )


@pytest.fixture
def holds() -> Holds:
    return Holds(user_held=lambda: False, clock=lambda: WALL)


class FakeProbe:
    """Records when each probe is sent (trio time) and fails the first `failures` of them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[float] = []

    async def __call__(self, base: str) -> None:
        self.sent.append(trio.current_time())
        if len(self.sent) <= self.failures:
            raise failure()


def on_trio_clock(holds: Holds, **settings: float) -> UpstreamCircuit:
    """A one-base circuit on trio's (mock) clock, without jitter."""
    return UpstreamCircuit(
        [BASE],
        holds,
        wall_clock=lambda: WALL + trio.current_time(),
        rng=lambda: 0.5,
        **settings,  # type: ignore[arg-type]
    )


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(10_000):  # mock seconds
        while not condition():
            await trio.sleep(0.05)


async def test_probes_back_off_through_the_steps_up_to_max_cooldown_and_an_answer_releases(
    holds: Holds, autojump_clock: trio.abc.Clock
) -> None:
    upstream = on_trio_clock(holds, failure_threshold=1, max_cooldown_s=30.0)
    probe = FakeProbe(failures=8)
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.run, probe)
        went_down = trio.current_time()
        assert isinstance(upstream.failed(BASE, failure()), QueueHeld)
        await wait_for(lambda: not holds.faults())
        nursery.cancel_scope.cancel()
    times = [went_down, *probe.sent]
    waits = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert waits == pytest.approx([1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0, 30.0, 30.0], abs=0.01)
    assert PROBE_STEPS_S[:4] == (1.0, 2.0, 5.0, 10.0)
    assert not upstream.reports()[BASE].down


async def test_while_down_the_hold_says_when_the_next_probe_is_due(
    holds: Holds, autojump_clock: trio.abc.Clock
) -> None:
    upstream = on_trio_clock(holds, failure_threshold=1)
    probe = FakeProbe(failures=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.run, probe)
        upstream.failed(BASE, failure())
        untils = []
        while len(probe.sent) < 3:
            (hold,) = holds.faults()
            if hold.until not in untils:
                untils.append(hold.until)
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert untils == pytest.approx([WALL + t for t in probe.sent], abs=0.01)


def test_probe_waits_are_jittered_within_a_quarter() -> None:
    for jitter, expected in ((0.0, 0.75), (1.0, 1.25)):
        holds = Holds(user_held=lambda: False, clock=lambda: WALL)
        upstream = circuit(holds, Clock(), jitter=jitter, failure_threshold=1)
        upstream.failed(BASE, failure())
        (hold,) = holds.faults()
        assert hold.until == pytest.approx(WALL + expected)


def test_an_answer_after_flapping_keeps_the_backoff_but_a_success_resets_it(holds: Holds) -> None:
    clock = Clock()
    upstream = circuit(holds, clock, failure_threshold=1)
    upstream.failed(BASE, failure())  # down: first probe after 1 s
    upstream.answered(BASE)  # a probe's answer: up again, the hold ends
    assert holds.faults() == []
    upstream.failed(BASE, failure())  # down again at once: the backoff goes on
    (hold,) = holds.faults()
    assert hold.until == pytest.approx(WALL + 2.0)
    upstream.succeeded(BASE)  # a real 200: the next outage starts from the first step
    upstream.failed(BASE, failure())
    (hold,) = holds.faults()
    assert hold.until == pytest.approx(WALL + 1.0)


@pytest.mark.parametrize(
    ("retry_after", "max_retry_after_s", "expected_s"),
    [
        (7.0, 600.0, 7.0),  # Retry-After longer than the backoff step wins
        (0.2, 600.0, 1.0),  # the backoff step is the floor
        (None, 600.0, 1.0),  # no (or an unusable) Retry-After: the backoff step
        (10.0**9, 600.0, 600.0),  # a hostile Retry-After is capped
        (10.0**9, 0.0, 1.0),  # a cap of 0 never makes a busy loop of a lasting 429
    ],
)
def test_a_429_holds_for_the_longer_of_retry_after_and_the_backoff_step(
    holds: Holds, retry_after: float | None, max_retry_after_s: float, expected_s: float
) -> None:
    upstream = circuit(holds, Clock(), max_retry_after_s=max_retry_after_s)
    held = upstream.rate_limited(rate_limit(retry_after))
    assert held.reason == HoldReason.RATE_LIMITED
    (hold,) = holds.faults()
    assert hold.reason == HoldReason.RATE_LIMITED
    assert hold.until == pytest.approx(WALL + expected_s)
    with pytest.raises(QueueHeld) as caught:
        upstream.check_open()
    assert caught.value.reason == HoldReason.RATE_LIMITED


@pytest.mark.parametrize(
    ("retry_after", "max_retry_after_s", "expected_s"),
    [
        (30.0, 600.0, 30.0),  # maintenance: "back in 30 s" outlasts the first step (1 s)
        (0.2, 600.0, 1.0),  # the backoff step is the floor
        (10.0**9, 600.0, 600.0),  # capped like a 429's
    ],
)
def test_a_503_with_retry_after_puts_the_probe_after_it(
    holds: Holds, retry_after: float, max_retry_after_s: float, expected_s: float
) -> None:
    clock = Clock()
    upstream = circuit(holds, clock, failure_threshold=1, max_retry_after_s=max_retry_after_s)
    error = from_http_status(503, f"{BASE}/info/", repr(retry_after))
    assert error.code == ErrorCode.UPSTREAM_UNAVAILABLE and error.retry_after == retry_after
    upstream.failed(BASE, error)
    (hold,) = holds.faults()
    assert hold.reason == HoldReason.UPSTREAM_UNAVAILABLE
    assert hold.until == pytest.approx(WALL + expected_s)


def test_only_a_503_carries_retry_after_other_server_errors_back_off_by_steps() -> None:
    assert from_http_status(503, f"{BASE}/info/", "120").retry_after == 120.0
    assert from_http_status(500, f"{BASE}/info/", "120").retry_after is None
    assert from_http_status(502, f"{BASE}/info/", "120").retry_after is None


def test_successive_429s_grow_the_floor_and_a_success_resets_it(holds: Holds) -> None:
    upstream = circuit(holds, Clock())
    lengths = []
    for _ in range(3):
        upstream.rate_limited(rate_limit(None))
        (hold,) = holds.faults()
        assert hold.until is not None
        lengths.append(hold.until - WALL)
        upstream.force()  # ends it, as if its time were up
    upstream.succeeded(BASE)
    upstream.rate_limited(rate_limit(None))
    (hold,) = holds.faults()
    assert lengths == pytest.approx([1.0, 2.0, 5.0])
    assert hold.until == pytest.approx(WALL + 1.0)


def test_429s_met_during_a_rate_limit_never_shorten_it(holds: Holds) -> None:
    upstream = circuit(holds, Clock())
    upstream.rate_limited(rate_limit(30.0))
    upstream.rate_limited(rate_limit(3.0))  # an in-flight request's answer
    (hold,) = holds.faults()
    assert hold.until == pytest.approx(WALL + 30.0)


async def test_a_rate_limit_ends_by_itself_at_its_until_and_no_probe_goes_out_during_it(
    holds: Holds, autojump_clock: trio.abc.Clock
) -> None:
    upstream = on_trio_clock(holds, failure_threshold=1)
    probe = FakeProbe(failures=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.run, probe)
        upstream.failed(BASE, failure())  # a probe would be due after 1 s...
        upstream.rate_limited(rate_limit(10.0))  # ...but the upstream asked for 10 s of quiet
        (rate_hold,) = [h for h in holds.faults() if h.reason == HoldReason.RATE_LIMITED]
        await wait_for(lambda: not holds.is_held(HoldReason.RATE_LIMITED))
        ended = trio.current_time()
        await wait_for(lambda: not holds.faults())
        nursery.cancel_scope.cancel()
    assert rate_hold.until == pytest.approx(WALL + 10.0)
    assert ended == pytest.approx(10.0, abs=0.06)  # polled every 0.05 s
    assert probe.sent == pytest.approx([10.0], abs=0.01)


async def test_force_ends_a_rate_limit_and_probes_every_down_base_at_once(
    holds: Holds, autojump_clock: trio.abc.Clock
) -> None:
    upstream = on_trio_clock(holds, failure_threshold=1)
    probe = FakeProbe(failures=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.run, probe)
        upstream.rate_limited(rate_limit(300.0))
        upstream.failed(BASE, failure())
        assert {hold.reason for hold in holds.faults()} == {
            HoldReason.RATE_LIMITED,
            HoldReason.UPSTREAM_UNAVAILABLE,
        }
        await trio.sleep(0.5)
        forced = trio.current_time()
        upstream.force()
        await wait_for(lambda: not holds.faults())
        nursery.cancel_scope.cancel()
    assert probe.sent == [forced]
