"""dlqctl's command line: every command, option and choice, in one argparse parser.

Owns the grammar (DESIGN §3 and §9): the global options `--json`,
`--socket`, `--timeout` work before or after the command, and a usage error
under `--json` is also one JSON document on stdout. Shell completion is
generated from this parser, so a new option is completed once it is here.
Never: talks to the daemon.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from dlqd import __version__
from dlqd.model import (
    DEFAULT_INCLUDE,
    FINISHED_STATUSES,
    JOB_TYPES,
    MOVES,
    PRIORITIES,
    QUALITIES,
    RELEASE_KINDS,
    JobStatus,
    canonical_choice,
)

DEFAULT_SOCKET = "/run/dlqd/dlqd.sock"
DEFAULT_TIMEOUT_S = 10.0
EXIT_USAGE = 2
JOB_STATUSES = tuple(str(status) for status in JobStatus)
FINISHED = tuple(str(status) for status in JobStatus if status in FINISHED_STATUSES)
ADD_TYPES = JOB_TYPES
SHELLS = ("bash", "zsh")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors also speak JSON when `--json` was asked."""

    json_errors = False  # set by main() before parsing: is --json on the command line?

    def error(self, message: str) -> NoReturn:
        if Parser.json_errors:
            print(json.dumps({"error": {"code": "USAGE", "message": message}}), flush=True)
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def one_of(choices: Sequence[str]) -> dict[str, Any]:
    """argparse options for an enum: typed in any case, shown and listed in lower case.

    The converter keeps the listed spellings as `.choices`, for shell completion.
    """
    listed = [choice.lower() for choice in choices]

    def convert(text: str) -> str:
        found = canonical_choice(text, choices)
        if found is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(listed)}")
        return found

    convert.__name__ = "choice"  # argparse names the type in some messages
    convert.choices = listed  # type: ignore[attr-defined]
    return {"type": convert, "metavar": "{" + ",".join(listed) + "}"}


def release_kinds(text: str) -> list[str]:
    """`--include album,ep`: release kinds, comma-separated, any case, each known."""
    kinds = []
    for word in (part.strip() for part in text.split(",")):
        kind = canonical_choice(word, RELEASE_KINDS)
        if kind is None:
            raise argparse.ArgumentTypeError(
                f"{word!r} is not a release kind: use {', '.join(RELEASE_KINDS)}, comma-separated"
            )
        kinds.append(kind)
    return kinds


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _global_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """The options every command takes; after the command they override those before it."""

    def default(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=default(None),
        help=f"daemon socket (default: $DLQD_SOCKET, else {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print one JSON document"
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=default(DEFAULT_TIMEOUT_S),
        help=f"give up on an unanswered request after this long (default {DEFAULT_TIMEOUT_S:g})",
    )


def build_parser() -> Parser:
    parser = Parser(prog="dlqctl", description="Control the dlqd download queue.")
    _global_options(parser, with_defaults=True)
    parser.add_argument("--version", action="version", version=f"dlqctl {__version__}")
    common = Parser(add_help=False)
    _global_options(common, with_defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> Parser:
        sub: Parser = commands.add_parser(name, help=text, description=text, parents=[common])
        sub.set_defaults(usage_error=sub.error)
        return sub

    add = command(
        "add",
        "queue tracks, albums, playlists, mixes or artists (one album job per release)"
        " by id or TIDAL share link",
    )
    add.add_argument("type", **one_of(ADD_TYPES))
    add.add_argument(
        "targets",
        nargs="+",
        metavar="ID|URL",
        help="ids (a playlist's UUID, a mix's id) or share links; - reads them from stdin",
    )
    add.add_argument("--quality", **one_of(QUALITIES), default="LOSSLESS")
    add.add_argument("--priority", **one_of(PRIORITIES), default="normal")
    add.add_argument(
        "--include",
        type=release_kinds,
        metavar="KINDS",
        help=f"artist only: release kinds to queue, of {','.join(RELEASE_KINDS)} "
        f"(default {','.join(DEFAULT_INCLUDE)})",
    )

    ls = command("ls", "list jobs in run order (all, or those the filters pick)")
    ls.add_argument("--status", action="append", **one_of(JOB_STATUSES), help="repeatable")
    ls.add_argument("--type", action="append", **one_of(ADD_TYPES), help="repeatable")
    ls.add_argument("--artist", metavar="TEXT", help="artist contains TEXT (any case)")
    ls.add_argument("--album", metavar="TEXT", help="album title contains TEXT (any case)")
    ls.add_argument(
        "--since",
        metavar="DURATION|DATE",
        help="active, or created or finished since (2h, 3d, 2026-11-01)",
    )

    command("show", "show one job and its tracks (an artist job: its album jobs)").add_argument(
        "job", metavar="JOB"
    )

    cancel = command("cancel", "cancel queued, paused or processing jobs")
    cancel.add_argument("jobs", nargs="*", metavar="JOB")
    cancel.add_argument("--all", action="store_true", help="every queued, paused or processing job")

    rm = command("rm", "forget finished jobs (library files stay)")
    rm.add_argument("jobs", nargs="*", metavar="JOB")
    rm.add_argument("--finished", action="store_true", help="every completed job (or --status)")
    rm.add_argument(
        "--status", action="append", **one_of(FINISHED), help="with --finished; repeatable"
    )

    retry = command("retry", "re-queue the unfinished tracks of partial, failed or cancelled jobs")
    retry.add_argument("jobs", nargs="*", metavar="JOB")
    retry.add_argument(
        "--failed", action="store_true", help="every partial, failed or cancelled job"
    )

    command("pause", "pause a job, or with no JOB hold the whole queue").add_argument(
        "job", nargs="?", metavar="JOB"
    )
    resume = command("resume", "resume a job, or with no JOB release the queue")
    resume.add_argument("job", nargs="?", metavar="JOB")
    resume.add_argument(
        "--force",
        action="store_true",
        help="without JOB: also cut an upstream backoff short (probe now, end a 429 hold)",
    )

    move = command("move", "move a queued job in the run order")
    move.add_argument("job", metavar="JOB")
    move.add_argument("where", **one_of(MOVES))

    priority = command("priority", "change a queued job's priority")
    priority.add_argument("job", metavar="JOB")
    priority.add_argument("level", **one_of(PRIORITIES))

    command("stats", "queue and worker counts, speed and holds")
    command("health", "exit 0 when healthy, 1 when not (and why)")
    command("metrics", "metrics in the Prometheus text format (--json: parsed families)")

    watch = command("watch", "live progress until the queue is idle, or until JOB finishes")
    watch.add_argument("job", nargs="?", metavar="JOB")
    watch.add_argument(
        "--no-reconnect", action="store_true", help="exit 3 when dlqd goes away instead of waiting"
    )

    completion = command("completion", "print a shell completion script")
    completion.add_argument("shell", choices=SHELLS)
    return parser
