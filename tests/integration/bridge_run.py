"""A bridge run against the session's real Redis and Kafka, and what reads its topics.

Shared by ``tests/integration/bridge/``, ``tests/integration/test_bad_input.py`` and
``tests/e2e/test_bridge.py``. The lines in ``tests/data/synapse_lines/`` were captured
from a real Synapse (main process and ``worker1``) on SQLite and on PostgreSQL;
:func:`recorded_lines` moves them to a test's own channel.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import redis

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.backoff import Backoff
from adapter.core.commands import RdataCommand
from adapter.core.config import KafkaSettings
from adapter.core.errors import ConsumeError
from adapter.core.rows import row_to_wire
from adapter.io.kafka.consumer import BEGINNING, Consumer, PartitionStart
from adapter.io.kafka.producer import Producer
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import CollectorRegistry, Metrics
from adapter.io.redis import RedisClients, ReplicationSubscriber
from adapter.io.redis.subscriber import CLIENT_NAME
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.bridge import Bridge
from adapter.runtime.dead_letter_writer import DeadLetterWriter
from tests.integration.harness import wait_for

__all__ = [
    "BridgeRun",
    "decoded",
    "kill_bridge_connection",
    "publish_lines",
    "rdata_by_token",
    "read_topic",
    "recorded_lines",
    "topic_size",
    "wait_records",
]

DATA = Path(__file__).resolve().parents[1] / "data" / "synapse_lines"
_RECORDED_SERVER = "synkafka.test"


class BridgeRun:
    """A :class:`Bridge` running in a thread against real Redis and Kafka.

    Args:
        redis_url: the Redis Synapse publishes on.
        server_name: the homeserver's name (its channel).
        bootstrap: Kafka.
        prefix: the topic prefix.
        dsn: Synapse's database for gap repair, or None.
        published: the seed of already published tokens.
        presence_windows: the bridge's presence windows (shortened in tests).
        probe_interval_s: turns the presence probe (CLIENT LIST) on at this interval.
    """

    def __init__(
        self,
        redis_url: str,
        server_name: str,
        bootstrap: str,
        prefix: str,
        *,
        dsn: str | None = None,
        published: dict[tuple[str, str], int] | None = None,
        presence_windows: dict[str, int] | None = None,
        probe_interval_s: float | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.clients = RedisClients(redis_url) if probe_interval_s else None
        self.metrics = Metrics(self.registry)
        self.subscriber = ReplicationSubscriber(
            redis_url, server_name, backoff=Backoff(initial_s=0.1, max_s=0.5)
        )
        self.producer = Producer(
            KafkaSettings(bootstrap_servers=bootstrap),
            metrics=self.metrics,
            extra={"linger.ms": "2"},
        )
        self.bridge = Bridge(
            self.subscriber,
            self.producer,
            prefix,
            metrics=self.metrics,
            open_reader=(lambda: DatabaseReader(dsn)) if dsn else None,
            published=published,
            presence_windows=presence_windows,
            clients=self.clients,
            probe_interval_s=probe_interval_s or 0.0,
            dead_letters=DeadLetterWriter(
                KafkaSettings(bootstrap_servers=bootstrap),
                prefix,
                client_id="test-bridge-dlq",
                metrics=self.metrics,
            ),
        )
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.bridge.run(self.stop_event)
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            self.error = exc

    def __enter__(self) -> BridgeRun:
        self._thread.start()
        wait_for(
            lambda: self.subscriber.connected or self.error is not None,
            20,
            "the bridge to subscribe",
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the bridge (it flushes) and re-raise what stopped it early."""
        self.stop_event.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "bridge did not stop in time"
        if self.clients is not None:
            self.clients.close()
        if self.error is not None:
            raise AssertionError(f"bridge failed: {self.error!r}") from self.error

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample's value (0 when absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0


def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 20.0
) -> list[KafkaRecord]:
    """Every record of ``topic`` up to its high watermarks now, in offset order."""
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), f"read-{topic}")
    try:
        parts = consumer.partitions(topic)
        heads = {p: consumer.watermarks(topic, p)[1] for p in parts}
        wanted = {p: h for p, h in heads.items() if h > 0}
        if not wanted:
            return []
        consumer.assign([PartitionStart(topic, p, BEGINNING) for p in wanted])
        out: list[KafkaRecord] = []
        done: set[int] = set()
        wait_for(
            lambda: _drain(consumer, out, wanted, done), timeout_s, f"reading {topic}"
        )
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def _drain(
    consumer: Consumer,
    out: list[KafkaRecord],
    wanted: dict[int, int],
    done: set[int],
) -> bool:
    for record in consumer.poll_batch(1000, 0.2):
        if record.offset < wanted[record.partition]:
            out.append(record)
        if record.offset + 1 >= wanted[record.partition]:
            done.add(record.partition)
    return len(done) == len(wanted)


def topic_size(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (sum of high watermarks)."""
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), f"size-{topic}")
    try:
        return _size(consumer, topic)
    finally:
        consumer.close()


def _size(consumer: Consumer, topic: str) -> int:
    try:
        return sum(consumer.watermarks(topic, p)[1] for p in consumer.partitions(topic))
    except ConsumeError:
        return 0  # a new topic's leader is not elected yet: ask again


def kill_bridge_connection(client: redis.Redis) -> None:
    """Make Redis drop the bridge's subscription (as a network failure would)."""
    for info in client.client_list():
        if info.get("name") == CLIENT_NAME:
            client.client_kill_filter(_id=info["id"])


def decoded(records: list[KafkaRecord]) -> list[Any]:
    """The decoded values (tombstones skipped)."""
    return [decode(r.value) for r in records if r.value is not None]


def rdata_by_token(
    bootstrap: str, prefix: str, stream: str
) -> list[tuple[str, int, list[Any]]]:
    """``(writer, token, wire rows)`` of every RDATA on a stream topic, in order."""
    return [
        (c.instance_name, c.token or 0, [row_to_wire(r) for r in c.rows])
        for c in decoded(read_topic(bootstrap, topics.stream_topic(prefix, stream)))
        if isinstance(c, RdataCommand)
    ]


def recorded_lines(engine: str, server_name: str) -> list[tuple[str, str]]:
    """The recorded ``(channel, line)`` pairs, moved to ``server_name``'s channels."""
    out = []
    for raw in (DATA / f"{engine}.txt").read_text().splitlines():
        channel, _, line = raw.partition("\t")
        out.append((channel.replace(_RECORDED_SERVER, server_name, 1), line))
    return out


# --- fixtures -------------------------------------------------------------------------


def publish_lines(client: redis.Redis, pairs: list[tuple[str, str]]) -> None:
    """Publish each ``(channel, line)`` in one round trip, in order."""
    pipe = client.pipeline(transaction=False)
    for channel, line in pairs:
        pipe.publish(channel, line)
    pipe.execute()


def wait_records(bootstrap: str, topic: str, count: int, what: str) -> None:
    """Wait until ``topic`` holds at least ``count`` records.

    One client asks every time: a new one per 20 ms poll made hundreds of clients
    against a broker that may have just started.
    """
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), f"size-{topic}")
    try:
        wait_for(lambda: _size(consumer, topic) >= count, 20, what)
    finally:
        consumer.close()
