"""``synkafka demo``: the whole product on local defaults, in one command.

This module wires the local stack to the scenario and owns nothing else: it starts
:class:`~adapter.localstack.LocalStack` (Kafka, and PostgreSQL with ``--postgres``),
picks the database (a SQLite file in the run folder by default), and hands the
addresses to :class:`~adapter.runtime.demo.DemoScenario` with a spawner that starts
children through :class:`~adapter.localstack._process.ManagedProcess` (parent-death
signal, own session, log file). The scenario itself lives in
:mod:`adapter.runtime.demo`; the layers contract keeps the runtime from importing the
local stack, hence the wiring here.

Every process is stopped on the way out, also on Ctrl-C, SIGTERM or SIGHUP: the
scenario stops its children in ``finally`` and the stack stops its services on exit.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from adapter.cli._app import app
from adapter.errors import ServiceError
from adapter.localstack import KAFKA_VERSION, LocalStack
from adapter.localstack._process import ManagedProcess
from adapter.localstack.matrix_client import MatrixTraffic
from adapter.localstack.synapse import SynapseHomeserver
from adapter.runtime.demo import (
    DEFAULT_DURATION_S,
    DEFAULT_ROWS,
    QUICK_DURATION_S,
    QUICK_ROWS,
    ChildProcess,
    DemoScenario,
    DemoSettings,
    Display,
    LiveView,
    PlainView,
)
from adapter.runtime.demo_synapse import (
    DEFAULT_MESSAGES,
    QUICK_MESSAGES,
    SynapseDemo,
    SynapseDemoSettings,
)

__all__ = ["demo"]


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


@app.command()
def demo(
    postgres: Annotated[
        bool,
        typer.Option(
            "--postgres",
            help="Use a local PostgreSQL as Synapse's database (default: SQLite).",
        ),
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help=f"A short run: {QUICK_ROWS} rows over {QUICK_DURATION_S:g} s, "
            "3 s presence expiry (what the test runs).",
        ),
    ] = False,
    rows: Annotated[
        int | None,
        typer.Option(
            "--rows",
            min=50,
            help=f"Rows to write after the history (default {DEFAULT_ROWS}; "
            f"--quick: {QUICK_ROWS}).",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            min=1.0,
            help=f"Seconds the writing takes (default {DEFAULT_DURATION_S:g}; "
            f"--quick: {QUICK_DURATION_S:g}).",
            show_default=False,
        ),
    ] = None,
    presence_expiry: Annotated[
        float | None,
        typer.Option(
            "--presence-expiry",
            min=2.0,
            help="Seconds without a heartbeat before a presence instance expires "
            "(default 5; --quick: 3; Synapse: 300).",
            show_default=False,
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir",
            help="Folder for the JSON lines, the SQLite file and the children's "
            "logs (default: a new temporary folder, kept after the run).",
            show_default=False,
        ),
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option(
            "--live/--plain",
            help="Redraw a live view, or print plain progress lines "
            "(default: live on a terminal).",
            show_default=False,
        ),
    ] = None,
    with_synapse: Annotated[
        bool,
        typer.Option(
            "--with-synapse",
            help="Follow a real Synapse through `synkafka bridge` instead of the "
            "simulated homeserver (Kafka, Redis, Synapse main + worker1; --rows is "
            "then the number of messages, default 300, --quick 60).",
        ),
    ] = False,
) -> None:
    """Run the main job on 127.0.0.1 and print a summary; exit 1 if a check fails.

    Starts a local Kafka (and PostgreSQL with --postgres), a simulated Synapse
    homeserver writing several streams (two writers on events), `synkafka consume`
    with --db and --output, and two `synkafka presence track` instances. Midway it
    stops the consumer (SIGTERM), keeps writing and restarts it, so the gap is
    backfilled from the database; it stops one presence instance (clear) and kills
    the other (expiry). The summary compares the database with the JSON lines:
    lost rows and lag must be zero.
    """
    if with_synapse:
        _demo_with_synapse(
            postgres=postgres, quick=quick, messages=rows, run_dir=run_dir, live=live
        )
        return
    started = time.monotonic()
    folder = run_dir or Path(tempfile.mkdtemp(prefix="synkafka-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    display: Display = (
        LiveView(sys.stdout)
        if (live if live is not None else sys.stdout.isatty())
        else PlainView(sys.stdout, interval_s=2.0 if quick else 3.0)
    )
    say = typer.echo
    say(
        f"synkafka demo: Apache Kafka {KAFKA_VERSION}, "
        f"{'PostgreSQL' if postgres else 'SQLite'}, all on 127.0.0.1; files in {folder}"
    )
    try:
        with (
            _stop_signals_interrupt(),
            LocalStack(kafka=True, postgres=postgres, progress=say) as stack,
        ):
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
            report = DemoScenario(settings, _spawn, display).run()
    except KeyboardInterrupt:
        # The scenario and LocalStack.__exit__ have already stopped every process.
        typer.echo("Interrupted; every process was stopped.", err=True)
        raise typer.Exit(code=130) from None
    say("")
    for line in report.lines():
        say(line)
    say(
        f"Stopped everything; the demo took {time.monotonic() - started:.1f} s "
        "(local services included)."
    )
    if not report.ok:
        raise typer.Exit(code=1)


def _demo_with_synapse(
    *,
    postgres: bool,
    quick: bool,
    messages: int | None,
    run_dir: Path | None,
    live: bool | None,
) -> None:
    """The ``--with-synapse`` run: see :mod:`adapter.runtime.demo_synapse`."""
    started = time.monotonic()
    folder = run_dir or Path(tempfile.mkdtemp(prefix="synkafka-demo-synapse-"))
    folder.mkdir(parents=True, exist_ok=True)
    display: Display = (
        LiveView(sys.stdout)
        if (live if live is not None else sys.stdout.isatty())
        else PlainView(sys.stdout)
    )
    say = typer.echo
    engine = "PostgreSQL" if postgres else "SQLite"
    say(
        f"synkafka demo --with-synapse: Apache Kafka {KAFKA_VERSION}, Redis, a real "
        f"Synapse (main + worker1) on {engine}, all on 127.0.0.1; files in {folder}"
    )
    try:
        with (
            _stop_signals_interrupt(),
            LocalStack(
                kafka=True, redis=True, postgres=postgres, progress=say
            ) as stack,
        ):
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
                say(
                    f"Synapse: main {hs.client_url} and worker1 "
                    f"{hs.worker_client_url} ready in {time.monotonic() - hs_started:.1f} s."
                )
                dsn = db_dsn or f"sqlite:///{hs.sqlite_path}"
                settings = SynapseDemoSettings(
                    demo=DemoSettings(
                        bootstrap=stack.kafka.bootstrap_servers,
                        dsn=dsn,
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
                report = SynapseDemo(settings, _spawn, display, traffic).run()
    except KeyboardInterrupt:
        typer.echo("Interrupted; every process was stopped.", err=True)
        raise typer.Exit(code=130) from None
    say("")
    for line in report.lines():
        say(line)
    say(
        f"Stopped everything; the demo took {time.monotonic() - started:.1f} s "
        "(local services and Synapse included)."
    )
    if not report.ok:
        raise typer.Exit(code=1)
