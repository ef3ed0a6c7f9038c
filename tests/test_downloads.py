"""Downloads end to end (issue 3): a real dlqd process, the real catalog upstream
over HTTP, real files in a real library, tags read back with mutagen.

Expected values are computed from the catalog (the upstream's own records and
bytes), never from dlqd's code, so a test fails when dlqd and the upstream
disagree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from mutagen.flac import FLAC
from mutagen.mp4 import MP4

from dlqctl.client import Client
from dlqd.demo import audio
from dlqd.demo.catalog import (
    AAC_ONLY_TRACK_ID,
    BIG_ALBUM_ID,
    BIG_ALBUM_TRACKS,
    DASH_NO_TIMELINE_START_NUMBER,
    DASH_NO_TIMELINE_TRACK_ID,
    DASH_TIMELINE_TRACK_ID,
    ENCRYPTED_TRACK_ID,
    HOSTILE_ALBUM_ID,
    LIVE_TRACK_ID,
    PREVIEW_TRACK_ID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    TWO_MAIN_ARTISTS_TRACK_ID,
    Catalog,
    CatalogServer,
)
from dlqd.integrity import boxes_in
from tests.conftest import DaemonFactory
from tests.support import DaemonProcess, flac_parts, library_files, wait_until

COVER = audio.cover_jpeg()
TMP = ".dlqd-tmp"


# --- what the upstream says a track should be ------------------------------------


def expected_relpath(catalog: Catalog, track_id: int, ext: str) -> str:
    """The default template `{album_artist}/{album}/{disc_prefix}{track:02d} - {title}`."""
    track = catalog.track(track_id)
    album = catalog.album(track.album_id)
    prefix = f"{track.volume_number}-" if album.number_of_volumes > 1 else ""
    return f"{album.artists[0].name}/{album.title}/{prefix}{track.track_number:02d} - " + (
        f"{display_title(catalog, track_id)}.{ext}"
    )


def display_title(catalog: Catalog, track_id: int) -> str:
    track = catalog.track(track_id)
    return f"{track.title} ({track.version})" if track.version else track.title


def artist_names(catalog: Catalog, track_id: int) -> list[str]:
    """All artists of a track, main ones first (the upstream's order within each kind)."""
    artists = catalog.track(track_id).artists
    return [a.name for a in artists if a.type == "MAIN"] + [
        a.name for a in artists if a.type != "MAIN"
    ]


def expected_vorbis(catalog: Catalog, track_id: int) -> dict[str, list[str]]:
    """Every tag of DESIGN §7 as FLAC Vorbis comments, from the catalog's records."""
    track = catalog.track(track_id)
    album = catalog.album(track.album_id)
    on_disc = [t for t in album.track_ids if catalog.track(t).volume_number == track.volume_number]
    lyrics = {"lyrics": [track.lyrics]} if track.lyrics else {}  # files.lyrics = "embed"
    return (
        lyrics
        | {
            "title": [display_title(catalog, track_id)],
            "artist": [", ".join(artist_names(catalog, track_id))],
            "artists": artist_names(catalog, track_id),
            "album": [album.title],
            "albumartist": [album.artists[0].name],
            "tracknumber": [str(track.track_number)],
            "tracktotal": [str(len(on_disc))],  # dlqd counts tracks per disc
            "discnumber": [str(track.volume_number)],
            "disctotal": [str(album.number_of_volumes)],
            "date": [album.release_date],
            "year": [album.release_date[:4]],
            "isrc": [track.isrc],
            "copyright": [track.copyright],
            "replaygain_track_gain": [f"{track.replay_gain:.2f} dB"],
            "replaygain_track_peak": [f"{track.peak:.6f}"],
            "replaygain_album_gain": [f"{album.replay_gain:.2f} dB"],
            "replaygain_album_peak": [f"{album.peak:.6f}"],
            "tidal_track_id": [str(track_id)],
            "tidal_quality": [catalog.effective_quality(track_id, "LOSSLESS")],
        }
    )


def vorbis_tags(path: Path) -> dict[str, list[str]]:
    tags = FLAC(path).tags
    assert tags is not None, f"{path} has no Vorbis comment"
    return {key.lower(): list(values) for key, values in tags.as_dict().items()}


def assert_mp4_tags(path: Path, catalog: Catalog, track_id: int) -> None:
    """The MP4 atoms of DESIGN §7 equal the upstream's metadata."""
    track = catalog.track(track_id)
    album = catalog.album(track.album_id)
    tags = MP4(path).tags
    assert tags is not None
    on_disc = [t for t in album.track_ids if catalog.track(t).volume_number == track.volume_number]
    itunes = "----:com.apple.iTunes:"
    assert tags["\xa9nam"] == [display_title(catalog, track_id)]
    assert tags["\xa9ART"] == [", ".join(artist_names(catalog, track_id))]
    assert tags["\xa9alb"] == [album.title]
    assert tags["aART"] == [album.artists[0].name]
    assert tags["trkn"] == [(track.track_number, len(on_disc))]
    assert tags["disk"] == [(track.volume_number, album.number_of_volumes)]
    assert tags["\xa9day"] == [album.release_date]
    assert tags["cprt"] == [track.copyright]
    assert [bytes(v) for v in tags[itunes + "ISRC"]] == [track.isrc.encode()]
    assert (
        bytes(tags[itunes + "REPLAYGAIN_TRACK_GAIN"][0]) == f"{track.replay_gain:.2f} dB".encode()
    )
    assert bytes(tags[itunes + "REPLAYGAIN_ALBUM_PEAK"][0]) == f"{album.peak:.6f}".encode()
    assert [bytes(c) for c in tags["covr"]] == [COVER]


# --- audio without tags ------------------------------------------------------------


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, bytes]]:
    """(type, whole box bytes) of each box between `start` and `end` (dlqd's own box walker)."""
    return [(box.kind, data[box.start : box.end]) for box in boxes_in(data, start, end)]


