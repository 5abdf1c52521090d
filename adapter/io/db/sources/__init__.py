"""Backfill sources: read a stream's rows between two tokens from Synapse's database.

A consumer whose POSITION for ``(stream, writer)`` is behind fills the gap here instead
of replaying Kafka. Every source answers the question Synapse's stream update functions
answer, as Synapse's own catch-up does: *the rows of this writer with* ``from_token < token <=
to_token``, *in pages*. The rows come back in Synapse's WIRE form: the JSON-compatible
list that Synapse puts in an RDATA line.

Rules every source here keeps (and a user source must keep):

1. **Ascending tokens.** Rows are sorted by token; rows sharing a token keep a fixed
   order. (Synapse's backfill query sorts by the negative ``stream_ordering`` and so
   returns tokens descending, and its sticky-events query has no ORDER BY; both are
   fixed here.)
2. **Limited semantics.** A page either reaches ``to_token`` (``limited=False``,
   ``upto_token == to_token``) or stops early (``limited=True``) at ``upto_token <
   to_token``; in both cases *every* row with a token at or below ``upto_token`` is in
   the page. The caller continues from ``upto_token``. A page never splits the rows of
   one token, even when more rows share a token than ``limit`` allows (the page then
   holds that whole token and is larger than ``limit``). Synapse's simpler
   ``len(rows) == limit`` rule can drop rows in that case; only its current-state
   query guards against it.
3. **One cut for merged sources.** A stream read from several queries (events,
   backfill, pushers, device_lists, account_data) cuts every query at the smallest
   ``upto`` among the limited ones, so no query's rows are skipped (this also fixes
   the pushers case).

Decisions that differ from Synapse, on purpose:

* **Per-writer filtering everywhere.** Every stream table has an ``instance_name``
  column, and every built-in source returns only the rows ``writer`` wrote, also for
  the streams whose Synapse query does not filter (presence, push_rules, device_lists,
  to_device, account_data, sticky_events, thread_subscriptions, quarantined_media).
  A consumer keeps one POSITION per ``(stream, writer)``, so the union of the
  per-writer backfills is then the whole table with every row exactly once. Synapse's
  unfiltered queries would re-publish other writers' rows under the asking writer's
  name (device_lists and quarantined_media are multi-writer), which a consumer would
  apply twice. For single-writer streams the two agree unless the writer was moved;
  rows of the old writer stay reachable by backfilling the old writer's name. Rows
  whose ``instance_name`` is NULL (written before Synapse added the column) belong to
  ``master``. Pass ``per_writer=False`` to a source to get Synapse's unfiltered query.
* **caches has an upper bound.** Synapse reads ``stream_id > from`` without an upper
  bound (invalidations are idempotent and should go out early). A backfill of
  ``(from, to]`` must be exact and pages must be repeatable, so the bound is applied;
  newer rows arrive live or in the next backfill.
* **to_device skips empty windows.** Synapse's window rule (``upto = min(to, from +
  limit)``, one row per entity with its highest id) is kept, but when a window holds
  no rows the page ends just before the next row instead of ``from + limit``, so a
  sparse inbox does not cost one query per ``limit`` tokens.
* **state-all** rows are produced like Synapse does (a room with 150 or more state
  rows in one page becomes one ``["state-all", [room_id]]`` row at the highest of
  their tokens); pass ``state_all_threshold=None`` to :class:`EventsSource` to keep
  every ``state`` row.

In-memory streams (``typing``, ``federation``, ``presence_federation``) have no
database source: :class:`SourceRegistry` lists them with source ``None`` and a
consumer follows them live only.
"""

from __future__ import annotations

from adapter.io.db.sources.events import (
    STATE_ALL_THRESHOLD,
    BackfillSource,
    EventsSource,
)
from adapter.io.db.sources.iterators import (
    iter_fetched_pages,
    iter_group_pages,
    iter_pages,
    iter_rows,
)
from adapter.io.db.sources.pages import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_WRITER,
    FetchedPage,
    GroupsPage,
    RowsPage,
    StreamSource,
    TokenRow,
    TypedGroup,
    WireRow,
    group_typed,
    typed_row,
)
from adapter.io.db.sources.positions import read_id_positions
from adapter.io.db.sources.registry import (
    LIVE_ONLY_STREAMS,
    SourceRegistry,
    builtin_registry,
)
from adapter.io.db.sources.streams import (
    AccountDataSource,
    CachesSource,
    DeviceListsSource,
    PushersSource,
    ToDeviceSource,
)
from adapter.io.db.sources.table_source import SqlStreamSource, TableQuery

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_WRITER",
    "LIVE_ONLY_STREAMS",
    "STATE_ALL_THRESHOLD",
    "AccountDataSource",
    "BackfillSource",
    "CachesSource",
    "DeviceListsSource",
    "EventsSource",
    "FetchedPage",
    "GroupsPage",
    "PushersSource",
    "RowsPage",
    "SourceRegistry",
    "SqlStreamSource",
    "StreamSource",
    "TableQuery",
    "ToDeviceSource",
    "TokenRow",
    "TypedGroup",
    "WireRow",
    "builtin_registry",
    "group_typed",
    "iter_fetched_pages",
    "iter_group_pages",
    "iter_pages",
    "iter_rows",
    "read_id_positions",
    "typed_row",
]
