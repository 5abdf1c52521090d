"""The per-user streams: what one user does besides sending events.

Receipts, presence, push rules, pushers, account data and room tags, thread
subscriptions, profile updates and typing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from adapter.devstack.writer.base import JSON, WriterBase, Written

__all__ = ["UserWrites"]

# A pusher is replaced or deleted by its (app_id, pushkey, user).
_DELETE_PUSHER = (
    "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_name = ?"
)


class UserWrites(WriterBase):
    """Writes of what one user does besides sending events."""

    def send_receipt(
        self,
        room_id: str,
        receipt_type: str,
        user_id: str,
        event_id: str,
        *,
        thread_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Written:
        """Replace a user's receipt (one row per room, type, user and thread).

        Returns:
            ``(token, [[room_id, receipt_type, user_id, event_id, thread_id, data]])``.
        """
        body = dict(data) if data is not None else {"ts": self._now_ms()}
        token = self._next("receipts")
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM receipts_linearized WHERE room_id = ? AND receipt_type = ? AND user_id = ?"  # noqa: S608
                f" AND thread_id {self._null_safe_eq} ?",
                (room_id, receipt_type, user_id, thread_id),
            )
            self.conn.execute(
                "INSERT INTO receipts_linearized (stream_id, room_id, receipt_type, user_id, event_id,"
                " thread_id, data, instance_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token,
                    room_id,
                    receipt_type,
                    user_id,
                    event_id,
                    thread_id,
                    JSON.encode(body),
                    self.instance_name,
                ),
            )
            self.advance_position("receipts", token)
        return token, [[room_id, receipt_type, user_id, event_id, thread_id, body]]

    def set_presence(
        self,
        user_id: str,
        state: str,
        *,
        last_active_ts: int = 0,
        last_federation_update_ts: int = 0,
        last_user_sync_ts: int = 0,
        status_msg: str | None = None,
        currently_active: bool = False,
    ) -> Written:
        """Record a presence change; older rows of the user are deleted, as in Synapse.

        Returns:
            ``(token, [[user_id, state, last_active_ts, last_federation_update_ts,
            last_user_sync_ts, status_msg, currently_active]])``.
        """
        token = self._next("presence")
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM presence_stream WHERE user_id = ? AND stream_id < ?",
                (user_id, token),
            )
            self.conn.execute(
                "INSERT INTO presence_stream (stream_id, user_id, state, last_active_ts,"
                " last_federation_update_ts, last_user_sync_ts, status_msg, currently_active, instance_name)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token,
                    user_id,
                    state,
                    last_active_ts,
                    last_federation_update_ts,
                    last_user_sync_ts,
                    status_msg,
                    currently_active,
                    self.instance_name,
                ),
            )
            self.advance_position("presence", token)
        row = [
            user_id,
            state,
            last_active_ts,
            last_federation_update_ts,
            last_user_sync_ts,
            status_msg,
            currently_active,
        ]
        return token, [row]

    def push_rule_change(
        self,
        user_id: str,
        rule_id: str,
        *,
        op: str = "ADD",
        event_stream_ordering: int = 0,
    ) -> Written:
        """Record a push rule change.

        Returns:
            ``(token, [[user_id]])``.
        """
        token = self._next("push_rules")
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO push_rules_stream (stream_id, event_stream_ordering, user_id, rule_id, op,"
                " instance_name) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token,
                    event_stream_ordering,
                    user_id,
                    rule_id,
                    op,
                    self.instance_name,
                ),
            )
            self.advance_position("push_rules", token)
        return token, [[user_id]]

    def add_pusher(
        self, user_id: str, app_id: str, pushkey: str, *, kind: str = "http"
    ) -> Written:
        """Add (or replace) a pusher; its ``id`` is the token.

        Returns:
            ``(token, [[user_id, app_id, pushkey, False]])``.
        """
        token = self._next("pushers")
        with self.conn.transaction():
            self.conn.execute(_DELETE_PUSHER, (app_id, pushkey, user_id))
            self.conn.execute(
                "INSERT INTO pushers (id, user_name, profile_tag, kind, app_id, app_display_name,"
                " device_display_name, pushkey, ts, instance_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token,
                    user_id,
                    "",
                    kind,
                    app_id,
                    app_id,
                    "device",
                    pushkey,
                    self._now_ms(),
                    self.instance_name,
                ),
            )
            self.advance_position("pushers", token)
        return token, [[user_id, app_id, pushkey, False]]

    def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> Written:
        """Delete a pusher (``deleted_pushers``).

        Returns:
            ``(token, [[user_id, app_id, pushkey, True]])``.
        """
        token = self._next("pushers")
        with self.conn.transaction():
            self.conn.execute(_DELETE_PUSHER, (app_id, pushkey, user_id))
            self.conn.execute(
                "INSERT INTO deleted_pushers (stream_id, app_id, pushkey, user_id, instance_name)"
                " VALUES (?, ?, ?, ?, ?)",
                (token, app_id, pushkey, user_id, self.instance_name),
            )
            self.advance_position("pushers", token)
        return token, [[user_id, app_id, pushkey, True]]

    def set_account_data(
        self,
        user_id: str,
        data_type: str,
        content: Mapping[str, Any],
        *,
        room_id: str | None = None,
    ) -> Written:
        """Set global (``room_id`` None) or room account data; replaces the old value.

        Returns:
            ``(token, [[user_id, room_id, data_type]])``.
        """
        token = self._next("account_data")
        body = JSON.encode(dict(content))
        with self.conn.transaction():
            if room_id is None:
                self.conn.execute(
                    "DELETE FROM account_data WHERE user_id = ? AND account_data_type = ?",
                    (user_id, data_type),
                )
                self.conn.execute(
                    "INSERT INTO account_data (user_id, account_data_type, stream_id, content, instance_name)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (user_id, data_type, token, body, self.instance_name),
                )
            else:
                self.conn.execute(
                    "DELETE FROM room_account_data WHERE user_id = ? AND room_id = ? AND account_data_type = ?",
                    (user_id, room_id, data_type),
                )
                self.conn.execute(
                    "INSERT INTO room_account_data (user_id, room_id, account_data_type, stream_id, content,"
                    " instance_name) VALUES (?, ?, ?, ?, ?, ?)",
                    (user_id, room_id, data_type, token, body, self.instance_name),
                )
            self.advance_position("account_data", token)
        return token, [[user_id, room_id, data_type]]

    def add_room_tag(
        self,
        user_id: str,
        room_id: str,
        tag: str,
        content: Mapping[str, Any] | None = None,
    ) -> Written:
        """Tag a room for a user (``room_tags`` plus a ``room_tags_revisions`` bump).

        Returns:
            ``(token, [[user_id, room_id, "m.tag"]])``.
        """
        token = self._next("account_data")
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM room_tags WHERE user_id = ? AND room_id = ? AND tag = ?",
                (user_id, room_id, tag),
            )
            self.conn.execute(
                "INSERT INTO room_tags (user_id, room_id, tag, content) VALUES (?, ?, ?, ?)",
                (user_id, room_id, tag, JSON.encode(dict(content or {}))),
            )
            self.conn.execute(
                "DELETE FROM room_tags_revisions WHERE user_id = ? AND room_id = ?",
                (user_id, room_id),
            )
            self.conn.execute(
                "INSERT INTO room_tags_revisions (user_id, room_id, stream_id, instance_name) VALUES (?, ?, ?, ?)",
                (user_id, room_id, token, self.instance_name),
            )
            self.advance_position("account_data", token)
        return token, [[user_id, room_id, "m.tag"]]

    def subscribe_thread(
        self,
        user_id: str,
        room_id: str,
        thread_root_id: str,
        *,
        subscribed: bool = True,
        automatic: bool = False,
    ) -> Written:
        """Change a thread subscription (MSC4306); replaces the previous row.

        Returns:
            ``(token, [[user_id, room_id, thread_root_id]])``.
        """
        token = self._next("thread_subscriptions")
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM thread_subscriptions WHERE user_id = ? AND room_id = ? AND event_id = ?",
                (user_id, room_id, thread_root_id),
            )
            self.conn.execute(
                "INSERT INTO thread_subscriptions (stream_id, instance_name, room_id, event_id, user_id,"
                " subscribed, automatic) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token,
                    self.instance_name,
                    room_id,
                    thread_root_id,
                    user_id,
                    subscribed,
                    automatic,
                ),
            )
            self.advance_position("thread_subscriptions", token)
        return token, [[user_id, room_id, thread_root_id]]

    def update_profile(
        self,
        user_id: str,
        action: str = "update",
        affected_fields: Sequence[str] | None = ("displayname",),
    ) -> Written:
        """Record a profile change (``update``) or a room join/leave of a user.

        Args:
            user_id: the user.
            action: ``update``, ``joined_room`` or ``left_room``.
            affected_fields: the changed profile fields; Synapse stores None unless
                ``action`` is ``update``.

        Returns:
            ``(token, [[user_id, action, affected_fields]])``.
        """
        fields = None if affected_fields is None else list(affected_fields)
        token = self._next("profile_updates")
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO profile_updates (stream_id, instance_name, user_id, action,"
                " affected_fields, inserted_ts) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token,
                    self.instance_name,
                    user_id,
                    action,
                    None if fields is None else json.dumps(fields),
                    int(time.time() * 1000),
                ),
            )
            self.advance_position("profile_updates", token)
        return token, [[user_id, action, fields]]

    def set_typing(self, room_id: str, user_ids: Sequence[str]) -> Written:
        """Set the typing users of a room (in memory: ``typing`` has no table).

        The serial starts at 0 for every writer object, like Synapse's typing writer
        after a restart.

        Returns:
            ``(serial, [[room_id, sorted_user_ids]])``.
        """
        self._typing_serial += 1
        users = sorted(user_ids)
        self._typing[room_id] = users
        return self._typing_serial, [[room_id, users]]