def mp4_without_udta(data: bytes) -> list[tuple[str, Any]]:
    """The top-level boxes, with `moov` replaced by its children minus `udta` (the tags)."""
    out: list[tuple[str, Any]] = []
    for kind, box in mp4_boxes(data):
        if kind == "moov":
            children = [(k, b) for k, b in mp4_boxes(box, 8) if k != "udta"]
            out.append(("moov", children))
        else:
            out.append((kind, box))
    return out


def mdat_payloads(data: bytes) -> list[bytes]:
    return [box[8:] for kind, box in mp4_boxes(data) if kind == "mdat"]


def file_state(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def library_state(library: Path) -> dict[str, tuple[int, int, int]]:
    return {rel: file_state(library / rel) for rel in library_files(library)}


def tmp_leftovers(library: Path) -> list[str]:
    directory = library / TMP
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def run_job(
    daemon: DaemonProcess, type_: str, target_id: int, quality: str = "LOSSLESS"
) -> dict[str, Any]:
    return daemon.wait_job(daemon.submit(type_, target_id, quality))


# --- albums --------------------------------------------------------------------------


def test_two_disc_album_lands_at_template_paths_with_every_tag_and_the_upstream_audio(
    daemon: DaemonProcess, catalog: Catalog
) -> None:
    album = catalog.album(TWO_DISC_ALBUM_ID)
    job = run_job(daemon, "album", TWO_DISC_ALBUM_ID)

    sizes = {t: len(catalog.audio_for(t, "LOSSLESS")) for t in album.track_ids}
    assert job["status"] == "completed"
    assert job["error"] is None
    assert job["progress"] == 1.0
    assert job["bytes_done"] == job["bytes_total"] == sum(sizes.values())
    assert job["attempts"] == 1
    assert (job["title"], job["artist"]) == (album.title, album.artists[0].name)
    assert [t["track_id"] for t in job["tracks"]] == list(album.track_ids)
    for track in job["tracks"]:
        spec = catalog.track(track["track_id"])
        assert track["status"] == "completed"
        assert track["outcome"] == "written"
        assert track["attempts"] == 1
        assert track["error"] is None
        assert track["bytes_done"] == track["bytes_total"] == sizes[spec.id]
        assert (track["disc"], track["number"]) == (spec.volume_number, spec.track_number)
        assert track["title"] == display_title(catalog, spec.id)
        assert track["path"] == expected_relpath(catalog, spec.id, "flac")

    folder = f"{album.artists[0].name}/{album.title}"
    expected_files = {expected_relpath(catalog, t, "flac") for t in album.track_ids}
    assert library_files(daemon.library) == expected_files | {f"{folder}/cover.jpg"}
    assert "The Examples/Night Lines/1-03 - Third Rail (Live).flac" in expected_files
    assert "The Examples/Night Lines/2-02 - Coda.flac" in expected_files
    assert (daemon.library / folder / "cover.jpg").read_bytes() == COVER

    for track_id in album.track_ids:
        path = daemon.library / expected_relpath(catalog, track_id, "flac")
        assert vorbis_tags(path) == expected_vorbis(catalog, track_id), track_id
        pictures = FLAC(path).pictures
        assert [(p.type, p.mime, p.data) for p in pictures] == [(3, "image/jpeg", COVER)]
        got_info, got_frames = flac_parts(path.read_bytes())
        want_info, want_frames = flac_parts(catalog.audio_for(track_id, "LOSSLESS"))
        assert got_info == want_info
        assert got_frames == want_frames
    assert tmp_leftovers(daemon.library) == []


def test_album_of_120_tracks_downloads_every_track(
    daemon: DaemonProcess, upstream: CatalogServer, catalog: Catalog
) -> None:
    job = run_job(daemon, "album", BIG_ALBUM_ID)

    assert job["status"] == "completed"
    assert len(job["tracks"]) == BIG_ALBUM_TRACKS
    assert all(t["outcome"] == "written" for t in job["tracks"])
    flacs = {p for p in library_files(daemon.library) if p.endswith(".flac")}
    expected = {expected_relpath(catalog, t, "flac") for t in catalog.album(BIG_ALBUM_ID).track_ids}
    assert flacs == expected
    assert len(flacs) == BIG_ALBUM_TRACKS
    # The listing was paged: more than one /album/ page (100 per page) was read.
    offsets = {r.query.get("offset") for r in upstream.requests_for("album", album_id=BIG_ALBUM_ID)}
    assert {"0", "100"} <= offsets


def test_single_track_job_is_named_and_tagged_exactly_as_in_its_album_job(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    alone, in_album = (
        make_daemon("alone", upstream=upstream),
        make_daemon("album", upstream=upstream),
    )
    alone.start()
    in_album.start()
    single_ids = (TWO_MAIN_ARTISTS_TRACK_ID, LIVE_TRACK_ID)
    single_jobs = [alone.submit("track", t) for t in single_ids]
    album_job = in_album.wait_job(in_album.submit("album", TWO_DISC_ALBUM_ID))
    assert album_job["status"] == "completed"

    for track_id, job_id in zip(single_ids, single_jobs, strict=True):
        job = alone.wait_job(job_id)
        assert job["status"] == "completed"
        [track] = job["tracks"]
        [album_track] = [t for t in album_job["tracks"] if t["track_id"] == track_id]
        assert track["path"] == album_track["path"] == expected_relpath(catalog, track_id, "flac")
        assert track["path"].split("/")[-1].startswith(f"{catalog.track(track_id).volume_number}-")
        single_file = alone.library / track["path"]
        assert vorbis_tags(single_file) == expected_vorbis(catalog, track_id)
        assert [p.data for p in FLAC(single_file).pictures] == [COVER]
        # Deterministic tagging: the very same bytes as the album job's file.
        assert single_file.read_bytes() == (in_album.library / album_track["path"]).read_bytes()
    folder = "The Examples/Night Lines"
    assert (alone.library / folder / "cover.jpg").read_bytes() == COVER


# --- formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("track_id", "first_segment"),
    [(DASH_TIMELINE_TRACK_ID, 1), (DASH_NO_TIMELINE_TRACK_ID, DASH_NO_TIMELINE_START_NUMBER)],
    ids=["segment-timeline", "duration-template"],
)
def test_dash_track_is_init_plus_every_segment_in_order(
    daemon: DaemonProcess,
    upstream: CatalogServer,
    catalog: Catalog,
    track_id: int,
    first_segment: int,
) -> None:
    job = run_job(daemon, "track", track_id, quality="HI_RES_LOSSLESS")

    assert job["status"] == "completed", job["error"]
    [track] = job["tracks"]
    assert track["path"] == expected_relpath(catalog, track_id, "m4a")
    n_segments = len(audio.DASH_SEGMENT_DURATIONS)
    fetched = [r.path.rsplit("/", 1)[1] for r in upstream.requests_for("media", track_id=track_id)]
    assert fetched == ["init.mp4"] + [
        f"{n}.m4s" for n in range(first_segment, first_segment + n_segments)
    ]
    upstream_bytes = catalog.audio_for(track_id, "HI_RES_LOSSLESS")
    assert track["bytes_done"] == len(upstream_bytes)

    written = (daemon.library / track["path"]).read_bytes()
    # Byte for byte the same file except moov/udta, where the tags live: ftyp, the
    # rest of moov, and every styp/sidx/moof/mdat of each segment, in order.
    assert mp4_without_udta(written) == mp4_without_udta(upstream_bytes)
    segments = b"".join(audio.dash_segments())
    assert written.endswith(segments)  # every media segment, whole and in order, at the end
    # mutagen reads it as FLAC in MP4 (fragmented: no duration in moov, so no length).
    info = MP4(daemon.library / track["path"]).info
    assert (info.codec, info.sample_rate, info.bits_per_sample) == (
        "fLaC",
        audio.DASH_SAMPLE_RATE,
        audio.DASH_BIT_DEPTH,
    )
    assert_mp4_tags(daemon.library / track["path"], catalog, track_id)


def test_aac_track_at_high_quality_is_a_tagged_m4a_with_the_upstream_audio(
    daemon: DaemonProcess, catalog: Catalog
) -> None:
    job = run_job(daemon, "track", AAC_ONLY_TRACK_ID, quality="HIGH")

    assert job["status"] == "completed", job["error"]
    [track] = job["tracks"]
    assert track["path"] == expected_relpath(catalog, AAC_ONLY_TRACK_ID, "m4a")
    path = daemon.library / track["path"]
    assert mdat_payloads(path.read_bytes()) == mdat_payloads(
        catalog.audio_for(AAC_ONLY_TRACK_ID, "HIGH")
    )
    assert MP4(path).info.codec.startswith("mp4a")
    assert_mp4_tags(path, catalog, AAC_ONLY_TRACK_ID)


@pytest.mark.parametrize(
    "track_id", [PREVIEW_TRACK_ID, ENCRYPTED_TRACK_ID], ids=["preview", "encrypted"]
)
def test_unplayable_track_fails_unsupported_format_and_leaves_no_file(
    daemon: DaemonProcess, upstream: CatalogServer, track_id: int
) -> None:
    job = run_job(daemon, "track", track_id)

    assert job["status"] == "failed"
    assert job["error"]["code"] == "UNSUPPORTED_FORMAT"
    assert job["tracks"][0]["error"]["code"] == "UNSUPPORTED_FORMAT"
    assert job["tracks"][0]["path"] is None
    assert library_files(daemon.library) == set()
    assert tmp_leftovers(daemon.library) == []
    assert upstream.requests_for("media", track_id=track_id) == []  # refused before fetching
    assert job["tracks"][0]["attempts"] == 1  # permanent: never retried


# --- conflicts -----------------------------------------------------------------------


def test_same_album_again_skips_every_identical_track_and_touches_no_file(
    daemon: DaemonProcess,
) -> None:
    first = run_job(daemon, "album", TWO_DISC_ALBUM_ID)
    assert first["status"] == "completed"
    before = library_state(daemon.library)

    second_id = daemon.submit("album", TWO_DISC_ALBUM_ID)
    assert second_id != first["id"]
    second = daemon.wait_job(second_id)

    assert second["status"] == "completed"
    assert [t["outcome"] for t in second["tracks"]] == ["skipped_identical"] * len(first["tracks"])
    assert [t["path"] for t in second["tracks"]] == [t["path"] for t in first["tracks"]]
    assert library_state(daemon.library) == before  # same names, inodes, mtimes, sizes
    assert tmp_leftovers(daemon.library) == []


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("skip", "skipped_exists"),
        ("overwrite", "overwritten"),
        ("rename", "renamed"),
        ("overwrite_if_different", "overwritten"),
    ],
)
def test_conflict_mode_decides_what_happens_to_an_existing_different_file(
    make_daemon: DaemonFactory, upstream: CatalogServer, mode: str, outcome: str
) -> None:
    daemon = make_daemon(settings={"files": {"conflict": mode}}, upstream=upstream)
    daemon.start()
    first = run_job(daemon, "track", SINGLE_TRACK_ID)
    [track] = first["tracks"]
    assert track["outcome"] == "written"
    existing = daemon.library / track["path"]
    downloaded = existing.read_bytes()
    # Not a file dlqd wrote (no source tags): a file dlqd did write, from this very
    # track and quality, is skipped before any download (test_skip_and_lyrics.py).
    tampered = b"edited by hand" + downloaded
    existing.write_bytes(tampered)
    tampered_state = file_state(existing)

    second = run_job(daemon, "track", SINGLE_TRACK_ID)
    [again] = second["tracks"]

    assert second["status"] == "completed"
    assert again["outcome"] == outcome
    if mode == "skip":
        assert again["path"] == track["path"]
        assert file_state(existing) == tampered_state
        assert existing.read_bytes() == tampered
    elif mode == "rename":
        assert again["path"] == track["path"].removesuffix(".flac") + " (1).flac"
        assert existing.read_bytes() == tampered
        assert (daemon.library / again["path"]).read_bytes() == downloaded
    else:
        assert again["path"] == track["path"]
        assert existing.read_bytes() == downloaded
        assert existing.stat().st_ino != tampered_state[0]  # replaced by a rename, not edited
    assert len([p for p in library_files(daemon.library) if p.endswith(".flac")]) == (
        2 if mode == "rename" else 1
    )
    assert tmp_leftovers(daemon.library) == []


