"""A hostile upstream transport (issue 8): bomb bodies, huge bodies, Retry-After, redirects.

The daemon tests run a real dlqd against the real catalog server, which plays
the hostile upstream through `CatalogServer.script` / `inject`. Each one checks
the documented job code, that the daemon answers `health`, that an innocent
job queued alongside completes, that a restart on the same state dir stays up
and that nothing appears outside the library and the state dir. The pure
pieces (Retry-After parsing, the cap, error mapping, the bounded reader) have
plain unit tests at the end.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlqd.bodies import DECODE_STEP_BYTES, read_capped
from dlqd.demo.catalog import (
    DASH_TIMELINE_TRACK_ID,
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Scripted,
)
from dlqd.errors import DlqdError, ErrorCode, map_httpx_errors, parse_retry_after
from dlqd.source import MAX_REDIRECTS, _json_values_bound
from dlqd.worker import RetryPolicy, backoff_delay
from tests.conftest import DaemonFactory
from tests.support import DaemonProcess, assert_unharmed, outside_snapshot, wait_until

MIB = 1024 * 1024
SETTINGS: dict[str, dict[str, Any]] = {
    "worker": {"max_retries": 3, "backoff_s": [0.05, 0.1]},
    # A 429 holds the upstream for max(Retry-After capped at 0.5, the backoff step <= 0.2).
    "upstream": {"max_retry_after_s": 0.5, "max_cooldown_s": 0.2},
}


# --- the pattern every hostile case shares -------------------------------------------


@dataclass
class Scene:
    """A running daemon, its upstream, and what lay outside library and state at start."""

    daemon: DaemonProcess
    upstream: CatalogServer
    catalog: Catalog
    outside: dict[str, str]


@pytest.fixture
def scene(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    catalog: Catalog,
    request: pytest.FixtureRequest,
) -> Scene:
    """A started daemon with SETTINGS, plus any overrides given as an indirect parameter."""
    settings = {k: dict(v) for k, v in SETTINGS.items()}
    for section, values in getattr(request, "param", {}).items():
        settings.setdefault(section, {}).update(values)
    daemon = make_daemon(settings=settings, upstream=upstream)
    daemon.start()
    return Scene(daemon, upstream, catalog, outside_snapshot(daemon))


def submit_with_innocent(scene: Scene, type_: str, target: int, quality: str) -> tuple[str, str]:
    """Queue the hostile job, then an innocent album right behind it."""
    innocent_album = scene.catalog.add_album(1, 20_000)
    hostile = scene.daemon.submit(type_, target, quality)
    innocent = scene.daemon.submit("album", innocent_album)
    return hostile, innocent


def assert_daemon_unharmed(scene: Scene, hostile: str, innocent: str) -> None:
    """The shared check (`assert_unharmed`), the upstream's faults cleared first."""
    scene.upstream.clear_faults()
    assert_unharmed(scene.daemon, innocent, scene.outside, hostile_job=hostile)


def failed_with(daemon: DaemonProcess, job_id: str, code: str) -> dict[str, Any]:
    job = daemon.wait_job(job_id)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == code, job["error"]
    return job


