import random

import pytest

from adapter.core.backoff import Backoff


def test_delays_grow_exponentially_and_are_capped() -> None:
    b = Backoff(initial_s=1.0, factor=2.0, max_s=10.0, jitter=0.0, rng=random.Random(1))
    assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.attempts == 6


def test_jitter_stays_within_its_band() -> None:
    b = Backoff(initial_s=1.0, factor=1.0, max_s=10.0, jitter=0.2, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(200)]
    assert min(delays) >= 0.8
    assert max(delays) <= 1.2
    assert len(set(delays)) > 100  # really random, not a constant


def test_reset_starts_over_only_when_called() -> None:
    b = Backoff(initial_s=0.5, jitter=0.0)
    b.next_delay()
    b.next_delay()
    assert b.next_delay() == 2.0
    b.reset()
    assert b.next_delay() == 0.5


@pytest.mark.parametrize(
    ("attempts", "expected"), [(0, 0.0), (1, 0.4), (3, 0.4 + 0.8 + 1.6)]
)
def test_min_total_is_the_least_wait_for_n_failures(
    attempts: int, expected: float
) -> None:
    assert Backoff(initial_s=0.5, jitter=0.2).min_total_s(attempts) == pytest.approx(
        expected
    )
