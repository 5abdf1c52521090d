"""The ``events`` and ``backfill`` streams: events, state, outliers, stickiness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adapter.core.errors import ConfigError
from adapter.devstack.writer.base import DEFAULT_SENDER, JSON, WriterBase, Written
from adapter.io.db.sources import WireRow

__all__ = ["EventWrites", "event_json"]


class EventWrites(WriterBase):
    """Writes of single events and of room state (``events``, ``backfill``, ``sticky_events``)."""

    def send_event(
        self,
        room_id: str,
        event_type: str,
        *,
        sender: str = DEFAULT_SENDER,
        state_key: str | None = None,
        content: Mapping[str, Any] | None = None,
        redacts: str | None = None,
        relates_to: str | None = None,
        relation_type: str = "m.thread",
        membership: str | None = None,
        rejected: bool = False,
        outlier: bool = False,
        event_id: str | None = None,
        update_current_state: bool = True,
    ) -> Written:
        """Persist a new event on the ``events`` stream.

        A state event that is neither an outlier nor rejected also updates the room's
        current state, which adds a ``state`` row at the same token. For
        ``m.room.member`` events ``membership`` defaults to ``content["membership"]``.

        Returns:
            ``(token, [["ev", [...]], maybe ["state", [...]]])``.
        """
        token = self._next("events")
        eid = event_id or f"$ev{token}-{self.instance_name}"
        if event_type == "m.room.member" and membership is None and content is not None:
            membership = content.get("membership")
        if event_type != "m.room.member" or state_key is None:
            membership = None
        with self.conn.transaction():
            self._insert_event(
                eid,
                room_id,
                event_type,
                stream_ordering=token,
                sender=sender,
                state_key=state_key,
                content=content,
                redacts=redacts,
                relates_to=relates_to,
                relation_type=relation_type,
                membership=membership,
                rejected=rejected,
                outlier=outlier,
            )
            rows: list[WireRow] = [
                [
                    "ev",
                    [
                        eid,
                        room_id,
                        event_type,
                        state_key,
                        redacts,
                        relates_to,
                        membership,
                        rejected,
                        outlier,
                    ],
                ]
            ]
            if (
                state_key is not None
                and update_current_state
                and not outlier
                and not rejected
            ):
                self._insert_state_delta(token, room_id, event_type, state_key, eid)
                rows.append(["state", [room_id, event_type, state_key, eid]])
            self.advance_position("events", token)
        return token, rows

    def set_state(
        self, room_id: str, changes: Sequence[tuple[str, str, str | None]]
    ) -> Written:
        """Change a room's current state without a new event (one token for all).

        Args:
            room_id: the room.
            changes: ``(type, state_key, event_id)``; ``event_id`` None removes the key.

        Returns:
            ``(token, [["state", [room_id, type, state_key, event_id]], ...])`` sorted
            by ``(type, state_key)``.
        """
        token = self._next("events")
        ordered = sorted(changes, key=lambda c: (c[0], c[1]))
        with self.conn.transaction():
            for event_type, state_key, event_id in ordered:
                self._insert_state_delta(
                    token, room_id, event_type, state_key, event_id
                )
            self.advance_position("events", token)
        return token, [["state", [room_id, t, k, e]] for t, k, e in ordered]

    def de_outlier(self, event_id: str) -> Written:
        """Turn an outlier into a normal event (``ex_outlier_stream``).

        Returns:
            ``(token, [["ev", [..., outlier=False]]])`` at a new events token.
        """
        token = self._next("events")
        with self.conn.transaction():
            found = self.conn.fetchone(
                "SELECT e.event_id, e.room_id, e.type, se.state_key, r.redacts, rel.relates_to_id,"
                " m.membership, rej.reason IS NOT NULL FROM events AS e"
                " LEFT JOIN redactions AS r ON r.event_id = e.event_id"
                " LEFT JOIN state_events AS se ON se.event_id = e.event_id"
                " LEFT JOIN event_relations AS rel ON rel.event_id = e.event_id"
                " LEFT JOIN room_memberships AS m ON m.event_id = e.event_id"
                " LEFT JOIN rejections AS rej ON rej.event_id = e.event_id"
                " WHERE e.event_id = ?",
                (event_id,),
            )
            if found is None:
                raise ConfigError(f"no event {event_id!r} to de-outlier")
            self.conn.execute(
                "UPDATE events SET outlier = FALSE WHERE event_id = ?", (event_id,)
            )
            self.conn.execute(
                "INSERT INTO ex_outlier_stream (event_stream_ordering, event_id, state_group, instance_name)"
                " VALUES (?, ?, ?, ?)",
                (token, event_id, 0, self.instance_name),
            )
            self.advance_position("events", token)
        return token, [["ev", [*found[:7], bool(found[7]), False]]]

    def backfill_event(
        self,
        room_id: str,
        event_type: str,
        *,
        sender: str = DEFAULT_SENDER,
        state_key: str | None = None,
        content: Mapping[str, Any] | None = None,
        redacts: str | None = None,
        relates_to: str | None = None,
        event_id: str | None = None,
    ) -> Written:
        """Persist a backfilled (historical) event: negative ``stream_ordering``.

        Returns:
            ``(token, [[event_id, room_id, type, state_key, redacts, relates_to]])``
            with the positive wire token.
        """
        token = self._next("backfill")
        eid = event_id or f"$bf{token}-{self.instance_name}"
        with self.conn.transaction():
            self._insert_event(
                eid,
                room_id,
                event_type,
                stream_ordering=-token,
                sender=sender,
                state_key=state_key,
                content=content,
                redacts=redacts,
                relates_to=relates_to,
                relation_type="m.thread",
                membership=None,
                rejected=False,
                outlier=False,
            )
            self.advance_position("backfill", token)
        return token, [[eid, room_id, event_type, state_key, redacts, relates_to]]

    def mark_sticky(self, event_id: str, *, expires_at: int | None = None) -> Written:
        """Make an existing event sticky (MSC4354).

        Returns:
            ``(token, [[room_id, event_id]])``.

        Raises:
            ConfigError: the event does not exist.
        """
        found = self.conn.fetchone(
            "SELECT room_id, sender, stream_ordering FROM events WHERE event_id = ?",
            (event_id,),
        )
        if found is None:
            raise ConfigError(f"no event {event_id!r} to make sticky")
        room_id, sender, stream_ordering = found
        token = self._next("sticky_events")
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO sticky_events (stream_id, instance_name, event_id, room_id, event_stream_ordering,"
                " sender, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token,
                    self.instance_name,
                    event_id,
                    room_id,
                    stream_ordering,
                    sender or DEFAULT_SENDER,
                    expires_at
                    if expires_at is not None
                    else self._now_ms() + 3_600_000,
                ),
            )
            self.advance_position("sticky_events", token)
        return token, [[room_id, event_id]]

    def _insert_event(
        self,
        event_id: str,
        room_id: str,
        event_type: str,
        *,
        stream_ordering: int,
        sender: str,
        state_key: str | None,
        content: Mapping[str, Any] | None,
        redacts: str | None,
        relates_to: str | None,
        relation_type: str,
        membership: str | None,
        rejected: bool,
        outlier: bool,
    ) -> None:
        now = self._now_ms()
        depth = abs(stream_ordering)
        body = dict(content or {})
        self.conn.execute(
            "INSERT INTO events (topological_ordering, event_id, type, room_id, processed, outlier, depth,"
            " origin_server_ts, received_ts, sender, contains_url, instance_name, stream_ordering,"
            " state_key, rejection_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                depth,
                event_id,
                event_type,
                room_id,
                True,
                outlier,
                depth,
                now,
                now,
                sender,
                False,
                self.instance_name,
                stream_ordering,
                state_key,
                "auth_error" if rejected else None,
            ),
        )
        self.conn.execute(
            "INSERT INTO event_json (event_id, room_id, internal_metadata, json, format_version)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                event_id,
                room_id,
                JSON.encode({"outlier": True} if outlier else {}),
                event_json(event_id, room_id, event_type, sender, state_key, body, now),
                3,
            ),
        )
        if state_key is not None:
            self.conn.execute(
                "INSERT INTO state_events (event_id, room_id, type, state_key) VALUES (?, ?, ?, ?)",
                (event_id, room_id, event_type, state_key),
            )
        if redacts is not None:
            self.conn.execute(
                "INSERT INTO redactions (event_id, redacts, received_ts) VALUES (?, ?, ?)",
                (event_id, redacts, now),
            )
        if relates_to is not None:
            self.conn.execute(
                "INSERT INTO event_relations (event_id, relates_to_id, relation_type) VALUES (?, ?, ?)",
                (event_id, relates_to, relation_type),
            )
        if membership is not None:
            self.conn.execute(
                "INSERT INTO room_memberships (event_id, user_id, sender, room_id, membership)"
                " VALUES (?, ?, ?, ?, ?)",
                (event_id, state_key, sender, room_id, membership),
            )
        if rejected:
            self.conn.execute(
                "INSERT INTO rejections (event_id, reason, last_check) VALUES (?, ?, ?)",
                (event_id, "auth_error", str(now)),
            )

    def _insert_state_delta(
        self,
        token: int,
        room_id: str,
        event_type: str,
        state_key: str,
        event_id: str | None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO current_state_delta_stream (stream_id, room_id, type, state_key, event_id,"
            " instance_name) VALUES (?, ?, ?, ?, ?, ?)",
            (token, room_id, event_type, state_key, event_id, self.instance_name),
        )


def event_json(
    event_id: str,
    room_id: str,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    ts: int,
) -> str:
    """One event as the ``event_json.json`` column holds it (the fields readers use)."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "room_id": room_id,
        "type": event_type,
        "sender": sender,
        "content": dict(content),
        "origin_server_ts": ts,
    }
    if state_key is not None:
        event["state_key"] = state_key
    return JSON.encode(event)
