"""The demo's child processes: ``synkafka consume`` and ``synkafka presence track``.

Every child is started through the injected :data:`Spawn` (the CLI passes
:class:`~adapter.devstack.services._process.ManagedProcess`, which sets the
parent-death signal), so the scenario can be driven with fakes as well.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from adapter.core.errors import ServiceError
from adapter.devstack.demo.settings import CONSUMER_NAME, DemoSettings
from adapter.devstack.services._process import free_port, log_tail

__all__ = [
    "ChildProcess",
    "ConsumerChild",
    "PresenceChild",
    "Spawn",
    "raise_if_exited",
    "stop_each",
    "stopper",
]

_DROPPED_RE: Final = re.compile(r"^synkafka_rows_dropped_total\{([^}]*)\}\s+(\S+)")


class ChildProcess(Protocol):
    """A child process the demo started (``ManagedProcess`` fits)."""

    @property
    def pid(self) -> int:
        """The process id."""
        ...

    @property
    def returncode(self) -> int | None:
        """The exit code, or ``None`` while it runs."""
        ...

    def running(self) -> bool:
        """Whether it still runs."""
        ...

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; return the exit code."""
        ...

    def kill(self) -> int:
        """SIGKILL at once; return the exit code."""
        ...


Spawn = Callable[[Sequence[str], Path, str], ChildProcess]
"""Start ``argv`` with stdout and stderr appended to a log file; ``name`` labels it."""


class ConsumerChild:
    """``synkafka consume`` as a child process, with its /metrics and /ready.

    Args:
        spawn: starts processes.
        settings: the demo's settings.
        output: the JSON lines file.
    """

    def __init__(self, spawn: Spawn, settings: DemoSettings, output: Path) -> None:
        self._spawn = spawn
        self._settings = settings
        self._output = output
        self.process: ChildProcess | None = None
        self.port = 0
        self.runs = 0
        self.exit_codes: list[int] = []
        self.dropped_by_run: dict[int, int] = {}
        self.log_path = settings.run_dir / "consumer.log"

    def argv(self) -> list[str]:
        """The command line (also shown to the user)."""
        s = self._settings
        argv = [
            s.python,
            "-m",
            "adapter",
            "consume",
            "--bootstrap-servers",
            s.bootstrap,
            "--server-name",
            s.server_name,
            "--instance-name",
            CONSUMER_NAME,
            "--db",
            s.dsn,
            "--output",
            str(self._output),
            "--metrics-port",
            str(self.port),
            "--commit-interval",
            "0.5",
            "--no-progress",
            "--log-level",
            "WARNING",
        ]
        for stream in s.streams:
            argv += ["--stream", stream]
        return argv

    def start(self) -> None:
        """Start a new run on a fresh metrics port."""
        self.port = free_port()
        self.runs += 1
        self.process = self._spawn(self.argv(), self.log_path, "consume")

    def running(self) -> bool:
        """Whether the current run is alive."""
        return self.process is not None and self.process.running()

    def check_alive(self) -> None:
        """Raise if the current run exited without being stopped.

        Raises:
            ServiceError: it exited; the message holds the tail of its log.
        """
        raise_if_exited(self.process, "synkafka consume", self.log_path)

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (urllib.error.URLError, OSError):
            return 0, ""

    def ready(self) -> bool:
        """Whether /ready says caught up on every stream it set up.

        An empty ``streams`` map means the consumer has not set up yet (``/ready``
        answers 200 then as well), so it does not count as ready here.
        """
        if not self.running():
            return False
        status, body = self._get("/ready")
        if status != 200:
            return False
        try:
            doc = json.loads(body)
        except ValueError:
            return False
        return bool(doc.get("ready")) and bool(doc.get("streams"))

    def scrape_dropped(self) -> None:
        """Record this run's ``synkafka_rows_dropped_total{reason="duplicate"}``."""
        status, text = self._get("/metrics")
        if status != 200:
            return
        total = 0.0
        for line in text.splitlines():
            m = _DROPPED_RE.match(line)
            if m and 'reason="duplicate"' in m.group(1):
                total += float(m.group(2))
        self.dropped_by_run[self.runs] = int(total)

    @property
    def dropped(self) -> int:
        """Duplicates dropped over every run (as last scraped)."""
        return sum(self.dropped_by_run.values())

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the current run; return its exit code."""
        if self.process is None:
            return None
        self.scrape_dropped()
        code = self.process.stop(timeout_s)
        self.exit_codes.append(code)
        self.process = None
        return code


@dataclass(slots=True)
class PresenceChild:
    """One ``synkafka presence track`` process and what became of it.

    Attributes:
        name: its instance name (``sync1``...).
        users: the users it holds syncs open for.
        process: the child.
        log_path: its stdout and stderr.
        instance_id: the random ID it announced.
        stopped_at: when it got SIGTERM or SIGKILL (monotonic).
        how: ``SIGTERM`` or ``SIGKILL`` once stopped.
        exit_code: its exit code once stopped.
        gone_after_s: seconds from the signal until the presence writer dropped it.
        cleared: whether it reported its clear as acknowledged.
    """

    name: str
    users: tuple[str, ...]
    process: ChildProcess
    log_path: Path
    instance_id: str | None = None
    stopped_at: float | None = None
    how: str | None = None
    exit_code: int | None = None
    gone_after_s: float | None = None
    cleared: bool = False

    @classmethod
    def start(
        cls,
        spawn: Spawn,
        settings: DemoSettings,
        name: str,
        localparts: Sequence[str],
        heartbeat_s: float,
    ) -> PresenceChild:
        """Start ``synkafka presence track`` as ``name`` for ``@<localpart>:<server>``."""
        users = tuple(f"{u}:{settings.server_name}" for u in localparts)
        argv = [settings.python, "-m", "adapter", "presence", "track"]
        for user in users:
            argv += ["--user", user]
        argv += [
            "--device",
            "PHONE",
            "--instance-name",
            name,
            "--heartbeat-interval",
            str(heartbeat_s),
            "--debounce",
            "0.05",
            "--stop-delay",
            "0",
            "--server-name",
            settings.server_name,
            "--bootstrap-servers",
            settings.bootstrap,
        ]
        log = settings.run_dir / f"presence-{name}.log"
        return cls(name, users, spawn(argv, log, f"presence-{name}"), log)

    def read_log(self) -> None:
        """Pick up the instance ID and the clear from the child's JSON lines."""
        try:
            lines = self.log_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if "instance_id" in doc and self.instance_id is None:
                    self.instance_id = str(doc["instance_id"])
                if "cleared" in doc:
                    self.cleared = True


def raise_if_exited(process: ChildProcess | None, what: str, log_path: Path) -> None:
    """Raise if ``process`` (started, not yet stopped) is no longer running.

    Raises:
        ServiceError: it exited; the message holds the tail of its log.
    """
    if process is not None and not process.running():
        raise ServiceError(
            f"{what} exited with {process.returncode}:\n{log_tail(log_path, 15)}"
        )


def stop_each(
    steps: Sequence[tuple[str, Callable[[], object]]],
    failed: Callable[[str, Exception], None],
) -> None:
    """Run every ``(name, stop)`` step; one that raises does not keep the rest from running.

    Args:
        steps: what to stop, in order.
        failed: told the name of a step that raised, and what it raised.
    """
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - each part is stopped even if another one fails
            failed(name, exc)


def stopper(process: ChildProcess, timeout_s: float = 10.0) -> Callable[[], object]:
    """A stop step for :func:`stop_each`: SIGTERM ``process`` if it still runs."""

    def stop() -> object:
        return process.stop(timeout_s) if process.running() else None

    return stop
