"""``synkafka demo --quick`` end to end, as a user runs it: a real subprocess.

The demo starts Kafka, a consumer subprocess and two presence subprocesses. Every
process it starts inherits a marker in its environment, so the test can find any
survivor in ``/proc`` after the demo exited, whoever its parent is now.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

_MARKER = "SYNKAFKA_DEMO_TEST_RUN"


def _marked_processes(token: str) -> list[tuple[int, str]]:
    """``(pid, command line)`` of live processes whose environment holds the marker."""
    needle = f"{_MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or a zombie
            continue
        if needle in environ.split(b"\0"):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode()))
    return found


@pytest.mark.timeout(240)
def test_demo_quick_run_loses_nothing_and_leaves_no_process(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    env = {**os.environ, _MARKER: token}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "adapter",
            "demo",
            "--quick",
            "--run-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    elapsed = time.monotonic() - started
    out = result.stdout
    print(out)
    print(result.stderr, file=sys.stderr)
    print(f"demo --quick took {elapsed:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]

    assert re.search(r"^\s+lost rows\s+0\s", out, re.MULTILINE), out
    assert re.search(r"^\s+lag\s+0 tokens, 0 messages$", out, re.MULTILINE), out
    assert re.search(r"^\s+delivered twice\s+0$", out, re.MULTILINE), out
    backfill = re.search(r"^\s+rows from backfill\s+(\d+)", out, re.MULTILINE)
    assert backfill is not None, out
    assert int(backfill.group(1)) > 0, out
    assert re.search(r"^All \d+ checks passed\.$", out, re.MULTILINE), out
    # Off a terminal the view prints plain lines, never ANSI cursor movement.
    assert "\x1b[" not in out
    assert (tmp_path / "consumer.jsonl").stat().st_size > 0

    # Every child is gone: poll briefly, in case the kernel is still reaping.
    deadline = time.monotonic() + 10.0
    survivors = _marked_processes(token)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = _marked_processes(token)
    assert survivors == [], survivors
