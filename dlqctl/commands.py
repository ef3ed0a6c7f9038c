"""What each dlqctl command asks the daemon, and what it prints back.

Owns the mapping from parsed arguments to protocol calls (docs/protocol.md)
and the exit code of each command: 0 ok, 1 refused or some item failed
(or `health` found a problem). Acting on many jobs takes one request (the
batch forms, 1000 ids or items each). Text output escapes every string the
daemon sent.
Never: parses the command line, or decides how errors and signals end the
process (`__main__` does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from dlqctl import render, text
from dlqctl.client import Client, Refused
from dlqctl.select import ACTIVE, JobFilter, parse_since
from dlqctl.targets import BadTarget, parse_target, read_targets
from dlqd.protocol import BATCH_MAX_ITEMS

EXIT_OK, EXIT_FAILED = 0, 1


class Output:
    """Where results go: one JSON document, or escaped text lines."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def emit(self, document: Any, lines: Callable[[Any], str | Iterable[str]]) -> None:
        """Print `document` as JSON, or `lines(document)` with the daemon's strings escaped."""
        if self.as_json:
            print(json.dumps(document, ensure_ascii=False), flush=True)
            return
        shown = lines(text.printable_doc(document))
        if not isinstance(shown, str):
            if not shown:
                return  # nothing to say on stdout (every item refused: stderr has them)
            shown = "\n".join(shown)
        print(shown, flush=True)

    def problem(self, line: str) -> None:
        """A failed item of a batch, on stderr (already escaped by the caller)."""
        if not self.as_json:
            print(line, file=sys.stderr, flush=True)


def usage(args: argparse.Namespace, message: str) -> NoReturn:
    """A usage error found after parsing: the command's usage, exit 2."""
    args.usage_error(message)
    raise SystemExit(2)  # not reached: usage_error exits


def terminal_width() -> int:
    return shutil.get_terminal_size().columns


# --- add ----------------------------------------------------------------------------


def add(args: argparse.Namespace, client: Client, out: Output) -> int:
    words: list[str] = []
    for word in args.targets:
        words.extend(read_targets(sys.stdin) if word == "-" else [word])
    if args.include is not None and args.type != "artist":
        usage(args, "--include goes only with add artist")
    try:
        targets = [parse_target(word, args.type) for word in words]
    except BadTarget as exc:
        usage(args, str(exc))
    items = [
        {"type": args.type, "target_id": target, "quality": args.quality, "priority": args.priority}
        for target in targets
    ]
    if args.include is not None:
        for item in items:
            item["include"] = args.include
    if args.targets != ["-"] and len(items) == 1:  # one id: the one-job form and its answer
        result = client.call("submit", items[0])
        verb = "queued" if result["created"] else "already queued as"
        out.emit(result, lambda r: f"{verb} job {r['id']}: {args.type} {targets[0]}")
        return EXIT_OK
    entries = _submit_many(client, items)
    for entry in entries:
        if not entry["ok"]:
            out.problem(f"{entry['type']} {entry['target_id']}: {_error_text(entry['error'])}")
    out.emit({"results": entries}, lambda doc: _submit_lines(doc["results"]))
    return _batch_exit(entries)


def _submit_lines(entries: list[dict[str, Any]]) -> list[str]:
    lines = []
    for entry in entries:
        if entry["ok"]:
            verb = "queued" if entry["created"] else "already queued as"
            lines.append(f"{verb} job {entry['id']}: {entry['type']} {entry['target_id']}")
    return lines or ([] if entries else ["nothing to add"])


