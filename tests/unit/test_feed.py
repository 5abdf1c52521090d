"""The event feed's rules, its record, its topic, and the database read behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter.codec.avro_codec import decode, encode
from adapter.core import topics
from adapter.core.errors import ConfigError
from adapter.core.feed import (
    Duplicate,
    FeedEvent,
    FeedInput,
    Missing,
    Publish,
    RecentEvents,
    advance_tokens,
    feed_decisions,
    feed_event_ids,
    feed_event_to_json,
    plan_batch,
)
from adapter.core.rows import EventsAllStateRow, EventsCurrentStateRow, EventsEventRow
from adapter.io.db.connection import connect
from adapter.io.db.event_content import MAX_IDS_PER_QUERY, read_feed_events
from adapter.io.db.synapse_schema import create_synapse_tables


def _stored(event_id: str, room: str = "!r:x", **changes: object) -> FeedEvent:
    fields: dict[str, object] = {
        "event_id": event_id,
        "room_id": room,
        "type": "m.room.message",
        "state_key": None,
        "sender": "@a:x",
        "origin_server_ts": 1_700_000_000_000,
        "stream_ordering": 7,
        "instance_name": "persister1",
        "outlier": False,
        "rejected": False,
        "rejection_reason": None,
        "redacts": None,
        "format_version": 3,
        "json": json.dumps({"event_id": event_id, "content": {"body": "hi"}}),
    }
    fields.update(changes)
    return FeedEvent(**fields)  # type: ignore[arg-type]


def _ev(event_id: str, room: str = "!r:x", *, outlier: bool = False) -> EventsEventRow:
    return EventsEventRow(
        event_id, room, "m.room.message", None, None, None, None, False, outlier
    )


# -- decisions, as transcripts: rows in, decisions out ----------------------------------


def test_each_ev_row_publishes_its_stored_event_in_row_order() -> None:
    rows = [_ev("$2"), _ev("$1"), _ev("$3", "!other:x")]
    stored = {e: _stored(e) for e in ("$1", "$2")} | {"$3": _stored("$3", "!other:x")}
    assert feed_decisions(rows, stored) == [
        Publish(stored["$2"]),
        Publish(stored["$1"]),
        Publish(stored["$3"]),
    ]


def test_state_rows_are_not_feed_records_and_need_no_content() -> None:
    rows = [
        EventsCurrentStateRow("!r:x", "m.room.name", "", "$1"),
        _ev("$1"),
        EventsAllStateRow("!r:x"),
    ]
    assert feed_event_ids(rows) == ["$1"]
    assert feed_decisions(rows, {"$1": _stored("$1")}) == [Publish(_stored("$1"))]


def test_an_event_the_database_no_longer_has_is_missing_not_skipped_silently() -> None:
    assert feed_decisions(
        [_ev("$gone", "!purged:x"), _ev("$1")], {"$1": _stored("$1")}
    ) == [
        Missing("$gone", "!purged:x", "no content in the database"),
        Publish(_stored("$1")),
    ]


def test_the_rows_outlier_flag_wins_over_the_tables_later_state() -> None:
    # Synapse sends a second ev row when it takes an event out of outlier state; by
    # the time the feed reads the table both rows see outlier = false.
    now = _stored("$1", outlier=False)
    decisions = feed_decisions([_ev("$1", outlier=True), _ev("$1")], {"$1": now})
    assert decisions == [Publish(_stored("$1", outlier=True)), Publish(now)]


def test_rejected_events_and_redactions_are_published_with_their_flags() -> None:
    rejected = _stored("$bad", rejected=True, rejection_reason="auth_error")
    redaction = _stored("$red", type="m.room.redaction", redacts="$1")
    decisions = feed_decisions(
        [_ev("$bad"), _ev("$red")], {"$bad": rejected, "$red": redaction}
    )
    assert decisions == [Publish(rejected), Publish(redaction)]


def test_a_re_sent_record_is_not_published_twice_within_a_batch_or_after_it() -> None:
    # A writer re-publishes its last records after a reconnect: same events, new offsets.
    stored = {"$1": _stored("$1"), "$2": _stored("$2")}
    first = FeedInput("t", 0, 10, (_ev("$1"),))
    again = FeedInput("t", 0, 11, (_ev("$1"), _ev("$2")))
    outputs, offsets = plan_batch([first, again], stored)
    assert outputs == [
        Publish(stored["$1"]),
        Duplicate("$1", outlier=False),
        Publish(stored["$2"]),
    ]
    assert offsets == {("t", 0): 12}
    recent = RecentEvents()
    recent.add([("$1", False), ("$2", False)])
    later, _ = plan_batch([FeedInput("t", 0, 12, (_ev("$2"), _ev("$2", outlier=True)))], stored, recent)  # fmt: skip
    assert later == [
        Duplicate("$2", outlier=False),
        Publish(_stored("$2", outlier=True)),
    ]


def test_the_recent_events_forget_the_oldest_beyond_their_limit() -> None:
    recent = RecentEvents(limit=2)
    recent.add([("$1", False), ("$2", False)])
    recent.add([("$1", False)])  # seen again: now the newest
    recent.add([("$3", False)])
    assert ("$2", False) not in recent
    assert ("$1", False) in recent
    assert ("$3", False) in recent
    assert len(recent) == 2


# -- the record and its topic ---------------------------------------------------------------


def test_a_feed_event_round_trips_through_avro_and_json() -> None:
    event = _stored(
        "$1", state_key="", rejected=True, rejection_reason="r", redacts="$0"
    )
    assert decode(encode(event)) == event
    as_json = feed_event_to_json(event)
    assert FeedEvent(**as_json) == event
    assert json.loads(json.dumps(as_json))["json"] == event.json  # stays Synapse's text


def test_the_feed_topic_is_room_keyed_and_as_wide_as_asked() -> None:
    spec = topics.feed_topic_spec("synapse.example_com", partitions=12)
    assert spec.name == "synapse.example_com.feed.events"
    assert spec.partitions == 12
    assert spec.config["cleanup.policy"] == "delete"
    assert topics.feed_group("synapse.example_com") == "synapse.example_com.feed"
    with pytest.raises(ConfigError, match="partitions must be >= 1"):
        topics.feed_topic_spec("p", partitions=0)


# -- the database read (a real SQLite file with Synapse's tables) ------------------------


def _database(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = connect(f"sqlite:///{tmp_path / 'homeserver.db'}", create=True)
    create_synapse_tables(db)
    return db


def _insert(db, event: FeedEvent) -> None:  # type: ignore[no-untyped-def]
    db.execute(
        "INSERT INTO events (topological_ordering, event_id, type, room_id, processed,"
        " outlier, origin_server_ts, sender, instance_name, stream_ordering, state_key)"
        " VALUES (1, ?, ?, ?, TRUE, ?, ?, ?, ?, ?, ?)",
        (
            event.event_id, event.type, event.room_id, event.outlier,
            event.origin_server_ts, event.sender, event.instance_name,
            event.stream_ordering, event.state_key,
        ),
    )  # fmt: skip
    db.execute(
        "INSERT INTO event_json (event_id, room_id, internal_metadata, json,"
        " format_version) VALUES (?, ?, '{}', ?, ?)",
        (event.event_id, event.room_id, event.json, event.format_version),
    )
    if event.rejection_reason is not None:
        db.execute(
            "INSERT INTO rejections (event_id, reason, last_check) VALUES (?, ?, '1')",
            (event.event_id, event.rejection_reason),
        )
    if event.redacts is not None:
        db.execute(
            "INSERT INTO redactions (event_id, redacts) VALUES (?, ?)",
            (event.event_id, event.redacts),
        )


def test_the_database_read_returns_each_event_as_stored(tmp_path: Path) -> None:
    db = _database(tmp_path)
    events = [
        _stored("$1"),
        _stored("$2", state_key="@a:x", type="m.room.member", stream_ordering=8),
        _stored(
            "$3",
            rejected=True,
            rejection_reason="auth_error",
            outlier=True,
            stream_ordering=9,
        ),
        _stored(
            "$4",
            type="m.room.redaction",
            redacts="$1",
            format_version=None,
            stream_ordering=10,
        ),
    ]
    for event in events:
        _insert(db, event)
    found = read_feed_events(db, ["$4", "$missing", "$1", "$2", "$3", "$1"])
    assert found == {e.event_id: e for e in events}
    db.close()


def test_the_database_read_splits_long_id_lists(tmp_path: Path) -> None:
    db = _database(tmp_path)
    ids = [f"${n}" for n in range(MAX_IDS_PER_QUERY * 2 + 3)]
    with db.transaction() as tx:  # one commit, not one fsync per row
        for n, event_id in enumerate(ids):
            _insert(tx, _stored(event_id, stream_ordering=n))
    found = read_feed_events(db, ids)
    assert sorted(found) == sorted(ids)
    assert found[ids[-1]].stream_ordering == len(ids) - 1
    db.close()


def test_a_record_at_or_below_its_writers_committed_token_is_a_re_send() -> None:
    def rdata(offset: int, writer: str, token: int, event_id: str) -> FeedInput:
        return FeedInput("t", 0, offset, (_ev(event_id),), writer=writer, token=token)

    stored = {e: _stored(e) for e in ("$4", "$5", "$6", "$9")}
    inputs = [
        rdata(10, "p1", 4, "$4"),  # at the committed token: re-sent
        rdata(11, "p1", 5, "$5"),
        rdata(12, "p1", 5, "$5"),  # again within the batch
        rdata(13, "p2", 9, "$9"),  # another writer, its own token
        rdata(14, "p1", 6, "$6"),
    ]
    outputs, offsets = plan_batch(inputs, stored, (), {"p1": 4, "p2": 8})
    assert outputs == [
        Duplicate("$4", False),
        Publish(stored["$5"]),
        Duplicate("$5", False),
        Publish(stored["$9"]),
        Publish(stored["$6"]),
    ]
    assert offsets == {("t", 0): 15}  # every input accounted for, re-sends included
    assert advance_tokens(inputs, {"p1": 4, "p2": 8}) == {"p1": 6, "p2": 9}
