"""Backfill sources: read a stream's rows between two tokens from Synapse's database.

A consumer whose POSITION for ``(stream, writer)`` is behind fills the gap here instead
of replaying Kafka. Every source answers the question Synapse's stream update functions
answer, as Synapse's own catch-up does: *the rows of this writer with* ``from_token < token <=
to_token``, *in pages*. The rows come back in Synapse's WIRE form: the JSON-compatible
list that Synapse puts in an RDATA line.

Rules every source here keeps (and a user source must keep):

1. **Ascending tokens.** Rows are sorted by token; rows sharing a token keep a fixed
   order. (Synapse's backfill query sorts by the negative ``stream_ordering`` and so
   returns tokens descending, and its sticky-events query has no ORDER BY; both are
   fixed here.)
2. **Limited semantics.** A page either reaches ``to_token`` (``limited=False``,
   ``upto_token == to_token``) or stops early (``limited=True``) at ``upto_token <
   to_token``; in both cases *every* row with a token at or below ``upto_token`` is in
   the page. The caller continues from ``upto_token``. A page never splits the rows of
   one token, even when more rows share a token than ``limit`` allows (the page then
   holds that whole token and is larger than ``limit``). Synapse's simpler
   ``len(rows) == limit`` rule can drop rows in that case; only its current-state
   query guards against it.
3. **One cut for merged sources.** A stream read from several queries (events,
   backfill, pushers, device_lists, account_data) cuts every query at the smallest
   ``upto`` among the limited ones, so no query's rows are skipped (this also fixes
   the pushers case).

Decisions that differ from Synapse, on purpose:

* **Per-writer filtering everywhere.** Every stream table has an ``instance_name``
  column, and every built-in source returns only the rows ``writer`` wrote, also for
  the streams whose Synapse query does not filter (presence, push_rules, device_lists,
  to_device, account_data, sticky_events, thread_subscriptions, quarantined_media).
  A consumer keeps one POSITION per ``(stream, writer)``, so the union of the
  per-writer backfills is then the whole table with every row exactly once. Synapse's
  unfiltered queries would re-publish other writers' rows under the asking writer's
  name (device_lists and quarantined_media are multi-writer), which a consumer would
  apply twice. For single-writer streams the two agree unless the writer was moved;
  rows of the old writer stay reachable by backfilling the old writer's name. Rows
  whose ``instance_name`` is NULL (written before Synapse added the column) belong to
  ``master``. Pass ``per_writer=False`` to a source to get Synapse's unfiltered query.
* **caches has an upper bound.** Synapse reads ``stream_id > from`` without an upper
  bound (invalidations are idempotent and should go out early). A backfill of
  ``(from, to]`` must be exact and pages must be repeatable, so the bound is applied;
  newer rows arrive live or in the next backfill.
* **to_device skips empty windows.** Synapse's window rule (``upto = min(to, from +
  limit)``, one row per entity with its highest id) is kept, but when a window holds
  no rows the page ends just before the next row instead of ``from + limit``, so a
  sparse inbox does not cost one query per ``limit`` tokens.
* **state-all** rows are produced like Synapse does (a room with 150 or more state
  rows in one page becomes one ``["state-all", [room_id]]`` row at the highest of
  their tokens); pass ``state_all_threshold=None`` to :class:`EventsSource` to keep
  every ``state`` row.

In-memory streams (``typing``, ``federation``, ``presence_federation``) have no
database source: :class:`SourceRegistry` lists them with source ``None`` and a
consumer follows them live only.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from adapter.core.errors import (
    BackfillError,
    ConfigError,
    DecodeError,
    UnknownStreamError,
)
from adapter.core.rows import (
    EventsAllStateRow,
    EventsCurrentStateRow,
    EventsEventRow,
    Row,
    row_from_wire,
)
from adapter.io.db.connection import DbConnection
from adapter.io.db.synapse_schema import (
    ID_GENERATORS,
    POSTGRES_ONLY_STREAMS,
    IdGenerator,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_WRITER",
    "LIVE_ONLY_STREAMS",
    "STATE_ALL_THRESHOLD",
    "AccountDataSource",
    "BackfillSource",
    "CachesSource",
    "DeviceListsSource",
    "EventsSource",
    "FetchedPage",
    "GroupsPage",
    "PushersSource",
    "RowsPage",
    "SourceRegistry",
    "SqlStreamSource",
    "StreamSource",
    "TableQuery",
    "ToDeviceSource",
    "TokenRow",
    "TypedGroup",
    "WireRow",
    "builtin_registry",
    "group_typed",
    "iter_fetched_pages",
    "iter_group_pages",
    "iter_pages",
    "iter_rows",
    "read_id_positions",
    "typed_row",
]

WireRow: TypeAlias = list[Any]
"""A row in Synapse's wire form: the JSON array of the stream's row fields."""

TokenRow: TypeAlias = tuple[int, WireRow]
"""A wire row with its stream token."""

TypedGroup: TypeAlias = tuple[int, tuple[Row, ...]]
"""The typed rows of one token, as a consumer's handler receives them."""

DEFAULT_PAGE_SIZE = 20_000
"""Rows per page for :func:`iter_pages`: amortises the per-query cost (a few MB)."""

DEFAULT_WRITER = "master"
"""The writer that owns rows whose ``instance_name`` is NULL (Synapse's main process)."""

STATE_ALL_THRESHOLD = 150
"""State rows of one room in one page at which they collapse to ``state-all``."""

LIVE_ONLY_STREAMS: frozenset[str] = frozenset(
    {"typing", "federation", "presence_federation"}
)
"""Streams Synapse keeps in memory only: no database source, follow them live."""


@dataclass(frozen=True, slots=True)
class RowsPage:
    """One page of a backfill.

    Attributes:
        rows: ``(token, wire_row)`` pairs, ascending by token; several may share a token.
        upto_token: every row with a token at or below this is in ``rows``; continue
            from here.
        limited: ``True`` when the page stopped before the requested ``to_token``.
    """

    rows: list[TokenRow]
    upto_token: int
    limited: bool


