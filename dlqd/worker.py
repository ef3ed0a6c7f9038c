"""The work of one job: resolve its metadata, fetch and finalize each track, then its last step.

Owns the retry policy (jittered backoff from `backoff_s`, `Retry-After` when
longer but never past `max_retry_after_s`, `max_retries` per track), the
deadline on resolving a job's metadata (a playlist's or mix's: its listing and
each of its albums once), the disk-space preflight, the integrity check of
each finished download, the temp-file lifecycle in `library/.dlqd-tmp/`, the
per-album cover cache, a playlist's or mix's M3U8 once its tracks are done
(`before_finish`), and turning a full disk or a library that is gone into a
hold of the whole queue (`QueueHeld`, via `LibraryWatch`) instead of a failed
track. It never writes into the library itself — finalize does
(`finalize_track`, `write_playlist`) — and never journals: it reports to the
scheduler through `TrackRun` and its return values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog
import trio

from dlqd.config import FilesConfig
from dlqd.errors import DlqdError, ErrorCode, redact_url
from dlqd.fetch import (
    MIB,
    MediaNotFoundError,
    TokenBucket,
    fetch_to_file,
    sidecar_path,
)
from dlqd.finalize import (
    TMP_DIRNAME,
    Candidate,
    finalize_track,
    skip_before_fetch,
    tmp_dir,
    write_playlist,
)
from dlqd.holds import HoldReason, QueueHeld
from dlqd.integrity import check_media_integrity
from dlqd.library_watch import LibraryWatch
from dlqd.m3u8 import PlaylistEntry, source_line_value
from dlqd.meta import AlbumMeta, Lyrics, MediaPlan, TrackMeta
from dlqd.model import LISTING_TYPES, Job, TrackStatus
from dlqd.safefs import UnsafePathError, unlink_beneath
from dlqd.scheduler import ResolvedJob, TrackResult, TrackRun, UnavailableTrack
from dlqd.source import Discography, Listing, Source, TrackRef, with_playback_gains

log = structlog.get_logger("dlqd.worker")
T = TypeVar("T")
COVER_CACHE_SIZE = 8  # albums whose tracks are running at once, with room to spare
LISTING_ALBUM_READS = 4  # albums of one playlist or mix read at once while resolving it
VARIOUS_ARTISTS = "Various artists"  # a playlist's or mix's artist when its tracks have several
# The containers each asked quality can arrive in (before the playback info says which).
_EXTENSIONS_FOR = {"LOW": ("m4a",), "HIGH": ("m4a",), "LOSSLESS": ("flac", "m4a")}
_ALL_EXTENSIONS = ("flac", "m4a", "mp3")
_EXTENSION_OF_MIME = {"audio/flac": "flac", "audio/mp4": "m4a", "audio/mpeg": "mp3"}


def backoff_delay(
    retry_number: int,
    schedule: Sequence[float],
    retry_after: float | None,
    rng: Callable[[], float] = random.random,
    *,
    max_retry_after_s: float = math.inf,
) -> float:
    """Seconds to wait before retry `retry_number` (0-based).

    The schedule's entry (its last one once retries outrun it), jittered to
    between 50% and 150% so many failing tracks do not retry in lockstep; the
    upstream's Retry-After wins when it asks for longer, up to
    `max_retry_after_s` (the one place every honoured Retry-After is capped).
    """
    base = schedule[min(retry_number, len(schedule) - 1)]
    delay = base * (0.5 + rng())
    return max(delay, min(retry_after or 0.0, max_retry_after_s))


def temp_name(job_id: str, track_id: int) -> str:
    """A track's partial file name: stable across restarts so a download can resume."""
    return f"{job_id}-{track_id}.part"


