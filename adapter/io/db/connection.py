"""The one place synkafka talks to a database driver.

:func:`connect` opens Synapse's database: PostgreSQL through psycopg 3, or SQLite
through the standard library's ``sqlite3``. :func:`parse_dsn` decides which, without
I/O: a ``postgresql://``/``postgres://`` URL or a libpq key=value string is
PostgreSQL, ``sqlite:///path`` is SQLite, anything else is refused; a SQLite file is
never created unless the dev stack asks for it (``create=True``).
:class:`DbConnection` wraps the driver connection so the rest of ``adapter.io.db`` never
sees a driver type:

* SQL is written once with ``?`` placeholders and rewritten for psycopg (``%s``) here.
* Every driver exception leaves as :class:`~adapter.core.errors.BackfillError`;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from adapter.core.config import Secret, redact_text, redact_url, with_url_password
from adapter.core.errors import BackfillError, ConfigError, DatabaseConfigError

__all__ = [
    "DbConnection",
    "Dsn",
    "Engine",
    "Params",
    "connect",
    "dsn_with_password",
    "parse_dsn",
]

Engine: TypeAlias = Literal["postgresql", "sqlite"]
"""The two database engines Synapse supports."""

Params: TypeAlias = Sequence[Any]
"""Positional query parameters, matching the ``?`` placeholders in order."""

_PG_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"
_ACCEPTED: Final = (
    "use postgresql://..., postgres://..., sqlite:///path/to/homeserver.db or a libpq "
    "key=value string such as 'host=... dbname=synapse user=...'"
)

# SQLite messages that mean "try again later" rather than "your SQL is wrong".
_SQLITE_RETRIABLE = ("database is locked", "database table is locked", "unable to open")


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    """Rewrite ``?`` placeholders to psycopg's ``%s``, escaping literal ``%``."""
    return sql.replace("%", "%%").replace("?", "%s")


# PostgreSQL's answers that only a change of --db fixes (libpq's message texts).
_PG_SETTINGS_WRONG: Final = (
    "does not exist",  # database "x" / role "x"
    "password authentication failed",
    "no pg_hba.conf entry",
    "authentication failed",
)


def _translate(exc: Exception, what: str, secret: str | None = None) -> BackfillError:
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
    # A driver may quote its connection string back; the password never shows. libpq
    # adds a tab-indented hint line: the message stays one line.
    text = " ".join(redact_text(str(exc), [secret]).split())
    message = f"{what}: {type(exc).__name__}: {text}"
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return DatabaseConfigError(f"{message} (is this Synapse's database?)")
    if any(marker in text.lower() for marker in _PG_SETTINGS_WRONG):
        return DatabaseConfigError(message)
    return BackfillError(message, retriable=retriable)


@contextmanager
def _translated(what: str, secret: str | None = None) -> Iterator[None]:
    try:
        yield
    except (psycopg.Error, sqlite3.Error) as exc:
        raise _translate(exc, what, secret) from exc


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


@dataclass(frozen=True, slots=True)
class Dsn:
    """Where a database is, as :func:`parse_dsn` understood it.

    Attributes:
        engine: ``"postgresql"`` or ``"sqlite"``.
        target: what the driver gets: the URL or key=value string for psycopg
            (unchanged), the file path (or ``:memory:``) for SQLite.
    """

    engine: Engine
    target: str


