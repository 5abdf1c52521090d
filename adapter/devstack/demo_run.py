"""What ``synkafka demo`` runs: the local stack wired to the scenario.

Loaded only when the demo runs (:mod:`adapter.cli.demo` declares the command), so no
other command imports the local stack, the scenarios or the writer simulator.

This module wires the local stack to the scenario and owns nothing else: it starts
:class:`~adapter.devstack.services.LocalStack` (Kafka, and PostgreSQL with ``--postgres``),
picks the database (a SQLite file in the run folder by default), and hands the
addresses to :class:`~adapter.devstack.demo.DemoScenario` with a spawner that starts
children through :class:`~adapter.devstack.services._process.ManagedProcess` (parent-death
signal, own session, log file). The scenarios themselves live in
:mod:`adapter.devstack.demo` and :mod:`adapter.devstack.demo_synapse` and start
nothing but their children, so the wiring is here.

Every process is stopped on the way out, also on Ctrl-C, SIGTERM or SIGHUP: the
scenario stops its children in ``finally`` and the stack stops its services on exit.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Protocol

from adapter.cli.demo_sizes import (
    DEFAULT_DURATION_S,
    DEFAULT_MESSAGES,
    DEFAULT_ROWS,
    QUICK_DURATION_S,
    QUICK_MESSAGES,
    QUICK_ROWS,
)
from adapter.core.errors import ServiceError
from adapter.devstack.demo import (
    ChildProcess,
    DemoScenario,
    DemoSettings,
    Display,
    LiveView,
    PlainView,
)
from adapter.devstack.demo_synapse import SynapseDemo, SynapseDemoSettings
from adapter.devstack.services import KAFKA_VERSION, LocalStack
from adapter.devstack.services._process import ManagedProcess
from adapter.devstack.services.matrix_client import MatrixTraffic
from adapter.devstack.services.synapse import SynapseHomeserver

__all__ = ["run_simulated", "run_with_synapse"]


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """Make SIGTERM/SIGHUP behave like Ctrl-C, so everything is stopped in order."""
    previous = {
        s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _spawn(argv: Sequence[str], log_path: Path, name: str) -> ChildProcess:
    return ManagedProcess(
        argv, log_path=log_path, name=name, env={"PYTHONUNBUFFERED": "1"}
    )


def _say(line: str) -> None:
    # The demo reports on stdout as it goes; flush so a pipe sees each line at once.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Summary(Protocol):
    """A finished run's report (both scenarios' reports fit)."""

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        ...

    def lines(self) -> list[str]:
        """The summary, ready to print."""
        ...


def _folder(run_dir: Path | None, prefix: str) -> Path:
    """The run folder: ``--run-dir``, or a new temporary one."""
    folder = run_dir or Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _display(live: bool | None, interval_s: float) -> Display:
    """The live view on a terminal (or with ``--live``), plain lines otherwise."""
    if live if live is not None else sys.stdout.isatty():
        return LiveView(sys.stdout)
    return PlainView(sys.stdout, interval_s=interval_s)


def _run_and_summarise(
    run: Callable[[], _Summary], started: float, what_started: str
) -> int:
    """Run a scenario with SIGTERM/SIGHUP as Ctrl-C, print its summary; the exit code.

    Args:
        run: starts the services and the scenario, stops them, returns the report.
        started: when the demo started (monotonic), for the last line.
        what_started: what besides the scenario the elapsed time includes.
    """
    try:
        with _stop_signals_interrupt():
            report = run()
    except KeyboardInterrupt:
        # The scenario and LocalStack.__exit__ have already stopped every process.
        sys.stderr.write("Interrupted; every process was stopped.\n")
        return 130
    _say("")
    for line in report.lines():
        _say(line)
    _say(
        f"Stopped everything; the demo took {time.monotonic() - started:.1f} s "
        f"({what_started} included)."
    )
    return 0 if report.ok else 1


def run_simulated(
    *,
    postgres: bool,
    quick: bool,
    rows: int | None,
    duration: float | None,
    presence_expiry: float | None,
    run_dir: Path | None,
    live: bool | None,
) -> int:
    """The default run, a simulated homeserver (see :mod:`adapter.devstack.demo`); returns the exit code."""
    started = time.monotonic()
    folder = _folder(run_dir, "synkafka-demo-")
    display = _display(live, 2.0 if quick else 3.0)
    _say(
        f"synkafka demo: Apache Kafka {KAFKA_VERSION}, "
        f"{'PostgreSQL' if postgres else 'SQLite'}, all on 127.0.0.1; files in {folder}"
    )

    def run() -> _Summary:
        with LocalStack(kafka=True, postgres=postgres, progress=_say) as stack:
            if stack.kafka is None:
                raise ServiceError("the local Kafka broker did not start")
            if stack.postgres is not None:
                dsn = stack.postgres.create_database("synapse_demo")
            else:
                db_file = (folder / "homeserver.db").resolve()
                for old in (db_file, *folder.glob("homeserver.db-*")):
                    old.unlink(missing_ok=True)  # a reused --run-dir starts empty
                dsn = f"sqlite:///{db_file}"
            settings = DemoSettings(
                bootstrap=stack.kafka.bootstrap_servers,
                dsn=dsn,
                run_dir=folder,
                python=sys.executable,
                rows=rows or (QUICK_ROWS if quick else DEFAULT_ROWS),
                duration_s=duration
                or (QUICK_DURATION_S if quick else DEFAULT_DURATION_S),
                presence_expiry_s=presence_expiry or (3.0 if quick else 5.0),
            )
            return DemoScenario(settings, _spawn, display).run()

    return _run_and_summarise(run, started, "local services")


def run_with_synapse(
    *,
    postgres: bool,
    quick: bool,
    messages: int | None,
    run_dir: Path | None,
    live: bool | None,
) -> int:
    """The ``--with-synapse`` run (see :mod:`adapter.devstack.demo_synapse`); returns the exit code."""
    started = time.monotonic()
    folder = _folder(run_dir, "synkafka-demo-synapse-")
    display = _display(live, 3.0)
    engine = "PostgreSQL" if postgres else "SQLite"
    _say(
        f"synkafka demo --with-synapse: Apache Kafka {KAFKA_VERSION}, Redis, a real "
        f"Synapse (main + worker1) on {engine}, all on 127.0.0.1; files in {folder}"
    )

    def run() -> _Summary:
        with LocalStack(
            kafka=True, redis=True, postgres=postgres, progress=_say
        ) as stack:
            if stack.kafka is None or stack.redis is None:
                raise ServiceError("the local Kafka broker or Redis did not start")
            db_dsn = (
                stack.postgres.create_database("synapse_demo")
                if stack.postgres is not None
                else None
            )
            synapse_dir = folder / "synapse"
            if synapse_dir.exists():  # a reused --run-dir starts with a new homeserver
                shutil.rmtree(synapse_dir)
            synapse_dir.mkdir()
            hs_started = time.monotonic()
            with SynapseHomeserver(
                stack.redis.url,
                database_dsn=db_dsn,
                with_worker=True,
                server_name="demo.local",
                run_dir=synapse_dir,
            ) as hs:
                hs.start()
                _say(
                    f"Synapse: main {hs.client_url} and worker1 "
                    f"{hs.worker_client_url} ready in {time.monotonic() - hs_started:.1f} s."
                )
                settings = SynapseDemoSettings(
                    demo=DemoSettings(
                        bootstrap=stack.kafka.bootstrap_servers,
                        dsn=db_dsn or f"sqlite:///{hs.sqlite_path}",
                        run_dir=folder,
                        python=sys.executable,
                        server_name=hs.server_name,
                    ),
                    redis_url=stack.redis.url,
                    messages=messages
                    or (QUICK_MESSAGES if quick else DEFAULT_MESSAGES),
                )
                traffic = MatrixTraffic(
                    hs.client_url,
                    hs.worker_client_url or hs.client_url,
                    hs.registration_shared_secret,
                )
                return SynapseDemo(settings, _spawn, display, traffic).run()

    return _run_and_summarise(run, started, "local services and Synapse")
