"""Feed throughput: ``EventFeed`` against a bare pipeline doing the same reads and writes.

Fills a Synapse-schema database (SQLite in a temporary folder, or PostgreSQL with
``--postgres``) with ``--events`` plain message events over 100 rooms, each with its
``event_json`` row (the writer simulator's bulk method), and publishes the matching
RDATA records (one per token, as Synapse sends them) to the events stream topic. Then
turns all of them into feed records, ``--repeat`` times each, interleaved:

* **ours**: :class:`~adapter.runtime.feed.EventFeed` over a
  :class:`~adapter.io.kafka.transactions.TransactionalPipe` and
  :class:`~adapter.runtime.feed.EventContent`, as ``synkafka feed`` runs them; timed
  from ``run()`` until every event is committed.
* **bare**: the same work written directly on confluent-kafka, fastavro and the
  database driver: ``consume(batch)``, bare fastavro decoding, the same SQL (one query
  per batch), bare fastavro encoding of ``synkafka.feed.Event``, and one transaction
  per batch (``send_offsets_to_transaction`` + ``commit_transaction``) with the same
  producer settings as the feed's (``retry.backoff.ms`` 10 included). No decisions,
  no metrics, no error handling.

Each run writes to its own feed topic with its own consumer group and transactional
ID, so every run reads the whole input from the start.

Target (docs/benchmarks.md): ours >= 0.8 of the bare pipeline's events/s.

Usage::

    .venv/bin/python -m bench.feed                       # 50,000 events, SQLite
    .venv/bin/python -m bench.feed --postgres --repeat 3
    .venv/bin/python -m bench.feed --profile             # cProfile one run of ours
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from fastavro import schemaless_reader, schemaless_writer

from adapter.codec.avro_codec import default_codec
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.feed import DEFAULT_FEED_PARTITIONS, FeedEvent
from adapter.core.rows import row_from_wire
from adapter.devstack.writer import SynapseWriter
from adapter.io.db.connection import connect
from adapter.io.db.event_content import _QUERY
from adapter.io.db.synapse_schema import create_synapse_tables
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import DEFAULT_CONSUMER_CONFIG
from adapter.io.kafka.producer import Producer as SynkafkaProducer
from adapter.io.kafka.transactions import TransactionalPipe
from adapter.io.metrics import CollectorRegistry, Metrics
from adapter.runtime.feed import EventContent, EventFeed, FeedOptions
from adapter.runtime.publisher import Publisher
from bench._common import (
    WRITER,
    fresh_heap,
    header,
    kafka,
    median,
    new_prefix,
    postgres,
    ratio_spread,
    spread,
    verdict,
)

TARGET = 0.8
ROOMS = [f"!room{n}:bench.test" for n in range(100)]


@contextmanager
def database(use_postgres: bool, dsn: str | None) -> Iterator[str]:
    """A fresh database: PostgreSQL (own cluster or ``dsn``), or a SQLite file."""
    if use_postgres or dsn:
        with postgres(dsn) as found:
            yield found
        return
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as folder:
        yield f"sqlite:///{Path(folder) / 'synapse.db'}"


def fill(bootstrap: str, prefix: str, dsn: str, events: int) -> float:
    """Write ``events`` events (with content) and publish their RDATA; return seconds."""
    started = time.perf_counter()
    conn = connect(dsn, create=True)
    create_synapse_tables(conn)
    written = SynapseWriter(conn, WRITER).bulk_events(
        events, room_ids=ROOMS, with_json=True, collect_rows=True
    )
    conn.close()
    Admin(KafkaSettings(bootstrap_servers=bootstrap)).create_topics(
        topics.topic_specs(prefix, ("events",))
    )
    producer = SynkafkaProducer(KafkaSettings(bootstrap_servers=bootstrap))
    publisher = Publisher(producer, prefix)
    for token, wire in written.rows:
        publisher.publish_rdata(
            "events", WRITER, token, [row_from_wire("events", wire)]
        )
    publisher.flush(300)
    producer.close()
    return time.perf_counter() - started


def output_topic(bootstrap: str, prefix: str) -> None:
    """Create a run's feed topic (12 partitions, as ``synkafka feed`` does)."""
    Admin(KafkaSettings(bootstrap_servers=bootstrap)).create_topics(
        [topics.feed_topic_spec(prefix, partitions=DEFAULT_FEED_PARTITIONS)]
    )


