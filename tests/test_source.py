"""Source against the real local catalog: metadata, paging, plans, failover, errors.

Also playlists, mixes and artists: listings in order, paging, kinds, refusals.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trio

from dlqd.circuit import UpstreamCircuit
from dlqd.demo import audio
from dlqd.demo.catalog import (
    ARTIST_ALBUM_IDS,
    ARTIST_EP_IDS,
    ARTIST_ID,
    ARTIST_NAME,
    ARTIST_RELEASE_IDS,
    ARTIST_SINGLE_IDS,
    BIG_ALBUM_ID,
    BIG_ALBUM_TRACKS,
    BIG_PLAYLIST_TRACK_IDS,
    BIG_PLAYLIST_UUID,
    DASH_NO_TIMELINE_TRACK_ID,
    DASH_TIMELINE_TRACK_ID,
    ENCRYPTED_TRACK_ID,
    LIVE_TRACK_ID,
    MIX_ID,
    MIX_TITLE,
    MIX_TRACK_IDS,
    MULTI_ARTIST_TRACK_ID,
    PLAYLIST_TITLE,
    PLAYLIST_TRACK_IDS,
    PLAYLIST_UUID,
    PREVIEW_TRACK_ID,
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    TWO_MAIN_ARTISTS_TRACK_ID,
    UNKNOWN_ID,
    VIDEO_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Scripted,
)
from dlqd.errors import DlqdError, ErrorCode
from dlqd.holds import HoldReason, Holds, QueueHeld
from dlqd.source import PLAYLIST_PAGE_SIZE, Release, Source, TrackRef, with_playback_gains
from tests.support import unread_json_response


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture
def server(catalog: Catalog) -> Iterator[CatalogServer]:
    with CatalogServer(catalog) as running:
        yield running


@pytest.fixture
def other_server(catalog: Catalog) -> Iterator[CatalogServer]:
    with CatalogServer(catalog) as running:
        yield running


def make_source(bases: list[str], cover_base: str, **kwargs: Any) -> Source:
    return Source(bases, cover_base, 2.0, 2.0, "dlqd-test", **kwargs)


@pytest.fixture
async def source(server: CatalogServer) -> AsyncIterator[Source]:
    upstream = make_source([server.base_url], server.cover_base_url)
    yield upstream
    await upstream.aclose()


def dead_base_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def expect_code(code: ErrorCode, call: Any) -> DlqdError:
    with pytest.raises(DlqdError) as caught:
        await call
    assert caught.value.code == code, caught.value
    return caught.value


# -- metadata -------------------------------------------------------------------


async def test_album_pages_until_all_120_tracks_are_read(
    source: Source, server: CatalogServer
) -> None:
    album = await source.album(BIG_ALBUM_ID)
    assert len(album.tracks) == BIG_ALBUM_TRACKS
    assert [t.track_number for t in album.tracks] == list(range(1, BIG_ALBUM_TRACKS + 1))
    assert {t.track_total for t in album.tracks} == {BIG_ALBUM_TRACKS}
    offsets = [r.query.get("offset") for r in server.requests_for("album")]
    assert offsets == ["0", "100"]


async def test_two_disc_album_has_per_disc_totals_and_main_artist_first(source: Source) -> None:
    album = await source.album(TWO_DISC_ALBUM_ID)
    assert [(t.disc_number, t.track_number, t.track_total) for t in album.tracks] == [
        (1, 1, 3),
        (1, 2, 3),
        (1, 3, 3),
        (2, 1, 2),
        (2, 2, 2),
    ]
    assert {t.disc_total for t in album.tracks} == {2}
    by_id = {t.track_id: t for t in album.tracks}
    assert by_id[MULTI_ARTIST_TRACK_ID].artists == ("The Examples", "Guest Singer")
    assert by_id[TWO_MAIN_ARTISTS_TRACK_ID].artists == ("The Examples", "Second Band")
    live = by_id[LIVE_TRACK_ID]
    assert (live.title, live.version, live.display_title) == (
        "Third Rail",
        "Live",
        "Third Rail (Live)",
    )
    first = album.tracks[0]
    assert (first.album, first.album_artist, first.date) == (
        "Night Lines",
        "The Examples",
        "2019-05-03",
    )
    assert first.version == ""
    assert first.isrc and first.copyright and first.replay_gain_track is not None
    assert album.cover_url is not None and album.cover_url.endswith("/1280x1280.jpg")
    assert "-" not in album.cover_url.removeprefix(source.cover_url(""))
    assert first.cover_url == album.cover_url


async def test_single_track_meta_equals_its_album_entry(source: Source) -> None:
    album = await source.album(TWO_DISC_ALBUM_ID)
    for track in album.tracks:
        assert await source.track_meta(track.track_id) == track


async def test_cover_is_fetched_and_a_missing_one_is_none(source: Source) -> None:
    album = await source.album(SINGLE_ALBUM_ID)
    assert album.cover_url is not None
    assert await source.cover(album.cover_url) == audio.cover_jpeg()
    missing = source.cover_url("00000000-0000-0000-0000-000000000000")
    assert await source.cover(missing) is None


# -- playback plans ---------------------------------------------------------------


async def test_lossless_plan_has_both_mirrors_and_playback_gains(
    source: Source, catalog: Catalog
) -> None:
    plan = await source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    assert len(plan.urls) == 2 and not plan.segments
    meta = with_playback_gains(await source.track_meta(SINGLE_TRACK_ID), plan)
    album = catalog.album(SINGLE_ALBUM_ID)
    assert (meta.replay_gain_album, meta.peak_album) == (album.replay_gain, album.peak)
    assert meta.replay_gain_track == catalog.track(SINGLE_TRACK_ID).replay_gain


@pytest.mark.parametrize("track_id", [DASH_TIMELINE_TRACK_ID, DASH_NO_TIMELINE_TRACK_ID])
async def test_hi_res_plan_is_init_plus_segments(source: Source, track_id: int) -> None:
    plan = await source.media_plan(track_id, "HI_RES_LOSSLESS")
    assert len(plan.segments) == 1 + len(audio.DASH_SEGMENT_DURATIONS)
    assert "/init.mp4" in plan.segments[0]


@pytest.mark.parametrize("track_id", [PREVIEW_TRACK_ID, ENCRYPTED_TRACK_ID])
async def test_preview_and_encrypted_are_unsupported(source: Source, track_id: int) -> None:
    error = await expect_code(ErrorCode.UNSUPPORTED_FORMAT, source.media_plan(track_id, "LOSSLESS"))
    assert not error.transient


# -- errors -----------------------------------------------------------------------


async def test_unknown_ids_are_not_found(source: Source) -> None:
    await expect_code(ErrorCode.UPSTREAM_NOT_FOUND, source.track_meta(UNKNOWN_ID))
    await expect_code(ErrorCode.UPSTREAM_NOT_FOUND, source.album(UNKNOWN_ID))
    await expect_code(ErrorCode.UPSTREAM_NOT_FOUND, source.media_plan(UNKNOWN_ID, "LOSSLESS"))


async def test_a_track_whose_album_404s_stands_alone_only_when_asked(
    source: Source, server: CatalogServer, catalog: Catalog
) -> None:
    server.inject("album", "status", times=None, album_id=SINGLE_ALBUM_ID, status=404)
    await expect_code(ErrorCode.UPSTREAM_NOT_FOUND, source.track_meta(SINGLE_TRACK_ID))

    alone = await source.track_meta(SINGLE_TRACK_ID, alone_if_album_gone=True)

    spec = catalog.track(SINGLE_TRACK_ID)
    assert (alone.track_id, alone.title, alone.album, alone.album_id) == (
        SINGLE_TRACK_ID,
        spec.title,
        catalog.album(SINGLE_ALBUM_ID).title,
        SINGLE_ALBUM_ID,
    )
    assert (alone.album_artist, alone.track_total, alone.disc_total) == (
        spec.artists[0].name,
        0,
        0,
    )
    assert alone.cover_url == source.cover_url(catalog.album(SINGLE_ALBUM_ID).cover)


async def test_429_holds_the_whole_upstream_for_retry_after_and_sends_nothing_meanwhile(
    server: CatalogServer,
) -> None:
    holds = Holds(user_held=lambda: False, clock=lambda: 5000.0)
    upstream = make_source(
        [server.base_url],
        server.cover_base_url,
        circuit=functools.partial(UpstreamCircuit, holds=holds, wall_clock=lambda: 5000.0),
    )
    server.inject("info", "status", status=429, retry_after=7)
    try:
        first = await expect_code(
            ErrorCode.UPSTREAM_RATE_LIMITED, upstream.track_meta(SINGLE_TRACK_ID)
        )
        second = await expect_code(ErrorCode.UPSTREAM_RATE_LIMITED, upstream.album(SINGLE_ALBUM_ID))
    finally:
        await upstream.aclose()
    assert isinstance(first, QueueHeld) and isinstance(second, QueueHeld)
    assert first.reason == second.reason == HoldReason.RATE_LIMITED
    assert len(server.requests) == 1  # the second call sent nothing
    (hold,) = holds.faults()
    assert (hold.reason, hold.since, hold.until) == (HoldReason.RATE_LIMITED, 5000.0, 5007.0)


async def test_5xx_is_unavailable(source: Source, server: CatalogServer) -> None:
    server.inject("album", "status", status=500)
    await expect_code(ErrorCode.UPSTREAM_UNAVAILABLE, source.album(SINGLE_ALBUM_ID))


@pytest.mark.parametrize("fault", ["bad_json", "bad_shape"])
async def test_malformed_json_is_bad_response(
    source: Source, server: CatalogServer, fault: str
) -> None:
    server.inject("info", fault)
    await expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, source.track_meta(SINGLE_TRACK_ID))


async def test_undecodable_manifest_is_bad_response(source: Source, server: CatalogServer) -> None:
    server.inject("track", "bad_manifest")
    await expect_code(
        ErrorCode.UPSTREAM_BAD_RESPONSE, source.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    )


# -- failover ---------------------------------------------------------------------


async def test_fails_over_to_the_second_base_when_the_first_is_down(
    server: CatalogServer,
) -> None:
    upstream = make_source([dead_base_url(), server.base_url], server.cover_base_url)
    try:
        meta = await upstream.track_meta(SINGLE_TRACK_ID)
    finally:
        await upstream.aclose()
    assert meta.album_id == SINGLE_ALBUM_ID


async def test_a_base_is_down_after_failure_threshold_failures_and_gets_no_more_requests(
    server: CatalogServer, other_server: CatalogServer
) -> None:
    server.inject("album", "status", times=None, status=503)
    upstream = make_source(
        [server.base_url, other_server.base_url],
        server.cover_base_url,
        circuit=functools.partial(UpstreamCircuit, failure_threshold=3),
    )
    try:
        for _ in range(5):
            await upstream.album(SINGLE_ALBUM_ID)  # every call fails over and succeeds
        reports = upstream.base_reports()
    finally:
        await upstream.aclose()
    assert len(server.requests_for("album")) == 3
    assert len(other_server.requests_for("album")) == 5
    down, up = reports[server.base_url], reports[other_server.base_url]
    assert down.down and down.consecutive_failures == 3 and down.next_probe is not None
    assert down.last_error is not None and "server error (503)" in down.last_error
    assert not up.down and up.consecutive_failures == 0 and up.next_probe is None


async def test_a_failing_base_below_the_threshold_is_still_asked(server: CatalogServer) -> None:
    server.inject("album", "status", times=3, status=503)
    upstream = make_source([server.base_url], server.cover_base_url)  # threshold 5
    try:
        for _ in range(3):
            await expect_code(ErrorCode.UPSTREAM_UNAVAILABLE, upstream.album(SINGLE_ALBUM_ID))
        album = await upstream.album(SINGLE_ALBUM_ID)
    finally:
        await upstream.aclose()
    assert album.album_id == SINGLE_ALBUM_ID
    assert upstream.base_reports()[server.base_url].consecutive_failures == 0


async def test_the_failure_that_takes_the_last_base_down_holds_the_queue_and_then_nothing_is_sent(
    server: CatalogServer,
) -> None:
    server.inject("info", "reset", times=None)
    holds = Holds(user_held=lambda: False)
    upstream = make_source(
        [server.base_url],
        server.cover_base_url,
        circuit=functools.partial(UpstreamCircuit, holds=holds, failure_threshold=2),
    )
    try:
        await expect_code(ErrorCode.NETWORK_ERROR, upstream.track_meta(SINGLE_TRACK_ID))
        assert holds.faults() == []
        completing = await expect_code(
            ErrorCode.UPSTREAM_UNAVAILABLE, upstream.track_meta(SINGLE_TRACK_ID)
        )
        later = await expect_code(
            ErrorCode.UPSTREAM_UNAVAILABLE, upstream.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
        )
        with pytest.raises(QueueHeld):
            upstream.check_open()
    finally:
        await upstream.aclose()
    assert isinstance(completing, QueueHeld) and isinstance(later, QueueHeld)
    assert len(server.requests) == 2  # the third call never reached the network
    (hold,) = holds.faults()
    assert hold.reason == HoldReason.UPSTREAM_UNAVAILABLE
    assert hold.until is not None and hold.until > hold.since
    assert server.base_url in hold.detail and "NETWORK_ERROR" in hold.detail


async def test_a_probe_that_gets_an_answer_brings_the_base_back_and_releases_the_hold(
    server: CatalogServer,
) -> None:
    server.inject("track", "status", times=None, status=502)
    holds = Holds(user_held=lambda: False)
    upstream = make_source(
        [server.base_url],
        server.cover_base_url,
        circuit=functools.partial(
            UpstreamCircuit, holds=holds, failure_threshold=1, max_cooldown_s=0.05
        ),
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.run_circuit)
            await expect_code(
                ErrorCode.UPSTREAM_UNAVAILABLE, upstream.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
            )
            assert [hold.reason for hold in holds.faults()] == [HoldReason.UPSTREAM_UNAVAILABLE]
            # The probe asks /info/ about the same track: cheaper than a playback.
            server.inject("info", "status", times=2, status=503)
            with trio.fail_after(10):
                while holds.faults():
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        server.clear_faults()
        plan = await upstream.media_plan(SINGLE_TRACK_ID, "LOSSLESS")
    finally:
        await upstream.aclose()
    assert plan.urls
    probes = server.requests_for("info")
    assert len(probes) == 3  # two failed probes, then one answered
    assert all(probe.query == {"id": str(SINGLE_TRACK_ID)} for probe in probes)
    assert not upstream.base_reports()[server.base_url].down


async def test_404_is_an_answer_not_a_reason_to_fail_over(
    server: CatalogServer, other_server: CatalogServer
) -> None:
    upstream = make_source([server.base_url, other_server.base_url], server.cover_base_url)
    try:
        await expect_code(ErrorCode.UPSTREAM_NOT_FOUND, upstream.album(UNKNOWN_ID))
    finally:
        await upstream.aclose()
    assert other_server.requests == []


# -- paging safety (a lying upstream, served by a mock transport) --------------------


def lying_album(items_per_page: list[list[dict[str, Any]]]) -> httpx.AsyncClient:
    """An album that promises 50 tracks but serves the given pages, then empty ones."""
    calls = iter(items_per_page)

    def handler(request: httpx.Request) -> httpx.Response:
        page = next(calls, [])
        data = {
            "id": 7,
            "title": "Liar",
            "numberOfTracks": 50,
            "numberOfVolumes": 1,
            "artist": {"id": 1, "name": "Fibber"},
            "items": page,
        }
        return unread_json_response({"version": "2.0", "data": data})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def item(track_id: int) -> dict[str, Any]:
    return {
        "type": "track",
        "item": {"id": track_id, "title": f"T{track_id}", "trackNumber": track_id},
    }


@pytest.mark.parametrize(
    "pages",
    [
        [[item(1), item(2)]],  # then an empty page
        [[item(1), item(2)], [item(1), item(2)]],  # offset ignored: the same page again
    ],
)
async def test_paging_stops_on_an_empty_or_repeated_page(pages: list[list[Any]]) -> None:
    async with lying_album(pages) as client:
        upstream = make_source(["http://upstream.test"], "http://img.test", client=client)
        album = await upstream.album(7)
    assert [t.track_id for t in album.tracks] == [1, 2]
    assert album.tracks[0].artists == ("Fibber",)  # no artist at all: the album's


# -- playlists, mixes, artists --------------------------------------------------------

UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"
UNKNOWN_MIX_ID = "0000000000000000000000000000ff"
Alter = Any  # a function changing the catalog's answer in place


def answer_with(alter: Alter) -> Any:
    """A script responder: the catalog's own answer, changed by `alter`, as JSON."""

    def respond(request: RequestRecord, data: dict[str, Any] | None) -> Scripted:
        assert data is not None
        alter(request, data)
        body = json.dumps(data).encode()  # ASCII: a lone surrogate goes out as "\ud800"
        return Scripted(200, {"Content-Type": "application/json"}, body)

    return respond


