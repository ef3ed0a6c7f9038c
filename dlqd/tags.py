"""Tags: one declarative table of what dlqd writes, and one small writer per container.

Owns: the mapping from `TrackMeta` to FLAC Vorbis comments, MP4 atoms and ID3
frames (DESIGN §7), and writing them into a temp file. Adding a field is one
`TagSpec` row; the writers never name a field. Never writes into the library
(finalize tags the temp file before moving it) and never varies its output:
existing tags are dropped, padding is fixed and nothing time-dependent is
written, so the same audio and metadata always give the same bytes — that is
what lets `overwrite_if_different` recognise a repeated download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

from mutagen.flac import FLAC, Picture, VCFLACDict
from mutagen.id3 import APIC, ID3, TXXX, USLT, Encoding, Frames, ID3NoHeaderError, PictureType
from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm

from dlqd.errors import DlqdError, ErrorCode, from_oserror
from dlqd.meta import TrackMeta

# Room for a later tag edit without rewriting the audio; fixed so output is stable.
PADDING_BYTES = 4096
_ITUNES = "----:com.apple.iTunes:"
_DLQD = "----:com.dlqd:"  # dlqd's own freeform atoms: where a file came from
_FREEFORM = "----:"
SOURCE_TRACK_ID = "TIDAL_TRACK_ID"
SOURCE_QUALITY = "TIDAL_QUALITY"
# A path, or the file itself open "r+b" (mutagen takes either).
Target = Path | BinaryIO


@dataclass(frozen=True)
class NumberPair:
    """A position and its total ("track 3 of 12"); total 0 means unknown."""

    number: int
    total: int


TagValue = str | tuple[str, ...] | NumberPair


def _gain(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} dB"


def _peak(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


@dataclass(frozen=True)
class TagSpec:
    """One field and where each container keeps it; an empty key: not stored there.

    `vorbis` is one key, or for a `NumberPair` the (number, total) keys. `mp4` is
    an atom name, or `----:MEAN:NAME` for a freeform atom. `id3` is a frame id,
    `TXXX:DESC` for a user text frame, or `USLT` (unsynchronised lyrics).
    """

    field: str
    value: Callable[[TrackMeta], TagValue]
    vorbis: tuple[str, ...] = ()
    mp4: str = ""
    id3: str = ""


TAGS: tuple[TagSpec, ...] = (
    TagSpec("title", lambda m: m.display_title, ("TITLE",), "\xa9nam", "TIT2"),
    TagSpec("artist", lambda m: m.display_artist, ("ARTIST",), "\xa9ART", "TPE1"),
    TagSpec("artists", lambda m: m.artists, ("ARTISTS",)),
    TagSpec("album", lambda m: m.album, ("ALBUM",), "\xa9alb", "TALB"),
    TagSpec("album_artist", lambda m: m.album_artist, ("ALBUMARTIST",), "aART", "TPE2"),
    TagSpec(
        "track",
        lambda m: NumberPair(m.track_number, m.track_total),
        ("TRACKNUMBER", "TRACKTOTAL"),
        "trkn",
        "TRCK",
    ),
    TagSpec(
        "disc",
        lambda m: NumberPair(m.disc_number, m.disc_total),
        ("DISCNUMBER", "DISCTOTAL"),
        "disk",
        "TPOS",
    ),
    # MP4 and ID3 have one date field that holds the year too; Vorbis readers
    # differ, so FLAC gets both.
    TagSpec("date", lambda m: m.date, ("DATE",), "\xa9day", "TDRC"),
    TagSpec("year", lambda m: m.year, ("YEAR",)),
    TagSpec("isrc", lambda m: m.isrc, ("ISRC",), _ITUNES + "ISRC", "TSRC"),
    TagSpec("copyright", lambda m: m.copyright, ("COPYRIGHT",), "cprt", "TCOP"),
    TagSpec(
        "replaygain_track_gain",
        lambda m: _gain(m.replay_gain_track),
        ("REPLAYGAIN_TRACK_GAIN",),
        _ITUNES + "REPLAYGAIN_TRACK_GAIN",
        "TXXX:REPLAYGAIN_TRACK_GAIN",
    ),
    TagSpec(
        "replaygain_track_peak",
        lambda m: _peak(m.peak_track),
        ("REPLAYGAIN_TRACK_PEAK",),
        _ITUNES + "REPLAYGAIN_TRACK_PEAK",
        "TXXX:REPLAYGAIN_TRACK_PEAK",
    ),
    TagSpec(
        "replaygain_album_gain",
        lambda m: _gain(m.replay_gain_album),
        ("REPLAYGAIN_ALBUM_GAIN",),
        _ITUNES + "REPLAYGAIN_ALBUM_GAIN",
        "TXXX:REPLAYGAIN_ALBUM_GAIN",
    ),
    TagSpec(
        "replaygain_album_peak",
        lambda m: _peak(m.peak_album),
        ("REPLAYGAIN_ALBUM_PEAK",),
        _ITUNES + "REPLAYGAIN_ALBUM_PEAK",
        "TXXX:REPLAYGAIN_ALBUM_PEAK",
    ),
    TagSpec("lyrics", lambda m: m.lyrics, ("LYRICS",), "\xa9lyr", "USLT"),
    # Where the file came from: what lets a later job skip it without downloading it.
    TagSpec(
        "tidal_track_id",
        lambda m: str(m.track_id),
        (SOURCE_TRACK_ID,),
        _DLQD + SOURCE_TRACK_ID,
        "TXXX:" + SOURCE_TRACK_ID,
    ),
    TagSpec(
        "tidal_quality",
        lambda m: m.quality,
        (SOURCE_QUALITY,),
        _DLQD + SOURCE_QUALITY,
        "TXXX:" + SOURCE_QUALITY,
    ),
)


def _present(value: TagValue) -> bool:
    """Empty text, an empty list or a zero position is left out rather than written blank."""
    if isinstance(value, NumberPair):
        return value.number > 0
    return bool(value)


def _texts(value: str | tuple[str, ...]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _fixed_padding(_info: object) -> int:
    return PADDING_BYTES


def _at_start(target: Target) -> Target:
    """mutagen reads a file object from where it stands: rewind it for each load and save."""
    if not isinstance(target, Path):
        target.seek(0)
    return target


def _write_flac(target: Target, meta: TrackMeta, cover: bytes | None) -> None:
    audio = FLAC(_at_start(target))
    if audio.tags is None:
        audio.add_tags()
    tags = audio.tags
    assert isinstance(tags, VCFLACDict)
    tags.clear()  # keeps the encoder's vendor string: it describes the audio
    audio.clear_pictures()
    for spec in TAGS:
        value = spec.value(meta)
        if not spec.vorbis or not _present(value):
            continue
        if isinstance(value, NumberPair):
            number_key, total_key = spec.vorbis
            tags[number_key] = [str(value.number)]
            if value.total > 0:
                tags[total_key] = [str(value.total)]
        else:
            tags[spec.vorbis[0]] = _texts(value)
    if cover is not None:
        picture = Picture()
        picture.type = PictureType.COVER_FRONT
        picture.mime = "image/jpeg"
        picture.data = cover
        audio.add_picture(picture)
    audio.save(_at_start(target), deleteid3=True, padding=_fixed_padding)


def _write_mp4(target: Target, meta: TrackMeta, cover: bytes | None) -> None:
    audio = MP4(_at_start(target))
    if audio.tags is None:
        audio.add_tags()
    assert audio.tags is not None
    audio.tags.clear()
    for spec in TAGS:
        value = spec.value(meta)
        if not spec.mp4 or not _present(value):
            continue
        if isinstance(value, NumberPair):
            audio.tags[spec.mp4] = [(value.number, value.total)]
        elif spec.mp4.startswith(_FREEFORM):
            audio.tags[spec.mp4] = [MP4FreeForm(text.encode("utf-8")) for text in _texts(value)]
        else:
            audio.tags[spec.mp4] = _texts(value)
    if cover is not None:
        audio.tags["covr"] = [MP4Cover(cover, imageformat=MP4Cover.FORMAT_JPEG)]
    audio.save(_at_start(target), padding=_fixed_padding)


def _write_mp3(target: Target, meta: TrackMeta, cover: bytes | None) -> None:
    try:
        tags = ID3(_at_start(target))
    except ID3NoHeaderError:
        tags = ID3()
    tags.clear()
    for spec in TAGS:
        value = spec.value(meta)
        if not spec.id3 or not _present(value):
            continue
        if isinstance(value, NumberPair):
            texts = [f"{value.number}/{value.total}" if value.total > 0 else str(value.number)]
        else:
            texts = _texts(value)
        if spec.id3.startswith("TXXX:"):
            tags.add(TXXX(encoding=Encoding.UTF8, desc=spec.id3[5:], text=texts))
        elif spec.id3 == "USLT":
            tags.add(USLT(encoding=Encoding.UTF8, lang="XXX", desc="", text="\n".join(texts)))
        else:
            tags.add(Frames[spec.id3](encoding=Encoding.UTF8, text=texts))
    if cover is not None:
        tags.add(
            APIC(
                encoding=Encoding.UTF8,
                mime="image/jpeg",
                type=PictureType.COVER_FRONT,
                desc="",
                data=cover,
            )
        )
    # v1=0 removes any ID3v1 tail; one tag, in one place, in ID3v2.4.
    tags.save(_at_start(target), v1=0, v2_version=4, padding=_fixed_padding)


_WRITERS: dict[str, Callable[[Target, TrackMeta, bytes | None], None]] = {
    "flac": _write_flac,
    "m4a": _write_mp4,
    "mp3": _write_mp3,
}


def _oserror_in(exc: BaseException) -> OSError | None:
    """The OSError mutagen wrapped (it re-raises I/O errors as MutagenError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class SourceTag:
    """Where a library file came from, as its own tags say (see `read_source`)."""

    track_id: int
    quality: str


def read_source(target: Target, ext: str) -> SourceTag | None:
    """The TIDAL track id and delivered quality recorded in `target`, or None.

    `target` is an existing library file: hostile input. Anything that is not
    a well-formed file carrying both tags — unreadable, truncated, a foreign
    file, a malformed tag — is None ("not the same file"), never an error.
    """
    try:
        texts = _source_texts(target, ext)
    except Exception:  # mutagen on untrusted bytes raises anything: see write_tags
        return None
    if texts is None:
        return None
    track_id, quality = texts
    if not (track_id.isascii() and track_id.isdigit() and len(track_id) <= 12 and quality):
        return None
    return SourceTag(int(track_id), quality)


def _source_texts(target: Target, ext: str) -> tuple[str, str] | None:
    """The first value of each source tag, as text; None when either is missing."""
    keys = (SOURCE_TRACK_ID, SOURCE_QUALITY)
    if ext == "flac":
        vorbis = FLAC(_at_start(target)).tags
        if not isinstance(vorbis, VCFLACDict):
            return None
        texts = [(vorbis.get(key) or [None])[0] for key in keys]
    elif ext == "m4a":
        atoms = MP4(_at_start(target)).tags
        texts = []
        for key in keys:
            values = atoms.get(_DLQD + key) if atoms is not None else None
            texts.append(bytes(values[0]).decode("utf-8") if values else None)
    elif ext == "mp3":
        frames = ID3(_at_start(target))
        texts = []
        for key in keys:
            frame = frames.get("TXXX:" + key)
            texts.append(str(frame.text[0]) if frame is not None and frame.text else None)
    else:
        return None
    track_id, quality = texts
    if not isinstance(track_id, str) or not isinstance(quality, str):
        return None
    return track_id, quality


def write_tags(target: Target, ext: str, meta: TrackMeta, cover: bytes | None) -> None:
    """Replace every tag in the file `target` with those of `meta` (+ the cover).

    `target` is a path, or the file itself open for reading and writing (how
    finalize hands over a temp file it opened without following links).
    `ext` is what `naming.detect_extension` said. Running out of disk is
    DISK_FULL like anywhere else; any other failure is TAGGING_FAILED.
    """
    name = PurePath(str(target.name)).name
    writer = _WRITERS.get(ext)
    if writer is None:
        raise DlqdError(ErrorCode.UNSUPPORTED_FORMAT, f"cannot tag .{ext} files")
    try:
        writer(target, meta, cover)
    # mutagen parses untrusted bytes and does not promise to raise only
    # MutagenError on a malformed file, so anything it raises is a tagging failure.
    except Exception as exc:
        oserror = _oserror_in(exc)
        if oserror is not None and oserror.errno is not None:
            raise from_oserror(oserror, f"tagging {name}") from exc
        raise DlqdError(
            ErrorCode.TAGGING_FAILED, f"tagging {name}: {type(exc).__name__}: {exc}"
        ) from exc
