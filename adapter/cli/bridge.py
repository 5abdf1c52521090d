"""``synkafka bridge``: a live Synapse's Redis replication into Kafka."""

from __future__ import annotations

import logging
import threading
from typing import Annotated

import typer

from adapter.backoff import Backoff
from adapter.cli._app import app
from adapter.cli.common import (
    DbPasswordFileOpt,
    LogLevelOpt,
    PrefixOpt,
    RedisPasswordFileOpt,
    db_dsn,
    redis_url,
    resolve_prefix,
    setup_logging,
    with_kafka_options,
)
from adapter.cli.consume import install_stop_signals
from adapter.config import KafkaSettings
from adapter.errors import ConfigError, KafkaIOError
from adapter.kafka.consumer import Consumer
from adapter.kafka.producer import Producer
from adapter.metrics import default_metrics
from adapter.records import PresenceSnapshot
from adapter.redis_io import ReplicationSubscriber
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.bridge import Bridge
from adapter.runtime.health import Check, HealthServer
from adapter.runtime.lag import read_positions_topic
from adapter.runtime.presence_view import PresenceFollower

__all__ = ["bridge"]

logger = logging.getLogger(__name__)


@app.command()
@with_kafka_options
def bridge(
    redis: Annotated[
        str,
        typer.Option(
            "--redis",
            envvar="SYNKAFKA_REDIS_URL",
            help="Synapse's Redis: redis://[user:password@]host:port, rediss:// for TLS.",
            show_default=False,
        ),
    ],
    server_name: Annotated[
        str,
        typer.Option(
            "--server-name",
            envvar="SYNKAFKA_SERVER_NAME",
            help="The homeserver's server_name (its Redis channel).",
            show_default=False,
        ),
    ],
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="SYNKAFKA_DB",
            help="Synapse's database, to repair gaps: postgresql://..., a libpq key=value string or sqlite:///path.",
            show_default=False,
        ),
    ] = None,
    redis_password_file: RedisPasswordFileOpt = None,
    db_password_file: DbPasswordFileOpt = None,
    prefix: PrefixOpt = None,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            envvar="SYNKAFKA_METRICS_PORT",
            help="Port for /metrics, /health and /ready (0: a free port, -1: off).",
        ),
    ] = 9467,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host", envvar="SYNKAFKA_METRICS_HOST", help="Bind address."
        ),
    ] = "127.0.0.1",
    log_level: LogLevelOpt = "INFO",
    *,
    kafka: KafkaSettings,
) -> None:
    """Follow a Synapse homeserver's Redis replication and publish it to Kafka.

    With --db, rows Redis lost (while a connection was down, or while the bridge was
    stopped) are read from Synapse's database and published in order. SIGTERM or
    Ctrl-C flushes everything and exits 0 (1 if the final flush failed).
    """
    setup_logging(log_level)
    settings = kafka
    resolved = resolve_prefix(prefix, server_name)
    metrics = default_metrics()
    stop = threading.Event()
    install_stop_signals(stop)
    subscriber = ReplicationSubscriber(
        redis_url(redis, redis_password_file), server_name
    )
    server = None
    if metrics_port >= 0:
        server = HealthServer(
            metrics.registry,
            alive=lambda: Check(not stop.is_set(), "stopping"),
            broker=lambda: Check(True),
            ready=lambda: {"redis": subscriber.connected},
            host=metrics_host,
            port=metrics_port,
        )
        server.start()
    backoff = Backoff()
    dsn = db_dsn(db, db_password_file) if db else None
    failed = False
    try:
        while not stop.is_set():
            producer = Producer(
                settings,
                client_id=f"synkafka-bridge-{server_name}",
                metrics=metrics,
                extra={"linger.ms": "2"},
            )
            try:
                published, presence = _read_state(settings, resolved)
                Bridge(
                    subscriber,
                    producer,
                    resolved,
                    metrics=metrics,
                    open_reader=(lambda: DatabaseReader(dsn)) if dsn else None,
                    published=published,
                    presence=presence,
                ).run(stop)
                backoff.reset()
            except KafkaIOError as exc:
                if stop.is_set():
                    # The final flush failed: some records may not be on Kafka.
                    logger.error("Kafka failed while shutting down: %s", exc)  # noqa: TRY400
                    failed = True
                    break
                delay = backoff.next_delay()
                metrics.reconnects.labels("kafka").inc()
                logger.warning(
                    "Kafka failed: %s; restarting the bridge in %.1f s", exc, delay
                )
                stop.wait(delay)
    finally:
        if server is not None:
            server.stop()
    if failed:
        raise typer.Exit(code=1)


def _read_state(
    settings: KafkaSettings, prefix: str
) -> tuple[dict[tuple[str, str], int], dict[str, PresenceSnapshot]]:
    """What is on Kafka already: each writer's last token and the syncing sets.

    Raises:
        KafkaIOError: the broker failed.
    """
    reader = Consumer(settings, f"{prefix}.synkafka-bridge-positions")
    try:
        published = read_positions_topic(reader, prefix)
    finally:
        reader.close()
    follower = PresenceFollower(
        Consumer(settings, f"{prefix}.synkafka-bridge-presence"), prefix
    )
    try:
        follower.replay()
        presence = follower.state()
    except ConfigError:
        presence = {}  # no presence topic yet
    finally:
        follower.close()
    logger.info(
        "resuming after %d stream writers and %d presence instances on Kafka",
        len(published),
        len(presence),
    )
    return published, presence
