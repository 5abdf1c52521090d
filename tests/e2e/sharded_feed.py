"""The event feed's side of the sharded e2e test: what Synapse stored, what the feed holds."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.feed import FeedEvent

__all__ = ["FeedCheck", "stored_events"]


def stored_events(dsn: str) -> dict[str, tuple[str, str, int]]:
    """Every row of Synapse's ``events`` table: ``event_id -> (room, json, ordering)``."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT e.event_id, e.room_id, j.json, e.stream_ordering FROM events AS e"
            " JOIN event_json AS j USING (event_id)"
        ).fetchall()
    return {str(e): (str(room), str(js), int(order)) for e, room, js, order in rows}


@dataclass
class FeedCheck:
    """A ``read_committed`` reader of the whole feed topic, read until it has enough."""

    bootstrap: str
    prefix: str
    events: list[FeedEvent] = field(default_factory=list)
    partitions_of: dict[str, set[int]] = field(default_factory=dict)
    undecodable: int = 0

    def read_until(self, wanted: set[str], timeout_s: float) -> None:
        """Read from the start until every ID in ``wanted`` is in, or ``timeout_s``."""
        topic = topics.feed_topic(self.prefix)
        client = KafkaConsumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.prefix}.e2e-feed-reader",
                "isolation.level": "read_committed",
                "enable.auto.commit": "false",
            }
        )
        try:
            meta = client.list_topics(topic, timeout=10).topics[topic]
            client.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
            seen: set[str] = set()
            deadline = time.monotonic() + timeout_s
            quiet_until = 0.0
            while time.monotonic() < deadline:
                batch = client.consume(1000, 0.5)
                for message in batch:
                    if message.error() is None:
                        self._take(message.partition(), message.value() or b"", seen)
                if wanted <= seen:
                    # Then a little longer: a duplicate would come right behind.
                    quiet_until = quiet_until or time.monotonic() + 2.0
                    if time.monotonic() > quiet_until:
                        break
        finally:
            client.close()

    def _take(self, partition: int | None, value: bytes, seen: set[str]) -> None:
        event = decode(value)
        if not isinstance(event, FeedEvent):
            self.undecodable += 1
            return
        self.events.append(event)
        seen.add(event.event_id)
        self.partitions_of.setdefault(event.room_id, set()).add(partition or 0)

    def summary(self, stored: dict[str, tuple[str, str, int]]) -> str:
        """One line: database rows, on the feed, missing, duplicated, JSON differing."""
        counts = Counter(e.event_id for e in self.events)
        missing = set(stored) - set(counts)
        twice = [e for e, n in counts.items() if n > 1]
        differing = [
            e.event_id
            for e in self.events
            if e.event_id in stored and e.json != stored[e.event_id][1]
        ]
        return (
            f"feed: events table {len(stored)}, on the feed {len(counts)}, missing "
            f"{len(missing)}, duplicated {len(twice)}, JSON differing {len(differing)}, "
            f"not in the table {len(set(counts) - set(stored))}, rooms "
            f"{len(self.partitions_of)} (on more than one partition: "
            f"{sum(len(p) > 1 for p in self.partitions_of.values())})"
        )

    def out_of_order_rooms(self) -> list[str]:
        """Rooms whose feed records are not in stream-ordering order."""
        by_room: dict[str, list[int]] = {}
        for event in self.events:
            by_room.setdefault(event.room_id, []).append(event.stream_ordering)
        return [room for room, order in by_room.items() if order != sorted(order)]