def refs_of(catalog: Catalog, track_ids: tuple[int, ...]) -> tuple[TrackRef, ...]:
    """The refs a listing of `track_ids` gives: album, title with its version, duration."""
    refs = []
    for track_id in track_ids:
        spec = catalog.track(track_id)
        title = f"{spec.title} ({spec.version})" if spec.version else spec.title
        refs.append(TrackRef(track_id, spec.album_id, title, spec.duration))
    return tuple(refs)


async def test_playlist_lists_tracks_of_two_albums_in_its_order_without_the_video(
    source: Source, server: CatalogServer, catalog: Catalog
) -> None:
    listing = await source.playlist(PLAYLIST_UUID)
    assert listing.title == PLAYLIST_TITLE
    assert listing.refs == refs_of(catalog, PLAYLIST_TRACK_IDS)
    assert {ref.album_id for ref in listing.refs} == {TWO_DISC_ALBUM_ID, SINGLE_ALBUM_ID}
    assert VIDEO_ID not in {ref.track_id for ref in listing.refs}
    (request,) = server.requests_for("playlist")
    assert request.query == {"id": PLAYLIST_UUID, "limit": str(PLAYLIST_PAGE_SIZE), "offset": "0"}


async def test_playlist_pages_until_number_of_tracks_and_the_offsets_count_the_video(
    source: Source, server: CatalogServer, catalog: Catalog
) -> None:
    assert len(BIG_PLAYLIST_TRACK_IDS) > PLAYLIST_PAGE_SIZE  # else this proves nothing
    listing = await source.playlist(BIG_PLAYLIST_UUID)
    assert listing.refs == refs_of(catalog, BIG_PLAYLIST_TRACK_IDS)
    queries = [r.query for r in server.requests_for("playlist")]
    assert [q["offset"] for q in queries] == ["0", str(PLAYLIST_PAGE_SIZE)]
    assert {q["limit"] for q in queries} == {str(PLAYLIST_PAGE_SIZE)}


