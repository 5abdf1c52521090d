"""Which consume errors the feed's transactional pipe passes over, and which end it."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, TopicPartition

from adapter.core.config import KafkaSettings
from adapter.core.errors import ConsumeError
from adapter.io.kafka.transactions import TransactionalPipe, passes


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    ],
)
def test_a_moving_group_coordinator_is_passed_over(code: int) -> None:
    # Seen on a broker that had just started: raising would drop the records the
    # client had already handed out with the error, and the next commit skips them.
    assert passes(KafkaError(code))


def test_a_retriable_error_is_passed_over() -> None:
    assert passes(KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True))


@pytest.mark.parametrize(
    "code",
    [KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.UNKNOWN_TOPIC_OR_PART],
)
def test_other_errors_end_the_feed(code: int) -> None:
    assert not passes(KafkaError(code))


class _ErrorMessage:
    def __init__(self, error: KafkaError | None) -> None:
        self._error = error

    def error(self) -> KafkaError | None:
        return self._error


class _Consumer:
    """Hands out one batch; records the assignments asked for."""

    def __init__(self, batch: list[_ErrorMessage]) -> None:
        self.batch = batch
        self.assigned: list[list[TopicPartition]] = []

    def consume(self, num_messages: int, timeout: float) -> list[_ErrorMessage]:
        batch, self.batch = self.batch, []
        return batch

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.append(partitions)


def _pipe(batch: list[_ErrorMessage]) -> tuple[TransactionalPipe, _Consumer]:
    pipe = TransactionalPipe(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        group_id="g",
        transactional_id="t",
        topics=["p.stream.events"],
    )
    fake = _Consumer(batch)
    pipe._consumer = fake  # type: ignore[assignment]
    pipe._assignment = [TopicPartition("p.stream.events", 0)]
    return pipe, fake


def test_a_transient_error_drops_the_batch_and_reads_again_from_the_commit() -> None:
    # librdkafka does not fetch the committed offsets again after NOT_COORDINATOR:
    # without a new assignment the input stalled; keeping the good record would let
    # the next commit skip past records that were never published.
    good = _ErrorMessage(None)
    pipe, fake = _pipe([good, _ErrorMessage(KafkaError(KafkaError.NOT_COORDINATOR))])
    assert pipe.poll(10, 0.0) == []
    assert [[(tp.topic, tp.partition) for tp in a] for a in fake.assigned] == [
        [("p.stream.events", 0)]
    ]


def test_a_fatal_error_raises_and_a_partition_end_is_skipped() -> None:
    pipe, fake = _pipe(
        [_ErrorMessage(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))]
    )
    with pytest.raises(ConsumeError):
        pipe.poll(10, 0.0)
    good = _ErrorMessage(None)
    pipe, fake = _pipe([_ErrorMessage(KafkaError(KafkaError._PARTITION_EOF)), good])
    assert pipe.poll(10, 0.0) == [good]  # type: ignore[comparison-overlap]
    assert fake.assigned == []
