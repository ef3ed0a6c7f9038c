"""Upstream outages hold the queue instead of burning it (issue 9 items 3 and 7).

A real dlqd process against the real HTTP test upstream, with short timings
set through its config: a few failures take a base down, probes come every
fraction of a second. While the upstream is down (503s, reset connections)
or rate limited (429), `stats` shows the hold, `health` the problem, no job
or track ever shows failed or partial — every test watches `list` the whole
time — and the work completes once the upstream is back. Request arrival
times (`RequestRecord.at`) show that nothing but probes reaches the upstream
while it is held.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, TypeVar

import pytest

from dlqd.demo.catalog import Catalog, CatalogServer, RequestRecord, Scripted
from tests.conftest import DaemonFactory
from tests.support import DaemonProcess, dlqctl, flac_audio, wait_until

T = TypeVar("T")
JSON_AND_MEDIA = ("info", "album", "track", "media")
PROBE_EVERY_S = 0.3  # upstream.max_cooldown_s below: every probe step, jittered to 0.225-0.3 s

# Two failures in a row take a base down, and a track has three tries: the
# circuit opens before any track can run out of tries on an outage.
SETTINGS: dict[str, dict[str, Any]] = {
    "upstream": {
        "failure_threshold": 2,
        "max_cooldown_s": PROBE_EVERY_S,
        "connect_timeout_s": 1,
        "read_timeout_s": 2,
    },
    "worker": {"max_retries": 2, "backoff_s": [0.02, 0.05], "max_concurrent": 2},
}


class Observer:
    """Polls the daemon; fails the test the moment a job or track shows a failure.

    Every wait goes through `wait`, so `list` is checked from the first
    submit to the last completion, and every hold `stats` shows is noted
    (reason and start: a hold's `until` moves with each probe).
    """

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.holds: list[tuple[str, float]] = []

    def look(self) -> None:
        for job in self.daemon.jobs():
            assert job["status"] not in ("failed", "partial"), job
            for track in job["tracks"]:
                assert track["status"] != "failed" and track["error"] is None, (job["id"], track)
        for hold in self.daemon.call("stats")["holds"]:
            if (hold["reason"], hold["since"]) not in self.holds:
                self.holds.append((hold["reason"], hold["since"]))

    def wait(self, predicate: Callable[[], T], what: str, timeout: float = 30.0) -> T:
        def checked() -> T:
            self.look()
            return predicate()

        return wait_until(checked, timeout=timeout, what=what)

    def hold(self, reason: str) -> dict[str, Any]:
        """Wait until `stats` shows a hold for `reason`; return it."""

        def shown() -> dict[str, Any] | None:
            holds = self.daemon.call("stats")["holds"]
            return next((hold for hold in holds if hold["reason"] == reason), None)

        return self.wait(shown, f"a {reason} hold")

    def no_hold(self) -> bool:
        return not self.daemon.call("stats")["holds"]

    def completed(self, job_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.daemon.job(job_id)
            return job if job["status"] == "completed" else None

        return self.wait(done, f"job {job_id} to complete")


def assert_every_track_is_the_upstreams(
    daemon: DaemonProcess, catalog: Catalog, job: dict[str, Any], album: int
) -> None:
    assert [t["track_id"] for t in job["tracks"]] == list(catalog.album(album).track_ids)
    for track in job["tracks"]:
        assert track["status"] == "completed", track
        final = (daemon.library / track["path"]).read_bytes()
        assert flac_audio(final) == flac_audio(catalog.audio_for(track["track_id"], "LOSSLESS"))


def requests_between(upstream: CatalogServer, start: float, end: float) -> list[RequestRecord]:
    return [r for r in upstream.requests if start < r.at < end]


# --- the upstream down ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["status", "reset"], ids=["503", "reset"])
def test_an_outage_longer_than_every_retry_holds_the_queue_and_both_albums_complete(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, fault: str
) -> None:
    upstream.throttle_bps = 2_000_000  # per connection: tracks are mid-transfer at the outage
    daemon = make_daemon(upstream=upstream, settings=SETTINGS)
    daemon.start()
    watch = Observer(daemon)
    albums = [catalog.add_album(4, 400_000) for _ in range(2)]
    jobs = [daemon.submit("album", album) for album in albums]
    watch.wait(
        lambda: (
            all(daemon.job(j)["title"] for j in jobs)
            and sum(j["bytes_done"] for j in daemon.jobs()) > 0
        ),
        "both albums resolved and downloading",
    )

    for route in JSON_AND_MEDIA:
        upstream.inject(route, fault, None, status=503)
    hold = watch.hold("upstream_unavailable")
    assert hold["until"] is not None and hold["until"] > hold["since"], hold
    assert upstream.base_url in hold["detail"], hold
    health = daemon.call("health")
    assert not health["ok"] and {"holds", "upstream"} <= set(health["problems"]), health
    base = health["checks"]["upstream"]["bases"][upstream.base_url]
    assert base["down"] and base["next_probe"] is not None, base

    # The outage outlasts every retry: several probes fail before it ends.
    held_from = time.time()
    watch.wait(lambda: len(requests_between(upstream, held_from, time.time())) >= 3, "3 probes")
    upstream.clear_faults()
    held_until = time.time()
    for job_id, album in zip(jobs, albums, strict=True):
        assert_every_track_is_the_upstreams(daemon, catalog, watch.completed(job_id), album)

    # While held only probes went out, one per backoff step: /info/ of the latest track.
    probes = requests_between(upstream, held_from, held_until)
    assert {r.route for r in probes} == {"info"}, probes
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(probes)]
    assert min(gaps) > PROBE_EVERY_S * 0.75 - 0.05, gaps
    assert watch.no_hold() and daemon.call("health")["ok"]
    assert [reason for reason, _since in watch.holds] == ["upstream_unavailable"]


# --- rate limited ------------------------------------------------------------------------------


def retry_after_seconds(_request: RequestRecord, _data: object) -> Scripted:
    return Scripted(429, {"Retry-After": "2"}, b'{"detail": "slow down"}')


class RetryAfterDate:
    """A 429 whose Retry-After is an HTTP date 2 s after the request; remembers the date."""

    def __init__(self) -> None:
        self.until: float | None = None

    def __call__(self, _request: RequestRecord, _data: object) -> Scripted:
        date = formatdate(time.time() + 2, usegmt=True)
        self.until = parsedate_to_datetime(date).timestamp()
        return Scripted(429, {"Retry-After": date}, b'{"detail": "slow down"}')


@pytest.mark.parametrize(
    ("route", "form"),
    [("track", "seconds"), ("media", "http-date"), ("album", "seconds")],
    ids=["playback-seconds", "media-http-date", "resolve-seconds"],
)
def test_a_429_holds_every_request_until_retry_after_and_the_job_completes(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, route: str, form: str
) -> None:
    settings = {**SETTINGS, "worker": {**SETTINGS["worker"], "max_concurrent": 1}}
    daemon = make_daemon(upstream=upstream, settings=settings)
    daemon.start()
    watch = Observer(daemon)
    album = catalog.add_album(3, 50_000)
    dated = RetryAfterDate()
    responder = dated if form == "http-date" else retry_after_seconds
    target = {"album_id": album} if route == "album" else {"track_id": album * 1000 + 2}
    upstream.script(route, responder, times=1, **target)

    job_id = daemon.submit("album", album)
    hold = watch.hold("rate_limited")
    assert "429" in hold["detail"], hold
    assert "holds" in daemon.call("health")["problems"]
    job = watch.completed(job_id)
    assert_every_track_is_the_upstreams(daemon, catalog, job, album)

    if form == "http-date":
        assert dated.until is not None
        assert hold["until"] == pytest.approx(dated.until, abs=0.05)
    else:
        assert hold["until"] - hold["since"] == pytest.approx(2.0, abs=0.05)
    # Nothing reached the upstream while the hold lasted; the first request after it
    # came only once it was over.
    (limited,) = [r for r in upstream.requests_for(route) if r.at < hold["since"] + 0.01][-1:]
    assert requests_between(upstream, limited.at, hold["until"] - 0.01) == []
    assert [reason for reason, _since in watch.holds] == ["rate_limited"]
    assert watch.no_hold()


def test_a_lasting_429_never_fails_the_track_it_holds_until_the_upstream_relents(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(upstream=upstream, settings=SETTINGS)
    daemon.start()
    watch = Observer(daemon)
    album = catalog.add_album(2, 50_000)
    upstream.inject("media", "status", None, status=429, retry_after=0, track_id=album * 1000 + 1)
    job_id = daemon.submit("album", album)
    watch.hold("rate_limited")
    # More 429s than a track has tries (3), each one holding the queue anew.
    watch.wait(lambda: len(upstream.requests_for("media", track_id=album * 1000 + 1)) > 4, "429s")
    upstream.clear_faults()
    assert_every_track_is_the_upstreams(daemon, catalog, watch.completed(job_id), album)


# --- several base URLs --------------------------------------------------------------------------


def test_with_two_bases_one_down_fails_over_without_a_hold_and_both_down_hold_until_one_is_back(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    with CatalogServer(catalog) as second:
        settings = {
            **SETTINGS,
            "upstream": {**SETTINGS["upstream"], "base_url": [upstream.base_url, second.base_url]},
        }
        daemon = make_daemon(upstream=upstream, settings=settings)
        daemon.start()
        watch = Observer(daemon)

        # The first base down: requests fail over to the second, and nothing is held.
        for route in JSON_AND_MEDIA:
            upstream.inject(route, "status", None, status=503)
        first_album = catalog.add_album(3, 50_000)
        first_job = daemon.submit("album", first_album)
        job = watch.wait(
            lambda: (j := daemon.job(first_job))["status"] == "completed" and watch.no_hold() and j,
            "the first album to complete",
        )
        assert_every_track_is_the_upstreams(daemon, catalog, job, first_album)
        assert watch.holds == []
        upstream_check = daemon.call("health")["checks"]["upstream"]
        bases = upstream_check["bases"]
        assert upstream_check["ok"], upstream_check
        assert bases[upstream.base_url]["down"] and not bases[second.base_url]["down"], bases
        assert {r.route for r in second.requests} >= {"album", "track", "media"}

        # Both down: the queue is held.
        for route in JSON_AND_MEDIA:
            second.inject(route, "status", None, status=503)
        second_album = catalog.add_album(3, 50_000)
        second_job = daemon.submit("album", second_album)
        hold = watch.hold("upstream_unavailable")
        assert upstream.base_url in hold["detail"] and second.base_url in hold["detail"], hold

        # One comes back: the queue resumes by itself, through it.
        second.clear_faults()
        job = watch.completed(second_job)
        assert_every_track_is_the_upstreams(daemon, catalog, job, second_album)
        watch.wait(watch.no_hold, "the hold to end")
        bases = daemon.call("health")["checks"]["upstream"]["bases"]
        assert bases[upstream.base_url]["down"] and not bases[second.base_url]["down"], bases
        assert [reason for reason, _since in watch.holds] == ["upstream_unavailable"]


# --- resume --force -----------------------------------------------------------------------------


def test_resume_force_ends_a_long_rate_limit_at_once(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon = make_daemon(upstream=upstream, settings=SETTINGS)
    daemon.start()
    watch = Observer(daemon)
    album = catalog.add_album(2, 50_000)
    upstream.inject("track", "status", 1, status=429, retry_after=3600, track_id=album * 1000 + 1)
    job_id = daemon.submit("album", album)
    hold = watch.hold("rate_limited")
    assert hold["until"] - hold["since"] == pytest.approx(600, abs=1)  # max_retry_after_s

    code, out, err = dlqctl(daemon.socket, "resume", "--force")
    assert code == 0, out + err
    assert_every_track_is_the_upstreams(daemon, catalog, watch.completed(job_id), album)
    assert time.time() < hold["until"]
    assert watch.no_hold()


def test_resume_force_probes_a_down_upstream_now_instead_of_at_its_next_step(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    settings = {**SETTINGS, "upstream": {**SETTINGS["upstream"], "max_cooldown_s": 600}}
    daemon = make_daemon(upstream=upstream, settings=settings)
    daemon.start()
    watch = Observer(daemon)
    upstream.inject("info", "status", None, status=503)
    album = catalog.add_album(1, 50_000)
    track_id = album * 1000 + 1
    job_id = daemon.submit("track", track_id)
    # Probes fail after ~1 s, then ~2 s: the next one is due ~5 s later (at least 3.75 s).
    hold = watch.wait(
        lambda: next(
            (h for h in daemon.call("stats")["holds"] if h["until"] - time.time() > 3), None
        ),
        "a backoff of more than 3 s",
    )
    assert hold["reason"] == "upstream_unavailable"
    assert len(upstream.requests_for("info")) >= 4  # two tries, two probes

    upstream.clear_faults()
    code, out, err = dlqctl(daemon.socket, "resume", "--force")
    assert code == 0, out + err
    watch.completed(job_id)
    assert time.time() < hold["until"]
    assert watch.no_hold()


def test_resume_force_with_a_job_is_a_usage_error(daemon: DaemonProcess) -> None:
    code, _out, err = dlqctl(daemon.socket, "resume", "7", "--force")
    assert code == 2 and "no JOB" in err
    refusal = daemon.refused("resume", id="7", force=True)
    assert refusal.code == "INVALID_ARGUMENT"