@dataclass
class RetryPolicy:
    max_retries: int
    backoff_s: tuple[float, ...]
    max_retry_after_s: float = math.inf  # the daemon passes upstream.max_retry_after_s
    sleep: Callable[[float], Awaitable[None]] = trio.sleep
    rng: Callable[[], float] = random.random
    on_retry: Callable[[str], None] = lambda error_code: None  # metrics: retries by code

    async def run(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        on_attempt: Callable[[], None] = lambda: None,
        what: str = "",
    ) -> T:
        """Call `attempt` until it succeeds, fails permanently or runs out of retries."""
        for retry_number in range(self.max_retries + 1):
            on_attempt()
            try:
                return await attempt()
            except DlqdError as exc:
                if not exc.transient or retry_number == self.max_retries:
                    raise
                delay = backoff_delay(
                    retry_number,
                    self.backoff_s,
                    exc.retry_after,
                    self.rng,
                    max_retry_after_s=self.max_retry_after_s,
                )
                log.info("retrying", what=what, error_code=str(exc.code), delay_s=round(delay, 3))
                self.on_retry(str(exc.code))
                await self.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


class DownloadWork:
    """The scheduler's `JobWork`: real downloads from the upstream into the library."""

    def __init__(
        self,
        source: Source,
        *,
        library: Path,
        files: FilesConfig,
        retry: RetryPolicy,
        read_timeout_s: float,
        watch: LibraryWatch,
        resolve_timeout_s: float = math.inf,
        bandwidth_limit_kbps: int = 0,
        max_track_mb: int = 4096,
    ):
        self.source = source
        self.library = library
        self.watch = watch
        self.files = files
        self.retry = retry
        self.read_timeout_s = read_timeout_s
        self.resolve_timeout_s = resolve_timeout_s
        self.bandwidth_limit_kbps = bandwidth_limit_kbps
        self._bandwidth: TokenBucket | None = None  # one for all transfers, made in trio
        self.free_space = watch.floor  # `limits.min_free_mb` while writing (the watch: before)
        self.max_track_bytes = max_track_mb * MIB
        self.keep_partials = False  # set while draining: a restart resumes them
        self._covers: OrderedDict[str, bytes | None] = OrderedDict()

    async def resolve(self, job: Job) -> ResolvedJob:
        """The job's metadata, every page and retry within `resolve_timeout_s`, else TIMEOUT.

        The scheduler calls this before the job takes any track slot, so a
        slow or hanging upstream holds up only this job's start.
        """
        return await self._within_resolve_timeout(job, self._resolve(job))

    async def discography(self, job: Job) -> Discography:
        """An artist job's releases, with retries, within `resolve_timeout_s`, else TIMEOUT."""
        artist = self.retry.run(
            lambda: self.source.artist(job.target_number), what=f"artist {job.target_id}"
        )
        return await self._within_resolve_timeout(job, artist)

    async def _within_resolve_timeout(self, job: Job, reading: Awaitable[T]) -> T:
        with trio.move_on_after(self.resolve_timeout_s):
            return await reading
        raise DlqdError(
            ErrorCode.TIMEOUT,
            f"{job.type} {job.target_id}: metadata not resolved within "
            f"upstream.resolve_timeout_s = {self.resolve_timeout_s:g} s",
        )

    async def _resolve(self, job: Job) -> ResolvedJob:
        if job.type in LISTING_TYPES:
            return await self._resolve_listing(job)
        if job.type == "album":
            album = await self.retry.run(
                lambda: self.source.album(job.target_number), what=f"album {job.target_id}"
            )
            if not album.tracks:
                raise DlqdError(
                    ErrorCode.UPSTREAM_BAD_RESPONSE, f"album {job.target_id} lists no tracks"
                )
            return ResolvedJob(album.title, album.artist, _asked(album.tracks, job.quality))
        meta = await self.retry.run(
            lambda: self.source.track_meta(job.target_number), what=f"track {job.target_id}"
        )
        return ResolvedJob(meta.display_title, meta.display_artist, _asked((meta,), job.quality))

    async def _resolve_listing(self, job: Job) -> ResolvedJob:
        """A playlist or mix: its tracks in order, each as its own album's job would have it.

        Every album the listing touches is read once (a few at a time), and
        each track takes its TrackMeta from its album's listing: same folder,
        disc prefix, totals, album artist and cover as an album job gives it.
        A track its album does not list, or whose album the upstream does not
        have (404), falls back to the track's own metadata; a track the
        upstream does not have either is an `UnavailableTrack`, which fails
        alone. Any other failure (a 5xx, a timeout) fails the resolve as a whole.
        """
        target = str(job.target_id)
        read: Callable[[str], Awaitable[Listing]] = (
            self.source.playlist if job.type == "playlist" else self.source.mix
        )
        listing = await self.retry.run(lambda: read(target), what=f"{job.type} {target}")
        if not listing.refs:
            raise DlqdError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"{job.type} {target} lists no tracks")
        albums = await self._albums({ref.album_id: None for ref in listing.refs})
        by_track = {meta.track_id: meta for album in albums.values() for meta in album.tracks}
        listed: list[TrackMeta | UnavailableTrack] = []
        for ref in listing.refs:
            found = by_track.get(ref.track_id) or await self._listed_track_meta(ref)
            if isinstance(found, TrackMeta):  # as asked: the job's quality until fetched
                found = dataclasses.replace(found, quality=job.quality)
            listed.append(found)
        metas = [meta for meta in listed if isinstance(meta, TrackMeta)]
        return ResolvedJob(listing.title, _listing_artist(metas), tuple(listed))

    async def _listed_track_meta(self, ref: TrackRef) -> TrackMeta | UnavailableTrack:
        """A listed track's own metadata; what the listing says of it when the upstream has none."""
        try:
            return await self.retry.run(
                lambda: self.source.track_meta(ref.track_id, alone_if_album_gone=True),
                what=f"track {ref.track_id}",
            )
        except DlqdError as exc:
            if exc.code != ErrorCode.UPSTREAM_NOT_FOUND:
                raise
            log.warning("listed track not available upstream", track_id=ref.track_id)
            error = {
                "code": str(exc.code),
                "message": f"track {ref.track_id} is not available upstream: {exc.message}",
            }
            return UnavailableTrack(ref.track_id, ref.title, ref.duration, error)

    async def _albums(self, album_ids: Iterable[int]) -> dict[int, AlbumMeta]:
        """Each album read once, `LISTING_ALBUM_READS` at a time; the first failure is raised.

        An album the upstream does not have (404) is left out: its tracks are
        looked up one by one.
        """
        albums: dict[int, AlbumMeta] = {}
        failures: list[DlqdError] = []
        limiter = trio.CapacityLimiter(LISTING_ALBUM_READS)

        async def read_album(album_id: int, cancel_scope: trio.CancelScope) -> None:
            async with limiter:
                try:
                    albums[album_id] = await self.retry.run(
                        lambda: self.source.album(album_id), what=f"album {album_id}"
                    )
                except DlqdError as exc:
                    if exc.code == ErrorCode.UPSTREAM_NOT_FOUND:
                        log.warning("listed album not available upstream", album_id=album_id)
                        return
                    failures.append(exc)
                    cancel_scope.cancel()  # the job cannot resolve: stop reading the others

        async with trio.open_nursery() as nursery:
            for album_id in album_ids:
                nursery.start_soon(read_album, album_id, nursery.cancel_scope)
        if failures:
            raise failures[0]
        return albums

    async def before_finish(self, job: Job, metas: Mapping[int, TrackMeta]) -> str | None:
        """A playlist's or mix's M3U8, written once every track has an outcome; else nothing.

        Returns the file's library-relative path (None: no file, no track to list).

        Lists the tracks whose file is in the library, in the listing's order
        (`metas` gives their artists). A library or disk that cannot take the
        file raises `QueueHeld`: the job waits for the hold to end instead of
        finishing without its playlist. Other failures raise DlqdError.
        """
        if job.type not in LISTING_TYPES:
            return None
        entries = []
        for track in job.tracks:
            if track.status == TrackStatus.COMPLETED and track.path:
                meta = metas.get(track.track_id)
                artist = meta.display_artist if meta is not None else ""
                entries.append(PlaylistEntry(track.path, track.duration, artist, track.title))
        source = source_line_value(job.type, job.target_id)
        try:
            await self._preflight()
            # Abandoned when the job is stopped: a write stuck on a dead share must not
            # hold up a cancel or a shutdown (a restart writes the file again).
            path = await trio.to_thread.run_sync(
                write_playlist,
                self.library,
                self.files.playlist_dir,
                job.title,
                source,
                entries,
                abandon_on_cancel=True,
            )
        except DlqdError as exc:
            held = await self._library_hold(exc, keep_partial=False)
            if held is None:
                raise
            raise held from exc
        if path is None:
            log.info("no playlist file: none of its tracks is in the library", job_id=job.id)
        else:
            log.info("playlist file written", job_id=job.id, path=path, tracks=len(entries))
        return path

    async def run_track(self, run: TrackRun) -> TrackResult:
        temp = self.library / TMP_DIRNAME / temp_name(run.job_id, run.track.track_id)
        finished = False
        held: QueueHeld | None = None
        try:
            result = await self.retry.run(
                lambda: self._one_try(run, temp),
                on_attempt=run.attempt_started,
                what=f"track {run.track.track_id}",
            )
            finished = True
            return result
        except QueueHeld as exc:
            held = exc
            raise
        finally:
            # A hold this track raised itself knows whether its partial is intact;
            # otherwise the scheduler says so (`keep_partial`) when it stopped the track.
            keep = self.keep_partials or (run.keep_partial if held is None else held.keep_partial)
            if not finished and not keep:
                _remove(temp)
            if finished or not keep:
                _remove(sidecar_path(temp))

    async def _one_try(self, run: TrackRun, temp: Path) -> TrackResult:
        self.source.check_open()  # nothing goes upstream while the upstream holds the queue
        resumable = True  # until the plan says otherwise: a partial left so far is a prefix
        try:
            await self._preflight()
            # A file recorded as this track at the asked quality: not even the playback info.
            skipped = await self._skip_before_fetch(run, temp, _asked_candidates(run.quality))
            if skipped is not None:
                return dataclasses.replace(skipped, quality=run.quality)
            plan = await self.source.media_plan(run.track.track_id, run.quality)
            # The playback info says what a download would deliver: no media request for it.
            skipped = await self._skip_before_fetch(run, temp, _planned_candidates(plan, run))
            if skipped is not None:
                quality, bit_depth, sample_rate = _delivered(plan)
                return dataclasses.replace(
                    skipped,
                    quality=quality or run.quality,
                    bit_depth=bit_depth,
                    sample_rate=sample_rate,
                )
            resumable = not plan.segments  # DASH is written from scratch on every try
            try:
                fetched = await self._fetch(plan, temp, run)
            except MediaNotFoundError:
                # Signed media URLs expire: one fresh manifest, inside the same try.
                plan = await self.source.media_plan(run.track.track_id, run.quality)
                resumable = not plan.segments
                fetched = await self._fetch(plan, temp, run)
            # A lying Content-Length (or segment list) passes every check of the
            # transfer: ask the file, and hold it to the duration the manifest announced.
            await trio.to_thread.run_sync(check_media_integrity, temp, plan.presentation_s)
            # Tagging rewrites the temp file in place: from here on its size says nothing
            # about the upstream file, so a crash must not leave validators to resume from.
            await trio.to_thread.run_sync(_remove, sidecar_path(temp))
        except DlqdError as exc:
            # Cut by the floor or by ENOSPC while appending: an intact prefix to resume.
            held = await self._library_hold(exc, keep_partial=resumable)
            if held is None:
                raise
            raise held from exc
        quality, bit_depth, sample_rate = _delivered(plan)
        meta = with_playback_gains(run.meta, plan)
        if quality is not None:  # `{quality}` in names: what the file holds
            meta = dataclasses.replace(meta, quality=quality)
        cover = await self._cover(meta)
        lyrics = await self._lyrics(meta.track_id)
        synced = ""
        if lyrics is not None:
            if self.files.lyrics in ("embed", "both"):
                meta = dataclasses.replace(meta, lyrics=lyrics.text)
            if self.files.lyrics in ("lrc", "both"):
                synced = lyrics.synced
        try:
            final = await trio.to_thread.run_sync(
                finalize_track, temp, meta, cover, self.library, self.files, run.names, synced
            )
        except DlqdError as exc:
            # Finalize tagged (and may have moved) the bytes: nothing intact is left to keep.
            held = await self._library_hold(exc, keep_partial=False)
            if held is None:
                raise
            raise held from exc
        return TrackResult(
            path=final.path,
            outcome=final.outcome,
            bytes=fetched,
            quality=quality,
            bit_depth=bit_depth,
            sample_rate=sample_rate,
        )

    async def _skip_before_fetch(
        self, run: TrackRun, temp: Path, candidates: Sequence[Candidate]
    ) -> TrackResult | None:
        """The result of a track already in the library (finalize decides), or None."""
        skipped = await trio.to_thread.run_sync(
            skip_before_fetch, run.meta, candidates, self.library, self.files, run.names
        )
        if skipped is None:
            return None
        await trio.to_thread.run_sync(_remove, temp)  # a partial of an earlier try: not needed
        return TrackResult(path=skipped.path, outcome=skipped.outcome, bytes=0)

    async def _preflight(self) -> None:
        """The library takes files, its disk has room, the temp folder is a real folder.

        Checked before every try, so an unmounted share or a full disk holds
        the queue before any byte is fetched, let alone written.
        """
        hold = await self.watch.check_now()
        if hold is not None:
            raise QueueHeld(hold.reason, hold.detail)
        await trio.to_thread.run_sync(tmp_dir, self.library)

    async def _library_hold(self, exc: DlqdError, *, keep_partial: bool) -> QueueHeld | None:
        """The hold a library or disk fault starts, or None when it is this track's own failure.

        DISK_FULL always holds the queue. FILESYSTEM_ERROR does only when a
        check finds the library itself unusable (gone, no longer mounted,
        read-only) or its disk without room: a link planted below the library
        fails just the track that meets it.
        """
        if isinstance(exc, QueueHeld):
            return None
        if exc.code == ErrorCode.DISK_FULL:
            self.watch.disk_full(exc.message)
            return QueueHeld(HoldReason.DISK_FULL, exc.message, keep_partial=keep_partial)
        if exc.code == ErrorCode.FILESYSTEM_ERROR:
            hold = await self.watch.check_now()
            if hold is not None:
                return QueueHeld(hold.reason, hold.detail, keep_partial=keep_partial)
        return None

    async def _fetch(self, plan: MediaPlan, temp: Path, run: TrackRun) -> int:
        try:
            result = await fetch_to_file(
                self.source.media,
                plan,
                temp,
                progress=run.progress,
                read_timeout_s=self.read_timeout_s,
                bandwidth=self._shared_bandwidth(),
                max_bytes=self.max_track_bytes,
                floor=self.free_space,
            )
        except DlqdError as exc:
            if exc.code == ErrorCode.UPSTREAM_RATE_LIMITED:  # a 429 holds the whole upstream
                raise self.source.rate_limited(exc) from exc
            raise
        return result.total

    def _shared_bandwidth(self) -> TokenBucket | None:
        """The daemon-wide limit: every running track draws from the same bucket."""
        if self._bandwidth is None:
            self._bandwidth = TokenBucket.for_kbps(self.bandwidth_limit_kbps)
        return self._bandwidth

    async def _cover(self, meta: TrackMeta) -> bytes | None:
        """The album's cover, fetched once per album; a cover problem never fails a track.

        A transient failure is retried on the track's backoff schedule (not a
        long Retry-After: the track waits for its cover). One that lasts
        leaves the track without art, and the album's next track asks again.
        """
        if self.files.cover == "none" or not meta.cover_url:
            return None
        url = meta.cover_url
        if url in self._covers:
            self._covers.move_to_end(url)
            return self._covers[url]
        retry = dataclasses.replace(self.retry, max_retry_after_s=0.0)
        try:
            cover = await retry.run(lambda: self.source.cover(url), what="cover")
        except DlqdError as exc:
            log.warning("cover unavailable", url=redact_url(url), error_code=str(exc.code))
            return None
        self._covers[url] = cover
        if len(self._covers) > COVER_CACHE_SIZE:
            self._covers.popitem(last=False)
        return cover

    async def _lyrics(self, track_id: int) -> Lyrics | None:
        """The track's lyrics as `files.lyrics` wants them; a lyrics problem never fails a track.

        None when the setting is `none`, the track has none (404), or the
        request fails: one try, not retried, so a broken lyrics route never
        delays a track by a backoff schedule; the failure is logged.
        """
        if self.files.lyrics == "none":
            return None
        try:
            return await self.source.lyrics(track_id)
        except DlqdError as exc:
            log.warning("lyrics unavailable", track_id=track_id, error_code=str(exc.code))
            return None


