"""The ``events`` and ``backfill`` streams: their queries and sources."""

from __future__ import annotations

import heapq
from operator import itemgetter

from adapter.core.rows import EventsAllStateRow, EventsCurrentStateRow, Row
from adapter.io.db.connection import DbConnection
from adapter.io.db.sources.pages import (
    RowsPage,
    TokenRow,
    TypedGroup,
    group_typed,
    merge_groups,
)
from adapter.io.db.sources.row_builders import (
    backfill_row,
    ev_groups,
    ev_row,
    ev_rows,
    state_groups,
    state_row,
)
from adapter.io.db.sources.table_source import SqlStreamSource, TableQuery
from adapter.io.db.synapse_schema import ID_GENERATORS

__all__ = [
    "NEW_EVENTS",
    "STATE_ALL_THRESHOLD",
    "BackfillSource",
    "EventsSource",
]


STATE_ALL_THRESHOLD = 150
"""State rows of one room in one page at which they collapse to ``state-all``."""


# The event columns every "ev" row needs, with the joins of Synapse's query.
_EVENT_JOINS = """
    LEFT JOIN redactions AS r ON r.event_id = e.event_id
    LEFT JOIN state_events AS se ON se.event_id = e.event_id
    LEFT JOIN event_relations AS rel ON rel.event_id = e.event_id"""
_EV_COLUMNS = (
    "e.event_id, e.room_id, e.type, se.state_key, r.redacts, rel.relates_to_id"
)
_EV_FULL_COLUMNS = _EV_COLUMNS + ", m.membership, rej.reason IS NOT NULL, e.outlier"
_EV_FULL_JOINS = (
    _EVENT_JOINS
    + """
    LEFT JOIN room_memberships AS m ON m.event_id = e.event_id
    LEFT JOIN rejections AS rej ON rej.event_id = e.event_id"""
)


NEW_EVENTS = TableQuery(
    select=f"SELECT e.stream_ordering, {_EV_FULL_COLUMNS} FROM {{base}}{_EV_FULL_JOINS}",  # noqa: S608
    base="events AS e",
    id_column="e.stream_ordering",
    instance_column="e.instance_name",
    build=ev_row,
    build_many=ev_rows,
    build_groups=ev_groups,
    unique_tokens=True,
)
_STATE_DELTAS = TableQuery(
    select="SELECT stream_id, room_id, type, state_key, event_id FROM current_state_delta_stream",
    id_column="stream_id",
    build=state_row,
    build_groups=state_groups,
    tiebreak="room_id, type, state_key",
)
_EX_OUTLIERS = TableQuery(
    select=(
        f"SELECT o.event_stream_ordering, {_EV_FULL_COLUMNS} FROM ex_outlier_stream AS o"  # noqa: S608
        f" INNER JOIN events AS e ON e.event_id = o.event_id{_EV_FULL_JOINS}"
    ),
    id_column="o.event_stream_ordering",
    instance_column="o.instance_name",
    build=ev_row,
    build_many=ev_rows,
    build_groups=ev_groups,
    unique_tokens=True,
)
_BACKFILL_EVENTS = TableQuery(
    select=f"SELECT -e.stream_ordering, {_EV_COLUMNS} FROM {{base}}{_EVENT_JOINS}",  # noqa: S608
    base="events AS e",
    id_column="e.stream_ordering",
    instance_column="e.instance_name",
    build=backfill_row,
    unique_tokens=True,
    negative=True,
)
_BACKFILL_EX_OUTLIERS = TableQuery(
    select=(
        f"SELECT -o.event_stream_ordering, {_EV_COLUMNS} FROM ex_outlier_stream AS o"  # noqa: S608
        f" INNER JOIN events AS e ON e.event_id = o.event_id{_EVENT_JOINS}"
    ),
    id_column="o.event_stream_ordering",
    instance_column="o.instance_name",
    build=backfill_row,
    unique_tokens=True,
    negative=True,
)


