"""The demo's event feed: ``synkafka feed`` as a child process, and its output read back.

:class:`FeedChild` runs the feed next to the consumer for the whole scenario (it reads
the events topic from the start, history included). :class:`FeedTally` is what a
``read_committed`` reader finds on ``<prefix>.feed.events`` at the end, held against
every event the database holds: each one exactly once is the check.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.feed import FeedEvent
from adapter.devstack.demo.children import ChildProcess, Spawn, raise_if_exited
from adapter.devstack.demo.settings import DemoSettings
from adapter.io.db.connection import DbConnection
from adapter.io.kafka.consumer import Consumer, PartitionStart

__all__ = ["FeedChild", "FeedTally", "feed_caught_up", "read_feed", "stored_events"]

#: Feed partitions in the demo: enough to show rooms spread over partitions.
_PARTITIONS: Final = 4


class FeedChild:
    """``synkafka feed`` as a child process.

    Args:
        spawn: starts processes.
        settings: the demo's settings.
    """

    def __init__(self, spawn: Spawn, settings: DemoSettings) -> None:
        self._spawn = spawn
        self._settings = settings
        self.process: ChildProcess | None = None
        self.exit_code: int | None = None
        self.log_path = settings.run_dir / "feed.log"

    def argv(self) -> list[str]:
        """The command line."""
        s = self._settings
        return [
            s.python, "-m", "adapter", "feed",
            "--bootstrap-servers", s.bootstrap, "--server-name", s.server_name,
            "--db", s.dsn, "--partitions", str(_PARTITIONS),
            "--metrics-port", "-1", "--log-level", "WARNING",
        ]  # fmt: skip

    def start(self) -> None:
        """Start the feed."""
        self.process = self._spawn(self.argv(), self.log_path, "feed")

    def check_alive(self) -> None:
        """Raise if the feed exited without being stopped.

        Raises:
            ServiceError: it exited; the message holds the tail of its log.
        """
        raise_if_exited(self.process, "synkafka feed", self.log_path)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the feed (it aborts its open transaction); return its exit code."""
        if self.process is None:
            return self.exit_code
        self.exit_code = self.process.stop(timeout_s)
        self.process = None
        return self.exit_code


@dataclass(frozen=True, slots=True)
class FeedTally:
    """What the feed topic holds against what the database holds.

    Attributes:
        topic: the feed topic.
        records: feed records read (``read_committed``).
        expected: events the database holds (positive stream orderings).
        missing: of those, not on the feed.
        duplicated: records beyond the first of their event, and records of events
            the database does not hold.
    """

    topic: str
    records: int
    expected: int
    missing: int
    duplicated: int

    @property
    def exactly_once(self) -> bool:
        """Whether every stored event is on the feed exactly once, and nothing else."""
        return self.missing == 0 and self.duplicated == 0 and self.records > 0

    @classmethod
    def of(cls, topic: str, seen: Iterable[str], stored: Iterable[str]) -> FeedTally:
        """Compare the event IDs read from the feed with those the database holds."""
        counts = Counter(seen)
        expected = set(stored)
        extra = sum(n - 1 for n in counts.values()) + sum(
            n for event_id, n in counts.items() if event_id not in expected
        )
        return cls(
            topic,
            sum(counts.values()),
            len(expected),
            len(expected - counts.keys()),
            extra,
        )


def stored_events(conn: DbConnection) -> list[str]:
    """The IDs of every event the homeserver persisted on the events stream."""
    rows = conn.fetchall("SELECT event_id FROM events WHERE stream_ordering > 0")
    return [str(r[0]) for r in rows]


def _reader(settings: KafkaSettings, group: str) -> Consumer:
    return Consumer(settings, group, client_id="synkafka-demo-feed-reader")


def feed_caught_up(settings: KafkaSettings, prefix: str) -> bool:
    """Whether the feed's group committed the end of every events-topic partition."""
    events = topics.stream_topic(prefix, "events")
    client = _reader(settings, topics.feed_group(prefix))
    try:
        parts = [(events, p) for p in client.partitions(events)]
        return all(
            c.offset is not None
            and c.offset >= client.watermarks(events, c.partition)[1]
            for c in client.committed(parts)
        )
    finally:
        client.close()


def read_feed(
    settings: KafkaSettings, prefix: str, expected: int, timeout_s: float = 30.0
) -> list[str]:
    """The event ID of every committed record on the feed topic.

    Reads until at least ``expected`` records came and then a second passes without
    one (so repeats are read too), or until ``timeout_s``: fewer records then show
    as missing events.
    """
    topic = topics.feed_topic(prefix)
    client = _reader(settings, f"{prefix}.demo-feed-reader")
    try:
        client.assign([PartitionStart(topic, p, 0) for p in client.partitions(topic)])
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            messages = client.poll_messages(500, 0.2)
            for message in messages:
                event = decode(message.value() or b"")
                if isinstance(event, FeedEvent):
                    seen.append(event.event_id)
            if messages:
                idle_since = time.monotonic()
            elif len(seen) >= expected and time.monotonic() - idle_since >= 1.0:
                break
        return seen
    finally:
        client.close()
