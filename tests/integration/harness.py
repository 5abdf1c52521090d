"""Helpers for driving a real replication consumer against the real services.

A test builds a Synapse-shaped database (PostgreSQL or SQLite), writes rows with
:class:`~adapter.devstack.writer.SynapseWriter`, publishes exactly what Synapse would with
:class:`~adapter.runtime.publisher.Publisher`, and runs a
:class:`~adapter.runtime.consumer.ReplicationConsumer` in a thread with a recording
handler. Waiting is always polling with a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)
from prometheus_client import CollectorRegistry

from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.ports import StreamUpdate
from adapter.core.rows import row_from_wire
from adapter.io.db.connection import DbConnection, connect
from adapter.io.db.synapse_schema import create_synapse_tables
from adapter.io.kafka.admin import Admin
from adapter.io.metrics import Metrics
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.consumer import ConsumerOptions, ReplicationConsumer
from adapter.runtime.publisher import Publisher

__all__ = [
    "ConsumerRun",
    "Recorder",
    "json_lines",
    "make_database",
    "publish_written",
    "wait_for",
]


def wait_for(
    predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}"
            )
        time.sleep(0.02)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file another process may still be writing.

    A reader can catch a line half written (or a process killed mid-line left one);
    only newline-terminated lines count.
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(x) for x in complete.splitlines() if x.strip()]


def make_database(engine: str, pg_dsn: str, tmp_path: Path) -> str:
    """A DSN of a fresh database with Synapse's stream tables."""
    dsn = pg_dsn if engine == "postgresql" else f"sqlite:///{tmp_path / 'synapse.db'}"
    with connect(dsn, create=True) as conn:
        create_synapse_tables(conn)
    return dsn


def ensure_topics(bootstrap: str, prefix: str, streams: Iterable[str]) -> None:
    """Create the stream topics and the other synkafka topics under ``prefix``."""
    admin = Admin(KafkaSettings(bootstrap_servers=bootstrap))
    admin.create_topics(topics.topic_specs(prefix, streams))


def publish_written(
    publisher: Publisher,
    stream: str,
    writer: str,
    written: Iterable[tuple[int, Sequence[Any]]],
) -> None:
    """Publish ``(token, wire_rows)`` as Synapse would: one RDATA per token."""
    for token, wire_rows in written:
        publisher.publish_rdata(
            stream, writer, token, [row_from_wire(stream, w) for w in wire_rows]
        )


@dataclass
class Recorder:
    """A thread-safe handler that keeps every update it is given."""

    updates: list[StreamUpdate] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, update: StreamUpdate) -> None:
        with self.lock:
            self.updates.append(update)

    def snapshot(self) -> list[StreamUpdate]:
        with self.lock:
            return list(self.updates)

    def tokens(self, stream: str, writer: str | None = None) -> list[int]:
        return [
            u.token
            for u in self.snapshot()
            if u.stream_name == stream and (writer is None or u.instance_name == writer)
        ]

    def rows(self, stream: str) -> int:
        return sum(len(u.rows) for u in self.snapshot() if u.stream_name == stream)


class ConsumerRun:
    """A :class:`ReplicationConsumer` running in a thread, with its own metrics.

    Args:
        bootstrap: the broker.
        prefix: the topic prefix.
        streams: streams to follow.
        dsn: the database to backfill from, or None.
        handler: the handler (a :class:`Recorder` by default).
        **options: more :class:`ConsumerOptions` fields.
    """

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        streams: Sequence[str],
        dsn: str | None,
        *,
        handler: Callable[[StreamUpdate], Any] | None = None,
        instance_name: str = "test-consumer",
        **options: Any,
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.recorder = Recorder()
        opts = ConsumerOptions(
            prefix=prefix,
            instance_name=instance_name,
            streams=tuple(streams),
            commit_interval_s=options.pop("commit_interval_s", 0.2),
            **options,
        )
        self.consumer = ReplicationConsumer(
            KafkaSettings(bootstrap_servers=bootstrap),
            opts,
            handler or self.recorder,
            open_reader=(lambda: DatabaseReader(dsn)) if dsn else None,
            metrics=self.metrics,
        )
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run(self.stop_event)
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            self.error = exc

    def __enter__(self) -> ConsumerRun:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the consumer to stop and wait for it (it commits on the way out)."""
        self.stop_event.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "consumer did not stop in time"

    def wait_caught_up(self, timeout_s: float = 60.0) -> None:
        """Wait until every stream reports caught up."""

        def check() -> bool:
            if self.error is not None:
                raise AssertionError(f"consumer failed: {self.error!r}") from self.error
            state = self.consumer.caught_up()
            return bool(state) and all(state.values())

        wait_for(check, timeout_s, "the consumer to catch up")

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample's value (0 when absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0


def open_db(dsn: str) -> DbConnection:
    """A connection to the test database."""
    return connect(dsn)


def dead_letter_records(
    bootstrap: str, prefix: str, count: int
) -> list[tuple[bytes | None, dict[str, bytes]]]:
    """The first ``count`` dead letters of ``prefix``: (value, headers as a dict)."""
    dlq = KafkaConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}.dlq-reader",
            "auto.offset.reset": "earliest",
        }
    )
    dlq.assign([TopicPartition(topics.dlq_topic(prefix), 0, 0)])
    found: list[tuple[bytes | None, dict[str, bytes]]] = []
    deadline = time.monotonic() + 20
    try:
        while len(found) < count and time.monotonic() < deadline:
            message = dlq.poll(0.5)
            if message is not None and message.error() is None:
                raw_headers = message.headers() or []
                assert isinstance(raw_headers, list)
                headers = {
                    k: v.encode() if isinstance(v, str) else (v or b"")
                    for k, v in raw_headers
                }
                found.append((message.value(), headers))
    finally:
        dlq.close()
    assert len(found) == count, f"{len(found)} of {count} dead letters"
    return found


def allow_large_records(bootstrap: str, topic: str, max_bytes: int = 4_000_000) -> None:
    """Raise ``topic``'s ``max.message.bytes``, so a test can put a huge record on it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry(
        "max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
