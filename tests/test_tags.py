"""Tags written into real FLAC, MP4 (AAC and fragmented FLAC-in-MP4) and MP3 files,
read back with mutagen; and the same input always giving the same bytes."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from mutagen import MutagenError
from mutagen.flac import FLAC
from mutagen.id3 import ID3
from mutagen.mp4 import MP4, MP4Cover

from dlqd.errors import DlqdError, ErrorCode
from dlqd.meta import TrackMeta
from dlqd.tags import SourceTag, read_source, write_tags

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
COVER = (FIXTURES / "cover.jpg").read_bytes()
AUDIO = [
    ("sine.flac", "flac"),
    ("sine.m4a", "m4a"),
    ("sine-fragmented-flac.m4a", "m4a"),
    ("sine.mp3", "mp3"),
]

META = TrackMeta(
    track_id=42,
    title="Third Rail",
    version="Live",
    artists=("Main Artist", "Guest"),
    album_artist="Main Artist",
    album="The Album",
    album_id=7,
    track_number=3,
    track_total=12,
    disc_number=1,
    disc_total=2,
    date="2019-06-21",
    isrc="USABC1900042",
    copyright="℗ 2019 Label",
    replay_gain_track=-6.5,
    peak_track=0.987654,
    replay_gain_album=-7.25,
    peak_album=0.999969,
)


def copy_fixture(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copyfile(FIXTURES / name, target)
    return target


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_flac_tags_read_back(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "sine.flac")
    write_tags(path, "flac", META, COVER)
    audio = FLAC(path)
    assert audio.tags is not None
    assert list(audio.tags) == [
        ("TITLE", "Third Rail (Live)"),
        ("ARTIST", "Main Artist, Guest"),
        ("ARTISTS", "Main Artist"),
        ("ARTISTS", "Guest"),
        ("ALBUM", "The Album"),
        ("ALBUMARTIST", "Main Artist"),
        ("TRACKNUMBER", "3"),
        ("TRACKTOTAL", "12"),
        ("DISCNUMBER", "1"),
        ("DISCTOTAL", "2"),
        ("DATE", "2019-06-21"),
        ("YEAR", "2019"),
        ("ISRC", "USABC1900042"),
        ("COPYRIGHT", "℗ 2019 Label"),
        ("REPLAYGAIN_TRACK_GAIN", "-6.50 dB"),
        ("REPLAYGAIN_TRACK_PEAK", "0.987654"),
        ("REPLAYGAIN_ALBUM_GAIN", "-7.25 dB"),
        ("REPLAYGAIN_ALBUM_PEAK", "0.999969"),
        ("TIDAL_TRACK_ID", "42"),
        ("TIDAL_QUALITY", "LOSSLESS"),
    ]
    [picture] = audio.pictures
    assert (picture.type, picture.mime, picture.data) == (3, "image/jpeg", COVER)


@pytest.mark.parametrize("fixture", ["sine.m4a", "sine-fragmented-flac.m4a"])
def test_mp4_tags_read_back(tmp_path: Path, fixture: str) -> None:
    path = copy_fixture(tmp_path, fixture)
    write_tags(path, "m4a", META, COVER)
    tags = MP4(path).tags
    assert tags is not None
    assert tags["\xa9nam"] == ["Third Rail (Live)"]
    assert tags["\xa9ART"] == ["Main Artist, Guest"]
    assert tags["\xa9alb"] == ["The Album"]
    assert tags["aART"] == ["Main Artist"]
    assert tags["trkn"] == [(3, 12)]
    assert tags["disk"] == [(1, 2)]
    assert tags["\xa9day"] == ["2019-06-21"]
    assert tags["cprt"] == ["℗ 2019 Label"]
    freeform = {
        key.rsplit(":", 1)[1]: bytes(value[0]).decode()
        for key, value in tags.items()
        if key.startswith("----:com.apple.iTunes:")
    }
    assert freeform == {
        "ISRC": "USABC1900042",
        "REPLAYGAIN_TRACK_GAIN": "-6.50 dB",
        "REPLAYGAIN_TRACK_PEAK": "0.987654",
        "REPLAYGAIN_ALBUM_GAIN": "-7.25 dB",
        "REPLAYGAIN_ALBUM_PEAK": "0.999969",
    }
    assert tags["----:com.dlqd:TIDAL_TRACK_ID"] == [b"42"]
    assert tags["----:com.dlqd:TIDAL_QUALITY"] == [b"LOSSLESS"]
    [cover] = tags["covr"]
    assert cover.imageformat == MP4Cover.FORMAT_JPEG
    assert bytes(cover) == COVER


def test_mp3_tags_read_back(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "sine.mp3")
    write_tags(path, "mp3", META, COVER)
    tags = ID3(path)
    assert tags.version[:2] == (2, 4)
    texts = {key: frame.text for key, frame in tags.items() if hasattr(frame, "text")}
    assert texts == {
        "TIT2": ["Third Rail (Live)"],
        "TPE1": ["Main Artist, Guest"],
        "TALB": ["The Album"],
        "TPE2": ["Main Artist"],
        "TRCK": ["3/12"],
        "TPOS": ["1/2"],
        "TDRC": texts["TDRC"],  # an ID3TimeStamp; compared as text below
        "TSRC": ["USABC1900042"],
        "TCOP": ["℗ 2019 Label"],
        "TXXX:REPLAYGAIN_TRACK_GAIN": ["-6.50 dB"],
        "TXXX:REPLAYGAIN_TRACK_PEAK": ["0.987654"],
        "TXXX:REPLAYGAIN_ALBUM_GAIN": ["-7.25 dB"],
        "TXXX:REPLAYGAIN_ALBUM_PEAK": ["0.999969"],
        "TXXX:TIDAL_TRACK_ID": ["42"],
        "TXXX:TIDAL_QUALITY": ["LOSSLESS"],
    }
    assert [str(stamp) for stamp in texts["TDRC"]] == ["2019-06-21"]
    [apic] = tags.getall("APIC")
    assert (apic.type, apic.mime, apic.data) == (3, "image/jpeg", COVER)


def test_missing_values_are_left_out(tmp_path: Path) -> None:
    sparse = dataclasses.replace(
        META,
        date="",
        isrc="",
        copyright="",
        track_total=0,
        replay_gain_track=None,
        peak_track=None,
        replay_gain_album=None,
        peak_album=None,
    )
    flac = copy_fixture(tmp_path, "sine.flac")
    write_tags(flac, "flac", sparse, None)
    audio = FLAC(flac)
    assert audio.tags is not None
    assert [key for key, _value in audio.tags] == [
        "TITLE",
        "ARTIST",
        "ARTISTS",
        "ARTISTS",
        "ALBUM",
        "ALBUMARTIST",
        "TRACKNUMBER",
        "DISCNUMBER",
        "DISCTOTAL",
        "TIDAL_TRACK_ID",
        "TIDAL_QUALITY",
    ]
    assert audio.pictures == []
    mp3 = copy_fixture(tmp_path, "sine.mp3")
    write_tags(mp3, "mp3", sparse, None)
    assert ID3(mp3)["TRCK"].text == ["3"]
    assert ID3(mp3).getall("APIC") == []


@pytest.mark.parametrize(("fixture", "ext"), AUDIO)
def test_tagging_is_deterministic(tmp_path: Path, fixture: str, ext: str) -> None:
    first = copy_fixture(tmp_path, fixture)
    write_tags(first, ext, META, COVER)
    once = sha256(first)
    write_tags(first, ext, META, COVER)
    assert sha256(first) == once  # retagging a tagged file changes nothing

    second = tmp_path / f"again-{fixture}"
    shutil.copyfile(FIXTURES / fixture, second)
    write_tags(second, ext, META, COVER)
    assert sha256(second) == once  # a fresh download tags to the same bytes


@pytest.mark.parametrize(("fixture", "ext"), AUDIO)
def test_old_tags_do_not_survive_a_retag(tmp_path: Path, fixture: str, ext: str) -> None:
    path = copy_fixture(tmp_path, fixture)
    other = dataclasses.replace(META, title="Other", album="Elsewhere", isrc="XX0000000000")
    write_tags(path, ext, other, COVER)
    write_tags(path, ext, META, COVER)
    reference = tmp_path / f"reference-{fixture}"
    shutil.copyfile(FIXTURES / fixture, reference)
    write_tags(reference, ext, META, COVER)
    assert sha256(path) == sha256(reference)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to decode")
@pytest.mark.parametrize(("fixture", "ext"), AUDIO)
def test_audio_still_decodes_to_the_same_samples(tmp_path: Path, fixture: str, ext: str) -> None:
    def decoded_md5(path: Path) -> str:
        command = ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a", "-f", "md5", "-"]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        assert result.stderr == ""
        return result.stdout

    path = copy_fixture(tmp_path, fixture)
    write_tags(path, ext, META, COVER)
    assert decoded_md5(path) == decoded_md5(FIXTURES / fixture)


# Not mp3: ID3 can be prepended to any bytes; finalize sniffs the format first.
@pytest.mark.parametrize("ext", ["flac", "m4a"])
def test_garbage_is_tagging_failed(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"broken.{ext}"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(DlqdError) as caught:
        write_tags(path, ext, META, None)
    assert caught.value.code is ErrorCode.TAGGING_FAILED


def test_truncated_flac_is_tagging_failed(tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    path.write_bytes((FIXTURES / "sine.flac").read_bytes()[:20])
    with pytest.raises(DlqdError) as caught:
        write_tags(path, "flac", META, None)
    assert caught.value.code is ErrorCode.TAGGING_FAILED


def test_disk_full_inside_mutagen_is_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def save(*_args: object, **_kwargs: object) -> None:
        # What mutagen does with an I/O error: wrap it in its own exception.
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise MutagenError(exc) from exc

    monkeypatch.setattr(FLAC, "save", save)
    path = copy_fixture(tmp_path, "sine.flac")
    with pytest.raises(DlqdError) as caught:
        write_tags(path, "flac", META, COVER)
    assert caught.value.code is ErrorCode.DISK_FULL


def test_unknown_extension_is_unsupported(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "sine.flac")
    with pytest.raises(DlqdError) as caught:
        write_tags(path, "ogg", META, None)
    assert caught.value.code is ErrorCode.UNSUPPORTED_FORMAT


@pytest.mark.parametrize(("fixture", "ext"), AUDIO)
def test_the_source_tags_read_back(tmp_path: Path, fixture: str, ext: str) -> None:
    path = copy_fixture(tmp_path, fixture)
    assert read_source(path, ext) is None  # untagged: not from dlqd
    write_tags(path, ext, dataclasses.replace(META, quality="HI_RES_LOSSLESS"), None)
    with open(path, "rb") as stream:
        assert read_source(stream, ext) == SourceTag(42, "HI_RES_LOSSLESS")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"fLaC",
        b"fLaC" + b"\xff" * 100,
        b"\x00\x00\x00\x18ftypM4A " + b"\xff" * 100,
        b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",
        bytes(range(256)) * 8,
    ],
)
@pytest.mark.parametrize("ext", ["flac", "m4a", "mp3", "ogg"])
def test_a_broken_file_has_no_source_rather_than_an_error(
    tmp_path: Path, content: bytes, ext: str
) -> None:
    path = tmp_path / f"broken.{ext}"
    path.write_bytes(content)
    assert read_source(path, ext) is None


@pytest.mark.parametrize("track_id", ["", "x42", "-1", "4" * 13, "\u0664\u0662"])
def test_a_source_tag_that_is_not_a_track_id_is_no_source(tmp_path: Path, track_id: str) -> None:
    path = copy_fixture(tmp_path, "sine.flac")
    write_tags(path, "flac", META, None)
    audio = FLAC(path)
    assert audio.tags is not None
    audio.tags["TIDAL_TRACK_ID"] = [track_id]
    audio.save()
    assert read_source(path, "flac") is None