def peak_rss_bytes(daemon: DaemonProcess) -> int:
    """The daemon process's high-water resident set size (VmHWM)."""
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def log_events(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    events = []
    for line in daemon.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            events.append(record)
    return events


# --- bodies: a gzip bomb and a 50 MB manifest ----------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """~2 MB of valid gzip that inflates to 2 GiB of zeros.

    One 1 MiB block of zeros is deflated once and ended with a full flush, so
    the block stands alone and 2048 copies of it are a valid deflate stream.
    """
    count = 2048
    zeros = bytes(MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    last_block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (count * MIB) & 0xFFFFFFFF)
    return header + block * count + last_block + trailer


def test_gzip_bomb_on_info_fails_bad_response_within_memory_bound(
    scene: Scene, gzip_bomb: bytes
) -> None:
    daemon, upstream = scene.daemon, scene.upstream
    idle_peak = peak_rss_bytes(daemon)
    upstream.script(
        "info",
        lambda _r, _d: Scripted(
            200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip_bomb
        ),
        track_id=SINGLE_TRACK_ID,
    )
    hostile, innocent = submit_with_innocent(scene, "track", SINGLE_TRACK_ID, "LOSSLESS")

    job = failed_with(daemon, hostile, "UPSTREAM_BAD_RESPONSE")
    assert "decompressed" in job["error"]["message"]
    assert peak_rss_bytes(daemon) - idle_peak < 100 * MIB
    (request,) = upstream.requests_for("info", track_id=SINGLE_TRACK_ID)
    assert request.headers["accept-encoding"] == "gzip, deflate"
    assert_daemon_unharmed(scene, hostile, innocent)


def padded_dash_answer(data: dict[str, Any] | None, padding: bytes) -> bytes:
    """The catalog's own /track/ answer, `padding` put in its MPD just before `</MPD>`.

    With a comment as padding the manifest stays valid: a daemon that read it
    whole would download and complete the track.
    """
    assert data is not None
    mpd = base64.b64decode(data["manifest"])
    data["manifest"] = base64.b64encode(mpd.replace(b"</MPD>", padding + b"</MPD>")).decode()
    return json.dumps({"version": "2.0", "data": data}).encode()


def comment_of(size: int) -> bytes:
    return b"<!--" + b" " * size + b"-->"


def test_50mb_manifest_fails_bad_response_and_health_answers_during_transfer(
    scene: Scene,
) -> None:
    daemon, upstream = scene.daemon, scene.upstream
    halfway, resume = threading.Event(), threading.Event()

    def slow_body(body: bytes) -> Iterator[bytes]:
        """1 MiB chunks; after 8 MiB (half the cap) wait for the test's health calls."""
        for start in range(0, len(body), MIB):
            if start == 8 * MIB:
                halfway.set()
                resume.wait(timeout=30)
            yield body[start : start + MIB]

    def huge_manifest(_request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        body = padded_dash_answer(data, comment_of(50 * MIB))
        return Scripted(200, {"Content-Type": "application/json"}, slow_body(body))

    upstream.script("track", huge_manifest, track_id=DASH_TIMELINE_TRACK_ID)
    hostile, innocent = submit_with_innocent(
        scene, "track", DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS"
    )
    try:
        wait_until(halfway.is_set, what="the daemon to be halfway through the body")
        answers = [daemon.call("health") for _ in range(5)]
    finally:
        resume.set()
    assert all("version" in answer for answer in answers)

    job = failed_with(daemon, hostile, "UPSTREAM_BAD_RESPONSE")
    assert "larger than" in job["error"]["message"]
    assert_daemon_unharmed(scene, hostile, innocent)


def test_manifest_declaring_50mb_is_refused_before_its_body(scene: Scene) -> None:
    def declared_huge(_request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        body = padded_dash_answer(data, comment_of(50 * MIB))
        return Scripted(200, {"Content-Length": str(len(body))}, [body])

    scene.upstream.script("track", declared_huge, track_id=DASH_TIMELINE_TRACK_ID)
    hostile, innocent = submit_with_innocent(
        scene, "track", DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS"
    )
    job = failed_with(scene.daemon, hostile, "UPSTREAM_BAD_RESPONSE")
    assert "on the wire" in job["error"]["message"]
    assert_daemon_unharmed(scene, hostile, innocent)


def test_json_of_millions_of_tiny_values_fails_bad_response_within_memory_bound(
    scene: Scene,
) -> None:
    """15 MiB of `{},` is under the byte cap but would parse into 450 MiB of dicts."""
    daemon = scene.daemon
    idle_peak = peak_rss_bytes(daemon)
    body = b'{"version": "2.0", "data": {"items": [' + b"{}," * (5 * MIB) + b"{}]}}"
    scene.upstream.script("info", lambda _r, _d: Scripted(200, {}, body), track_id=SINGLE_TRACK_ID)
    hostile, innocent = submit_with_innocent(scene, "track", SINGLE_TRACK_ID, "LOSSLESS")

    job = failed_with(daemon, hostile, "UPSTREAM_BAD_RESPONSE")
    assert "JSON values" in job["error"]["message"]
    assert peak_rss_bytes(daemon) - idle_peak < 100 * MIB
    assert_daemon_unharmed(scene, hostile, innocent)


# --- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "retry_after", "honoured"),
    [
        ("info", "inf", False),
        ("info", "nan", False),
        ("info", "1e12", True),
        ("info", "Fri, 31 Dec 9999 23:59:59 GMT", True),
        ("media", "1e12", True),
    ],
)
def test_huge_or_nonfinite_retry_after_never_stalls_the_queue(
    scene: Scene, route: str, retry_after: str, honoured: bool
) -> None:
    """429s with absurd Retry-After: the queue is held at most max_retry_after_s (0.5) each time."""
    daemon = scene.daemon
    # Two 429s in a row (a media try asks no other mirror after a 429: it holds the upstream).
    scene.upstream.inject(
        route,
        "status",
        times=2,
        status=429,
        retry_after=retry_after,
        track_id=SINGLE_TRACK_ID,
    )
    hostile, innocent = submit_with_innocent(scene, "track", SINGLE_TRACK_ID, "LOSSLESS")

    job = daemon.wait_job(hostile)
    assert job["status"] == "completed", job
    holds = [event["hold_s"] for event in log_events(daemon, "upstream rate limited")]
    assert len(holds) == 2
    if honoured:
        assert holds == [0.5, 0.5]  # capped, not ignored
    else:
        assert all(hold < 0.5 for hold in holds)  # ignored: the backoff step's own
    assert_daemon_unharmed(scene, hostile, innocent)


# --- redirects --------------------------------------------------------------------------


def redirect_to_itself(request: RequestRecord, _data: object) -> Scripted:
    location = f"{request.path}?{urlencode(request.query)}"
    return Scripted(302, {"Location": location}, b"")


@pytest.mark.parametrize("route", ["info", "media"])
def test_redirect_loop_fails_bad_response_not_internal_error(scene: Scene, route: str) -> None:
    scene.upstream.script(route, redirect_to_itself, track_id=SINGLE_TRACK_ID)
    hostile, innocent = submit_with_innocent(scene, "track", SINGLE_TRACK_ID, "LOSSLESS")

    job = failed_with(scene.daemon, hostile, "UPSTREAM_BAD_RESPONSE")
    assert "TooManyRedirects" in job["error"]["message"]
    if route == "info":  # permanent: one request and its redirects, no retries
        assert len(scene.upstream.requests_for("info", track_id=SINGLE_TRACK_ID)) == (
            MAX_REDIRECTS + 1
        )
    assert_daemon_unharmed(scene, hostile, innocent)


# --- the resolve deadline ---------------------------------------------------------------


@pytest.mark.parametrize(
    "scene", [{"upstream": {"resolve_timeout_s": 1, "read_timeout_s": 30}}], indirect=True
)
def test_hanging_album_pages_fail_timeout_at_the_resolve_deadline(scene: Scene) -> None:
    """Pages that never answer: TIMEOUT after resolve_timeout_s, long before any read timeout."""
    daemon, upstream = scene.daemon, scene.upstream
    upstream.inject("album", "hang", times=None, album_id=SINGLE_ALBUM_ID)
    hostile, innocent = submit_with_innocent(scene, "album", SINGLE_ALBUM_ID, "LOSSLESS")

    assert upstream.wait_for_request("album")
    assert daemon.call("stats")["worker"]["active_tracks"] == 0  # resolving holds no slot
    job = failed_with(daemon, hostile, "TIMEOUT")
    assert "resolve_timeout_s" in job["error"]["message"]
    assert_daemon_unharmed(scene, hostile, innocent)


# --- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(403, "UPSTREAM_BAD_RESPONSE"), (500, None)])
def test_signed_media_urls_stay_out_of_errors_and_logs(
    scene: Scene, status: int, code: str | None
) -> None:
    daemon, upstream = scene.daemon, scene.upstream
    upstream.inject("media", "status", times=None, status=status, track_id=SINGLE_TRACK_ID)
    hostile, innocent = submit_with_innocent(scene, "track", SINGLE_TRACK_ID, "LOSSLESS")

    job = failed_with(daemon, hostile, code or "UPSTREAM_UNAVAILABLE")
    tokens = {r.query["token"] for r in upstream.requests_for("media", track_id=SINGLE_TRACK_ID)}
    assert tokens
    (track,) = job["tracks"]
    messages = [job["error"]["message"], track["error"]["message"]]
    assert all("/media/" in message for message in messages)  # the URL is named, redacted
    for text in [*messages, daemon.logs()]:
        assert "token=" not in text
        assert not any(token in text for token in tokens)
    assert_daemon_unharmed(scene, hostile, innocent)


# --- unit: Retry-After, its cap, error mapping ----------------------------------------------

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("1e12", 1e12),  # finite: the policy caps it
        ("Tue, 01 Jan 2030 00:01:00 GMT", 60.0),
        ("Tue, 01 Jan 2030 00:01:00 -0000", 60.0),
        ("Mon, 31 Dec 2029 23:00:00 GMT", 0.0),  # a past date: retry now
        ("inf", None),
        ("Infinity", None),
        ("nan", None),
        ("1e400", None),  # overflows to inf
        ("-5", None),
        ("1_000", None),
        ("soon", None),
        ("Tue, 99 Foo 2030 00:00:00 GMT", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_parser(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_backoff_caps_retry_after_at_max_retry_after_s() -> None:
    no_jitter = lambda: 0.5  # noqa: E731
    assert backoff_delay(0, (1.0,), 1e12, no_jitter, max_retry_after_s=600) == 600
    assert backoff_delay(0, (1.0,), 30.0, no_jitter, max_retry_after_s=600) == 30.0
    assert backoff_delay(0, (1.0,), None, no_jitter, max_retry_after_s=0.5) == 1.0


async def test_retry_policy_sleeps_at_most_its_cap() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    calls = iter([True, False])

    async def attempt() -> str:
        if next(calls):
            raise DlqdError(ErrorCode.UPSTREAM_RATE_LIMITED, "429", retry_after=1e12)
        return "done"

    policy = RetryPolicy(1, (0.01,), max_retry_after_s=2.0, sleep=sleep, rng=lambda: 0.5)
    assert await policy.run(attempt) == "done"
    assert slept == [2.0]


SIGNED = "https://user:pw@cdn.test/media/1.flac?token=s3cret#frag"


@pytest.mark.parametrize(
    "exc",
    [
        httpx.TooManyRedirects("Exceeded maximum allowed redirects."),
        httpx.DecodingError("Error -3 while decompressing data"),
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
        httpx.InvalidURL("Invalid port: 'x?token=s3cret'"),
    ],
)
def test_request_errors_that_are_not_transport_failures_map_to_bad_response(
    exc: Exception,
) -> None:
    with pytest.raises(DlqdError) as caught, map_httpx_errors(SIGNED):
        raise exc
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE
    assert caught.value.message.startswith("https://cdn.test/media/1.flac: ")
    assert "pw" not in caught.value.message


def python_values(value: Any) -> int:
    """How many objects json.loads builds for `value`: containers, keys and scalars."""
    if isinstance(value, list):
        return 1 + sum(python_values(item) for item in value)
    if isinstance(value, dict):
        return 1 + sum(1 + python_values(item) for item in value.values())
    return 1


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=40,
)


@given(JSON_VALUES)
def test_json_values_bound_never_undercounts(value: Any) -> None:
    body = json.dumps(value, ensure_ascii=False).encode()
    assert _json_values_bound(body) >= python_values(value)


# --- unit: the bounded body reader --------------------------------------------------------


async def body_chunks(body: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]


async def read_served(body: bytes, headers: dict[str, str], cap: int = MIB) -> bytearray:
    """Serve `body` raw with `headers` through httpx, and read it with `read_capped`."""

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, content=body_chunks(body))

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client,
        client.stream("GET", "http://up.test/info/?id=1&token=x") as response,
    ):
        return await read_capped(response, str(response.url), cap, "body")


def gzip_of(data: bytes) -> bytes:
    deflate = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return deflate.compress(data) + deflate.flush()


PLAIN = b'{"version": "2.0", "data": {}}' * 100


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("", lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip_of),
        ("x-gzip", gzip_of),
        ("deflate", zlib.compress),
        ("GZIP ", gzip_of),
    ],
)
async def test_read_capped_decodes_what_we_asked_for(encoding: str, encode: Any) -> None:
    headers = {"Content-Encoding": encoding} if encoding else {}
    assert await read_served(encode(PLAIN), headers) == PLAIN