def test_rename_mode_writes_numbered_copies_of_a_whole_album(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(settings={"files": {"conflict": "rename"}}, upstream=upstream)
    daemon.start()
    first = run_job(daemon, "album", TWO_DISC_ALBUM_ID)
    second = run_job(daemon, "album", TWO_DISC_ALBUM_ID)

    assert [t["outcome"] for t in second["tracks"]] == ["renamed"] * len(first["tracks"])
    for old, new in zip(first["tracks"], second["tracks"], strict=True):
        assert new["path"] == old["path"].removesuffix(".flac") + " (1).flac"
        assert (daemon.library / new["path"]).read_bytes() == (
            daemon.library / old["path"]
        ).read_bytes()


# --- names from hostile metadata ------------------------------------------------------


def test_hostile_album_gives_valid_names_inside_the_library(
    daemon: DaemonProcess, catalog: Catalog
) -> None:
    job = run_job(daemon, "album", HOSTILE_ALBUM_ID)

    assert job["status"] == "completed", job["error"]
    album = catalog.album(HOSTILE_ALBUM_ID)
    files = library_files(daemon.library)
    assert len([f for f in files if f.endswith(".flac")]) == len(album.track_ids)
    library = daemon.library.resolve()
    for relative in files:
        path = (daemon.library / relative).resolve()
        assert path.is_relative_to(library), relative
        for component in Path(relative).parts:
            assert len(component.encode("utf-8")) <= 200, component
            assert component not in ("", ".", "..")
            assert not component.startswith("."), component
            assert not any(unicodedata.category(ch) == "Cc" for ch in component), component
            assert not set('<>:"\\|?*') & set(component), component
    # The tags keep the upstream's text as it is; only names are sanitised.
    for track in job["tracks"]:
        tags = vorbis_tags(daemon.library / track["path"])
        assert tags["title"] == [display_title(catalog, track["track_id"])]
    # Nothing was written beside the library: the daemon's root holds only its own files.
    assert {p.name for p in daemon.root.iterdir()} == {"state", "library", "dlqd.toml", "dlqd.log"}
    assert set(os.listdir(daemon.library)) == {TMP, "AC_DC"}


# --- cover modes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "embedded", "cover_file"),
    [("none", False, False), ("file", False, True), ("embed", True, False)],
)
def test_cover_mode_decides_between_embedded_picture_and_cover_jpg(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    mode: str,
    embedded: bool,
    cover_file: bool,
) -> None:
    daemon = make_daemon(settings={"files": {"cover": mode}}, upstream=upstream)
    daemon.start()
    job = run_job(daemon, "track", SINGLE_TRACK_ID)

    assert job["status"] == "completed"
    path = daemon.library / job["tracks"][0]["path"]
    assert [p.data for p in FLAC(path).pictures] == ([COVER] if embedded else [])
    cover = path.parent / "cover.jpg"
    assert cover.exists() == cover_file
    if cover_file:
        assert cover.read_bytes() == COVER
    if mode == "none":
        assert upstream.requests_for("cover") == []


