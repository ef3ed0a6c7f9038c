"""Configuration: defaults < TOML file < `DLQD_<SECTION>_<KEY>` environment < flags (DESIGN §2).

Owns every config key: its default, its type and its checks, declared once as a
field of a frozen section dataclass, so adding a key is one line. Loading reads
each layer, converts every value it gives and reports the first bad one as a
`ConfigError` naming the key and where the value came from.
It never does I/O beyond reading the one config file, never logs and never
exits: the caller prints the error and exits 2.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from itertools import chain
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeGuard
from urllib.parse import urlsplit

from dlqd import __version__
from dlqd.naming import check_template

DEFAULT_CONFIG_PATH = Path("/etc/dlqd/dlqd.toml")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and is ready to print."""


class _Invalid(Exception):
    """A value does not fit its key: what was expected, or (more precise) what is wrong with it."""

    def __init__(self, expected: str, problem: str | None = None) -> None:
        super().__init__(problem or expected)
        self.expected = expected
        self.problem = problem


class _Kind(Protocol):
    """How one key's values are read from an environment string and checked."""

    @property
    def expected(self) -> str:
        """What a valid value looks like, e.g. "an integer >= 1"."""

    def from_env(self, text: str) -> object:
        """Best-effort translation of an env string into a file-like value; never raises.

        A string that does not translate is returned unchanged so that `convert`
        rejects it with the same message a bad file value gets.
        """

    def convert(self, value: object) -> object:
        """The typed value to store, or `_Invalid`."""


def _is_int(value: object) -> TypeGuard[int]:
    """TOML integers, not booleans: `max_concurrent = true` is a mistake, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


class _TextKind:
    """A kind whose environment string is already the value to check."""

    def from_env(self, text: str) -> object:
        return text


@dataclass(frozen=True)
class _Int:
    minimum: int

    @property
    def expected(self) -> str:
        return f"an integer >= {self.minimum}"

    def from_env(self, text: str) -> object:
        try:
            return int(text)
        except ValueError:
            return text

    def convert(self, value: object) -> int:
        if not _is_int(value) or value < self.minimum:
            raise _Invalid(self.expected)
        return value


@dataclass(frozen=True)
class _Seconds:
    """A duration: TOML integers and floats alike, stored as float."""

    allow_zero: bool

    @property
    def expected(self) -> str:
        return f"a number of seconds {'>=' if self.allow_zero else '>'} 0"

    def from_env(self, text: str) -> object:
        try:
            return float(text)
        except ValueError:
            return text

    def convert(self, value: object) -> float:
        if not (_is_int(value) or isinstance(value, float)):
            raise _Invalid(self.expected)
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.allow_zero):
            raise _Invalid(self.expected)
        return seconds


@dataclass(frozen=True)
class _Path(_TextKind):
    """A filesystem path; when `optional`, "" means the feature is off (None)."""

    optional: bool

    @property
    def expected(self) -> str:
        return 'a path, or "" for off' if self.optional else "a non-empty path"

    def convert(self, value: object) -> Path | None:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or "\0" in value:
            raise _Invalid(self.expected)
        if not value:
            if self.optional:
                return None
            raise _Invalid(self.expected)
        return Path(value)


_OCTAL_MODE = re.compile(r"(?:0o)?([0-7]{1,4})")


class _LibraryFolder(_TextKind):
    """A folder inside the library, given relative to it ("." is the library itself).

    Never absolute, never through `..`, never into dlqd's own `.dlqd-tmp`:
    whatever is configured, files written there stay in the library.
    """

    expected = 'a folder relative to the library, without "..", such as "Playlists"'

    def convert(self, value: object) -> PurePosixPath:
        if not isinstance(value, str) or not value or "\0" in value:
            raise _Invalid(self.expected)
        folder = PurePosixPath(value)
        if folder.is_absolute() or ".." in folder.parts:
            raise _Invalid(self.expected)
        if folder.parts[:1] == (".dlqd-tmp",):
            raise _Invalid(
                self.expected, problem="must not be inside .dlqd-tmp, dlqd's temp folder"
            )
        return folder


class _OctalMode(_TextKind):
    """A permission mode as an octal string ("0660"), so a decimal 660 cannot slip in."""

    expected = 'an octal mode string such as "0660", at most "0777"'

    def convert(self, value: object) -> int:
        match = _OCTAL_MODE.fullmatch(value) if isinstance(value, str) else None
        if match is None or int(match[1], 8) > 0o777:
            raise _Invalid(self.expected)
        return int(match[1], 8)


@dataclass(frozen=True)
class _Choice(_TextKind):
    choices: tuple[str, ...]

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(self.choices)

    def convert(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise _Invalid(self.expected)
        return value


class _HeaderText(_TextKind):
    """A value sent as an HTTP header: printable ASCII, so no CR/LF can split the request."""

    expected = "a non-empty string of printable ASCII characters"

    def convert(self, value: object) -> str:
        if not isinstance(value, str) or not value or not (value.isascii() and value.isprintable()):
            raise _Invalid(self.expected)
        return value


class _Url(_TextKind):
    expected = "an http:// or https:// URL"

    def convert(self, value: object) -> str:
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise _Invalid(self.expected)
        try:
            host = urlsplit(value).hostname
        except ValueError:  # e.g. an unclosed IPv6 bracket
            host = None
        if not host or any(char.isspace() for char in value):
            raise _Invalid(self.expected)
        return value


class _NamingTemplate(_TextKind):
    expected = "a non-empty naming template"

    def convert(self, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise _Invalid(self.expected)
        try:
            check_template(value)
        except ValueError as exc:  # says what is wrong and lists the fields once
            raise _Invalid(self.expected, problem=str(exc)) from None
        return value


@dataclass(frozen=True)
class _ListOf:
    """A TOML array, or comma-separated in the environment; stored as a tuple."""

    item: _Kind
    expected: str
    non_empty: bool = False
    single_ok: bool = False  # a lone value means a one-element list: base_url = "http://…"
    secret: bool = False  # values that may hold tokens are never echoed in a config error

    def from_env(self, text: str) -> object:
        return [self.item.from_env(part.strip()) for part in text.split(",") if part.strip()]

    def convert(self, value: object) -> tuple[object, ...]:
        if self.single_ok and isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or (self.non_empty and not value):
            raise _Invalid(self.expected)
        try:
            return tuple(self.item.convert(item) for item in value)
        except _Invalid:
            raise _Invalid(self.expected) from None


def _checked_as(kind: _Kind) -> Mapping[str, _Kind]:
    """A config key's field metadata: how its values are read and checked."""
    return {"kind": kind}


