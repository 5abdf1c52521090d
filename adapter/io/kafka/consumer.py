"""A confluent ``Consumer`` used with explicit assignment.

Replication is broadcast: every synkafka instance reads every partition of the topics
it follows, in a consumer group of its own. So the wrapper *assigns* partitions rather
than subscribing: no rebalances, no group membership to lose while a long backfill
runs (``max.poll.interval.ms`` does not apply to assigned partitions), and the group
still stores the committed offsets and their metadata (our token map), which is what
``synkafka lag`` and lag exporters read.

Defaults chosen here: auto-commit off, offset store off (we commit exactly what the
handlers finished), ``isolation.level=read_committed``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import Consumer as _ConfluentConsumer

from adapter.core.config import KafkaSettings
from adapter.core.errors import ConsumeError, KafkaIOError
from adapter.io.kafka.client import client_log, config_error
from adapter.io.kafka.records import KafkaRecord, from_message

__all__ = [
    "BEGINNING",
    "DEFAULT_CONSUMER_CONFIG",
    "END",
    "Committed",
    "Consumer",
    "Message",
    "PartitionStart",
    "consume_available",
    "record_of",
]

logger = logging.getLogger(__name__)

DEFAULT_CONSUMER_CONFIG: Mapping[str, str] = {
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
    "auto.offset.reset": "latest",
    "isolation.level": "read_committed",
    "enable.partition.eof": "false",
    # Librdkafka prefetches up to this much per partition; keeps memory flat.
    "queued.max.messages.kbytes": "32768",
}

BEGINNING = OFFSET_BEGINNING
END = OFFSET_END

_FATAL_CLIENT_ERRORS = {
    KafkaError._AUTHENTICATION,  # noqa: SLF001 (librdkafka's names for local errors)
    KafkaError._SSL,  # noqa: SLF001
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
}


@dataclass(frozen=True, slots=True)
class Committed:
    """A partition's committed offset and its metadata (``None`` when never committed)."""

    topic: str
    partition: int
    offset: int | None
    metadata: str | None


@dataclass(frozen=True, slots=True)
class PartitionStart:
    """Where to start reading one partition (an offset, ``BEGINNING`` or ``END``)."""

    topic: str
    partition: int
    offset: int


def consume_available(
    client: _ConfluentConsumer, max_records: int, timeout_s: float
) -> list[Message]:
    """What ``client`` holds now (up to ``max_records``), or the first record to come.

    librdkafka's ``consume(n, timeout)`` waits until it has ``n`` records or the
    timeout passed, which would hold a live record back for up to the whole
    timeout. This takes what is there; only when nothing is, it waits for the first
    record, then takes whatever else came with it.

    Raises:
        KafkaException: as ``consume``.
    """
    messages = client.consume(max_records, 0)
    if not messages and timeout_s > 0:
        messages = client.consume(1, timeout_s)
        if messages and max_records > 1:
            messages += client.consume(max_records - 1, 0)
    return messages


def _raise_from(exc: KafkaException, what: str) -> ConsumeError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return ConsumeError(
            f"{what}: {err.str()}", code=err.name(), retriable=err.retriable()
        )
    return ConsumeError(f"{what}: {exc}")


def _wanted(message: Message) -> bool:
    error = message.error()
    return error is None or error.code() != KafkaError._PARTITION_EOF  # noqa: SLF001


def record_of(message: Message) -> KafkaRecord:
    """The :class:`KafkaRecord` of a message from :meth:`Consumer.poll_messages`."""
    return _record(message)


def _record(message: Message) -> KafkaRecord:
    """:func:`~adapter.io.kafka.records.from_message`, with a fast path for the usual record.

    The usual record has no error, a timestamp and headers whose values are all
    bytes; anything else goes through ``from_message`` (same result, slower).
    """
    if message.error() is not None:
        return from_message(message)
    raw_headers = message.headers()
    if raw_headers:
        if type(raw_headers) is not list:
            return from_message(message)
        for pair in raw_headers:
            if type(pair[1]) is not bytes:
                return from_message(message)
        headers = cast("tuple[tuple[str, bytes], ...]", tuple(raw_headers))
    else:
        headers = ()
    ts = message.timestamp()[1]
    return KafkaRecord(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        message.key(),
        message.value(),
        headers,
        ts if ts > 0 else 0,
    )


