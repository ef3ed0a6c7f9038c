"""Config loading: defaults < file < environment < flags, and every bad value named."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path, PurePosixPath

import pytest

import dlqd
from dlqd import config
from dlqd.config import Config, ConfigError, load_config

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def no_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Keep the host's /etc/dlqd/dlqd.toml out of every test."""
    absent = tmp_path / "absent" / "dlqd.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", absent)
    return absent


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dlqd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_equal_the_design() -> None:
    loaded = load_config(env={})

    assert loaded == Config()
    assert loaded.daemon == config.DaemonConfig(
        state_dir=Path("/var/lib/dlqd"),
        socket=Path("/run/dlqd/dlqd.sock"),
        socket_mode=0o660,
        allowed_uids=(),
        allowed_gids=(),
        library=Path("/srv/music"),
        journal_compact_bytes=16777216,
    )
    assert loaded.upstream == config.UpstreamConfig(
        base_url=("http://127.0.0.1:8000",),
        cover_base_url="https://resources.tidal.com/images",
        connect_timeout_s=10.0,
        read_timeout_s=30.0,
        user_agent=f"dlqd/{dlqd.__version__}",
    )
    assert loaded.worker == config.WorkerConfig(
        max_concurrent=4,
        track_timeout_s=300.0,
        max_retries=3,
        backoff_s=(1.0, 2.0, 5.0, 10.0),
        bandwidth_limit_kbps=0,
        drain_grace_s=30.0,
    )
    assert loaded.files == config.FilesConfig(
        naming="{album_artist}/{album}/{disc_prefix}{track:02d} - {title}",
        conflict="overwrite_if_different",
        cover="embed+file",
    )
    assert loaded.limits == config.LimitsConfig(
        max_queue=1000, submit_rate_per_min=600, max_frame_bytes=65536, min_free_mb=100
    )
    assert loaded.retention == config.RetentionConfig(
        completed_h=720, failed_h=168, sweep_interval_s=3600.0
    )
    assert loaded.metrics == config.MetricsConfig(textfile=None, interval_s=5.0)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().worker.max_concurrent = 9  # type: ignore[misc]


