"""Synapse's database: connections, the backfill sources and a writer simulator.

The only package that imports a database driver (psycopg 3, sqlite3). See
:mod:`adapter.db.sources` for the backfill rules.
"""

from __future__ import annotations

from adapter.db.connection import DbConnection, Engine, connect
from adapter.db.sources import (
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
from adapter.db.synapse_schema import create_synapse_tables
from adapter.db.writer import SynapseWriter

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "LIVE_ONLY_STREAMS",
    "DbConnection",
    "Engine",
    "RowsPage",
    "SourceRegistry",
    "SqlStreamSource",
    "StreamSource",
    "SynapseWriter",
    "TableQuery",
    "TokenRow",
    "WireRow",
    "builtin_registry",
    "connect",
    "create_synapse_tables",
    "iter_pages",
    "iter_rows",
]