class Consumer:
    """Wraps ``confluent_kafka.Consumer`` for assigned partitions.

    Args:
        settings: how to reach the cluster.
        group_id: the consumer group that stores this instance's commits.
        client_id: shown in broker logs.
        extra: more librdkafka properties, applied after the defaults and before the
            settings' own ``-X`` overrides.
        on_stats: receives librdkafka's statistics (parsed JSON) every
            ``statistics.interval.ms`` if that is set.

    Raises:
        ConfigError: librdkafka refused the configuration.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        *,
        client_id: str = "synkafka",
        extra: Mapping[str, str] | None = None,
        on_stats: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        conf: dict[str, object] = {
            "group.id": group_id,
            "client.id": client_id,
            **DEFAULT_CONSUMER_CONFIG,
        }
        conf.update(extra or {})
        conf.update(settings.to_librdkafka())
        conf["error_cb"] = self._on_client_error
        conf["logger"] = client_log()
        if on_stats is not None:
            conf["stats_cb"] = lambda raw: on_stats(json.loads(raw))
        self.group_id = group_id
        self._failure: KafkaIOError | None = None
        try:
            self._client = _ConfluentConsumer(conf)
        except KafkaException as exc:
            # Construction fails only on configuration: retrying cannot help.
            raise config_error(exc, settings) from exc

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() in _FATAL_CLIENT_ERRORS:
            if self._failure is None:
                self._failure = ConsumeError(
                    f"Kafka consumer failed: {error.str()}", code=error.name()
                )
                logger.error("Kafka consumer error: %s", error.str())
            else:
                # librdkafka repeats it on every reconnect: one line is enough.
                logger.debug("Kafka consumer error: %s", error.str())
        else:
            # Transient (broker down): librdkafka repeats it on every reconnect.
            client_log().emit(logging.WARNING, error.str(), "Kafka consumer")

    def check(self) -> None:
        """Raise the first fatal client error seen so far, if any."""
        if self._failure is not None:
            raise self._failure

    def _serve_callbacks(self) -> None:
        """Run pending error callbacks (librdkafka runs them only while polled)."""
        if not self._client.assignment():
            self._client.poll(0)

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        """The partition numbers of ``topic``; empty if the topic does not exist."""
        # Poll in short steps: an authentication or TLS failure is only reported
        # through the error callback, which runs while the client is served.
        deadline = time.monotonic() + timeout_s
        meta = None
        while meta is None:
            left = max(0.01, deadline - time.monotonic())
            try:
                meta = self._client.list_topics(topic, timeout=min(1.0, left))
            except KafkaException as exc:
                self._serve_callbacks()
                self.check()
                if time.monotonic() >= deadline:
                    raise _raise_from(exc, f"cannot read metadata of {topic}") from exc
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            if info is not None and info.error is not None:
                code = info.error.code()
                if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    raise ConsumeError(
                        f"not authorized to read topic {topic}", code=info.error.name()
                    )
            return []
        return sorted(info.partitions)

    def committed(
        self, partitions: Iterable[tuple[str, int]], timeout_s: float = 10.0
    ) -> list[Committed]:
        """The group's committed offsets and metadata for ``partitions``."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return []
        try:
            got = self._client.committed(tps, timeout=timeout_s)
        except KafkaException as exc:
            raise _raise_from(exc, "cannot read committed offsets") from exc
        out = []
        for tp in got:
            if tp.error is not None:
                raise ConsumeError(
                    f"cannot read committed offset of {tp.topic}[{tp.partition}]: "
                    f"{tp.error.str()}",
                    code=tp.error.name(),
                )
            offset = None if tp.offset == OFFSET_INVALID or tp.offset < 0 else tp.offset
            out.append(Committed(tp.topic, tp.partition, offset, tp.metadata or None))
        return out

    def watermarks(
        self, topic: str, partition: int, timeout_s: float = 10.0
    ) -> tuple[int, int]:
        """``(low, high)`` offsets of a partition as the broker sees them now."""
        try:
            low, high = self._client.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s, cached=False
            )
        except KafkaException as exc:
            raise _raise_from(
                exc, f"cannot read watermarks of {topic}[{partition}]"
            ) from exc
        return int(low), int(high)

    def assign(self, starts: Sequence[PartitionStart]) -> None:
        """Read exactly these partitions, each from its start offset."""
        try:
            self._client.assign(
                [TopicPartition(s.topic, s.partition, s.offset) for s in starts]
            )
        except KafkaException as exc:
            raise _raise_from(exc, "cannot assign partitions") from exc

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Move an assigned partition to ``offset``."""
        try:
            self._client.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            raise _raise_from(exc, f"cannot seek {topic}[{partition}]") from exc

    def positions(self, partitions: Iterable[tuple[str, int]]) -> dict[int, int]:
        """The next offset this reader will return, per partition (absent if unknown)."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return {}
        try:
            got = self._client.position(tps)
        except KafkaException as exc:
            raise _raise_from(exc, "cannot read positions") from exc
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}

    def pause(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop fetching these partitions (backpressure); ``resume`` undoes it."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            self._client.pause(tps)

    def resume(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Fetch these partitions again."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            self._client.resume(tps)

    def poll_batch(self, max_records: int, timeout_s: float) -> list[KafkaRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first.

        Raises:
            ConsumeError: a fatal client error, or a partition-level error other
                than the end of a partition.
        """
        return [_record(m) for m in self.poll_messages(max_records, timeout_s)]

    def poll_messages(self, max_records: int, timeout_s: float) -> list[Message]:
        """:meth:`poll_batch` without the conversion: the client's own messages.

        For a hot loop that reads a few fields of each message (the C accessors
        are cheap) and converts only the odd one with :func:`record_of`. Ends of
        partitions are left out; any other error raises.

        Raises:
            ConsumeError: as :meth:`poll_batch`.
        """
        self.check()
        client = self._client
        try:
            messages = consume_available(client, max_records, timeout_s)
        except KafkaException as exc:
            raise _raise_from(exc, "consume failed") from exc
        wanted = [m for m in messages if m.error() is None]
        if len(wanted) == len(messages):
            return wanted
        for message in messages:
            if message.error() is not None and _wanted(message):
                from_message(message)  # raises the partition's error
        return wanted

    def commit(self, offsets: Sequence[Committed]) -> None:
        """Commit offsets with metadata, synchronously.

        Raises:
            ConsumeError: the broker refused the commit.
        """
        tps = [
            TopicPartition(
                c.topic, c.partition, c.offset or 0, metadata=c.metadata or ""
            )
            for c in offsets
            if c.offset is not None
        ]
        if not tps:
            return
        try:
            result = self._client.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise _raise_from(exc, "commit failed") from exc
        for tp in result or []:
            if tp.error is not None:
                raise ConsumeError(
                    f"commit of {tp.topic}[{tp.partition}] failed: {tp.error.str()}",
                    code=tp.error.name(),
                    retriable=tp.error.retriable(),
                )

    def close(self) -> None:
        """Leave and release the client; commits are explicit, so none happens here."""
        try:
            self._client.close()
        except (KafkaException, RuntimeError) as exc:
            logger.warning("closing Kafka consumer: %s", exc)
