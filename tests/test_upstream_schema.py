"""The upstream's JSON checked at the edge: rules per field, and random JSON in every field.

The parsers are pure, so these tests call them directly (no HTTP): whatever
JSON value sits in whatever field, the answer is a record fit for the journal,
the file names and the tags, or a `DlqdError` with an upstream code.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import math
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlqd.demo.catalog import (
    ARTIST_ID,
    ARTIST_RELEASE_IDS,
    MIX_ID,
    MIX_TRACK_IDS,
    PLAYLIST_TRACK_IDS,
    PLAYLIST_UUID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    Catalog,
)
from dlqd.errors import DlqdError, ErrorCode
from dlqd.manifest import BTS_MIME, plan_from_playback
from dlqd.meta import AlbumMeta, MediaPlan, TrackMeta
from dlqd.source import (
    Discography,
    Listing,
    Source,
    build_album,
    build_discography,
    build_listing,
    with_playback_gains,
)
from dlqd.upstream_schema import (
    MAX_ID,
    QUOTE_CHARS,
    AlbumPage,
    ArtistAnswer,
    ArtistReleases,
    TrackInfo,
    UpstreamRelease,
    parse,
    parse_album_page,
    parse_mix,
    parse_playlist_page,
    quote,
)
from tests.support import unread_json_response

UPSTREAM_CODES = {ErrorCode.UPSTREAM_BAD_RESPONSE, ErrorCode.UNSUPPORTED_FORMAT}
TRACK_URL = "http://api.test/track/?id=1&quality=LOSSLESS"
CATALOG = Catalog()  # JSON only: no audio is generated


def cover_url(uuid: str) -> str:
    return f"http://img.test/{uuid.replace('-', '/')}/1280x1280.jpg"


def album_json() -> dict[str, Any]:
    return CATALOG.album_json(TWO_DISC_ALBUM_ID)


def info_json() -> dict[str, Any]:
    return CATALOG.track_json(SINGLE_TRACK_ID)


def playlist_json() -> dict[str, Any]:
    return CATALOG.playlist_json(PLAYLIST_UUID)


def mix_json() -> dict[str, Any]:
    return CATALOG.mix_json(MIX_ID)


def artist_json() -> dict[str, Any]:
    return CATALOG.artist_json(ARTIST_ID)


def releases_json() -> dict[str, Any]:
    return CATALOG.artist_releases_json(ARTIST_ID)


def bts_doc() -> dict[str, Any]:
    return {
        "mimeType": "audio/flac",
        "codecs": "flac",
        "encryptionType": "NONE",
        "urls": ["http://cdn.test/a.flac?token=t", "http://cdn2.test/a.flac?token=t"],
    }


def b64_json(doc: object) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


def playback_json(bts: object | None = None) -> dict[str, Any]:
    return {
        "trackId": SINGLE_TRACK_ID,
        "assetPresentation": "FULL",
        "audioQuality": "LOSSLESS",
        "bitDepth": 16,
        "sampleRate": 44100,
        "manifestMimeType": BTS_MIME,
        "manifest": b64_json(bts_doc() if bts is None else bts),
        "albumReplayGain": -8.25,
        "albumPeakAmplitude": 0.988,
        "trackReplayGain": -7.5,
        "trackPeakAmplitude": 0.98,
    }


def album(data: dict[str, Any], max_tracks: int = 5000) -> AlbumMeta:
    page = parse_album_page(data, album_id=TWO_DISC_ALBUM_ID, max_tracks=max_tracks)
    return build_album(page, page.tracks, cover_url=cover_url)


def playlist(data: object, max_tracks: int = 5000) -> Listing:
    page = parse_playlist_page(data, uuid=PLAYLIST_UUID, max_tracks=max_tracks)
    return build_listing(page.playlist.title, page.tracks)


def mix(data: object, max_tracks: int = 5000) -> Listing:
    answer = parse_mix(data, mix_id=MIX_ID, max_tracks=max_tracks)
    return build_listing(answer.mix.title, answer.tracks)


def discography(who: object, releases: object) -> Discography:
    """As `Source.artist` reads its two answers."""
    name = parse(ArtistAnswer, who, "/artist/").artist.name
    return build_discography(name, parse(ArtistReleases, releases, "/artist/ f").albums.items)


def refused(call: Any, *args: Any, **kwargs: Any) -> DlqdError:
    with pytest.raises(DlqdError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE, caught.value
    assert caught.value.message.isascii()
    return caught.value


# -- every value a record holds is storable -------------------------------------------


def assert_storable(value: object) -> None:
    """Strings encode as UTF-8, ints fit 0..2**31-1, floats are finite, all the way down."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            assert_storable(getattr(value, field.name))
    elif isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        assert 0 <= value <= MAX_ID, value
    elif isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, tuple | list):
        for item in value:
            assert_storable(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_storable(key)
            assert_storable(item)
    else:
        raise AssertionError(f"unexpected {type(value)} in a record")


def assert_journal_can_hold(meta: AlbumMeta | TrackMeta) -> None:
    assert_storable(meta)
    msgpack.packb(dataclasses.asdict(meta))  # what killed the daemon in issue 8


# -- rules, one case each ---------------------------------------------------------------


def test_valid_album_gives_typed_metadata() -> None:
    meta = album(album_json())
    assert [t.track_number for t in meta.tracks] == [1, 2, 3, 1, 2]
    assert meta.title == "Night Lines" and meta.cover_url is not None
    assert_journal_can_hold(meta)


@pytest.mark.parametrize(
    "path",
    [
        ("title",),
        ("copyright",),
        ("releaseDate",),
        ("cover",),
        ("artist", "name"),
        ("artists", 0, "type"),
        ("items", 2, "item", "title"),
        ("items", 2, "item", "version"),
        ("items", 2, "item", "isrc"),
        ("items", 2, "item", "copyright"),
        ("items", 2, "item", "streamStartDate"),
        ("items", 2, "item", "artists", 0, "name"),
    ],
)
def test_a_lone_surrogate_in_any_album_string_is_refused(path: tuple[str | int, ...]) -> None:
    data = album_json()
    at(data, path[:-1])[path[-1]] = "ok \ud800 then"
    error = refused(album, data)
    assert "\\ud800" in error.message  # quoted, escaped


@pytest.mark.parametrize("value", [0, -1, MAX_ID + 1, 2**70, -(2**64)])
@pytest.mark.parametrize("key", ["id", "trackNumber", "volumeNumber"])
def test_track_ids_and_positions_outside_1_to_2_pow_31_are_refused(key: str, value: int) -> None:
    data = album_json()
    data["items"][1]["item"][key] = value
    error = refused(album, data)
    assert f"items[1].item.{key}" in error.message


@pytest.mark.parametrize("value", [0, 2**70, -(2**64)])
@pytest.mark.parametrize(
    "path", [("id",), ("artist", "id"), ("items", 0, "item", "artist", "id"), ("artists", 0, "id")]
)
def test_album_and_artist_ids_outside_the_range_are_refused(
    path: tuple[str | int, ...], value: int
) -> None:
    data = album_json()
    at(data, path[:-1])[path[-1]] = value
    refused(album, data)


def test_a_bool_is_not_an_int() -> None:
    data = album_json()
    data["items"][0]["item"]["trackNumber"] = True
    assert "trackNumber is a boolean" in refused(album, data).message
    data = album_json()
    data["items"][0]["item"]["volumeNumber"] = True  # optional: as if absent, disc 1
    assert album(data).tracks[0].disc_number == 1


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300, 2**70, -1000, "-7", True])
def test_a_gain_or_peak_that_is_not_a_sane_finite_number_is_dropped(value: object) -> None:
    data = album_json()
    data["items"][0]["item"]["replayGain"] = value
    data["items"][0]["item"]["peak"] = value
    track = album(data).tracks[0]
    assert (track.replay_gain_track, track.peak_track) == (None, None)


