"""What the consumer delivered: its JSON lines file, followed as it grows.

:func:`canonical` puts the rows of one token in a form that compares equal across
JSON round trips, so the rows the database holds and the rows the consumer printed
can be compared as sets of strings.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adapter.devstack.demo.settings import Key

__all__ = ["DeliveryLog", "canonical"]

_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def canonical(wire_rows: Sequence[Any]) -> tuple[str, ...]:
    """Rows of one token in a form that compares equal across JSON round trips."""
    return tuple(sorted(_JSON.encode(r) for r in wire_rows))


class DeliveryLog:
    """Follows the consumer's JSON lines file and keeps what was delivered.

    Args:
        path: the ``--output`` file of ``synkafka consume``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.rows: Counter[str] = Counter()
        """Rows delivered per stream."""
        self.backfill_rows: Counter[str] = Counter()
        """Of which read from the database."""
        self.tokens: dict[tuple[str, str], int] = {}
        """The highest delivered token per (stream, writer)."""
        self.delivered: dict[Key, tuple[str, ...]] = {}
        """Canonical rows per delivered (stream, writer, token)."""
        self.twice: list[Key] = []
        """Updates delivered more than once."""

    def poll(self) -> int:
        """Read the lines appended since the last call; return how many."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._apply(json.loads(line))
        return len(lines)

    def has_all(
        self,
        last: Mapping[tuple[str, str], int],
        after: Mapping[tuple[str, str], int],
    ) -> bool:
        """Whether each ``(stream, writer)``'s ``last`` token was delivered.

        Tokens at or below ``after`` (history, or a start position) are not expected.
        """
        return all(
            self.tokens.get(k, 0) >= t for k, t in last.items() if t > after.get(k, 0)
        )

    def _apply(self, update: dict[str, Any]) -> None:
        stream, writer, token = update["stream"], update["writer"], update["token"]
        key = (stream, writer, int(token))
        rows = update["rows"]
        if key in self.delivered:
            self.twice.append(key)
        self.delivered[key] = canonical(rows)
        self.rows[stream] += len(rows)
        if update["source"] == "backfill":
            self.backfill_rows[stream] += len(rows)
        self.tokens[(stream, writer)] = max(token, self.tokens.get((stream, writer), 0))
