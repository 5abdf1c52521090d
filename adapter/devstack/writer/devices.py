"""The device streams: ``device_lists`` (changes, pokes, signatures) and ``to_device``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adapter.devstack.writer.base import JSON, WriterBase, Written

__all__ = ["DeviceWrites"]


class DeviceWrites(WriterBase):
    """Writes of device list changes and to-device messages."""

    def add_device_list_change(self, user_id: str, device_id: str) -> Written:
        """Record that a local device changed (hosts not yet calculated).

        Returns:
            ``(token, [[user_id, False, False]])``.
        """
        token = self._next("device_lists")
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO device_lists_stream (stream_id, user_id, device_id, instance_name) VALUES (?, ?, ?, ?)",
                (token, user_id, device_id, self.instance_name),
            )
            self.advance_position("device_lists", token)
        return token, [[user_id, False, False]]

    def add_device_list_pokes(
        self, user_id: str, device_id: str, destinations: Sequence[str]
    ) -> Written:
        """Record the outbound pokes of a device change (hosts calculated).

        All destinations share one token and appear as one wire row.

        Returns:
            ``(token, [[user_id, False, True]])``.
        """
        token = self._next("device_lists")
        now = self._now_ms()
        with self.conn.transaction():
            self.conn.executemany(
                "INSERT INTO device_lists_outbound_pokes (destination, stream_id, user_id, device_id, sent, ts,"
                " instance_name) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (dest, token, user_id, device_id, False, now, self.instance_name)
                    for dest in destinations
                ],
            )
            self.advance_position("device_lists", token)
        return token, [[user_id, False, True]]

    def add_user_signature_change(
        self, from_user_id: str, user_ids: Sequence[str]
    ) -> Written:
        """Record that a user signed other users' keys.

        Returns:
            ``(token, [[from_user_id, True, False]])``.
        """
        token = self._next("device_lists")
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO user_signature_stream (stream_id, from_user_id, user_ids, instance_name)"
                " VALUES (?, ?, ?, ?)",
                (token, from_user_id, JSON.encode(list(user_ids)), self.instance_name),
            )
            self.advance_position("device_lists", token)
        return token, [[from_user_id, True, False]]

    def send_to_device(
        self,
        local: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
        remote: Sequence[tuple[str, Mapping[str, Any]]] = (),
    ) -> Written:
        """Queue to-device messages; all share one token, as in Synapse.

        Args:
            local: ``(user_id, device_id, message)`` for local inboxes.
            remote: ``(destination, messages)`` for federation outboxes.

        Returns:
            ``(token, [[entity], ...])``: each user and destination once, sorted.
        """
        token = self._next("to_device")
        now = self._now_ms()
        with self.conn.transaction():
            if local:
                self.conn.executemany(
                    "INSERT INTO device_inbox (user_id, device_id, stream_id, message_json, instance_name)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [
                        (u, d, token, JSON.encode(dict(m)), self.instance_name)
                        for u, d, m in local
                    ],
                )
            if remote:
                self.conn.executemany(
                    "INSERT INTO device_federation_outbox (destination, stream_id, queued_ts, messages_json,"
                    " instance_name) VALUES (?, ?, ?, ?, ?)",
                    [
                        (dest, token, now, JSON.encode(dict(m)), self.instance_name)
                        for dest, m in remote
                    ],
                )
            self.advance_position("to_device", token)
        entities = sorted({u for u, _, _ in local} | {dest for dest, _ in remote})
        return token, [[entity] for entity in entities]