async def test_playlist_keeps_a_track_listed_twice_at_its_first_place(
    source: Source, server: CatalogServer, catalog: Catalog
) -> None:
    def repeat_first_track(_request: RequestRecord, data: dict[str, Any]) -> None:
        data["playlist"]["numberOfTracks"] += 1
        if data["items"]:
            data["items"].append(data["items"][0])

    server.script("playlist", answer_with(repeat_first_track))
    listing = await source.playlist(PLAYLIST_UUID)
    assert listing.refs == refs_of(catalog, PLAYLIST_TRACK_IDS)
    # Four distinct tracks of the five claimed: the next page is asked, and is empty.
    assert [r.query["offset"] for r in server.requests_for("playlist")] == ["0", "6"]


async def test_playlist_paging_stops_on_a_page_that_brings_no_new_track(
    source: Source, server: CatalogServer, catalog: Catalog
) -> None:
    def first_page_whatever_the_offset(_request: RequestRecord, data: dict[str, Any]) -> None:
        data.update(catalog.playlist_json(PLAYLIST_UUID))
        data["playlist"]["numberOfTracks"] = 50

    server.script("playlist", answer_with(first_page_whatever_the_offset))
    listing = await source.playlist(PLAYLIST_UUID)
    assert listing.refs == refs_of(catalog, PLAYLIST_TRACK_IDS)
    assert len(server.requests_for("playlist")) == 2


