"""dlqctl stays small and quick: it must not pull in the daemon's heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys


def test_dlqctl_imports_neither_trio_nor_httpx_nor_structlog() -> None:
    probe = (
        "import json, sys, dlqctl.__main__, dlqctl.watch, dlqctl.completion; "
        "print(json.dumps(sorted(m for m in ('trio', 'httpx', 'httpcore', 'structlog', "
        "'mutagen', 'apprise') if m in sys.modules)))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output) == []


def test_dlqctl_uses_only_the_shared_protocol_codes_and_model_of_dlqd() -> None:
    probe = (
        "import json, sys, dlqctl.__main__, dlqctl.watch, dlqctl.completion; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dlqd'))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    # dlqd.rates comes with the model: plain arithmetic over the standard library.
    shared = {"dlqd", "dlqd.protocol", "dlqd.codes", "dlqd.model", "dlqd.rates"}
    assert set(json.loads(output)) <= shared
