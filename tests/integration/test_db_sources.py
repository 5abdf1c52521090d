"""Backfill sources against real PostgreSQL and SQLite, with rows from SynapseWriter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from adapter.core.errors import BackfillError, ConfigError, UnknownStreamError
from adapter.core.rows import EventsAllStateRow, row_from_wire
from adapter.devstack.writer import SynapseWriter
from adapter.io.db import (
    DbConnection,
    RowsPage,
    SourceRegistry,
    SqlStreamSource,
    StreamSource,
    TableQuery,
    builtin_registry,
    connect,
    create_synapse_tables,
    iter_pages,
    iter_rows,
)
from adapter.io.db.sources import (
    LIVE_ONLY_STREAMS,
    DeviceListsSource,
    EventsSource,
    ToDeviceSource,
    group_typed,
    iter_group_pages,
)
from adapter.io.db.synapse_schema import ID_GENERATORS

WRITERS = ("master", "worker1")
Written = list[tuple[str, int, list[Any]]]  # (writer, token, rows) in write order


@pytest.fixture(params=["postgresql", "sqlite"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DbConnection]:
    if request.param == "postgresql":
        dsn: str = request.getfixturevalue("pg_dsn")
    else:
        dsn = f"sqlite:///{tmp_path / 'synapse.db'}"
    db = connect(dsn, create=True)
    create_synapse_tables(db)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[DbConnection]:
    db = connect(pg_dsn)
    create_synapse_tables(db)
    try:
        yield db
    finally:
        db.close()


def writers(conn: DbConnection) -> tuple[SynapseWriter, SynapseWriter]:
    clock = iter(range(1_000_000, 10_000_000))
    return (
        SynapseWriter(conn, WRITERS[0], now_ms=lambda: next(clock)),
        SynapseWriter(conn, WRITERS[1], now_ms=lambda: next(clock)),
    )


def log(out: Written, writer: SynapseWriter, written: tuple[int, list[Any]]) -> None:
    out.append((writer.instance_name, written[0], written[1]))


# -- one scenario per stream: writes from two interleaved writers -------------------------


def _events(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    log(out, a, a.send_event("!r:t", "m.room.create", state_key=""))
    log(
        out,
        b,
        b.send_event(
            "!r:t", "m.room.member", state_key="@b:t", content={"membership": "join"}
        ),
    )
    log(out, a, a.send_event("!r:t", "m.room.message", relates_to="$root"))
    log(out, a, a.set_state("!r:t", [("m.x", str(i), f"$s{i}") for i in range(7)]))
    log(out, b, b.send_event("!r:t", "m.room.redaction", redacts="$ev1-master"))
    log(
        out,
        b,
        b.send_event(
            "!r:t",
            "m.room.member",
            state_key="@c:t",
            membership="invite",
            rejected=True,
        ),
    )
    log(out, a, a.set_state("!s:t", [("m.y", "k", None)]))
    for i in range(4):
        log(
            out,
            b if i % 2 else a,
            (b if i % 2 else a).send_event("!s:t", "m.room.message"),
        )
    return out


def _backfill(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(5):
        w = a if i % 3 else b
        log(
            out,
            w,
            w.backfill_event(
                "!r:t", "m.room.message", state_key=None if i % 2 else f"k{i}"
            ),
        )
    log(
        out,
        a,
        a.backfill_event("!r:t", "m.room.redaction", redacts="$x", relates_to="$y"),
    )
    return out


def _presence(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(5):
        w = a if i % 2 else b
        log(
            out,
            w,
            w.set_presence(
                f"@u{i}:t",
                "online",
                last_active_ts=i,
                status_msg=f"m{i}",
                currently_active=bool(i % 2),
            ),
        )
    return out


def _receipts(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(5):
        w = a if i % 2 else b
        log(
            out,
            w,
            w.send_receipt(
                "!r:t",
                "m.read",
                f"@u{i}:t",
                f"$e{i}",
                thread_id=None if i % 2 else "$t",
                data={"ts": i},
            ),
        )
    return out


def _push_rules(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(4):
        w = a if i % 2 else b
        log(out, w, w.push_rule_change(f"@u{i}:t", f"rule{i}"))
    return out


def _pushers(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    log(out, a, a.add_pusher("@u1:t", "app", "k1"))
    log(out, a, a.delete_pusher("@u2:t", "app", "k2"))
    log(out, b, b.add_pusher("@u3:t", "app", "k3"))
    log(out, a, a.add_pusher("@u4:t", "app", "k4"))
    log(out, b, b.delete_pusher("@u5:t", "app", "k5"))
    return out


def _caches(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    log(out, a, a.invalidate_cache("get_user", ["@u:t"]))
    log(out, b, b.invalidate_cache("cs_cache_fake", ["!r:t", "@a:t", "@b:t"]))
    log(out, a, a.invalidate_cache("get_rooms", None))
    return out


def _device_lists(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    log(out, a, a.add_device_list_change("@a:t", "D1"))
    log(out, b, b.add_device_list_pokes("@a:t", "D1", ["h1", "h2", "h3"]))
    log(out, a, a.add_user_signature_change("@a:t", ["@b:t"]))
    log(out, a, a.add_device_list_pokes("@c:t", "D2", ["h1"]))
    log(out, b, b.add_device_list_change("@d:t", "D3"))
    return out


def _to_device(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    log(
        out,
        a,
        a.send_to_device([("@a:t", "D", {"m": 1}), ("@b:t", "D", {})], [("h1", {})]),
    )
    log(out, b, b.send_to_device([("@c:t", "D", {})]))
    log(out, a, a.send_to_device([], [("h2", {}), ("h3", {})]))
    return out


def _account_data(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    log(out, a, a.set_account_data("@a:t", "m.push_rules", {}))
    log(out, b, b.set_account_data("@b:t", "m.fully_read", {}, room_id="!r:t"))
    log(out, a, a.add_room_tag("@a:t", "!r:t", "m.favourite"))
    log(out, a, a.set_account_data("@c:t", "x", {"v": 1}, room_id="!s:t"))
    return out


def _sticky_events(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(4):
        w = a if i % 2 else b
        _, rows = w.send_event("!r:t", "m.room.message")
        log(out, w, w.mark_sticky(rows[0][1][0]))
    return out


def _thread_subscriptions(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(4):
        w = a if i % 2 else b
        log(out, w, w.subscribe_thread(f"@u{i}:t", "!r:t", f"$root{i}"))
    return out


def _un_partial_stated_room(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(3):
        w = a if i % 2 else b
        log(out, w, w.un_partial_state_room(f"!r{i}:t"))
    return out


def _un_partial_stated_event(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(3):
        w = a if i % 2 else b
        log(
            out,
            w,
            w.un_partial_state_event(f"$e{i}", rejection_status_changed=bool(i % 2)),
        )
    return out


def _quarantined_media(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    log(out, a, a.quarantine_media("m1"))
    log(out, b, b.quarantine_media("m2", origin="remote.test"))
    log(out, a, a.quarantine_media("m1", quarantined=False))
    return out


def _profile_updates(a: SynapseWriter, b: SynapseWriter) -> Written:
    out: Written = []
    for i in range(3):
        w = a if i % 2 else b
        log(out, w, w.update_profile(f"@u{i}:t"))
    log(out, a, a.update_profile("@u0:t", "update", ("displayname", "avatar_url")))
    log(out, b, b.update_profile("@u1:t", "joined_room", None))
    return out


SCENARIOS: dict[str, Callable[[SynapseWriter, SynapseWriter], Written]] = {
    "events": _events,
    "backfill": _backfill,
    "presence": _presence,
    "receipts": _receipts,
    "push_rules": _push_rules,
    "pushers": _pushers,
    "caches": _caches,
    "device_lists": _device_lists,
    "to_device": _to_device,
    "account_data": _account_data,
    "sticky_events": _sticky_events,
    "thread_subscriptions": _thread_subscriptions,
    "un_partial_stated_room": _un_partial_stated_room,
    "un_partial_stated_event": _un_partial_stated_event,
    "quarantined_media": _quarantined_media,
    "profile_updates": _profile_updates,
}


def test_every_database_stream_has_a_scenario() -> None:
    registry = builtin_registry()
    database_streams = {
        name for name in registry.names() if not registry.is_live_only(name)
    }
    assert database_streams == set(SCENARIOS) == set(ID_GENERATORS)


def expected_for(written: Written, writer: str) -> list[tuple[int, list[Any]]]:
    rows = [
        (token, row) for name, token, rows in written if name == writer for row in rows
    ]
    return sorted(
        rows, key=lambda r: r[0]
    )  # stable: rows of one token keep write order


def read_checked(
    conn: DbConnection,
    source: StreamSource,
    writer: str,
    from_token: int,
    to_token: int,
    page_size: int,
) -> list[tuple[int, list[Any]]]:
    """Read every page and check the limited/upto rules on each."""
    rows: list[tuple[int, list[Any]]] = []
    current = from_token
    pages = list(iter_pages(conn, source, writer, from_token, to_token, page_size))
    for i, page in enumerate(pages):
        tokens = [token for token, _ in page.rows]
        assert tokens == sorted(tokens), "tokens ascend within a page"
        assert all(current < t <= page.upto_token for t in tokens), (
            "rows lie in (current, upto]"
        )
        assert page.limited == (i < len(pages) - 1)
        if page.limited:
            assert current < page.upto_token < to_token
        else:
            assert page.upto_token == to_token
        current = page.upto_token
        rows.extend(page.rows)
    return rows


# Every stream on both engines, except caches, which Synapse has only on PostgreSQL.
STREAM_ENGINES = [
    (stream, engine)
    for stream in sorted(SCENARIOS)
    for engine in ("postgresql", "sqlite")
    if not (stream == "caches" and engine == "sqlite")
]


@pytest.mark.parametrize("page_size", [1, 3, 1000])
@pytest.mark.parametrize(("stream", "conn"), STREAM_ENGINES, indirect=["conn"])
def test_source_reads_each_writers_rows_exactly_once_in_token_order(
    conn: DbConnection, stream: str, page_size: int
) -> None:
    a, b = writers(conn)
    written = SCENARIOS[stream](a, b)
    source = builtin_registry(engine=conn.engine).require(stream)
    head = max(token for _, token, _ in written)

    for writer in WRITERS:
        got = read_checked(conn, source, writer, 0, head, page_size)
        assert got == expected_for(written, writer)

    # Starting in the middle returns exactly the tail.
    middle = sorted({token for _, token, _ in written})[len(written) // 2]
    for writer in WRITERS:
        tail = [r for r in expected_for(written, writer) if r[0] > middle]
        assert read_checked(conn, source, writer, middle, head, page_size) == tail


@pytest.mark.parametrize(("stream", "conn"), STREAM_ENGINES, indirect=["conn"])
def test_positions_come_from_stream_positions_then_fall_back_to_the_tables(
    conn: DbConnection, stream: str
) -> None:
    a, b = writers(conn)
    written = SCENARIOS[stream](a, b)
    source = builtin_registry(engine=conn.engine).require(stream)
    last = {
        name: max(token for n, token, _ in written if n == name)
        for name, _, _ in written
    }
    assert source.read_positions(conn) == last

    gen = ID_GENERATORS[stream]
    if gen.positions_name is not None:
        stored = dict(
            conn.fetchall(
                "SELECT instance_name, stream_id FROM stream_positions WHERE stream_name = ?",
                (gen.positions_name,),
            )
        )
        assert stored == {
            name: -token if gen.negative else token for name, token in last.items()
        }
        # A writer that moved on without rows: stream_positions wins over the tables.
        a.advance_position(stream, last["master"] + 100)
        assert source.read_positions(conn)["master"] == last["master"] + 100
        conn.execute(
            "DELETE FROM stream_positions WHERE stream_name = ?", (gen.positions_name,)
        )
    assert source.read_positions(conn) == last


def test_positions_are_empty_for_a_stream_without_rows(conn: DbConnection) -> None:
    registry = builtin_registry(engine=conn.engine)
    for name in registry.names():
        source = registry.source(name)
        if source is not None:
            assert source.read_positions(conn) == {}


def test_device_lists_positions_count_every_table_of_its_id_generator(
    conn: DbConnection,
) -> None:
    # A join fans a device change out to rooms with fresh ids and no stream row;
    # Synapse's POSITION includes them, so the fallback must too.
    source = builtin_registry(engine=conn.engine).require("device_lists")
    conn.execute(
        "INSERT INTO device_lists_stream (stream_id, user_id, device_id, instance_name)"
        " VALUES (3, '@a:test', 'D', 'master')"
    )
    conn.execute(
        "INSERT INTO device_lists_changes_in_room (user_id, device_id, room_id,"
        " stream_id, converted_to_destinations, instance_name)"
        " VALUES ('@a:test', 'D', '!r:test', 6, FALSE, 'master')"
    )
    conn.execute(
        "INSERT INTO device_lists_remote_pending (stream_id, user_id, device_id,"
        " instance_name) VALUES (5, '@b:remote', 'E', 'worker1')"
    )
    assert source.read_positions(conn) == {"master": 6, "worker1": 5}


# -- limited semantics -----------------------------------------------------------------


def test_rows_sharing_one_token_are_never_split_across_pages(
    conn: DbConnection,
) -> None:
    a, _ = writers(conn)
    t1, small = a.set_state("!r:t", [("m.x", "a", "$a"), ("m.x", "b", "$b")])
    t2, big = a.set_state("!r:t", [("m.x", f"{i:02}", f"$s{i}") for i in range(20)])
    t3, last = a.send_event("!r:t", "m.room.message")
    source = EventsSource()

    first = source.read_rows(conn, "master", 0, t3, 5)
    # 2 rows at t1 and 3 of the 20 at t2 came back: the page stops below t2.
    assert first == RowsPage([(t1, row) for row in small], t2 - 1, True)
    second = source.read_rows(conn, "master", first.upto_token, t3, 5)
    # Only rows of one token: the page takes the whole token, beyond the limit.
    assert second == RowsPage([(t2, row) for row in big], t2, True)
    third = source.read_rows(conn, "master", second.upto_token, t3, 5)
    assert third == RowsPage([(t3, row) for row in last], t3, False)


def test_merged_queries_are_cut_at_one_upto(conn: DbConnection) -> None:
    a, _ = writers(conn)
    written: Written = []
    for i in range(6):
        log(written, a, a.add_pusher(f"@u{i}:t", "app", f"k{i}"))
        log(written, a, a.delete_pusher(f"@d{i}:t", "app", f"k{i}"))
    source = builtin_registry().require("pushers")
    page = source.read_rows(conn, "master", 0, 12, 3)
    # Both queries hit the limit; the page stops at the lower of their cuts.
    assert page.limited
    assert page.rows == [
        r for r in expected_for(written, "master") if r[0] <= page.upto_token
    ]
    assert list(iter_rows(conn, source, "master", 0, 12, 3)) == expected_for(
        written, "master"
    )


def test_empty_or_reversed_range_returns_nothing(conn: DbConnection) -> None:
    a, _ = writers(conn)
    a.send_event("!r:t", "m.room.message")
    source = EventsSource()
    assert source.read_rows(conn, "master", 1, 1, 10) == RowsPage([], 1, False)
    assert source.read_rows(conn, "master", 5, 1, 10) == RowsPage([], 1, False)
    with pytest.raises(ConfigError):
        source.read_rows(conn, "master", 0, 1, 0)


# -- stream specifics --------------------------------------------------------------------


def test_ex_outlier_is_an_ev_row_at_its_new_token(conn: DbConnection) -> None:
    a, _ = writers(conn)
    t1, _ = a.send_event("!r:t", "m.room.message", outlier=True, event_id="$o")
    t2, rows = a.de_outlier("$o")
    got = list(iter_rows(conn, EventsSource(), "master", 0, t2, 10))
    # The database holds the latest state, so the first row no longer says outlier.
    ev = ["ev", ["$o", "!r:t", "m.room.message", None, None, None, None, False, False]]
    assert got == [(t1, ev), (t2, ev)]
    assert rows == [ev]


def test_many_state_rows_of_one_room_collapse_to_state_all(conn: DbConnection) -> None:
    a, _ = writers(conn)
    token, _ = a.set_state("!busy:t", [("m.x", str(i), "$e") for i in range(150)])
    t2, small = a.set_state("!calm:t", [("m.x", "k", "$e")])
    page = EventsSource().read_rows(conn, "master", 0, t2, 1000)
    assert page.rows == [(token, ["state-all", ["!busy:t"]]), (t2, small[0])]
    every = EventsSource(state_all_threshold=None).read_rows(
        conn, "master", 0, t2, 1000
    )
    assert len(every.rows) == 151


def _typed_groups_of(
    source: SqlStreamSource, rows: list[tuple[int, list[Any]]]
) -> list[tuple[int, tuple[Any, ...]]]:
    """What read_groups must return: the wire rows typed, grouped per token."""
    return group_typed([(t, row_from_wire(source.name, w)) for t, w in rows])


TABLE_STREAM_ENGINES = [
    (stream, engine)
    for stream, engine in STREAM_ENGINES
    if isinstance(builtin_registry().source(stream), SqlStreamSource)
]


@pytest.mark.parametrize("page_size", [1, 3, 1000])
@pytest.mark.parametrize(("stream", "conn"), TABLE_STREAM_ENGINES, indirect=["conn"])
def test_typed_groups_are_the_wire_rows_typed_and_grouped(
    conn: DbConnection, stream: str, page_size: int
) -> None:
    # The typed fast path (events builds rows straight from result tuples) must give
    # exactly what the wire path gives after row_from_wire, page by page.
    a, b = writers(conn)
    written = SCENARIOS[stream](a, b)
    source = builtin_registry(engine=conn.engine).require(stream)
    assert isinstance(source, SqlStreamSource)
    head = max(token for _, token, _ in written)
    for writer in WRITERS:
        wire = list(iter_pages(conn, source, writer, 0, head, page_size))
        typed = list(iter_group_pages(conn, source, writer, 0, head, page_size))
        assert [(p.upto_token, p.limited) for p in typed] == [
            (p.upto_token, p.limited) for p in wire
        ]
        for w, t in zip(wire, typed, strict=True):
            assert t.groups == _typed_groups_of(source, w.rows)
            assert [[type(r) for r in g[1]] for g in t.groups] == [
                [type(r) for r in g[1]] for g in _typed_groups_of(source, w.rows)
            ]


def test_typed_groups_collapse_busy_rooms_like_the_wire_rows(
    conn: DbConnection,
) -> None:
    a, _ = writers(conn)
    a.send_event("!busy:t", "m.room.message")
    token, _ = a.set_state("!busy:t", [("m.x", str(i), "$e") for i in range(150)])
    t2, _ = a.set_state("!calm:t", [("m.x", "k", "$e")])
    source = EventsSource()
    assert (
        EventsAllStateRow("!busy:t")
        in dict(source.read_groups(conn, "master", 0, t2, 1000).groups)[token]
    )
    wire = source.read_rows(conn, "master", 0, t2, 1000)
    typed = source.read_groups(conn, "master", 0, t2, 1000)
    assert typed.groups == _typed_groups_of(source, wire.rows)


def test_backfill_tokens_are_positive_and_ascending(conn: DbConnection) -> None:
    a, _ = writers(conn)
    tokens = [a.backfill_event("!r:t", "m.room.message")[0] for _ in range(5)]
    stored = [
        r[0]
        for r in conn.fetchall(
            "SELECT stream_ordering FROM events ORDER BY stream_ordering"
        )
    ]
    assert stored == sorted(-t for t in tokens)
    got = [
        t
        for t, _ in iter_rows(
            conn, builtin_registry().require("backfill"), "master", 0, tokens[-1], 2
        )
    ]
    assert got == tokens
    # Backfilled events never show up on the events stream.
    assert list(iter_rows(conn, EventsSource(), "master", 0, 1000, 10)) == []


def test_to_device_window_keeps_one_row_per_entity_at_its_highest_token(
    conn: DbConnection,
) -> None:
    a, _ = writers(conn)
    a.send_to_device([("@a:t", "D", {})])
    t2, _ = a.send_to_device([("@a:t", "D", {}), ("@b:t", "D", {})])
    a.allocate("to_device", 50)  # a gap with no rows
    t3, _ = a.send_to_device([("@c:t", "D", {})])
    source = ToDeviceSource()
    page = source.read_rows(conn, "master", 0, t3, 10)
    assert page.rows == [(t2, ["@a:t"]), (t2, ["@b:t"])]
    assert (page.upto_token, page.limited) == (10, True)  # the window (0, 0 + limit]
    empty = source.read_rows(conn, "master", 10, t3, 10)
    # (10, 20] holds nothing: the page ends just before the next row instead.
    assert empty == RowsPage([], t3 - 1, True)
    assert source.read_rows(conn, "master", empty.upto_token, t3, 10) == RowsPage(
        [(t3, ["@c:t"])], t3, False
    )


def test_device_lists_without_per_writer_filter_return_every_writers_rows(
    conn: DbConnection,
) -> None:
    a, b = writers(conn)
    written = _device_lists(a, b)
    head = max(t for _, t, _ in written)
    everyone = sorted(
        ((t, row) for _, t, rows in written for row in rows), key=lambda r: r[0]
    )
    assert (
        list(iter_rows(conn, DeviceListsSource(per_writer=False), "anyone", 0, head, 2))
        == everyone
    )


def test_rows_without_instance_name_belong_to_master(conn: DbConnection) -> None:
    a, b = writers(conn)
    t1, rows = a.send_event("!r:t", "m.room.message")
    b.send_event("!r:t", "m.room.message")
    conn.execute(
        "UPDATE events SET instance_name = NULL WHERE stream_ordering = ?", (t1,)
    )
    assert list(iter_rows(conn, EventsSource(), "master", 0, t1 + 1, 10)) == [
        (t1, rows[0])
    ]
    assert [
        t for t, _ in iter_rows(conn, EventsSource(), "worker1", 0, t1 + 1, 10)
    ] == [t1 + 1]


def test_caches_is_postgresql_only(tmp_path: Path) -> None:
    db = connect(tmp_path / "x.db", create=True)
    create_synapse_tables(db)
    assert "caches" not in builtin_registry(engine="sqlite")
    with pytest.raises(BackfillError) as info:
        builtin_registry().require("caches").read_rows(db, "master", 0, 1, 1)
    assert not info.value.retriable
    with pytest.raises(ConfigError):
        SynapseWriter(db).invalidate_cache("f", None)
    db.close()


def test_caches_backfill_is_bounded_above(pg_conn: DbConnection) -> None:
    a, _ = writers(pg_conn)
    t1, rows = a.invalidate_cache("f", ["k"])
    a.invalidate_cache("g", ["k"])
    page = builtin_registry().require("caches").read_rows(pg_conn, "master", 0, t1, 10)
    assert page == RowsPage([(t1, rows[0])], t1, False)


def test_bulk_events_read_back_exactly(pg_conn: DbConnection) -> None:
    a, b = writers(pg_conn)
    b.send_event("!r:t", "m.room.message")
    result = a.bulk_events(
        2500,
        room_ids=["!a:t", "!b:t"],
        batch_size=1000,
        collect_rows=True,
        with_json=True,
    )
    assert result.count == len(result.rows) == 2500
    got = list(iter_rows(pg_conn, EventsSource(), "master", 0, result.last_token, 700))
    assert got == result.rows
    assert EventsSource().read_positions(pg_conn)["master"] == result.last_token


# -- registry and connections ----------------------------------------------------------


def test_registry_knows_live_only_streams_and_rejects_unknown_ones() -> None:
    registry = builtin_registry()
    for name in LIVE_ONLY_STREAMS:
        assert registry.is_live_only(name)
        with pytest.raises(BackfillError):
            registry.require(name)
    with pytest.raises(UnknownStreamError):
        registry.source("nope")
    with pytest.raises(ConfigError):
        registry.register("events", None)
    with pytest.raises(ConfigError):
        registry.register("bad name", None)


def test_a_user_stream_can_be_registered_and_backfilled(conn: DbConnection) -> None:
    conn.execute(
        "CREATE TABLE my_stream (stream_id BIGINT NOT NULL, instance_name TEXT, payload TEXT NOT NULL)"
    )
    conn.executemany(
        "INSERT INTO my_stream (stream_id, instance_name, payload) VALUES (?, ?, ?)",
        [
            (1, "master", "a"),
            (2, "worker1", "b"),
            (2, "master", "c"),
            (2, "master", "d"),
            (3, "master", "e"),
        ],
    )
    source = SqlStreamSource(
        "my_stream",
        [
            TableQuery(
                select="SELECT stream_id, payload FROM my_stream",
                id_column="stream_id",
                build=lambda r: [r[1]],
                tiebreak="payload",
            )
        ],
        None,
    )
    registry: SourceRegistry = builtin_registry()
    registry.register("my_stream", source)
    assert isinstance(source, StreamSource)
    got = list(iter_rows(conn, registry.require("my_stream"), "master", 0, 3, 1))
    assert got == [(1, ["a"]), (2, ["c"]), (2, ["d"]), (3, ["e"])]


def test_connect_rejects_unknown_schemes_and_reports_unreachable_postgres_as_retriable() -> (
    None
):
    with pytest.raises(ConfigError, match="unsupported database URL scheme 'mysql'"):
        connect("mysql://x")
    with pytest.raises(BackfillError) as down:
        connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout_s=1)
    assert down.value.retriable


def test_missing_table_is_not_retriable(tmp_path: Path) -> None:
    db = connect(f"sqlite://{tmp_path}/empty.db", create=True)
    with pytest.raises(BackfillError) as info:
        EventsSource().read_rows(db, "master", 0, 10, 10)
    assert not info.value.retriable
    db.close()


def test_a_libpq_key_value_dsn_reaches_postgresql_as_it_is(pg_dsn: str) -> None:
    keywords = conninfo_to_dict(pg_dsn)
    key_value = " ".join(f"{k}={v}" for k, v in sorted(keywords.items()))
    assert "://" not in key_value
    with connect(key_value) as db:
        assert db.engine == "postgresql"
        assert db.fetchone("SELECT current_database()") == (keywords["dbname"],)


def test_an_unreachable_key_value_dsn_is_retriable_and_hides_its_password() -> None:
    secret = "s3cr3t-in-the-dsn"  # noqa: S105 (a test value)
    dsn = f"host=127.0.0.1 port=1 dbname=x user=u password={secret}"
    with pytest.raises(BackfillError) as down:
        connect(dsn, connect_timeout_s=1)
    assert down.value.retriable
    assert secret not in str(down.value)
    assert "\n" not in str(down.value)  # libpq's hint line is folded into one line


def test_connect_never_creates_a_file_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "homeserver.db"
    with pytest.raises(ConfigError, match="does not exist"):
        connect(f"sqlite:///{missing}")
    with pytest.raises(ConfigError, match="not a database DSN"):
        connect(str(missing))
    with pytest.raises(ConfigError, match="not a valid libpq key=value string"):
        connect("host=127.0.0.1 dbname=synapse password=x y")
    assert list(tmp_path.iterdir()) == []
    with connect(f"sqlite:///{missing}", create=True) as db:  # the dev stack's way
        create_synapse_tables(db)
    with connect(f"sqlite:///{missing}") as db:  # now it exists: opened as it is
        assert db.fetchone("SELECT COUNT(*) FROM events") == (0,)
    assert [p.name for p in tmp_path.iterdir()] == ["homeserver.db"]