# --- live progress -----------------------------------------------------------------------


def test_throttled_download_shows_live_bytes_in_get_and_progress_events_in_watch(
    daemon: DaemonProcess, upstream: CatalogServer, catalog: Catalog
) -> None:
    album_id = catalog.add_album(1, 2 * 1024 * 1024)
    [track_id] = catalog.album(album_id).track_ids
    total = len(catalog.audio_for(track_id, "LOSSLESS"))
    upstream.throttle_bps = 200_000  # ~10 s for the whole file

    with Client(str(daemon.socket)) as watcher:
        assert watcher.call("watch") == {"watching": True}
        job_id = daemon.submit("album", album_id)

        def mid_transfer() -> dict[str, Any] | None:
            job = daemon.job(job_id)
            track = job["tracks"][0] if job["tracks"] else None
            if track and track["status"] == "downloading" and 0 < track["bytes_done"] < total:
                return job
            return None

        job = wait_until(mid_transfer, what="a track part-way through its download")
        assert job["status"] == "processing"
        assert job["tracks"][0]["bytes_total"] == total
        assert 0 < job["bytes_done"] < job["bytes_total"] == total
        assert 0 < job["progress"] < 1

        progress: list[dict[str, Any]] = []
        for event in watcher.events():
            if event.get("job_id") != job_id:
                continue
            if event["event"] == "progress":
                progress.append(event)
                if 0 < event["bytes_done"] < event["bytes_total"] and len(progress) >= 2:
                    break
            if event["event"] == "finish":  # never hang: the job's end ends the search
                break
    upstream.throttle_bps = None

    assert len(progress) >= 2
    assert all(e["track_id"] == track_id for e in progress)
    assert all(e["bytes_total"] == total for e in progress)
    assert [e["bytes_done"] for e in progress] == sorted(e["bytes_done"] for e in progress)
    assert 0 < progress[-1]["bytes_done"] < total
    assert daemon.wait_job(job_id)["status"] == "completed"


