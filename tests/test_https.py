"""Media over HTTPS (issue 11): trust, refusal, cancel, resume, chunked bodies, redirects.

The catalog serves TLS with a certificate from a CA generated for the test
session (openssl CLI). This sandbox sets SSL_CERT_FILE / SSL_CERT_DIR for
every process, so each daemon here runs with both unset: it trusts certifi's
bundle plus exactly what `upstream.ca_file` adds. In-process transfers get
the context the daemon would build (`trust_context`).
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio

from dlqd.demo.catalog import (
    DASH_TIMELINE_TRACK_ID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Responder,
    Scripted,
)
from dlqd.errors import DlqdError, ErrorCode
from dlqd.fetch import FetchResult, fetch_to_file
from dlqd.meta import MediaPlan
from dlqd.source import Source
from dlqd.transfer import trust_context
from tests.conftest import DaemonFactory
from tests.support import (
    Certificates,
    DaemonProcess,
    assert_unharmed,
    flac_audio,
    library_files,
    make_certificates,
    outside_snapshot,
)
from tests.test_downloads import display_title, expected_relpath, vorbis_tags
from tests.test_resilience import tmp_entries, track_of, wait_bytes

NO_SYSTEM_TRUST = {"SSL_CERT_FILE": None, "SSL_CERT_DIR": None}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """The test CA and a server certificate it signed for 127.0.0.1 and localhost."""
    return make_certificates(tmp_path_factory.mktemp("tls") / "trusted")


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A certificate for 127.0.0.1 from another CA, which nothing here trusts."""
    return make_certificates(tmp_path_factory.mktemp("tls") / "foreign")


@pytest.fixture(scope="session")
def wrong_name_pki(tmp_path_factory: pytest.TempPathFactory, pki: Certificates) -> Certificates:
    """A certificate from the trusted CA, but for another host name."""
    return make_certificates(
        tmp_path_factory.mktemp("tls") / "wrong-name", names="DNS:cdn.example.org", ca=pki
    )


@pytest.fixture
def tls_upstream(catalog: Catalog, pki: Certificates) -> Iterator[CatalogServer]:
    with CatalogServer(catalog, ssl_context=pki.server_context()) as server:
        yield server


@pytest.fixture
async def source(tls_upstream: CatalogServer, pki: Certificates) -> AsyncIterator[Source]:
    upstream = Source(
        [tls_upstream.base_url],
        tls_upstream.cover_base_url,
        2.0,
        2.0,
        "dlqd-test",
        ssl_context=trust_context(pki.ca),
    )
    yield upstream
    await upstream.aclose()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    tmp_dir = tmp_path / "library" / ".dlqd-tmp"
    tmp_dir.mkdir(parents=True)
    return tmp_dir / "track.part"


def https_daemon(
    make_daemon: DaemonFactory, upstream: CatalogServer, ca_file: Path | None, **settings: Any
) -> DaemonProcess:
    """A started daemon against `upstream` that trusts certifi plus `ca_file`, nothing else."""
    up = {"ca_file": str(ca_file) if ca_file else "", **settings}
    daemon = make_daemon(upstream=upstream, settings={"upstream": up}, env=NO_SYSTEM_TRUST)
    daemon.start()
    return daemon


