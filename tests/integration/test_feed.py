"""`synkafka feed` against the real broker and database: every event once, in room order.

The feed runs as its own process (as deployed) and is SIGKILLed mid-run; a
``read_committed`` reader then counts every event on the feed topic: none lost, none
twice, each with the JSON the database holds, each room's events in stream order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition

from adapter.codec.avro_codec import decode, encode
from adapter.core import topics
from adapter.core.feed import FeedEvent
from adapter.devstack.writer import SynapseWriter
from adapter.io.db.connection import DbConnection
from adapter.runtime.publisher import Publisher
from tests.integration.harness import (
    dead_letter_records,
    ensure_topics,
    json_lines,
    make_database,
    open_db,
    publish_written,
    wait_for,
)

pytestmark = pytest.mark.integration

ROOMS = [f"!room{n}:test" for n in range(6)]


def _start_feed(
    bootstrap: str, prefix: str, dsn: str, log: Path, *extra: str, batch: int = 40
) -> subprocess.Popen[bytes]:
    """The feed as its own process; its log is appended to ``log``."""
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [
                sys.executable, "-m", "adapter", "feed",
                "--bootstrap-servers", bootstrap, "--prefix", prefix, "--db", dsn,
                "--metrics-port", "-1", "--partitions", "4", "--batch", str(batch), *extra,
            ],
            stderr=stderr,
        )  # fmt: skip


class FeedReader:
    """A ``read_committed`` reader of the whole feed topic, read as it grows."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.topic = topics.feed_topic(prefix)
        self.records: list[tuple[int | None, bytes | None, bytes | None]] = []
        self._client = KafkaConsumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{prefix}.feed-test-reader",
                "isolation.level": "read_committed",
                "enable.auto.commit": "false",
            }
        )
        partitions: list[int] = []

        def created() -> bool:  # the feed creates its topic when it starts
            meta = self._client.list_topics(self.topic, timeout=10)
            partitions[:] = list(meta.topics[self.topic].partitions)
            return bool(partitions)

        wait_for(created, timeout_s=30, what=f"{self.topic} to exist")
        self._client.assign([TopicPartition(self.topic, p, 0) for p in partitions])

    def read(self, timeout_s: float = 0.5) -> int:
        """Take what has been committed since the last call; return the total."""
        for message in self._client.consume(1000, timeout_s):
            if message.error() is None:
                self.records.append(
                    (message.partition(), message.key(), message.value())
                )
        return len(self.records)

    def wait_for_count(self, count: int, timeout_s: float = 60.0) -> None:
        """Read until ``count`` records are in, then a second more for any extra."""
        wait_for(
            lambda: self.read() >= count,
            timeout_s=timeout_s,
            what=f"{count} feed records",
        )
        self.read(1.0)

    def close(self) -> None:
        self._client.close()


def _stored_json(dsn: str) -> dict[str, str]:
    with open_db(dsn) as conn:
        return {
            str(e): str(j)
            for e, j in conn.fetchall("SELECT event_id, json FROM event_json")
        }