@pytest.mark.parametrize(
    ("body", "headers", "mentions"),
    [
        (PLAIN, {"Content-Encoding": "br"}, "was not asked for"),
        (gzip_of(PLAIN), {"Content-Encoding": "gzip, gzip"}, "was not asked for"),
        (gzip_of(PLAIN)[:-20], {"Content-Encoding": "gzip"}, "ends early"),
        (gzip_of(PLAIN) + b"junk", {"Content-Encoding": "gzip"}, "after the end"),
        (b"\x1f\x8b\x08garbage", {"Content-Encoding": "gzip"}, "corrupt"),
        (b"x" * (MIB + 1), {}, "on the wire"),
        (b"x" * 10, {"Content-Length": str(MIB + 1)}, "on the wire"),
        (gzip_of(bytes(MIB + 1)), {"Content-Encoding": "gzip"}, "once decompressed"),
    ],
)
async def test_read_capped_refuses_with_bad_response(
    body: bytes, headers: dict[str, str], mentions: str
) -> None:
    with pytest.raises(DlqdError) as caught:
        await read_served(body, headers)
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE
    assert mentions in caught.value.message
    assert caught.value.message.startswith("http://up.test/info/: ")


async def test_read_capped_inflates_a_bomb_one_bounded_step_at_a_time(gzip_bomb: bytes) -> None:
    """The 2 GiB bomb costs the cap and a step or two in memory, never its inflated size."""
    cap = 4 * DECODE_STEP_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(DlqdError, match="once decompressed"):
            await read_served(gzip_bomb, {"Content-Encoding": "gzip"}, cap=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * cap + 2 * DECODE_STEP_BYTES
