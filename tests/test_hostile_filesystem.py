"""A hostile filesystem (issue 8, Build 5): dlqd never follows a symbolic link out of the
library, never lets two tracks of one job share a name, and never removes anything at
`--socket` that is not a stale socket.

The daemon-level tests run a real dlqd against the real catalog upstream and prove each
case the way the issue asks: the documented error on the hostile job (or a clear exit 1
at start-up), the daemon answering `health`, a restart on the same state dir staying up,
an innocent job completing, and nothing outside the library and the state dir created or
deleted. The tests run as root, where permissions prove nothing: links do the proving.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from mutagen.flac import FLAC

from dlqd.control import SocketPathTaken, bind_unix_socket
from dlqd.demo.catalog import (
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    TWO_DISC_ALBUM_ID,
    Catalog,
    CatalogServer,
    RequestRecord,
    Scripted,
)
from dlqd.errors import DlqdError, ErrorCode
from dlqd.finalize import TMP_DIRNAME, finalize_track, sweep_tmp, tmp_dir
from dlqd.naming import JobNames
from dlqd.safefs import UnsafePathError, open_beneath, unlink_beneath
from dlqd.worker import temp_name
from tests.conftest import DaemonFactory
from tests.support import (
    DaemonProcess,
    assert_unharmed,
    library_files,
    outside_snapshot,
    tree,
    wait_until,
)
from tests.test_finalize import FIXTURES, META, Files, download
from tests.test_naming import make_meta

# The single track's album folder and final name under the default naming template.
SINGLE_ALBUM_DIR = ("The Examples", "Lone Signal")
SINGLE_TRACK_NAME = "01 - Lone Signal.flac"


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the library and the state dir, holding one file of its own."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "precious.txt").write_bytes(b"not dlqd's to touch")
    return path


@pytest.fixture
def innocent_album(catalog: Catalog) -> int:
    """A two-track album of its own artist ("Bench Ensemble"), away from every planted link."""
    return catalog.add_album(2, seconds=0.3)


def track_errors(job: dict[str, Any]) -> list[str]:
    return [(t["error"] or {}).get("code", "") for t in job["tracks"]]


def exit_code(daemon: DaemonProcess) -> int:
    assert daemon.proc is not None
    return daemon.proc.wait(timeout=20)


# --- .dlqd-tmp: start-up -------------------------------------------------------------------


def test_a_tmp_dir_linked_to_the_journal_refuses_start_and_the_journal_survives(
    make_daemon: DaemonFactory, upstream: CatalogServer, innocent_album: int
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    daemon.call("pause")  # acknowledged jobs stay queued, in the journal
    track_job = daemon.submit("track", SINGLE_TRACK_ID)
    innocent = daemon.submit("album", innocent_album)
    acknowledged = {track_job, innocent}
    daemon.kill()  # no drain: the records live in journal segments, as after a crash
    journal = daemon.state_dir / "journal"
    journal_before = tree(journal)
    assert journal_before  # there is something to lose
    (daemon.library / TMP_DIRNAME).rmdir()
    (daemon.library / TMP_DIRNAME).symlink_to(journal)

    daemon.start(wait=False)

    assert exit_code(daemon) == 1
    message = daemon.logs()
    assert f"{daemon.library / TMP_DIRNAME} is a symbolic link" in message
    assert f"rm {daemon.library / TMP_DIRNAME}" in message  # says what to do
    assert tree(journal) == journal_before  # the sweep never ran through the link

    (daemon.library / TMP_DIRNAME).unlink()
    daemon.start()
    snapshot = outside_snapshot(daemon)
    assert {job["id"] for job in daemon.jobs()} == acknowledged
    daemon.call("resume")
    for job_id in acknowledged:
        assert daemon.wait_job(job_id)["status"] == "completed"
    assert (daemon.library / TMP_DIRNAME).is_dir() and not (
        daemon.library / TMP_DIRNAME
    ).is_symlink()
    # Both jobs sat in the journal the link pointed at; both must keep their outcome.
    assert_unharmed(daemon, innocent, snapshot, hostile_job=track_job)


def test_a_link_at_the_lock_file_refuses_start_and_its_target_is_untouched(
    make_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = make_daemon()
    precious = tmp_path / "precious.txt"
    precious.write_text("not the daemon's to write\n")
    daemon.state_dir.mkdir(parents=True, exist_ok=True)
    lock = daemon.state_dir / "dlqd.lock"
    lock.symlink_to(precious)

    daemon.start(wait=False)

    assert exit_code(daemon) == 1
    assert f"{lock} is a symbolic link" in daemon.logs()
    assert f"rm {lock}" in daemon.logs()  # says what to do
    assert precious.read_text() == "not the daemon's to write\n"
    lock.unlink()
    daemon.start()
    assert daemon.call("health")["ok"] is True


@pytest.mark.parametrize("kind", ["a regular file", "a symbolic link to a regular file"])
def test_a_tmp_dir_that_is_no_directory_refuses_start_and_is_kept(
    make_daemon: DaemonFactory, outside: Path, kind: str
) -> None:
    daemon = make_daemon()
    planted = daemon.library / TMP_DIRNAME
    if kind == "a regular file":
        planted.write_bytes(b"someone else's")
    else:
        planted.symlink_to(outside / "precious.txt")
    before = tree(daemon.library), tree(outside)

    daemon.start(wait=False)

    assert exit_code(daemon) == 1
    assert f"{planted} is {kind.split(' to ')[0]}" in daemon.logs()
    assert (tree(daemon.library), tree(outside)) == before


# --- .dlqd-tmp: while running ---------------------------------------------------------------


def paused_media(catalog: Catalog, track_id: int, resume: threading.Event) -> Any:
    """A responder sending the first half of a track's FLAC, then the rest once `resume` is set."""
    body = catalog.audio_for(track_id, "LOSSLESS")

    def respond(_request: RequestRecord, _data: object) -> Scripted:
        def chunks() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            resume.wait(timeout=30)
            yield body[len(body) // 2 :]

        headers = {"Content-Type": "audio/flac", "Content-Length": str(len(body))}
        return Scripted(200, headers, chunks())

    return respond


def test_a_tmp_dir_swapped_for_a_link_mid_download_fails_the_track_and_writes_nothing_outside(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    catalog: Catalog,
    outside: Path,
    innocent_album: int,
) -> None:
    resume = threading.Event()
    upstream.script(
        "media", paused_media(catalog, SINGLE_TRACK_ID, resume), times=1, track_id=SINGLE_TRACK_ID
    )
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    snapshot = outside_snapshot(daemon)
    scratch = daemon.library / TMP_DIRNAME
    job_id = daemon.submit("track", SINGLE_TRACK_ID)
    wait_until(
        lambda: (scratch / temp_name(job_id, SINGLE_TRACK_ID)).exists(),
        what="the temp file to be open",
    )
    scratch.rename(daemon.library / "old-tmp")  # the open temp file moves along with it
    scratch.symlink_to(outside)
    before = tree(outside)
    resume.set()

    job = daemon.wait_job(job_id)

    assert job["status"] == "failed"
    assert track_errors(job) == ["FILESYSTEM_ERROR"]
    assert "symbolic link" in job["tracks"][0]["error"]["message"]
    # While the link is there, a new track fails before writing anything either.
    second = daemon.wait_job(daemon.submit("album", innocent_album))
    assert track_errors(second) == ["FILESYSTEM_ERROR"] * 2
    assert tree(outside) == before
    partial = f"old-tmp/{temp_name(job_id, SINGLE_TRACK_ID)}"  # left inside the library
    assert library_files(daemon.library) == {partial, partial + ".meta"}

    scratch.unlink()  # the operator removes the link: dlqd makes a real folder again
    daemon.call("retry", id=second["id"])
    assert daemon.wait_job(second["id"])["status"] == "completed"
    assert tree(outside) == before
    assert_unharmed(
        daemon, second["id"], snapshot, hostile_job=job_id, planted={partial, partial + ".meta"}
    )


# --- album folders and final names ----------------------------------------------------------


@pytest.mark.parametrize("linked", ["artist", "album"])
def test_a_linked_artist_or_album_folder_fails_the_track_and_writes_nothing_outside(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    outside: Path,
    innocent_album: int,
    linked: str,
) -> None:
    daemon = make_daemon(upstream=upstream)
    artist = daemon.library / SINGLE_ALBUM_DIR[0]
    if linked == "artist":
        artist.symlink_to(outside)
    else:
        artist.mkdir()
        (artist / SINGLE_ALBUM_DIR[1]).symlink_to(outside)
    before = tree(outside)
    daemon.start()
    snapshot = outside_snapshot(daemon)

    hostile = daemon.submit("album", SINGLE_ALBUM_ID)
    innocent = daemon.submit("album", innocent_album)
    job = daemon.wait_job(hostile)

    assert job["status"] == "failed"
    assert track_errors(job) == ["FILESYSTEM_ERROR"]
    assert "is a symbolic link" in job["tracks"][0]["error"]["message"]
    assert daemon.wait_job(innocent)["status"] == "completed"
    assert tree(outside) == before
    assert not any(p.startswith(SINGLE_ALBUM_DIR[0]) for p in library_files(daemon.library))
    assert_unharmed(daemon, innocent, snapshot, hostile_job=hostile)


@pytest.mark.parametrize("conflict", ["overwrite_if_different", "overwrite", "rename", "skip"])
def test_a_link_at_the_final_name_is_refused_and_its_target_untouched(
    make_daemon: DaemonFactory,
    upstream: CatalogServer,
    outside: Path,
    innocent_album: int,
    conflict: str,
) -> None:
    daemon = make_daemon(settings={"files": {"conflict": conflict}}, upstream=upstream)
    album = daemon.library.joinpath(*SINGLE_ALBUM_DIR)
    album.mkdir(parents=True)
    (album / SINGLE_TRACK_NAME).symlink_to(outside / "precious.txt")
    before = tree(outside), tree(daemon.library)
    daemon.start()
    snapshot = outside_snapshot(daemon)

    hostile = daemon.submit("album", SINGLE_ALBUM_ID)
    innocent = daemon.submit("album", innocent_album)
    job = daemon.wait_job(hostile)

    assert track_errors(job) == ["FILESYSTEM_ERROR"]
    assert f"{SINGLE_TRACK_NAME} is a symbolic link" in job["tracks"][0]["error"]["message"]
    assert daemon.wait_job(innocent)["status"] == "completed"
    assert tree(outside) == before[0]
    assert {k: v for k, v in tree(daemon.library).items() if k.startswith("The")} == before[1]
    link = "/".join((*SINGLE_ALBUM_DIR, SINGLE_TRACK_NAME))
    assert_unharmed(daemon, innocent, snapshot, hostile_job=hostile, planted={link})


# --- two tracks of one job, one rendered name -------------------------------------------------


@pytest.mark.parametrize("conflict", ["overwrite_if_different", "overwrite", "rename", "skip"])
def test_tracks_of_one_job_sharing_a_name_are_numbered_in_album_order_never_overwritten(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog, conflict: str
) -> None:
    settings = {
        "files": {"naming": "{album_artist}/{album}/{album}", "conflict": conflict},
        "worker": {"max_concurrent": 4},  # finishing order is not album order
    }
    daemon = make_daemon(settings=settings, upstream=upstream)
    daemon.start()
    album = catalog.album(TWO_DISC_ALBUM_ID)
    stem = f"The Examples/{album.title}/{album.title}"
    expected = [f"{stem}.flac"] + [f"{stem} ({k}).flac" for k in range(2, len(album.track_ids) + 1)]

    job = daemon.wait_job(daemon.submit("album", TWO_DISC_ALBUM_ID))

    assert job["status"] == "completed"
    assert [t["track_id"] for t in job["tracks"]] == list(album.track_ids)
    assert [t["path"] for t in job["tracks"]] == expected
    assert library_files(daemon.library) == {*expected, f"The Examples/{album.title}/cover.jpg"}
    for path, track_id in zip(expected, album.track_ids, strict=True):
        spec = catalog.track(track_id)
        tags = FLAC(daemon.library / path)
        assert tags["TITLE"] == [f"{spec.title} ({spec.version})" if spec.version else spec.title]
        assert (tags["TRACKNUMBER"], tags["DISCNUMBER"]) == (
            [str(spec.track_number)],
            [str(spec.volume_number)],
        )

    if conflict == "overwrite_if_different":  # the same album again: each finds its own file
        inodes = {p: (daemon.library / p).stat().st_ino for p in expected}
        again = daemon.wait_job(daemon.submit("album", TWO_DISC_ALBUM_ID))
        assert [t["outcome"] for t in again["tracks"]] == ["skipped_identical"] * len(expected)
        assert [t["path"] for t in again["tracks"]] == expected
        assert {p: (daemon.library / p).stat().st_ino for p in expected} == inodes
    assert daemon.call("health")["ok"] is True


# --- the control socket path ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "found"),
    [
        ("regular file", "a regular file"),
        ("directory", "a directory"),
        ("link to a regular file", "a symbolic link"),
    ],
)
def test_a_socket_path_holding_something_else_refuses_start_and_is_kept(
    make_daemon: DaemonFactory, outside: Path, kind: str, found: str
) -> None:
    daemon = make_daemon()
    path = daemon.root / "run" / "taken"
    path.parent.mkdir()
    if kind == "regular file":
        path.write_bytes(b"notes I keep here")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"x")
    else:
        path.symlink_to(outside / "precious.txt")
    before = tree(path.parent), tree(outside)

    daemon.start(wait=False, extra_args=["--socket", str(path)])

    assert exit_code(daemon) == 1
    assert f"{path} exists and is {found}, not a socket" in daemon.logs()
    assert (tree(path.parent), tree(outside)) == before


