"""What a backfill source returns (rows, pages) and the :class:`StreamSource` protocol.

Also the helpers that type wire rows and group them per token, which both the table
sources and the runtime's reader use.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol, TypeAlias, runtime_checkable

from adapter.core.errors import BackfillError, ConfigError, DecodeError
from adapter.core.rows import Row, row_from_wire
from adapter.io.db.connection import DbConnection

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_WRITER",
    "FetchedPage",
    "GroupsPage",
    "Raw",
    "RowsPage",
    "StreamSource",
    "TokenRow",
    "TypedGroup",
    "WireRow",
    "check_limit",
    "group_typed",
    "merge_groups",
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

Raw: TypeAlias = list[tuple[Any, ...]]
"""Result tuples as the database driver returns them (the token first)."""


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


def check_limit(limit: int) -> None:
    """Refuse a page limit below 1.

    Raises:
        ConfigError: ``limit`` is below 1.
    """
    if limit < 1:
        raise ConfigError(f"page limit must be at least 1, got {limit}")
