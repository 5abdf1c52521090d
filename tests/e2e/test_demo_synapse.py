"""``synkafka demo --with-synapse --quick`` end to end, as a user runs it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import wait_for


def _children_of(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(proc.name))
    return out


def test_demo_with_synapse_quick(tmp_path: Path) -> None:
    before = set(_children_of(os.getpid()))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "adapter",
            "demo",
            "--with-synapse",
            "--quick",
            "--plain",
            "--run-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "lost rows                   0" in run.stdout
    assert "delivered twice             0" in run.stdout
    assert "lag                   0 tokens, 0 messages" in run.stdout
    assert "All 9 checks passed." in run.stdout
    assert set(_children_of(os.getpid())) <= before
    # No process of the run is left: nothing has the run folder on its command line
    # (polled: children reparented at the end may take a moment to exit).
    left: list[str] = []

    def none_left() -> bool:
        left[:] = _run_processes(tmp_path)
        return not left

    with contextlib.suppress(AssertionError):
        wait_for(none_left, 10, "the run's processes to exit")
    assert not left, left


def _run_processes(folder: Path) -> list[str]:
    """Processes with ``folder`` on their command line, as ``pid: cmdline``."""
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(folder) in cmdline:
                left.append(f"{proc.name}: {cmdline}")
    return left
