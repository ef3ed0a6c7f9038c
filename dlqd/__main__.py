"""Command line: flags → config → the daemon; `dlqd demo` for the guided local run.

Exit codes: 0 after a clean drain, 1 when start-up is refused (another daemon,
damaged journal, socket path taken, missing library, a linked `.dlqd-tmp`), 2 for
bad flags or config.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from dlqd import __version__
from dlqd.config import ConfigError, load_config
from dlqd.logs import LOG_FORMATS, configure_logging, default_log_format


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlqd",
        description="Download-queue daemon: queues tracks and albums from a hifi-api "
        "upstream and leaves named, tagged files in the library.",
        epilog="Run 'dlqd demo' for a self-contained demonstration against a local catalog.",
    )
    parser.add_argument("--version", action="version", version=f"dlqd {__version__}")
    parser.add_argument(
        "--config", type=Path, help="TOML config file (default /etc/dlqd/dlqd.toml if present)"
    )
    parser.add_argument("--state-dir", type=Path, help="journal, snapshot and lock directory")
    parser.add_argument("--socket", type=Path, help="control socket path")
    parser.add_argument("--library", type=Path, help="where finished files go")
    parser.add_argument(
        "--upstream",
        action="append",
        metavar="URL",
        help="upstream base URL; repeat for failover (replaces [upstream] base_url)",
    )
    parser.add_argument(
        "--max-concurrent", type=int, metavar="N", help="concurrent track downloads"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="console, json, or journal (default: journal under systemd, else console)",
    )
    return parser


def run_daemon(args: argparse.Namespace) -> int:
    from dlqd.daemon import StartupError, serve  # heavy imports only when serving

    overrides = {
        ("daemon", "state_dir"): args.state_dir,
        ("daemon", "socket"): args.socket,
        ("daemon", "library"): args.library,
        ("upstream", "base_url"): args.upstream,
        ("worker", "max_concurrent"): args.max_concurrent,
    }
    configure_logging(args.log_format or default_log_format(os.environ))
    try:
        config = load_config(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"dlqd: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(serve, config)
    except StartupError as exc:
        print(f"dlqd: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from dlqd.demo.command import main as demo_main

        return demo_main(argv[1:])
    return run_daemon(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
