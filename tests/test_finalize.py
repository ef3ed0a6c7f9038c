"""Finalize end to end with real audio files: naming, tagging, conflict modes,
cover.jpg, the atomic move (also across filesystems) and the temp directory."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pytest
from mutagen.flac import FLAC

from dlqd import finalize
from dlqd.errors import DlqdError, ErrorCode
from dlqd.finalize import (
    TMP_DIRNAME,
    decide_conflict,
    finalize_track,
    sweep_tmp,
    tmp_dir,
)
from tests.test_naming import make_meta

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
COVER = (FIXTURES / "cover.jpg").read_bytes()
ALBUM_DIR = PurePosixPath("Artist/Album")

META = make_meta(copyright="AAAA")


@dataclasses.dataclass(frozen=True)
class Files:
    naming: str = "{album_artist}/{album}/{disc_prefix}{track:02d} - {title}"
    conflict: str = "overwrite_if_different"
    cover: str = "embed+file"


@pytest.fixture
def library(tmp_path: Path) -> Path:
    path = tmp_path / "library"
    path.mkdir()
    return path


def download(library: Path, fixture: str = "sine.flac", name: str = "track.part") -> Path:
    """Stand-in for fetch: the raw upstream bytes, in the library's temp directory."""
    temp = tmp_dir(library) / name
    shutil.copyfile(FIXTURES / fixture, temp)
    return temp


def library_files(library: Path) -> set[str]:
    return {p.relative_to(library).as_posix() for p in library.rglob("*") if p.is_file()}


# --- decide_conflict: pure -------------------------------------------------

WANTED = PurePosixPath("A/B/01 - T.flac")


def never_asked(_path: PurePosixPath) -> bool:
    raise AssertionError("identical() must not be consulted here")


@pytest.mark.parametrize("mode", ["skip", "overwrite", "overwrite_if_different", "rename"])
def test_free_name_is_written_in_every_mode(mode: str) -> None:
    decision = decide_conflict(mode, WANTED, lambda _p: False, never_asked)
    assert (decision.path, decision.outcome, decision.moves) == (WANTED, "written", True)


@pytest.mark.parametrize(
    ("mode", "identical", "outcome", "moves"),
    [
        ("skip", never_asked, "skipped_exists", False),
        ("overwrite", never_asked, "overwritten", True),
        ("overwrite_if_different", lambda _p: True, "skipped_identical", False),
        ("overwrite_if_different", lambda _p: False, "overwritten", True),
    ],
)
def test_taken_name_by_mode(
    mode: str, identical: Callable[[PurePosixPath], bool], outcome: str, moves: bool
) -> None:
    decision = decide_conflict(mode, WANTED, lambda _p: True, identical)
    assert (decision.path, decision.outcome, decision.moves) == (WANTED, outcome, moves)


def test_rename_picks_the_first_free_number() -> None:
    taken = {WANTED, WANTED.with_name("01 - T (1).flac"), WANTED.with_name("01 - T (2).flac")}
    decision = decide_conflict("rename", WANTED, taken.__contains__, never_asked)
    assert decision.path == PurePosixPath("A/B/01 - T (3).flac")
    assert decision.outcome == "renamed"


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="conflict mode"):
        decide_conflict("merge", WANTED, lambda _p: True, never_asked)


# --- finalize_track: real files ------------------------------------------------


def test_first_download_is_written_tagged_and_temp_gone(library: Path) -> None:
    temp = download(library)
    result = finalize_track(temp, META, COVER, library, Files())
    assert result == finalize.FinalizeResult("Artist/Album/03 - Song.flac", "written")
    assert not temp.exists()
    assert list((library / TMP_DIRNAME).iterdir()) == []
    final = library / result.path
    audio = FLAC(final)
    assert audio["TITLE"] == ["Song"] and audio["TRACKNUMBER"] == ["3"]
    assert [p.type for p in audio.pictures] == [3]
    assert library_files(library) == {result.path, "Artist/Album/cover.jpg"}


@pytest.mark.parametrize(
    ("fixture", "ext"),
    [("sine.flac", "flac"), ("sine-fragmented-flac.m4a", "m4a"), ("sine.mp3", "mp3")],
)
def test_extension_comes_from_the_bytes(library: Path, fixture: str, ext: str) -> None:
    temp = download(library, fixture, name="looks-like.ogg")
    result = finalize_track(temp, META, None, library, Files())
    assert result.path == f"Artist/Album/03 - Song.{ext}"


def test_two_disc_album_with_version(library: Path) -> None:
    meta = dataclasses.replace(META, disc_number=2, disc_total=2, version="Live")
    result = finalize_track(download(library), meta, None, library, Files())
    assert result.path == "Artist/Album/2-03 - Song (Live).flac"


