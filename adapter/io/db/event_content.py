"""Read events with their content from Synapse's database, for the event feed.

One query per batch of event IDs joins ``events`` (who, when, where on the stream,
which persister), ``event_json`` (the event as stored), ``rejections`` and
``redactions``. PostgreSQL and SQLite take the same SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from adapter.core.feed import FeedEvent
from adapter.io.db.connection import DbConnection

__all__ = ["MAX_IDS_PER_QUERY", "read_feed_events"]

#: Event IDs per query: well under SQLite's 999 bound parameters, and a batch the
#: planner still serves from the event_id indexes.
MAX_IDS_PER_QUERY: Final = 500

_QUERY: Final = """
SELECT e.event_id, e.room_id, e.type, e.state_key, e.sender, e.origin_server_ts,
       e.stream_ordering, e.instance_name, e.outlier, r.reason, red.redacts,
       j.format_version, j.json
FROM events AS e
JOIN event_json AS j ON j.event_id = e.event_id
LEFT JOIN rejections AS r ON r.event_id = e.event_id
LEFT JOIN redactions AS red ON red.event_id = e.event_id
WHERE e.event_id IN ({marks})
"""


def read_feed_events(
    db: DbConnection, event_ids: Sequence[str]
) -> dict[str, FeedEvent]:
    """The stored form of each of ``event_ids`` that the database still has.

    An ID missing from the answer has no row in ``events`` or no ``event_json``
    (a purged room or history); the caller decides what that means.

    Raises:
        BackfillError: the query failed (``retriable`` for an outage).
    """
    found: dict[str, FeedEvent] = {}
    unique = list(dict.fromkeys(event_ids))
    for start in range(0, len(unique), MAX_IDS_PER_QUERY):
        chunk = unique[start : start + MAX_IDS_PER_QUERY]
        sql = _QUERY.format(marks=", ".join("?" * len(chunk)))
        for row in db.fetchall(sql, chunk):
            event = _feed_event(row)
            found[event.event_id] = event
    return found


def _feed_event(row: tuple[Any, ...]) -> FeedEvent:
    (
        event_id, room_id, type_, state_key, sender, origin_server_ts,
        stream_ordering, instance_name, outlier, reason, redacts,
        format_version, json_text,
    ) = row  # fmt: skip
    return FeedEvent(
        event_id=str(event_id),
        room_id=str(room_id),
        type=str(type_),
        state_key=None if state_key is None else str(state_key),
        sender=str(sender or ""),
        origin_server_ts=int(origin_server_ts or 0),
        stream_ordering=int(stream_ordering or 0),
        instance_name=None if instance_name is None else str(instance_name),
        outlier=bool(outlier),
        rejected=reason is not None,
        rejection_reason=None if reason is None else str(reason),
        redacts=None if redacts is None else str(redacts),
        format_version=None if format_version is None else int(format_version),
        # PostgreSQL's driver returns TEXT as str; a bytes value (a BLOB in a
        # hand-made SQLite copy) is decoded the way Synapse writes it.
        json=json_text.decode() if isinstance(json_text, bytes) else str(json_text),
    )
