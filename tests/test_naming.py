"""Naming: the template, the sanitiser and extension sniffing (pure, no filesystem)."""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlqd.errors import DlqdError, ErrorCode
from dlqd.meta import TrackMeta
from dlqd.naming import (
    MAX_COMPONENT_BYTES,
    check_template,
    detect_extension,
    numbered_name,
    render_relative_path,
    sanitize_component,
)

DEFAULT_TEMPLATE = "{album_artist}/{album}/{disc_prefix}{track:02d} - {title}"
FIXTURES = Path(__file__).parent / "fixtures" / "audio"


def make_meta(**changes: object) -> TrackMeta:
    meta = TrackMeta(
        track_id=1,
        title="Song",
        version="",
        artists=("Artist",),
        album_artist="Artist",
        album="Album",
        album_id=10,
        track_number=3,
        track_total=12,
        disc_number=1,
        disc_total=1,
        date="2021-04-02",
    )
    return dataclasses.replace(meta, **changes)


def assert_valid_component(component: str) -> None:
    assert component not in ("", ".", "..")
    assert not component.startswith(".")
    assert "/" not in component and "\0" not in component
    assert not any(ch in '<>:"\\|?*' for ch in component)
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs") for ch in component)
    assert component == component.strip()
    assert not component.endswith((".", " "))
    assert len(component.encode("utf-8")) <= MAX_COMPONENT_BYTES


def assert_inside_library(relative: PurePosixPath) -> None:
    library = "/library"
    resolved = os.path.normpath(os.path.join(library, str(relative)))
    assert not relative.is_absolute()
    assert resolved.startswith(library + "/")
    assert resolved == os.path.join(library, str(relative))  # normalising changed nothing


def test_default_template_single_disc_has_no_prefix() -> None:
    path = render_relative_path(DEFAULT_TEMPLATE, make_meta(), "flac")
    assert path == PurePosixPath("Artist/Album/03 - Song.flac")


def test_two_disc_album_gets_disc_prefix() -> None:
    meta = make_meta(disc_number=2, disc_total=2, track_number=7)
    path = render_relative_path(DEFAULT_TEMPLATE, meta, "m4a")
    assert path == PurePosixPath("Artist/Album/2-07 - Song.m4a")


def test_version_is_part_of_the_title() -> None:
    meta = make_meta(title="Third Rail", version="Live")
    path = render_relative_path(DEFAULT_TEMPLATE, meta, "flac")
    assert path.name == "03 - Third Rail (Live).flac"


def test_all_fields_render() -> None:
    meta = make_meta(artists=("A", "B"), quality="HI_RES_LOSSLESS", disc_total=2)
    template = "{artist}|{year}|{quality}|{disc}of{discs}|{ext}/{title}.{ext}"
    path = render_relative_path(template, meta, "flac")
    assert path == PurePosixPath("A, B_2021_HI_RES_LOSSLESS_1of2_flac/Song.flac")


def test_template_with_ext_does_not_get_a_second_extension() -> None:
    path = render_relative_path("{album}/{track} {title}.{ext}", make_meta(), "mp3")
    assert path == PurePosixPath("Album/3 Song.mp3")


def test_slash_in_a_field_cannot_make_a_folder() -> None:
    meta = make_meta(album_artist="AC/DC", title="Back/In/Black")
    path = render_relative_path(DEFAULT_TEMPLATE, meta, "flac")
    assert path == PurePosixPath("AC_DC/Album/03 - Back_In_Black.flac")


@pytest.mark.parametrize("evil", ["..", ".", "../..", "../../etc", "...", " .. ", "/", ""])
def test_dot_dot_and_empty_fields_never_escape(evil: str) -> None:
    meta = make_meta(album_artist=evil, album=evil, title=evil)
    path = render_relative_path(DEFAULT_TEMPLATE, meta, "flac")
    assert len(path.parts) == 3
    for component in path.parts:
        assert_valid_component(component)
    assert_inside_library(path)


def test_dots_in_the_template_itself_are_neutralised() -> None:
    path = render_relative_path("../../{album}/./{title}", make_meta(), "flac")
    assert path == PurePosixPath("_/_/Album/_/Song.flac")
    assert_inside_library(path)


def test_control_characters_and_lone_surrogates_are_replaced() -> None:
    meta = make_meta(title="a\0b\nc\td\x7fe\x85f\u2028g\ud800h")
    path = render_relative_path(DEFAULT_TEMPLATE, meta, "flac")
    assert path.name == "03 - a_b_c_d_e_f_g_h.flac"
    path.name.encode("utf-8")  # a lone surrogate could not have been a file name