def _submit_many(client: Client, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch submit's entries, 1000 items per request."""
    entries: list[dict[str, Any]] = []
    for start in range(0, len(items), BATCH_MAX_ITEMS):
        chunk = items[start : start + BATCH_MAX_ITEMS]
        try:
            entries.extend(client.call("submit", {"items": chunk})["results"])
        except Refused as refusal:  # refused as a whole (RATE_LIMITED: not one item fits)
            error = {"code": refusal.code, "message": refusal.message}
            entries.extend(
                {"type": item["type"], "target_id": item["target_id"], "ok": False, "error": error}
                for item in chunk
            )
    return entries


# --- cancel, retry, rm -------------------------------------------------------------


def cancel(args: argparse.Namespace, client: Client, out: Output) -> int:
    _one_form(args, args.all, "--all")
    return _act(args, client, out, "cancel", {"all": True} if args.all else None)


def retry(args: argparse.Namespace, client: Client, out: Output) -> int:
    _one_form(args, args.failed, "--failed")
    return _act(args, client, out, "retry", {"failed": True} if args.failed else None)


def rm(args: argparse.Namespace, client: Client, out: Output) -> int:
    _one_form(args, args.finished, "--finished")
    if args.status and not args.finished:
        usage(args, "--status goes with --finished")
    selector = {"finished": True, "status": args.status or ["completed"]} if args.finished else None
    return _act(args, client, out, "remove", selector)


def _one_form(args: argparse.Namespace, selector: bool, flag: str) -> None:
    if bool(args.jobs) == selector:
        usage(args, f"give JOB ids or {flag}, not both" if selector else f"give JOB ids or {flag}")


def _act(
    args: argparse.Namespace, client: Client, out: Output, cmd: str, selector: dict[str, Any] | None
) -> int:
    """`cmd` on the given jobs, or on those `selector` picks; one line per job."""
    if selector is None and len(args.jobs) == 1:  # one job: the one-job form and its answer
        result = client.call(cmd, {"id": args.jobs[0]})
        out.emit(result, lambda r: _single_line(cmd, r))
        if "warning" in result:  # retry: it will most likely fail the same way
            out.problem(f"warning: {text.printable(result['warning'])}")
        return EXIT_OK
    entries = _act_many(client, cmd, args.jobs, selector)
    for entry in entries:
        job = f"job {text.printable(entry['id'])}"
        if not entry["ok"]:
            out.problem(f"{job}: {_error_text(entry['error'])}")
        elif "warning" in entry:
            out.problem(f"{job}: warning: {text.printable(entry['warning'])}")
    out.emit({"results": entries}, lambda doc: _act_lines(cmd, doc["results"]))
    return _batch_exit(entries)


def _single_line(cmd: str, result: dict[str, Any]) -> str:
    """`removed job 4`, `job 4: queued`: the lines dlqctl always printed for one job."""
    if cmd == "remove":
        return f"removed job {result['removed']}"
    return f"job {result['job']['id']}: {result['job']['status']}"


def _act_lines(cmd: str, entries: list[dict[str, Any]]) -> list[str]:
    lines = []
    for entry in entries:
        if not entry["ok"]:
            continue
        title = render.label(entry) if entry.get("title") else ""
        verb = "removed job" if cmd == "remove" else "job"
        status = "" if cmd == "remove" else f": {entry['status']}"
        lines.append(f"{verb} {entry['id']}{status}" + (f": {title}" if title else ""))
    return lines or ([] if entries else ["no job to act on"])


def _act_many(
    client: Client, cmd: str, ids: Sequence[str], selector: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The batch form's entries: for the selection, or for the ids, 1000 per request."""
    if selector is not None:
        return list(client.call(cmd, selector)["results"])
    entries: list[dict[str, Any]] = []
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), BATCH_MAX_ITEMS):
        chunk = unique[start : start + BATCH_MAX_ITEMS]
        entries.extend(client.call(cmd, {"ids": chunk})["results"])
    return entries


def _batch_exit(entries: Sequence[dict[str, Any]]) -> int:
    return EXIT_OK if all(entry["ok"] for entry in entries) else EXIT_FAILED


def _error_text(error: dict[str, Any]) -> str:
    return text.printable(f"error: {error.get('code')}: {error.get('message')}")


# --- ls, show --------------------------------------------------------------------------


def ls(args: argparse.Namespace, client: Client, out: Output) -> int:
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        usage(args, str(exc))
    wanted = JobFilter(
        types=args.type or (), artist=args.artist or "", album=args.album or "", since=since
    )
    jobs = [job for job in jobs_in_run_order(client, args.status) if wanted.matches(job)]
    out.emit(jobs, lambda shown: render.job_table(shown, terminal_width()) or ["no jobs"])
    return EXIT_OK