@dataclass(frozen=True, slots=True)
class GroupsPage:
    """One page of a backfill, typed and grouped per token.

    Attributes:
        groups: ``(token, typed rows)``, ascending, one per token; a token is never
            split across pages.
        upto_token: as :attr:`RowsPage.upto_token`.
        limited: as :attr:`RowsPage.limited`.
    """

    groups: list[TypedGroup]
    upto_token: int
    limited: bool


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """A page of a table source as the database returned it, before typing.

    Attributes:
        parts: each query's result tuples, cut at :attr:`upto_token`.
        upto_token: as :attr:`RowsPage.upto_token`.
        limited: as :attr:`RowsPage.limited`.
    """

    parts: list[list[tuple[Any, ...]]]
    upto_token: int
    limited: bool


@runtime_checkable
class StreamSource(Protocol):
    """Reads one stream's rows and positions from a database.

    Implement this to backfill your own stream, then :meth:`SourceRegistry.register`
    it. :class:`SqlStreamSource` with :class:`TableQuery` covers a stream kept in one
    or more tables with a token column.
    """

    def read_rows(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> RowsPage:
        """Return ``writer``'s rows with ``from_token < token <= to_token``.

        Args:
            conn: the database.
            writer: the writer's instance name (``master``, ``event_persister1``...).
            from_token: exclusive lower bound.
            to_token: inclusive upper bound.
            limit: the target number of rows; a page may hold more when many rows
                share its last token.

        Returns:
            The page, following the limited rule of this module.

        Raises:
            BackfillError: the database failed.
        """
        ...

    def read_positions(self, conn: DbConnection) -> dict[str, int]:
        """Return the persisted position of every known writer of the stream.

        Raises:
            BackfillError: the database failed.
        """
        ...


# ---------------------------------------------------------------------------------------
# Generic table queries
# ---------------------------------------------------------------------------------------

_Raw: TypeAlias = list[tuple[Any, ...]]


def _writer_predicate(column: str, *, default_writer: bool) -> str:
    # NULL instance names predate multi-writer support: the main process wrote them.
    # Plain comparisons (no COALESCE) keep the planner's row estimates right, which
    # decides between an ordered index scan and "join everything, then sort".
    if default_writer:
        return f"({column} = ? OR {column} IS NULL)"
    return f"{column} = ?"


_BASE_MARKER = "{base}"


@dataclass(frozen=True, slots=True)
class TableQuery:
    """One SELECT of a stream: its rows between two tokens, as wire rows.

    The SELECT's first column must be the token; :attr:`build` turns a result tuple
    into the wire row. The WHERE, ORDER BY and LIMIT clauses are added here.

    Attributes:
        select: ``SELECT <token>, ... FROM ... [JOIN ...]``, with no WHERE clause.
            With :attr:`base`, the FROM clause says ``{base}`` where the base table
            goes.
        id_column: the (qualified) stream id column, for example ``e.stream_ordering``.
        build: result tuple -> wire row (the token, column 0, is not part of it).
        instance_column: the (qualified) writer column, or ``None`` if there is none.
        tiebreak: extra ORDER BY columns after the token, for a fixed order of rows
            that share a token (for example ``"room_id, type, state_key"``).
        unique_tokens: the token column is unique, so pages need no whole-token trim.
        negative: ids are stored negated (backfill); the SELECT must return ``-id``.
        base: ``"<table> AS <alias>"`` when every join is a 1:1 LEFT JOIN: the page
            is then cut from the base table first (a sub-select with the LIMIT) and
            only that page is joined, so a page costs O(limit) however far the range
            reaches.
        build_many: optional fast path turning all result tuples of a page into
            ``(token, wire_row)`` pairs at once (used for events).
        build_groups: optional fast path turning all result tuples of a page
            straight into typed rows grouped per token, skipping the wire form
            (used for events, the stream of large backfills). Without it,
            :meth:`to_groups` types the wire rows.
    """

    select: str
    id_column: str
    build: Callable[[tuple[Any, ...]], WireRow]
    instance_column: str | None = "instance_name"
    tiebreak: str = ""
    unique_tokens: bool = False
    negative: bool = False
    base: str = ""
    build_many: Callable[[_Raw], list[TokenRow]] | None = None
    build_groups: Callable[[_Raw], list[TypedGroup]] | None = None

    def __post_init__(self) -> None:
        if bool(self.base) != (_BASE_MARKER in self.select):
            raise ConfigError(
                "TableQuery: use base together with a {base} marker in select"
            )

    def range_sql(self, *, per_writer: bool, default_writer: bool = False) -> str:
        """The paged query: placeholders are (low, high[, writer], limit).

        Args:
            per_writer: add the writer filter.
            default_writer: the writer is :data:`DEFAULT_WRITER`, which also owns
                rows without an instance name.
        """
        tok = self.id_column
        # Negative ids: wire (from, to] is stored [-to, -from); reading the stored ids
        # descending yields wire tokens ascending.
        bounds = (
            f"? <= {tok} AND {tok} < ?"
            if self.negative
            else f"? < {tok} AND {tok} <= ?"
        )
        direction = " DESC" if self.negative else ""
        where = f" WHERE {bounds}{self._writer_clause(per_writer, default_writer)}"
        order = f" ORDER BY {tok}{direction}{self._tiebreak()}"
        if not self.base:
            return f"{self.select}{where}{order} LIMIT ?"
        alias = self.base.split()[-1]
        page = f"(SELECT * FROM {self.base}{where}{order} LIMIT ?) AS {alias}"  # noqa: S608
        # No outer ORDER BY: the joins may reorder the page, and sorting it in Python
        # (Timsort, on data that is nearly always already in order) is cheaper than
        # a server-side sort per page. See _read_part.
        return self.select.replace(_BASE_MARKER, page)

    def token_sql(self, *, per_writer: bool, default_writer: bool = False) -> str:
        """All rows of one stored token: placeholders are (token[, writer])."""
        order = f" ORDER BY {self.tiebreak}" if self.tiebreak else ""
        select = self.select.replace(_BASE_MARKER, self.base)
        return f"{select} WHERE {self.id_column} = ?{self._writer_clause(per_writer, default_writer)}{order}"

    def to_rows(self, raw: _Raw) -> list[TokenRow]:
        """Turn result tuples into ``(token, wire_row)`` pairs."""
        if self.build_many is not None:
            return self.build_many(raw)
        build = self.build
        return [(r[0], build(r)) for r in raw]

    def to_groups(self, raw: _Raw, stream_name: str) -> list[TypedGroup]:
        """Turn result tuples into typed rows grouped per token.

        Raises:
            BackfillError: a row does not fit its type (not retriable).
        """
        if self.build_groups is not None:
            return self.build_groups(raw)
        return group_typed(
            [
                (token, typed_row(stream_name, token, wire))
                for token, wire in self.to_rows(raw)
            ]
        )

    def _writer_clause(self, per_writer: bool, default_writer: bool) -> str:
        if not per_writer or self.instance_column is None:
            return ""
        return " AND " + _writer_predicate(
            self.instance_column, default_writer=default_writer
        )

    def _tiebreak(self) -> str:
        return f", {self.tiebreak}" if self.tiebreak else ""


@dataclass(slots=True)
class _Part:
    """One query's contribution to a page before the common cut."""

    rows: _Raw
    upto: int


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A query with its SQL text built once per writer kind."""

    query: TableQuery
    filtered: bool
    # (range_sql, token_sql) for writer == DEFAULT_WRITER and for any other writer.
    for_default: tuple[str, str]
    for_other: tuple[str, str]

    @classmethod
    def of(cls, query: TableQuery, per_writer: bool) -> _Prepared:
        def texts(default: bool) -> tuple[str, str]:
            return (
                query.range_sql(per_writer=per_writer, default_writer=default),
                query.token_sql(per_writer=per_writer, default_writer=default),
            )

        return cls(
            query,
            per_writer and query.instance_column is not None,
            texts(True),
            texts(False),
        )


def _read_part(
    conn: DbConnection, q: _Prepared, writer: str, lo: int, hi: int, limit: int
) -> _Part:
    """Read one query's rows in ``(lo, hi]``, trimmed to whole tokens when limited."""
    w: tuple[str, ...] = (writer,) if q.filtered else ()
    range_sql, token_sql = q.for_default if writer == DEFAULT_WRITER else q.for_other
    params = (-hi, -lo, *w, limit) if q.query.negative else (lo, hi, *w, limit)
    raw = conn.fetchall(range_sql, params)
    if q.query.base:
        raw.sort(key=itemgetter(0))
    if len(raw) < limit:
        return _Part(raw, hi)
    last: int = raw[-1][0]
    if q.query.unique_tokens:
        return _Part(raw, last)
    # The last token's rows may continue past the LIMIT: drop them, and let the next
    # page start just below that token.
    first_of_last = len(raw) - 1
    while first_of_last > 0 and raw[first_of_last - 1][0] == last:
        first_of_last -= 1
    if first_of_last > 0:
        return _Part(raw[:first_of_last], last - 1)
    # Every row of the page shares one token: take that whole token, however large.
    stored = -last if q.query.negative else last
    return _Part(conn.fetchall(token_sql, (stored, *w)), last)


class SqlStreamSource:
    """A stream read from one or more :class:`TableQuery` s, merged and cut at one upto.

    Args:
        name: the wire stream name (``receipts``).
        queries: the SELECTs; rows of one token come in this order of queries.
        id_generator: where positions are persisted (for :meth:`read_positions`).
        per_writer: filter by writer (the default); ``False`` reproduces Synapse's
            unfiltered query for streams without an instance filter.
    """

    def __init__(
        self,
        name: str,
        queries: Sequence[TableQuery],
        id_generator: IdGenerator | None,
        *,
        per_writer: bool = True,
    ) -> None:
        if not queries:
            raise ConfigError(f"stream {name!r}: a source needs at least one query")
        self.name = name
        self.per_writer = per_writer
        self.id_generator = id_generator
        self._queries = tuple(_Prepared.of(q, per_writer) for q in queries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, per_writer={self.per_writer})"

    def read_rows(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> RowsPage:
        """Return ``writer``'s rows in ``(from_token, to_token]``; see the module rules."""
        _check_limit(limit)
        if from_token >= to_token:
            return RowsPage([], to_token, False)
        cut, upto = self._read_cut(conn, writer, from_token, to_token, limit)
        built = [
            q.query.to_rows(raw) for q, raw in zip(self._queries, cut, strict=True)
        ]
        nonempty = [b for b in built if b]
        if len(nonempty) <= 1:
            rows = nonempty[0] if nonempty else []
        else:
            # heapq.merge is stable across its inputs, so rows of one token keep
            # the order of the queries.
            rows = list(heapq.merge(*nonempty, key=itemgetter(0)))
        return RowsPage(self._post_process(rows, built), upto, upto < to_token)

    def read_groups(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> GroupsPage:
        """Like :meth:`read_rows`, but typed rows grouped per token.

        The same rows in the same order as :meth:`read_rows` followed by
        :func:`~adapter.core.rows.row_from_wire`; queries with a ``build_groups`` fast path
        skip the wire form. This is :meth:`fetch_page` then :meth:`groups_of`.

        Raises:
            BackfillError: the database failed, or a row does not fit its type.
        """
        return self.groups_of(
            self.fetch_page(conn, writer, from_token, to_token, limit)
        )

    def fetch_page(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> FetchedPage:
        """The database half of :meth:`read_groups`: result tuples, cut, not typed.

        Raises:
            BackfillError: the database failed.
        """
        _check_limit(limit)
        if from_token >= to_token:
            return FetchedPage([[] for _ in self._queries], to_token, False)
        cut, upto = self._read_cut(conn, writer, from_token, to_token, limit)
        return FetchedPage(cut, upto, upto < to_token)

    def groups_of(self, page: FetchedPage) -> GroupsPage:
        """The Python half of :meth:`read_groups`: type and group a fetched page.

        Raises:
            BackfillError: a row does not fit its type (not retriable).
        """
        built = [
            q.query.to_groups(raw, self.name)
            for q, raw in zip(self._queries, page.parts, strict=True)
        ]
        groups = merge_groups([b for b in built if b])
        return GroupsPage(
            self._post_process_groups(groups, built), page.upto_token, page.limited
        )

    def _read_cut(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> tuple[list[_Raw], int]:
        """Every query's result tuples up to the common cut, and that cut."""
        parts = [
            _read_part(conn, q, writer, from_token, to_token, limit)
            for q in self._queries
        ]
        upto = min(part.upto for part in parts)
        cut = [
            part.rows if part.upto == upto else [r for r in part.rows if r[0] <= upto]
            for part in parts
        ]
        return cut, upto

    def read_positions(self, conn: DbConnection) -> dict[str, int]:
        """Return each writer's persisted position (Synapse's stream_positions, else the tables' maxima)."""
        if self.id_generator is None:
            return {}
        return read_id_positions(conn, self.id_generator)

    def _post_process(
        self, rows: list[TokenRow], parts: list[list[TokenRow]]
    ) -> list[TokenRow]:
        """Hook for stream-specific rewriting of a finished page.

        Args:
            rows: the merged page.
            parts: the rows of each query (same order as the queries), after the cut.
        """
        return rows

    def _post_process_groups(
        self, groups: list[TypedGroup], parts: list[list[TypedGroup]]
    ) -> list[TypedGroup]:
        """The same hook as :meth:`_post_process`, for typed pages."""
        return groups


def typed_row(stream_name: str, token: int, wire: WireRow) -> Row:
    """``row_from_wire`` for a row read from the database.

    Raises:
        BackfillError: the row does not fit its type (not retriable: the schema is
            not what we expect).
    """
    try:
        return row_from_wire(stream_name, wire)
    except DecodeError as exc:
        raise BackfillError(
            f"{stream_name} row at token {token} does not fit its type: {exc}",
            retriable=False,
        ) from exc


def group_typed(pairs: Sequence[tuple[int, Row]]) -> list[TypedGroup]:
    """Group ``(token, row)`` pairs, ascending by token, into one group per token."""
    groups: list[TypedGroup] = []
    token: int | None = None
    rows: list[Row] = []
    for row_token, row in pairs:
        if row_token != token:
            if token is not None:
                groups.append((token, tuple(rows)))
            token, rows = row_token, []
        rows.append(row)
    if token is not None:
        groups.append((token, tuple(rows)))
    return groups


def merge_groups(lists: Sequence[list[TypedGroup]]) -> list[TypedGroup]:
    """Merge per-query groups by token; a token's rows keep the order of the lists."""
    if len(lists) <= 1:
        return lists[0] if lists else []
    merged: list[TypedGroup] = []
    for token, rows in heapq.merge(*lists, key=itemgetter(0)):
        if merged and merged[-1][0] == token:
            merged[-1] = (token, merged[-1][1] + rows)
        else:
            merged.append((token, rows))
    return merged


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ConfigError(f"page limit must be at least 1, got {limit}")


def read_id_positions(conn: DbConnection, gen: IdGenerator) -> dict[str, int]:
    """Return each writer's position for one id generator, as wire tokens.

    Reads ``stream_positions`` rows of ``gen.positions_name``. When there are none
    (or the stream never writes them, like ``caches``), falls back to the highest id
    per writer in the stream's tables, as Synapse does at start-up. Negative
    generators (``backfill``) are negated into wire tokens.

    Args:
        conn: the database.
        gen: the id generator facts (:data:`~adapter.io.db.synapse_schema.ID_GENERATORS`).

    Returns:
        ``{writer: token}``; empty when the stream has no rows at all.

    Raises:
        BackfillError: the database failed.
    """
    sign = -1 if gen.negative else 1
    if gen.positions_name is not None:
        rows = conn.fetchall(
            "SELECT instance_name, stream_id FROM stream_positions WHERE stream_name = ?",
            (gen.positions_name,),
        )
        if rows:
            return {name: sign * int(stream_id) for name, stream_id in rows}
    positions: dict[str, int] = {}
    for table in gen.tables:
        writer = (
            f"COALESCE({table.instance_column}, '{DEFAULT_WRITER}')"
            if table.instance_column
            else f"'{DEFAULT_WRITER}'"
        )
        agg, cmp = ("MIN", "<") if gen.negative else ("MAX", ">")
        sql = f"SELECT {writer}, {agg}({table.id_column}) FROM {table.table} WHERE {table.id_column} {cmp} 0 GROUP BY 1"  # noqa: S608
        for name, stream_id in conn.fetchall(sql):
            token = sign * int(stream_id)
            if token > positions.get(name, 0):
                positions[name] = token
    return positions


# ---------------------------------------------------------------------------------------
# events and backfill
# ---------------------------------------------------------------------------------------

# The event columns every "ev" row needs, with the joins of Synapse's query.
_EVENT_JOINS = """
    LEFT JOIN redactions AS r ON r.event_id = e.event_id
    LEFT JOIN state_events AS se ON se.event_id = e.event_id
    LEFT JOIN event_relations AS rel ON rel.event_id = e.event_id"""
_EV_COLUMNS = (
    "e.event_id, e.room_id, e.type, se.state_key, r.redacts, rel.relates_to_id"
)
_EV_FULL_COLUMNS = _EV_COLUMNS + ", m.membership, rej.reason IS NOT NULL, e.outlier"
_EV_FULL_JOINS = (
    _EVENT_JOINS
    + """
    LEFT JOIN room_memberships AS m ON m.event_id = e.event_id
    LEFT JOIN rejections AS rej ON rej.event_id = e.event_id"""
)


def _ev_rows(raw: _Raw) -> list[TokenRow]:
    # The hot path of a large backfill: one comprehension, no per-row call.
    return [
        (
            r[0],
            ["ev", [r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9])]],
        )
        for r in raw
    ]


_new_tuple = tuple.__new__


def _ev_groups(raw: _Raw) -> list[TypedGroup]:
    # The hottest path of a large backfill: one typed row per unique token, built in
    # one C call each (bool() turns SQLite's 0/1 into what PostgreSQL returns).
    ev = EventsEventRow
    return [
        (
            r[0],
            (
                _new_tuple(
                    ev,
                    (r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9])),
                ),
            ),
        )
        for r in raw
    ]


def _state_groups(raw: _Raw) -> list[TypedGroup]:
    state = EventsCurrentStateRow
    return group_typed([(r[0], _new_tuple(state, r[1:5])) for r in raw])


def _ev_row(r: tuple[Any, ...]) -> WireRow:
    return ["ev", [r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9])]]


