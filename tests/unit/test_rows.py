from __future__ import annotations

import pytest
from hypothesis import given, settings

from adapter.core.errors import DecodeError, EncodeError, UnknownStreamError
from adapter.core.rows import (
    ROW_CLASSES,
    ROW_TYPES_BY_STREAM,
    STREAM_NAMES,
    CachesRow,
    DeviceListsRow,
    EventsAllStateRow,
    EventsCurrentStateRow,
    EventsEventRow,
    PresenceRow,
    ProfileUpdatesRow,
    QuarantinedMediaRow,
    ReceiptsRow,
    Row,
    TypingRow,
    dumps_json,
    loads_json,
    row_from_wire,
    row_to_wire,
    row_types,
)
from tests.unit.data.strategies import ANY_ROW


def test_stream_names_are_the_19_of_synapse_1_163() -> None:
    assert len(STREAM_NAMES) == 19
    assert len(set(STREAM_NAMES)) == 19
    assert "profile_updates" in STREAM_NAMES
    assert set(ROW_TYPES_BY_STREAM) == set(STREAM_NAMES)


def test_every_row_class_belongs_to_exactly_one_stream() -> None:
    listed = [cls for classes in ROW_TYPES_BY_STREAM.values() for cls in classes]
    assert sorted(listed, key=lambda c: c.__name__) == sorted(
        ROW_CLASSES, key=lambda c: c.__name__
    )


def test_events_stream_has_three_row_types() -> None:
    assert row_types("events") == (
        EventsEventRow,
        EventsCurrentStateRow,
        EventsAllStateRow,
    )


def test_row_types_of_unknown_stream_raises_unknown_stream_error() -> None:
    with pytest.raises(UnknownStreamError):
        row_types("groups")


def test_row_from_wire_unknown_stream_is_both_decode_and_unknown_stream_error() -> None:
    with pytest.raises(UnknownStreamError) as info:
        row_from_wire("groups", ["x"])
    assert isinstance(info.value, DecodeError)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ([0, 0], (False, False)),
        ([1, 0], (True, False)),
        ([False, True], (False, True)),
        ([True, 1], (True, True)),
    ],
)
def test_sqlite_and_postgres_booleans_both_become_bool(
    wire: list[object], expected: tuple[bool, bool]
) -> None:
    row = row_from_wire("device_lists", ["@a:x", *wire])
    assert row == DeviceListsRow("@a:x", *expected)
    assert type(row.is_signature) is bool


@pytest.mark.parametrize("bad", [2, -1, "true", None, 0.0])
def test_boolean_field_rejects_other_values(bad: object) -> None:
    with pytest.raises(DecodeError, match="is_signature"):
        row_from_wire("device_lists", ["@a:x", bad, False])


def test_int_field_rejects_bool_and_float() -> None:
    with pytest.raises(DecodeError, match="last_active_ts"):
        row_from_wire("presence", ["@a:x", "online", True, 1, 1, None, True])
    with pytest.raises(DecodeError, match="last_active_ts"):
        row_from_wire("presence", ["@a:x", "online", 1.5, 1, 1, None, True])


def test_int_field_rejects_values_beyond_64_bits() -> None:
    with pytest.raises(DecodeError):
        row_from_wire("caches", ["f", None, 2**63])


def test_row_length_must_match_like_synapse_row_type() -> None:
    with pytest.raises(DecodeError, match="3 fields"):
        row_from_wire("device_lists", ["@a:x", False])
    with pytest.raises(DecodeError, match="3 fields"):
        row_from_wire("device_lists", ["@a:x", False, False, "extra"])


def test_events_row_needs_a_known_type_id() -> None:
    with pytest.raises(DecodeError, match="type id"):
        row_from_wire("events", ["evx", ["!r"]])
    with pytest.raises(DecodeError):
        row_from_wire("events", ["ev"])


def test_events_rows_round_trip_with_type_id() -> None:
    wire = ["state", ["!r:x", "m.room.name", "", None]]
    row = row_from_wire("events", wire)
    assert row == EventsCurrentStateRow("!r:x", "m.room.name", "", None)
    assert row_to_wire(row) == wire
    assert row_to_wire(EventsAllStateRow("!r:x")) == ["state-all", ["!r:x"]]


def test_receipt_data_is_kept_as_compact_json_text() -> None:
    row = row_from_wire(
        "receipts", ["!r", "m.read", "@u", "$e", None, {"ts": 1, "k": "café"}]
    )
    assert isinstance(row, ReceiptsRow)
    assert row.data == '{"ts":1,"k":"caf\\u00e9"}'
    assert row.parsed_data() == {"ts": 1, "k": "café"}
    assert row_to_wire(row)[-1] == {"ts": 1, "k": "café"}


def test_receipt_data_must_be_an_object() -> None:
    with pytest.raises(DecodeError, match="data"):
        row_from_wire("receipts", ["!r", "m.read", "@u", "$e", None, [1]])


def test_cache_keys_null_means_whole_cache() -> None:
    row = row_from_wire("caches", ["get_users_in_room", None, 5])
    assert row == CachesRow("get_users_in_room", None, 5)
    assert row.parsed_keys() is None
    assert row_to_wire(row) == ["get_users_in_room", None, 5]


def test_cache_keys_may_hold_lists_for_tuple_keys() -> None:
    keys = [["@a:x", "DEV"], "@b:x"]
    row = row_from_wire(
        "caches", ["_get_e2e_cross_signing_signatures_for_device", keys, 5]
    )
    assert isinstance(row, CachesRow)
    assert row.parsed_keys() == keys


def test_typing_and_profile_lists_become_tuples() -> None:
    assert row_from_wire("typing", ["!r", ["@a", "@b"]]) == TypingRow(
        "!r", ("@a", "@b")
    )
    assert row_from_wire(
        "profile_updates", ["@a", "update", ["displayname"]]
    ) == ProfileUpdatesRow("@a", "update", ("displayname",))
    assert row_from_wire("profile_updates", ["@a", "left_room", None]) == (
        ProfileUpdatesRow("@a", "left_room", None)
    )


def test_quarantined_media_origin_may_be_null() -> None:
    row = row_from_wire("quarantined_media", [None, "m1", True])
    assert row == QuarantinedMediaRow(None, "m1", True)


def test_presence_status_msg_may_be_null() -> None:
    row = row_from_wire("presence", ["@a", "online", 1, 2, 3, None, 0])
    assert row == PresenceRow("@a", "online", 1, 2, 3, None, False)


def test_row_to_wire_rejects_invalid_json_text() -> None:
    with pytest.raises(EncodeError) as info:
        row_to_wire(ReceiptsRow("!r", "m.read", "@u", "$e", None, "{not json"))
    assert info.value.path == "data"


def test_loads_json_refuses_nan_and_infinity_like_synapse() -> None:
    for text in ("NaN", "[Infinity]", "-Infinity"):
        with pytest.raises(DecodeError):
            loads_json(text)


def test_dumps_json_is_compact_and_ascii() -> None:
    assert dumps_json({"a": [1, "é"]}) == '{"a":[1,"\\u00e9"]}'


def test_rows_are_hashable() -> None:
    row = ReceiptsRow("!r", "m.read", "@u", "$e", None, "{}")
    assert hash(row) == hash(ReceiptsRow("!r", "m.read", "@u", "$e", None, "{}"))


@settings(max_examples=400, deadline=None)
@given(ANY_ROW)
def test_every_row_round_trips_through_synapse_json(row: Row) -> None:
    wire = loads_json(dumps_json(row_to_wire(row)))
    assert row_from_wire(row.STREAM_NAME, wire) == row
