"""Playback info and its base64 manifest → a `MediaPlan` (DESIGN §6).

Owns: decoding the untrusted manifest (BTS JSON or DASH MPD), resolving its
URLs, and refusing previews and encrypted streams. The playback info and the
BTS JSON are checked into records by `upstream_schema` first. Pure: never does
I/O, never raises anything but `DlqdError` whatever bytes it is given, and
quotes upstream values in messages with `quote` (URLs without their query).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from dlqd.errors import DlqdError, ErrorCode, redact_url
from dlqd.meta import MediaPlan
from dlqd.upstream_schema import BtsManifest, PlaybackInfo, parse, quote

BTS_MIME = "application/vnd.tidal.bts"
DASH_MIME = "application/dash+xml"

# An MPD asking for more segments than this is hostile or broken: a 2-hour
# track in 4-second segments is ~1,800.
MAX_SEGMENTS = 5000
# Real manifests are a few KiB (a SegmentTimeline compresses repeats with r=).
# The XML tree costs ~30x its text in memory, so the decoded manifest is capped
# well below the metadata body cap: a 12 MB MPD peaked the daemon at +412 MiB.
MAX_MANIFEST_BYTES = 1024 * 1024

_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)
_TEMPLATE_VAR = re.compile(r"\$(Number|RepresentationID|Bandwidth)(%0(\d{1,2})d)?\$|\$\$")


def _bad(message: str) -> DlqdError:
    return DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"manifest: {message}")


def _unsupported(message: str) -> DlqdError:
    return DlqdError(ErrorCode.UNSUPPORTED_FORMAT, message)


def plan_from_playback(playback: Mapping[str, Any], *, manifest_url: str) -> MediaPlan:
    """Build the plan from `/track/` data; `manifest_url` is where it was fetched.

    The playback info's checked gains, quality and format go into `plan.extra`
    (as strings) when present, so the caller can tag with the gains of the
    stream it actually fetched.
    """
    info = parse(PlaybackInfo, playback, "/track/ playback info")
    if info.asset_presentation != "FULL":
        raise _unsupported(
            f"asset presentation is {quote(info.asset_presentation)}, not FULL (a preview?)"
        )
    plan = parse_manifest(info.manifest_mime_type, info.manifest, manifest_url=manifest_url)
    shown = {
        "audio_quality": info.audio_quality,
        "bit_depth": info.bit_depth,
        "sample_rate": info.sample_rate,
        "track_replay_gain": info.track_replay_gain,
        "track_peak": info.track_peak,
        "album_replay_gain": info.album_replay_gain,
        "album_peak": info.album_peak,
    }
    plan.extra.update({key: str(value) for key, value in shown.items() if value is not None})
    return plan


def parse_manifest(mime_type: str, manifest_b64: str, *, manifest_url: str) -> MediaPlan:
    """Decode a base64 manifest of either kind into a plan with absolute URLs."""
    if len(manifest_b64) > MAX_MANIFEST_BYTES * 4 // 3 + 4096:  # before decoding it
        raise _bad(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    raw = decode_base64(manifest_b64)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _bad(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    if mime_type == BTS_MIME:
        return _parse_bts(raw, manifest_url)
    if mime_type == DASH_MIME:
        return _parse_dash(raw, manifest_url)
    raise _unsupported(f"manifest type {quote(mime_type)} is not supported")


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe alphabet, padding optional, whitespace ignored."""
    compact = "".join(text.split()).rstrip("=")
    if len(compact) % 4 == 1:
        raise _bad("base64 has an impossible length")
    padded = compact + "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(padded.translate(str.maketrans("-_", "+/")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"not base64: {exc}") from None


def _parse_bts(raw: bytes, manifest_url: str) -> MediaPlan:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise _bad("BTS manifest is not JSON") from None
    bts = parse(BtsManifest, doc, "manifest: BTS")
    if bts.encryption_type != "NONE":
        raise _unsupported(f"encrypted stream ({quote(bts.encryption_type)}) is not supported")
    plan = MediaPlan(
        mime_type=bts.mime_type,
        urls=tuple(_absolute(manifest_url, url) for url in bts.urls),
    )
    if bts.codecs is not None:
        plan.extra["codecs"] = bts.codecs
    return plan


def _absolute(base: str, ref: str) -> str:
    """Resolve `ref` against `base`; only http(s) results are acceptable."""
    try:
        url = urljoin(base, ref.strip())
        scheme = urlsplit(url).scheme
    except ValueError:
        raise _bad("a URL in the manifest cannot be parsed") from None
    if scheme not in ("http", "https"):
        raise _bad(f"URL {quote(redact_url(url))} is not http(s)")
    return url


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(parent: Element, name: str) -> Element | None:
    return next(_children(parent, name), None)


def _children(parent: Element, name: str) -> Iterator[Element]:
    return (el for el in parent if isinstance(el.tag, str) and _local(el.tag) == name)


def _with_base(base: str, element: Element) -> str:
    """Apply an element's own `<BaseURL>` (if any) on top of the inherited base."""
    base_el = _child(element, "BaseURL")
    if base_el is None or not (base_el.text or "").strip():
        return base
    return _absolute(base, (base_el.text or "").strip())


