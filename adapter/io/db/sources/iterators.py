"""Paging a source from one token to another: the ``iter_*`` entry points."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from adapter.core.errors import BackfillError
from adapter.io.db.connection import DbConnection
from adapter.io.db.sources.pages import (
    DEFAULT_PAGE_SIZE,
    FetchedPage,
    GroupsPage,
    RowsPage,
    StreamSource,
    TokenRow,
    check_limit,
)
from adapter.io.db.sources.table_source import SqlStreamSource

__all__ = [
    "iter_fetched_pages",
    "iter_group_pages",
    "iter_pages",
    "iter_rows",
]


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
    check_limit(page_size)
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
    check_limit(page_size)
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