# --- retry -------------------------------------------------------------------------------


def test_retry_of_a_partial_album_fetches_only_its_unfinished_track(
    daemon: DaemonProcess, upstream: CatalogServer, catalog: Catalog
) -> None:
    broken = LIVE_TRACK_ID
    upstream.inject("media", "status", times=None, status=404, track_id=broken)
    job = run_job(daemon, "album", TWO_DISC_ALBUM_ID)

    assert job["status"] == "partial"
    [failed] = [t for t in job["tracks"] if t["status"] == "failed"]
    assert failed["track_id"] == broken
    assert failed["error"]["code"] == "UPSTREAM_NOT_FOUND"
    assert job["error"] == failed["error"]
    assert failed["path"] is None
    assert all(t["outcome"] == "written" for t in job["tracks"] if t["track_id"] != broken)
    before = library_state(daemon.library)

    upstream.clear_faults()
    upstream.clear_requests()
    retried = daemon.call("retry", id=job["id"])["job"]
    assert retried["status"] in ("queued", "processing")
    done = daemon.wait_job(job["id"])

    assert done["status"] == "completed"
    assert done["error"] is None
    [fixed] = [t for t in done["tracks"] if t["track_id"] == broken]
    assert (fixed["status"], fixed["outcome"]) == ("completed", "written")
    assert fixed["path"] == expected_relpath(catalog, broken, "flac")
    media = upstream.requests_for("media")
    assert media and {r.track_id for r in media} == {broken}
    assert {r.track_id for r in upstream.requests_for("track")} == {broken}
    after = library_state(daemon.library)
    assert set(after) == set(before) | {fixed["path"]}
    assert {k: after[k] for k in before} == before  # finished tracks untouched


# --- dlqd demo -----------------------------------------------------------------------------


def test_dlqd_demo_exits_0_and_leaves_tagged_files(tmp_path: Path, catalog: Catalog) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLQD_")}
    demo = subprocess.run(
        [sys.executable, "-m", "dlqd", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert demo.returncode == 0, demo.stdout + demo.stderr
    library = tmp_path / "demo" / "library"
    album = catalog.album(TWO_DISC_ALBUM_ID)
    flacs = {p for p in library_files(library) if p.endswith(".flac")}
    assert flacs == {expected_relpath(catalog, t, "flac") for t in album.track_ids}
    for track_id in album.track_ids:
        tags = vorbis_tags(library / expected_relpath(catalog, track_id, "flac"))
        assert tags == expected_vorbis(catalog, track_id)
    assert "completed" in demo.stdout
