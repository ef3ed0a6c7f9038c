"""A hostile upstream's metadata against a real daemon: the job fails, the daemon does not.

Each case serves one album whose JSON is wrong on purpose (the catalog's own
answer, altered by `CatalogServer.script`) beside an innocent album, and checks
the whole promise of issue 8: the hostile job ends `failed` with
`UPSTREAM_BAD_RESPONSE`, the daemon answers `health`, a restart on the same
state dir stays up with the job still failed, the innocent album lands in the
library, and nothing outside the library and the state dir changes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from dlqd.demo.catalog import (
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    CatalogServer,
    RequestRecord,
    Scripted,
)
from tests.conftest import DaemonFactory
from tests.support import assert_unharmed, library_files, outside_snapshot

HOSTILE_ALBUM_ID = TWO_DISC_ALBUM_ID
INNOCENT_ALBUM_ID = SINGLE_ALBUM_ID

Alter = Callable[[dict[str, Any]], None]


def serve_altered(alter: Alter) -> Callable[[RequestRecord, dict[str, Any] | None], Scripted]:
    """A responder that alters the catalog's own `data` before sending it.

    `json.dumps` escapes non-ASCII, so a lone surrogate goes out as `"\\ud800"`,
    exactly as a hostile upstream would send it.
    """

    def respond(_request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        assert data is not None
        alter(data)
        body = json.dumps({"version": "2.0", "data": data}).encode()
        return Scripted(200, {"Content-Type": "application/json"}, body)

    return respond


def assert_hostile_job_fails_and_harms_nothing(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    *,
    hostile: tuple[str, int] = ("album", HOSTILE_ALBUM_ID),
    innocent_album: int = INNOCENT_ALBUM_ID,
    settings: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the hostile job (its answers already scripted) beside an innocent album.

    Returns the failed job.
    """
    daemon = make_daemon(upstream=upstream, settings=settings)
    daemon.start()
    before = outside_snapshot(daemon)

    hostile_job = daemon.submit(*hostile)
    innocent_job = daemon.submit("album", innocent_album)
    failed = daemon.wait_job(hostile_job)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "UPSTREAM_BAD_RESPONSE", failed["error"]
    assert failed["error"]["message"].isascii(), failed["error"]
    assert_unharmed(daemon, innocent_job, before, hostile_job=hostile_job)
    expected = upstream.catalog.album(innocent_album).title
    assert all(expected in name for name in library_files(daemon.library))
    return failed


def hostile_album(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    alter: Alter,
    *,
    settings: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The album job whose `/album/` answers are altered by `alter`; its failed job."""
    upstream.script("album", serve_altered(alter), album_id=HOSTILE_ALBUM_ID)
    return assert_hostile_job_fails_and_harms_nothing(make_daemon, upstream, settings=settings)


def hostile_track(make_daemon: DaemonFactory, upstream: CatalogServer) -> dict[str, Any]:
    """The single track's job (its answers already scripted) beside the two-disc album."""
    return assert_hostile_job_fails_and_harms_nothing(
        make_daemon, upstream, hostile=("track", SINGLE_TRACK_ID), innocent_album=TWO_DISC_ALBUM_ID
    )


def first_item(data: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = data["items"][0]["item"]
    return item


def test_album_title_with_a_lone_surrogate_fails_the_job_not_the_daemon(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    def alter(data: dict[str, Any]) -> None:
        data["title"] = "Night \ud800 Lines"

    failed = hostile_album(make_daemon, upstream, alter)
    assert "title" in failed["error"]["message"]


def test_track_title_with_a_lone_surrogate_fails_the_album_not_the_daemon(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    def alter(data: dict[str, Any]) -> None:
        first_item(data)["title"] = "\udcff"

    failed = hostile_album(make_daemon, upstream, alter)
    assert "items[0].item.title" in failed["error"]["message"]


def test_track_number_2_pow_70_fails_the_album_not_the_daemon(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    def alter(data: dict[str, Any]) -> None:
        first_item(data)["trackNumber"] = 2**70

    failed = hostile_album(make_daemon, upstream, alter)
    assert "trackNumber" in failed["error"]["message"]


def test_negative_track_id_in_the_listing_fails_the_album_not_the_daemon(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    def alter(data: dict[str, Any]) -> None:
        first_item(data)["id"] = -(2**64)

    failed = hostile_album(make_daemon, upstream, alter)
    assert "items[0].item.id" in failed["error"]["message"]


def test_album_claiming_a_billion_tracks_fails_at_its_first_page(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    def alter(data: dict[str, Any]) -> None:
        data["numberOfTracks"] = 10**9

    failed = hostile_album(make_daemon, upstream, alter)
    assert "max_job_tracks" in failed["error"]["message"]
    assert len(upstream.requests_for("album", album_id=HOSTILE_ALBUM_ID)) == 1  # no paging


def test_limits_max_job_tracks_from_the_config_refuses_a_longer_album(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    # Honest JSON; the two-disc album's 5 tracks are simply more than the limit.
    failed = hostile_album(
        make_daemon, upstream, lambda data: None, settings={"limits": {"max_job_tracks": 4}}
    )
    assert "max_job_tracks (4)" in failed["error"]["message"]


def test_track_job_with_a_lone_surrogate_in_info_and_missing_from_its_album_fails(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    # The album does not list the track, so /info/ itself names it (region mismatch).
    def no_items(data: dict[str, Any]) -> None:
        data["items"] = []

    def surrogate_title(data: dict[str, Any]) -> None:
        data["title"] = "\ud800"

    upstream.script("album", serve_altered(no_items), album_id=SINGLE_ALBUM_ID)
    upstream.script("info", serve_altered(surrogate_title), track_id=SINGLE_TRACK_ID)
    failed = hostile_track(make_daemon, upstream)
    assert "/info/" in failed["error"]["message"]


def test_media_url_with_a_lone_surrogate_fails_the_track_not_the_daemon(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    def surrogate_url(data: dict[str, Any]) -> None:
        bts = {"mimeType": "audio/flac", "encryptionType": "NONE", "urls": ["http://x/\ud800"]}
        data["manifest"] = base64.b64encode(json.dumps(bts).encode()).decode()

    upstream.script("track", serve_altered(surrogate_url), track_id=SINGLE_TRACK_ID)
    failed = hostile_track(make_daemon, upstream)
    assert "urls[0]" in failed["error"]["message"]
