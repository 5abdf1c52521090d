"""Streams kept in SQL tables: :class:`TableQuery` and :class:`SqlStreamSource`.

A :class:`TableQuery` is one paged SELECT; a :class:`SqlStreamSource` merges several
and cuts them at one token.

The limited-page rules of :mod:`adapter.io.db.sources` are kept here: whole tokens
per page, and one cut for merged queries.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from adapter.core.errors import ConfigError
from adapter.io.db.connection import DbConnection
from adapter.io.db.sources.pages import (
    DEFAULT_WRITER,
    FetchedPage,
    GroupsPage,
    Raw,
    RowsPage,
    TokenRow,
    TypedGroup,
    WireRow,
    check_limit,
    group_typed,
    merge_groups,
    typed_row,
)
from adapter.io.db.sources.positions import read_id_positions
from adapter.io.db.synapse_schema import IdGenerator

__all__ = [
    "SqlStreamSource",
    "TableQuery",
    "writer_predicate",
]


def writer_predicate(column: str, *, default_writer: bool) -> str:
    """The SQL condition that a row's writer column is the writer's (one placeholder)."""
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
    build_many: Callable[[Raw], list[TokenRow]] | None = None
    build_groups: Callable[[Raw], list[TypedGroup]] | None = None

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

    def to_rows(self, raw: Raw) -> list[TokenRow]:
        """Turn result tuples into ``(token, wire_row)`` pairs."""
        if self.build_many is not None:
            return self.build_many(raw)
        build = self.build
        return [(r[0], build(r)) for r in raw]

    def to_groups(self, raw: Raw, stream_name: str) -> list[TypedGroup]:
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
        return " AND " + writer_predicate(
            self.instance_column, default_writer=default_writer
        )

    def _tiebreak(self) -> str:
        return f", {self.tiebreak}" if self.tiebreak else ""


@dataclass(slots=True)
class _Part:
    """One query's contribution to a page before the common cut."""

    rows: Raw
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
        check_limit(limit)
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
        check_limit(limit)
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
    ) -> tuple[list[Raw], int]:
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
