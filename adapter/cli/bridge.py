"""``synkafka bridge``: a live Synapse's Redis replication into Kafka."""

from __future__ import annotations

import logging
import threading
from typing import Annotated

import typer

from adapter.cli._app import app
from adapter.cli.common import (
    DbPasswordFileOpt,
    LogLevelOpt,
    MetricsHostOpt,
    MetricsPortOpt,
    PrefixOpt,
    RedisPasswordFileOpt,
    ServerNameOpt,
    db_dsn,
    redis_url,
    require_server_name,
    resolve_prefix,
    setup_logging,
    with_kafka_options,
)
from adapter.cli.consume import install_stop_signals
from adapter.core.backoff import Backoff
from adapter.core.bridged_presence import (
    DEFAULT_BRIDGE_HEARTBEAT_MS,
    DEFAULT_LIVE_WINDOW_MS,
    DEFAULT_USER_SYNC_WINDOW_MS,
)
from adapter.core.config import KafkaSettings
from adapter.core.errors import ConfigError, KafkaIOError
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.io.kafka.consumer import Consumer
from adapter.io.kafka.producer import Producer
from adapter.io.metrics import default_metrics
from adapter.io.redis import RedisClients, ReplicationSubscriber
from adapter.runtime import interpreter
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.bridge import DEFAULT_PROBE_INTERVAL_S, Bridge
from adapter.runtime.db_probe import DatabaseProbe
from adapter.runtime.dead_letter_writer import DeadLetterWriter
from adapter.runtime.health import Check, DependencyStatus, HealthServer
from adapter.runtime.lag import read_positions_topic
from adapter.runtime.presence_follower import PresenceFollower

__all__ = ["bridge"]

logger = logging.getLogger(__name__)

# How often the producer's statistics (and so /health's broker check) are renewed.
_STATS_INTERVAL_S = 2.0


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
    server_name: ServerNameOpt = None,
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
    metrics_port: MetricsPortOpt = 9467,
    metrics_host: MetricsHostOpt = "127.0.0.1",
    log_level: LogLevelOpt = "INFO",
    presence_sync_window: Annotated[
        float,
        typer.Option(
            "--presence-sync-window",
            envvar="SYNKAFKA_PRESENCE_SYNC_WINDOW",
            min=1.0,
            help="Seconds a worker's USER_SYNC keeps it listed as syncing "
            "(Synapse's writer: 300).",
        ),
    ] = DEFAULT_USER_SYNC_WINDOW_MS / 1000,
    presence_row_window: Annotated[
        float,
        typer.Option(
            "--presence-row-window",
            envvar="SYNKAFKA_PRESENCE_ROW_WINDOW",
            min=1.0,
            help="Seconds a presence-stream row showing a user's recent sync keeps "
            "that user's worker listed (rows come about once a minute).",
        ),
    ] = DEFAULT_LIVE_WINDOW_MS / 1000,
    presence_probe_interval: Annotated[
        float,
        typer.Option(
            "--presence-probe-interval",
            envvar="SYNKAFKA_PRESENCE_PROBE_INTERVAL",
            min=0.0,
            help="Seconds between two CLIENT LIST checks for a worker whose Redis "
            "connections closed (its users then leave at once); 0: off, the "
            "windows alone decide. Needs CLIENT LIST and INFO in the Redis ACL.",
        ),
    ] = DEFAULT_PROBE_INTERVAL_S,
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
    # The Redis channel is the server name, so the bridge needs it even with --prefix.
    server_name = require_server_name(server_name)
    resolved = resolve_prefix(prefix, server_name)
    metrics = default_metrics()
    stop = threading.Event()
    install_stop_signals(stop)
    url = redis_url(redis, redis_password_file)
    subscriber = ReplicationSubscriber(url, server_name)
    clients = RedisClients(url) if presence_probe_interval > 0 else None
    dsn = db_dsn(db, db_password_file) if db is not None else None
    database = DependencyStatus()
    # The producer of the current attempt (a new one after each Kafka failure).
    current: list[Producer] = []
    server = None
    if metrics_port >= 0:
        server = HealthServer(
            metrics.registry,
            alive=lambda: Check(not stop.is_set(), "stopping"),
            broker=lambda: Check(
                bool(current) and current[-1].broker_up, "no broker connection"
            ),
            ready=lambda: {"redis": subscriber.connected},
            dependencies={
                "redis": lambda: Check(subscriber.connected, "not subscribed"),
                **({"database": database.check} if dsn else {}),
            },
            host=metrics_host,
            port=metrics_port,
        )
        server.start()
    # /health then reflects the database between gap repairs too.
    probe = DatabaseProbe(dsn, database) if dsn and server else None
    if probe is not None:
        probe.start()
    backoff = Backoff()
    failed = False
    windows = {
        "user_sync_window_ms": int(presence_sync_window * 1000),
        "live_window_ms": int(presence_row_window * 1000),
        "heartbeat_interval_ms": int(
            min(
                DEFAULT_BRIDGE_HEARTBEAT_MS,
                presence_sync_window * 250,
                presence_row_window * 250,
            )
        ),
    }
    dead_letters = DeadLetterWriter(
        settings,
        resolved,
        client_id=f"synkafka-bridge-{server_name}-dlq",
        metrics=metrics,
        stop=stop,
    )
    try:
        while not stop.is_set():
            producer = Producer(
                settings,
                client_id=f"synkafka-bridge-{server_name}",
                metrics=metrics,
                extra={"linger.ms": "2"},
                # Statistics keep producer.broker_up current for /health.
                stats_interval_s=_STATS_INTERVAL_S,
            )
            current[:] = [producer]
            try:
                published, presence = _read_state(settings, resolved)
                this_bridge = Bridge(
                    subscriber,
                    producer,
                    resolved,
                    metrics=metrics,
                    open_reader=(lambda: DatabaseReader(dsn)) if dsn else None,
                    published=published,
                    presence=presence,
                    dead_letters=dead_letters,
                    presence_windows=windows,
                    database=database,
                    clients=clients,
                    probe_interval_s=presence_probe_interval,
                )
                # This command owns the process: fewer collections keep the
                # bridge's latency flat (see interpreter.GC_THRESHOLD). The switch
                # interval was measured for the consumer's threads and stays as is.
                with interpreter.tuned(switch_interval_s=None):
                    this_bridge.run(stop)
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
        if probe is not None:
            probe.stop()
        if clients is not None:
            clients.close()
        dead_letters.close()
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
