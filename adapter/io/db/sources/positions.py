"""Each writer's persisted position of a stream, as Synapse keeps it."""

from __future__ import annotations

from adapter.io.db.connection import DbConnection
from adapter.io.db.sources.pages import DEFAULT_WRITER
from adapter.io.db.synapse_schema import IdGenerator

__all__ = [
    "read_id_positions",
]


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
