"""Synapse's database: connections and the backfill sources.

The only package that imports a database driver (psycopg 3, sqlite3). See
:mod:`adapter.io.db.sources` for the backfill rules. The writer simulator,
:mod:`adapter.devstack.writer`, is part of the dev stack and is imported from there only,
so a production process never loads it.
"""

from __future__ import annotations

from adapter.io.db.connection import DbConnection, Engine, connect
from adapter.io.db.sources import (
    DEFAULT_PAGE_SIZE,
    LIVE_ONLY_STREAMS,
    RowsPage,
    SourceRegistry,
    SqlStreamSource,
    StreamSource,
    TableQuery,
    TokenRow,
    WireRow,
    builtin_registry,
    iter_pages,
    iter_rows,
)
from adapter.io.db.synapse_schema import create_synapse_tables

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "LIVE_ONLY_STREAMS",
    "DbConnection",
    "Engine",
    "RowsPage",
    "SourceRegistry",
    "SqlStreamSource",
    "StreamSource",
    "TableQuery",
    "TokenRow",
    "WireRow",
    "builtin_registry",
    "connect",
    "create_synapse_tables",
    "iter_pages",
    "iter_rows",
]
