"""The retry policy of dlqd.worker: the jittered backoff schedule and which errors retry."""

from __future__ import annotations

import pytest

from dlqd.errors import DlqdError, ErrorCode
from dlqd.worker import RetryPolicy, backoff_delay

SCHEDULE = (1.0, 2.0, 5.0, 10.0)


def no_jitter() -> float:
    """rng() = 0.5 makes the jitter factor exactly 1."""
    return 0.5


@pytest.mark.parametrize(
    ("retry_number", "expected"),
    [(0, 1.0), (1, 2.0), (2, 5.0), (3, 10.0), (4, 10.0), (50, 10.0)],
)
def test_backoff_follows_the_schedule_then_stays_at_its_last_entry(
    retry_number: int, expected: float
) -> None:
    assert backoff_delay(retry_number, SCHEDULE, None, no_jitter) == expected


@pytest.mark.parametrize("retry_number", range(5))
def test_backoff_jitter_stays_between_half_and_one_and_a_half_times_the_entry(
    retry_number: int,
) -> None:
    base = SCHEDULE[min(retry_number, len(SCHEDULE) - 1)]
    assert backoff_delay(retry_number, SCHEDULE, None, lambda: 0.0) == base * 0.5
    assert backoff_delay(retry_number, SCHEDULE, None, lambda: 0.999999) == pytest.approx(
        base * 1.5, rel=1e-5
    )
    for draw in (0.1, 0.25, 0.75, 0.9):
        assert (
            base * 0.5
            <= backoff_delay(retry_number, SCHEDULE, None, lambda d=draw: d)
            < (base * 1.5)
        )


def test_backoff_with_the_real_rng_is_within_the_jitter_bounds() -> None:
    delays = [backoff_delay(1, SCHEDULE, None) for _ in range(500)]
    assert all(1.0 <= d < 3.0 for d in delays)
    assert len(set(delays)) > 1  # jittered, not a constant


def test_retry_after_wins_when_it_asks_for_longer() -> None:
    assert backoff_delay(0, SCHEDULE, 30.0, lambda: 0.999) == 30.0
    assert backoff_delay(3, SCHEDULE, 12.0, no_jitter) == 12.0


def test_retry_after_shorter_than_the_schedule_does_not_shorten_it() -> None:
    assert backoff_delay(2, SCHEDULE, 0.1, no_jitter) == 5.0
    assert backoff_delay(2, SCHEDULE, 0.0, no_jitter) == 5.0


class Attempts:
    """An attempt that raises the queued errors in turn, then returns "done"."""

    def __init__(self, *errors: DlqdError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def policy(max_retries: int = 3, backoff: tuple[float, ...] = SCHEDULE) -> tuple[RetryPolicy, list]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return RetryPolicy(max_retries, backoff, sleep=sleep, rng=no_jitter), slept


def transient(code: ErrorCode = ErrorCode.UPSTREAM_UNAVAILABLE, **kw: float) -> DlqdError:
    return DlqdError(code, "flaky", **kw)


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.UPSTREAM_NOT_FOUND,
        ErrorCode.UNSUPPORTED_FORMAT,
        ErrorCode.UPSTREAM_BAD_RESPONSE,
        ErrorCode.DISK_FULL,
        ErrorCode.TAGGING_FAILED,
    ],
)
async def test_permanent_error_is_not_retried(code: ErrorCode) -> None:
    retry, slept = policy()
    attempt = Attempts(DlqdError(code, "no"))
    started: list[int] = []

    with pytest.raises(DlqdError) as raised:
        await retry.run(attempt, on_attempt=lambda: started.append(1))

    assert raised.value.code == code
    assert attempt.calls == 1
    assert len(started) == 1
    assert slept == []


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.UPSTREAM_UNAVAILABLE,
        ErrorCode.UPSTREAM_RATE_LIMITED,
        ErrorCode.NETWORK_ERROR,
        ErrorCode.TIMEOUT,
        ErrorCode.INTEGRITY_ERROR,  # a cut-short body: worth another try, then permanent
    ],
)
async def test_transient_error_is_retried_max_retries_times_then_raised(code: ErrorCode) -> None:
    retry, slept = policy(max_retries=3)
    attempt = Attempts(*(transient(code) for _ in range(10)))
    started: list[int] = []

    with pytest.raises(DlqdError) as raised:
        await retry.run(attempt, on_attempt=lambda: started.append(1))

    assert raised.value.code == code
    assert attempt.calls == 4  # the first try and 3 retries
    assert len(started) == 4
    assert slept == [1.0, 2.0, 5.0]  # one backoff before each retry, none after the last


async def test_transient_errors_then_success_returns_the_result() -> None:
    retry, slept = policy(max_retries=3)
    attempt = Attempts(transient(), transient(ErrorCode.NETWORK_ERROR))

    assert await retry.run(attempt) == "done"
    assert attempt.calls == 3
    assert slept == [1.0, 2.0]


async def test_zero_max_retries_tries_once() -> None:
    retry, slept = policy(max_retries=0)
    attempt = Attempts(transient())

    with pytest.raises(DlqdError):
        await retry.run(attempt)
    assert attempt.calls == 1
    assert slept == []


async def test_retry_after_from_the_upstream_sets_the_wait() -> None:
    retry, slept = policy(max_retries=2)
    attempt = Attempts(
        transient(ErrorCode.UPSTREAM_RATE_LIMITED, retry_after=7.5),
        transient(ErrorCode.UPSTREAM_RATE_LIMITED, retry_after=0.5),
    )

    assert await retry.run(attempt) == "done"
    assert slept == [7.5, 2.0]  # the hint wins when longer, the schedule otherwise


async def test_permanent_error_after_transient_ones_stops_retrying() -> None:
    retry, slept = policy(max_retries=5)
    attempt = Attempts(transient(), DlqdError(ErrorCode.UPSTREAM_NOT_FOUND, "gone"), transient())

    with pytest.raises(DlqdError) as raised:
        await retry.run(attempt)
    assert raised.value.code == ErrorCode.UPSTREAM_NOT_FOUND
    assert attempt.calls == 2
    assert slept == [1.0]