def test_shutdown_leaves_a_file_that_replaced_the_socket(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    daemon.start()
    daemon.socket.unlink()
    daemon.socket.write_bytes(b"put here by someone else")

    assert daemon.stop() == 0

    assert daemon.socket.read_bytes() == b"put here by someone else"
    daemon.socket.unlink()
    daemon.start()  # and the next start binds as usual
    assert daemon.call("health")["ok"] is True
    assert daemon.stop() == 0
    assert not daemon.socket.exists()  # its own socket it does remove


# --- unit: the link-safe steps ---------------------------------------------------------------


@pytest.fixture
def library(tmp_path: Path) -> Path:
    path = tmp_path / "library"
    path.mkdir()
    return path


def test_open_beneath_refuses_a_link_at_the_file_or_its_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "file").write_bytes(b"x")
    (tmp_path / "linked").symlink_to(real)
    (real / "link").symlink_to(real / "file")
    for path, found in [(tmp_path / "linked" / "file", tmp_path / "linked"), (real / "link", None)]:
        with pytest.raises(UnsafePathError) as caught:
            open_beneath(path, "rb")
        assert caught.value.path == (found or path)
        assert caught.value.found == "a symbolic link"
    with open_beneath(real / "file", "rb") as stream:
        assert stream.read() == b"x"


