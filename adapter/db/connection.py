"""The one place synkafka talks to a database driver.

:func:`connect` opens Synapse's database: PostgreSQL through psycopg 3, or SQLite through
the standard library's ``sqlite3``. :class:`DbConnection` wraps the driver connection so
the rest of ``adapter.db`` never sees a driver type:

* SQL is written once with ``?`` placeholders and rewritten for psycopg (``%s``) here.
* Every driver exception leaves as :class:`~adapter.errors.BackfillError`;
  ``retriable`` is true for connection failures, lock timeouts and serialisation
  failures, and false for mistakes such as a missing table.
* Both engines run in autocommit mode. Multi-statement writes use
  :meth:`DbConnection.transaction`.
* psycopg's automatic server-side prepared statements are off: the backfill pages
  re-run one query with new bounds, and PostgreSQL's generic plan for it measured
  about 40% slower than planning each page with its real bounds.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeAlias

import psycopg

from adapter.errors import BackfillError

__all__ = ["DbConnection", "Engine", "Params", "connect"]

Engine: TypeAlias = Literal["postgresql", "sqlite"]
"""The two database engines Synapse supports."""

Params: TypeAlias = Sequence[Any]
"""Positional query parameters, matching the ``?`` placeholders in order."""

_PG_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"

# SQLite messages that mean "try again later" rather than "your SQL is wrong".
_SQLITE_RETRIABLE = ("database is locked", "database table is locked", "unable to open")


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    """Rewrite ``?`` placeholders to psycopg's ``%s``, escaping literal ``%``."""
    return sql.replace("%", "%%").replace("?", "%s")


