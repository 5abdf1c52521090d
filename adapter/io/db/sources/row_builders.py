"""Result tuples -> rows: the wire rows of every table stream, typed rows for events.

Each builder takes one result tuple whose column 0 is the token (not part of the row),
or, for the bulk builders, a whole page of them.
"""

from __future__ import annotations

import json
from typing import Any

from adapter.core.rows import EventsCurrentStateRow, EventsEventRow
from adapter.io.db.sources.pages import Raw, TokenRow, TypedGroup, WireRow, group_typed

__all__ = [
    "backfill_row",
    "cache_row",
    "columns_row",
    "deleted_pusher_row",
    "device_list_row",
    "ev_groups",
    "ev_row",
    "ev_rows",
    "global_account_data_row",
    "presence_row",
    "profile_update_row",
    "pusher_row",
    "receipt_row",
    "room_account_data_row",
    "signature_row",
    "state_groups",
    "state_row",
    "tag_row",
    "with_bool_last",
]


def ev_rows(raw: Raw) -> list[TokenRow]:
    """``(token, ["ev", [...]])`` pairs for a page of event rows (the wire fast path)."""
    # The hot path of a large backfill: one comprehension, no per-row call.
    return [
        (
            r[0],
            ["ev", [r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9])]],
        )
        for r in raw
    ]


_new_tuple = tuple.__new__


def ev_groups(raw: Raw) -> list[TypedGroup]:
    """Typed ``EventsEventRow`` groups, one per token, for a page of event rows."""
    # The hottest path of a large backfill: one typed row per unique token, built in
    # one C call each (bool() turns SQLite's 0/1 into what PostgreSQL returns).
    ev = EventsEventRow
    return [
        (
            r[0],
            (
                _new_tuple(
                    ev,
                    (r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9])),
                ),
            ),
        )
        for r in raw
    ]


def state_groups(raw: Raw) -> list[TypedGroup]:
    """Typed ``EventsCurrentStateRow`` groups for a page of current-state deltas."""
    state = EventsCurrentStateRow
    return group_typed([(r[0], _new_tuple(state, r[1:5])) for r in raw])


def ev_row(r: tuple[Any, ...]) -> WireRow:
    """``["ev", [event_id, room_id, type, state_key, redacts, relates_to, ...]]``.

    After ``relates_to``: ``membership, rejected, outlier``.
    """
    return ["ev", [r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9])]]


def state_row(r: tuple[Any, ...]) -> WireRow:
    """``["state", [room_id, type, state_key, event_id]]``."""
    return ["state", [r[1], r[2], r[3], r[4]]]


def backfill_row(r: tuple[Any, ...]) -> WireRow:
    """``[event_id, room_id, type, state_key, redacts, relates_to]``."""
    return [r[1], r[2], r[3], r[4], r[5], r[6]]


def receipt_row(r: tuple[Any, ...]) -> WireRow:
    """``[room_id, receipt_type, user_id, event_id, thread_id, data]`` (data parsed)."""
    return [r[1], r[2], r[3], r[4], r[5], json.loads(r[6])]


def presence_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, state, last_active_ts, ..., status_msg, currently_active]``.

    Between them: ``last_federation_update_ts, last_user_sync_ts``.
    """
    return [r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7])]


def pusher_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, app_id, pushkey, False]`` for a live pusher."""
    return [r[1], r[2], r[3], False]


def deleted_pusher_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, app_id, pushkey, True]`` for a deleted pusher."""
    return [r[1], r[2], r[3], True]


def cache_row(r: tuple[Any, ...]) -> WireRow:
    """``[cache_func, keys or None, invalidation_ts]``."""
    keys = r[2]
    return [r[1], None if keys is None else list(keys), r[3]]


def device_list_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, False, hosts_calculated]`` for a device change."""
    return [r[1], False, bool(r[2])]


def signature_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, True, False]`` for a cross-signing signature."""
    return [r[1], True, False]


def global_account_data_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, None, data_type]`` for global account data."""
    return [r[1], None, r[2]]


def room_account_data_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, room_id, data_type]`` for room account data."""
    return [r[1], r[2], r[3]]


def tag_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, room_id, "m.tag"]`` for a room tag revision."""
    return [r[1], r[2], "m.tag"]


def profile_update_row(r: tuple[Any, ...]) -> WireRow:
    """``[user_id, action, affected_fields]``, the fields parsed from JSON text if need be."""
    # JSONB arrives parsed from PostgreSQL, as JSON text from SQLite.
    fields = r[3]
    if isinstance(fields, str):
        fields = json.loads(fields)
    return [r[1], r[2], fields]


def columns_row(r: tuple[Any, ...]) -> WireRow:
    """The columns after the token, as they are."""
    return list(r[1:])


def with_bool_last(r: tuple[Any, ...]) -> WireRow:
    """The columns after the token, the last one as a bool (SQLite's 0/1)."""
    return [*r[1:-1], bool(r[-1])]
