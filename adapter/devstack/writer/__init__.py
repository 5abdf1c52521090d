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

The writes are grouped by stream, one module each, and combined here:
:mod:`~adapter.devstack.writer.events` (events, state, backfill, sticky events),
:mod:`~adapter.devstack.writer.bulk` (many events at once),
:mod:`~adapter.devstack.writer.accounts` (receipts, presence, push rules, pushers,
account data, thread subscriptions, profiles, typing),
:mod:`~adapter.devstack.writer.devices` (device lists, to-device) and
:mod:`~adapter.devstack.writer.housekeeping` (caches, partial-state resyncs,
quarantined media), all on :mod:`~adapter.devstack.writer.base` (tokens and
positions).
"""

from __future__ import annotations

from adapter.devstack.writer.accounts import UserWrites
from adapter.devstack.writer.base import Written
from adapter.devstack.writer.bulk import BulkEventWrites, BulkResult
from adapter.devstack.writer.devices import DeviceWrites
from adapter.devstack.writer.events import EventWrites
from adapter.devstack.writer.housekeeping import HousekeepingWrites

__all__ = ["BulkResult", "SynapseWriter", "Written"]


class SynapseWriter(
    EventWrites, BulkEventWrites, UserWrites, DeviceWrites, HousekeepingWrites
):
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
