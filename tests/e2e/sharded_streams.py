"""The stream side of tests/e2e/test_sharded_synapse.py: traffic, files, tables, topics.

What Synapse's tables hold between two positions, what the stream topics hold
between two sets of heads, what a consumer's JSON-lines file holds, and the table
of numbers the test prints.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from adapter.codec.avro_codec import decode
from adapter.core.commands import RdataCommand
from adapter.core.config import KafkaSettings
from adapter.core.rows import STREAM_NAMES, row_to_wire
from adapter.devstack.services.matrix_client import RoomsTraffic
from adapter.io.kafka.consumer import Consumer, PartitionStart
from adapter.io.kafka.records import KafkaRecord
from adapter.runtime.backfill import DatabaseReader
from tests.integration.harness import wait_for

__all__ = [
    "Deliveries",
    "Key",
    "TrafficThread",
    "canonical",
    "database_rows",
    "event_writers",
    "kafka_updates",
    "numbers",
    "positions",
    "read_range",
    "rows_count",
    "topic_heads",
]

Key = tuple[str, str, int]  # stream, writer, token


def canonical(row: Any) -> str:
    """A wire row in a form that compares equal across JSON round trips."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"))


class TrafficThread:
    """Runs ``RoomsTraffic.step(0..steps-1)`` in the background; faults wait on it."""

    def __init__(self, traffic: RoomsTraffic, steps: int) -> None:
        self.traffic = traffic
        self.steps = steps
        self.done = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        try:
            for n in range(self.steps):
                self.traffic.step(n)
                self.done = n + 1
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test thread
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def reached(self, step: int) -> bool:
        if self.error is not None:
            raise AssertionError(f"the traffic failed: {self.error!r}")
        return self.done >= step

    def wait(self, step: int, timeout_s: float = 120.0) -> None:
        wait_for(lambda: self.reached(step), timeout_s, f"traffic step {step}")

    def join(self, timeout_s: float = 120.0) -> None:
        self.wait(self.steps, timeout_s)
        self._thread.join(timeout_s)


@dataclass
class Deliveries:
    """The consumer's JSON lines, read as the file grows (complete lines only)."""

    path: Path
    offset: int = 0
    # (stream, writer, token, row) -> how often the file holds it.
    copies: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    rows_per_stream: Counter[str] = field(default_factory=Counter)
    backfill_rows: Counter[str] = field(default_factory=Counter)
    bad_lines: list[str] = field(default_factory=list)

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for raw in complete.splitlines():
            try:
                update = json.loads(raw)
            except ValueError:
                # A half-written line a SIGKILL left, continued by the next run.
                self.bad_lines.append(raw.decode("utf-8", "replace")[:200])
                continue
            stream, writer, token = update["stream"], update["writer"], update["token"]
            for row in update["rows"]:
                self.copies[(stream, writer, token, canonical(row))] += 1
                self.rows_per_stream[stream] += 1
                if update["source"] == "backfill":
                    self.backfill_rows[stream] += 1

    def duplicated(self) -> Counter[str]:
        """Per stream: copies beyond the first of each (stream, writer, token, row)."""
        out: Counter[str] = Counter()
        for (stream, _w, _t, _r), copies in self.copies.items():
            out[stream] += copies - 1
        return out

    def missing(self, expected: dict[Key, set[str]]) -> dict[str, int]:
        """Per stream: how many expected rows the file does not hold yet."""
        out: Counter[str] = Counter()
        for (stream, writer, token), rows in expected.items():
            for row in rows:
                if (stream, writer, token, row) not in self.copies:
                    out[stream] += 1
        return dict(out)


def positions(dsn: str) -> dict[tuple[str, str], int]:
    """Every writer's persisted token of every stream with a database source."""
    reader = DatabaseReader(dsn)
    try:
        return {
            (stream, writer): token
            for stream in STREAM_NAMES
            if reader.has_source(stream)
            for writer, token in reader.positions(stream).items()
        }
    finally:
        reader.close()


def database_rows(
    dsn: str, start: dict[tuple[str, str], int], end: dict[tuple[str, str], int]
) -> dict[Key, set[str]]:
    """The rows Synapse's tables hold in ``(start, end]`` per stream and writer."""
    expected: dict[Key, set[str]] = {}
    reader = DatabaseReader(dsn)
    try:
        for (stream, writer), position in sorted(end.items()):
            first = start.get((stream, writer), 0)
            for token, typed in reader.read(stream, writer, first, position):
                expected[(stream, writer, token)] = {
                    canonical(row_to_wire(row)) for row in typed
                }
    finally:
        reader.close()
    return expected


