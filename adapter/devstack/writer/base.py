"""What every simulated writer shares: its tokens, its position and the helpers.

:class:`WriterBase` allocates tokens from a stream's shared counter and moves this
writer's ``stream_positions`` row; the stream groups (:mod:`.events`, :mod:`.bulk`,
:mod:`.accounts`, :mod:`.devices`, :mod:`.housekeeping`) build on it and
:class:`~adapter.devstack.writer.SynapseWriter` combines them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from adapter.core.errors import ConfigError
from adapter.io.db.connection import DbConnection
from adapter.io.db.sources import WireRow
from adapter.io.db.synapse_schema import ID_GENERATORS, POSTGRES_ONLY_STREAMS

__all__ = ["DEFAULT_SENDER", "JSON", "WriterBase", "Written"]

Written = tuple[int, list[WireRow]]
"""What a write returns: the token and every wire row of the stream at that token."""

JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
"""Compact JSON, as the simulated tables store it."""
DEFAULT_SENDER = "@alice:test"
"""The sender of events that name none."""


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


class WriterBase:
    """One simulated Synapse process: its database, ``instance_name`` and clock.

    The arguments are those of :class:`~adapter.devstack.writer.SynapseWriter`.
    """

    def __init__(
        self,
        conn: DbConnection,
        instance_name: str = "master",
        *,
        now_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.conn = conn
        self.instance_name = instance_name
        self._now_ms = now_ms
        self._typing_serial = 0
        self._typing: dict[str, list[str]] = {}
        pg = conn.engine == "postgresql"
        self._max = "GREATEST" if pg else "MAX"
        self._min = "LEAST" if pg else "MIN"
        self._null_safe_eq = "IS NOT DISTINCT FROM" if pg else "IS"

    # -- tokens and positions ----------------------------------------------------------

    def allocate(self, stream: str, n: int = 1) -> list[int]:
        """Take ``n`` ids from ``stream``'s shared counter (wire tokens, ascending).

        Args:
            stream: the wire stream name.
            n: how many ids.

        Returns:
            The ids; positive also for ``backfill`` (stored negated).

        Raises:
            ConfigError: the stream has no counter here.
            BackfillError: the database failed.
        """
        gen = ID_GENERATORS.get(stream)
        if gen is None:
            raise ConfigError(f"stream {stream!r} has no id generator")
        if self.conn.engine == "postgresql":
            rows = self.conn.fetchall(
                "SELECT nextval(?::regclass) FROM generate_series(1, ?)",
                (gen.sequence, n),
            )
            return sorted(int(r[0]) for r in rows)
        if stream in POSTGRES_ONLY_STREAMS:
            raise ConfigError(f"the {stream} stream exists only on PostgreSQL")
        row = self.conn.fetchone(
            "UPDATE synkafka_sim_sequences SET last_value = last_value + ? WHERE name = ?"
            " RETURNING last_value",
            (n, gen.sequence),
        )
        if row is None:
            raise ConfigError(
                f"no counter {gen.sequence!r}: run create_synapse_tables first"
            )
        last = int(row[0])
        return list(range(last - n + 1, last + 1))

    def advance_position(self, stream: str, token: int) -> None:
        """Move this writer's ``stream_positions`` row to ``token`` (never backwards).

        Args:
            stream: the wire stream name.
            token: the wire token (positive, also for ``backfill``).
        """
        gen = ID_GENERATORS[stream]
        if gen.positions_name is None:
            return
        stored, pick = (-token, self._min) if gen.negative else (token, self._max)
        self.conn.execute(
            "INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES (?, ?, ?)"  # noqa: S608
            " ON CONFLICT (stream_name, instance_name) DO UPDATE"
            f" SET stream_id = {pick}(stream_positions.stream_id, excluded.stream_id)",
            (gen.positions_name, self.instance_name, stored),
        )

    def _next(self, stream: str) -> int:
        return self.allocate(stream)[0]

    def _simple_row(
        self, stream: str, table: str, columns: Sequence[str], values: Sequence[Any]
    ) -> Written:
        token = self._next(stream)
        cols = ", ".join(("stream_id", "instance_name", *columns))
        marks = ", ".join("?" * (len(columns) + 2))
        with self.conn.transaction():
            self.conn.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({marks})",  # noqa: S608 - constant names
                (token, self.instance_name, *values),
            )
            self.advance_position(stream, token)
        return token, [list(values)]
