"""dlqctl: drive dlqd from the shell — readable tables, or `--json` for scripts.

Owns how a run ends. Exit codes: 0 ok; 1 the daemon refused (stderr
`error: CODE: message`), some item of a batch failed, `health` found a
problem, or the followed job did not complete; 2 usage; 3 daemon unreachable
(or its socket not ours to use); 130 interrupted (Ctrl-C); 141 stdout closed
early (`dlqctl ls | head -1`), quietly. Under `--json` an error is also one
JSON document on stdout: `{"error": {"code", "message"}}`.
Imports only dlqd's protocol, codes and model modules and msgpack (no trio,
httpx or structlog), so every command returns quickly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from dlqctl.cli import Parser, build_parser
from dlqctl.client import Client, NotPermitted, Refused, Unreachable
from dlqctl.commands import COMMANDS, Output

EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = 1, 3, 130, 141


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = arguments[: arguments.index("--")] if "--" in arguments else arguments
    try:
        return _run(arguments, "--json" in options)
    except KeyboardInterrupt:  # the user's choice, not an error: no message
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more can be said; stop quietly, and
        # keep Python from complaining when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CLOSED_PIPE


def _run(arguments: list[str], as_json: bool) -> int:
    Parser.json_errors = as_json
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "completion":
        from dlqctl.completion import script  # only this command needs it

        sys.stdout.write(script(parser, args.shell))
        return 0
    path = args.socket or os.environ.get("DLQD_SOCKET") or "/run/dlqd/dlqd.sock"

    def connect() -> Client:
        return Client(path, timeout_s=args.timeout)

    try:
        if args.command == "watch":
            from dlqctl.watch import watch  # the live view's code loads only for watch

            return watch(args, connect)
        with connect() as client:
            return COMMANDS[args.command](args, client, Output(args.json))
    except NotPermitted as exc:
        _report(args.json, "PERMISSION_DENIED", str(exc))
        return EXIT_UNREACHABLE
    except Unreachable as exc:
        _report(args.json, "UNREACHABLE", str(exc))
        return EXIT_UNREACHABLE
    except Refused as exc:
        _report(args.json, exc.code, exc.message, prefix=f"error: {exc.code}: ")
        return EXIT_REFUSED


def _report(as_json: bool, code: str, message: str, prefix: str = "dlqctl: ") -> None:
    """An error on stderr; under --json also `{"error": {...}}` on stdout."""
    from dlqctl.text import printable

    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False))
    print(prefix + printable(message), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
