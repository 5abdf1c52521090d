"""``DatabaseReader``: the consumer's :class:`~adapter.ports.BackfillReader` on Synapse's DB.

It joins the database sources (:mod:`adapter.db.sources`, which speak Synapse's wire
rows) to the typed rows of :mod:`adapter.rows`, grouping the rows of one token into
one update, as a Kafka RDATA record carries them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
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
from adapter.rows import EventsCurrentStateRow, EventsEventRow, Row, row_from_wire

__all__ = ["DatabaseReader"]


def _event_row(wire: Any) -> Row | None:
    """``row_from_wire("events", wire)`` for the usual ``ev`` and ``state`` rows.

    Returns None for anything it does not recognise as exactly well-formed (other
    row types, 0/1 booleans, a wrong type anywhere), which the caller then hands
    to ``row_from_wire``: same rows, same errors, without its generic per-field
    checks on the hot path of a large backfill.
    """
    if type(wire) is not list or len(wire) != 2:
        return None
    kind, data = wire
    if type(data) is not list:
        return None
    if kind == "ev" and len(data) == 9:
        event_id, room_id, type_, state_key, redacts, relates, membership, rej, out = (
            data
        )
        if (
            type(event_id) is str
            and type(room_id) is str
            and type(type_) is str
            and (state_key is None or type(state_key) is str)
            and (redacts is None or type(redacts) is str)
            and (relates is None or type(relates) is str)
            and (membership is None or type(membership) is str)
            and type(rej) is bool
            and type(out) is bool
        ):
            return EventsEventRow(
                event_id,
                room_id,
                type_,
                state_key,
                redacts,
                relates,
                membership,
                rej,
                out,
            )
        return None
    if kind == "state" and len(data) == 4:
        room_id, type_, state_key, event_id = data
        if (
            type(room_id) is str
            and type(type_) is str
            and type(state_key) is str
            and (event_id is None or type(event_id) is str)
        ):
            return EventsCurrentStateRow(room_id, type_, state_key, event_id)
    return None


def _group(
    stream_name: str,
    page: list[tuple[int, Any]],
    token: int | None,
    rows: list[Any],
) -> tuple[
    list[tuple[int, tuple[Any, ...]]], int | None, list[Any], BackfillError | None
]:
    """Type one page's rows and group them per token.

    Args:
        stream_name: the stream.
        page: ``(token, wire_row)`` pairs in token order.
        token: the token of the group still open from the previous page, if any.
        rows: that group's rows.

    Returns:
        The finished groups, the open group's token and rows, and the error that
        stopped the page (the groups finished before it are still returned).
    """
    fast = _event_row if stream_name == "events" else None
    done: list[tuple[int, tuple[Any, ...]]] = []
    for row_token, wire in page:
        if row_token != token:
            if token is not None:
                done.append((token, tuple(rows)))
            token, rows = row_token, []
        row = fast(wire) if fast is not None else None
        if row is None:
            try:
                row = row_from_wire(stream_name, wire)
            except DecodeError as exc:
                error = BackfillError(
                    f"{stream_name} row at token {row_token} does not fit its type: {exc}",
                    retriable=False,
                )
                error.__cause__ = exc
                return done, token, rows, error
        rows.append(row)
    return done, token, rows, None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a page of typed rows is built.

    Building a page allocates a few objects per row and creates no reference cycles;
    with the collector on, every 700 allocations trigger a collection that walks the
    young objects (as :mod:`adapter.db.sources` measured for its wire rows). An
    already disabled collector is left alone.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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
            # Typed rows are built a page at a time with the cyclic collector paused
            # (see _gc_paused); handlers run between pages with it enabled.
            with _gc_paused():
                done, token, rows, error = _group(stream_name, page.rows, token, rows)
            yield from done
            if error is not None:
                raise error
        if token is not None:
            yield token, tuple(rows)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
