"""Feed latency: from Synapse persisting an event to a feed reader's handler, bridge in the path.

The path, every part a real process or service::

    writer simulator --SQL--> database
          |  (after the commit, as Synapse does)
          +--RDATA line--> Redis --> synkafka bridge --> <prefix>.stream.events
                                                             |
          database <--event_json-- synkafka feed <-----------+
                                         |
                                         +--> <prefix>.feed.events --> handler

This process writes ``--rate`` events/s for ``--seconds`` with the writer simulator
(:class:`~adapter.devstack.writer.SynapseWriter`), each carrying its write time in its
content, and publishes the matching RDATA line on Redis as Synapse does. ``synkafka
bridge`` and ``synkafka feed`` run as child processes, as deployed. The handler is a
one-member ``synkafka feed-consume`` group (its runtime,
:class:`~adapter.runtime.feed_reader.FeedReader`, in this process): latency is the
time the handler is called minus the time the event was persisted (its write
committed, the moment Synapse would send its row); the time from the write's start
is printed too.

Steady state is what is measured: first ``--warm-up`` seconds are written at the same
rate and not counted. The bench starts its own broker, and a JVM just started spends
its first half minute compiling (its C2 compiler thread took most of a core at
1,000 events/s, and the p99 was 250 to 450 ms through it); a broker in service has
long finished that.

Target (docs/benchmarks.md): p99 under 100 ms at 1,000 events/s.

Usage::

    .venv/bin/python -m bench.feed_latency                  # 1,000/s for 20 s, SQLite
    .venv/bin/python -m bench.feed_latency --postgres       # on a PostgreSQL of its own
    .venv/bin/python -m bench.feed_latency --rate 500 --batch 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.commands import RdataCommand
from adapter.core.config import KafkaSettings
from adapter.core.feed import DEFAULT_FEED_PARTITIONS, FeedEvent
from adapter.core.rows import STREAM_NAMES, EventsEventRow
from adapter.devstack.services import RedisServer
from adapter.devstack.services._process import free_port
from adapter.devstack.writer import SynapseWriter
from adapter.io.db.connection import connect
from adapter.io.db.synapse_schema import create_synapse_tables
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import consume_available
from adapter.io.kafka.group_consumer import GroupConsumer, Message, RebalanceListener
from adapter.io.metrics import Metrics
from adapter.runtime import interpreter
from adapter.runtime.feed_reader import FeedReader, FeedReaderOptions
from bench._common import WRITER, header, kafka, verdict
from bench.feed import database

TARGET_MS = 100.0
ROOMS = [f"!room{n}:bench.test" for n in range(20)]


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class StreamReader:
    """A ``read_committed`` reader of the events stream topic, in a thread.

    Notes when each event's RDATA record (written by the bridge) reached it (wall
    clock, ns): the bridge stage's latency. It takes what librdkafka holds at once
    (:func:`~adapter.io.kafka.consumer.consume_available`), as the product's
    consumers do, so no record waits for a batch to fill.
    """

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.arrived: dict[str, int] = {}
        self._stop = threading.Event()
        self._topic = topic
        self._client = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "isolation.level": "read_committed",
                "enable.auto.commit": "false",
                "log_level": "3",
            }
        )
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        """Wait for the topic, assign every partition from 0, read in a thread."""
        deadline = time.monotonic() + timeout_s
        while True:
            meta = self._client.list_topics(self._topic, timeout=5)
            found = meta.topics.get(self._topic)
            if found is not None and found.error is None and found.partitions:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self._topic} was not created")
            time.sleep(0.2)
        self._client.assign(
            [TopicPartition(self._topic, p, 0) for p in found.partitions]
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in consume_available(self._client, 500, 0.05):
                now_ns = time.time_ns()
                if message.error() is not None:
                    continue
                value = decode(message.value() or b"")
                if isinstance(value, RdataCommand):
                    for row in value.rows:
                        if isinstance(row, EventsEventRow):
                            self.arrived[row.event_id] = now_ns

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()


class Handler:
    """A feed reader group of one member, as ``synkafka feed-consume`` runs it.

    The member is the command's runtime (:class:`~adapter.runtime.feed_reader.
    FeedReader`: group consumer, room scheduler, worker threads, commits) with a
    handler that notes when each event reached it (wall clock, ns).
    """

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.arrived: dict[str, int] = {}
        settings = KafkaSettings(bootstrap_servers=bootstrap)
        group = topics.feed_reader_group(prefix, "bench")
        topic = topics.feed_topic(prefix)

        def open_consumer(
            listener: RebalanceListener, on_stats: Callable[[dict[str, object]], None]
        ) -> GroupConsumer:
            return GroupConsumer(
                settings, group, topic, listener, session_timeout_s=10.0,
                on_stats=on_stats,
            )  # fmt: skip

        self._reader = FeedReader(
            open_consumer,
            self._handle,
            self._dead_letter,
            FeedReaderOptions(),
            Metrics(CollectorRegistry()),
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reader.run, args=(self._stop,))

    def _handle(self, event: FeedEvent) -> None:
        self.arrived[event.event_id] = time.time_ns()

    @staticmethod
    def _dead_letter(message: Message, reason: str) -> None:
        raise AssertionError(f"dead letter at {message.offset()}: {reason}")

    def start(self, timeout_s: float = 60.0) -> None:
        """Join the group; return once the member holds every partition."""
        self._thread.start()
        wait_for(
            "the handler's partitions",
            lambda: len(self._reader.assigned_partitions) == DEFAULT_FEED_PARTITIONS,
            timeout_s,
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._reader.failure is not None:
            raise self._reader.failure


def child(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m adapter ...`` with its output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "adapter", *argv],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def write(
    writer: SynapseWriter,
    client: redis.Redis,
    server: str,
    count: int,
    rate: float,
) -> tuple[dict[str, int], dict[str, int], float]:
    """Write ``count`` events at ``rate``/s, each followed by its RDATA line.

    Returns:
        When each event's write began (wall clock, ns; also in its content), when
        its transaction had committed (the event persisted, just before Synapse
        would send its row), and the seconds the writing took.
    """
    written: dict[str, int] = {}
    persisted: dict[str, int] = {}
    started = time.monotonic()
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the writer, not synchronising
        began = time.time_ns()
        content = {"msgtype": "m.text", "body": f"event {i}", "written_ns": began}
        token, rows = writer.send_event(
            ROOMS[i % len(ROOMS)], "m.room.message", content=content
        )
        committed = time.time_ns()
        # Synapse persists first, then sends the row: one line per row and token.
        for row in rows:
            line = f"RDATA events {WRITER} {token} {json.dumps(row, separators=(',', ':'))}"
            client.publish(server, line)
        written[str(rows[0][1][0])] = began
        persisted[str(rows[0][1][0])] = committed
    return written, persisted, time.monotonic() - started


def latencies_ms(written: dict[str, int], arrived: dict[str, int]) -> list[float]:
    """Milliseconds from each event's write to its arrival."""
    return [(arrived[e] - began) / 1e6 for e, began in written.items() if e in arrived]


def summary(values: Sequence[float]) -> str:
    """p50, p95, p99 and max."""
    return (
        f"p50 {quantile(values, 0.5):6.1f}  p95 {quantile(values, 0.95):6.1f}  "
        f"p99 {quantile(values, 0.99):6.1f}  max {max(values):6.1f}"
    )


def wait_for(what: str, done: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def feed_transactions(port: int) -> tuple[float, float]:
    """``(committed transactions, seconds in them)`` from the feed's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = dict.fromkeys(("committed", "seconds"), 0.0)
    for line in text.splitlines():
        if line.startswith('synkafka_feed_transactions_total{outcome="committed"}'):
            found["committed"] = float(line.split()[-1])
        elif line.startswith("synkafka_feed_batch_seconds_sum"):
            found["seconds"] = float(line.split()[-1])
    return found["committed"], found["seconds"]


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--warm-up",
        type=float,
        default=30.0,
        help="seconds written at --rate first, not measured (the broker's JIT warms)",
    )
    parser.add_argument("--batch", type=int, default=500, help="the feed's --batch")
    parser.add_argument(
        "--postgres", action="store_true", help="PostgreSQL, not SQLite"
    )
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args(argv)
    server = f"bench-{uuid.uuid4().hex[:8]}.test"
    prefix = topics.default_prefix(server)
    count = int(args.rate * args.seconds)
    with (
        kafka(args.bootstrap) as bootstrap,
        RedisServer() as redis_server,
        tempfile.TemporaryDirectory(prefix="bench-feed-latency-") as folder,
        database(args.postgres, None) as dsn,
        # This process hosts the handler: tuned as `synkafka feed-consume` tunes its own.
        interpreter.tuned(),
    ):
        run_dir = Path(folder)
        engine = "PostgreSQL" if dsn.startswith("postgres") else "SQLite"
        conn = connect(dsn, create=True)
        if engine == "SQLite":
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        create_synapse_tables(conn)
        admin = Admin(KafkaSettings(bootstrap_servers=bootstrap))
        admin.create_topics(topics.topic_specs(prefix, STREAM_NAMES))
        common = ["--bootstrap-servers", bootstrap, "--server-name", server]
        common += ["--metrics-port", "-1", "--log-level", "WARNING"]
        bridge = child(["bridge", "--redis", redis_server.url, *common], run_dir / "bridge.log")  # fmt: skip
        feed_port = free_port()
        feed = child(
            ["feed", "--db", dsn, "--batch", str(args.batch), *common[:4],
             "--metrics-port", str(feed_port), "--log-level", "WARNING"],
            run_dir / "feed.log",
        )  # fmt: skip
        handler = Handler(bootstrap, prefix)
        bridged = StreamReader(
            bootstrap, topics.stream_topic(prefix, "events"), f"{prefix}.bench-b"
        )
        client = redis.Redis.from_url(redis_server.url)
        try:
            wait_for(
                "the bridge to subscribe",
                lambda: dict(client.pubsub_numsub(server)).get(server.encode(), 0) > 0,
            )
            feed_topic = topics.feed_topic(prefix)
            wait_for(
                "synkafka feed to create its topic",
                lambda: admin.existing_topics([feed_topic]) == {feed_topic},
            )
            handler.start()
            bridged.start()
            writer = SynapseWriter(conn, WRITER)
            warm_up = int(args.rate * args.warm_up)
            warm, _, _ = write(writer, client, server, warm_up, args.rate)
            wait_for(
                "the warm-up events", lambda: warm.keys() <= handler.arrived.keys()
            )
            written, persisted, seconds = write(
                writer, client, server, count, args.rate
            )
            wait_for(
                "every event on the feed",
                lambda: written.keys() <= handler.arrived.keys(),
            )
            transactions = feed_transactions(feed_port)
        finally:
            handler.close()
            bridged.close()
            for process in (feed, bridge):
                process.terminate()
                process.wait(30)
            client.close()
            conn.close()
        lat = latencies_ms(written, handler.arrived)
        # The target's clock starts when the event is persisted (its write committed).
        from_persist = latencies_ms(persisted, handler.arrived)
        p99 = quantile(from_persist, 0.99)
        commits = [(persisted[e] - began) / 1e6 for e, began in written.items()]
        header(
            "feed latency (persist -> Redis -> bridge -> Kafka -> feed -> handler)",
            path=f"writer simulator ({engine}) + RDATA on Redis, `synkafka bridge` and "
            "`synkafka feed` as child processes, read_committed handler",
            events=f"{count:,} at {args.rate:,.0f}/s asked, {count / seconds:,.0f}/s "
            f"reached; feed --batch {args.batch}",
        )
        print(
            f"   persisted -> events topic     ms: {summary(latencies_ms(persisted, bridged.arrived))}"
        )
        print(f"   the database write itself     ms: {summary(commits)}")
        print(
            f"   to the handler (feed)         ms: {summary(lat)}  (from the write's start)"
        )
        print(f"   persisted -> handler          ms: {summary(from_persist)}")
        committed, batch_s = transactions
        print(
            f"   feed transactions: {committed:,.0f} (with the warm-up), "
            f"{(count + warm_up) / max(committed, 1):.1f} events and "
            f"{batch_s / max(committed, 1) * 1000:.1f} ms (poll to commit) each"
        )
        print(
            f"   target p99 < {TARGET_MS:g} ms, persisted -> handler: "
            f"{verdict(p99, TARGET_MS, below=True)}"
        )
        return {"p99_ms": p99, "rate": count / seconds}


if __name__ == "__main__":
    main()