def test_playback_gains_bit_depth_and_rate_out_of_range_are_dropped() -> None:
    data = playback_json()
    data.update(trackReplayGain=math.nan, albumPeakAmplitude=1e308, bitDepth=2**70, sampleRate=-1)
    plan = plan_from_playback(data, manifest_url=TRACK_URL)
    assert {"track_replay_gain", "album_peak", "bit_depth", "sample_rate"}.isdisjoint(plan.extra)
    assert plan.extra["album_replay_gain"] == "-8.25"


def test_durations_are_carried_and_an_insane_one_is_dropped() -> None:
    data = album_json()
    data["items"][0]["item"]["duration"] = 241
    data["items"][1]["item"]["duration"] = 0
    data["items"][2]["item"]["duration"] = 10**9
    data["items"][3]["item"]["duration"] = "241"
    durations = [track.duration for track in album(data).tracks]
    assert durations == [241, None, None, None, 2]  # the last as the catalog has it


@pytest.mark.parametrize(
    ("value", "kept"),
    [("HI_RES_LOSSLESS", "HI_RES_LOSSLESS"), ("HIGH", "HIGH"), ("lossless", None),
     ("LOSS LESS", None), ("\x1b[31mRED", None), ("X" * 33, None), (7, None)],
)  # fmt: skip
def test_the_delivered_quality_is_kept_only_when_it_looks_like_a_quality_name(
    value: object, kept: str | None
) -> None:
    data = playback_json()
    data["audioQuality"] = value
    plan = plan_from_playback(data, manifest_url=TRACK_URL)
    assert plan.extra.get("audio_quality") == kept


