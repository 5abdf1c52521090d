"""``DatabaseReader``: the consumer's :class:`~adapter.core.ports.BackfillReader` on Synapse's DB.

It joins the database sources (:mod:`adapter.io.db.sources`) to the typed rows of
:mod:`adapter.core.rows`, grouping the rows of one token into one update, as a Kafka RDATA
record carries them. Table sources build typed rows themselves (no wire form in
between); other sources speak Synapse's wire rows, typed here.

Pages are fetched and typed with CPython's cycle collector paused
(:func:`~adapter.runtime.interpreter.gc_paused`). That is decided here, in the runtime,
and not in the database sources: the collector belongs to the process, and the pause
is shared with the read-ahead thread, which the sources know nothing about.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

from adapter.core.errors import BackfillError
from adapter.io.db.connection import DbConnection, connect
from adapter.io.db.sources import (
    DEFAULT_PAGE_SIZE,
    SourceRegistry,
    SqlStreamSource,
    builtin_registry,
    iter_fetched_pages,
    iter_pages,
    typed_row,
)
from adapter.runtime.interpreter import gc_paused

__all__ = ["DatabaseReader"]


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
    done: list[tuple[int, tuple[Any, ...]]] = []
    for row_token, wire in page:
        if row_token != token:
            if token is not None:
                done.append((token, tuple(rows)))
            token, rows = row_token, []
        try:
            rows.append(typed_row(stream_name, row_token, wire))
        except BackfillError as error:
            return done, token, rows, error
    return done, token, rows, None


_T = TypeVar("_T")
_END: Final = object()


def each_gc_paused(items: Iterator[_T]) -> Generator[_T, None, None]:
    """Iterate ``items`` with CPython's cycle collector paused while each item is made.

    A backfill page is fetched and typed with the collector paused (see
    :func:`~adapter.runtime.interpreter.gc_paused`: it was most of the row-building
    time); the handlers that run between pages see it enabled, unless another thread
    (the read-ahead one) is inside a pause at that moment.
    """
    while True:
        with gc_paused():
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


def prefetched(
    items: Iterator[_T], name: str, depth: int = 2
) -> Generator[_T, None, None]:
    """Iterate ``items`` in a helper thread, up to ``depth`` items ahead of the caller.

    A backfill page spends most of its time waiting for the database, with the GIL
    released; reading the next page while the caller handles this one overlaps the
    two. Errors raised by ``items`` reach the caller at the same point as without the
    thread. Closing this iterator early (the caller stopped or failed) stops the
    thread and waits for it, so the connection behind ``items`` is free again when
    this returns.

    Args:
        items: the iterator to run ahead (it owns the database connection while this
            iterator is open).
        name: for the thread's name.
        depth: how many items may wait.
    """
    ahead: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            put(_Failure(exc))
            return
        put(_END)

    thread = threading.Thread(target=run, name=f"synkafka-prefetch-{name}", daemon=True)
    thread.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class DatabaseReader:
    """Reads backfill rows and writer positions over one database connection.

    Args:
        dsn: a DSN :func:`~adapter.io.db.connection.parse_dsn` accepts (the SQLite
            file must exist).
        registry: stream sources; the built-in Synapse streams by default.
        page_size: rows per database round trip.

    Raises:
        BackfillError: the database cannot be reached (``retriable``).
        ConfigError: the DSN is not understood or the SQLite file does not exist.
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
        if isinstance(source, SqlStreamSource):
            # Built-in and table sources: a helper thread fetches the next page
            # while this one is typed (no wire rows) and handled.
            pages = iter_fetched_pages(
                self._conn,
                source,
                instance_name,
                from_token,
                to_token,
                self._page_size,
            )
            for fetched in prefetched(
                each_gc_paused(pages), f"{stream_name}/{instance_name}"
            ):
                with gc_paused():
                    groups = source.groups_of(fetched).groups
                yield from groups
            return
        token: int | None = None
        rows: list[Any] = []
        for page in each_gc_paused(
            iter_pages(
                self._conn, source, instance_name, from_token, to_token, self._page_size
            )
        ):
            with gc_paused():
                done, token, rows, error = _group(stream_name, page.rows, token, rows)
            yield from done
            if error is not None:
                raise error
        if token is not None:
            yield token, tuple(rows)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