def _state_row(r: tuple[Any, ...]) -> WireRow:
    return ["state", [r[1], r[2], r[3], r[4]]]


def _backfill_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], r[2], r[3], r[4], r[5], r[6]]


_NEW_EVENTS = TableQuery(
    select=f"SELECT e.stream_ordering, {_EV_FULL_COLUMNS} FROM {{base}}{_EV_FULL_JOINS}",  # noqa: S608
    base="events AS e",
    id_column="e.stream_ordering",
    instance_column="e.instance_name",
    build=_ev_row,
    build_many=_ev_rows,
    build_groups=_ev_groups,
    unique_tokens=True,
)
_STATE_DELTAS = TableQuery(
    select="SELECT stream_id, room_id, type, state_key, event_id FROM current_state_delta_stream",
    id_column="stream_id",
    build=_state_row,
    build_groups=_state_groups,
    tiebreak="room_id, type, state_key",
)
_EX_OUTLIERS = TableQuery(
    select=(
        f"SELECT o.event_stream_ordering, {_EV_FULL_COLUMNS} FROM ex_outlier_stream AS o"  # noqa: S608
        f" INNER JOIN events AS e ON e.event_id = o.event_id{_EV_FULL_JOINS}"
    ),
    id_column="o.event_stream_ordering",
    instance_column="o.instance_name",
    build=_ev_row,
    build_many=_ev_rows,
    build_groups=_ev_groups,
    unique_tokens=True,
)
_BACKFILL_EVENTS = TableQuery(
    select=f"SELECT -e.stream_ordering, {_EV_COLUMNS} FROM {{base}}{_EVENT_JOINS}",  # noqa: S608
    base="events AS e",
    id_column="e.stream_ordering",
    instance_column="e.instance_name",
    build=_backfill_row,
    unique_tokens=True,
    negative=True,
)
_BACKFILL_EX_OUTLIERS = TableQuery(
    select=(
        f"SELECT -o.event_stream_ordering, {_EV_COLUMNS} FROM ex_outlier_stream AS o"  # noqa: S608
        f" INNER JOIN events AS e ON e.event_id = o.event_id{_EVENT_JOINS}"
    ),
    id_column="o.event_stream_ordering",
    instance_column="o.instance_name",
    build=_backfill_row,
    unique_tokens=True,
    negative=True,
)