def event_writers(dsn: str, event_ids: set[str]) -> dict[str, str]:
    """``event_id -> instance_name`` from the ``events`` table itself."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_id, instance_name FROM events WHERE event_id = ANY(%s)",
            (sorted(event_ids),),
        ).fetchall()
    return {str(event_id): str(writer) for event_id, writer in rows}


def topic_heads(bootstrap: str, names: list[str]) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of ``names``, as of now."""
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), "e2e-heads")
    try:
        return {
            (topic, partition): consumer.watermarks(topic, partition)[1]
            for topic in names
            for partition in consumer.partitions(topic)
        }
    finally:
        consumer.close()


def read_range(
    bootstrap: str,
    start: dict[tuple[str, int], int],
    end: dict[tuple[str, int], int],
    timeout_s: float = 60.0,
) -> list[KafkaRecord]:
    """Every record at offsets ``[start, end)`` of each partition, in offset order."""
    wanted = {
        tp: (start.get(tp, 0), head)
        for tp, head in end.items()
        if head > start.get(tp, 0)
    }
    if not wanted:
        return []
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), "e2e-range")
    out: list[KafkaRecord] = []
    try:
        consumer.assign(
            [PartitionStart(t, p, first) for (t, p), (first, _) in wanted.items()]
        )
        done: set[tuple[str, int]] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(wanted):
            assert time.monotonic() < deadline, (
                f"reading {len(wanted)} partitions took over {timeout_s:.0f} s; "
                f"not done: {sorted(set(wanted) - done)}"
            )
            for record in consumer.poll_batch(1000, 0.2):
                tp = (record.topic, record.partition)
                if record.offset < wanted[tp][1]:
                    out.append(record)
                if record.offset + 1 >= wanted[tp][1]:
                    done.add(tp)
    finally:
        consumer.close()
    return sorted(out, key=lambda r: (r.topic, r.partition, r.offset))


def kafka_updates(records: list[KafkaRecord]) -> dict[Key, set[str]]:
    """The (stream, writer, token) -> rows that stream-topic records hold.

    A token published twice (the bridge re-publishes from the database what it may
    not have acknowledged before a SIGKILL) counts once, with the union of its rows.
    """
    out: dict[Key, set[str]] = {}
    for record in records:
        if record.value is None:
            continue
        command = decode(record.value)
        if not isinstance(command, RdataCommand):
            continue  # POSITION: no rows
        assert command.token is not None, f"RDATA without a token at {record.where}"
        key = (command.stream_name, command.instance_name, command.token)
        out.setdefault(key, set()).update(
            canonical(row_to_wire(row)) for row in command.rows
        )
    return out


def rows_count(updates: dict[Key, set[str]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (stream, _writer, _token), rows in updates.items():
        out[stream] += len(rows)
    return out


def numbers(
    expected: dict[Key, set[str]],
    on_kafka: dict[Key, set[str]],
    consumers: list[tuple[str, Deliveries]],
) -> str:
    """Per consumer and stream: database rows, Kafka updates, delivered, missing, duplicated.

    ``missing db`` counts database rows of ``(start, end]`` that are not in the
    file; ``missing kafka`` counts (stream, writer, token, row) the stream topics
    hold from the start to the end of the traffic that are not in the file.
    """
    db_rows = rows_count(expected)
    kafka_rows = rows_count(on_kafka)
    lines: list[str] = []
    for title, deliveries in consumers:
        missing_db = deliveries.missing(expected)
        missing_kafka = deliveries.missing(on_kafka)
        duplicated = deliveries.duplicated()
        streams = sorted(
            set(db_rows) | set(kafka_rows) | set(deliveries.rows_per_stream)
        )
        lines.append(title)
        lines.append(
            f"{'stream':<14}{'db rows':>9}{'kafka':>8}{'delivered':>11}{'backfill':>10}"
            f"{'missing db':>12}{'missing kafka':>15}{'duplicated':>12}"
        )
        for stream in streams:
            lines.append(
                f"{stream:<14}{db_rows[stream]:>9}{kafka_rows[stream]:>8}"
                f"{deliveries.rows_per_stream[stream]:>11}"
                f"{deliveries.backfill_rows[stream]:>10}"
                f"{missing_db.get(stream, 0):>12}{missing_kafka.get(stream, 0):>15}"
                f"{duplicated[stream]:>12}"
            )
        # The events split per persister: both must have written, each under its name.
        db_events: Counter[str] = Counter()
        for (stream, writer, _token), rows in expected.items():
            if stream == "events":
                db_events[writer] += len(rows)
        file_events: Counter[str] = Counter()
        for (stream, writer, _t, _r), copies in deliveries.copies.items():
            if stream == "events":
                file_events[writer] += copies
        for writer in sorted(set(db_events) | set(file_events)):
            lines.append(
                f"  {writer:<12}{db_events[writer]:>9}{'':>8}{file_events[writer]:>11}"
                "   (events per writer)"
            )
    return "\n".join(lines)
