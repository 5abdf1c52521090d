"""A simulator of a Synapse writer process, for tests, benchmarks and the demo.

:class:`SynapseWriter` inserts rows into the tables of
:mod:`adapter.io.db.synapse_schema` the way a Synapse process with one ``instance_name``
would, so the stream sources can read them back and a publisher can send exactly what
Synapse would send. For each stream it:

* allocates tokens from the stream's shared counter (the PostgreSQL sequence of
  Synapse's sequences; on SQLite a row of ``synkafka_sim_sequences``), so several writers
  on one database interleave like Synapse's multi-writer id generators;
* writes the rows with its ``instance_name`` in one transaction;
* moves its own ``stream_positions`` row forward (backfill: stores the negative id).

Every write method returns ``(token, wire_rows)``: the token, and all rows of the
stream at that token in Synapse's wire form, in the order the sources return them. It
is a simulator: it fills the columns the backfill reads and the ``NOT NULL`` ones, and
it does not validate Matrix semantics. ``typing`` has no table; :meth:`set_typing`
keeps an in-memory serial like Synapse's typing writer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapter.core.errors import ConfigError
from adapter.io.db.connection import DbConnection
from adapter.io.db.sources import WireRow
from adapter.io.db.synapse_schema import ID_GENERATORS, POSTGRES_ONLY_STREAMS

__all__ = ["BulkResult", "SynapseWriter", "Written"]

Written = tuple[int, list[WireRow]]
"""What a write returns: the token and every wire row of the stream at that token."""

_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_DEFAULT_SENDER = "@alice:test"


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class BulkResult:
    """The outcome of :meth:`SynapseWriter.bulk_events`.

    Attributes:
        count: how many events were written.
        first_token: the lowest token written.
        last_token: the highest token written.
        rows: the ``(token, wire_row)`` pairs, only when asked for.
    """

    count: int
    first_token: int
    last_token: int
    rows: list[tuple[int, WireRow]] = field(default_factory=list)


class SynapseWriter:
    """One simulated Synapse process writing replication streams.

    Args:
        conn: the database (tables from
            :func:`~adapter.io.db.synapse_schema.create_synapse_tables`).
        instance_name: the writer's name (``master``, ``event_persister1``...).
        now_ms: the clock, in ms since the epoch (injectable for tests).

    Example::

        writer = SynapseWriter(conn, "event_persister1")
        token, rows = writer.send_event("!room:test", "m.room.message")
    """

    def __init__(
        self,
        conn: DbConnection,
        instance_name: str = "master",
        *,
        now_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.conn = conn
        self.instance_name = instance_name
        self._now_ms = now_ms
        self._typing_serial = 0
        self._typing: dict[str, list[str]] = {}
        pg = conn.engine == "postgresql"
        self._max = "GREATEST" if pg else "MAX"
        self._min = "LEAST" if pg else "MIN"
        self._null_safe_eq = "IS NOT DISTINCT FROM" if pg else "IS"

    # -- tokens and positions ----------------------------------------------------------

    def allocate(self, stream: str, n: int = 1) -> list[int]:
        """Take ``n`` ids from ``stream``'s shared counter (wire tokens, ascending).

        Args:
            stream: the wire stream name.
            n: how many ids.

        Returns:
            The ids; positive also for ``backfill`` (stored negated).

        Raises:
            ConfigError: the stream has no counter here.
            BackfillError: the database failed.
        """
        gen = ID_GENERATORS.get(stream)
        if gen is None:
            raise ConfigError(f"stream {stream!r} has no id generator")
        if self.conn.engine == "postgresql":
            rows = self.conn.fetchall(
                "SELECT nextval(?::regclass) FROM generate_series(1, ?)",
                (gen.sequence, n),
            )
            return sorted(int(r[0]) for r in rows)
        if stream in POSTGRES_ONLY_STREAMS:
            raise ConfigError(f"the {stream} stream exists only on PostgreSQL")
        row = self.conn.fetchone(
            "UPDATE synkafka_sim_sequences SET last_value = last_value + ? WHERE name = ?"
            " RETURNING last_value",
            (n, gen.sequence),
        )
        if row is None:
            raise ConfigError(
                f"no counter {gen.sequence!r}: run create_synapse_tables first"
            )
        last = int(row[0])
        return list(range(last - n + 1, last + 1))

    def advance_position(self, stream: str, token: int) -> None:
        """Move this writer's ``stream_positions`` row to ``token`` (never backwards).

        Args:
            stream: the wire stream name.
            token: the wire token (positive, also for ``backfill``).
        """
        gen = ID_GENERATORS[stream]
        if gen.positions_name is None:
            return
        stored, pick = (-token, self._min) if gen.negative else (token, self._max)
        self.conn.execute(
            "INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES (?, ?, ?)"  # noqa: S608
            " ON CONFLICT (stream_name, instance_name) DO UPDATE"
            f" SET stream_id = {pick}(stream_positions.stream_id, excluded.stream_id)",
            (gen.positions_name, self.instance_name, stored),
        )

    def _next(self, stream: str) -> int:
        return self.allocate(stream)[0]

    # -- events --------------------------------------------------------------------------

    def send_event(
        self,
        room_id: str,
        event_type: str,
        *,
        sender: str = _DEFAULT_SENDER,
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
        sender: str = _DEFAULT_SENDER,
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

    def bulk_events(
        self,
        count: int,
        *,
        room_ids: Sequence[str] = ("!bench:test",),
        event_type: str = "m.room.message",
        sender: str = _DEFAULT_SENDER,
        batch_size: int = 50_000,
        with_json: bool = False,
        collect_rows: bool = False,
    ) -> BulkResult:
        """Write ``count`` plain message events fast (COPY on PostgreSQL).

        Only the ``events`` row (and, with ``with_json``, ``event_json``) is written;
        the events are neither state nor relations, so their wire rows are
        ``["ev", [event_id, room_id, type, None, None, None, None, False, False]]``.
        Tokens come from the shared sequence in batches of ``batch_size``.

        Args:
            count: how many events.
            room_ids: rooms to spread the events over, round robin.
            event_type: the event type.
            sender: the sender.
            batch_size: ids allocated and rows copied per round.
            with_json: also write ``event_json`` rows.
            collect_rows: return the wire rows (memory grows with ``count``).

        Returns:
            The counts, token range and optionally the rows.
        """
        first = last = 0
        collected: list[tuple[int, WireRow]] = []
        rooms = list(room_ids)
        done = 0
        now = self._now_ms()
        while done < count:
            n = min(batch_size, count - done)
            tokens = self.allocate("events", n)
            first = first or tokens[0]
            last = tokens[-1]
            ids = [f"$ev{t}-{self.instance_name}" for t in tokens]
            room_of = [rooms[(done + i) % len(rooms)] for i in range(n)]
            with self.conn.transaction():
                self.conn.copy_rows(
                    "events",
                    (
                        "topological_ordering",
                        "event_id",
                        "type",
                        "room_id",
                        "processed",
                        "outlier",
                        "depth",
                        "origin_server_ts",
                        "received_ts",
                        "sender",
                        "contains_url",
                        "instance_name",
                        "stream_ordering",
                    ),
                    (
                        (
                            t,
                            eid,
                            event_type,
                            room,
                            True,
                            False,
                            t,
                            now,
                            now,
                            sender,
                            False,
                            self.instance_name,
                            t,
                        )
                        for t, eid, room in zip(tokens, ids, room_of, strict=True)
                    ),
                )
                if with_json:
                    self.conn.copy_rows(
                        "event_json",
                        (
                            "event_id",
                            "room_id",
                            "internal_metadata",
                            "json",
                            "format_version",
                        ),
                        (
                            (
                                eid,
                                room,
                                "{}",
                                _event_json(
                                    eid, room, event_type, sender, None, {}, now
                                ),
                                3,
                            )
                            for eid, room in zip(ids, room_of, strict=True)
                        ),
                    )
                self.advance_position("events", last)
            if collect_rows:
                collected.extend(
                    (
                        t,
                        [
                            "ev",
                            [
                                eid,
                                room,
                                event_type,
                                None,
                                None,
                                None,
                                None,
                                False,
                                False,
                            ],
                        ],
                    )
                    for t, eid, room in zip(tokens, ids, room_of, strict=True)
                )
            done += n
        return BulkResult(count, first, last, collected)

    # -- other streams ------------------------------------------------------------------

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
                    _JSON.encode(body),
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
            self.conn.execute(
                "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_name = ?",
                (app_id, pushkey, user_id),
            )
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
            self.conn.execute(
                "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_name = ?",
                (app_id, pushkey, user_id),
            )
            self.conn.execute(
                "INSERT INTO deleted_pushers (stream_id, app_id, pushkey, user_id, instance_name)"
                " VALUES (?, ?, ?, ?, ?)",
                (token, app_id, pushkey, user_id, self.instance_name),
            )
            self.advance_position("pushers", token)
        return token, [[user_id, app_id, pushkey, True]]

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
                (token, from_user_id, _JSON.encode(list(user_ids)), self.instance_name),
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
                        (u, d, token, _JSON.encode(dict(m)), self.instance_name)
                        for u, d, m in local
                    ],
                )
            if remote:
                self.conn.executemany(
                    "INSERT INTO device_federation_outbox (destination, stream_id, queued_ts, messages_json,"
                    " instance_name) VALUES (?, ?, ?, ?, ?)",
                    [
                        (dest, token, now, _JSON.encode(dict(m)), self.instance_name)
                        for dest, m in remote
                    ],
                )
            self.advance_position("to_device", token)
        entities = sorted({u for u, _, _ in local} | {dest for dest, _ in remote})
        return token, [[entity] for entity in entities]

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
        body = _JSON.encode(dict(content))
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
                (user_id, room_id, tag, _JSON.encode(dict(content or {}))),
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
                    sender or _DEFAULT_SENDER,
                    expires_at
                    if expires_at is not None
                    else self._now_ms() + 3_600_000,
                ),
            )
            self.advance_position("sticky_events", token)
        return token, [[room_id, event_id]]

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

    # -- helpers -------------------------------------------------------------------------

    def _simple_row(
        self, stream: str, table: str, columns: Sequence[str], values: Sequence[Any]
    ) -> Written:
        token = self._next(stream)
        cols = ", ".join(("stream_id", "instance_name", *columns))
        marks = ", ".join("?" * (len(columns) + 2))
        with self.conn.transaction():
            self.conn.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({marks})",  # noqa: S608 - constant names
                (token, self.instance_name, *values),
            )
            self.advance_position(stream, token)
        return token, [list(values)]

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
                _JSON.encode({"outlier": True} if outlier else {}),
                _event_json(
                    event_id, room_id, event_type, sender, state_key, body, now
                ),
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


def _event_json(
    event_id: str,
    room_id: str,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    ts: int,
) -> str:
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
    return _JSON.encode(event)
