"""Table streams with a source class of their own (pushers, caches, to-device...).

Streams kept in one table with the usual columns need no class: the registry builds
them from one :class:`~adapter.io.db.sources.table_source.TableQuery` each.
"""

from __future__ import annotations

from operator import itemgetter

from adapter.core.errors import BackfillError
from adapter.io.db.connection import DbConnection
from adapter.io.db.sources.pages import DEFAULT_WRITER, RowsPage, check_limit
from adapter.io.db.sources.positions import read_id_positions
from adapter.io.db.sources.row_builders import (
    cache_row,
    deleted_pusher_row,
    device_list_row,
    global_account_data_row,
    pusher_row,
    room_account_data_row,
    signature_row,
    tag_row,
)
from adapter.io.db.sources.table_source import (
    SqlStreamSource,
    TableQuery,
    writer_predicate,
)
from adapter.io.db.synapse_schema import ID_GENERATORS

__all__ = [
    "AccountDataSource",
    "CachesSource",
    "DeviceListsSource",
    "PushersSource",
    "ToDeviceSource",
]


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
                    build=pusher_row,
                    unique_tokens=True,
                ),
                TableQuery(
                    select="SELECT stream_id, user_id, app_id, pushkey FROM deleted_pushers",
                    id_column="stream_id",
                    build=deleted_pusher_row,
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
                    build=cache_row,
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
                    build=device_list_row,
                    tiebreak="user_id, device_id",
                ),
                TableQuery(
                    select="SELECT DISTINCT stream_id, user_id, TRUE FROM device_lists_outbound_pokes",
                    id_column="stream_id",
                    build=device_list_row,
                    tiebreak="user_id",
                ),
                TableQuery(
                    select="SELECT stream_id, from_user_id FROM user_signature_stream",
                    id_column="stream_id",
                    build=signature_row,
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
                    build=global_account_data_row,
                    tiebreak="user_id, account_data_type",
                ),
                TableQuery(
                    select="SELECT stream_id, user_id, room_id, account_data_type FROM room_account_data",
                    id_column="stream_id",
                    build=room_account_data_row,
                    tiebreak="user_id, room_id, account_data_type",
                ),
                TableQuery(
                    select="SELECT stream_id, user_id, room_id FROM room_tags_revisions",
                    id_column="stream_id",
                    build=tag_row,
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
            " AND " + writer_predicate("instance_name", default_writer=default_writer)
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
        check_limit(limit)
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
