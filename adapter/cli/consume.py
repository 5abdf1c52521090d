"""``synkafka consume``: follow replication streams and hand every row to a handler."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from adapter.cli._app import app
from adapter.cli.common import (
    DbPasswordFileOpt,
    InstanceOpt,
    LogLevelOpt,
    MetricsHostOpt,
    MetricsPortOpt,
    PrefixOpt,
    ServerNameOpt,
    db_dsn,
    resolve_prefix,
    setup_logging,
    with_kafka_options,
)
from adapter.core.catchup import CatchUp, StartFrom
from adapter.core.config import KafkaSettings
from adapter.core.errors import ConfigError
from adapter.core.ports import Handler
from adapter.core.rows import STREAM_NAMES
from adapter.io.metrics import default_metrics
from adapter.runtime import interpreter
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.consumer import ConsumerOptions, ReplicationConsumer
from adapter.runtime.db_probe import DatabaseProbe
from adapter.runtime.health import Check, HealthServer
from adapter.runtime.progress import ProgressReporter
from adapter.runtime.sinks import JsonLinesSink, load_handler
from adapter.runtime.stream_worker import HandlerPolicy

__all__ = ["consume", "install_stop_signals"]


def install_stop_signals(stop: threading.Event) -> None:
    """Make SIGTERM and SIGINT set ``stop`` (a second SIGINT interrupts hard)."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


@app.command()
@with_kafka_options
def consume(
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    instance_name: InstanceOpt = "",
    stream: Annotated[
        list[str] | None,
        typer.Option(
            "--stream", "-s", help="Streams to follow (repeatable; default: all)."
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="SYNKAFKA_DB",
            help="Synapse's database for backfill: postgresql://..., a libpq key=value string or sqlite:///path.",
            show_default=False,
        ),
    ] = None,
    db_password_file: DbPasswordFileOpt = None,
    start_from: Annotated[
        StartFrom,
        typer.Option(
            "--from",
            help="committed: resume and backfill; latest: start at the head; "
            "earliest: replay what Kafka holds.",
        ),
    ] = "committed",
    catch_up: Annotated[
        CatchUp,
        typer.Option(
            "--catch-up",
            help="How a resumed consumer with --db reads what it missed. database: "
            "the latest state from the database, as Synapse does (updates the "
            "database replaced or deleted meanwhile are not delivered); kafka: every "
            "update Kafka holds from the committed offset, and from the database only "
            "the tokens Kafka lacks.",
        ),
    ] = "database",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Append JSON lines to this file instead of stdout; a regular file is "
            "resumed exactly once (a line cut by a kill is removed).",
        ),
    ] = None,
    handler: Annotated[
        str | None,
        typer.Option(
            "--handler", help="Call module:function per update instead of JSON lines."
        ),
    ] = None,
    on_handler_error: Annotated[
        HandlerPolicy,
        typer.Option(
            "--on-handler-error",
            help="stop: exit without committing past the failing update; "
            "dead-letter: write it to the dead-letter topic and go on.",
        ),
    ] = "stop",
    metrics_port: MetricsPortOpt = 9466,
    metrics_host: MetricsHostOpt = "127.0.0.1",
    commit_interval: Annotated[
        float,
        typer.Option("--commit-interval", min=0.05, help="Seconds between commits."),
    ] = 1.0,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress on stderr.")
    ] = True,
    log_level: LogLevelOpt = "INFO",
    *,
    kafka: KafkaSettings,
) -> None:
    """Follow replication streams and hand every new row to a handler.

    Resumes from the committed POSITION; with --db, reads what it missed as --catch-up says. Rows go to stdout as JSON lines unless --output or --handler says otherwise.
    Delivery: a regular --output file holds each update (stream, writer, token) once, also after crashes. stdout and --handler are at least once: after a crash the updates after the last commit come again, so key a handler on (stream, writer, token).
    SIGTERM or Ctrl-C finishes in-flight handlers, commits, logs what it committed and exits 0.
    """
    setup_logging(log_level)
    instance_name = instance_name or f"consumer-{socket.gethostname()}"
    streams = tuple(stream or STREAM_NAMES)
    unknown = sorted(set(streams) - set(STREAM_NAMES))
    if unknown:
        raise ConfigError(f"unknown stream(s): {', '.join(unknown)}")
    settings = kafka
    sink: Handler
    json_sink: JsonLinesSink | None = None
    if handler is not None:
        sink = load_handler(handler)
    else:
        json_sink = JsonLinesSink.open(output) if output else JsonLinesSink(sys.stdout)
        sink = json_sink
    metrics = default_metrics()
    options = ConsumerOptions(
        prefix=resolve_prefix(prefix, server_name),
        instance_name=instance_name,
        streams=streams,
        start_from=start_from,
        catch_up=catch_up,
        commit_interval_s=commit_interval,
        handler_policy=on_handler_error,
    )
    dsn = db_dsn(db, db_password_file) if db is not None else None
    consumer = ReplicationConsumer(
        settings,
        options,
        sink,
        open_reader=(lambda: DatabaseReader(dsn)) if dsn else None,
        metrics=metrics,
        before_commit=json_sink.sync if json_sink is not None else None,
    )
    stop = threading.Event()
    install_stop_signals(stop)
    server = None
    if metrics_port >= 0:
        server = HealthServer(
            metrics.registry,
            alive=lambda: Check(not stop.is_set(), "stopping"),
            broker=lambda: Check(consumer.broker_up, "no broker connection"),
            ready=consumer.caught_up,
            dependencies={"database": consumer.database.check} if dsn else None,
            host=metrics_host,
            port=metrics_port,
        )
        server.start()
    reporter = ProgressReporter(consumer.progress) if progress else None
    if reporter is not None:
        reporter.start()
    # /health then reflects the database between backfills too.
    probe = DatabaseProbe(dsn, consumer.database) if dsn and server else None
    if probe is not None:
        probe.start()
    try:
        # This command owns the process, so it may tune the interpreter for the
        # consumer's threads (see adapter.runtime.interpreter).
        with interpreter.tuned():
            consumer.run(stop)
    finally:
        if probe is not None:
            probe.stop()
        if reporter is not None:
            reporter.stop()
        if server is not None:
            server.stop()
        if json_sink is not None:
            json_sink.close()
