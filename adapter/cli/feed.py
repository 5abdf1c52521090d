"""``synkafka feed``: every Synapse event, with its content, on a room-keyed topic."""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Literal

import typer

from adapter.cli._app import app
from adapter.cli.common import (
    DbPasswordFileOpt,
    LogLevelOpt,
    MetricsHostOpt,
    MetricsPortOpt,
    PrefixOpt,
    ServerNameOpt,
    db_dsn,
    reach_kafka,
    resolve_prefix,
    setup_logging,
    with_kafka_options,
)
from adapter.cli.consume import install_stop_signals
from adapter.core import dead_letters, topics
from adapter.core.config import KafkaSettings
from adapter.core.errors import ConfigError
from adapter.core.feed import DEFAULT_FEED_PARTITIONS
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.transactions import TransactionalPipe
from adapter.io.metrics import default_metrics
from adapter.runtime import interpreter
from adapter.runtime.db_probe import DatabaseProbe, first_check
from adapter.runtime.feed import EventContent, EventFeed, FeedOptions
from adapter.runtime.health import Check, DependencyStatus, HealthServer

__all__ = ["feed"]

logger = logging.getLogger(__name__)


@app.command()
@with_kafka_options
def feed(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar="SYNKAFKA_DB",
            help="Synapse's database, where the events' content is read: "
            "postgresql://..., a libpq key=value string or sqlite:///path.",
            show_default=False,
        ),
    ],
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    db_password_file: DbPasswordFileOpt = None,
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions",
            min=1,
            help="Partitions of <prefix>.feed.events when the feed creates it: the "
            "most members one consumer group can spread over.",
        ),
    ] = DEFAULT_FEED_PARTITIONS,
    value_format: Annotated[
        Literal["avro", "json"],
        typer.Option(
            "--value-format",
            help="avro (single-object encoding, schema synkafka.feed.Event) or json "
            "(plain JSON objects any Kafka tool can read).",
        ),
    ] = "avro",
    start: Annotated[
        Literal["earliest", "latest"],
        typer.Option(
            "--from",
            help="Where a feed with no committed progress starts on the events "
            "topic: earliest (everything Kafka holds) or latest.",
        ),
    ] = "earliest",
    batch: Annotated[
        int,
        typer.Option("--batch", min=1, help="Input records per transaction at most."),
    ] = 500,
    metrics_port: MetricsPortOpt = 9469,
    metrics_host: MetricsHostOpt = "127.0.0.1",
    log_level: LogLevelOpt = "INFO",
    *,
    kafka: KafkaSettings,
) -> None:
    """Publish every new Synapse event, with its content, to <prefix>.feed.events.

    Follows the events stream topic, reads each event from Synapse's database
    (event_json, in batches) and writes one record per event, keyed by room ID, in
    Kafka transactions that also commit the input's offsets: a read_committed reader
    sees each event exactly once, across crashes and restarts. Rejected events and
    outliers are included, flagged; events the database no longer has go to the
    dead-letter topic. SIGTERM or Ctrl-C ends the open transaction and exits 0.
    """
    setup_logging(log_level)
    resolved = resolve_prefix(prefix, server_name)
    dsn = db_dsn(db, db_password_file)
    # A wrong --db ends the command now, not at the first event; a database that is
    # down is waited for, and /health says so meanwhile.
    down = first_check(dsn)
    if down is not None:
        logger.warning("Synapse's database does not answer yet: %s", down)
    _ensure_topics(reach_kafka(kafka, 15.0), resolved, partitions)
    metrics = default_metrics()
    stop = threading.Event()
    install_stop_signals(stop)
    pipe = TransactionalPipe(
        kafka,
        group_id=topics.feed_group(resolved),
        transactional_id=topics.feed_group(resolved),
        topics=[topics.stream_topic(resolved, "events")],
        start=start,
    )
    content = EventContent(dsn)
    runner = EventFeed(
        pipe,
        content,
        FeedOptions(
            resolved,
            value_format=value_format,
            max_batch=batch,
            dlq_limit=dead_letters.value_limit(kafka.to_librdkafka()),
        ),
        metrics=metrics,
    )
    server = None
    database = DependencyStatus()
    probe = DatabaseProbe(dsn, database)
    if metrics_port >= 0:
        server = HealthServer(
            metrics.registry,
            alive=lambda: Check(not stop.is_set(), "stopping"),
            broker=lambda: Check(runner.healthy, "the last batch did not commit"),
            ready=lambda: {"feed": runner.healthy},
            dependencies={"database": database.check},
            host=metrics_host,
            port=metrics_port,
        )
        server.start()
        probe.start()
    try:
        # This command owns the process: fewer cycle collections keep the feed's
        # transactions short and even (see adapter.runtime.interpreter). The feed
        # is one thread; the switch interval is left alone.
        with interpreter.tuned(switch_interval_s=None):
            runner.run(stop)
    finally:
        content.close()
        if server is not None:
            probe.stop()
            server.stop()
    logger.info(
        "feed stopped: %d events committed to %s",
        runner.published,
        topics.feed_topic(resolved),
    )


def _ensure_topics(admin: Admin, prefix: str, partitions: int) -> None:
    """Check the events topic exists; create the feed topic if it does not."""
    events = topics.stream_topic(prefix, "events")
    spec = topics.feed_topic_spec(prefix, partitions=partitions)
    states = admin.describe_topics([events, spec.name])
    if not states[events].exists:
        raise ConfigError(topics.missing_topic_message(events, prefix))
    feed_state = states[spec.name]
    if not feed_state.exists:
        admin.create_topics([spec])
        logger.info("created %s (%d partitions)", spec.name, spec.partitions)
    elif feed_state.partitions != partitions:
        # Changing a keyed topic's partition count moves rooms between partitions.
        logger.warning(
            "%s has %d partitions, not the %d asked for; keeping it as it is",
            spec.name,
            feed_state.partitions,
            partitions,
        )