def test_file_overrides_defaults_and_converts_types(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [daemon]
        state_dir = "/tmp/state"
        socket_mode = "0600"
        allowed_uids = [1000, 1001]

        [upstream]
        base_url = ["http://a:1", "https://b"]

        [worker]
        max_concurrent = 8
        backoff_s = [0.5, 1]

        [files]
        conflict = "rename"

        [metrics]
        textfile = "/var/lib/node_exporter/dlqd.prom"
        """,
    )

    loaded = load_config(path, env={})

    assert loaded.daemon.state_dir == Path("/tmp/state")
    assert loaded.daemon.socket_mode == 0o600
    assert loaded.daemon.allowed_uids == (1000, 1001)
    assert loaded.daemon.library == Path("/srv/music")  # untouched keys keep their default
    assert loaded.upstream.base_url == ("http://a:1", "https://b")
    assert loaded.worker.max_concurrent == 8
    assert loaded.worker.backoff_s == (0.5, 1.0)
    assert all(isinstance(delay, float) for delay in loaded.worker.backoff_s)
    assert loaded.files.conflict == "rename"
    assert loaded.metrics.textfile == Path("/var/lib/node_exporter/dlqd.prom")


def test_default_file_is_read_when_present(no_default_file: Path) -> None:
    no_default_file.parent.mkdir()
    no_default_file.write_text("[worker]\nmax_concurrent = 2\n", encoding="utf-8")

    assert load_config(env={}).worker.max_concurrent == 2


def test_single_base_url_string_becomes_a_tuple(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[upstream]\nbase_url = "http://only:8000"\n')

    assert load_config(path, env={}).upstream.base_url == ("http://only:8000",)


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[worker]\nmax_concurrent = 8\nmax_retries = 5\n")

    loaded = load_config(path, env={"DLQD_WORKER_MAX_CONCURRENT": "2"})

    assert loaded.worker.max_concurrent == 2
    assert loaded.worker.max_retries == 5


def test_flags_override_env_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[daemon]\nstate_dir = "/from/file"\n')
    env = {"DLQD_DAEMON_STATE_DIR": "/from/env", "DLQD_WORKER_MAX_CONCURRENT": "2"}
    overrides = {
        ("daemon", "state_dir"): "/from/flag",
        ("upstream", "base_url"): ["http://flag"],
        ("worker", "max_concurrent"): 3,
    }

    loaded = load_config(path, env=env, overrides=overrides)

    assert loaded.daemon.state_dir == Path("/from/flag")
    assert loaded.upstream.base_url == ("http://flag",)
    assert loaded.worker.max_concurrent == 3


def test_flags_not_given_are_skipped() -> None:
    loaded = load_config(
        env={"DLQD_WORKER_MAX_CONCURRENT": "2"}, overrides={("worker", "max_concurrent"): None}
    )

    assert loaded.worker.max_concurrent == 2


def test_flag_path_objects_are_accepted() -> None:
    loaded = load_config(env={}, overrides={("daemon", "library"): Path("/music")})

    assert loaded.daemon.library == Path("/music")


def test_env_lists_are_comma_separated() -> None:
    loaded = load_config(
        env={
            "DLQD_UPSTREAM_BASE_URL": "http://a, http://b",
            "DLQD_WORKER_BACKOFF_S": "1,2.5,0",
            "DLQD_DAEMON_ALLOWED_GIDS": "10,20",
            "DLQD_DAEMON_ALLOWED_UIDS": "",
        }
    )

    assert loaded.upstream.base_url == ("http://a", "http://b")
    assert loaded.worker.backoff_s == (1.0, 2.5, 0.0)
    assert loaded.daemon.allowed_gids == (10, 20)
    assert loaded.daemon.allowed_uids == ()


def test_env_scalars_are_converted() -> None:
    loaded = load_config(
        env={
            "DLQD_DAEMON_SOCKET_MODE": "0640",
            "DLQD_UPSTREAM_READ_TIMEOUT_S": "2.5",
            "DLQD_LIMITS_MAX_QUEUE": "7",
            "DLQD_METRICS_TEXTFILE": "",
        }
    )

    assert loaded.daemon.socket_mode == 0o640
    assert loaded.upstream.read_timeout_s == 2.5
    assert loaded.limits.max_queue == 7
    assert loaded.metrics.textfile is None


def test_dlqd_variables_outside_the_sections_are_ignored() -> None:
    loaded = load_config(
        env={
            "DLQD_SOCKET": "/tmp/other.sock",
            "DLQD_JOURNAL_SOCKET": "/tmp/journal",
            "DLQD_SOMETHING_ELSE": "x",
            "PATH": "/usr/bin",
        }
    )

    assert loaded == Config()


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[worker]\nmax_concurent = 3\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    message = str(caught.value)
    assert "[worker] max_concurent: unknown key" in message
    assert str(path) in message
    assert "did you mean max_concurrent?" in message


def test_unknown_section_in_file_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[wroker]\nmax_concurrent = 3\n")

    with pytest.raises(ConfigError, match=r"\[wroker\]: unknown section"):
        load_config(path, env={})


def test_section_that_is_not_a_table_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "worker = 3\n")

    with pytest.raises(ConfigError, match=r"\[worker\]: expected a table, got 3"):
        load_config(path, env={})


def test_unknown_key_in_env_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"DLQD_WORKER_MAX_CONCURENT": "3"})

    assert str(caught.value).startswith(
        "config error: [worker] max_concurent: unknown key (from DLQD_WORKER_MAX_CONCURENT)"
    )


def test_unknown_flag_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\[worker\] speed: unknown key"):
        load_config(env={}, overrides={("worker", "speed"): 1})


def test_wrong_type_names_key_value_and_source() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"DLQD_WORKER_MAX_CONCURRENT": "x"})

    assert str(caught.value) == (
        'config error: [worker] max_concurrent: expected an integer >= 1, got "x" '
        "(from DLQD_WORKER_MAX_CONCURRENT)"
    )


def test_a_bad_notify_url_is_named_but_its_token_is_never_shown(tmp_path: Path) -> None:
    config = tmp_path / "dlqd.toml"
    config.write_text('[notify]\nurls = ["ntfy://host/topic", "pover://SECRETTOKEN@user x"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)

    message = str(caught.value)
    assert "[notify] urls: expected a list of apprise URLs" in message
    assert "SECRETTOKEN" not in message and "host/topic" not in message
    assert str(config) in message


def test_wrong_type_in_file_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[limits]\nmax_queue = "many"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    assert str(caught.value) == (
        f'config error: [limits] max_queue: expected an integer >= 1, got "many" (from {path})'
    )


def test_bad_value_in_file_is_an_error_even_when_env_replaces_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[worker]\nmax_concurrent = "x"\n')

    with pytest.raises(ConfigError, match="max_concurrent"):
        load_config(path, env={"DLQD_WORKER_MAX_CONCURRENT": "2"})


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[worker]\nmax_concurrent = true\n")

    with pytest.raises(ConfigError, match=r"max_concurrent: expected an integer >= 1, got true"):
        load_config(path, env={})


def test_bool_is_not_a_number_of_seconds(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[upstream]\nread_timeout_s = true\n")

    with pytest.raises(ConfigError, match="read_timeout_s"):
        load_config(path, env={})


def test_seconds_accept_integers_and_floats(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "[upstream]\nconnect_timeout_s = 2.5\nread_timeout_s = 7\n"
        "[worker]\ndrain_grace_s = 0\n[retention]\nsweep_interval_s = 0.25\n",
    )

    loaded = load_config(path, env={})

    assert loaded.upstream.connect_timeout_s == 2.5
    assert loaded.upstream.read_timeout_s == 7.0
    assert isinstance(loaded.upstream.read_timeout_s, float)
    assert loaded.worker.drain_grace_s == 0.0
    assert loaded.retention.sweep_interval_s == 0.25


def test_float_is_not_accepted_for_integer_keys(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[worker]\nmax_retries = 2.5\n")

    with pytest.raises(ConfigError, match=r"max_retries: expected an integer >= 0, got 2\.5"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("DLQD_WORKER_MAX_CONCURRENT", "0"),
        ("DLQD_WORKER_MAX_RETRIES", "-1"),
        ("DLQD_WORKER_TRACK_TIMEOUT_S", "0"),
        ("DLQD_WORKER_TRACK_TIMEOUT_S", "inf"),
        ("DLQD_UPSTREAM_CONNECT_TIMEOUT_S", "-1"),
        ("DLQD_WORKER_DRAIN_GRACE_S", "-0.5"),
        ("DLQD_WORKER_BACKOFF_S", ""),
        ("DLQD_WORKER_BACKOFF_S", "1,-2"),
        ("DLQD_WORKER_BACKOFF_S", "1,x"),
        ("DLQD_LIMITS_MAX_FRAME_BYTES", "1023"),
        ("DLQD_LIMITS_MIN_FREE_MB", "-1"),
        ("DLQD_DAEMON_SOCKET_MODE", "1777"),
        ("DLQD_DAEMON_SOCKET_MODE", "0668"),
        ("DLQD_DAEMON_SOCKET_MODE", "rw-rw----"),
        ("DLQD_DAEMON_ALLOWED_UIDS", "1000,-1"),
        ("DLQD_DAEMON_STATE_DIR", ""),
        ("DLQD_FILES_CONFLICT", "replace"),
        ("DLQD_FILES_COVER", "both"),
        ("DLQD_FILES_PLAYLIST_DIR", ""),
        ("DLQD_FILES_PLAYLIST_DIR", "/srv/playlists"),
        ("DLQD_FILES_PLAYLIST_DIR", "../Playlists"),
        ("DLQD_FILES_PLAYLIST_DIR", "Lists/../../x"),
        ("DLQD_UPSTREAM_BASE_URL", ""),
        ("DLQD_UPSTREAM_BASE_URL", "ftp://a"),
        ("DLQD_UPSTREAM_BASE_URL", "http://a,localhost:8000"),
        ("DLQD_UPSTREAM_COVER_BASE_URL", "http://"),
        ("DLQD_UPSTREAM_USER_AGENT", "dlqd\r\nX-Evil: 1"),
    ],
)
def test_out_of_range_env_values_are_rejected_by_name(variable: str, text: str) -> None:
    section, key = variable.removeprefix("DLQD_").lower().split("_", 1)

    with pytest.raises(ConfigError) as caught:
        load_config(env={variable: text})

    assert f"[{section}] {key}: expected " in str(caught.value)
    assert str(caught.value).endswith(f"(from {variable})")


def test_playlist_dir_is_a_folder_inside_the_library(tmp_path: Path) -> None:
    def loaded(text: str) -> PurePosixPath:
        return load_config(env={"DLQD_FILES_PLAYLIST_DIR": text}).files.playlist_dir

    assert Config().files.playlist_dir == PurePosixPath("Playlists")
    assert loaded("Lists/Mixes/") == PurePosixPath("Lists/Mixes")
    assert loaded("./M3U") == PurePosixPath("M3U")
    assert loaded(".") == PurePosixPath(".")
    path = write_toml(tmp_path, '[files]\nplaylist_dir = ".dlqd-tmp/lists"\n')
    with pytest.raises(ConfigError, match=r"playlist_dir: must not be inside \.dlqd-tmp"):
        load_config(path, env={})


def test_socket_mode_must_be_an_octal_string(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[daemon]\nsocket_mode = 660\n")

    with pytest.raises(ConfigError, match=r"socket_mode: expected an octal mode string"):
        load_config(path, env={})


@pytest.mark.parametrize(
    "template",
    [
        "{artist}/{genre}",  # unknown field
        "{}",  # positional field
        "{title.upper}",  # attribute access
        "{album[0]}",  # indexing
        "{title:02d}",  # format spec that cannot format a string
        "{track:{width}}",  # nested unknown field
        "{track:{disc}}",  # nested fields: finalize's renderer refuses them
        "{album",  # unbalanced brace
        "",
    ],
)
def test_bad_naming_template_is_rejected(template: str) -> None:
    with pytest.raises(ConfigError, match=r"\[files\] naming: .+ got "):
        load_config(env={}, overrides={("files", "naming"): template})


def test_naming_template_may_use_every_field() -> None:
    template = (
        "{album_artist}/{year} - {album} [{quality}]/{disc_prefix}{track:02d} "
        "{disc}of{discs} {artist} - {title}.{ext}"
    )

    loaded = load_config(env={}, overrides={("files", "naming"): template})

    assert loaded.files.naming == template


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match=re.escape(f"{missing}: no such file")):
        load_config(missing, env={})


def test_missing_default_file_is_fine(no_default_file: Path) -> None:
    assert not no_default_file.exists()

    assert load_config(env={}) == Config()


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[worker\nmax_concurrent = 3\n")

    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


def test_docs_describe_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")

    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(getattr(Config(), section.name)):
            assert f"DLQD_{section.name.upper()}_{key.name.upper()}" in text, key.name


def test_docs_example_file_is_the_defaults(tmp_path: Path) -> None:
    example = DOCS.read_text(encoding="utf-8").split("```toml\n")[-1].split("```")[0]

    assert load_config(write_toml(tmp_path, example), env={}) == Config()
