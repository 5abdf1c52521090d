"""``synkafka feed``'s loop: the events stream topic in, one record per event out.

Each turn reads a batch from ``<prefix>.stream.events``, reads the content of every
event it names from Synapse's database in one query, and writes the feed records
(and any dead letters) plus the input offsets in ONE Kafka transaction (see
:mod:`adapter.io.kafka.transactions`). The decisions are
:func:`adapter.core.feed.plan_batch`'s; this module only carries them out.

A database or broker failure aborts the open transaction and rewinds the input to
the batch's first records, so the batch runs again, whole, after a backoff: nothing
is committed past an event that was not published, and a ``read_committed`` reader
never sees the aborted attempt.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from adapter.codec.avro_codec import decode, encode
from adapter.core import dead_letters, topics
from adapter.core.backoff import Backoff
from adapter.core.commands import RdataCommand
from adapter.core.errors import BackfillError, DecodeError, KafkaIOError
from adapter.core.feed import (
    Duplicate,
    FeedEvent,
    FeedInput,
    Missing,
    Output,
    Publish,
    RecentEvents,
    advance_tokens,
    feed_event_ids,
    feed_event_to_json,
    plan_batch,
)
from adapter.core.positions import decode_commit_metadata, encode_commit_metadata
from adapter.io.db.connection import DbConnection, connect
from adapter.io.db.event_content import read_feed_events
from adapter.io.kafka.consumer import Message
from adapter.io.kafka.transactions import AbortedTransaction, TransactionalPipe
from adapter.io.metrics import Metrics

__all__ = ["VALUE_FORMATS", "EventContent", "EventFeed", "FeedOptions"]

logger = logging.getLogger(__name__)

#: ``--value-format`` choices: Avro single-object encoding, or plain JSON objects.
VALUE_FORMATS: Final = ("avro", "json")

#: Header naming the value's format, so a reader can tell without trying.
HEADER_FORMAT: Final = "synkafka.format"


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """How the feed runs.

    Attributes:
        prefix: the topic prefix.
        value_format: ``avro`` or ``json`` (see :data:`VALUE_FORMATS`).
        max_batch: input records per transaction at most.
        poll_timeout_s: how long one poll waits for the first record.
        dlq_limit: the largest dead-letter value stored whole.
    """

    prefix: str
    value_format: str = "avro"
    max_batch: int = 500
    poll_timeout_s: float = 0.2
    dlq_limit: int = dead_letters.DEFAULT_MAX_BYTES


class EventContent:
    """Reads events' content over one database connection, reopened after a failure.

    Args:
        dsn: Synapse's database (see :func:`~adapter.io.db.connection.parse_dsn`).
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: DbConnection | None = None

    def __call__(self, event_ids: Sequence[str]) -> Mapping[str, FeedEvent]:
        """The stored form of each event the database has.

        Raises:
            BackfillError: the database failed (the next call reconnects).
        """
        if self._conn is None:
            self._conn = connect(self._dsn)
        try:
            return read_feed_events(self._conn, event_ids)
        except BackfillError:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection, if open."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class EventFeed:
    """Runs the feed until stopped.

    Args:
        pipe: the transactional consumer/producer pair, not yet started.
        read_events: the stored content of event IDs (Synapse's database).
        options: see :class:`FeedOptions`.
        metrics: where to count; ``None`` counts nothing.
    """

    def __init__(
        self,
        pipe: TransactionalPipe,
        read_events: Callable[[Sequence[str]], Mapping[str, FeedEvent]],
        options: FeedOptions,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._pipe = pipe
        self._read_events = read_events
        self._options = options
        self._metrics = metrics
        self._feed_topic = topics.feed_topic(options.prefix)
        self._headers = [(HEADER_FORMAT, options.value_format.encode())]
        self._dlq_topic = topics.dlq_topic(options.prefix)
        self._backoff = Backoff(initial_s=0.5, max_s=30.0)
        # What earlier transactions committed: a re-sent record's events are skipped.
        self._recent = RecentEvents()
        # Each writer's last token committed: kept in the offsets' metadata, so a
        # re-sent record is recognised after a restart too.
        self._tokens: dict[str, int] = {}
        self.published = 0
        """Feed records committed so far (for the shutdown line and tests)."""
        self.healthy = True
        """Whether the last batch committed (or there was nothing to do)."""

    def run(self, stop: threading.Event) -> None:
        """Turn batches into transactions until ``stop`` is set.

        Raises:
            KafkaIOError: a fatal broker error (fenced, not authorized).
            BackfillError: a database error that retrying cannot fix.
        """
        self._pipe.start()
        try:
            self.resume()
            while not stop.is_set():
                try:
                    self.step()
                    self.healthy = True
                except (BackfillError, KafkaIOError) as exc:
                    self.healthy = False
                    if not exc.retriable and not isinstance(exc, AbortedTransaction):
                        raise
                    delay = self._backoff.next_delay()
                    logger.warning(
                        "feed batch not committed (%s); again in %.1f s", exc, delay
                    )
                    if self._metrics is not None:
                        self._metrics.feed_transactions.labels("aborted").inc()
                    stop.wait(delay)
        finally:
            self._pipe.close()

    def resume(self) -> None:
        """Read each writer's last committed token from the offsets' metadata.

        Raises:
            KafkaIOError: the broker did not answer.
        """
        self._tokens = _tokens_of(self._pipe.committed_metadata())
        if self._tokens:
            logger.info("resuming after tokens %s", self._tokens)

    def step(self) -> int:
        """Run one batch as one transaction; return the feed records it committed."""
        messages = self._pipe.poll(
            self._options.max_batch, self._options.poll_timeout_s
        )
        if not messages:
            return 0
        started = time.monotonic()
        rewind: dict[tuple[str, int], int] = {}
        for message in messages:
            rewind.setdefault(
                (message.topic() or "", message.partition() or 0), message.offset() or 0
            )
        inputs = [self._input(m) for m in messages]
        try:
            # A re-sent record's events are not published: their content is not read.
            ids = [
                i
                for item in inputs
                if not item.stale(self._tokens)
                for i in feed_event_ids(item.rows)
            ]
            stored = self._read_events(ids) if ids else {}
            outputs, next_offsets = plan_batch(
                inputs, stored, self._recent, self._tokens
            )
            tokens = advance_tokens(inputs, self._tokens)
            self._pipe.begin()
            values = {
                (m.topic(), m.partition(), m.offset()): m.value() for m in messages
            }
            for output in outputs:
                self._write(output, values)
            self._pipe.commit(next_offsets, _metadata(tokens))
        except (BackfillError, KafkaIOError):
            self._pipe.abort(rewind)
            raise
        self._backoff.reset()
        self._tokens = tokens
        keys = [
            (o.event.event_id, o.event.outlier)
            for o in outputs
            if isinstance(o, Publish)
        ]
        self._recent.add(keys)
        published = len(keys)
        self.published += published
        self._count(outputs, time.monotonic() - started)
        return published

    def _input(self, message: Message) -> FeedInput:
        topic, partition, offset = (
            message.topic() or "",
            message.partition() or 0,
            message.offset() or 0,
        )
        try:
            record = decode(message.value() or b"")
        except DecodeError as exc:
            return FeedInput(topic, partition, offset, error=f"decode: {exc}")
        if isinstance(record, RdataCommand):
            return FeedInput(
                topic,
                partition,
                offset,
                tuple(record.rows),
                writer=record.instance_name,
                token=record.token,
            )
        return FeedInput(topic, partition, offset)

    def _write(
        self,
        output: Output,
        values: Mapping[tuple[str | None, int | None, int | None], bytes | None],
    ) -> None:
        if isinstance(output, Publish):
            event = output.event
            self._pipe.produce(
                self._feed_topic,
                self._value(event),
                key=event.room_id.encode(),
                headers=self._headers,
            )
            return
        if isinstance(output, Duplicate):
            return
        if isinstance(output, Missing):
            value = json.dumps(
                {"event_id": output.event_id, "room_id": output.room_id}
            ).encode()
            reason, source = output.reason, f"feed: {output.event_id}"
            location: dict[str, str | int] = {"event_id": output.event_id}
            key = output.room_id.encode()
        else:
            value = values.get((output.topic, output.partition, output.offset)) or b""
            reason, source = output.reason, "feed"
            location = {
                "topic": output.topic,
                "partition": output.partition,
                "offset": output.offset,
            }
            key = None
        letter = dead_letters.dead_letter(
            value,
            [
                (topics.HEADER_DLQ_REASON, reason.encode("utf-8", "replace")),
                (topics.HEADER_DLQ_SOURCE, source.encode("utf-8", "replace")),
            ],
            source=location,
            reason=reason,
            limit=self._options.dlq_limit,
        )
        self._pipe.produce(
            self._dlq_topic, letter.value, key=key, headers=letter.headers
        )

    def _value(self, event: FeedEvent) -> bytes:
        if self._options.value_format == "json":
            return json.dumps(feed_event_to_json(event), separators=(",", ":")).encode()
        return encode(event)

    def _count(self, outputs: Sequence[Output], seconds: float) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        metrics.feed_transactions.labels("committed").inc()
        metrics.feed_batch_seconds.observe(seconds)
        # Tallied first, then one update per label: a labels() lookup per event cost
        # the loop about a tenth of its time.
        outcomes: Counter[str] = Counter()
        last_ordering: dict[str, int] = {}
        decode_failures: Counter[str] = Counter()
        for output in outputs:
            if isinstance(output, Publish):
                outcomes["published"] += 1
                last_ordering[output.event.instance_name or ""] = (
                    output.event.stream_ordering
                )
            elif isinstance(output, Duplicate):
                outcomes["duplicate"] += 1
            elif isinstance(output, Missing):
                outcomes["missing"] += 1
            else:
                decode_failures[output.topic] += 1
        for outcome, n in outcomes.items():
            metrics.feed_events.labels(outcome).inc(n)
        for writer, ordering in last_ordering.items():
            metrics.feed_stream_ordering.labels(writer).set(ordering)
        if outcomes["missing"]:
            metrics.dead_letters.labels(self._feed_topic, "missing content").inc(
                outcomes["missing"]
            )
        for topic, n in decode_failures.items():
            metrics.decode_failures.labels(topic).inc(n)
            metrics.dead_letters.labels(topic, "decode").inc(n)


def _metadata(tokens: dict[str, int]) -> str:
    """The commit metadata for the feed's token map (the consumer's format)."""
    return encode_commit_metadata({("events", w): n for w, n in tokens.items()})


def _tokens_of(metadata: list[str]) -> dict[str, int]:
    """Each writer's highest token in the committed offsets' metadata."""
    tokens: dict[str, int] = {}
    for text in metadata:
        try:
            found = decode_commit_metadata(text)
        except DecodeError as exc:
            logger.warning(
                "ignoring committed metadata the feed did not write: %s", exc
            )
            continue
        for (stream, writer), token in found.items():
            if stream == "events":
                tokens[writer] = max(tokens.get(writer, token), token)
    return tokens