def test_unlink_beneath_removes_a_link_itself_never_its_target(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"kept")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    unlink_beneath(tmp_path / "link")
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "target").read_bytes() == b"kept"


def test_tmp_dir_refuses_a_link(library: Path, outside: Path) -> None:
    (library / TMP_DIRNAME).symlink_to(outside)
    with pytest.raises(DlqdError) as caught:
        tmp_dir(library)
    assert caught.value.code is ErrorCode.FILESYSTEM_ERROR
    assert f"{library / TMP_DIRNAME} is a symbolic link" in caught.value.message


def test_sweep_refuses_a_linked_tmp_dir_and_empties_nothing(library: Path, outside: Path) -> None:
    (library / TMP_DIRNAME).symlink_to(outside)
    before = tree(outside)
    with pytest.raises(UnsafePathError):
        sweep_tmp(library)
    assert tree(outside) == before


def test_sweep_removes_links_and_real_subfolders_as_themselves(
    library: Path, outside: Path
) -> None:
    scratch = tmp_dir(library)
    (outside / "folder").mkdir()
    (outside / "folder" / "deep.txt").write_bytes(b"deep")
    before = tree(outside)
    (scratch / "to-file.part").symlink_to(outside / "precious.txt")
    (scratch / "to-folder").symlink_to(outside / "folder")
    (scratch / "segments").mkdir()
    (scratch / "segments" / "via-link").symlink_to(outside / "folder")
    (scratch / "resumable.part").write_bytes(b"partial")

    # A name to keep that is a link is not a resumable partial: it goes too.
    removed = sweep_tmp(library, keep={"resumable.part", "to-file.part"})

    assert removed == 3
    assert [p.name for p in scratch.iterdir()] == ["resumable.part"]
    assert tree(outside) == before