def jobs_in_run_order(client: Client, statuses: Sequence[str] | None) -> list[dict[str, Any]]:
    """Finished jobs oldest first, then the queue in the order it runs."""
    wanted = list(statuses or render.STATUSES)
    active = [s for s in wanted if s in ACTIVE]
    finished = [s for s in wanted if s not in ACTIVE]
    history = client.list_all(finished) if finished else []
    return history + (queue_in_run_order(client, active) if active else [])


def queue_in_run_order(client: Client, statuses: Sequence[str]) -> list[dict[str, Any]]:
    """The active jobs with one of `statuses`, the one that runs first first."""
    return list(client.call("list", {"order": "run", "status": list(statuses)})["jobs"])


def show(args: argparse.Namespace, client: Client, out: Output) -> int:
    job = client.call("get", {"id": args.job})["job"]
    children = [] if out.as_json else artist_children(client, job)
    out.emit(job, lambda shown: render.render_job(shown, children))
    return EXIT_OK


def artist_children(client: Client, job: dict[str, Any]) -> list[dict[str, Any]]:
    """An artist job's album jobs, as they are now (one removed since is left out)."""
    children = []
    for child_id in job.get("children") or []:
        try:
            children.append(client.call("get", {"id": child_id})["job"])
        except Refused as refusal:
            if refusal.code != "NOT_FOUND":
                raise
    return [text.printable_doc(child) for child in children]


# --- the rest ----------------------------------------------------------------------


def pause_or_resume(args: argparse.Namespace, client: Client, out: Output) -> int:
    force = getattr(args, "force", False)
    if force and args.job:
        usage(args, "resume --force acts on the whole queue: give no JOB")
    call_args = {"id": args.job} if args.job else {"force": True} if force else {}
    result = client.call(args.command, call_args)
    what = f"job {args.job}" if args.job else "queue"
    out.emit(result, lambda _: f"{what} {'paused' if args.command == 'pause' else 'resumed'}")
    return EXIT_OK


def move(args: argparse.Namespace, client: Client, out: Output) -> int:
    result = client.call("move", {"id": args.job, "to": args.where})
    out.emit(result, lambda r: _position_line(r["job"]))
    return EXIT_OK


def priority(args: argparse.Namespace, client: Client, out: Output) -> int:
    result = client.call("priority", {"id": args.job, "priority": args.level})
    out.emit(result, lambda r: _position_line(r["job"]))
    return EXIT_OK


def _position_line(job: dict[str, Any]) -> str:
    place = job.get("position")
    where = f"runs {_ordinal(place)}" if isinstance(place, int) else "is not in the queue"
    return f"job {job['id']}: {job['priority']} priority, {where}: {render.label(job)}"


def _ordinal(place: int) -> str:
    suffix = "th" if 10 <= place % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(place % 10, "th")
    return f"{place}{suffix}"


def stats(args: argparse.Namespace, client: Client, out: Output) -> int:
    result = client.call("stats")
    out.emit(result, lambda r: render.render_stats(r, time.time()))
    return EXIT_OK


def health(args: argparse.Namespace, client: Client, out: Output) -> int:
    result = client.call("health")
    out.emit(result, render.render_health)
    return EXIT_OK if result["ok"] else EXIT_FAILED


def metrics(args: argparse.Namespace, client: Client, out: Output) -> int:
    result = client.call("metrics")
    if out.as_json:
        out.emit(result["families"], lambda _: "")
    else:
        lines = result["text"].rstrip("\n").split("\n")
        print("\n".join(text.printable(line) for line in lines), flush=True)
    return EXIT_OK


Command = Callable[[argparse.Namespace, Client, Output], int]
COMMANDS: dict[str, Command] = {
    "add": add,
    "ls": ls,
    "show": show,
    "cancel": cancel,
    "retry": retry,
    "rm": rm,
    "pause": pause_or_resume,
    "resume": pause_or_resume,
    "move": move,
    "priority": priority,
    "stats": stats,
    "health": health,
    "metrics": metrics,
}
