"""What a job object says about size, progress, speed and time left, and the one-line summaries.

Pure tests of `dlqd.rates` (the rate meter, the per-quality estimates), the
job model's sizes / progress / ETA, and `dlqd.summary`; the same facts on a
real daemon are in tests/test_job_fields.py.
"""

from __future__ import annotations

import pytest

from dlqd.model import Job, JobStatus, Track, TrackStatus
from dlqd.rates import BYTES_PER_SECOND, RATE_WINDOW_S, RateMeter, estimated_bytes
from dlqd.summary import human_bytes, human_seconds, job_summary, printable, track_summary

AT = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def album(
    statuses: list[TrackStatus],
    *,
    durations: list[int | None] | None = None,
    quality: str = "LOSSLESS",
    status: JobStatus = JobStatus.PROCESSING,
) -> Job:
    job = Job("1", 1, "album", 5, quality, "normal", AT, status=status, title="A", artist="B")
    for index, track_status in enumerate(statuses):
        duration = 100 if durations is None else durations[index]
        job.tracks.append(Track(1000 + index, f"T{index}", status=track_status, duration=duration))
    return job


def complete(track: Track, size: int) -> None:
    track.status, track.bytes_done, track.bytes_total = TrackStatus.COMPLETED, size, size


# --- the rate meter -----------------------------------------------------------------------


def test_the_meter_gives_bytes_per_second_over_its_window_and_forgets_older_bytes() -> None:
    clock = FakeClock()
    meter = RateMeter(clock=clock)
    for _ in range(10):  # 10 s at 1000 B/s
        clock.now += 1
        meter.add(1000)
    assert meter.rate() == 1000  # the last RATE_WINDOW_S seconds: 5000 B / 5 s
    clock.now += RATE_WINDOW_S + 0.1
    assert meter.rate() == 0  # nothing arrived within the window


def test_a_young_meter_divides_by_its_age_not_the_whole_window() -> None:
    clock = FakeClock()
    meter = RateMeter(clock=clock)
    clock.now += 1.0
    meter.add(4000)
    assert meter.rate() == 4000  # 4000 B in its first second, not 4000 B / 5 s
    clock.now += 0.1
    meter.add(0)  # nothing moved: not a sample
    assert meter.rate() == round(4000 / 1.1)


def test_a_meter_started_again_after_a_long_idle_counts_from_then() -> None:
    clock = FakeClock()
    meter = RateMeter(clock=clock)
    clock.now += 60
    meter.start()
    clock.now += 1
    meter.add(2000)
    assert meter.rate() == 2000  # not 2000 / 5 s: the idle minute is not counted


def test_estimates_are_duration_times_the_rate_of_the_quality() -> None:
    assert BYTES_PER_SECOND == {
        "LOW": 12_000,
        "HIGH": 40_000,
        "LOSSLESS": 105_840,  # 1,411.2 kbit/s x 0.6
        "HI_RES_LOSSLESS": 211_680,
    }
    assert estimated_bytes(200, BYTES_PER_SECOND["HIGH"]) == 8_000_000
    assert estimated_bytes(None, BYTES_PER_SECOND["HIGH"]) is None
    assert estimated_bytes(0, BYTES_PER_SECOND["HIGH"]) is None


# --- sizes -------------------------------------------------------------------------------


def test_a_resolved_job_is_sized_from_durations_and_its_quality() -> None:
    job = album([TrackStatus.PENDING] * 3, durations=[100, 200, 300], quality="HIGH")
    wire = job.to_wire()
    assert (wire["bytes_total"], wire["bytes_total_estimated"]) == (600 * 40_000, True)
    assert wire["progress"] == 0.0


def test_known_sizes_replace_estimates_and_completed_tracks_set_the_rate_for_the_rest() -> None:
    job = album([TrackStatus.PENDING] * 3, durations=[100, 100, 50])
    complete(job.tracks[0], 3_000_000)  # 30,000 B/s of audio, not LOSSLESS's 105,840
    job.tracks[1].status = TrackStatus.DOWNLOADING
    job.tracks[1].bytes_done, job.tracks[1].bytes_total = 1_000_000, 2_500_000
    sizes = job.sizes()
    assert sizes.per_track == (3_000_000, 2_500_000, 1_500_000)
    assert (sizes.total, sizes.estimated) == (7_000_000, True)
    complete(job.tracks[1], 2_500_000)
    complete(job.tracks[2], 1_400_000)
    wire = job.to_wire()
    assert (wire["bytes_total"], wire["bytes_total_estimated"]) == (6_900_000, False)


def test_a_track_without_duration_and_not_started_leaves_the_job_partly_sized() -> None:
    job = album([TrackStatus.COMPLETED, TrackStatus.PENDING], durations=[None, None])
    complete(job.tracks[0], 500)
    sizes = job.sizes()
    assert (sizes.per_track, sizes.complete, sizes.total) == ((500, None), False, 500)
    assert job.progress() == 0.5  # tracks counted one each


# --- progress ------------------------------------------------------------------------------


def test_a_cancelled_job_reports_only_its_completed_tracks() -> None:
    statuses = [TrackStatus.COMPLETED] * 32 + [TrackStatus.CANCELLED] * 88
    job = album(statuses, status=JobStatus.CANCELLED)
    for track in job.tracks[:32]:
        complete(track, 100 * BYTES_PER_SECOND["LOSSLESS"])  # as estimated: equal sizes
    assert job.progress() == round(32 / 120, 4)