def test_numbers_of_volumes_over_1000_are_refused_and_0_means_unknown() -> None:
    data = album_json()
    data["numberOfVolumes"] = 1001
    refused(album, data)
    data["numberOfVolumes"] = 0
    assert {t.disc_total for t in album(data).tracks} == {2}  # counted from the discs


def test_an_album_claiming_more_tracks_than_the_job_limit_is_refused() -> None:
    data = album_json()
    data["numberOfTracks"] = 10**9
    assert "max_job_tracks (5000)" in refused(album, data).message
    assert "max_job_tracks (4)" in refused(album, album_json(), max_tracks=4).message


def test_a_page_longer_than_the_job_limit_is_refused_before_its_items_are_read() -> None:
    data = album_json()
    data["items"] = [None] * 6  # not objects: reading them would refuse for another reason
    assert "a page lists 6 items" in refused(album, data, max_tracks=5).message


def test_a_cover_that_is_not_a_uuid_is_not_put_into_the_cover_url() -> None:
    data = album_json()
    data["cover"] = "../../../admin"
    assert album(data).cover_url is None


def test_strings_longer_than_their_cap_are_refused() -> None:
    data = album_json()
    data["title"] = "x" * 5000
    assert "longer than 4096" in refused(album, data).message


def test_bts_urls_must_all_be_strings_and_valid_utf8() -> None:
    for urls in (["http://a.test/x", 5], ["http://a.test/\udc80"], []):
        doc = {**bts_doc(), "urls": urls}
        refused(plan_from_playback, playback_json(doc), manifest_url=TRACK_URL)


def test_info_without_an_album_id_is_refused() -> None:
    data = info_json()
    data["album"] = {"title": "x"}
    assert "album.id is missing" in refused(parse, TrackInfo, data, "/info/").message


@pytest.mark.parametrize(
    "value",
    ["\ud800" * 500, "é" * 500, "'\"\\\n" * 100, 2**300, -(2**64), 1e308, None, [1], {"a": 1}],
)
def test_quote_is_ascii_and_short(value: object) -> None:
    text = quote(value)
    assert text.isascii()
    assert len(text) <= QUOTE_CHARS + 3


# -- playlists, mixes, artists: rules ------------------------------------------------


def test_valid_playlist_mix_and_artist_give_their_tracks_and_releases() -> None:
    assert [ref.track_id for ref in playlist(playlist_json()).refs] == list(PLAYLIST_TRACK_IDS)
    assert [ref.track_id for ref in mix(mix_json()).refs] == list(MIX_TRACK_IDS)
    releases = discography(artist_json(), releases_json()).releases
    assert [release.album_id for release in releases] == list(ARTIST_RELEASE_IDS)