class EventsSource(SqlStreamSource):
    """The ``events`` stream: new events, current-state deltas and ex-outliers.

    Wire rows: ``["ev", [event_id, room_id, type, state_key, redacts, relates_to,
    membership, rejected, outlier]]``, ``["state", [room_id, type, state_key,
    event_id]]`` and ``["state-all", [room_id]]``. Rows of one token come as: events,
    then state, then ex-outliers.

    Args:
        state_all_threshold: state rows of one room in one page at which they become a
            single ``state-all`` row (Synapse: 150); ``None`` keeps them all.
        per_writer: see :class:`SqlStreamSource`.
    """

    def __init__(
        self,
        *,
        state_all_threshold: int | None = STATE_ALL_THRESHOLD,
        per_writer: bool = True,
    ) -> None:
        super().__init__(
            "events",
            (NEW_EVENTS, _STATE_DELTAS, _EX_OUTLIERS),
            ID_GENERATORS["events"],
            per_writer=per_writer,
        )
        self.state_all_threshold = state_all_threshold

    def read_rows(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> RowsPage:
        """Return ``writer``'s events-stream rows in ``(from_token, to_token]``."""
        # Negative stream orderings belong to the backfill stream.
        return super().read_rows(conn, writer, max(from_token, 0), to_token, limit)

    def _post_process(
        self, rows: list[TokenRow], parts: list[list[TokenRow]]
    ) -> list[TokenRow]:
        threshold = self.state_all_threshold
        # parts[1] holds the current-state rows of this page.
        if threshold is None or len(parts[1]) < threshold:
            return rows
        per_room: dict[str, int] = {}
        for _, row in rows:
            if row[0] == "state":
                per_room[row[1][0]] = per_room.get(row[1][0], 0) + 1
        busy = {room for room, count in per_room.items() if count >= threshold}
        if not busy:
            return rows
        # Mirrors Synapse's _MAX_STATE_UPDATES_PER_ROOM: one state-all row per busy
        # room, at the highest token of its state rows.
        top: dict[str, int] = {}
        kept: list[TokenRow] = []
        for token, row in rows:
            if row[0] == "state" and row[1][0] in busy:
                top[row[1][0]] = max(top.get(row[1][0], token), token)
            else:
                kept.append((token, row))
        collapsed = [
            (token, ["state-all", [room]]) for room, token in sorted(top.items())
        ]
        return list(
            heapq.merge(kept, sorted(collapsed, key=itemgetter(0)), key=itemgetter(0))
        )

    def _post_process_groups(
        self, groups: list[TypedGroup], parts: list[list[TypedGroup]]
    ) -> list[TypedGroup]:
        # The typed twin of _post_process: same rooms, same tokens, same order.
        threshold = self.state_all_threshold
        if threshold is None or sum(len(g[1]) for g in parts[1]) < threshold:
            return groups
        per_room: dict[str, int] = {}
        for _, rows in parts[1]:
            for row in rows:
                if type(row) is EventsCurrentStateRow:
                    per_room[row.room_id] = per_room.get(row.room_id, 0) + 1
        busy = {room for room, count in per_room.items() if count >= threshold}
        if not busy:
            return groups
        top: dict[str, int] = {}
        kept: list[TypedGroup] = []
        for token, rows in groups:
            rest: list[Row] = []
            for row in rows:
                if type(row) is EventsCurrentStateRow and row.room_id in busy:
                    top[row.room_id] = max(top.get(row.room_id, token), token)
                else:
                    rest.append(row)
            if rest:
                kept.append((token, tuple(rest)))
        collapsed = group_typed(
            sorted(
                ((token, EventsAllStateRow(room)) for room, token in top.items()),
                key=itemgetter(0),
            )
        )
        return merge_groups([kept, collapsed])


class BackfillSource(SqlStreamSource):
    """The ``backfill`` stream: backfilled events (negative ``stream_ordering``).

    Wire rows: ``[event_id, room_id, type, state_key, redacts, relates_to]`` with the
    positive wire token ``-stream_ordering``, ascending (Synapse returns them
    descending; see the module docstring).
    """

    def __init__(self, *, per_writer: bool = True) -> None:
        super().__init__(
            "backfill",
            (_BACKFILL_EVENTS, _BACKFILL_EX_OUTLIERS),
            ID_GENERATORS["backfill"],
            per_writer=per_writer,
        )

    def read_rows(
        self,
        conn: DbConnection,
        writer: str,
        from_token: int,
        to_token: int,
        limit: int,
    ) -> RowsPage:
        """Return ``writer``'s backfill rows in ``(from_token, to_token]`` (wire tokens)."""
        return super().read_rows(conn, writer, max(from_token, 0), to_token, limit)