def test_failed_tracks_count_nothing_and_a_partial_job_stays_below_one() -> None:
    job = album([TrackStatus.COMPLETED, TrackStatus.FAILED], status=JobStatus.PARTIAL)
    complete(job.tracks[0], 1000)
    job.tracks[1].bytes_total = 1000  # it had started: its size is known
    assert job.progress() == 0.5
    assert job.bytes_done == 1000


def test_a_downloading_track_counts_its_fraction_and_a_completed_job_is_one() -> None:
    job = album([TrackStatus.COMPLETED, TrackStatus.DOWNLOADING], durations=[10, 10])
    complete(job.tracks[0], 1000)
    job.tracks[1].bytes_done, job.tracks[1].bytes_total = 250, 1000
    assert job.progress() == 0.625
    complete(job.tracks[1], 1000)
    job.status = JobStatus.COMPLETED
    assert job.progress() == 1.0
    assert album([], status=JobStatus.COMPLETED).progress() == 1.0
    assert album([], status=JobStatus.FAILED).progress() == 0.0


def test_tracks_skipped_without_a_download_add_no_bytes_and_a_job_of_them_is_one() -> None:
    job = album([TrackStatus.COMPLETED, TrackStatus.COMPLETED, TrackStatus.PENDING])
    complete(job.tracks[0], 0)  # skipped_identical before any request: no bytes
    complete(job.tracks[1], 1000)
    job.tracks[2].bytes_done, job.tracks[2].bytes_total = 0, 1000
    assert job.sizes().per_track == (0, 1000, 1000)
    assert job.progress() == 0.5
    complete(job.tracks[2], 1000)
    assert job.progress() == 1.0
    skipped = album([TrackStatus.COMPLETED] * 2, status=JobStatus.COMPLETED)
    for track in skipped.tracks:
        complete(track, 0)
    assert skipped.progress() == 1.0


# --- speed and ETA ---------------------------------------------------------------------------


def test_eta_is_the_bytes_left_of_unfinished_tracks_over_the_speed() -> None:
    job = album([TrackStatus.COMPLETED, TrackStatus.DOWNLOADING, TrackStatus.PENDING])
    complete(job.tracks[0], 1000)
    job.tracks[1].bytes_done, job.tracks[1].bytes_total = 400, 1000
    job.tracks[2].bytes_total = 1000
    wire = job.to_wire(speed_bps=300)
    assert (wire["speed_bps"], wire["eta_s"]) == (300, 6)  # (600 + 1000) / 300, rounded up
    assert job.to_wire()["eta_s"] is None  # no speed: no estimate


def test_eta_and_speed_are_null_and_zero_unless_the_job_is_processing() -> None:
    job = album([TrackStatus.PENDING], status=JobStatus.QUEUED)
    assert (job.to_wire(speed_bps=500)["speed_bps"], job.to_wire(speed_bps=500)["eta_s"]) == (
        0,
        None,
    )
    unsized = album([TrackStatus.DOWNLOADING, TrackStatus.PENDING], durations=[None, None])
    unsized.tracks[0].bytes_total = 100
    assert unsized.to_wire(speed_bps=500)["eta_s"] is None  # a remaining track has no size


# --- summaries -----------------------------------------------------------------------------


def test_summaries_name_the_job_its_artist_and_title_and_how_it_ended() -> None:
    job = album([TrackStatus.COMPLETED] * 2 + [TrackStatus.FAILED], status=JobStatus.PARTIAL)
    for track in job.tracks[:2]:
        complete(track, 3 * 1024 * 1024)
    job.id, job.artist, job.title = "17", "Artist", "Album"
    job.started_at, job.finished_at = AT, AT + 48.4
    job.error = {"code": "NETWORK_ERROR", "message": "connection reset"}
    assert job_summary(job) == (
        "job 17 partial: Artist – Album (2/3 tracks, 6.0 MiB in 48 s); "
        "NETWORK_ERROR: connection reset"
    )
    line = track_summary(job, 1001, "Artist", "Second", "completed", "3.0 MiB, written")
    assert line == "job 17 track 2/3 completed: Artist – Second (3.0 MiB, written)"
    unresolved = Job("18", 18, "album", 1102, "LOSSLESS", "normal", AT, status=JobStatus.FAILED)
    assert job_summary(unresolved) == "job 18 failed: album 1102"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Björk – Jóga", "Björk – Jóga"),  # letters stay readable
        ("evil\x1b[31mred", "evil\\x1b[31mred"),  # a terminal escape
        ("two\nlines", "two\\nlines"),  # a forged log line
        ("sep\u2028arator", "sep\\u2028arator"),
        ("x" * 130, "x" * 120 + "…"),
    ],
)
def test_upstream_text_in_summaries_is_escaped_and_cut(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_sizes_and_durations_read_as_people_write_them() -> None:
    assert [human_bytes(n) for n in (120, 8 * 1024, 412 * 1024**2, 3 * 1024**3)] == [
        "120 B",
        "8.0 KiB",
        "412 MiB",
        "3.0 GiB",
    ]
    assert [human_seconds(s) for s in (48, 192, 3720)] == ["48 s", "3 min 12 s", "1 h 02 min"]