# The kinds most keys share.
_COUNT = _Int(0)
_POSITIVE = _Int(1)
_DURATION = _Seconds(allow_zero=False)
_DELAY = _Seconds(allow_zero=True)
_REQUIRED_PATH = _Path(optional=False)
_IDS = _ListOf(_COUNT, "a list of integers >= 0")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """[daemon]: where state, the socket and the library live, and who may connect."""

    state_dir: Path = field(default=Path("/var/lib/dlqd"), metadata=_checked_as(_REQUIRED_PATH))
    socket: Path = field(default=Path("/run/dlqd/dlqd.sock"), metadata=_checked_as(_REQUIRED_PATH))
    socket_mode: int = field(default=0o660, metadata=_checked_as(_OctalMode()))
    allowed_uids: tuple[int, ...] = field(default=(), metadata=_checked_as(_IDS))
    allowed_gids: tuple[int, ...] = field(default=(), metadata=_checked_as(_IDS))
    library: Path = field(default=Path("/srv/music"), metadata=_checked_as(_REQUIRED_PATH))
    journal_compact_bytes: int = field(default=16 * 1024 * 1024, metadata=_checked_as(_POSITIVE))
    first_frame_timeout_s: float = field(default=10.0, metadata=_checked_as(_DURATION))
    send_timeout_s: float = field(default=10.0, metadata=_checked_as(_DURATION))


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """[upstream]: the proxy API bases to fail over between, the cover host, HTTP limits, trust."""

    base_url: tuple[str, ...] = field(
        default=("http://127.0.0.1:8000",),
        metadata=_checked_as(
            _ListOf(
                _Url(),
                "an http:// or https:// URL, or a non-empty list of them",
                non_empty=True,
                single_ok=True,
            )
        ),
    )
    cover_base_url: str = field(
        default="https://resources.tidal.com/images", metadata=_checked_as(_Url())
    )
    connect_timeout_s: float = field(default=10.0, metadata=_checked_as(_DURATION))
    read_timeout_s: float = field(default=30.0, metadata=_checked_as(_DURATION))
    user_agent: str = field(default=f"dlqd/{__version__}", metadata=_checked_as(_HeaderText()))
    resolve_timeout_s: float = field(default=120.0, metadata=_checked_as(_DURATION))
    failure_threshold: int = field(default=5, metadata=_checked_as(_POSITIVE))
    max_cooldown_s: float = field(default=600.0, metadata=_checked_as(_DURATION))
    max_retry_after_s: float = field(default=600.0, metadata=_checked_as(_DELAY))
    ca_file: Path | None = field(default=None, metadata=_checked_as(_Path(optional=True)))


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """[worker]: how many tracks run at once, and how long and how often each may try."""

    max_concurrent: int = field(default=4, metadata=_checked_as(_POSITIVE))
    track_timeout_s: float = field(default=300.0, metadata=_checked_as(_DURATION))
    max_retries: int = field(default=3, metadata=_checked_as(_COUNT))
    backoff_s: tuple[float, ...] = field(
        default=(1.0, 2.0, 5.0, 10.0),
        metadata=_checked_as(_ListOf(_DELAY, "a non-empty list of numbers >= 0", non_empty=True)),
    )
    bandwidth_limit_kbps: int = field(default=0, metadata=_checked_as(_COUNT))
    drain_grace_s: float = field(default=30.0, metadata=_checked_as(_DELAY))
    requeue_after_s: float = field(default=900.0, metadata=_checked_as(_DELAY))
    max_passes: int = field(default=3, metadata=_checked_as(_POSITIVE))


