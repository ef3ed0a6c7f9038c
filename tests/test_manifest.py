"""Manifest decoding: BTS and DASH plans, refusals, and hostile input."""

from __future__ import annotations

import base64
import contextlib
import json
from decimal import Decimal
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlqd.errors import DlqdError, ErrorCode
from dlqd.manifest import (
    BTS_MIME,
    DASH_MIME,
    MAX_MANIFEST_BYTES,
    MAX_SEGMENTS,
    decode_base64,
    parse_manifest,
    plan_from_playback,
)

TRACK_URL = "http://api.test/track/?id=1&quality=LOSSLESS"


def b64(raw: bytes | str, *, urlsafe: bool = False, pad: bool = True) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    return text if pad else text.rstrip("=")


def bts(**overrides: object) -> str:
    doc = {
        "mimeType": "audio/flac",
        "codecs": "flac",
        "encryptionType": "NONE",
        "urls": ["http://cdn.test/a.flac", "http://cdn2.test/a.flac"],
    }
    doc.update(overrides)
    return b64(json.dumps(doc))


def playback(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "trackId": 1,
        "assetPresentation": "FULL",
        "audioQuality": "LOSSLESS",
        "manifestMimeType": BTS_MIME,
        "manifest": bts(),
        "trackReplayGain": -7.5,
        "trackPeakAmplitude": 0.98,
        "albumReplayGain": None,
    }
    data.update(overrides)
    return data


def mpd(template: str, *, duration: str = "PT12S", base: str = "") -> str:
    return f"""<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" mediaPresentationDuration="{duration}">
  {base}
  <Period><AdaptationSet mimeType="audio/mp4">
    <Representation id="FLAC,0" codecs="flac" bandwidth="1411000">
      {template}
    </Representation>
  </AdaptationSet></Period>
</MPD>"""


def attr(value: str) -> str:
    return escape(value, {'"': "&quot;"})


def expect_code(code: ErrorCode, mime: str, manifest: str) -> DlqdError:
    with pytest.raises(DlqdError) as caught:
        parse_manifest(mime, manifest, manifest_url=TRACK_URL)
    assert caught.value.code == code
    return caught.value


@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("pad", [False, True])
def test_base64_accepts_both_alphabets_with_or_without_padding(urlsafe: bool, pad: bool) -> None:
    raw = bytes(range(256)) + b"\xfb\xff"
    assert decode_base64(b64(raw, urlsafe=urlsafe, pad=pad)) == raw


def test_base64_garbage_is_bad_response() -> None:
    with pytest.raises(DlqdError) as caught:
        decode_base64("not*base64")
    assert caught.value.code == ErrorCode.UPSTREAM_BAD_RESPONSE


def test_bts_manifest_gives_urls_in_order_and_keeps_playback_gains() -> None:
    plan = plan_from_playback(playback(), manifest_url=TRACK_URL)
    assert plan.urls == ("http://cdn.test/a.flac", "http://cdn2.test/a.flac")
    assert plan.segments == ()
    assert plan.mime_type == "audio/flac"
    assert plan.extra["codecs"] == "flac"
    assert plan.extra["track_replay_gain"] == "-7.5"
    assert plan.extra["audio_quality"] == "LOSSLESS"
    assert "album_replay_gain" not in plan.extra


def test_bts_relative_url_resolves_against_the_manifest_url() -> None:
    plan = parse_manifest(BTS_MIME, bts(urls=["/media/1.flac"]), manifest_url=TRACK_URL)
    assert plan.urls == ("http://api.test/media/1.flac",)


def test_preview_is_unsupported() -> None:
    with pytest.raises(DlqdError) as caught:
        plan_from_playback(playback(assetPresentation="PREVIEW"), manifest_url=TRACK_URL)
    assert caught.value.code == ErrorCode.UNSUPPORTED_FORMAT
    assert not caught.value.transient


def test_encrypted_bts_is_unsupported() -> None:
    expect_code(ErrorCode.UNSUPPORTED_FORMAT, BTS_MIME, bts(encryptionType="OLD_AES"))


@pytest.mark.parametrize(
    "manifest",
    [
        b64("not json"),
        b64("[1, 2]"),
        bts(urls=[]),
        bts(urls="http://cdn.test/a.flac"),
        bts(urls=["file:///etc/passwd"]),
        b64(json.dumps({"urls": ["http://cdn.test/a"]})),  # no encryptionType
    ],
)
def test_undecodable_bts_is_bad_response(manifest: str) -> None:
    expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, BTS_MIME, manifest)


