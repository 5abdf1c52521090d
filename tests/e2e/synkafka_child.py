"""One ``synkafka`` command as a restartable child process, for the e2e tests."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from adapter.devstack.services._process import ManagedProcess, free_port, log_tail
from tests.integration.harness import wait_for

__all__ = ["START_TIMEOUT_S", "SynkafkaChild"]

START_TIMEOUT_S = 60.0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class SynkafkaChild:
    """One ``synkafka`` command as a child process, restartable, log appended.

    Runs under :class:`ManagedProcess`, so it dies with the test run even on SIGKILL.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.metrics_port = free_port()
        self._argv = [
            sys.executable,
            "-m",
            "adapter",
            *argv,
            "--metrics-port",
            str(self.metrics_port),
        ]
        self.log_path = log_path
        self.process: ManagedProcess | None = None
        self.exit_codes: list[int] = []

    def start(self) -> None:
        self.process = ManagedProcess(
            self._argv, log_path=self.log_path, name=f"synkafka {self.name}"
        )

    def alive(self) -> None:
        """Fail the test at once, with the log's tail, if the child exited."""
        process = self.process
        assert process is not None
        code = process.returncode
        assert code is None, (
            f"synkafka {self.name} exited with {code}:\n{log_tail(self.log_path)}"
        )

    def ready(self) -> bool:
        """``/ready`` answers 200 (and the child still runs)."""
        self.alive()
        return _http_ok(f"http://127.0.0.1:{self.metrics_port}/ready")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        started = time.monotonic()
        wait_for(self.ready, timeout_s, f"synkafka {self.name} /ready")
        return time.monotonic() - started

    def samples(self, name: str, **labels: str) -> dict[str, float]:
        """``name``'s non-zero samples on ``/metrics`` that carry ``labels``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        found: dict[str, float] = {}
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample.partition("{")[0] != name or float(value or 0) == 0:
                continue
            if all(w in sample for w in wanted):
                found[sample] = float(value)
        return found

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples on ``/metrics`` that carry ``labels``."""
        return sum(self.samples(name, **labels).values())

    def kill(self) -> None:
        assert self.process is not None
        self.exit_codes.append(self.process.kill())
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.exit_codes.append(self.process.stop(30))
            self.process = None