def _translate(exc: Exception, what: str) -> BackfillError:
    """Map a driver exception to :class:`BackfillError` with the right ``retriable``."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # Lost or refused connections, admin shutdown, serialisation failures and
        # deadlocks all derive from OperationalError in psycopg 3.
        retriable = True
    elif isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        retriable = any(marker in text for marker in _SQLITE_RETRIABLE)
    else:
        retriable = False
    return BackfillError(f"{what}: {type(exc).__name__}: {exc}", retriable=retriable)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except (psycopg.Error, sqlite3.Error) as exc:
        raise _translate(exc, what) from exc


class DbConnection:
    """A driver connection plus its engine, with ``?``-style SQL on both engines.

    Build it with :func:`connect`, or wrap an open driver connection with
    :meth:`from_driver`. Not thread-safe: use one per thread.

    Attributes:
        engine: ``"postgresql"`` or ``"sqlite"``.
    """

    __slots__ = ("_in_tx", "_raw", "engine")

    def __init__(
        self, raw: psycopg.Connection[Any] | sqlite3.Connection, engine: Engine
    ) -> None:
        self._raw = raw
        self.engine: Engine = engine
        self._in_tx = False

    @classmethod
    def from_driver(
        cls, raw: psycopg.Connection[Any] | sqlite3.Connection
    ) -> DbConnection:
        """Wrap an already open psycopg 3 or sqlite3 connection.

        The connection is switched to autocommit, which the sources rely on (and, for
        psycopg, to no automatic prepared statements; see the module docstring).

        Args:
            raw: the driver connection.

        Returns:
            The wrapper.
        """
        if isinstance(raw, sqlite3.Connection):
            raw.isolation_level = None
            return cls(raw, "sqlite")
        raw.autocommit = True
        raw.prepare_threshold = None
        return cls(raw, "postgresql")

    @property
    def raw(self) -> psycopg.Connection[Any] | sqlite3.Connection:
        """The driver connection, for callers that need a driver feature directly."""
        return self._raw

    def sql(self, sql: str) -> str:
        """Return ``sql`` (written with ``?`` placeholders) in this driver's style."""
        return _to_pyformat(sql) if self.engine == "postgresql" else sql

    def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a query and return every row as a tuple.

        Args:
            sql: the query, with ``?`` placeholders.
            params: the values for the placeholders.

        Returns:
            The rows.

        Raises:
            BackfillError: the driver failed.
        """
        with _translated("query failed"):
            if self.engine == "postgresql":
                return self._raw.execute(_to_pyformat(sql), params).fetchall()
            return self._raw.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """Run a query and return its first row, or ``None`` when there is none.

        Raises:
            BackfillError: the driver failed.
        """
        with _translated("query failed"):
            if self.engine == "postgresql":
                row: tuple[Any, ...] | None = self._raw.execute(
                    _to_pyformat(sql),
                    params,
                ).fetchone()
                return row
            return self._raw.execute(sql, params).fetchone()

    def execute(self, sql: str, params: Params = ()) -> None:
        """Run a statement that returns no rows.

        Raises:
            BackfillError: the driver failed.
        """
        with _translated("statement failed"):
            self._raw.execute(self.sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement for each parameter tuple in ``rows``.

        Raises:
            BackfillError: the driver failed.
        """
        with _translated("statement failed"):
            if isinstance(self._raw, sqlite3.Connection):
                self._raw.executemany(sql, rows)
            else:
                with self._raw.cursor() as cur:
                    cur.executemany(_to_pyformat(sql), rows)

    def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Params]
    ) -> None:
        """Insert many rows fast: ``COPY`` on PostgreSQL, ``executemany`` on SQLite.

        Args:
            table: the table name (trusted: never built from user input).
            columns: the column names, in the order of each row's values.
            rows: the rows.

        Raises:
            BackfillError: the driver failed.
        """
        cols = ", ".join(columns)
        with _translated(f"bulk insert into {table} failed"):
            if isinstance(self._raw, sqlite3.Connection):
                marks = ", ".join("?" * len(columns))
                self._raw.executemany(
                    f"INSERT INTO {table} ({cols}) VALUES ({marks})",  # noqa: S608
                    rows,
                )
                return
            with (
                self._raw.cursor() as cur,
                cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)

    @contextmanager
    def transaction(self) -> Iterator[DbConnection]:
        """Run the enclosed statements in one transaction; roll back on error.

        Nested use joins the outer transaction.

        Raises:
            BackfillError: the driver failed to begin or commit.
        """
        if self._in_tx:
            yield self
            return
        with _translated("transaction failed"):
            if isinstance(self._raw, sqlite3.Connection):
                self._raw.execute("BEGIN IMMEDIATE")
                self._in_tx = True
                try:
                    yield self
                except BaseException:
                    self._raw.execute("ROLLBACK")
                    raise
                else:
                    self._raw.execute("COMMIT")
                finally:
                    self._in_tx = False
            else:
                with self._raw.transaction():
                    self._in_tx = True
                    try:
                        yield self
                    finally:
                        self._in_tx = False

    def close(self) -> None:
        """Close the driver connection. Closing twice is harmless."""
        with _translated("close failed"):
            self._raw.close()

    def __enter__(self) -> DbConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(dsn: str | Path, *, connect_timeout_s: float = 10.0) -> DbConnection:
    """Open Synapse's database.

    Accepted forms:

    * ``postgresql://user@host:port/db`` or ``postgres://...`` (psycopg 3; any libpq
      URI parameter works);
    * ``sqlite:///absolute/path.db`` (``sqlite:////absolute/path.db`` also works),
      ``sqlite://relative.db`` or ``sqlite://:memory:``;
    * a plain file path (``str`` or :class:`~pathlib.Path`), taken as SQLite.

    Args:
        dsn: where the database is.
        connect_timeout_s: how long to wait for PostgreSQL to accept the connection,
            and for a locked SQLite file.

    Returns:
        An autocommit :class:`DbConnection`.

    Raises:
        BackfillError: the database cannot be reached (``retriable=True``) or the DSN
            is not understood (``retriable=False``).
    """
    text = str(dsn)
    if text.startswith(_PG_SCHEMES):
        with _translated("cannot connect to PostgreSQL"):
            raw = psycopg.connect(
                text,
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=max(1, round(connect_timeout_s)),
            )
        return DbConnection(raw, "postgresql")
    if "://" in text and not text.startswith(_SQLITE_SCHEME):
        raise BackfillError(
            f"unsupported database URL scheme in {text.split('://', 1)[0]!r}",
            retriable=False,
        )
    path = text[len(_SQLITE_SCHEME) :] if text.startswith(_SQLITE_SCHEME) else text
    if path.startswith("//"):
        # Both sqlite:///abs/path and SQLAlchemy's sqlite:////abs/path mean /abs/path.
        path = "/" + path.lstrip("/")
    with _translated("cannot open SQLite database"):
        raw_sqlite = sqlite3.connect(
            path or ":memory:",
            timeout=connect_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
    return DbConnection(raw_sqlite, "sqlite")
