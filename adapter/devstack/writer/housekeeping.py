"""The server's own streams: cache invalidations, partial-state resyncs, quarantined media."""

from __future__ import annotations

from collections.abc import Sequence

from adapter.devstack.writer.base import WriterBase, Written

__all__ = ["HousekeepingWrites"]


class HousekeepingWrites(WriterBase):
    """Writes no user causes directly: caches, faster-join resyncs, media quarantine."""

    def invalidate_cache(self, cache_func: str, keys: Sequence[str] | None) -> Written:
        """Record a cache invalidation (PostgreSQL only; never in ``stream_positions``).

        Args:
            cache_func: the cache name, or a special value such as ``cs_cache_fake``.
            keys: the keys, or ``None`` to invalidate the whole cache.

        Returns:
            ``(token, [[cache_func, keys, invalidation_ts]])``.

        Raises:
            ConfigError: the database is SQLite.
        """
        token = self._next("caches")
        ts = self._now_ms()
        key_list = None if keys is None else list(keys)
        self.conn.execute(
            "INSERT INTO cache_invalidation_stream_by_instance (stream_id, instance_name, cache_func,"
            " keys, invalidation_ts) VALUES (?, ?, ?, ?, ?)",
            (token, self.instance_name, cache_func, key_list, ts),
        )
        return token, [[cache_func, key_list, ts]]

    def un_partial_state_room(self, room_id: str) -> Written:
        """Record that a room finished its faster-join resync.

        Returns:
            ``(token, [[room_id]])``.
        """
        return self._simple_row(
            "un_partial_stated_room",
            "un_partial_stated_room_stream",
            ("room_id",),
            (room_id,),
        )

    def un_partial_state_event(
        self, event_id: str, *, rejection_status_changed: bool = False
    ) -> Written:
        """Record that an event is no longer partial-stated.

        Returns:
            ``(token, [[event_id, rejection_status_changed]])``.
        """
        return self._simple_row(
            "un_partial_stated_event",
            "un_partial_stated_event_stream",
            ("event_id", "rejection_status_changed"),
            (event_id, rejection_status_changed),
        )

    def quarantine_media(
        self, media_id: str, *, origin: str | None = None, quarantined: bool = True
    ) -> Written:
        """Record a media (un)quarantine; ``origin`` None means local media.

        Returns:
            ``(token, [[origin, media_id, quarantined]])``.
        """
        return self._simple_row(
            "quarantined_media",
            "quarantined_media_changes",
            ("origin", "media_id", "quarantined"),
            (origin, media_id, quarantined),
        )