def test_windows_reserved_characters_are_replaced() -> None:
    meta = make_meta(album='What? <Why>: "A|B" \\ *')
    path = render_relative_path(DEFAULT_TEMPLATE, meta, "flac")
    assert path.parts[1] == "What_ _Why__ _A_B_ _ _"


def test_leading_dots_and_trailing_dots_and_spaces_are_trimmed() -> None:
    assert sanitize_component("  ...Hidden  ") == "Hidden"
    assert sanitize_component("Etc. . .") == "Etc"
    assert sanitize_component(". . .") == "_"


def test_long_names_are_cut_to_200_bytes_keeping_the_extension() -> None:
    meta = make_meta(album_artist="é" * 300, album="A" * 300, title="日本" * 100)
    path = render_relative_path(DEFAULT_TEMPLATE, meta, "flac")
    for component in path.parts:
        assert_valid_component(component)
    assert path.parts[0] == "é" * 100  # 2-byte characters, none split
    assert path.parts[1] == "A" * 200
    assert path.name.endswith(".flac")
    assert path.name.startswith("03 - 日本")
    assert 200 - 3 < len(path.name.encode()) <= 200
    assert_inside_library(path)


def test_cut_never_splits_a_character() -> None:
    # 4-byte emoji: 200 is not a multiple of 4 once the suffix is counted.
    component = sanitize_component("😀" * 100, ".m4a")
    component.encode("utf-8").decode("utf-8")
    assert component == "😀" * 49 + ".m4a"


def test_numbered_name_keeps_extension_and_limit() -> None:
    assert numbered_name("03 - Song.flac", 1) == "03 - Song (1).flac"
    long = sanitize_component("x" * 300, ".flac")
    renamed = numbered_name(long, 12)
    assert renamed.endswith(" (12).flac")
    assert len(renamed.encode()) == 200


@pytest.mark.parametrize(
    "template",
    ["{nope}", "{album.__class__}", "{album[0]}", "{}", "{0}", "{track:{disc}}", "{album"],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="naming template"):
        render_relative_path(template, make_meta(), "flac")


def test_wrong_format_spec_is_a_template_error() -> None:
    with pytest.raises(ValueError, match="does not format"):
        check_template("{title:02d}")  # caught when the config is loaded
    with pytest.raises(ValueError, match="naming template"):
        render_relative_path("{title:02d}", make_meta(), "flac")


def test_check_template_reports_fields() -> None:
    assert check_template(DEFAULT_TEMPLATE) == {
        "album_artist",
        "album",
        "disc_prefix",
        "track",
        "title",
    }


text_field = st.text(alphabet=st.characters(exclude_categories=()), max_size=300) | st.sampled_from(
    ["..", ".", "/", "../", " ", "\0", "\\..\\"]
)


@settings(max_examples=300, deadline=None)
@given(
    album_artist=text_field,
    album=text_field,
    title=text_field,
    version=text_field,
    artist=text_field,
    disc_total=st.integers(min_value=1, max_value=3),
)
def test_any_text_gives_valid_components_inside_the_library(
    album_artist: str, album: str, title: str, version: str, artist: str, disc_total: int
) -> None:
    meta = make_meta(
        album_artist=album_artist,
        album=album,
        title=title,
        version=version,
        artists=(artist,),
        disc_total=disc_total,
    )
    for template in (DEFAULT_TEMPLATE, "{artist}/{album}/{title}.{ext}", "{title}"):
        path = render_relative_path(template, meta, "flac")
        for component in path.parts:
            assert_valid_component(component)
        assert path.name.endswith(".flac")
        assert_inside_library(path)


@pytest.mark.parametrize(
    ("fixture", "ext"),
    [
        ("sine.flac", "flac"),
        ("sine.m4a", "m4a"),
        ("sine-fragmented-flac.m4a", "m4a"),
        ("sine.mp3", "mp3"),
    ],
)
def test_extension_from_real_file_bytes(fixture: str, ext: str) -> None:
    assert detect_extension((FIXTURES / fixture).read_bytes()[:16]) == ext


@pytest.mark.parametrize(
    ("head", "ext"),
    [
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),  # MPEG-1 layer III
        (b"\xff\xe3\x18\xc4", "mp3"),  # MPEG-2.5 layer III
    ],
)
def test_extension_of_mp3_heads(head: bytes, ext: str) -> None:
    assert detect_extension(head) == ext


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\xff",
        b"<html><body>Forbidden",
        b"OggS\x00\x02",
        b"\xff\xf1\x50\x80",  # ADTS AAC: same sync word, layer 00 — not an MP3
        b"RIFF\x00\x00\x00\x00WAVE",
    ],
)
def test_unknown_bytes_are_unsupported(head: bytes) -> None:
    with pytest.raises(DlqdError) as caught:
        detect_extension(head)
    assert caught.value.code is ErrorCode.UNSUPPORTED_FORMAT