@pytest.mark.parametrize(
    ("shape", "path"),
    [
        (playlist_json, ("items", 0, "item", "id")),
        (playlist_json, ("items", 1, "item", "album", "id")),
        (mix_json, ("items", 0, "id")),
        (mix_json, ("items", 3, "album", "id")),
        (releases_json, ("albums", "items", 2, "id")),
    ],
)
@pytest.mark.parametrize("value", [0, -1, MAX_ID + 1, 2**70])
def test_listed_track_album_and_release_ids_outside_1_to_2_pow_31_are_refused(
    shape: Any, path: tuple[str | int, ...], value: int
) -> None:
    data = shape()
    at(data, path[:-1])[path[-1]] = value
    read = {playlist_json: playlist, mix_json: mix}.get(shape)
    error = refused(read, data) if read else refused(discography, artist_json(), data)
    assert ".".join(str(key) for key in path[-2:] if isinstance(key, str)) in error.message


@pytest.mark.parametrize(
    ("shape", "path"),
    [
        (playlist_json, ("playlist", "title")),
        (mix_json, ("mix", "title")),
        (releases_json, ("albums", "items", 0, "title")),
        (artist_json, ("artist", "name")),
    ],
)
def test_a_lone_surrogate_or_an_overlong_title_in_a_listing_is_refused(
    shape: Any, path: tuple[str | int, ...]
) -> None:
    for value, problem in (("a \udc80", "\\udc80"), ("x" * 5000, "longer than 4096")):
        data = shape()
        at(data, path[:-1])[path[-1]] = value
        if shape is playlist_json:
            error = refused(playlist, data)
        elif shape is mix_json:
            error = refused(mix, data)
        elif shape is releases_json:
            error = refused(discography, artist_json(), data)
        else:
            error = refused(discography, data, releases_json())
        assert problem in error.message


def test_a_playlist_claiming_more_tracks_than_the_limit_or_a_bad_count_is_refused() -> None:
    data = playlist_json()
    data["playlist"]["numberOfTracks"] = 6
    assert "claims 6 tracks, more than limits.max_job_tracks (5)" in (
        refused(playlist, data, max_tracks=5).message
    )
    for count in (-1, 2**70, "4"):
        data = playlist_json()
        data["playlist"]["numberOfTracks"] = count
        assert "playlist.numberOfTracks" in refused(playlist, data).message


def test_a_listing_longer_than_the_limit_is_refused_before_its_items_are_read() -> None:
    data = mix_json()
    data["items"] = [None] * 6  # not objects: reading them would refuse for another reason
    assert "lists 6 items" in refused(mix, data, max_tracks=5).message
    data = playlist_json()
    data["items"] = [None] * 6
    assert "lists 6 items" in refused(playlist, data, max_tracks=5).message


def test_an_answer_naming_another_playlist_or_mix_is_refused_and_case_does_not_matter() -> None:
    data = playlist_json()
    data["playlist"]["uuid"] = PLAYLIST_UUID.upper()
    assert playlist(data).refs
    data["playlist"]["uuid"] = "00000000-0000-4000-8000-000000000000"
    assert "answered with playlist '00000000-" in refused(playlist, data).message
    data = mix_json()
    data["mix"]["id"] = "ffff"
    assert "answered with mix 'ffff'" in refused(mix, data).message


@pytest.mark.parametrize(
    ("shape", "path"),
    [(playlist_json, ("playlist", "uuid")), (mix_json, ("mix", "id"))],
)
@pytest.mark.parametrize("value", ["../../etc", "a" * 65, "\u202eevil", 7])
def test_a_listing_id_that_is_no_id_is_ignored_not_compared(
    shape: Any, path: tuple[str, str], value: object
) -> None:
    data = shape()
    data[path[0]][path[1]] = value
    assert (playlist if shape is playlist_json else mix)(data).refs


def test_a_video_entry_is_skipped_however_it_is_shaped_and_a_non_object_refused() -> None:
    data = playlist_json()
    data["items"].append({"type": "video", "item": {"id": -5, "title": "\ud800"}})
    data["items"].append({"type": "track", "item": None})
    assert [ref.track_id for ref in playlist(data).refs] == list(PLAYLIST_TRACK_IDS)
    data["items"].append([1])
    assert "items[7] is a list, not an object" in refused(playlist, data).message
    data = mix_json()
    data["items"].append({"id": -5, "title": "\ud800", "album": None})
    assert [ref.track_id for ref in mix(data).refs] == list(MIX_TRACK_IDS)