def run_ours(
    bootstrap: str,
    prefix: str,
    dsn: str,
    events: int,
    batch: int,
    profiler: cProfile.Profile | None = None,
) -> float:
    """Seconds for EventFeed to commit a feed record for every event.

    ``profiler``, when given, profiles the feed's thread (where its work happens).
    """
    run_prefix = new_prefix("feed-ours")
    output_topic(bootstrap, run_prefix)
    pipe = TransactionalPipe(
        KafkaSettings(bootstrap_servers=bootstrap),
        group_id=topics.feed_group(run_prefix),
        transactional_id=topics.feed_group(run_prefix),
        topics=[topics.stream_topic(prefix, "events")],
    )
    content = EventContent(dsn)
    feed = EventFeed(
        pipe,
        content,
        FeedOptions(run_prefix, max_batch=batch),
        metrics=Metrics(CollectorRegistry()),
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        if profiler is not None:
            profiler.enable()
        try:
            feed.run(stop)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(exc)
        finally:
            if profiler is not None:
                profiler.disable()

    thread = threading.Thread(target=target, daemon=True)
    started = time.perf_counter()
    thread.start()
    deadline = started + 600
    while feed.published < events and not errors and time.perf_counter() < deadline:
        # Looked at ten times a second: often enough for a run of seconds, rarely
        # enough not to take the GIL from the loop being measured.
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join(60)
    content.close()
    if errors:
        raise errors[0]
    assert feed.published == events, (feed.published, events)
    return elapsed


class Bare:
    """The bare pipeline's pieces: schemas, SQL, the event header."""

    def __init__(self) -> None:
        schemas = default_codec().schemas.current
        self.rdata = schemas["synkafka.command.Rdata"].parsed
        self.event = schemas["synkafka.feed.Event"].parsed
        self.header = default_codec().encode(_sample_event())[:10]

    def decode_ids(self, value: bytes) -> list[str]:
        body = io.BytesIO(value)
        body.seek(10)
        record: Any = schemaless_reader(body, self.rdata, return_record_name=True)
        return [
            fields["event_id"]
            for name, fields in record["rows"]
            if name == "synkafka.row.EventsEvent"
        ]

    def encode(self, row: tuple[Any, ...]) -> bytes:
        (
            event_id, room_id, type_, state_key, sender, origin_server_ts,
            stream_ordering, instance_name, outlier, reason, redacts,
            format_version, json_text,
        ) = row  # fmt: skip
        out = io.BytesIO()
        out.write(self.header)
        schemaless_writer(
            out,
            self.event,
            {
                "event_id": event_id,
                "room_id": room_id,
                "type": type_,
                "state_key": state_key,
                "sender": sender,
                "origin_server_ts": origin_server_ts,
                "stream_ordering": stream_ordering,
                "instance_name": instance_name,
                "outlier": bool(outlier),
                "rejected": reason is not None,
                "rejection_reason": reason,
                "redacts": redacts,
                "format_version": format_version,
                "json": json_text,
            },
        )
        return out.getvalue()


def _sample_event() -> FeedEvent:
    return FeedEvent("$e", "!r", "t", None, "@s", 0, 0, None, False, False, None, None, None, "{}")  # fmt: skip


def run_bare(bootstrap: str, prefix: str, dsn: str, events: int, batch: int) -> float:
    """Seconds for the bare pipeline to commit a feed record for every event."""
    run_prefix = new_prefix("feed-bare")
    output_topic(bootstrap, run_prefix)
    bare = Bare()
    feed_topic = topics.feed_topic(run_prefix)
    group = topics.feed_group(run_prefix)
    started = time.perf_counter()
    consumer = Consumer(
        {**DEFAULT_CONSUMER_CONFIG, "bootstrap.servers": bootstrap, "group.id": group}
    )
    consumer.assign(
        [TopicPartition(topics.stream_topic(prefix, "events"), 0, OFFSET_BEGINNING)]
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": group,
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "5",
            "compression.type": "lz4",
            "retry.backoff.ms": "10",
        }
    )
    producer.init_transactions(30)
    db = connect(dsn)
    raw = db.raw
    done = 0
    while done < events:
        messages = consumer.consume(batch, 0.2)
        if not messages:
            continue
        ids = [i for m in messages for i in bare.decode_ids(m.value())]  # type: ignore[arg-type]
        sql = db.sql(_QUERY.format(marks=", ".join("?" * len(ids))))
        cursor = raw.cursor()
        cursor.execute(sql, ids)
        rows = cursor.fetchall()
        producer.begin_transaction()
        for row in rows:
            producer.produce(feed_topic, bare.encode(row), row[1].encode())
        last = messages[-1]
        producer.send_offsets_to_transaction(
            [TopicPartition(last.topic(), last.partition(), last.offset() + 1)],  # type: ignore[arg-type,operator]
            consumer.consumer_group_metadata(),
            30,
        )
        producer.commit_transaction(30)
        done += len(rows)
    elapsed = time.perf_counter() - started
    db.close()
    consumer.close()
    assert done == events, (done, events)
    return elapsed