def parse_dsn(dsn: str | Path) -> Dsn:
    """Decide which engine a DSN names and what its driver gets; no I/O.

    Accepted forms:

    * ``postgresql://user@host:port/db`` or ``postgres://...`` (any libpq URI
      parameter works);
    * a libpq key=value string, ``host=10.0.0.5 dbname=synapse user=synapse``, passed
      to psycopg as it is (libpq checks the keywords here, before any connection);
    * ``sqlite:///absolute/path.db`` (``sqlite:////absolute/path.db`` also works),
      ``sqlite://relative.db`` or ``sqlite://:memory:``;
    * a :class:`~pathlib.Path` (from Python code only), taken as a SQLite file.

    A plain string path is refused: taken as SQLite, a typo or a key=value DSN used
    to become a new empty file named after it, password included.

    Args:
        dsn: the DSN.

    Returns:
        The engine and the driver's argument.

    Raises:
        ConfigError: the DSN is none of the above. The message never repeats a
            string holding ``=`` (it may hold a password) and masks a URL's password.
    """
    if isinstance(dsn, Path):
        return Dsn("sqlite", str(dsn))
    text = dsn.strip()
    if text.startswith(_PG_SCHEMES):
        return Dsn("postgresql", text)
    if text.startswith(_SQLITE_SCHEME):
        path = text[len(_SQLITE_SCHEME) :]
        if path.startswith("//"):
            # Both sqlite:///abs/path and SQLAlchemy's sqlite:////abs/path mean /abs/path.
            path = "/" + path.lstrip("/")
        if not path:
            raise ConfigError("sqlite:// needs a path: sqlite:///path/to/homeserver.db")
        return Dsn("sqlite", path)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigError(
            f"unsupported database URL scheme {scheme!r} in {redact_url(text)!r}: "
            f"{_ACCEPTED}"
        )
    if "=" in text:
        try:
            keywords = conninfo_to_dict(text)
        except psycopg.ProgrammingError:
            # libpq's message quotes the string around the error, which may be a
            # piece of the password: say what is wrong without it.
            raise ConfigError(
                "not a valid libpq key=value string (an unknown keyword, or a value "
                f"with spaces that is not in single quotes); {_ACCEPTED}"
            ) from None
        if not keywords:
            raise ConfigError(f"a key=value DSN without any keyword: {_ACCEPTED}")
        return Dsn("postgresql", text)
    shown = repr(text) if text else "an empty string"
    raise ConfigError(f"not a database DSN: {shown}; {_ACCEPTED}")


def dsn_with_password(dsn: str, password: Secret) -> str:
    """A PostgreSQL DSN (URL or key=value) with ``password`` put in.

    Args:
        dsn: a ``postgresql://`` URL or a libpq key=value string.
        password: the password (from a file).

    Raises:
        ConfigError: ``dsn`` is not a PostgreSQL DSN.
    """
    if parse_dsn(dsn).engine != "postgresql":
        raise ConfigError("a database password needs a PostgreSQL DSN")
    if dsn.strip().startswith(_PG_SCHEMES):
        return with_url_password(dsn, password)
    # make_conninfo quotes the value as libpq wants, whatever characters it holds.
    return make_conninfo(dsn, password=password.value)


def connect(
    dsn: str | Path, *, connect_timeout_s: float = 10.0, create: bool = False
) -> DbConnection:
    """Open Synapse's database.

    Accepted forms: see :func:`parse_dsn`. A SQLite file must exist, since Synapse
    creates it: a wrong path is an error, never a new empty database.

    Args:
        dsn: where the database is.
        connect_timeout_s: how long to wait for PostgreSQL to accept the connection,
            and for a locked SQLite file.
        create: create a missing SQLite file. Only the dev stack (demo, tests,
            benches) sets it, to build a fresh database for the writer simulator.

    Returns:
        An autocommit :class:`DbConnection`.

    Raises:
        ConfigError: the DSN is not understood, or the SQLite file does not exist
            and ``create`` is false.
        BackfillError: the database cannot be reached (``retriable=True``).
    """
    parsed = parse_dsn(dsn)
    if parsed.engine == "postgresql":
        with _translated("cannot connect to PostgreSQL", _password_of(parsed.target)):
            raw = psycopg.connect(
                parsed.target,
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=max(1, round(connect_timeout_s)),
            )
        return DbConnection(raw, "postgresql")
    path = parsed.target
    in_memory = path == ":memory:"
    if not create and not in_memory and not Path(path).is_file():
        raise ConfigError(
            f"SQLite database {path} does not exist or is not a file "
            "(Synapse creates it: check the path)"
        )
    # mode=rw never creates the file, even if it vanished since the check above.
    target = path if create or in_memory else f"file:{quote(path)}?mode=rw"
    with _translated("cannot open SQLite database"):
        raw_sqlite = sqlite3.connect(
            target,
            timeout=connect_timeout_s,
            isolation_level=None,
            check_same_thread=False,
            uri=not (create or in_memory),
        )
    return DbConnection(raw_sqlite, "sqlite")


def _password_of(conninfo: str) -> str | None:
    """The password a PostgreSQL DSN holds, to mask it in driver messages."""
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:
        return None
    return password if isinstance(password, str) else None
