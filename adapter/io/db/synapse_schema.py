"""The part of Synapse's database schema that replication backfill reads.

This is *not* a migration of Synapse's schema. It creates, on an empty PostgreSQL or
SQLite database, the tables (and on PostgreSQL the sequences) that the built-in stream
sources in :mod:`adapter.io.db.sources` query and that :mod:`adapter.devstack.writer` fills, with
Synapse's table, column and sequence names and types (schema 72 plus the later deltas
that added ``instance_name`` columns and the newer streams). Columns the backfill never
reads are kept where a writer must fill them (``NOT NULL``) and dropped otherwise.

Two things here are ours, not Synapse's:

* on SQLite, ``synkafka_sim_sequences``: Synapse keeps SQLite stream ids in memory; the
  writer simulator needs a counter several connections can share, so it keeps one row
  per PostgreSQL sequence name there. Sources never read it.

:data:`ID_GENERATORS` records, per wire stream, the ``stream_positions`` name and the
PostgreSQL sequence, and which tables and columns hold its stream ids
(used for the positions fallback, :mod:`adapter.io.db.sources.positions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapter.io.db.connection import DbConnection, Engine

__all__ = [
    "ID_GENERATORS",
    "POSTGRES_ONLY_STREAMS",
    "IdGenerator",
    "IdTable",
    "create_synapse_tables",
    "ddl_statements",
]


@dataclass(frozen=True, slots=True)
class IdTable:
    """A table that holds a stream's ids.

    Attributes:
        table: the table name.
        id_column: the column holding the stream id.
        instance_column: the column naming the writer, or ``None`` if there is none.
    """

    table: str
    id_column: str
    instance_column: str | None = "instance_name"


@dataclass(frozen=True, slots=True)
class IdGenerator:
    """How Synapse allocates and persists one stream's tokens.

    Attributes:
        positions_name: the ``stream_name`` in ``stream_positions``, or ``None`` when
            the stream never writes there (``caches``).
        sequence: the PostgreSQL sequence the writers share.
        tables: the tables whose ids make up the stream (for the positions fallback).
        negative: ids are stored negated (``backfill``): the wire token is ``-id``.
    """

    positions_name: str | None
    sequence: str
    tables: tuple[IdTable, ...]
    negative: bool = False


ID_GENERATORS: Mapping[str, IdGenerator] = {
    "events": IdGenerator(
        "events",
        "events_stream_seq",
        (
            IdTable("events", "stream_ordering"),
            IdTable("current_state_delta_stream", "stream_id"),
            IdTable("ex_outlier_stream", "event_stream_ordering"),
        ),
    ),
    "backfill": IdGenerator(
        "backfill",
        "events_backfill_stream_seq",
        (
            IdTable("events", "stream_ordering"),
            IdTable("ex_outlier_stream", "event_stream_ordering"),
        ),
        negative=True,
    ),
    "presence": IdGenerator(
        "presence_stream",
        "presence_stream_sequence",
        (IdTable("presence_stream", "stream_id"),),
    ),
    "receipts": IdGenerator(
        "receipts", "receipts_sequence", (IdTable("receipts_linearized", "stream_id"),)
    ),
    "push_rules": IdGenerator(
        "push_rules_stream",
        "push_rules_stream_sequence",
        (IdTable("push_rules_stream", "stream_id"),),
    ),
    "pushers": IdGenerator(
        "pushers",
        "pushers_sequence",
        (IdTable("pushers", "id"), IdTable("deleted_pushers", "stream_id")),
    ),
    "caches": IdGenerator(
        None,
        "cache_invalidation_stream_seq",
        (IdTable("cache_invalidation_stream_by_instance", "stream_id"),),
    ),
    "device_lists": IdGenerator(
        "device_lists_stream",
        "device_lists_sequence",
        (
            IdTable("device_lists_stream", "stream_id"),
            IdTable("user_signature_stream", "stream_id"),
            IdTable("device_lists_outbound_pokes", "stream_id"),
            # Room fan-out and remote-pending rows take ids from the same sequence
            # without a stream row; Synapse counts them when it starts up.
            IdTable("device_lists_changes_in_room", "stream_id"),
            IdTable("device_lists_remote_pending", "stream_id"),
            IdTable("device_lists_changes_converted_stream_position", "stream_id"),
        ),
    ),
    "to_device": IdGenerator(
        "to_device",
        "device_inbox_sequence",
        (
            IdTable("device_inbox", "stream_id"),
            IdTable("device_federation_outbox", "stream_id"),
        ),
    ),
    "account_data": IdGenerator(
        "account_data",
        "account_data_sequence",
        (
            IdTable("account_data", "stream_id"),
            IdTable("room_account_data", "stream_id"),
            IdTable("room_tags_revisions", "stream_id"),
        ),
    ),
    "sticky_events": IdGenerator(
        "sticky_events",
        "sticky_events_sequence",
        (IdTable("sticky_events", "stream_id"),),
    ),
    "thread_subscriptions": IdGenerator(
        "thread_subscriptions",
        "thread_subscriptions_sequence",
        (IdTable("thread_subscriptions", "stream_id"),),
    ),
    "un_partial_stated_room": IdGenerator(
        "un_partial_stated_room_stream",
        "un_partial_stated_room_stream_sequence",
        (IdTable("un_partial_stated_room_stream", "stream_id"),),
    ),
    "un_partial_stated_event": IdGenerator(
        "un_partial_stated_event_stream",
        "un_partial_stated_event_stream_sequence",
        (IdTable("un_partial_stated_event_stream", "stream_id"),),
    ),
    "quarantined_media": IdGenerator(
        "quarantined_media",
        "quarantined_media_id_seq",
        (IdTable("quarantined_media_changes", "stream_id"),),
    ),
    "profile_updates": IdGenerator(
        "profile_updates",
        "profile_updates_sequence",
        (IdTable("profile_updates", "stream_id"),),
    ),
}
"""Id generator facts per wire stream name, for every database-backed stream."""

POSTGRES_ONLY_STREAMS: frozenset[str] = frozenset({"caches"})
"""Streams that Synapse has only on PostgreSQL (no cache id generator on SQLite)."""

# Tables shared by both engines. Types are spelled so both engines accept them:
# SQLite maps BIGINT to INTEGER affinity and BOOLEAN to NUMERIC (stored as 0/1).
_COMMON_DDL: tuple[str, ...] = (
    # -- events and their side tables -------------------------------------------------
    """CREATE TABLE IF NOT EXISTS events (
        topological_ordering BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        room_id TEXT NOT NULL,
        content TEXT,
        unrecognized_keys TEXT,
        processed BOOLEAN NOT NULL,
        outlier BOOLEAN NOT NULL,
        depth BIGINT DEFAULT 0 NOT NULL,
        origin_server_ts BIGINT,
        received_ts BIGINT,
        sender TEXT,
        contains_url BOOLEAN,
        instance_name TEXT,
        stream_ordering BIGINT,
        state_key TEXT,
        rejection_reason TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_event_id_key ON events (event_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_stream_ordering ON events (stream_ordering)",
    "CREATE INDEX IF NOT EXISTS events_order_room ON events (room_id, topological_ordering, stream_ordering)",
    """CREATE TABLE IF NOT EXISTS event_json (
        event_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        internal_metadata TEXT NOT NULL,
        json TEXT NOT NULL,
        format_version INTEGER
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS event_json_event_id_key ON event_json (event_id)",
    """CREATE TABLE IF NOT EXISTS state_events (
        event_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        type TEXT NOT NULL,
        state_key TEXT NOT NULL,
        prev_state TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS state_events_event_id_key ON state_events (event_id)",
    """CREATE TABLE IF NOT EXISTS redactions (
        event_id TEXT NOT NULL,
        redacts TEXT NOT NULL,
        have_censored BOOLEAN DEFAULT FALSE NOT NULL,
        received_ts BIGINT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS redactions_event_id_key ON redactions (event_id)",
    """CREATE TABLE IF NOT EXISTS event_relations (
        event_id TEXT NOT NULL,
        relates_to_id TEXT NOT NULL,
        relation_type TEXT NOT NULL,
        aggregation_key TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS event_relations_id ON event_relations (event_id)",
    """CREATE TABLE IF NOT EXISTS room_memberships (
        event_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        room_id TEXT NOT NULL,
        membership TEXT NOT NULL,
        forgotten INTEGER DEFAULT 0,
        display_name TEXT,
        avatar_url TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS room_memberships_event_id_key ON room_memberships (event_id)",
    """CREATE TABLE IF NOT EXISTS rejections (
        event_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        last_check TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS rejections_event_id_key ON rejections (event_id)",
    """CREATE TABLE IF NOT EXISTS current_state_delta_stream (
        stream_id BIGINT NOT NULL,
        room_id TEXT NOT NULL,
        type TEXT NOT NULL,
        state_key TEXT NOT NULL,
        event_id TEXT,
        prev_event_id TEXT,
        instance_name TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS current_state_delta_stream_idx ON current_state_delta_stream (stream_id)",
    """CREATE TABLE IF NOT EXISTS ex_outlier_stream (
        event_stream_ordering BIGINT NOT NULL PRIMARY KEY,
        event_id TEXT NOT NULL,
        state_group BIGINT NOT NULL,
        instance_name TEXT
    )""",
    # -- receipts, presence, push ---------------------------------------------------------
    """CREATE TABLE IF NOT EXISTS receipts_linearized (
        stream_id BIGINT NOT NULL,
        room_id TEXT NOT NULL,
        receipt_type TEXT NOT NULL,
        user_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        data TEXT NOT NULL,
        instance_name TEXT,
        event_stream_ordering BIGINT,
        thread_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS receipts_linearized_id ON receipts_linearized (stream_id)",
    """CREATE UNIQUE INDEX IF NOT EXISTS receipts_linearized_unique_index
        ON receipts_linearized (room_id, receipt_type, user_id) WHERE thread_id IS NULL""",
    """CREATE UNIQUE INDEX IF NOT EXISTS receipts_linearized_uniqueness_thread
        ON receipts_linearized (room_id, receipt_type, user_id, thread_id)""",
    """CREATE TABLE IF NOT EXISTS presence_stream (
        stream_id BIGINT,
        user_id TEXT,
        state TEXT,
        last_active_ts BIGINT,
        last_federation_update_ts BIGINT,
        last_user_sync_ts BIGINT,
        status_msg TEXT,
        currently_active BOOLEAN,
        instance_name TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS presence_stream_id ON presence_stream (stream_id, user_id)",
    "CREATE INDEX IF NOT EXISTS presence_stream_user_id ON presence_stream (user_id)",
    """CREATE TABLE IF NOT EXISTS push_rules_stream (
        stream_id BIGINT NOT NULL,
        event_stream_ordering BIGINT NOT NULL,
        user_id TEXT NOT NULL,
        rule_id TEXT NOT NULL,
        op TEXT NOT NULL,
        priority_class SMALLINT,
        priority INTEGER,
        conditions TEXT,
        actions TEXT,
        instance_name TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS push_rules_stream_id ON push_rules_stream (stream_id)",
    """CREATE TABLE IF NOT EXISTS pushers (
        id BIGINT NOT NULL PRIMARY KEY,
        user_name TEXT NOT NULL,
        access_token BIGINT,
        profile_tag TEXT NOT NULL,
        kind TEXT NOT NULL,
        app_id TEXT NOT NULL,
        app_display_name TEXT NOT NULL,
        device_display_name TEXT NOT NULL,
        pushkey TEXT NOT NULL,
        ts BIGINT NOT NULL,
        lang TEXT,
        data TEXT,
        last_stream_ordering BIGINT,
        last_success BIGINT,
        failing_since BIGINT,
        enabled BOOLEAN,
        device_id TEXT,
        instance_name TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS pushers2_app_id_pushkey_user_name_key ON pushers (app_id, pushkey, user_name)",
    """CREATE TABLE IF NOT EXISTS deleted_pushers (
        stream_id BIGINT NOT NULL,
        app_id TEXT NOT NULL,
        pushkey TEXT NOT NULL,
        user_id TEXT NOT NULL,
        instance_name TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS deleted_pushers_stream_id ON deleted_pushers (stream_id)",
    # -- devices and to-device --------------------------------------------------------------
    """CREATE TABLE IF NOT EXISTS device_lists_stream (
        stream_id BIGINT NOT NULL,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        instance_name TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS device_lists_stream_id ON device_lists_stream (stream_id, user_id)",
    """CREATE TABLE IF NOT EXISTS device_lists_outbound_pokes (
        destination TEXT NOT NULL,
        stream_id BIGINT NOT NULL,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        sent BOOLEAN NOT NULL,
        ts BIGINT NOT NULL,
        opentracing_context TEXT,
        instance_name TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS device_lists_outbound_pokes_stream_idx ON device_lists_outbound_pokes (stream_id)",
    """CREATE TABLE IF NOT EXISTS user_signature_stream (
        stream_id BIGINT NOT NULL,
        from_user_id TEXT NOT NULL,
        user_ids TEXT NOT NULL,
        instance_name TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS user_signature_stream_idx ON user_signature_stream (stream_id)",
    """CREATE TABLE IF NOT EXISTS device_lists_changes_in_room (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        stream_id BIGINT NOT NULL,
        converted_to_destinations BOOLEAN NOT NULL,
        opentracing_context TEXT,
        instance_name TEXT,
        inserted_ts BIGINT
    )""",
    """CREATE TABLE IF NOT EXISTS device_lists_remote_pending (
        stream_id BIGINT PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        instance_name TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS device_lists_changes_converted_stream_position (
        lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,
        stream_id BIGINT NOT NULL,
        room_id TEXT NOT NULL,
        instance_name TEXT,
        CHECK (lock = 'X')
    )""",
    """CREATE TABLE IF NOT EXISTS device_inbox (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        stream_id BIGINT NOT NULL,
        message_json TEXT NOT NULL,
        instance_name TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS device_inbox_stream_id_user_id ON device_inbox (stream_id, user_id)",
    """CREATE TABLE IF NOT EXISTS device_federation_outbox (
        destination TEXT NOT NULL,
        stream_id BIGINT NOT NULL,
        queued_ts BIGINT NOT NULL,
        messages_json TEXT NOT NULL,
        instance_name TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS device_federation_outbox_id ON device_federation_outbox (stream_id)",
    # -- account data -------------------------------------------------------------------
    """CREATE TABLE IF NOT EXISTS account_data (
        user_id TEXT NOT NULL,
        account_data_type TEXT NOT NULL,
        stream_id BIGINT NOT NULL,
        content TEXT NOT NULL,
        instance_name TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS account_data_uniqueness ON account_data (user_id, account_data_type)",
    "CREATE INDEX IF NOT EXISTS account_data_stream_id ON account_data (stream_id)",
    """CREATE TABLE IF NOT EXISTS room_account_data (
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        account_data_type TEXT NOT NULL,
        stream_id BIGINT NOT NULL,
        content TEXT NOT NULL,
        instance_name TEXT
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS room_account_data_uniqueness
        ON room_account_data (user_id, room_id, account_data_type)""",
    "CREATE INDEX IF NOT EXISTS room_account_data_stream_id ON room_account_data (stream_id)",
    """CREATE TABLE IF NOT EXISTS room_tags (
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        content TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS room_tag_uniqueness ON room_tags (user_id, room_id, tag)",
    """CREATE TABLE IF NOT EXISTS room_tags_revisions (
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        stream_id BIGINT NOT NULL,
        instance_name TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS room_tag_revisions_uniqueness ON room_tags_revisions (user_id, room_id)",
    "CREATE INDEX IF NOT EXISTS room_tags_revisions_stream_id ON room_tags_revisions (stream_id)",
    # -- newer streams -------------------------------------------------------------------
    """CREATE TABLE IF NOT EXISTS sticky_events (
        stream_id BIGINT NOT NULL PRIMARY KEY,
        instance_name TEXT NOT NULL,
        event_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        event_stream_ordering BIGINT NOT NULL UNIQUE,
        sender TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS thread_subscriptions (
        stream_id BIGINT NOT NULL PRIMARY KEY,
        instance_name TEXT NOT NULL,
        room_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        subscribed BOOLEAN NOT NULL,
        automatic BOOLEAN NOT NULL
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS thread_subscriptions_user_room_event
        ON thread_subscriptions (user_id, room_id, event_id)""",
    """CREATE TABLE IF NOT EXISTS un_partial_stated_room_stream (
        stream_id BIGINT PRIMARY KEY NOT NULL,
        instance_name TEXT NOT NULL,
        room_id TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS un_partial_stated_event_stream (
        stream_id BIGINT PRIMARY KEY NOT NULL,
        instance_name TEXT NOT NULL,
        event_id TEXT NOT NULL,
        rejection_status_changed BOOLEAN NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS quarantined_media_changes (
        stream_id BIGINT NOT NULL PRIMARY KEY,
        instance_name TEXT NOT NULL,
        origin TEXT NULL,
        media_id TEXT NOT NULL,
        quarantined BOOLEAN NOT NULL
    )""",
    # -- positions -------------------------------------------------------------------------
    """CREATE TABLE IF NOT EXISTS stream_positions (
        stream_name TEXT NOT NULL,
        instance_name TEXT NOT NULL,
        stream_id BIGINT NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS stream_positions_idx ON stream_positions (stream_name, instance_name)",
)

_POSTGRES_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS cache_invalidation_stream_by_instance (
        stream_id BIGINT NOT NULL,
        instance_name TEXT NOT NULL,
        cache_func TEXT NOT NULL,
        keys TEXT[],
        invalidation_ts BIGINT
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS cache_invalidation_stream_by_instance_id
        ON cache_invalidation_stream_by_instance (stream_id)""",
    # Synapse 1.163 (delta 94/07): affected_fields is JSONB on PostgreSQL.
    """CREATE TABLE IF NOT EXISTS profile_updates (
        stream_id BIGINT NOT NULL PRIMARY KEY,
        instance_name TEXT NOT NULL,
        user_id TEXT NOT NULL,
        action TEXT NOT NULL,
        affected_fields JSONB NULL,
        inserted_ts BIGINT NOT NULL
    )""",
    *(
        f"CREATE SEQUENCE IF NOT EXISTS {gen.sequence}"
        for gen in ID_GENERATORS.values()
    ),
)

_SQLITE_DDL: tuple[str, ...] = (
    # Synapse 1.163 (delta 94/07); SQLite keeps affected_fields as JSON text.
    """CREATE TABLE IF NOT EXISTS profile_updates (
        stream_id BIGINT NOT NULL PRIMARY KEY,
        instance_name TEXT NOT NULL,
        user_id TEXT NOT NULL,
        action TEXT NOT NULL,
        affected_fields TEXT NULL,
        inserted_ts BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS synkafka_sim_sequences (
        name TEXT NOT NULL PRIMARY KEY,
        last_value BIGINT NOT NULL
    )""",
    *(
        f"INSERT OR IGNORE INTO synkafka_sim_sequences (name, last_value) VALUES ('{gen.sequence}', 0)"  # noqa: S608
        for name, gen in ID_GENERATORS.items()
        if name not in POSTGRES_ONLY_STREAMS
    ),
)


def ddl_statements(engine: Engine) -> tuple[str, ...]:
    """Return the DDL for ``engine``, one statement per item, safe to run twice.

    Args:
        engine: ``"postgresql"`` or ``"sqlite"``.

    Returns:
        The ``CREATE ... IF NOT EXISTS`` statements in order.
    """
    return _COMMON_DDL + (_POSTGRES_DDL if engine == "postgresql" else _SQLITE_DDL)


def create_synapse_tables(conn: DbConnection) -> None:
    """Create the backfill subset of Synapse's schema on ``conn`` (idempotent).

    Args:
        conn: an open connection; its engine picks the dialect.

    Raises:
        BackfillError: a statement failed.
    """
    with conn.transaction():
        for statement in ddl_statements(conn.engine):
            conn.execute(statement)
