"""Stream name -> backfill source: :class:`SourceRegistry` and Synapse's built-in streams."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapter.core.errors import BackfillError, ConfigError, UnknownStreamError
from adapter.io.db.sources.events import BackfillSource, EventsSource
from adapter.io.db.sources.pages import StreamSource, WireRow
from adapter.io.db.sources.row_builders import (
    columns_row,
    presence_row,
    profile_update_row,
    receipt_row,
    with_bool_last,
)
from adapter.io.db.sources.streams import (
    AccountDataSource,
    CachesSource,
    DeviceListsSource,
    PushersSource,
    ToDeviceSource,
)
from adapter.io.db.sources.table_source import SqlStreamSource, TableQuery
from adapter.io.db.synapse_schema import ID_GENERATORS, POSTGRES_ONLY_STREAMS

__all__ = [
    "LIVE_ONLY_STREAMS",
    "SourceRegistry",
    "builtin_registry",
]


LIVE_ONLY_STREAMS: frozenset[str] = frozenset(
    {"typing", "federation", "presence_federation"}
)
"""Streams Synapse keeps in memory only: no database source, follow them live."""


def _simple(
    name: str,
    select: str,
    build: Callable[[tuple[Any, ...]], WireRow],
    *,
    tiebreak: str = "",
    unique_tokens: bool = False,
    per_writer: bool = True,
) -> SqlStreamSource:
    query = TableQuery(
        select=select,
        id_column="stream_id",
        build=build,
        tiebreak=tiebreak,
        unique_tokens=unique_tokens,
    )
    return SqlStreamSource(name, (query,), ID_GENERATORS[name], per_writer=per_writer)


def _builtin_sources() -> dict[str, StreamSource]:
    return {
        "events": EventsSource(),
        "backfill": BackfillSource(),
        "presence": _simple(
            "presence",
            "SELECT stream_id, user_id, state, last_active_ts, last_federation_update_ts,"
            " last_user_sync_ts, status_msg, currently_active FROM presence_stream",
            presence_row,
            tiebreak="user_id",
        ),
        "receipts": _simple(
            "receipts",
            "SELECT stream_id, room_id, receipt_type, user_id, event_id, thread_id, data FROM receipts_linearized",
            receipt_row,
            tiebreak="room_id, receipt_type, user_id, thread_id",
        ),
        "push_rules": _simple(
            "push_rules",
            "SELECT stream_id, user_id FROM push_rules_stream",
            columns_row,
            tiebreak="user_id, rule_id",
        ),
        "pushers": PushersSource(),
        "caches": CachesSource(),
        "device_lists": DeviceListsSource(),
        "to_device": ToDeviceSource(),
        "account_data": AccountDataSource(),
        "sticky_events": _simple(
            "sticky_events",
            "SELECT se.stream_id, se.room_id, se.event_id FROM sticky_events AS se"
            " INNER JOIN event_json AS ej ON ej.event_id = se.event_id",
            columns_row,
            unique_tokens=True,
        ),
        "thread_subscriptions": _simple(
            "thread_subscriptions",
            "SELECT stream_id, user_id, room_id, event_id FROM thread_subscriptions",
            columns_row,
            unique_tokens=True,
        ),
        "un_partial_stated_room": _simple(
            "un_partial_stated_room",
            "SELECT stream_id, room_id FROM un_partial_stated_room_stream",
            columns_row,
            unique_tokens=True,
        ),
        "un_partial_stated_event": _simple(
            "un_partial_stated_event",
            "SELECT stream_id, event_id, rejection_status_changed FROM un_partial_stated_event_stream",
            with_bool_last,
            unique_tokens=True,
        ),
        "quarantined_media": _simple(
            "quarantined_media",
            "SELECT stream_id, origin, media_id, quarantined FROM quarantined_media_changes",
            with_bool_last,
            unique_tokens=True,
        ),
        "profile_updates": _simple(
            "profile_updates",
            "SELECT stream_id, user_id, action, affected_fields FROM profile_updates",
            profile_update_row,
            unique_tokens=True,
        ),
    }


@dataclass
class SourceRegistry:
    """Stream name -> backfill source; ``None`` marks a live-only (in-memory) stream.

    Start from :func:`builtin_registry` and :meth:`register` your own streams.

    Attributes:
        sources: the mapping; prefer the methods to editing it directly.
    """

    sources: dict[str, StreamSource | None] = field(default_factory=dict)

    def register(
        self, name: str, source: StreamSource | None, *, replace: bool = False
    ) -> None:
        """Add a stream.

        Args:
            name: the wire stream name.
            source: its backfill source, or ``None`` for a stream that has no database
                rows and must be followed live only.
            replace: allow replacing an existing entry (a built-in, for example).

        Raises:
            ConfigError: ``name`` is already registered and ``replace`` is false, or the
                name is empty or contains a space (stream names are single wire words).
        """
        if not name or any(ch.isspace() for ch in name):
            raise ConfigError(f"invalid stream name {name!r}")
        if name in self.sources and not replace:
            raise ConfigError(f"stream {name!r} is already registered")
        self.sources[name] = source

    def source(self, name: str) -> StreamSource | None:
        """Return the stream's source, or ``None`` for a live-only stream.

        Raises:
            UnknownStreamError: nobody registered ``name``.
        """
        try:
            return self.sources[name]
        except KeyError:
            raise UnknownStreamError(f"unknown stream {name!r}") from None

    def require(self, name: str) -> StreamSource:
        """Return the stream's source for a backfill.

        Raises:
            UnknownStreamError: nobody registered ``name``.
            BackfillError: the stream is live-only (``retriable=False``).
        """
        source = self.source(name)
        if source is None:
            raise BackfillError(
                f"stream {name!r} has no database source; follow it live",
                retriable=False,
            )
        return source

    def is_live_only(self, name: str) -> bool:
        """Whether ``name`` has no database source.

        Raises:
            UnknownStreamError: nobody registered ``name``.
        """
        return self.source(name) is None

    def names(self) -> list[str]:
        """Every registered stream name, sorted."""
        return sorted(self.sources)

    def __contains__(self, name: object) -> bool:
        return name in self.sources


def builtin_registry(*, engine: str | None = None) -> SourceRegistry:
    """A fresh registry with every built-in stream of Synapse.

    Args:
        engine: when ``"sqlite"``, leave out the PostgreSQL-only streams (``caches``).

    Returns:
        A registry the caller may extend.
    """
    sources: dict[str, StreamSource | None] = dict(_builtin_sources())
    if engine == "sqlite":
        for name in POSTGRES_ONLY_STREAMS:
            del sources[name]
    for name in sorted(LIVE_ONLY_STREAMS):
        sources[name] = None
    return SourceRegistry(sources)