def _write_and_publish(
    writers: list[SynapseWriter], publisher: Publisher, count: int, start: int
) -> list[str]:
    """``count`` events, spread over rooms; each room belongs to one persister."""
    ids: list[str] = []
    for n in range(start, start + count):
        room = ROOMS[n % len(ROOMS)]
        writer = writers[(n % len(ROOMS)) % len(writers)]
        token, rows = writer.send_event(
            room, "m.room.message", content={"body": f"message {n}"}
        )
        publish_written(publisher, "events", writer.instance_name, [(token, rows)])
        ids.append(str(rows[0][1][0]))
    publisher.flush()
    return ids


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_every_event_reaches_the_feed_once_across_sigkills(
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
    pg_dsn: str,
    tmp_path: Path,
    engine: str,
) -> None:
    dsn = make_database(engine, pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    conn = open_db(dsn)
    writers = [SynapseWriter(conn, "persister1"), SynapseWriter(conn, "persister2")]
    ids = _write_and_publish(writers, publisher, 300, 0)

    log = tmp_path / "feed.log"
    # Small transactions: a round's backlog takes the feed most of a second, so a
    # SIGKILL sent on its first progress lands mid-stream even on a slow machine.
    feed = _start_feed(kafka_bootstrap, prefix, dsn, log, batch=10)
    reader = FeedReader(kafka_bootstrap, prefix)
    kills_mid_stream = 0
    try:
        for round_ in range(2):
            # A backlog for the feed, then SIGKILL as soon as it makes progress. The
            # feed is paused while the backlog is written: it commits a batch in a
            # few tens of ms and would otherwise keep up with the writes.
            feed.send_signal(signal.SIGSTOP)
            ids += _write_and_publish(writers, publisher, 400, 300 + 400 * round_)
            before = reader.read()
            feed.send_signal(signal.SIGCONT)
            wait_for(lambda: reader.read(0.05) > before, what="feed progress")  # noqa: B023
            feed.send_signal(signal.SIGKILL)
            feed.wait(10)
            # Dead now: what is committed stays; anything open was cut short.
            if reader.read(1.0) < len(ids):
                kills_mid_stream += 1
            feed = _start_feed(kafka_bootstrap, prefix, dsn, log, batch=10)
        ids += _write_and_publish(writers, publisher, 100, 1100)
        reader.wait_for_count(len(ids))
        records = reader.records
    finally:
        feed.send_signal(signal.SIGTERM)
        feed.wait(30)
        reader.close()
        conn.close()
    stderr = log.read_text()
    assert kills_mid_stream >= 1, "no SIGKILL landed while the feed had work left"
    assert feed.returncode == 0, stderr[-2000:]
    assert "feed stopped: " in stderr.splitlines()[-1]

    decoded = [decode(value or b"") for _, _, value in records]
    events = [e for e in decoded if isinstance(e, FeedEvent)]
    assert len(events) == len(decoded), "a feed record that is not an event"
    counts = Counter(e.event_id for e in events)
    assert sorted(counts) == sorted(ids), "lost or unknown events"
    assert [e for e, n in counts.items() if n > 1] == [], "events on the feed twice"
    stored = _stored_json(dsn)
    assert all(e.json == stored[e.event_id] for e in events)
    # Keyed by room: one room, one partition, in stream order.
    partitions_of: dict[str, set[int | None]] = {}
    for (partition, key, _), event in zip(records, events, strict=True):
        assert key == event.room_id.encode()
        partitions_of.setdefault(event.room_id, set()).add(partition)
    assert all(len(p) == 1 for p in partitions_of.values())
    for room in ROOMS:
        orderings = [e.stream_ordering for e in events if e.room_id == room]
        assert orderings == sorted(orderings), f"{room} out of order"
        assert len({e.instance_name for e in events if e.room_id == room}) == 1


def _sqlite_persister(
    bootstrap: str, prefix: str, tmp_path: Path
) -> tuple[str, DbConnection, SynapseWriter]:
    """A SQLite Synapse database, the events topic, and one persister writing."""
    dsn = make_database("sqlite", "", tmp_path)
    ensure_topics(bootstrap, prefix, ["events"])
    conn = open_db(dsn)
    return dsn, conn, SynapseWriter(conn, "persister1")


def test_flags_json_values_and_dead_letters(
    kafka_bootstrap: str, prefix: str, publisher: Publisher, tmp_path: Path
) -> None:
    dsn, conn, writer = _sqlite_persister(kafka_bootstrap, prefix, tmp_path)
    written = [
        writer.send_event("!r:test", "m.room.message", content={"body": "hi"}),
        writer.send_event("!r:test", "m.room.message", rejected=True),
        writer.send_event(
            "!r:test", "m.room.member", state_key="@o:test", outlier=True
        ),
    ]
    target = str(written[0][1][0][1][0])
    written.append(writer.send_event("!r:test", "m.room.redaction", redacts=target))
    gone = writer.send_event("!gone:test", "m.room.message")
    conn.execute("DELETE FROM event_json WHERE event_id = ?", (gone[1][0][1][0],))
    conn.close()
    publish_written(publisher, "events", "persister1", [*written, gone])
    publisher.producer.produce(topics.stream_topic(prefix, "events"), b"\x00not avro")
    publisher.flush()

    log = tmp_path / "feed.log"
    feed = _start_feed(kafka_bootstrap, prefix, dsn, log, "--value-format", "json")
    try:
        reader = FeedReader(kafka_bootstrap, prefix)
        reader.wait_for_count(4)
        reader.close()
        records = reader.records
        letters = dead_letter_records(kafka_bootstrap, prefix, 2)
    finally:
        feed.send_signal(signal.SIGTERM)
        feed.wait(30)
    stderr = log.read_text()
    values = [json.loads(value or b"null") for _, _, value in records]
    assert [v["event_id"] for v in values] == [str(w[1][0][1][0]) for w in written], (
        stderr[-3000:]
    )
    message, rejected, outlier, redaction = values
    assert json.loads(message["json"])["content"] == {"body": "hi"}
    assert rejected["rejected"] is True
    assert rejected["rejection_reason"]
    assert outlier["outlier"] is True
    assert outlier["state_key"] == "@o:test"
    assert redaction["redacts"] == target
    reasons = sorted(
        headers[topics.HEADER_DLQ_REASON].decode() for _, headers in letters
    )
    assert reasons[0].startswith("decode:"), reasons
    assert reasons[1] == "no content in the database", reasons
    # An Avro reader's bytes would be the same record: the JSON form is complete.
    assert decode(encode(FeedEvent(**message))) == FeedEvent(**message)


def test_records_re_sent_to_a_restarted_feed_are_not_published_again(
    kafka_bootstrap: str, prefix: str, publisher: Publisher, tmp_path: Path
) -> None:
    dsn, conn, writer = _sqlite_persister(kafka_bootstrap, prefix, tmp_path)
    written = [writer.send_event(ROOMS[n % 3], "m.room.message") for n in range(30)]
    conn.close()
    publish_written(publisher, "events", "persister1", written)
    publisher.flush()
    log = tmp_path / "feed.log"
    feed = _start_feed(kafka_bootstrap, prefix, dsn, log)
    reader = FeedReader(kafka_bootstrap, prefix)
    try:
        reader.wait_for_count(30)
        feed.send_signal(signal.SIGTERM)
        assert feed.wait(30) == 0, log.read_text()[-2000:]
        # What the bridge does after a reconnect: the last records again.
        publish_written(publisher, "events", "persister1", written[-10:])
        publisher.flush()
        feed = _start_feed(kafka_bootstrap, prefix, dsn, log)
        wait_for(
            lambda: "resuming after tokens {'persister1': 30}" in log.read_text(),
            what="the restarted feed to read its tokens",
        )
        wait_for(lambda: _input_lag(kafka_bootstrap, prefix) == 0, what="the re-sends")
        assert reader.read(1.0) == 30, "re-sent events were published again"
    finally:
        feed.send_signal(signal.SIGTERM)
        feed.wait(30)
        reader.close()


def _input_lag(bootstrap: str, prefix: str) -> int:
    """Records of the events topic the feed's group has not committed yet."""
    client = KafkaConsumer(
        {"bootstrap.servers": bootstrap, "group.id": topics.feed_group(prefix)}
    )
    try:
        tp = TopicPartition(topics.stream_topic(prefix, "events"), 0)
        (committed,) = client.committed([tp], timeout=10)
        _, high = client.get_watermark_offsets(tp, timeout=10)
        return high - max(committed.offset, 0)
    finally:
        client.close()


def test_a_reader_that_caught_up_shows_no_lag_past_the_feeds_markers(
    kafka_bootstrap: str, prefix: str, publisher: Publisher, tmp_path: Path
) -> None:
    """Each feed transaction leaves a commit marker that takes an offset; a reader
    that handled everything commits past it, so `synkafka lag` says 0, not 1."""
    dsn, conn, writer = _sqlite_persister(kafka_bootstrap, prefix, tmp_path)
    written = [
        writer.send_event(f"!r{n % 3}:test", "m.room.message", content={"n": n})
        for n in range(9)
    ]
    conn.close()
    publish_written(publisher, "events", "persister1", written)
    publisher.flush()
    feed = _start_feed(kafka_bootstrap, prefix, dsn, tmp_path / "feed.log", batch=2)
    # The member starts once the feed made its topic (it refuses a missing one).
    reader = FeedReader(kafka_bootstrap, prefix)
    try:
        reader.wait_for_count(9)
    finally:
        reader.close()
    out = tmp_path / "out.jsonl"
    member = subprocess.Popen(
        [
            sys.executable, "-m", "adapter", "feed-consume",
            "--bootstrap-servers", kafka_bootstrap, "--prefix", prefix,
            "--group", "lagcheck", "--output", str(out), "--metrics-port", "-1",
            "--commit-interval", "0.2",
        ],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    rows: list[dict[str, object]] = []

    def no_lag() -> bool:
        found = subprocess.run(
            [
                sys.executable, "-m", "adapter", "lag",
                "--bootstrap-servers", kafka_bootstrap, "--prefix", prefix,
                "--group", topics.feed_reader_group(prefix, "lagcheck"), "--json",
            ],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        rows[:] = [json.loads(x) for x in found.stdout.splitlines()]
        return bool(rows) and all(r["lag_messages"] == 0 for r in rows)

    try:
        wait_for(lambda: len(json_lines(out)) == 9, 60, "the nine events handled")
        wait_for(no_lag, 30, "no lag on any partition")
    finally:
        for process in (member, feed):
            process.send_signal(signal.SIGTERM)
        _, stderr = member.communicate(timeout=30)
        feed.wait(30)
    assert member.returncode == 0, stderr.decode()[-2000:]
    assert feed.returncode == 0
    # Something was there to step over: the rooms' partitions hold markers.
    assert any(int(str(r["committed"])) > 0 for r in rows), rows
