"""Failures as a user meets them: configuration errors, an unreachable broker, floods.

Each command runs as a real process. Configuration errors must end it at once with
one line; an unreachable broker must end a one-shot command within its timeout with
one line naming the bootstrap servers; nothing prints librdkafka's raw log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from adapter.localstack._process import free_port


def run(
    *args: str, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``synkafka *args``; return the result and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SYNKAFKA_METRICS_PORT": "-1"},
        check=False,
    )
    return done, time.monotonic() - started


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting there is only one)."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("synkafka: error: "), done.stderr
    # A configuration or runtime failure, never a crash (1) or success (0).
    assert done.returncode not in (0, 1), done.stderr
    return lines[0]


BAD_CONFIGS = [
    (
        ["-X", "no.such.property=1"],
        'No such configuration property: "no.such.property"',
    ),
    (["-X", "fetch.max.bytes=notanumber"], '"fetch.max.bytes"'),
    (["-b", "notahost::::"], "'notahost::::' is not host:port"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_CONFIGS)
@pytest.mark.parametrize(
    "command",
    [
        ["consume", "--no-progress"],
        ["bridge", "--redis", "redis://127.0.0.1:1", "--server-name", "cfg.test"],
        ["topics", "ensure"],
        ["lag"],
    ],
    ids=["consume", "bridge", "topics-ensure", "lag"],
)
def test_configuration_errors_end_every_command_at_once_with_one_line(
    command: list[str], flags: list[str], message: str
) -> None:
    # Nothing listens there: a command that tried to connect would wait, not exit.
    dead = f"127.0.0.1:{free_port()}"
    args = [*command, "-b", dead, *flags]
    done, took = run(*args)
    line = one_error_line(done)
    assert message in line
    # Startup (imports) is most of it; a retry loop would take 20 s or more.
    assert took < 15, f"{args} took {took:.1f} s"