def test_finalize_refuses_a_linked_album_folder_and_leaves_no_temp(
    library: Path, outside: Path
) -> None:
    (library / "Artist").mkdir()
    (library / "Artist" / "Album").symlink_to(outside)
    before = tree(outside)
    temp = download(library)
    with pytest.raises(DlqdError) as caught:
        finalize_track(temp, META, None, library, Files())
    assert caught.value.code is ErrorCode.FILESYSTEM_ERROR
    assert f"{library / 'Artist' / 'Album'} is a symbolic link" in caught.value.message
    assert tree(outside) == before
    assert not temp.exists()


def test_finalize_refuses_a_tmp_dir_swapped_for_a_link_and_touches_nothing_there(
    library: Path, outside: Path
) -> None:
    temp = download(library)
    (library / TMP_DIRNAME).rename(library / "old-tmp")  # the downloaded file moves along
    (library / TMP_DIRNAME).symlink_to(outside)
    shutil.copyfile(FIXTURES / "sine.flac", outside / temp.name)  # a file the link offers
    before = tree(outside)
    with pytest.raises(DlqdError) as caught:
        finalize_track(temp, META, None, library, Files())
    assert caught.value.code is ErrorCode.FILESYSTEM_ERROR
    assert tree(outside) == before  # neither tagged, nor moved, nor removed
    assert library_files(library) == {f"old-tmp/{temp.name}"}


