"""Fakes for the pure test tier: no sockets, no sleeping, no real time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["FixedClock", "InMemoryLog"]

V = TypeVar("V")


class InMemoryLog(Generic[V]):
    """A keyed log with Kafka's compaction semantics, in a list.

    ``append(key, None)`` writes a tombstone. :meth:`compact` keeps the latest record
    per key, in offset order, and drops keys whose latest record is a tombstone (as
    the broker does once ``delete.retention.ms`` has passed).
    """

    def __init__(self) -> None:
        self._records: list[tuple[str, V | None]] = []

    def append(self, key: str, value: V | None) -> int:
        """Append a record (``None`` is a tombstone) and return its offset."""
        self._records.append((key, value))
        return len(self._records) - 1

    def compact(self) -> None:
        """Keep only each key's latest record; drop keys that end in a tombstone."""
        latest = {key: offset for offset, (key, _) in enumerate(self._records)}
        self._records = [
            record
            for offset, record in enumerate(self._records)
            if latest[record[0]] == offset and record[1] is not None
        ]

    def read_all(self) -> list[tuple[str, V | None]]:
        """Return every record in offset order."""
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)


@dataclass
class FixedClock:
    """A clock that moves only when told to, in milliseconds since the epoch."""

    now: int = 1_700_000_000_000

    def now_ms(self) -> int:
        """Return the current time."""
        return self.now

    def advance(self, delta_ms: int) -> int:
        """Move the clock forward and return the new time."""
        if delta_ms < 0:
            raise ValueError("a FixedClock only moves forward")
        self.now += delta_ms
        return self.now