@dataclass(frozen=True, slots=True)
class FilesConfig:
    """[files]: how tracks are named, what a name clash does, where covers and playlists go."""

    naming: str = field(
        default="{album_artist}/{album}/{disc_prefix}{track:02d} - {title}",
        metadata=_checked_as(_NamingTemplate()),
    )
    conflict: str = field(
        default="overwrite_if_different",
        metadata=_checked_as(_Choice(("skip", "overwrite", "overwrite_if_different", "rename"))),
    )
    cover: str = field(
        default="embed+file", metadata=_checked_as(_Choice(("embed", "file", "embed+file", "none")))
    )
    recheck_s: float = field(default=30.0, metadata=_checked_as(_DURATION))
    lyrics: str = field(
        default="embed", metadata=_checked_as(_Choice(("embed", "lrc", "both", "none")))
    )
    playlist_dir: PurePosixPath = field(
        default=PurePosixPath("Playlists"), metadata=_checked_as(_LibraryFolder())
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """[limits]: what clients and the upstream may ask of the daemon before it refuses."""

    max_queue: int = field(default=1000, metadata=_checked_as(_POSITIVE))
    submit_rate_per_min: int = field(default=600, metadata=_checked_as(_COUNT))
    max_frame_bytes: int = field(default=65536, metadata=_checked_as(_Int(1024)))
    min_free_mb: int = field(default=100, metadata=_checked_as(_COUNT))
    max_metadata_mb: int = field(default=16, metadata=_checked_as(_POSITIVE))
    max_track_mb: int = field(default=4096, metadata=_checked_as(_POSITIVE))
    max_job_tracks: int = field(default=5000, metadata=_checked_as(_POSITIVE))
    warn_active_jobs: tuple[int, ...] = field(
        default=(100, 500),
        metadata=_checked_as(_ListOf(_POSITIVE, "a list of integers >= 1 ([] for none)")),
    )


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """[retention]: how long finished jobs are kept before the sweeper forgets them."""

    completed_h: int = field(default=720, metadata=_checked_as(_COUNT))  # 30 days of history
    failed_h: int = field(default=168, metadata=_checked_as(_COUNT))
    sweep_interval_s: float = field(default=3600.0, metadata=_checked_as(_DURATION))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """[metrics]: the optional node_exporter textfile and how often it is rewritten."""

    textfile: Path | None = field(default=None, metadata=_checked_as(_Path(optional=True)))
    interval_s: float = field(default=5.0, metadata=_checked_as(_DURATION))


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """[hooks]: a program run (no shell) when a job finishes, and how long it may take."""

    on_job_finished: Path | None = field(default=None, metadata=_checked_as(_Path(optional=True)))
    timeout_s: float = field(default=60.0, metadata=_checked_as(_DURATION))


class _AppriseUrl(_TextKind):
    """An apprise URL (ntfy://, json://, mailto://...); apprise itself checks the rest."""

    expected = "an apprise URL such as ntfy://host/topic"

    def convert(self, value: object) -> str:
        if not isinstance(value, str) or "://" not in value or any(c.isspace() for c in value):
            raise _Invalid(self.expected)
        return value


NOTIFY_STATUSES = ("completed", "partial", "failed")


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """[notify]: where finished jobs are announced (apprise URLs) and for which statuses."""

    urls: tuple[str, ...] = field(
        default=(),
        metadata=_checked_as(_ListOf(_AppriseUrl(), "a list of apprise URLs", secret=True)),
    )
    on: tuple[str, ...] = field(
        default=NOTIFY_STATUSES,
        metadata=_checked_as(
            _ListOf(_Choice(NOTIFY_STATUSES), "a list of " + ", ".join(NOTIFY_STATUSES))
        ),
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole checked configuration; `Config()` is the built-in defaults."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)


_SECTIONS: Mapping[str, type[Any]] = {
    "daemon": DaemonConfig,
    "upstream": UpstreamConfig,
    "worker": WorkerConfig,
    "files": FilesConfig,
    "limits": LimitsConfig,
    "retention": RetentionConfig,
    "metrics": MetricsConfig,
    "hooks": HooksConfig,
    "notify": NotifyConfig,
}
_KINDS: Mapping[str, Mapping[str, _Kind]] = {
    section: {key.name: key.metadata["kind"] for key in fields(cls)}
    for section, cls in _SECTIONS.items()
}

# (section, key, kind, value, source): one value given by one layer.
_Setting = tuple[str, str, _Kind, object, str]


def load_config(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], object] | None = None,
) -> Config:
    """Merge defaults < file < environment < flags into one checked `Config`.

    `config_file=None` reads `DEFAULT_CONFIG_PATH` if it exists; an explicit file
    must exist. `env=None` reads `os.environ`. `overrides` maps (section, key) to
    a value parsed by argparse; None values (flags not given) are skipped.
    Every value a layer gives is checked, even one a later layer replaces.
    """
    path = DEFAULT_CONFIG_PATH if config_file is None else config_file
    document = _read_toml(path, required=config_file is not None)
    settings = chain(
        _file_settings(document, str(path)),
        _env_settings(os.environ if env is None else env),
        _flag_settings(overrides or {}),
    )
    values: dict[str, dict[str, object]] = {section: {} for section in _SECTIONS}
    for section, key, kind, value, source in settings:
        try:
            values[section][key] = kind.convert(value)
        except _Invalid as exc:
            wrong = f"{exc.problem};" if exc.problem else f"expected {exc.expected},"
            # An apprise URL carries its service's token: say where, never what.
            got = "a value not shown here" if getattr(kind, "secret", False) else _show(value)
            raise ConfigError(
                f"config error: [{section}] {key}: {wrong} got {got} (from {source})"
            ) from None
    return Config(**{section: cls(**values[section]) for section, cls in _SECTIONS.items()})


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as config:
            return tomllib.load(config)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config error: {path}: no such file") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config error: {path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config error: {path}: not valid TOML: {exc}") from None


