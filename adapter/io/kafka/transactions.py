"""Consume, transform and produce in Kafka transactions: exactly once, end to end.

A :class:`TransactionalPipe` reads its input topics (their offsets kept by a consumer
group) and writes with a transactional producer. Each batch's output records and the input offsets that
produced them are committed in ONE transaction
(``send_offsets_to_transaction`` + ``commit_transaction``): a reader with
``isolation.level=read_committed`` sees the output of a batch exactly when its input is
marked consumed, never one without the other, whatever crashes in between.

The transactional ID is fixed per pipe; a second process with the same ID fences the
first (its next transaction fails as fatal), so two copies never double the output.

Errors are sorted as Kafka's transactional API describes them:
``txn_requires_abort()`` ends the transaction (the caller rewinds and retries the
batch), ``retriable()`` retries the same call, anything ``fatal()`` ends the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from confluent_kafka import Consumer as _ConfluentConsumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka import Producer as _ConfluentProducer

from adapter.core.config import KafkaSettings
from adapter.core.errors import KafkaIOError
from adapter.io.kafka.client import COORDINATOR_SETTLING, client_log, config_error
from adapter.io.kafka.consumer import DEFAULT_CONSUMER_CONFIG, consume_available
from adapter.io.kafka.records import from_message

__all__ = ["AbortedTransaction", "TransactionalPipe", "passes"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How often one call is retried on a ``retriable()`` error before giving up.
_RETRIES: Final = 5


def passes(error: KafkaError) -> bool:
    """Whether a consume error is transient: the client recovers without our help."""
    return bool(error.retriable()) or error.name() in COORDINATOR_SETTLING


class AbortedTransaction(KafkaIOError):
    """The transaction was aborted; rewind the input and run the batch again."""


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


class TransactionalPipe:
    """An input consumer and a transactional producer, committed together.

    Args:
        settings: how to reach the cluster.
        group_id: the input's consumer group (its committed offsets are the input's
            progress).
        transactional_id: the producer's transactional ID; one live pipe per ID.
        topics: the input topics.
        start: where a group without commits starts: ``earliest`` or ``latest``.
        client_id: shown in broker logs.
        transaction_timeout_s: how long the broker lets a transaction stay open
            before aborting it (a crashed process's open transaction ends then).

    Raises:
        ConfigError: librdkafka refused the configuration.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group_id: str,
        transactional_id: str,
        topics: Sequence[str],
        start: str = "earliest",
        client_id: str = "synkafka-feed",
        transaction_timeout_s: float = 60.0,
    ) -> None:
        self._topics = list(topics)
        self._timeout_s = 30.0
        consumer_conf: dict[str, Any] = {
            **DEFAULT_CONSUMER_CONFIG,  # manual commits, read_committed
            "group.id": group_id,
            "client.id": client_id,
            "auto.offset.reset": start,
            **settings.to_librdkafka(),
            "logger": client_log(),
        }
        producer_conf: dict[str, Any] = {
            "client.id": client_id,
            "transactional.id": transactional_id,
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "5",
            "compression.type": "lz4",
            # While the broker still writes the previous transaction's markers it
            # answers the next one's first request with CONCURRENT_TRANSACTIONS, and
            # librdkafka retries after retry.backoff.ms: at the default 100 ms that
            # wait was most of every transaction (bench/feed_latency.py). Kafka's own
            # Java client retries this case after 20 ms.
            "retry.backoff.ms": "10",
            "transaction.timeout.ms": str(int(transaction_timeout_s * 1000)),
            **settings.to_librdkafka(),
            "logger": client_log(),
        }
        try:
            self._consumer = _ConfluentConsumer(consumer_conf)
            self._producer = _ConfluentProducer(producer_conf)
        except KafkaException as exc:
            raise config_error(exc, settings) from exc
        self.transactional_id = transactional_id
        self._open = False
        self._assignment: list[TopicPartition] = []

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Register the transactional ID (fencing any older holder), then assign.

        The input is assigned, not subscribed: the pipe is its group's only member,
        and a restarted process would otherwise wait out the killed one's session
        timeout before getting its partitions back. Zombies are fenced by the fixed
        transactional ID instead. Each partition starts at the group's committed
        offset (read only after the older holder's open transaction was ended), or
        at ``start`` when there is none.

        Raises:
            KafkaIOError: the broker did not answer, or refused the ID; or an input
                topic does not exist.
        """
        self._timeout_s = timeout_s
        self._call(
            "cannot start transactions", self._producer.init_transactions, timeout_s
        )
        assignment: list[TopicPartition] = []
        for topic in self._topics:
            try:
                meta = self._consumer.list_topics(topic, timeout=timeout_s)
            except KafkaException as exc:
                raise self._as_error(exc, f"cannot describe {topic}") from exc
            found = meta.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise KafkaIOError(f"input topic {topic} does not exist")
            assignment += [TopicPartition(topic, p) for p in sorted(found.partitions)]
        self._assignment = assignment
        self._consumer.assign(assignment)

    def committed_metadata(self) -> list[str]:
        """The metadata of every assigned partition's committed offset (``""`` if none).

        Read after :meth:`start`, so an older holder's open transaction is over.

        Raises:
            KafkaIOError: the broker did not answer.
        """
        try:
            got = self._consumer.committed(self._assignment, timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._as_error(exc, "cannot read the committed offsets") from exc
        return [tp.metadata or "" for tp in got if tp.error is None]

    def close(self) -> None:
        """Abort an open transaction and close both clients."""
        if self._open:
            try:
                self._producer.abort_transaction(self._timeout_s)
            except KafkaException as exc:
                logger.warning("aborting the open transaction on close: %s", exc)
            self._open = False
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            logger.warning("closing the feed's consumer: %s", exc)
        self._producer.flush(5.0)

    # -- reading ------------------------------------------------------------------------

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` input messages, waiting at most ``timeout_s``.

        The records already fetched, or else the first to come: a batch never waits
        to fill up, so a live event is not held back for the whole timeout (while a
        transaction commits, the next batch gathers by itself).

        A transient error among them (a group coordinator moving or loading,
        anything the client says is retriable) drops the whole batch and assigns
        the input again, which starts each partition from the group's committed
        offset: librdkafka does not fetch the committed offsets again by itself
        after such an error (the input then stalled), and keeping the batch's other
        records while dropping the error would let the next commit skip past
        records never published.

        Raises:
            ConsumeError: a partition reported an error that is neither its end nor
                transient (the process ends; nothing past the last commit is lost).
        """
        try:
            messages = consume_available(self._consumer, max_records, timeout_s)
        except KafkaException as exc:
            raise self._as_error(exc, "consume failed") from exc
        self._producer.poll(0)  # serve delivery reports and the log
        for message in messages:
            error = message.error()
            if error is None or error.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001
                continue
            if not passes(error):
                from_message(message)  # raises the partition's error
            logger.warning("feed input: %s; reading again from the commit", error.str())
            self._consumer.assign(self._assignment)
            return []
        return [m for m in messages if m.error() is None]

    # -- writing ------------------------------------------------------------------------

    def begin(self) -> None:
        """Open a transaction for the next batch."""
        self._call("cannot begin a transaction", self._producer.begin_transaction)
        self._open = True

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue one record in the open transaction."""
        while True:
            try:
                self._producer.produce(topic, value, key, headers=list(headers))
            except BufferError:
                # The local queue is full: let deliveries drain it, then go on.
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise self._as_error(exc, f"cannot produce to {topic}") from exc
            else:
                return

    def commit(
        self, next_offsets: Mapping[tuple[str, int], int], metadata: str = ""
    ) -> None:
        """Commit the open transaction with the input's next offsets in it.

        Args:
            next_offsets: per input partition, the next offset to consume.
            metadata: stored with each of those offsets (the broker keeps it with
                the commit, in the same transaction).

        Raises:
            AbortedTransaction: the transaction could not commit and was aborted.
            KafkaIOError: a fatal error (fenced by a newer process, authorization).
        """
        offsets = [
            TopicPartition(t, p, o, metadata=metadata)
            for (t, p), o in next_offsets.items()
        ]
        try:
            if offsets:
                self._call(
                    "cannot add the input offsets to the transaction",
                    self._producer.send_offsets_to_transaction,
                    offsets,
                    self._consumer.consumer_group_metadata(),
                    self._timeout_s,
                )
            self._call(
                "cannot commit the transaction",
                self._producer.commit_transaction,
                self._timeout_s,
            )
        except AbortedTransaction:
            self.abort(None)
            raise
        self._open = False

    def abort(self, rewind: Mapping[tuple[str, int], int] | None) -> None:
        """Abort the open transaction and move the input back to ``rewind``.

        Raises:
            KafkaIOError: the abort itself failed fatally.
        """
        if self._open:
            self._call(
                "cannot abort the transaction",
                self._producer.abort_transaction,
                self._timeout_s,
            )
            self._open = False
        for (topic, partition), offset in (rewind or {}).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                # A partition revoked meanwhile restarts from its commit anyway.
                logger.info("not rewinding %s[%d]: %s", topic, partition, exc)

    # -- errors -------------------------------------------------------------------------

    def _call(self, what: str, call: Callable[..., _T], *args: Any) -> _T:
        """Run one transactional call, retrying what Kafka says is retriable."""
        for attempt in range(_RETRIES):
            try:
                return call(*args)
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is not None and err.retriable() and attempt + 1 < _RETRIES:
                    logger.info("%s (retrying): %s", what, err.str())
                    continue
                raise self._as_error(exc, what) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _as_error(self, exc: KafkaException, what: str) -> KafkaIOError:
        err = _kafka_error(exc)
        if err is None:
            return KafkaIOError(f"{what}: {exc}")
        if err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):  # noqa: SLF001
            return KafkaIOError(
                f"{what}: another process took over transactional ID "
                f"{self.transactional_id} (only one feed may run per prefix)",
                code=err.name(),
            )
        if err.txn_requires_abort():
            return AbortedTransaction(f"{what}: {err.str()}", code=err.name())
        return KafkaIOError(
            f"{what}: {err.str()}",
            code=err.name(),
            retriable=err.retriable() and not err.fatal(),
        )
