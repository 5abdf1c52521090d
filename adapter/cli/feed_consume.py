"""``synkafka feed-consume``: read the event feed as one member of a consumer group."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from adapter.cli._app import app
from adapter.cli.common import (
    LogLevelOpt,
    MetricsHostOpt,
    MetricsPortOpt,
    PrefixOpt,
    ServerNameOpt,
    reach_kafka,
    resolve_prefix,
    setup_logging,
    with_kafka_options,
)
from adapter.cli.consume import install_stop_signals
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.errors import ConfigError
from adapter.io.kafka.group_consumer import GroupConsumer, Message, RebalanceListener
from adapter.io.metrics import Metrics, default_metrics
from adapter.runtime import interpreter
from adapter.runtime.dead_letter_writer import DeadLetterWriter
from adapter.runtime.feed_handling import FeedHandler, FeedJsonLines
from adapter.runtime.feed_reader import DeadLetter, FeedReader, FeedReaderOptions
from adapter.runtime.health import Check, HealthServer
from adapter.runtime.sinks import load_handler

__all__ = ["feed_consume"]


@app.command("feed-consume")
@with_kafka_options
def feed_consume(
    group: Annotated[
        str,
        typer.Option(
            "--group",
            "-g",
            help="The reader group's name; members started with the same name split "
            "the feed's partitions (consumer group <prefix>.feed-reader.NAME).",
            show_default=False,
        ),
    ],
    handler: Annotated[
        str | None,
        typer.Option(
            "--handler",
            help="Call module:function (plain or async) with each event "
            "(adapter.core.feed.FeedEvent) instead of writing JSON lines.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Append JSON lines to this file instead of stdout."
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            min=1,
            help="Rooms handled at once; one room's events always run one at a time.",
        ),
    ] = 8,
    on_handler_error: Annotated[
        Literal["stop", "dead-letter"],
        typer.Option(
            "--on-handler-error",
            help="stop: exit 1 without committing past the failing event; "
            "dead-letter: write it to the dead-letter topic and go on.",
        ),
    ] = "stop",
    handler_retries: Annotated[
        int,
        typer.Option(
            "--handler-retries", min=1, help="Attempts before --on-handler-error."
        ),
    ] = 5,
    start: Annotated[
        Literal["earliest", "latest"],
        typer.Option(
            "--from",
            help="Where a partition the group never committed starts: earliest or "
            "latest.",
        ),
    ] = "earliest",
    session_timeout: Annotated[
        float,
        typer.Option(
            "--session-timeout",
            min=1.0,
            help="Seconds after which the group gives a silent (killed) member's "
            "partitions to the others; the broker allows 6 to 1800 by default.",
        ),
    ] = 45.0,
    commit_interval: Annotated[
        float,
        typer.Option("--commit-interval", min=0.05, help="Seconds between commits."),
    ] = 1.0,
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    metrics_port: MetricsPortOpt = 9470,
    metrics_host: MetricsHostOpt = "127.0.0.1",
    log_level: LogLevelOpt = "INFO",
    *,
    kafka: KafkaSettings,
) -> None:
    """Read <prefix>.feed.events as one member of a consumer group.

    Members started with the same --group split the feed's partitions
    (cooperative-sticky); one that stops or dies has its partitions moved to the
    others. Each room's events reach the handler one at a time, in feed order;
    different rooms run concurrently (--concurrency). Offsets are committed only
    past events whose handler finished, so delivery is at least once: after a crash
    the events handled since the last commit come again (key a handler on
    event_id). SIGTERM or Ctrl-C finishes running handlers, commits and exits 0.
    """
    if handler is not None and output is not None:
        raise ConfigError("--handler and --output exclude each other")
    setup_logging(log_level)
    resolved = resolve_prefix(prefix, server_name)
    group_id = topics.feed_reader_group(resolved, group)
    feed_topic = topics.feed_topic(resolved)
    admin = reach_kafka(kafka, 15.0)
    if not admin.describe_topics([feed_topic])[feed_topic].exists:
        raise ConfigError(
            f"{feed_topic} does not exist: `synkafka feed` creates it when it starts"
        )
    sink = _sink(handler, output)
    metrics = default_metrics()
    stop = threading.Event()
    install_stop_signals(stop)
    dead_letters = DeadLetterWriter(
        kafka,
        resolved,
        client_id=f"synkafka-feed-reader-{group}-dlq",
        metrics=metrics,
        stop=stop,
    )

    def open_consumer(
        listener: RebalanceListener, on_stats: Callable[[dict[str, object]], None]
    ) -> GroupConsumer:
        return GroupConsumer(
            kafka,
            group_id,
            feed_topic,
            listener,
            start=start,
            session_timeout_s=session_timeout,
            client_id=f"synkafka-feed-reader-{group}",
            on_stats=on_stats,
        )

    reader = FeedReader(
        open_consumer,
        sink,
        _dead_letter(dead_letters, group_id),
        FeedReaderOptions(
            concurrency=concurrency,
            policy="dead-letter" if on_handler_error == "dead-letter" else "stop",
            handler_retries=handler_retries,
            commit_interval_s=commit_interval,
        ),
        metrics,
    )
    server = _health(metrics, reader, stop, metrics_host, metrics_port)
    try:
        with interpreter.tuned():
            reader.run(stop)
    finally:
        dead_letters.close()
        if server is not None:
            server.stop()
        if isinstance(sink, FeedJsonLines):
            sink.close()


def _sink(handler: str | None, output: Path | None) -> FeedHandler:
    if handler is not None:
        loaded: FeedHandler = load_handler(handler)  # type: ignore[assignment]
        return loaded
    if output is not None:
        return FeedJsonLines.open(str(output))
    return FeedJsonLines(sys.stdout)


def _dead_letter(writer: DeadLetterWriter, group_id: str) -> DeadLetter:
    def write(message: Message, reason: str) -> None:
        topic = message.topic() or ""
        partition, offset = message.partition() or 0, message.offset() or 0
        raw = message.headers() or []
        raw_headers = raw.items() if isinstance(raw, dict) else raw
        writer.write(
            message.value(),
            key=message.key(),
            reason=reason,
            source=f"feed-reader:{group_id}",
            location={"topic": topic, "partition": partition, "offset": offset},
            headers=[
                ("dlq.topic", topic.encode()),
                ("dlq.partition", str(partition).encode()),
                ("dlq.offset", str(offset).encode()),
                *[
                    (k, v)
                    for k, v in raw_headers
                    if isinstance(v, bytes) and not k.startswith("dlq.")
                ],
            ],
            counted_as=(topic, "decode" if reason.startswith("decode:") else "handler"),
        )

    return write


def _health(
    metrics: Metrics,
    reader: FeedReader,
    stop: threading.Event,
    host: str,
    port: int,
) -> HealthServer | None:
    if port < 0:
        return None
    server = HealthServer(
        metrics.registry,
        alive=lambda: Check(not stop.is_set(), "stopping"),
        broker=lambda: Check(reader.healthy, "a handler stopped the reader"),
        ready=lambda: {"feed-reader": reader.healthy},
        host=host,
        port=port,
    )
    server.start()
    return server