class EventsSource(SqlStreamSource):
    """The ``events`` stream: new events, current-state deltas and ex-outliers.

    Wire rows: ``["ev", [event_id, room_id, type, state_key, redacts, relates_to,
    membership, rejected, outlier]]``, ``["state", [room_id, type, state_key,
    event_id]]`` and ``["state-all", [room_id]]``. Rows of one token come as: events,
    then state, then ex-outliers.

    Args:
        state_all_threshold: state rows of one room in one page at which they become a
            single ``state-all`` row (Synapse: 150); ``None`` keeps them all.
        per_writer: see :class:`SqlStreamSource`.
    """

    def __init__(
        self,
        *,
        state_all_threshold: int | None = STATE_ALL_THRESHOLD,
        per_writer: bool = True,
    ) -> None:
        super().__init__(
            "events",
            (_NEW_EVENTS, _STATE_DELTAS, _EX_OUTLIERS),
            ID_GENERATORS["events"],
            per_writer=per_writer,
        )
        self.state_all_threshold = state_all_threshold

    def read_rows(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> RowsPage:
        """Return ``writer``'s events-stream rows in ``(from_token, to_token]``."""
        # Negative stream orderings belong to the backfill stream.
        return super().read_rows(conn, writer, max(from_token, 0), to_token, limit)

    def _post_process(
        self, rows: list[TokenRow], parts: list[list[TokenRow]]
    ) -> list[TokenRow]:
        threshold = self.state_all_threshold
        # parts[1] holds the current-state rows of this page.
        if threshold is None or len(parts[1]) < threshold:
            return rows
        per_room: dict[str, int] = {}
        for _, row in rows:
            if row[0] == "state":
                per_room[row[1][0]] = per_room.get(row[1][0], 0) + 1
        busy = {room for room, count in per_room.items() if count >= threshold}
        if not busy:
            return rows
        # Mirrors Synapse's _MAX_STATE_UPDATES_PER_ROOM: one state-all row per busy
        # room, at the highest token of its state rows.
        top: dict[str, int] = {}
        kept: list[TokenRow] = []
        for token, row in rows:
            if row[0] == "state" and row[1][0] in busy:
                top[row[1][0]] = max(top.get(row[1][0], token), token)
            else:
                kept.append((token, row))
        collapsed = [
            (token, ["state-all", [room]]) for room, token in sorted(top.items())
        ]
        return list(
            heapq.merge(kept, sorted(collapsed, key=itemgetter(0)), key=itemgetter(0))
        )

    def _post_process_groups(
        self, groups: list[TypedGroup], parts: list[list[TypedGroup]]
    ) -> list[TypedGroup]:
        # The typed twin of _post_process: same rooms, same tokens, same order.
        threshold = self.state_all_threshold
        if threshold is None or sum(len(g[1]) for g in parts[1]) < threshold:
            return groups
        per_room: dict[str, int] = {}
        for _, rows in parts[1]:
            for row in rows:
                if type(row) is EventsCurrentStateRow:
                    per_room[row.room_id] = per_room.get(row.room_id, 0) + 1
        busy = {room for room, count in per_room.items() if count >= threshold}
        if not busy:
            return groups
        top: dict[str, int] = {}
        kept: list[TypedGroup] = []
        for token, rows in groups:
            rest: list[Row] = []
            for row in rows:
                if type(row) is EventsCurrentStateRow and row.room_id in busy:
                    top[row.room_id] = max(top.get(row.room_id, token), token)
                else:
                    rest.append(row)
            if rest:
                kept.append((token, tuple(rest)))
        collapsed = group_typed(
            sorted(
                ((token, EventsAllStateRow(room)) for room, token in top.items()),
                key=itemgetter(0),
            )
        )
        return merge_groups([kept, collapsed])


class BackfillSource(SqlStreamSource):
    """The ``backfill`` stream: backfilled events (negative ``stream_ordering``).

    Wire rows: ``[event_id, room_id, type, state_key, redacts, relates_to]`` with the
    positive wire token ``-stream_ordering``, ascending (Synapse returns them
    descending; see the module docstring).
    """

    def __init__(self, *, per_writer: bool = True) -> None:
        super().__init__(
            "backfill",
            (_BACKFILL_EVENTS, _BACKFILL_EX_OUTLIERS),
            ID_GENERATORS["backfill"],
            per_writer=per_writer,
        )

    def read_rows(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> RowsPage:
        """Return ``writer``'s backfill rows in ``(from_token, to_token]`` (wire tokens)."""
        return super().read_rows(conn, writer, max(from_token, 0), to_token, limit)


# ---------------------------------------------------------------------------------------
# The other table streams
# ---------------------------------------------------------------------------------------


def _receipt_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], r[2], r[3], r[4], r[5], json.loads(r[6])]


