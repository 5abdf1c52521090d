"""``DatabaseReader``: the consumer's :class:`~adapter.ports.BackfillReader` on Synapse's DB.

It joins the database sources (:mod:`adapter.db.sources`, which speak Synapse's wire
rows) to the typed rows of :mod:`adapter.rows`, grouping the rows of one token into
one update, as a Kafka RDATA record carries them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapter.db.connection import DbConnection, connect
from adapter.db.sources import (
    DEFAULT_PAGE_SIZE,
    SourceRegistry,
    builtin_registry,
    iter_pages,
)
from adapter.errors import BackfillError, DecodeError
from adapter.rows import row_from_wire

__all__ = ["DatabaseReader"]


class DatabaseReader:
    """Reads backfill rows and writer positions over one database connection.

    Args:
        dsn: ``postgresql://...``, ``sqlite:///path`` or a SQLite file path.
        registry: stream sources; the built-in Synapse streams by default.
        page_size: rows per database round trip.

    Raises:
        BackfillError: the database cannot be reached (``retriable``).
    """

    def __init__(
        self,
        dsn: str | Path,
        *,
        registry: SourceRegistry | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self._conn: DbConnection = connect(dsn)
        self._registry = registry or builtin_registry(engine=self._conn.engine)
        self._page_size = page_size

    def has_source(self, stream_name: str) -> bool:
        """Whether the stream's rows can be read from this database."""
        return stream_name in self._registry and not self._registry.is_live_only(
            stream_name
        )

    def positions(self, stream_name: str) -> dict[str, int]:
        """Each writer's persisted token for the stream."""
        return self._registry.require(stream_name).read_positions(self._conn)

    def read(
        self, stream_name: str, instance_name: str, from_token: int, to_token: int
    ) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """``(token, typed rows)`` in ``(from_token, to_token]``, one item per token.

        Raises:
            BackfillError: the database failed, or a row does not fit its type
                (not retriable: the schema is not what we expect).
        """
        source = self._registry.require(stream_name)
        token: int | None = None
        rows: list[Any] = []
        for page in iter_pages(
            self._conn, source, instance_name, from_token, to_token, self._page_size
        ):
            for row_token, wire in page.rows:
                if row_token != token:
                    if token is not None:
                        yield token, tuple(rows)
                    token, rows = row_token, []
                try:
                    rows.append(row_from_wire(stream_name, wire))
                except DecodeError as exc:
                    raise BackfillError(
                        f"{stream_name} row at token {row_token} does not fit its type: {exc}",
                        retriable=False,
                    ) from exc
        if token is not None:
            yield token, tuple(rows)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