def _video_entry(server: CatalogServer) -> dict[str, Any]:
    """The catalog's own playlist entry of its video."""
    entries = server.catalog.playlist_json(PLAYLIST_UUID)["items"]
    return next(entry for entry in entries if entry["item"]["id"] == VIDEO_ID)


async def test_playlist_pages_past_a_page_of_only_videos(
    source: Source, server: CatalogServer, catalog: Catalog
) -> None:
    def videos_first(request: RequestRecord, data: dict[str, Any]) -> None:
        # A full first page of videos; the tracks come on the second page.
        offset = int(request.query["offset"])
        tracks = catalog.playlist_json(PLAYLIST_UUID)["items"]
        videos = [_video_entry(server) for _ in range(PLAYLIST_PAGE_SIZE)]
        data["items"] = (videos + tracks)[offset : offset + PLAYLIST_PAGE_SIZE]

    server.script("playlist", answer_with(videos_first))
    listing = await source.playlist(PLAYLIST_UUID)
    assert listing.refs == refs_of(catalog, PLAYLIST_TRACK_IDS)
    assert [r.query["offset"] for r in server.requests_for("playlist")] == [
        "0",
        str(PLAYLIST_PAGE_SIZE),
    ]


async def test_playlist_answering_only_videos_forever_is_refused_after_bounded_pages(
    server: CatalogServer,
) -> None:
    def videos_forever(_request: RequestRecord, data: dict[str, Any]) -> None:
        data["items"] = [_video_entry(server) for _ in range(4)]

    server.script("playlist", answer_with(videos_forever))
    upstream = make_source([server.base_url], server.cover_base_url, max_job_tracks=10)
    try:
        error = await expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, upstream.playlist(PLAYLIST_UUID))
    finally:
        await upstream.aclose()
    assert "more than limits.max_job_tracks (10) entries that are not tracks" in error.message
    # 12 skipped entries (three pages of four) pass the limit of 10.
    assert [r.query["offset"] for r in server.requests_for("playlist")] == ["0", "4", "8"]


