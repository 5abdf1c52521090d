"""Which consume errors the feed's transactional pipe passes over, and which end it."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from adapter.io.kafka.transactions import passes


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