def release(album_id: int, kind: object) -> dict[str, Any]:
    return {"id": album_id, "title": f"R{album_id}", "type": kind, "numberOfTracks": 3}


def test_release_types_become_kinds_other_types_are_skipped_and_repeats_dropped() -> None:
    items = [
        release(1, "ALBUM"),
        release(2, "EP"),
        release(3, "SINGLE"),
        release(4, "COMPILATION"),
        release(5, "album"),  # not a type name: absent
        release(6, None),
        release(1, "SINGLE"),  # the same album again
    ]
    found = discography(artist_json(), {"albums": {"items": items}}).releases
    assert [(r.album_id, r.kind) for r in found] == [(1, "album"), (2, "ep"), (3, "single")]
    assert {r.release_date for r in found} == {None}
    assert {r.tracks for r in found} == {3}


def test_build_discography_is_pure_over_parsed_releases() -> None:
    parsed = UpstreamRelease(
        id=9, title="T", type="EP", number_of_tracks=2, release_date="2001-02-03"
    )
    (only,) = build_discography("Name", [parsed, parsed]).releases
    assert (only.kind, only.release_date) == ("ep", "2001-02-03")


# -- the job limit while paging (a lying upstream, served by a mock transport) --------


def paging_upstream(pages: list[list[int]], claims: int) -> httpx.AsyncClient:
    calls = iter(pages)

    def handler(request: httpx.Request) -> httpx.Response:
        ids = next(calls, [])
        data = {
            "id": 7,
            "title": "Liar",
            "numberOfTracks": claims,
            "artist": {"id": 1, "name": "Fibber"},
            "items": [
                {"type": "track", "item": {"id": i, "title": f"T{i}", "trackNumber": i}}
                for i in ids
            ],
        }
        return unread_json_response({"version": "2.0", "data": data})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_paging_stops_with_bad_response_once_more_tracks_than_the_limit_are_read() -> None:
    # Each page is within the limit and so is the claim; the pages together are not.
    async with paging_upstream([[1, 2], [3, 4]], claims=3) as client:
        source = Source(["http://up.test"], "http://img.test", 2, 2, "t", client, max_job_tracks=3)
        with pytest.raises(DlqdError) as caught:
            await source.album(7)
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE
    assert "max_job_tracks (3)" in caught.value.message


async def test_an_album_over_the_limit_is_refused_after_one_request() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        data = {**album_json(), "numberOfTracks": 10**9}
        return unread_json_response({"version": "2.0", "data": data})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = Source(["http://up.test"], "http://img.test", 2, 2, "t", client)
        with pytest.raises(DlqdError) as caught:
            await source.album(TWO_DISC_ALBUM_ID)
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE
    assert len(requests) == 1


# -- random JSON in every field ---------------------------------------------------------

SURROGATES = st.characters(categories=["Cs"])
TEXT = st.one_of(
    st.sampled_from(["\ud800", "a\udfffb", "FULL", "NONE", "track", "MAIN", "2019-05-03"]),
    st.text(st.one_of(st.characters(), SURROGATES), min_size=1, max_size=8),
    st.text(max_size=8),
)
INTS = st.one_of(
    st.integers(-3, 3),
    st.integers(-(2**80), 2**80),
    st.sampled_from([2**31 - 1, 2**31, 2**63, 2**64, 2**70, -(2**63) - 1, -(2**64), 10**9]),
)
FLOATS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-320, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


Path = tuple[str | int, ...]
REMOVE = object()  # an action: the field is absent


def paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Every field of `value` at any depth, the value itself first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def at(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def same_type_as(original: Any) -> st.SearchStrategy[Any]:
    """Values that pass a field's type check and test its content rules."""
    if isinstance(original, str):
        return TEXT
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return INTS
    if isinstance(original, float):
        return st.one_of(FLOATS, INTS)
    return JSON_VALUES


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """`base` with one to four of its fields, at any depth, replaced by random JSON or removed."""
    doc = copy.deepcopy(base)
    for path in draw(st.lists(st.sampled_from(paths(base)), min_size=1, max_size=4)):
        # Mostly values of the field's own type: they get past the type check.
        hostile = same_type_as(at(base, path))
        new = draw(st.one_of(hostile, hostile, hostile, JSON_VALUES, st.just(REMOVE)))
        if not path:
            doc = None if new is REMOVE else new
            continue
        parent = doc
        for key in path[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                break  # an earlier change replaced this branch
        else:
            if isinstance(parent, dict) and isinstance(path[-1], str):
                if new is REMOVE:
                    parent.pop(path[-1], None)
                else:
                    parent[path[-1]] = new
            elif isinstance(parent, list) and isinstance(path[-1], int) and path[-1] < len(parent):
                parent[path[-1]] = None if new is REMOVE else new
    return doc


def upstream_error_or(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The call's result, or None after a `DlqdError` with an upstream code (nothing else)."""
    try:
        return call(*args, **kwargs)
    except DlqdError as exc:
        assert exc.code in UPSTREAM_CODES, exc
        assert exc.message.isascii(), exc
        return None


FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated(album_json()))
def test_any_album_page_parses_into_storable_metadata_or_an_upstream_error(data: Any) -> None:
    meta = upstream_error_or(album, data)
    if meta is not None:
        assert_journal_can_hold(meta)


@FUZZ
@given(mutated(info_json()), mutated(album_json()))
def test_any_info_answer_parses_into_storable_metadata_or_an_upstream_error(
    info_data: Any, album_data: Any
) -> None:
    """As `Source.track_meta` does when the album does not list the track."""
    info = upstream_error_or(parse, TrackInfo, info_data, "/info/")
    page = upstream_error_or(parse, AlbumPage, album_data, "/album/")
    if info is None or page is None:
        return
    meta = upstream_error_or(build_album, page, [*page.tracks, info], cover_url=cover_url)
    if meta is not None:
        assert_journal_can_hold(meta)


@FUZZ
@given(
    mutated(playback_json()),
    st.one_of(mutated(bts_doc()).map(b64_json), st.none(), TEXT),
    st.booleans(),
)
def test_any_playback_info_gives_a_plan_or_an_upstream_error(
    data: Any, manifest: str | None, replace_manifest: bool
) -> None:
    if replace_manifest and isinstance(data, dict):
        data["manifest"] = manifest
    plan = upstream_error_or(plan_from_playback, data, manifest_url=TRACK_URL)
    if plan is None:
        return
    assert isinstance(plan, MediaPlan)
    assert_storable(plan)
    assert plan.urls and all(url.startswith(("http://", "https://")) for url in plan.urls)
    track = album(album_json()).tracks[0]
    assert_journal_can_hold(with_playback_gains(track, plan))


@FUZZ
@given(mutated(playlist_json()))
def test_any_playlist_page_parses_into_a_storable_listing_or_an_upstream_error(data: Any) -> None:
    listing = upstream_error_or(playlist, data)
    if listing is not None:
        assert_storable(listing)
        assert len({ref.track_id for ref in listing.refs}) == len(listing.refs)


@FUZZ
@given(mutated(mix_json()))
def test_any_mix_answer_parses_into_a_storable_listing_or_an_upstream_error(data: Any) -> None:
    listing = upstream_error_or(mix, data)
    if listing is not None:
        assert_storable(listing)
        assert len({ref.track_id for ref in listing.refs}) == len(listing.refs)


@FUZZ
@given(mutated(artist_json()), mutated(releases_json()))
def test_any_artist_answers_parse_into_a_storable_discography_or_an_upstream_error(
    who: Any, releases: Any
) -> None:
    found = upstream_error_or(discography, who, releases)
    if found is not None:
        assert_storable(found)
        assert {release.kind for release in found.releases} <= {"album", "ep", "single"}
        assert len({release.album_id for release in found.releases}) == len(found.releases)


def test_fuzzing_reaches_every_field_of_the_shapes() -> None:
    """Random values land in nested fields too, not only at the top."""
    fields = {path[-1] for path in paths(album_json()) if path}
    assert {"trackNumber", "volumeNumber", "name", "type", "replayGain", "numberOfTracks"} <= fields
    assert ("items", 4, "item", "artists", 0, "id") in paths(album_json())
    assert ("items", 4, "item", "album", "id") in paths(playlist_json())
    assert ("items", 4, "album", "id") in paths(mix_json())
    assert ("albums", "items", 3, "numberOfTracks") in paths(releases_json())