def test_same_track_twice_is_skipped_identical(library: Path) -> None:
    first = finalize_track(download(library), META, COVER, library, Files())
    final = library / first.path
    before = final.stat()
    temp = download(library)
    second = finalize_track(temp, META, COVER, library, Files())
    assert second == finalize.FinalizeResult(first.path, "skipped_identical")
    assert not temp.exists()
    assert final.stat().st_ino == before.st_ino  # not replaced, not touched


def test_same_size_different_bytes_is_overwritten(library: Path) -> None:
    first = finalize_track(download(library), META, None, library, Files())
    final = library / first.path
    size = final.stat().st_size
    changed = dataclasses.replace(META, copyright="BBBB")  # same length, other bytes
    second = finalize_track(download(library), changed, None, library, Files())
    assert second == finalize.FinalizeResult(first.path, "overwritten")
    assert final.stat().st_size == size
    assert FLAC(final)["COPYRIGHT"] == ["BBBB"]


def test_skip_keeps_what_is_there(library: Path) -> None:
    first = finalize_track(download(library), META, None, library, Files(conflict="skip"))
    changed = dataclasses.replace(META, copyright="BBBB")
    temp = download(library)
    second = finalize_track(temp, changed, None, library, Files(conflict="skip"))
    assert second == finalize.FinalizeResult(first.path, "skipped_exists")
    assert FLAC(library / first.path)["COPYRIGHT"] == ["AAAA"]
    assert not temp.exists()


def test_overwrite_replaces_even_identical_files(library: Path) -> None:
    files = Files(conflict="overwrite")
    first = finalize_track(download(library), META, None, library, files)
    inode = (library / first.path).stat().st_ino
    second = finalize_track(download(library), META, None, library, files)
    assert second == finalize.FinalizeResult(first.path, "overwritten")
    assert (library / first.path).stat().st_ino != inode


def test_rename_counts_up(library: Path) -> None:
    files = Files(conflict="rename")
    paths = [finalize_track(download(library), META, None, library, files) for _ in range(3)]
    assert [(r.path, r.outcome) for r in paths] == [
        ("Artist/Album/03 - Song.flac", "written"),
        ("Artist/Album/03 - Song (1).flac", "renamed"),
        ("Artist/Album/03 - Song (2).flac", "renamed"),
    ]