async def test_mix_lists_tracks_of_two_albums_in_its_order_without_the_video(
    source: Source, server: CatalogServer, catalog: Catalog
) -> None:
    listing = await source.mix(MIX_ID)
    assert listing.title == MIX_TITLE
    assert listing.refs == refs_of(catalog, MIX_TRACK_IDS)
    assert len({ref.album_id for ref in listing.refs}) == 2
    (request,) = server.requests_for("mix")
    assert request.query == {"id": MIX_ID}


async def test_artist_lists_albums_eps_and_singles_in_upstream_order_with_their_kinds(
    source: Source, server: CatalogServer, catalog: Catalog
) -> None:
    discography = await source.artist(ARTIST_ID)
    assert discography.name == ARTIST_NAME
    kinds = {
        **dict.fromkeys(ARTIST_ALBUM_IDS, "album"),
        **dict.fromkeys(ARTIST_EP_IDS, "ep"),
        **dict.fromkeys(ARTIST_SINGLE_IDS, "single"),
    }
    assert discography.releases == tuple(
        Release(
            album_id=album_id,
            title=catalog.album(album_id).title,
            kind=kinds[album_id],
            tracks=len(catalog.album(album_id).track_ids),
            release_date=catalog.album(album_id).release_date,
        )
        for album_id in ARTIST_RELEASE_IDS
    )
    assert [r.query for r in server.requests_for("artist")] == [
        {"id": str(ARTIST_ID)},
        {"f": str(ARTIST_ID), "skip_tracks": "true"},
    ]