def test_two_finalizes_of_one_job_never_share_a_name(library: Path) -> None:
    first = make_meta(track_id=1, title="Same", track_number=1)
    second = make_meta(track_id=2, title="Same", track_number=2)
    names = JobNames((first, second))
    files = Files(naming="{album_artist}/{album}/{title}", conflict="overwrite")
    # The second in album order finishes first: it still takes " (2)".
    late = finalize_track(download(library, name="b.part"), second, None, library, files, names)
    early = finalize_track(download(library, name="a.part"), first, None, library, files, names)
    assert (early.path, late.path) == ("Artist/Album/Same.flac", "Artist/Album/Same (2).flac")
    assert FLAC(library / early.path)["TRACKNUMBER"] == ["1"]
    assert FLAC(library / late.path)["TRACKNUMBER"] == ["2"]


# --- unit: JobNames (pure) --------------------------------------------------------------------

TEMPLATE = "{album_artist}/{album}/{title}"


def test_job_names_number_namesakes_by_album_order() -> None:
    tracks = [make_meta(track_id=n, title="X" if n != 2 else "Y") for n in (1, 2, 3, 4)]
    names = JobNames(tracks)
    assert [names.name_for(TEMPLATE, t, "flac").name for t in reversed(tracks)] == [
        "X (3).flac",
        "X (2).flac",
        "Y.flac",
        "X.flac",
    ]


def test_job_names_pass_over_a_name_the_job_already_holds() -> None:
    plain, numbered = make_meta(track_id=1, title="X (2)"), make_meta(track_id=2, title="X")
    other = make_meta(track_id=3, title="X")
    names = JobNames([plain, numbered, other], held=["Artist/Album/X (2).flac"])
    assert names.name_for(TEMPLATE, other, "flac") == PurePosixPath("Artist/Album/X (3).flac")
    assert names.name_for(TEMPLATE, plain, "flac") == PurePosixPath("Artist/Album/X (2) (2).flac")
    names.hold(PurePosixPath("Artist/Album/X.flac"))
    assert names.holds(PurePosixPath("Artist/Album/X.flac"))


def test_job_names_of_a_single_track_are_the_rendered_path() -> None:
    meta = make_meta()
    assert JobNames().name_for(TEMPLATE, meta, "mp3") == PurePosixPath("Artist/Album/Song.mp3")


# --- unit: the socket path -------------------------------------------------------------------


def test_bind_replaces_a_stale_socket_but_refuses_anything_else(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    sock, bound = bind_unix_socket(path, 0o640)
    try:
        assert (os.lstat(path).st_ino, os.lstat(path).st_mode & 0o777) == (bound.inode, 0o640)
    finally:
        sock.close()
    path.unlink()
    path.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SocketPathTaken, match="is a symbolic link, not a socket"):
        bind_unix_socket(path, 0o640)
    assert path.is_symlink()


def test_socket_file_remove_takes_only_the_socket_it_bound(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    sock, bound = bind_unix_socket(path, 0o600)
    sock.close()
    path.unlink()
    path.write_bytes(b"other")
    bound.remove()
    assert path.read_bytes() == b"other"