def _presence_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7])]


def _pusher_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], r[2], r[3], False]


def _deleted_pusher_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], r[2], r[3], True]


def _cache_row(r: tuple[Any, ...]) -> WireRow:
    keys = r[2]
    return [r[1], None if keys is None else list(keys), r[3]]


def _device_list_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], False, bool(r[2])]


def _signature_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], True, False]


def _global_account_data_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], None, r[2]]


def _room_account_data_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], r[2], r[3]]


def _tag_row(r: tuple[Any, ...]) -> WireRow:
    return [r[1], r[2], "m.tag"]


def _profile_update_row(r: tuple[Any, ...]) -> WireRow:
    # JSONB arrives parsed from PostgreSQL, as JSON text from SQLite.
    fields = r[3]
    if isinstance(fields, str):
        fields = json.loads(fields)
    return [r[1], r[2], fields]


def _columns_row(r: tuple[Any, ...]) -> WireRow:
    return list(r[1:])


def _with_bool_last(r: tuple[Any, ...]) -> WireRow:
    return [*r[1:-1], bool(r[-1])]


class PushersSource(SqlStreamSource):
    """The ``pushers`` stream: ``[user_id, app_id, pushkey, deleted]``.

    Merges ``pushers`` (``deleted=False``) and ``deleted_pushers`` (``deleted=True``).
    """

    def __init__(self, *, per_writer: bool = True) -> None:
        super().__init__(
            "pushers",
            (
                TableQuery(
                    select="SELECT id, user_name, app_id, pushkey FROM pushers",
                    id_column="id",
                    build=_pusher_row,
                    unique_tokens=True,
                ),
                TableQuery(
                    select="SELECT stream_id, user_id, app_id, pushkey FROM deleted_pushers",
                    id_column="stream_id",
                    build=_deleted_pusher_row,
                    tiebreak="user_id, app_id, pushkey",
                ),
            ),
            ID_GENERATORS["pushers"],
            per_writer=per_writer,
        )