async def test_artist_releases_of_other_types_and_repeated_albums_are_skipped(
    source: Source, server: CatalogServer
) -> None:
    def add_odd_releases(request: RequestRecord, data: dict[str, Any]) -> None:
        if "f" not in request.query:
            return
        albums = data["albums"]["items"]
        compilation = {**albums[0], "id": 12345, "type": "COMPILATION"}
        untyped = {**albums[0], "id": 12346, "type": None, "releaseDate": None}
        albums[1:1] = [compilation, dict(albums[0]), untyped]

    server.script("artist", answer_with(add_odd_releases))
    discography = await source.artist(ARTIST_ID)
    assert [r.album_id for r in discography.releases] == list(ARTIST_RELEASE_IDS)


async def test_unknown_playlist_mix_and_artist_are_not_found(source: Source) -> None:
    await expect_code(ErrorCode.UPSTREAM_NOT_FOUND, source.playlist(UNKNOWN_UUID))
    await expect_code(ErrorCode.UPSTREAM_NOT_FOUND, source.mix(UNKNOWN_MIX_ID))
    await expect_code(ErrorCode.UPSTREAM_NOT_FOUND, source.artist(UNKNOWN_ID))


def _set(path: tuple[str | int, ...], value: object) -> Alter:
    def alter(_request: RequestRecord, data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return alter


def _drop(path: tuple[str | int, ...]) -> Alter:
    def alter(_request: RequestRecord, data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return alter


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        (_set(("playlist", "title"), "ok \ud800"), "playlist.title 'ok \\ud800' is not"),
        (_drop(("playlist",)), "playlist is missing"),
        (_set(("playlist", "numberOfTracks"), -1), "numberOfTracks -1 is outside"),
        (_set(("playlist", "uuid"), UNKNOWN_UUID), "answered with playlist"),
        (_set(("items", 1, "item", "id"), 2**70), "items[1].item.id"),
        (_set(("items", 0, "item", "album"), {"title": "x"}), "items[0].item.album.id is missing"),
        (_set(("items", 3), "track"), "items[3] is a string, not an object"),
        (_set(("items",), {"0": {}}), "items is an object"),
    ],
)
async def test_hostile_playlist_answers_are_bad_responses(
    source: Source, server: CatalogServer, alter: Alter, message: str
) -> None:
    server.script("playlist", answer_with(alter))
    error = await expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, source.playlist(PLAYLIST_UUID))
    assert message in error.message and error.message.isascii()


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        (_set(("mix", "id"), UNKNOWN_MIX_ID), "answered with mix"),
        (_drop(("mix", "title")), "mix.title is missing"),
        (_set(("items", 0, "album", "id"), 0), "items[0].album.id 0 is outside"),
        (_set(("items", 1, "id"), "100002"), "items[1].id is a string"),
        (_set(("items", 2), None), "items[2] is null, not an object"),
    ],
)
async def test_hostile_mix_answers_are_bad_responses(
    source: Source, server: CatalogServer, alter: Alter, message: str
) -> None:
    server.script("mix", answer_with(alter))
    error = await expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, source.mix(MIX_ID))
    assert message in error.message and error.message.isascii()


