"""Every Prometheus metric synkafka exports, built against an injected registry.

Names are ``synkafka_<noun>_<unit>``; counters are declared without ``_total`` because
prometheus_client appends it on export. Labels are bounded sets: stream and command
names (fixed by the protocol), writer instance names and topic names (fixed by the
deployment), partitions, a ``source`` or ``reason`` from a short fixed list. Never a
user ID, a device ID or an access token.

Tests build ``Metrics(CollectorRegistry())`` and read values with
``registry.get_sample_value``; processes use :func:`default_metrics`.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

__all__ = [
    "LATENCY_BUCKETS_S",
    "CollectorRegistry",
    "HistogramBatch",
    "Metrics",
    "default_metrics",
    "render_latest",
]

# Handler and lag latencies of interest run from sub-millisecond (a handler that
# touches one row) to tens of seconds (a stalled bridge).
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class HistogramBatch:
    """Observations for one histogram child, added to it in one go by :meth:`flush`.

    ``Histogram.observe`` takes a lock for the sum and one for a bucket on every
    call; a stream worker handling tens of thousands of updates a second keeps its
    handler times here and flushes once per batch. The exported values are the
    same as with ``observe``. It adds to the child's bucket and sum values, which
    are prometheus_client internals: where they are missing (another version, the
    multiprocess mode) every observation goes straight to ``observe``.

    Args:
        child: a labelled ``Histogram`` child (``histogram.labels(...)``).
    """

    def __init__(self, child: Any) -> None:
        self._child = child
        bounds = getattr(child, "_upper_bounds", None)
        self._buckets: Any = getattr(child, "_buckets", None)
        self._sum_value: Any = getattr(child, "_sum", None)
        self.direct = not (
            isinstance(bounds, list)
            and isinstance(self._buckets, list)
            and len(bounds) == len(self._buckets)
            and all(callable(getattr(b, "inc", None)) for b in self._buckets)
            and callable(getattr(self._sum_value, "inc", None))
        )
        """True when observations go straight to the child (no internals)."""
        self._bounds: list[float] = [] if self.direct else list(bounds or [])
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = 0

    def observe(self, amount: float) -> None:
        """Record one observation (exported at the next :meth:`flush`)."""
        if self.direct:
            self._child.observe(amount)
            return
        # The first bucket whose upper bound is >= amount, as observe picks it.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        self._pending += 1

    def flush(self) -> None:
        """Add what was observed since the last flush to the histogram."""
        if not self._pending:
            return
        for i, count in enumerate(self._counts):
            if count:
                self._buckets[i].inc(count)
                self._counts[i] = 0
        self._sum_value.inc(self._sum)
        self._sum = 0.0
        self._pending = 0


class Metrics:
    """The metric objects of one process.

    Args:
        registry: where to register; a fresh ``CollectorRegistry()`` in tests.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.build_info = Info(
            "synkafka_build", "synkafka version of this process.", registry=r
        )

        # Commands and rows.
        self.commands_in = Counter(
            "synkafka_commands_in",
            "Replication commands received (from Kafka, or from Redis by the bridge).",
            ["command", "stream"],
            registry=r,
        )
        self.commands_out = Counter(
            "synkafka_commands_out",
            "Replication commands published to Kafka and acknowledged by the broker.",
            ["command", "stream"],
            registry=r,
        )
        self.rows_applied = Counter(
            "synkafka_rows_applied",
            "Stream rows handed to handlers, by where they came from (kafka or backfill).",
            ["stream", "source"],
            registry=r,
        )
        self.rows_dropped = Counter(
            "synkafka_rows_dropped",
            "Stream rows not handed to handlers, by reason (duplicate: at or below the current token).",
            ["stream", "reason"],
            registry=r,
        )
        self.handler_duration = Histogram(
            "synkafka_handler_duration_seconds",
            "Time a stream handler took for one batch of rows of one token.",
            ["stream"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.handler_failures = Counter(
            "synkafka_handler_failures",
            "Handler calls that raised; each is retried with backoff, then dead-lettered or stops the consumer.",
            ["stream"],
            registry=r,
        )

        # Positions and lag.
        self.stream_position = Gauge(
            "synkafka_stream_position",
            "The consumer's current token per stream and writer (its POSITION).",
            ["stream", "writer"],
            registry=r,
        )
        self.stream_head = Gauge(
            "synkafka_stream_head",
            "The newest token seen for a stream writer, on Kafka or in the database.",
            ["stream", "writer"],
            registry=r,
        )
        self.stream_lag_tokens = Gauge(
            "synkafka_stream_lag_tokens",
            "How many tokens the consumer is behind the writer's newest known token.",
            ["stream", "writer"],
            registry=r,
        )
        self.consumer_lag_messages = Gauge(
            "synkafka_consumer_lag_messages",
            "Records between the consumer's position and the partition's high watermark.",
            ["topic", "partition"],
            registry=r,
        )
        self.caught_up = Gauge(
            "synkafka_caught_up",
            "1 when the stream reached its pinned head and finished backfill, else 0.",
            ["stream"],
            registry=r,
        )
        self.last_record_timestamp = Gauge(
            "synkafka_last_record_timestamp_seconds",
            "Kafka timestamp of the last record handled, per stream.",
            ["stream"],
            registry=r,
        )

        # Backfill.
        self.backfill_rows = Counter(
            "synkafka_backfill_rows",
            "Rows read from the database to fill a gap.",
            ["stream"],
            registry=r,
        )
        self.backfill_remaining_tokens = Gauge(
            "synkafka_backfill_remaining_tokens",
            "Tokens still to read from the database for a stream writer (0 when idle).",
            ["stream", "writer"],
            registry=r,
        )
        self.backfills = Counter(
            "synkafka_backfills",
            "Backfill runs started, by outcome (started, done, failed).",
            ["stream", "outcome"],
            registry=r,
        )

        # Bad input and failures.
        self.decode_failures = Counter(
            "synkafka_decode_failures",
            "Records or lines that could not be decoded.",
            ["topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            "synkafka_dead_letters",
            "Records written to the dead-letter topic, by reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "synkafka_delivery_failures",
            "Produced records the broker did not acknowledge.",
            ["topic"],
            registry=r,
        )
        self.reconnects = Counter(
            "synkafka_reconnects",
            "Attempts to (re)connect or restart after a failure, by component.",
            ["component"],
            registry=r,
        )
        self.backoff_seconds = Gauge(
            "synkafka_backoff_seconds",
            "Current reconnect backoff delay, by component (0 when healthy).",
            ["component"],
            registry=r,
        )
        self.records_out = Counter(
            "synkafka_records_out",
            "Records acknowledged by the broker, by topic.",
            ["topic"],
            registry=r,
        )

        # Presence.
        self.presence_instances = Gauge(
            "synkafka_presence_instances",
            "Instances with a live syncing set in the presence view.",
            registry=r,
        )
        self.presence_syncing_users = Gauge(
            "synkafka_presence_syncing_users",
            "Distinct users syncing on any live instance.",
            registry=r,
        )
        self.presence_expired = Counter(
            "synkafka_presence_expired_instances",
            "Instances dropped because their heartbeat was older than the expiry.",
            registry=r,
        )
        self.presence_published = Counter(
            "synkafka_presence_published",
            "Presence records published by this instance, by kind (snapshot, clear, tombstone).",
            ["kind"],
            registry=r,
        )

        # Bridge.
        self.bridge_lines = Counter(
            "synkafka_bridge_lines",
            "Lines received from Synapse's Redis channels, by command.",
            ["command"],
            registry=r,
        )
        self.bridge_parse_failures = Counter(
            "synkafka_bridge_parse_failures",
            "Redis lines the bridge could not parse (sent to the dead-letter topic).",
            registry=r,
        )
        self.bridge_lag = Histogram(
            "synkafka_bridge_lag_seconds",
            "Time from receiving a line on Redis to the broker acknowledging its record.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.bridge_gaps = Counter(
            "synkafka_bridge_gaps",
            "Gaps the bridge saw in a stream writer's tokens, by outcome (repaired, unrepaired).",
            ["stream", "outcome"],
            registry=r,
        )
        self.bridge_gap_rows = Counter(
            "synkafka_bridge_gap_rows",
            "Rows read from Synapse's database to repair gaps.",
            ["stream"],
            registry=r,
        )
        self.bridge_gap_tokens = Counter(
            "synkafka_bridge_gap_tokens",
            "Tokens covered by gap repairs.",
            ["stream"],
            registry=r,
        )
        self.bridge_connected = Gauge(
            "synkafka_bridge_redis_connected",
            "1 while the bridge is subscribed to Synapse's Redis channels.",
            registry=r,
        )

        # The event feed.
        self.feed_events = Counter(
            "synkafka_feed_events",
            "Events-stream rows handled by the feed: published, missing content, or "
            "duplicate (a re-sent row's event, already published).",
            ["outcome"],
            registry=r,
        )
        self.feed_transactions = Counter(
            "synkafka_feed_transactions",
            "Feed transactions, committed or aborted (then retried).",
            ["outcome"],
            registry=r,
        )
        self.feed_stream_ordering = Gauge(
            "synkafka_feed_stream_ordering",
            "Stream ordering of the last event the feed committed, by persister.",
            ["writer"],
            registry=r,
        )
        self.feed_batch_seconds = Histogram(
            "synkafka_feed_batch_seconds",
            "Seconds from polling a batch to its transaction's commit.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )

        # Feed readers (synkafka feed-consume).
        self.feed_reader_events = Counter(
            "synkafka_feed_reader_events",
            "Feed records a reader finished: handled, or dead-lettered.",
            ["outcome"],
            registry=r,
        )
        self.feed_reader_handler_failures = Counter(
            "synkafka_feed_reader_handler_failures",
            "Feed reader handler calls that raised (each attempt counts).",
            registry=r,
        )
        self.feed_reader_handler_seconds = Histogram(
            "synkafka_feed_reader_handler_seconds",
            "Seconds one feed reader handler call took, retries excluded.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.feed_reader_lag = Gauge(
            "synkafka_feed_reader_lag_messages",
            "Records behind the feed topic's head, per partition this member reads.",
            ["partition"],
            registry=r,
        )
        self.feed_reader_partitions = Gauge(
            "synkafka_feed_reader_partitions",
            "Feed topic partitions assigned to this member of its group.",
            registry=r,
        )


def default_metrics() -> Metrics:
    """The process-wide metrics on prometheus_client's default registry.

    Call it once, where the process is built (the CLI).
    """
    return Metrics(REGISTRY)


def render_latest(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry's samples in Prometheus' text exposition format.

    The health server (:mod:`adapter.runtime.health`) serves this on ``/metrics``;
    it lives here so that prometheus_client stays confined to this module.

    Args:
        registry: the registry to render, usually ``Metrics.registry``.

    Returns:
        The body and its ``Content-Type`` header value.
    """
    return generate_latest(registry), CONTENT_TYPE_LATEST
