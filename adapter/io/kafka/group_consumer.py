"""A consumer that joins a Kafka consumer group and shares one topic's partitions.

Unlike :class:`~adapter.io.kafka.consumer.Consumer` (assigned partitions: every
instance reads everything), a :class:`GroupConsumer` *subscribes*: the group's members
split the topic's partitions between them, and a member that leaves or dies has its
partitions moved to the others. The assignment strategy is ``cooperative-sticky``: a
rebalance moves only the partitions that must move, and the other members keep
handling theirs meanwhile.

Rebalance callbacks run inside :meth:`GroupConsumer.poll`, in the calling thread.
The caller's ``on_revoke`` commits what it finished of the revoked partitions before
returning: the partitions are released only then.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer as _ConfluentConsumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from adapter.core.config import KafkaSettings
from adapter.core.errors import ConsumeError, KafkaIOError
from adapter.io.kafka.client import client_log, config_error
from adapter.io.kafka.consumer import DEFAULT_CONSUMER_CONFIG, consume_available
from adapter.io.kafka.records import from_message

__all__ = ["GroupConsumer", "Message", "RebalanceListener"]

logger = logging.getLogger(__name__)


class RebalanceListener:
    """What a member does when partitions come and go; every method is optional.

    All run in the thread that calls :meth:`GroupConsumer.poll` (or ``close``).
    """

    def assigned(self, partitions: list[int]) -> None:
        """``partitions`` were added to this member's assignment."""

    def revoked(self, partitions: list[int]) -> None:
        """``partitions`` are taken away; commit what is finished before returning."""

    def lost(self, partitions: list[int]) -> None:
        """``partitions`` were lost (the session expired): committing is too late."""


class GroupConsumer:
    """One member of a consumer group reading one topic, offsets committed by hand.

    Args:
        settings: how to reach the cluster.
        group_id: the consumer group.
        topic: the topic whose partitions the group shares.
        listener: told about assignment changes.
        start: where a partition without a committed offset starts (``earliest`` or
            ``latest``).
        session_timeout_s: how long the group waits for a member that stopped
            heartbeating (killed, partitioned away) before moving its partitions.
        client_id: shown in broker logs.
        on_stats: receives librdkafka's statistics every ``stats_interval_s``.
        stats_interval_s: how often (0 turns statistics off).

    Raises:
        ConfigError: librdkafka refused the configuration.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        topic: str,
        listener: RebalanceListener,
        *,
        start: str = "earliest",
        session_timeout_s: float = 45.0,
        client_id: str = "synkafka-feed-reader",
        on_stats: Callable[[dict[str, object]], None] | None = None,
        stats_interval_s: float = 5.0,
    ) -> None:
        conf: dict[str, Any] = {
            **DEFAULT_CONSUMER_CONFIG,  # manual commits, read_committed
            "group.id": group_id,
            "client.id": client_id,
            "auto.offset.reset": start,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": str(int(session_timeout_s * 1000)),
            # Members learn of a rebalance from a heartbeat's answer: Kafka's 3 s
            # default, or a third of a short session (three missed beats end it).
            "heartbeat.interval.ms": str(
                max(100, min(3000, int(session_timeout_s * 1000 / 3)))
            ),
            **settings.to_librdkafka(),
            "logger": client_log(),
            "error_cb": self._on_client_error,
        }
        if on_stats is not None and stats_interval_s > 0:
            conf["statistics.interval.ms"] = str(int(stats_interval_s * 1000))
            conf["stats_cb"] = lambda raw: on_stats(json.loads(raw))
        self._failure: ConsumeError | None = None
        try:
            self._client = _ConfluentConsumer(conf)
        except KafkaException as exc:
            raise config_error(exc, settings) from exc
        self.group_id = group_id
        self.topic = topic
        self._listener = listener

    def _on_client_error(self, error: KafkaError) -> None:
        # Outages (a broker down, a connection refused) are retried by the client
        # itself: log them, deduplicated. Fatal ones end the member at the next poll.
        if error.fatal() and self._failure is None:
            self._failure = ConsumeError(
                f"Kafka consumer failed: {error.str()}", code=error.name()
            )
        level = logging.ERROR if error.fatal() else logging.WARNING
        client_log().emit(level, error.str(), "Kafka consumer")

    def subscribe(self) -> None:
        """Join the group; partitions arrive through the listener while polling."""
        self._client.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _on_assign(self, _consumer: object, tps: list[TopicPartition]) -> None:
        # Returning without assign() lets the client apply the incremental assignment.
        self._listener.assigned(sorted(tp.partition for tp in tps))

    def _on_revoke(self, _consumer: object, tps: list[TopicPartition]) -> None:
        self._listener.revoked(sorted(tp.partition for tp in tps))

    def _on_lost(self, _consumer: object, tps: list[TopicPartition]) -> None:
        self._listener.lost(sorted(tp.partition for tp in tps))

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``timeout_s``.

        Rebalance callbacks run in here.

        Raises:
            ConsumeError: a partition or the client reported an error.
        """
        if self._failure is not None:
            raise self._failure
        client = self._client
        try:
            messages = consume_available(client, max_records, timeout_s)
        except KafkaException as exc:
            raise _consume_error(exc, "consume failed") from exc
        wanted = [m for m in messages if m.error() is None]
        if len(wanted) < len(messages):
            for message in messages:
                error = message.error()
                if error is None or error.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001
                    continue
                if error.fatal() or not error.retriable():
                    from_message(message)  # raises the partition's error
                client_log().emit(logging.WARNING, error.str(), "Kafka consumer")
        return wanted

    def positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """The next offset this member will read in each of ``partitions``, if known.

        Local state, no broker round trip. Past a transaction's commit marker once
        the records before it were read.
        """
        if not partitions:
            return {}
        try:
            found = self._client.position(
                [TopicPartition(self.topic, p) for p in partitions]
            )
        except KafkaException as exc:
            raise _consume_error(exc, "position failed") from exc
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit the next offset to read per partition, synchronously.

        Raises:
            ConsumeError: the commit failed (the group rebalanced meanwhile, say).
        """
        if not offsets:
            return
        tps = [TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())]
        try:
            result = self._client.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise _consume_error(exc, "commit failed") from exc
        for tp in result or []:
            if tp.error is not None:
                raise ConsumeError(
                    f"commit of {self.topic}[{tp.partition}] failed: {tp.error.str()}",
                    code=tp.error.name(),
                    retriable=tp.error.retriable(),
                )

    def pause(self, partitions: Sequence[int]) -> None:
        """Stop fetching ``partitions`` (the member keeps them and its heartbeat)."""
        if partitions:
            self._client.pause([TopicPartition(self.topic, p) for p in partitions])

    def resume(self, partitions: Sequence[int]) -> None:
        """Fetch ``partitions`` again."""
        if partitions:
            self._client.resume([TopicPartition(self.topic, p) for p in partitions])

    def close(self) -> None:
        """Leave the group (the listener's ``revoked`` runs for what is assigned)."""
        try:
            self._client.close()
        except (KafkaException, RuntimeError) as exc:
            logger.warning("leaving group %s: %s", self.group_id, exc)


def _consume_error(exc: KafkaException, what: str) -> KafkaIOError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return ConsumeError(
            f"{what}: {err.str()}",
            code=err.name(),
            retriable=err.retriable() and not err.fatal(),
        )
    return ConsumeError(f"{what}: {exc}")
