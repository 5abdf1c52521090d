"""Exponential backoff with jitter, and the rule for when it is reset.

Synapse once reconnected in a tight loop when its first catch-up failed, because it
reset the backoff as soon as the connection opened (matrix-org/synapse#4749, later
undone by #7185). Here the caller resets the backoff only once *every* stream is
caught up again, so a start that keeps failing keeps backing off.

Pure: randomness comes in as a ``random.Random``; sleeping is the caller's job.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays for successive failed attempts: ``initial * factor**n``, capped, jittered.

    Attributes:
        initial_s: the first delay.
        factor: growth per failure.
        max_s: the cap.
        jitter: each delay is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``.
        attempts: failures since the last reset.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before the next attempt."""
        base = min(self.max_s, self.initial_s * self.factor**self.attempts)
        self.attempts += 1
        spread = 1.0 + self.jitter * (2.0 * self.rng.random() - 1.0)
        return max(0.0, min(self.max_s * (1.0 + self.jitter), base * spread))

    def reset(self) -> None:
        """Forget past failures; call only once fully healthy (all streams caught up)."""
        self.attempts = 0

    def min_total_s(self, attempts: int) -> float:
        """The least total wait ``attempts`` consecutive failures can cause.

        Tests use it to check that attempts over a window stay within the schedule.
        """
        total = 0.0
        for n in range(attempts):
            total += min(self.max_s, self.initial_s * self.factor**n) * (
                1.0 - self.jitter
            )
        return total