def media_served_by(media_base: str) -> Responder:
    """A /track/ responder: the catalog's answer with its BTS urls moved to `media_base`."""
    base = urlsplit(media_base)

    def answer(_request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        assert data is not None
        bts = json.loads(base64.b64decode(data["manifest"]))
        bts["urls"] = [
            urlunsplit((base.scheme, base.netloc, *urlsplit(url)[2:])) for url in bts["urls"]
        ]
        data["manifest"] = base64.b64encode(json.dumps(bts).encode()).decode()
        body = json.dumps({"version": "2.0", "data": data}).encode()
        return Scripted(200, {"Content-Type": "application/json"}, body)

    return answer


async def fetch(source: Source, plan: MediaPlan, dest: Path) -> FetchResult:
    return await fetch_to_file(
        source.media, plan, dest, progress=lambda *_: None, read_timeout_s=2.0
    )


# --- the daemon over HTTPS --------------------------------------------------------------


def test_catalog_serves_tls_with_the_generated_ca(
    tls_upstream: CatalogServer, pki: Certificates
) -> None:
    assert tls_upstream.base_url.startswith("https://127.0.0.1:")
    with httpx.Client(verify=trust_context(pki.ca)) as client:
        answer = client.get(f"{tls_upstream.base_url}/info/", params={"id": SINGLE_TRACK_ID})
    assert answer.status_code == 200
    assert answer.json()["data"]["id"] == SINGLE_TRACK_ID


def test_album_over_https_trusting_ca_file_lands_with_the_upstream_audio_and_tags(
    make_daemon: DaemonFactory, tls_upstream: CatalogServer, catalog: Catalog, pki: Certificates
) -> None:
    daemon = https_daemon(make_daemon, tls_upstream, pki.ca)
    album = catalog.album(TWO_DISC_ALBUM_ID)
    job = daemon.wait_job(daemon.submit("album", TWO_DISC_ALBUM_ID))

    assert job["status"] == "completed", job
    media = tls_upstream.requests_for("media")
    assert len(media) == len(album.track_ids)  # every body came over TLS from this server
    for track in job["tracks"]:
        track_id = track["track_id"]
        assert track["path"] == expected_relpath(catalog, track_id, "flac")
        path = daemon.library / track["path"]
        assert flac_audio(path.read_bytes()) == flac_audio(catalog.audio_for(track_id, "LOSSLESS"))
        assert vorbis_tags(path)["title"] == [display_title(catalog, track_id)]
    assert {expected_relpath(catalog, t, "flac") for t in album.track_ids} <= library_files(
        daemon.library
    )
    assert tmp_entries(daemon) == []


def test_without_ca_file_the_private_ca_is_not_trusted(
    make_daemon: DaemonFactory, tls_upstream: CatalogServer
) -> None:
    daemon = https_daemon(make_daemon, tls_upstream, None)
    job = daemon.wait_job(daemon.submit("track", SINGLE_TRACK_ID))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "NETWORK_ERROR", job["error"]
    assert library_files(daemon.library) == set()
    assert "version" in daemon.call("health")  # a refused certificate fails a job, not dlqd


@pytest.mark.parametrize("bad", ["foreign_pki", "wrong_name_pki"])
def test_a_media_certificate_that_does_not_verify_is_refused_and_no_file_lands(
    make_daemon: DaemonFactory,
    tls_upstream: CatalogServer,
    catalog: Catalog,
    pki: Certificates,
    bad: str,
    request: pytest.FixtureRequest,
) -> None:
    """Metadata from the trusted server; one track's media from a server whose certificate fails."""
    bad_pki: Certificates = request.getfixturevalue(bad)
    with CatalogServer(catalog, ssl_context=bad_pki.server_context()) as media_server:
        tls_upstream.script(
            "track", media_served_by(media_server.base_url), track_id=SINGLE_TRACK_ID
        )
        daemon = https_daemon(make_daemon, tls_upstream, pki.ca)
        before = outside_snapshot(daemon)
        hostile = daemon.submit("track", SINGLE_TRACK_ID)
        innocent = daemon.submit("album", catalog.add_album(1, 20_000))
        job = daemon.wait_job(hostile)

        assert job["status"] == "failed"
        error = track_of(job)["error"]
        assert error["code"] == "NETWORK_ERROR", error
        assert "TLS certificate refused" in error["message"]
        assert media_server.requests == []  # not one request went out on that connection
        assert_unharmed(daemon, innocent, before, hostile_job=hostile)


def test_cancel_mid_transfer_over_https_ends_the_track_and_leaves_no_temp_file(
    make_daemon: DaemonFactory, tls_upstream: CatalogServer, catalog: Catalog, pki: Certificates
) -> None:
    daemon = https_daemon(make_daemon, tls_upstream, pki.ca)
    album = catalog.add_album(1, 2_000_000)
    tls_upstream.throttle_bps = 200_000  # ~10 s for the track
    job_id = daemon.submit("album", album)
    wait_bytes(daemon, job_id, 100_000)
    assert tmp_entries(daemon), "the download has a temp file while running"

    daemon.call("cancel", id=job_id)  # answers once the track's work has stopped

    assert tmp_entries(daemon) == []
    job = daemon.job(job_id)
    assert (job["status"], job["error"]["code"]) == ("cancelled", "CANCELLED")
    assert track_of(job)["status"] == "cancelled"
    assert library_files(daemon.library) == set()
    sent = tls_upstream.media_bytes_sent
    assert sent < 2_000_000  # the transfer stopped, it did not run to the end
    tls_upstream.throttle_bps = None
    fresh = daemon.wait_job(daemon.submit("album", catalog.add_album(1, 20_000)))
    assert fresh["status"] == "completed"  # the slot and the connection machinery are free


def test_an_unusable_ca_file_refuses_start_up(make_daemon: DaemonFactory, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    daemon = make_daemon(settings={"upstream": {"ca_file": str(not_pem)}}, env=NO_SYSTEM_TRUST)
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=20) == 1
    assert f"cannot use upstream.ca_file {not_pem}" in daemon.logs()


# --- the transfer over HTTPS, in process ------------------------------------------------


async def test_resume_by_range_over_https_asks_only_the_missing_bytes(
    source: Source, tls_upstream: CatalogServer, catalog: Catalog, dest: Path
) -> None:
    expected = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    tls_upstream.inject("media", "short", times=2, track_id=SINGLE_TRACK_ID, after_bytes=50_000)
    with pytest.raises(DlqdError) as caught:
        await fetch(source, plan, dest)
    assert caught.value.code == ErrorCode.INTEGRITY_ERROR
    assert dest.read_bytes() == expected[:100_000]

    result = await fetch(source, plan, dest)
    assert dest.read_bytes() == expected
    assert result == FetchResult(
        bytes_written=len(expected) - 100_000, total=len(expected), resumed_from=100_000
    )
    ranges = [r.headers.get("range") for r in tls_upstream.requests_for("media")]
    assert ranges == [None, "bytes=50000-", "bytes=100000-"]


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    """`data` in HTTP/1.1 chunked transfer coding, `size` bytes a chunk."""
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
async def test_a_chunked_media_body_is_written_whole(
    catalog: Catalog, pki: Certificates, dest: Path, tls: bool
) -> None:
    expected = catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    context = pki.server_context() if tls else None
    with CatalogServer(catalog, ssl_context=context) as server:
        server.script(
            "media",
            lambda _r, _d: Scripted(200, {"Transfer-Encoding": "chunked"}, chunked(expected, 7001)),
            track_id=SINGLE_TRACK_ID,
        )
        upstream = Source(
            [server.base_url],
            server.cover_base_url,
            2.0,
            2.0,
            "t",
            ssl_context=trust_context(pki.ca),
        )
        try:
            plan = await upstream.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
            result = await fetch(upstream, plan, dest)
        finally:
            await upstream.aclose()
    assert dest.read_bytes() == expected
    assert result.total == len(expected)


async def test_a_media_redirect_is_followed_over_https(
    source: Source, tls_upstream: CatalogServer, catalog: Catalog, dest: Path
) -> None:
    def to_mirror_b(request: RequestRecord, _data: object) -> Scripted:
        location = (
            request.path.replace("/media/a/", "/media/b/") + f"?token={request.query['token']}"
        )
        return Scripted(302, {"Location": location}, b"")

    tls_upstream.script("media", to_mirror_b, times=1, track_id=SINGLE_TRACK_ID)
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    await fetch(source, plan, dest)

    assert dest.read_bytes() == catalog.audio_for(SINGLE_TRACK_ID, "LOSSLESS")
    paths = [r.path.split("/")[2] for r in tls_upstream.requests_for("media")]
    assert paths == ["a", "b"]  # the first mirror's redirect, then the second's body


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
async def test_dash_segments_reuse_one_keep_alive_connection(
    catalog: Catalog, pki: Certificates, dest: Path, tls: bool
) -> None:
    context = pki.server_context() if tls else None
    with CatalogServer(catalog, ssl_context=context) as server:
        upstream = Source(
            [server.base_url],
            server.cover_base_url,
            2.0,
            2.0,
            "t",
            ssl_context=trust_context(pki.ca),
        )
        try:
            plan = await upstream.media_plan(DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS")
            await fetch(upstream, plan, dest)
        finally:
            await upstream.aclose()
        media = server.requests_for("media")
    assert dest.read_bytes() == b"".join(
        catalog.media_parts(DASH_TIMELINE_TRACK_ID, "HI_RES_LOSSLESS")
    )
    assert len(media) == len(plan.segments) > 2
    assert len({r.client_port for r in media}) == 1


async def test_media_goes_through_the_environment_proxy_when_one_applies(
    catalog: Catalog, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY names a proxy: the media GET is sent to it, never straight to the origin."""
    proxied = b"bytes the proxy answered"
    with CatalogServer(catalog) as origin, CatalogServer(catalog) as proxy:
        proxy.script("media", lambda _r, _d: Scripted(200, {}, proxied))
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        upstream = Source([origin.base_url], origin.cover_base_url, 2.0, 2.0, "t")
        try:
            assert upstream.media.proxied(httpx.URL(origin.base_url))
            plan = MediaPlan("audio/flac", urls=(f"{origin.base_url}/media/a/1/LOSSLESS.flac",))
            with trio.fail_after(10):
                await fetch(upstream, plan, dest)
        finally:
            await upstream.aclose()
        assert origin.requests_for("media") == []
        assert [r.path for r in proxy.requests_for("media")] == ["/media/a/1/LOSSLESS.flac"]
    assert dest.read_bytes() == proxied


class RawServer:
    """A hand-written HTTP/1.1 server on 127.0.0.1: `answer(connection, request)` → bytes or None.

    `connection` and `request` count from 0 (the request's number on its
    connection); None closes the connection without answering.
    """

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.paths: list[tuple[int, str]] = []  # (connection, path) per request received
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for connection in itertools.count():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(sock, connection), daemon=True).start()

    def _talk(self, sock: socket.socket, connection: int) -> None:
        with sock:
            data = b""
            for request in itertools.count():
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                self.paths.append((connection, head.split(b" ")[1].decode()))
                reply = self.answer(connection, request)
                if reply is None:
                    return
                sock.sendall(reply)

    def close(self) -> None:
        self._listener.close()


def response(body: bytes, *, before: bytes = b"") -> bytes:
    return before + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced_once(
    dest: Path,
) -> None:
    """The server drops the connection when the second segment's request arrives on it."""
    parts = [b"first segment ", b"second segment"]

    def answer(connection: int, request: int) -> bytes | None:
        if (connection, request) == (0, 1):
            return None  # a keep-alive timeout racing the next request
        return response(parts[0] if (connection, request) == (0, 0) else parts[1])

    server = RawServer(answer)
    try:
        upstream = Source(["http://127.0.0.1:9"], "http://127.0.0.1:9", 2.0, 2.0, "t")
        base = f"http://127.0.0.1:{server.port}"
        plan = MediaPlan("audio/mp4", segments=(f"{base}/init.mp4", f"{base}/1.m4s"))
        try:
            result = await fetch(upstream, plan, dest)
        finally:
            await upstream.aclose()
    finally:
        server.close()
    assert dest.read_bytes() == b"".join(parts)
    assert result.total == sum(map(len, parts))
    assert server.paths == [(0, "/init.mp4"), (0, "/1.m4s"), (1, "/1.m4s")]


async def test_informational_responses_before_the_answer_are_skipped(dest: Path) -> None:
    body = b"the media after a 100 and a 103"
    early = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    server = RawServer(lambda _connection, _request: response(body, before=early))
    try:
        upstream = Source(["http://127.0.0.1:9"], "http://127.0.0.1:9", 2.0, 2.0, "t")
        plan = MediaPlan("audio/flac", urls=(f"http://127.0.0.1:{server.port}/t.flac",))
        try:
            await fetch(upstream, plan, dest)
        finally:
            await upstream.aclose()
    finally:
        server.close()
    assert dest.read_bytes() == body