def profile_ours(
    bootstrap: str, prefix: str, dsn: str, events: int, batch: int
) -> None:
    """Print the top of a cProfile of one run of ours (the feed's thread)."""
    profiler = cProfile.Profile()
    run_ours(bootstrap, prefix, dsn, events, batch, profiler)
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument(
        "--batch", type=int, default=500, help="records per transaction"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--postgres", action="store_true", help="PostgreSQL, not SQLite"
    )
    parser.add_argument("--dsn", help="use this (empty) PostgreSQL database")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--profile", action="store_true", help="cProfile ours once")
    args = parser.parse_args(argv)

    with kafka(args.bootstrap) as bootstrap, database(args.postgres, args.dsn) as dsn:
        prefix = new_prefix("feed")
        fill_s = fill(bootstrap, prefix, dsn, args.events)
        header(
            "feed (events stream -> database -> feed topic, transactional)",
            events=f"{args.events:,} over {len(ROOMS)} rooms, one RDATA record each",
            database="PostgreSQL" if dsn.startswith("postgres") else "SQLite",
            batch=f"{args.batch} records per transaction",
            fill=f"{fill_s:.1f} s (database and events topic)",
        )
        if args.profile:
            profile_ours(bootstrap, prefix, dsn, args.events, args.batch)
            return {}
        ours: list[float] = []
        bare: list[float] = []
        runs: dict[str, tuple[list[float], Callable[[], float]]] = {
            "ours": (
                ours,
                lambda: run_ours(bootstrap, prefix, dsn, args.events, args.batch),
            ),
            "bare": (
                bare,
                lambda: run_bare(bootstrap, prefix, dsn, args.events, args.batch),
            ),
        }
        # One uncounted run of each first: the broker's page cache, the database's
        # and the codec's first calls would otherwise weigh on run 1 only.
        for who in ("ours", "bare"):
            runs[who][1]()
        for n in range(args.repeat):
            # Alternate who goes first so neither always gets the warmer caches.
            for who in ("ours", "bare") if n % 2 == 0 else ("bare", "ours"):
                fresh_heap()
                results, run = runs[who]
                results.append(args.events / run())
                print(
                    f"   run {n + 1} {who:5} {results[-1]:>10,.0f} events/s",
                    flush=True,
                )
    # Runs next to each other share the machine's load at that moment: the median
    # of the paired ratios is the figure; the ratio of medians is shown as well.
    paired = median([o / b for o, b in zip(ours, bare, strict=True)])
    ratio = median(ours) / median(bare)
    summary = [
        f"ours (EventFeed)               {spread(ours)} events/s",
        f"bare (confluent-kafka + SQL)   {spread(bare)} events/s",
        (
            f"ours / bare per run pair = {ratio_spread(ours, bare)}; ratio of "
            f"medians {ratio:.2f}; target >= {TARGET}: {verdict(paired, TARGET)}"
        ),
    ]
    print("\n".join(f"   {line}" for line in summary))
    return {"ours": ours, "bare": bare, "ratio": paired}


if __name__ == "__main__":
    main()