def _listing_artist(tracks: Sequence[TrackMeta]) -> str:
    """The main artist all of a playlist's tracks share, else "Various artists"."""
    main_artists = {meta.artists[0] if meta.artists else "" for meta in tracks}
    return main_artists.pop() if len(main_artists) == 1 else VARIOUS_ARTISTS


def _asked(tracks: tuple[TrackMeta, ...], quality: str) -> tuple[TrackMeta, ...]:
    """The job's tracks as asked: until a track is fetched, its quality is the job's."""
    return tuple(dataclasses.replace(meta, quality=quality) for meta in tracks)


def _asked_candidates(quality: str) -> tuple[Candidate, ...]:
    """Names a track asked at `quality` may have: that quality, in each container it comes in."""
    return tuple(Candidate(quality, ext) for ext in _EXTENSIONS_FOR.get(quality, _ALL_EXTENSIONS))


def _planned_candidates(plan: MediaPlan, run: TrackRun) -> tuple[Candidate, ...]:
    """The name the planned download will take, when the manifest's MIME type tells its container.

    The extension finalize gives comes from the bytes; the manifest's type
    predicts it (DASH and AAC are MP4, BTS FLAC is FLAC). When it does not,
    every container is a candidate, and only a file tagged as this very track
    is skipped.
    """
    quality = _delivered(plan)[0] or run.quality
    ext = _EXTENSION_OF_MIME.get(plan.mime_type.split(";")[0].strip().lower())
    if ext is not None:
        return (Candidate(quality, ext, certain=True),)
    return tuple(Candidate(quality, other) for other in _ALL_EXTENSIONS)


def _delivered(plan: MediaPlan) -> tuple[str | None, int | None, int | None]:
    """Quality, bit depth and sample rate of the stream fetched, as far as the upstream said."""
    extra = plan.extra

    def number(key: str) -> int | None:
        return int(extra[key]) if key in extra else None

    return extra.get("audio_quality"), number("bit_depth"), number("sample_rate")


def _remove(path: Path) -> None:
    """Drop a temp file; never through a link (a `.dlqd-tmp` swapped for one keeps its target)."""
    with contextlib.suppress(FileNotFoundError, UnsafePathError):
        unlink_beneath(path)