def _on_releases(alter: Alter) -> Alter:
    def on_f_form(request: RequestRecord, data: dict[str, Any]) -> None:
        if "f" in request.query:
            alter(request, data)

    return on_f_form


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        (_set(("artist", "id"), ARTIST_ID + 1), "answered with artist 11"),
        (_set(("artist", "name"), "  "), "no name"),
        (_drop(("artist",)), "artist is missing"),
        (_on_releases(_set(("albums", "items", 0, "numberOfTracks"), -1)), "outside"),
        (_on_releases(_set(("albums", "items", 1, "title"), "\udfff")), "not valid UTF-8"),
        (_on_releases(_set(("albums", "items", 2), 7)), "albums.items[2] is a number"),
        (_on_releases(_drop(("albums",))), "albums is missing"),
    ],
)
async def test_hostile_artist_answers_are_bad_responses(
    source: Source, server: CatalogServer, alter: Alter, message: str
) -> None:
    server.script("artist", answer_with(alter))
    error = await expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, source.artist(ARTIST_ID))
    assert message in error.message and error.message.isascii()


@pytest.mark.parametrize("route", ["playlist", "mix", "artist"])
@pytest.mark.parametrize("fault", ["bad_json", "bad_shape"])
async def test_malformed_listing_answers_are_bad_responses(
    source: Source, server: CatalogServer, route: str, fault: str
) -> None:
    calls = {
        "playlist": lambda: source.playlist(PLAYLIST_UUID),
        "mix": lambda: source.mix(MIX_ID),
        "artist": lambda: source.artist(ARTIST_ID),
    }
    server.inject(route, fault)
    await expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, calls[route]())


async def test_a_playlist_claiming_more_than_max_job_tracks_is_refused_after_one_request(
    server: CatalogServer,
) -> None:
    upstream = make_source([server.base_url], server.cover_base_url, max_job_tracks=100)
    try:
        error = await expect_code(
            ErrorCode.UPSTREAM_BAD_RESPONSE, upstream.playlist(BIG_PLAYLIST_UUID)
        )
    finally:
        await upstream.aclose()
    assert "claims 120 tracks, more than limits.max_job_tracks (100)" in error.message
    assert len(server.requests_for("playlist")) == 1