def _file_settings(document: Mapping[str, Any], source: str) -> Iterator[_Setting]:
    for section, table in document.items():
        kinds = _kinds_of(section, source)
        if not isinstance(table, dict):
            raise ConfigError(
                f"config error: [{section}]: expected a table, got {_show(table)} (from {source})"
            )
        for key, value in table.items():
            yield section, key, _kind_of(kinds, section, key, source), value, source


# Section names hold no "_", so the first "_" after the section ends it.
_ENV_NAME = re.compile(r"DLQD_([A-Z]+)_(.*)", re.DOTALL)


def _env_settings(env: Mapping[str, str]) -> Iterator[_Setting]:
    """Only DLQD_<known section>_* names are config; DLQD_SOCKET and the like belong to others."""
    for name, text in sorted(env.items()):
        match = _ENV_NAME.fullmatch(name)
        if match is None or match[1].lower() not in _KINDS:
            continue
        section, key = match[1].lower(), match[2].lower()
        kind = _kind_of(_KINDS[section], section, key, name)
        yield section, key, kind, kind.from_env(text), name


def _flag_settings(overrides: Mapping[tuple[str, str], object]) -> Iterator[_Setting]:
    source = "the command line"
    for (section, key), value in overrides.items():
        if value is not None:
            kind = _kind_of(_kinds_of(section, source), section, key, source)
            yield section, key, kind, value, source


def _kinds_of(section: str, source: str) -> Mapping[str, _Kind]:
    if section not in _KINDS:
        raise ConfigError(
            f"config error: [{section}]: unknown section (from {source})"
            + _did_you_mean(section, _KINDS)
        )
    return _KINDS[section]


def _kind_of(kinds: Mapping[str, _Kind], section: str, key: str, source: str) -> _Kind:
    if key not in kinds:
        raise ConfigError(
            f"config error: [{section}] {key}: unknown key (from {source})"
            + _did_you_mean(key, kinds)
        )
    return kinds[key]


def _did_you_mean(word: str, known: Mapping[str, object]) -> str:
    matches = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {matches[0]}?" if matches else ""


def _show(value: object) -> str:
    """A value spelled as in TOML, so messages quote strings and show true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return _show(os.fspath(value))
    return repr(value)