def _int_attr(element: Element, name: str, default: int | None) -> int:
    value = element.get(name)
    if value is None:
        if default is None:
            raise _bad(f"<{_local(element.tag)}> lacks {name}")
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise _bad(f"{name}={quote(value)} is not an integer") from None
    if number < 0:
        raise _bad(f"{name}={number} is negative")
    return number


def _parse_dash(raw: bytes, manifest_url: str) -> MediaPlan:
    try:
        mpd = SafeET.fromstring(raw)
    except (ParseError, DefusedXmlException, ValueError, RecursionError) as exc:
        raise _bad(f"MPD is not well-formed XML: {type(exc).__name__}") from None
    if _local(mpd.tag) != "MPD":
        raise _bad("root element is not <MPD>")
    period = _child(mpd, "Period")
    adaptation = _child(period, "AdaptationSet") if period is not None else None
    representation = _child(adaptation, "Representation") if adaptation is not None else None
    if period is None or adaptation is None or representation is None:
        raise _bad("MPD has no Period/AdaptationSet/Representation")
    if any(True for el in mpd.iter() if _local(str(el.tag)) == "ContentProtection"):
        raise _unsupported("encrypted DASH stream is not supported")

    base = manifest_url
    for element in (mpd, period, adaptation, representation):
        base = _with_base(base, element)
    # Not `or`: an Element without children is falsy.
    template = _child(representation, "SegmentTemplate")
    if template is None:
        template = _child(adaptation, "SegmentTemplate")
    if template is None:
        raise _bad("MPD has no SegmentTemplate")
    init = template.get("initialization")
    media = template.get("media")
    if not init or not media:
        raise _bad("SegmentTemplate lacks initialization or media")

    start = _int_attr(template, "startNumber", 1)
    count = _segment_count(mpd, template)
    variables = {
        "RepresentationID": representation.get("id", ""),
        "Bandwidth": representation.get("bandwidth", ""),
    }
    segments = [_absolute(base, _expand(init, variables, None))]
    segments.extend(
        _absolute(base, _expand(media, variables, number)) for number in range(start, start + count)
    )
    mime = representation.get("mimeType") or adaptation.get("mimeType") or ""
    plan = MediaPlan(mime_type=mime, segments=tuple(segments), presentation_s=_presentation_s(mpd))
    codecs = representation.get("codecs") or adaptation.get("codecs")
    if codecs:
        plan.extra["codecs"] = codecs
    return plan


def _segment_count(mpd: Element, template: Element) -> int:
    """Sum of r+1 over the timeline, else ceil(duration × timescale / segment duration)."""
    timeline = _child(template, "SegmentTimeline")
    if timeline is not None:
        count = 0
        for entry in _children(timeline, "S"):
            repeat = entry.get("r", "0").strip()
            if not re.fullmatch(r"\d{1,9}", repeat):
                raise _bad(f"unsupported segment repeat r={quote(repeat)}")
            count += int(repeat) + 1
            if count > MAX_SEGMENTS:
                raise _bad(f"more than {MAX_SEGMENTS} segments")
        if count == 0:
            raise _bad("empty SegmentTimeline")
        return count
    timescale = _int_attr(template, "timescale", 1)
    segment_duration = _int_attr(template, "duration", None)
    if timescale == 0 or segment_duration == 0:
        raise _bad("zero timescale or segment duration")
    total_seconds = _iso_duration(mpd.get("mediaPresentationDuration"))
    count = math.ceil(total_seconds * timescale / segment_duration)
    if count > MAX_SEGMENTS:
        raise _bad(f"more than {MAX_SEGMENTS} segments")
    if count <= 0:
        raise _bad("zero-length presentation")
    return count


def _presentation_s(mpd: Element) -> Decimal | None:
    """The MPD's `mediaPresentationDuration` in seconds; None when absent or unreadable.

    A segment list missing its end is still a well-formed list: only this
    total tells. A timeline MPD does not need it, so one that cannot be read
    is not a reason to refuse the manifest; the file is then checked without it.
    """
    try:
        seconds = _iso_duration(mpd.get("mediaPresentationDuration"))
    except DlqdError:
        return None
    return seconds if seconds > 0 else None


def _iso_duration(value: str | None) -> Decimal:
    """Seconds in an ISO 8601 duration such as "PT3M12.5S" (days at most)."""
    match = _ISO_DURATION.fullmatch((value or "").strip())
    if not match or not any(match.groupdict().values()):
        raise _bad(f"mediaPresentationDuration {quote(value)} is not an ISO 8601 duration")
    try:
        parts = {k: Decimal(v) if v else Decimal(0) for k, v in match.groupdict().items()}
    except InvalidOperation:
        raise _bad("unreadable mediaPresentationDuration") from None
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def _expand(template: str, variables: Mapping[str, str], number: int | None) -> str:
    """Fill `$Number$` (optionally `%0Nd`), `$RepresentationID$`, `$Bandwidth$`, `$$`."""

    if "$" in _TEMPLATE_VAR.sub("", template):
        # An identifier we do not know ($Time$ …) would give a wrong URL.
        raise _bad(f"unsupported template {quote(template)}")

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name == "Number":
            if number is None:
                raise _bad("$Number$ in the initialization URL")
            return f"{number:0{int(match.group(3) or 0)}d}"
        return variables[name]

    return _TEMPLATE_VAR.sub(substitute, template)