def test_unknown_manifest_type_is_unsupported() -> None:
    expect_code(ErrorCode.UNSUPPORTED_FORMAT, "application/x-mpegurl", b64("#EXTM3U"))


def test_dash_timeline_counts_r_plus_one_and_resolves_against_base_url() -> None:
    template = """<SegmentTemplate timescale="44100" initialization="init.mp4"
        media="seg-$Number$.mp4" startNumber="1">
      <SegmentTimeline><S d="176400" r="2"/><S d="88200"/></SegmentTimeline>
    </SegmentTemplate>"""
    manifest = b64(mpd(template, base="<BaseURL>http://cdn.test/flac/</BaseURL>"), urlsafe=True)
    plan = parse_manifest(DASH_MIME, manifest, manifest_url=TRACK_URL)
    assert plan.urls == ()
    assert plan.segments == (
        "http://cdn.test/flac/init.mp4",
        "http://cdn.test/flac/seg-1.mp4",
        "http://cdn.test/flac/seg-2.mp4",
        "http://cdn.test/flac/seg-3.mp4",
        "http://cdn.test/flac/seg-4.mp4",
    )
    assert plan.mime_type == "audio/mp4"
    assert plan.extra["codecs"] == "flac"


def test_dash_without_timeline_uses_ceil_of_duration() -> None:
    # 192.5 s in 4 s segments → 49 segments (48 full + one short).
    template = """<SegmentTemplate timescale="1000" duration="4000" startNumber="0"
        initialization="$RepresentationID$/init.mp4"
        media="$RepresentationID$/$Number%03d$.mp4"/>"""
    plan = parse_manifest(
        DASH_MIME, b64(mpd(template, duration="PT3M12.5S")), manifest_url=TRACK_URL
    )
    assert len(plan.segments) == 1 + 49
    assert plan.segments[0] == "http://api.test/track/FLAC,0/init.mp4"
    assert plan.segments[1] == "http://api.test/track/FLAC,0/000.mp4"
    assert plan.segments[-1] == "http://api.test/track/FLAC,0/048.mp4"


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("PT3M12.5S", Decimal("192.5")), ("PT4.000S", Decimal(4)), ("", None), ("soon", None)],
)
def test_dash_plan_carries_the_presentation_duration_the_file_is_held_to(
    duration: str, seconds: Decimal | None
) -> None:
    template = """<SegmentTemplate timescale="44100" initialization="init.mp4"
        media="seg-$Number$.mp4"><SegmentTimeline><S d="176400"/></SegmentTimeline>
    </SegmentTemplate>"""
    plan = parse_manifest(DASH_MIME, b64(mpd(template, duration=duration)), manifest_url=TRACK_URL)
    assert plan.presentation_s == seconds  # unreadable with a timeline: not checked, not refused
    assert len(plan.segments) == 2


def test_dash_relative_base_url_resolves_against_manifest_url() -> None:
    template = '<SegmentTemplate duration="1" initialization="i" media="$Number$"/>'
    plan = parse_manifest(
        DASH_MIME,
        b64(mpd(template, duration="PT2S", base="<BaseURL>/cdn/x/</BaseURL>")),
        manifest_url=TRACK_URL,
    )
    assert plan.segments == (
        "http://api.test/cdn/x/i",
        "http://api.test/cdn/x/1",
        "http://api.test/cdn/x/2",
    )


def test_dash_segment_count_is_capped() -> None:
    template = f"""<SegmentTemplate initialization="i" media="$Number$">
      <SegmentTimeline><S d="1" r="{MAX_SEGMENTS}"/></SegmentTimeline></SegmentTemplate>"""
    error = expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, DASH_MIME, b64(mpd(template)))
    assert "segments" in error.message


