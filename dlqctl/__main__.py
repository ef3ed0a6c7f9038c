"""dlqctl: drive dlqd from the shell — readable tables, or `--json` for scripts.

Imports only the shared protocol module and msgpack (no trio, httpx or
structlog), so every command returns quickly. Exit codes: 0 ok; 1 the daemon
refused (stderr `error: CODE: message`), or `health` found a problem; 2 usage;
3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from dlqctl.client import Client, Refused, Unreachable
from dlqd.model import JOB_TYPES, PRIORITIES, QUALITIES, JobStatus, canonical_choice

DEFAULT_SOCKET = "/run/dlqd/dlqd.sock"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


# --- rendering ------------------------------------------------------------------


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_jobs(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no jobs"
    rows = []
    for job in jobs:
        done = sum(1 for t in job["tracks"] if t["status"] == "completed")
        label = job["title"] or f"{job['type']} {job['target_id']}"
        if job["artist"]:
            label = f"{job['artist']} – {label}"
        rows.append(
            [
                job["id"],
                job["type"],
                job["status"],
                f"{job['progress'] * 100:.0f}%",
                f"{done}/{len(job['tracks'])}",
                job["quality"],
                label[:60],
            ]
        )
    return _table(rows, ["ID", "TYPE", "STATUS", "PROGRESS", "TRACKS", "QUALITY", "TITLE"])


def render_job(job: dict[str, Any]) -> str:
    lines = [
        f"job {job['id']}: {job['type']} {job['target_id']} ({job['quality']}, "
        f"{job['priority']} priority)",
        f"  status:   {job['status']}  progress {job['progress'] * 100:.0f}%  "
        f"{_size(job['bytes_done'])} of {_size(job['bytes_total'])}  attempts {job['attempts']}",
        f"  title:    {job['title'] or '-'}",
        f"  artist:   {job['artist'] or '-'}",
        f"  created:  {job['created_at']}  started: {job['started_at'] or '-'}  "
        f"finished: {job['finished_at'] or '-'}",
    ]
    if job["error"]:
        lines.append(f"  error:    {job['error']['code']}: {job['error']['message']}")
    if job["tracks"]:
        rows = []
        for t in job["tracks"]:
            detail = t["path"] or (
                f"{t['error']['code']}: {t['error']['message']}" if t["error"] else ""
            )
            rows.append(
                [
                    f"{t['disc']}-{t['number']:02d}",
                    t["status"],
                    t["outcome"] or "",
                    _size(t["bytes_done"]),
                    str(t["attempts"]),
                    (t["title"] or str(t["track_id"]))[:40],
                    detail,
                ]
            )
        lines.append("")
        lines.append(_table(rows, ["#", "STATUS", "OUTCOME", "BYTES", "TRIES", "TITLE", "PATH"]))
    return "\n".join(lines)


def render_stats(stats: dict[str, Any]) -> str:
    queue, worker = stats["queue"], stats["worker"]
    counts = ", ".join(f"{queue[s]} {s}" for s in (str(x) for x in JobStatus) if queue.get(s))
    state = "running" if worker["running"] else "held (dlqctl resume to continue)"
    journal = stats.get("journal", {})
    return "\n".join(
        [
            f"jobs:     {queue['total']} total" + (f" ({counts})" if counts else ""),
            f"worker:   {state}, {worker['active_tracks']}/{worker['max_concurrent']} "
            "track slots busy",
            f"journal:  {_size(journal.get('journal_bytes', 0))} in segment "
            f"{journal.get('segment', '?')}, snapshot {_size(journal.get('snapshot_bytes', 0))}",
        ]
    )


def render_health(health: dict[str, Any]) -> str:
    head = "healthy" if health["ok"] else "UNHEALTHY: " + ", ".join(health.get("problems", []))
    lines = [f"{head} (dlqd {health['version']}, up {health['uptime_s']:.0f} s)"]
    lines.extend(f"  note: {note}" for note in health.get("notes", []))
    for name, check in sorted(health.get("checks", {}).items()):
        flat = {k: v for k, v in check.items() if k != "ok" and not isinstance(v, dict)}
        details = ", ".join(f"{k}={v}" for k, v in flat.items())
        lines.append(f"  {'ok ' if check.get('ok', True) else 'BAD'} {name}: {details}".rstrip())
        for group in (v for v in check.values() if isinstance(v, dict)):
            for item, facts in group.items():  # e.g. one line per upstream base
                shown = facts.items() if isinstance(facts, dict) else [("value", facts)]
                lines.append(f"      {item}: " + ", ".join(f"{k}={v}" for k, v in shown))
    return "\n".join(lines)


# --- commands -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlqctl", description="Control the dlqd download queue.")
    parser.add_argument(
        "--socket", help=f"daemon socket (default: $DLQD_SOCKET, else {DEFAULT_SOCKET})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", help="queue a track or an album")
    add.add_argument("type", **_one_of(JOB_TYPES))
    add.add_argument("target_id", type=_positive_id, metavar="ID")
    add.add_argument("--quality", **_one_of(QUALITIES), default="LOSSLESS")
    add.add_argument("--priority", **_one_of(PRIORITIES), default="normal")

    ls = commands.add_parser("ls", help="list jobs (all, or those with --status)")
    ls.add_argument("--status", action="append", **_one_of(tuple(JobStatus)), default=None)
    for name, text in (
        ("show", "show one job and its tracks"),
        ("cancel", "cancel a queued, paused or processing job"),
        ("rm", "forget a finished job (library files stay)"),
        ("retry", "re-queue a partial, failed or cancelled job's unfinished tracks"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("job")
    for name, text in (
        ("pause", "pause a job, or with no JOB hold the whole queue"),
        ("resume", "resume a job, or with no JOB release the queue"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("job", nargs="?")
    commands.add_parser("stats", help="queue and worker counts")
    commands.add_parser("health", help="exit 0 when healthy, 1 when not (and why)")
    commands.add_parser(
        "metrics", help="metrics in the Prometheus text format (--json: parsed families)"
    )
    commands.add_parser("watch", help="live progress until the queue is idle")
    return parser


def _one_of(choices: tuple[str, ...]) -> dict[str, Any]:
    """argparse options for an enum: typed in any case, shown and listed in lower case."""
    listed = [choice.lower() for choice in choices]

    def convert(text: str) -> str:
        found = canonical_choice(text, choices)
        if found is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(listed)}")
        return found

    convert.__name__ = "choice"  # argparse names the type in some messages
    return {"type": convert, "metavar": "{" + ",".join(listed) + "}"}


def _positive_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer id") from None
    if not 1 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..2147483647")
    return value


def _emit(args: argparse.Namespace, document: Any, text: str) -> None:
    print(json.dumps(document, ensure_ascii=False) if args.json else text)


def run(args: argparse.Namespace, client: Client) -> int:
    command = args.command
    if command == "add":
        submit = {"type": args.type, "target_id": args.target_id, "quality": args.quality}
        submit["priority"] = args.priority
        result = client.call("submit", submit)
        verb = "queued" if result["created"] else "already queued as"
        _emit(args, result, f"{verb} job {result['id']}")
    elif command == "ls":
        jobs = client.list_all(args.status)
        _emit(args, jobs, render_jobs(jobs))
    elif command == "show":
        job = client.call("get", {"id": args.job})["job"]
        _emit(args, job, render_job(job))
    elif command in ("cancel", "retry"):
        result = client.call(command, {"id": args.job})
        _emit(args, result, f"job {args.job}: {result['job']['status']}")
        if "warning" in result and not args.json:
            print(f"warning: {result['warning']}", file=sys.stderr)
    elif command == "rm":
        result = client.call("remove", {"id": args.job})
        _emit(args, result, f"removed job {result['removed']}")
    elif command in ("pause", "resume"):
        result = client.call(command, {"id": args.job} if args.job else {})
        what = f"job {args.job}" if args.job else "queue"
        _emit(args, result, f"{what} {'paused' if command == 'pause' else 'resumed'}")
    elif command == "stats":
        result = client.call("stats")
        _emit(args, result, render_stats(result))
    elif command == "health":
        result = client.call("health")
        _emit(args, result, render_health(result))
        return EXIT_OK if result["ok"] else EXIT_REFUSED
    elif command == "metrics":
        result = client.call("metrics")
        _emit(args, result["families"], result["text"].rstrip("\n"))
    elif command == "watch":
        return watch(args, client)
    return EXIT_OK


def watch(args: argparse.Namespace, client: Client) -> int:
    """Print progress events until no job is queued or processing."""

    def idle() -> bool:
        counts = client.call("stats")["queue"]
        return bool(counts["queued"] == 0 and counts["processing"] == 0)

    if idle():
        _emit(args, {"event": "idle"}, "queue is idle")
        return EXIT_OK
    watcher = Client(client.path)
    try:
        watcher.call("watch")
        for event in watcher.events():
            if args.json:
                print(json.dumps(event, ensure_ascii=False), flush=True)
            else:
                print(_describe_event(event), flush=True)
            if event.get("event") in ("finish", "cancel", "pause") and idle():
                break
    finally:
        watcher.close()
    return EXIT_OK


def _describe_event(event: dict[str, Any]) -> str:
    kind = event.get("event")
    job = event.get("job_id", "")
    if kind == "progress":
        total = event.get("bytes_total") or 0
        share = f" ({event['bytes_done'] * 100 // total}%)" if total else ""
        return f"job {job} track {event['track_id']}: {_size(event['bytes_done'])}{share}"
    if kind == "track_done":
        return f"job {job} track {event['track_id']}: {event.get('outcome')}"
    if kind == "track_failed":
        return f"job {job} track {event['track_id']}: failed {event['error']['code']}"
    if kind == "finish":
        return f"job {job}: {event.get('status')}"
    return f"job {job}: {kind}" if job else str(kind)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.socket or os.environ.get("DLQD_SOCKET") or DEFAULT_SOCKET
    try:
        client = Client(path)
    except Unreachable as exc:
        print(f"dlqctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        return run(args, client)
    except Refused as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except Unreachable as exc:
        print(f"dlqctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_REFUSED
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