def test_concurrent_finalizes_never_claim_the_same_name(library: Path) -> None:
    temps = [download(library, name=f"t{i}.part") for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(
            pool.map(lambda t: finalize_track(t, META, None, library, Files("", "rename")), temps)
        )
    # An empty template names the file "_.flac", then "_ (1).flac", ...
    assert sorted(r.path for r in results) == sorted(
        ["_.flac"] + [f"_ ({n}).flac" for n in range(1, 6)]
    )
    assert sorted(r.outcome for r in results) == ["renamed"] * 5 + ["written"]


# --- cover modes ------------------------------------------------------------------


def embedded_pictures(path: Path) -> int:
    return len(FLAC(path).pictures)


@pytest.mark.parametrize(
    ("mode", "has_file", "embeds"),
    [("embed+file", True, 1), ("embed", False, 1), ("file", True, 0), ("none", False, 0)],
)
def test_cover_modes(library: Path, mode: str, has_file: bool, embeds: int) -> None:
    result = finalize_track(download(library), META, COVER, library, Files(cover=mode))
    cover_file = library / ALBUM_DIR / "cover.jpg"
    assert cover_file.exists() == has_file
    if has_file:
        assert cover_file.read_bytes() == COVER
    assert embedded_pictures(library / result.path) == embeds


def test_cover_file_comes_with_the_first_track_and_is_never_replaced(library: Path) -> None:
    cover_file = library / ALBUM_DIR / "cover.jpg"
    assert not cover_file.parent.exists()
    first = finalize_track(download(library), META, COVER, library, Files())
    assert cover_file.read_bytes() == COVER
    mode = stat.S_IMODE((library / first.path).stat().st_mode)
    assert stat.S_IMODE(cover_file.stat().st_mode) == mode
    cover_file.write_bytes(b"the user's own cover")
    second = dataclasses.replace(META, track_number=4)
    finalize_track(download(library), second, COVER, library, Files())
    assert cover_file.read_bytes() == b"the user's own cover"
    assert list((library / TMP_DIRNAME).iterdir()) == []


def test_a_cover_file_failure_after_the_move_keeps_the_track_written(
    library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dlqd.finalize._write_cover_once", disk_full)
    result = finalize_track(download(library), META, COVER, library, Files())
    assert result.outcome == "written"
    assert library_files(library) == {result.path}  # the track, no cover.jpg
    assert embedded_pictures(library / result.path) == 1


def test_no_cover_bytes_no_cover_file(library: Path) -> None:
    finalize_track(download(library), META, None, library, Files())
    assert not (library / ALBUM_DIR / "cover.jpg").exists()


# --- failures: nothing half-done, temp always gone ---------------------------------------


def test_unsupported_bytes_leave_nothing_behind(library: Path) -> None:
    temp = tmp_dir(library) / "preview.part"
    temp.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(DlqdError) as caught:
        finalize_track(temp, META, COVER, library, Files())
    assert caught.value.code is ErrorCode.UNSUPPORTED_FORMAT
    assert not temp.exists()
    assert [p.name for p in library.iterdir()] == [TMP_DIRNAME]  # no album folder, no cover


def test_untaggable_file_is_tagging_failed(library: Path) -> None:
    temp = tmp_dir(library) / "broken.part"
    temp.write_bytes(b"fLaC" + b"\x00" * 64)
    with pytest.raises(DlqdError) as caught:
        finalize_track(temp, META, None, library, Files())
    assert caught.value.code is ErrorCode.TAGGING_FAILED
    assert not temp.exists()
    assert library_files(library) == set()


def test_cross_device_move_copies_then_renames(
    library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def replace(src: str, dst: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        if src_dir_fd != dst_dir_fd:  # out of the temp folder; staging renames stay in one
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(finalize.os, "replace", replace)
    temp = download(library)
    result = finalize_track(temp, META, COVER, library, Files())
    assert result.outcome == "written"
    assert not temp.exists()
    assert FLAC(library / result.path)["TITLE"] == ["Song"]
    assert library_files(library) == {result.path, "Artist/Album/cover.jpg"}


def test_disk_full_during_cross_device_copy(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(_src: object, _dst: object, **_dir_fds: int) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copy(_src: object, _dst: object, _length: int = 0) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finalize.os, "replace", replace)
    monkeypatch.setattr(finalize.shutil, "copyfileobj", copy)
    temp = download(library)
    with pytest.raises(DlqdError) as caught:
        finalize_track(temp, META, COVER, library, Files())
    assert caught.value.code is ErrorCode.DISK_FULL
    assert not temp.exists()
    assert [p.name for p in library.iterdir()] == [TMP_DIRNAME]  # no staging file, no folders


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, when this machine lets us mount one (root, no container limits)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)]
    if shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_real_disk_full_across_devices_is_disk_full(tmp_path: Path, tiny_filesystem: Path) -> None:
    library = tiny_filesystem
    (library / "filler").write_bytes(b"\0" * (56 * 1024))  # leaves less than one track
    temp = tmp_path / "elsewhere.part"  # another filesystem: forces copy + rename
    shutil.copyfile(FIXTURES / "sine.flac", temp)
    with pytest.raises(DlqdError) as caught:
        finalize_track(temp, META, COVER, library, Files())
    assert caught.value.code is ErrorCode.DISK_FULL
    assert not temp.exists()
    assert [p.name for p in library.iterdir()] == ["filler"]


def test_real_disk_full_while_tagging(tiny_filesystem: Path) -> None:
    library = tiny_filesystem
    temp = download(library)
    (library / "filler").write_bytes(b"\0" * (40 * 1024))
    big_cover = COVER + b"\0" * (24 * 1024)  # the tagged file no longer fits
    with pytest.raises(DlqdError) as caught:
        finalize_track(temp, META, big_cover, library, Files())
    assert caught.value.code is ErrorCode.DISK_FULL
    assert not temp.exists()
    assert library_files(library) == {"filler"}


def test_real_cross_device_move_succeeds(tmp_path: Path, tiny_filesystem: Path) -> None:
    temp = tmp_path / "elsewhere.part"
    shutil.copyfile(FIXTURES / "sine.flac", temp)
    result = finalize_track(temp, META, COVER, tiny_filesystem, Files())
    assert result.outcome == "written"
    assert not temp.exists()
    assert library_files(tiny_filesystem) == {result.path, "Artist/Album/cover.jpg"}


# --- temp directory -----------------------------------------------------------------


def test_tmp_dir_is_created_inside_the_library(library: Path) -> None:
    assert tmp_dir(library) == library / TMP_DIRNAME
    assert (library / TMP_DIRNAME).is_dir()


def test_tmp_dir_never_creates_a_missing_library(tmp_path: Path) -> None:
    with pytest.raises(DlqdError) as caught:
        tmp_dir(tmp_path / "unmounted")
    assert caught.value.code is ErrorCode.FILESYSTEM_ERROR
    assert not (tmp_path / "unmounted").exists()


def test_sweep_removes_leftovers_only_in_the_temp_dir(library: Path) -> None:
    finalize_track(download(library), META, None, library, Files())
    scratch = tmp_dir(library)
    (scratch / "a.part").write_bytes(b"x")
    (scratch / "b.part").write_bytes(b"y")
    (scratch / "segments").mkdir()
    (scratch / "segments" / "0001").write_bytes(b"z")
    assert sweep_tmp(library, keep={"b.part"}) == 2
    assert [p.name for p in scratch.iterdir()] == ["b.part"]
    assert sweep_tmp(library) == 1
    assert library_files(library) == {"Artist/Album/03 - Song.flac"}
    assert sweep_tmp(library) == 0