async def test_playlist_paging_stops_once_more_tracks_than_max_job_tracks_are_read(
    server: CatalogServer,
) -> None:
    def new_tracks_on_every_page(request: RequestRecord, data: dict[str, Any]) -> None:
        # Claims 3 tracks (within the limit) but every page brings two more new ones.
        offset = int(request.query["offset"])
        data["playlist"]["numberOfTracks"] = 3
        track = server.catalog.track_json(SINGLE_TRACK_ID)
        data["items"] = [
            {"type": "track", "item": {**track, "id": 1000 + offset + n}} for n in range(2)
        ]

    server.script("playlist", answer_with(new_tracks_on_every_page))
    upstream = make_source([server.base_url], server.cover_base_url, max_job_tracks=3)
    try:
        error = await expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, upstream.playlist(PLAYLIST_UUID))
    finally:
        await upstream.aclose()
    assert "lists more than limits.max_job_tracks (3) tracks" in error.message
    assert [r.query["offset"] for r in server.requests_for("playlist")] == ["0", "2"]


async def test_a_mix_listing_more_than_max_job_tracks_is_refused(server: CatalogServer) -> None:
    upstream = make_source([server.base_url], server.cover_base_url, max_job_tracks=3)
    try:
        error = await expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, upstream.mix(MIX_ID))
    finally:
        await upstream.aclose()
    assert "lists 5 items, more than limits.max_job_tracks (3)" in error.message


async def test_listing_requests_fail_over_and_count_against_a_base_like_album_pages(
    server: CatalogServer, other_server: CatalogServer
) -> None:
    server.inject("playlist", "status", times=None, status=503)
    server.inject("mix", "status", times=None, status=503)
    upstream = make_source(
        [server.base_url, other_server.base_url],
        server.cover_base_url,
        circuit=functools.partial(UpstreamCircuit, failure_threshold=2),
    )
    try:
        assert (await upstream.playlist(PLAYLIST_UUID)).title == PLAYLIST_TITLE
        assert (await upstream.mix(MIX_ID)).title == MIX_TITLE  # takes the first base down
        assert (await upstream.artist(ARTIST_ID)).name == ARTIST_NAME
        reports = upstream.base_reports()
    finally:
        await upstream.aclose()
    assert reports[server.base_url].down
    assert [r.route for r in server.requests] == ["playlist", "mix"]
    assert [r.route for r in other_server.requests] == ["playlist", "mix", "artist", "artist"]


@pytest.mark.parametrize(
    ("route", "failing", "probe"),
    [
        ("playlist", "limit=100", {"id": PLAYLIST_UUID, "limit": "1", "offset": "0"}),
        ("artist", "skip_tracks", {"id": str(ARTIST_ID)}),
        ("mix", "mix", {"id": MIX_ID}),
    ],
)
async def test_a_down_base_is_probed_with_the_cheapest_form_of_a_listing_request(
    server: CatalogServer, route: str, failing: str, probe: dict[str, str]
) -> None:
    assert PLAYLIST_PAGE_SIZE == 100  # `failing` matches only the full page's query
    calls = {
        "playlist": lambda: upstream.playlist(PLAYLIST_UUID),
        "mix": lambda: upstream.mix(MIX_ID),
        "artist": lambda: upstream.artist(ARTIST_ID),
    }
    holds = Holds(user_held=lambda: False)
    upstream = make_source(
        [server.base_url],
        server.cover_base_url,
        circuit=functools.partial(
            UpstreamCircuit, holds=holds, failure_threshold=1, max_cooldown_s=0.05
        ),
    )
    server.inject(route, "status", times=None if route != "mix" else 1, path_contains=failing)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.run_circuit)
            await expect_code(ErrorCode.UPSTREAM_UNAVAILABLE, calls[route]())
            assert holds.faults()
            with trio.fail_after(10):
                while holds.faults():
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        await upstream.aclose()
    assert server.requests_for(route)[-1].query == probe
