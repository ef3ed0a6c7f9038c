"""Shared fixtures: real dlqd processes and a real upstream on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlqd.demo.catalog import Catalog, CatalogServer
from tests.support import DaemonProcess


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """One generated catalog for the session: its audio is made once, lazily."""
    return Catalog()


@pytest.fixture
def upstream(catalog: Catalog) -> Iterator[CatalogServer]:
    """A fresh server per test, so injected faults and request logs never leak."""
    with CatalogServer(catalog) as server:
        yield server


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Build (not start) daemons; every one is killed and cleaned up after the test."""
    made: list[DaemonProcess] = []

    def factory(
        name: str = "d",
        settings: dict[str, dict[str, Any]] | None = None,
        upstream: CatalogServer | None = None,
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        settings = {k: dict(v) for k, v in (settings or {}).items()}
        if upstream is not None:
            up = settings.setdefault("upstream", {})
            up.setdefault("base_url", [upstream.base_url])
            up.setdefault("cover_base_url", upstream.cover_base_url)
        daemon = DaemonProcess(tmp_path / name, settings=settings, env=env or {})
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.cleanup()


@pytest.fixture
def daemon(make_daemon: DaemonFactory, upstream: CatalogServer) -> DaemonProcess:
    """A running daemon against the test upstream."""
    process = make_daemon(upstream=upstream)
    process.start()
    return process


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Any]:
    """Mount a tmpfs of the given size on a directory; unmounted after the test."""
    mounted: list[Path] = []

    def mount(directory: Path, size: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None:
            pytest.skip("no mount(8) here")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {result.stderr}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in mounted:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)