@pytest.mark.parametrize("padding", ["whitespace", "segments"])
def test_a_manifest_over_its_size_cap_is_refused_before_it_is_parsed(padding: str) -> None:
    # Under the 16 MiB body cap, yet as an XML tree it would cost ~30x its size.
    template = """<SegmentTemplate initialization="i" media="$Number$"><SegmentTimeline>
      FILL</SegmentTimeline></SegmentTemplate>"""
    entry = " " if padding == "whitespace" else '<S d="1"/>'
    fill = entry * (MAX_MANIFEST_BYTES // len(entry) + 1)
    error = expect_code(
        ErrorCode.UPSTREAM_BAD_RESPONSE, DASH_MIME, b64(mpd(template.replace("FILL", fill)))
    )
    assert f"larger than {MAX_MANIFEST_BYTES} bytes" in error.message


def test_dash_huge_duration_is_capped() -> None:
    template = '<SegmentTemplate duration="1" initialization="i" media="$Number$"/>'
    manifest = b64(mpd(template, duration="PT99999999999S"))
    expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, DASH_MIME, manifest)


def test_dash_content_protection_is_unsupported() -> None:
    template = """<ContentProtection schemeIdUri="urn:mpeg:dash:mp4protection:2011"/>
      <SegmentTemplate duration="1" initialization="i" media="$Number$"/>"""
    expect_code(ErrorCode.UNSUPPORTED_FORMAT, DASH_MIME, b64(mpd(template)))


def test_dash_entity_expansion_is_refused() -> None:
    bomb = """<?xml version="1.0"?>
<!DOCTYPE lol [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<MPD>&lol2;</MPD>"""
    expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, DASH_MIME, b64(bomb))


@pytest.mark.parametrize(
    "template",
    [
        '<SegmentTemplate duration="1" media="$Number$"/>',  # no initialization
        '<SegmentTemplate initialization="i" media="$Number$"/>',  # no duration, no timeline
        '<SegmentTemplate duration="0" initialization="i" media="$Number$"/>',
        '<SegmentTemplate duration="x" initialization="i" media="$Number$"/>',
        '<SegmentTemplate duration="1" initialization="i" media="$Time$"/>',
        '<SegmentTemplate duration="1" initialization="$Number$" media="$Number$"/>',
        """<SegmentTemplate initialization="i" media="$Number$">
           <SegmentTimeline><S d="1" r="-1"/></SegmentTimeline></SegmentTemplate>""",
        "",
    ],
)
def test_dash_broken_templates_are_bad_response(template: str) -> None:
    expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, DASH_MIME, b64(mpd(template)))


@pytest.mark.parametrize("duration", ["", "3 minutes", "P", "PT", "-PT1S"])
def test_dash_bad_duration_is_bad_response(duration: str) -> None:
    template = '<SegmentTemplate duration="1" initialization="i" media="$Number$"/>'
    expect_code(ErrorCode.UPSTREAM_BAD_RESPONSE, DASH_MIME, b64(mpd(template, duration=duration)))


@settings(max_examples=300, deadline=None)
@given(
    mime=st.sampled_from([BTS_MIME, DASH_MIME]),
    raw=st.binary(max_size=512),
    encode=st.booleans(),
)
def test_arbitrary_bytes_never_raise_anything_but_dlqd_error(
    mime: str, raw: bytes, encode: bool
) -> None:
    manifest = b64(raw) if encode else raw.decode("latin-1")
    with contextlib.suppress(DlqdError):
        parse_manifest(mime, manifest, manifest_url=TRACK_URL)


@settings(max_examples=200, deadline=None)
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )
    | st.fixed_dictionaries(
        {"encryptionType": st.sampled_from(["NONE", "X", 1]), "urls": st.lists(st.text())}
    )
)
def test_arbitrary_bts_json_never_raises_anything_but_dlqd_error(body: object) -> None:
    with contextlib.suppress(DlqdError):
        parse_manifest(BTS_MIME, b64(json.dumps(body)), manifest_url=TRACK_URL)


@settings(max_examples=200, deadline=None)
@given(
    attrs=st.dictionaries(
        st.sampled_from(["duration", "timescale", "startNumber", "initialization", "media"]),
        st.text(max_size=12),
    ),
    duration=st.text(max_size=16),
)
def test_arbitrary_template_attributes_never_raise_anything_but_dlqd_error(
    attrs: dict[str, str], duration: str
) -> None:
    rendered = " ".join(f'{k}="{attr(v)}"' for k, v in attrs.items())
    manifest = b64(mpd(f"<SegmentTemplate {rendered}/>", duration=attr(duration)))
    with contextlib.suppress(DlqdError):
        parse_manifest(DASH_MIME, manifest, manifest_url=TRACK_URL)