class CachesSource(SqlStreamSource):
    """The ``caches`` stream (PostgreSQL only): ``[cache_func, keys|None, invalidation_ts]``.

    Unlike Synapse, the read is bounded above by ``to_token`` (see the module
    docstring). On SQLite :meth:`read_rows` raises, because the stream does not exist.
    """

    def __init__(self) -> None:
        super().__init__(
            "caches",
            (
                TableQuery(
                    select="SELECT stream_id, cache_func, keys, invalidation_ts FROM cache_invalidation_stream_by_instance",
                    id_column="stream_id",
                    build=_cache_row,
                    tiebreak="cache_func",
                ),
            ),
            ID_GENERATORS["caches"],
        )

    def read_rows(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> RowsPage:
        """Return ``writer``'s invalidations in ``(from_token, to_token]``.

        Raises:
            BackfillError: on SQLite (``retriable=False``), or the database failed.
        """
        _require_postgres(conn, self.name)
        return super().read_rows(conn, writer, from_token, to_token, limit)

    def read_positions(self, conn: DbConnection) -> dict[str, int]:
        """Return the highest invalidation id per writer (never in ``stream_positions``)."""
        _require_postgres(conn, self.name)
        return super().read_positions(conn)


def _require_postgres(conn: DbConnection, stream: str) -> None:
    if conn.engine != "postgresql":
        raise BackfillError(
            f"the {stream} stream exists only on PostgreSQL", retriable=False
        )


class DeviceListsSource(SqlStreamSource):
    """The ``device_lists`` stream: ``[user_id, is_signature, hosts_calculated]``.

    Merges device changes (``device_lists_stream``, hosts not yet calculated), the
    distinct ``(stream_id, user_id)`` of ``device_lists_outbound_pokes`` (hosts
    calculated) and ``user_signature_stream`` (signatures).
    """

    def __init__(self, *, per_writer: bool = True) -> None:
        super().__init__(
            "device_lists",
            (
                TableQuery(
                    select="SELECT stream_id, user_id, FALSE FROM device_lists_stream",
                    id_column="stream_id",
                    build=_device_list_row,
                    tiebreak="user_id, device_id",
                ),
                TableQuery(
                    select="SELECT DISTINCT stream_id, user_id, TRUE FROM device_lists_outbound_pokes",
                    id_column="stream_id",
                    build=_device_list_row,
                    tiebreak="user_id",
                ),
                TableQuery(
                    select="SELECT stream_id, from_user_id FROM user_signature_stream",
                    id_column="stream_id",
                    build=_signature_row,
                    tiebreak="from_user_id",
                ),
            ),
            ID_GENERATORS["device_lists"],
            per_writer=per_writer,
        )


class AccountDataSource(SqlStreamSource):
    """The ``account_data`` stream: ``[user_id, room_id|None, data_type]``.

    Merges global account data (``room_id`` None), room account data and room tag
    revisions (``data_type`` ``m.tag``).
    """

    def __init__(self, *, per_writer: bool = True) -> None:
        super().__init__(
            "account_data",
            (
                TableQuery(
                    select="SELECT stream_id, user_id, account_data_type FROM account_data",
                    id_column="stream_id",
                    build=_global_account_data_row,
                    tiebreak="user_id, account_data_type",
                ),
                TableQuery(
                    select="SELECT stream_id, user_id, room_id, account_data_type FROM room_account_data",
                    id_column="stream_id",
                    build=_room_account_data_row,
                    tiebreak="user_id, room_id, account_data_type",
                ),
                TableQuery(
                    select="SELECT stream_id, user_id, room_id FROM room_tags_revisions",
                    id_column="stream_id",
                    build=_tag_row,
                    tiebreak="user_id, room_id",
                ),
            ),
            ID_GENERATORS["account_data"],
            per_writer=per_writer,
        )


class ToDeviceSource:
    """The ``to_device`` stream: ``[entity]`` (a local user ID, or a destination).

    Synapse's window rule: a page covers ``(from, min(to, from + limit)]`` and holds
    one row per entity at the highest stream id it has in the window, so rows are
    not per message. Empty windows end just before the next row (module docstring).

    Args:
        per_writer: see :class:`SqlStreamSource`.
    """

    name = "to_device"

    def __init__(self, *, per_writer: bool = True) -> None:
        self.per_writer = per_writer
        self.id_generator = ID_GENERATORS["to_device"]
        self._sql = {default: self._texts(default) for default in (True, False)}

    def _texts(self, default_writer: bool) -> tuple[tuple[str, str], tuple[str, str]]:
        where = (
            " AND " + _writer_predicate("instance_name", default_writer=default_writer)
            if self.per_writer
            else ""
        )
        window = f"? < stream_id AND stream_id <= ?{where}"
        return (
            (
                f"SELECT MAX(stream_id), user_id FROM device_inbox WHERE {window} GROUP BY user_id",  # noqa: S608
                f"SELECT MAX(stream_id), destination FROM device_federation_outbox WHERE {window} GROUP BY destination",  # noqa: S608
            ),
            (
                f"SELECT MIN(stream_id) FROM device_inbox WHERE {window}",  # noqa: S608
                f"SELECT MIN(stream_id) FROM device_federation_outbox WHERE {window}",  # noqa: S608
            ),
        )

    def __repr__(self) -> str:
        return f"ToDeviceSource(per_writer={self.per_writer})"

    def read_rows(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> RowsPage:
        """Return one window of ``writer``'s to-device entities; see the class docstring."""
        _check_limit(limit)
        if from_token >= to_token:
            return RowsPage([], to_token, False)
        w: tuple[str, ...] = (writer,) if self.per_writer else ()
        rows_sql, next_sql = self._sql[writer == DEFAULT_WRITER]
        upto = min(to_token, from_token + limit)
        raw = [
            row
            for sql in rows_sql
            for row in conn.fetchall(sql, (from_token, upto, *w))
        ]
        if not raw and upto < to_token:
            nexts = [
                row[0]
                for sql in next_sql
                for row in conn.fetchall(sql, (upto, to_token, *w))
            ]
            found = [n for n in nexts if n is not None]
            # No row in (from, next) exists, so "upto = next - 1" keeps the rule.
            upto = min(found) - 1 if found else to_token
        raw.sort(key=itemgetter(0, 1))
        return RowsPage(
            [(int(token), [entity]) for token, entity in raw], upto, upto < to_token
        )

    def read_positions(self, conn: DbConnection) -> dict[str, int]:
        """Return each writer's persisted position (Synapse's stream_positions, else the tables' maxima)."""
        return read_id_positions(conn, self.id_generator)


def _simple(
    name: str,
    select: str,
    build: Callable[[tuple[Any, ...]], WireRow],
    *,
    tiebreak: str = "",
    unique_tokens: bool = False,
    per_writer: bool = True,
) -> SqlStreamSource:
    query = TableQuery(
        select=select,
        id_column="stream_id",
        build=build,
        tiebreak=tiebreak,
        unique_tokens=unique_tokens,
    )
    return SqlStreamSource(name, (query,), ID_GENERATORS[name], per_writer=per_writer)


def _builtin_sources() -> dict[str, StreamSource]:
    return {
        "events": EventsSource(),
        "backfill": BackfillSource(),
        "presence": _simple(
            "presence",
            "SELECT stream_id, user_id, state, last_active_ts, last_federation_update_ts,"
            " last_user_sync_ts, status_msg, currently_active FROM presence_stream",
            _presence_row,
            tiebreak="user_id",
        ),
        "receipts": _simple(
            "receipts",
            "SELECT stream_id, room_id, receipt_type, user_id, event_id, thread_id, data FROM receipts_linearized",
            _receipt_row,
            tiebreak="room_id, receipt_type, user_id, thread_id",
        ),
        "push_rules": _simple(
            "push_rules",
            "SELECT stream_id, user_id FROM push_rules_stream",
            _columns_row,
            tiebreak="user_id, rule_id",
        ),
        "pushers": PushersSource(),
        "caches": CachesSource(),
        "device_lists": DeviceListsSource(),
        "to_device": ToDeviceSource(),
        "account_data": AccountDataSource(),
        "sticky_events": _simple(
            "sticky_events",
            "SELECT se.stream_id, se.room_id, se.event_id FROM sticky_events AS se"
            " INNER JOIN event_json AS ej ON ej.event_id = se.event_id",
            _columns_row,
            unique_tokens=True,
        ),
        "thread_subscriptions": _simple(
            "thread_subscriptions",
            "SELECT stream_id, user_id, room_id, event_id FROM thread_subscriptions",
            _columns_row,
            unique_tokens=True,
        ),
        "un_partial_stated_room": _simple(
            "un_partial_stated_room",
            "SELECT stream_id, room_id FROM un_partial_stated_room_stream",
            _columns_row,
            unique_tokens=True,
        ),
        "un_partial_stated_event": _simple(
            "un_partial_stated_event",
            "SELECT stream_id, event_id, rejection_status_changed FROM un_partial_stated_event_stream",
            _with_bool_last,
            unique_tokens=True,
        ),
        "quarantined_media": _simple(
            "quarantined_media",
            "SELECT stream_id, origin, media_id, quarantined FROM quarantined_media_changes",
            _with_bool_last,
            unique_tokens=True,
        ),
        "profile_updates": _simple(
            "profile_updates",
            "SELECT stream_id, user_id, action, affected_fields FROM profile_updates",
            _profile_update_row,
            unique_tokens=True,
        ),
    }


# ---------------------------------------------------------------------------------------
# Registry and paging
# ---------------------------------------------------------------------------------------


@dataclass
class SourceRegistry:
    """Stream name -> backfill source; ``None`` marks a live-only (in-memory) stream.

    Start from :func:`builtin_registry` and :meth:`register` your own streams.

    Attributes:
        sources: the mapping; prefer the methods to editing it directly.
    """

    sources: dict[str, StreamSource | None] = field(default_factory=dict)

    def register(
        self, name: str, source: StreamSource | None, *, replace: bool = False
    ) -> None:
        """Add a stream.

        Args:
            name: the wire stream name.
            source: its backfill source, or ``None`` for a stream that has no database
                rows and must be followed live only.
            replace: allow replacing an existing entry (a built-in, for example).

        Raises:
            ConfigError: ``name`` is already registered and ``replace`` is false, or the
                name is empty or contains a space (stream names are single wire words).
        """
        if not name or any(ch.isspace() for ch in name):
            raise ConfigError(f"invalid stream name {name!r}")
        if name in self.sources and not replace:
            raise ConfigError(f"stream {name!r} is already registered")
        self.sources[name] = source

    def source(self, name: str) -> StreamSource | None:
        """Return the stream's source, or ``None`` for a live-only stream.

        Raises:
            UnknownStreamError: nobody registered ``name``.
        """
        try:
            return self.sources[name]
        except KeyError:
            raise UnknownStreamError(f"unknown stream {name!r}") from None

    def require(self, name: str) -> StreamSource:
        """Return the stream's source for a backfill.

        Raises:
            UnknownStreamError: nobody registered ``name``.
            BackfillError: the stream is live-only (``retriable=False``).
        """
        source = self.source(name)
        if source is None:
            raise BackfillError(
                f"stream {name!r} has no database source; follow it live",
                retriable=False,
            )
        return source

    def is_live_only(self, name: str) -> bool:
        """Whether ``name`` has no database source.

        Raises:
            UnknownStreamError: nobody registered ``name``.
        """
        return self.source(name) is None

    def names(self) -> list[str]:
        """Every registered stream name, sorted."""
        return sorted(self.sources)

    def __contains__(self, name: object) -> bool:
        return name in self.sources


def builtin_registry(*, engine: str | None = None) -> SourceRegistry:
    """A fresh registry with every built-in stream of Synapse.

    Args:
        engine: when ``"sqlite"``, leave out the PostgreSQL-only streams (``caches``).

    Returns:
        A registry the caller may extend.
    """
    sources: dict[str, StreamSource | None] = dict(_builtin_sources())
    if engine == "sqlite":
        for name in POSTGRES_ONLY_STREAMS:
            del sources[name]
    for name in sorted(LIVE_ONLY_STREAMS):
        sources[name] = None
    return SourceRegistry(sources)


_Page = TypeVar("_Page", RowsPage, GroupsPage, FetchedPage)


def _paged(
    read: Callable[[int], _Page], source: object, from_token: int
) -> Iterator[_Page]:
    """Pages from ``read(current)``, each continuing from the last one's upto token."""
    current = from_token
    while True:
        page = read(current)
        if page.limited and page.upto_token <= current:
            raise BackfillError(
                f"{source!r} made no progress past token {current} (limited page up to {page.upto_token})",
                retriable=False,
            )
        yield page
        if not page.limited:
            return
        current = page.upto_token


def iter_pages(
    conn: DbConnection,
    source: StreamSource,
    writer: str,
    from_token: int,
    to_token: int,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[RowsPage]:
    """Page through ``writer``'s rows in ``(from_token, to_token]`` until the end.

    Each page continues from the previous page's ``upto_token``; the last page has
    ``limited=False``. A consumer can apply each page and then record its
    ``upto_token`` as its POSITION.

    Args:
        conn: the database.
        source: the stream's source.
        writer: the writer's instance name.
        from_token: exclusive lower bound.
        to_token: inclusive upper bound.
        page_size: the ``limit`` passed to every read.

    Yields:
        Pages in token order.

    Raises:
        BackfillError: the database failed, or a source stopped making progress.
    """
    _check_limit(page_size)
    return _paged(
        lambda current: source.read_rows(conn, writer, current, to_token, page_size),
        source,
        from_token,
    )


def iter_group_pages(
    conn: DbConnection,
    source: SqlStreamSource,
    writer: str,
    from_token: int,
    to_token: int,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[GroupsPage]:
    """Like :func:`iter_pages`, with typed rows grouped per token.

    Raises:
        BackfillError: the database failed, a row does not fit its type, or the
            source stopped making progress.
    """
    return (
        source.groups_of(page)
        for page in iter_fetched_pages(
            conn, source, writer, from_token, to_token, page_size
        )
    )


def iter_fetched_pages(
    conn: DbConnection,
    source: SqlStreamSource,
    writer: str,
    from_token: int,
    to_token: int,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[FetchedPage]:
    """Like :func:`iter_group_pages`, stopping before the typing.

    For a reader that fetches in one thread and types in another
    (:meth:`SqlStreamSource.groups_of`).

    Raises:
        BackfillError: the database failed, or the source stopped making progress.
    """
    _check_limit(page_size)
    return _paged(
        lambda current: source.fetch_page(conn, writer, current, to_token, page_size),
        source,
        from_token,
    )


def iter_rows(
    conn: DbConnection,
    source: StreamSource,
    writer: str,
    from_token: int,
    to_token: int,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[TokenRow]:
    """Like :func:`iter_pages`, but yield the ``(token, wire_row)`` pairs one by one.

    Yields:
        Rows in ascending token order.

    Raises:
        BackfillError: the database failed, or a source stopped making progress.
    """
    for page in iter_pages(conn, source, writer, from_token, to_token, page_size):
        yield from page.rows
