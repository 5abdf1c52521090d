"""Generated Avro readers: equal to fastavro on valid bytes, strict on invalid ones."""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.codec.avro_codec import Codec, default_codec
from adapter.codec.avro_compiled import (
    CompiledReader,
    CompiledWriter,
    UnsupportedSchema,
)
from adapter.codec.schemas import AvroSchema, default_schema_set
from adapter.core.commands import Command, RdataCommand
from adapter.core.errors import DecodeError, EncodeError
from adapter.core.ports import StreamUpdate
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.core.rows import TypingRow
from tests.unit.data.strategies import kafka_commands, presence_snapshots

# Every Avro type the generator reads, including a union of records (read through a
# table), a recursive record and a map.
EVERYTHING = parse_schema(
    {
        "type": "record",
        "name": "t.All",
        "fields": [
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "by", "type": "bytes"},
            {"name": "s", "type": "string"},
            {"name": "b", "type": "boolean"},
            {"name": "n", "type": "null"},
            {
                "name": "e",
                "type": {"type": "enum", "name": "t.E", "symbols": ["A", "B"]},
            },
            {"name": "x", "type": {"type": "fixed", "name": "t.F", "size": 3}},
            {"name": "m", "type": {"type": "map", "values": ["null", "long"]}},
            {"name": "a", "type": {"type": "array", "items": "string"}},
            {
                "name": "u",
                "type": [
                    {
                        "type": "record",
                        "name": "t.R1",
                        "fields": [{"name": "a", "type": "long"}],
                    },
                    {
                        "type": "record",
                        "name": "t.R2",
                        "fields": [
                            {"name": "a", "type": "string"},
                            {"name": "b", "type": "string"},
                        ],
                    },
                    {"type": "record", "name": "t.R3", "fields": []},
                ],
            },
            {
                "name": "list",
                "type": [
                    "null",
                    {
                        "type": "record",
                        "name": "t.Node",
                        "fields": [
                            {"name": "v", "type": "long"},
                            {"name": "next", "type": ["null", "t.Node"]},
                        ],
                    },
                ],
            },
        ],
    }
)

_LONGS = st.integers(-(2**63), 2**63 - 1)
_F32 = st.floats(width=32, allow_nan=False)


def _node(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return st.none()
    return st.one_of(
        st.none(), st.fixed_dictionaries({"v": _LONGS, "next": _node(depth - 1)})
    )


everything = st.fixed_dictionaries(
    {
        "i": st.integers(-(2**31), 2**31 - 1),
        "l": _LONGS,
        "f": _F32,
        "d": st.floats(allow_nan=False),
        "by": st.binary(max_size=20),
        "s": st.text(max_size=20),
        "b": st.booleans(),
        "n": st.none(),
        "e": st.sampled_from(["A", "B"]),
        "x": st.binary(min_size=3, max_size=3),
        "m": st.dictionaries(st.text(max_size=5), st.none() | _LONGS, max_size=4),
        "a": st.lists(st.text(max_size=5), max_size=4),
        "u": st.one_of(
            st.tuples(st.just("t.R1"), st.fixed_dictionaries({"a": _LONGS})),
            st.tuples(
                st.just("t.R2"),
                st.fixed_dictionaries(
                    {"a": st.text(max_size=4), "b": st.text(max_size=4)}
                ),
            ),
            st.tuples(st.just("t.R3"), st.just({})),
        ),
        "list": _node(3),
    }
)


def _write(schema: AvroSchema, datum: Any) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, schema, datum)
    return out.getvalue()


def _fastavro(schema: AvroSchema, data: bytes) -> Any:
    return schemaless_reader(io.BytesIO(data), schema)


@settings(max_examples=300, deadline=None)
@given(everything)
def test_every_type_reads_as_fastavro_reads_it(datum: dict[str, Any]) -> None:
    data = _write(EVERYTHING, datum)
    value, end = CompiledReader(EVERYTHING).read(b"xyz" + data, 3)
    assert end == 3 + len(data)
    assert value == _fastavro(EVERYTHING, data)


@settings(max_examples=100, deadline=None)
@given(everything)
def test_every_strict_prefix_of_a_value_is_refused(datum: dict[str, Any]) -> None:
    data = _write(EVERYTHING, datum)
    reader = CompiledReader(EVERYTHING)
    for cut in range(len(data)):
        with pytest.raises((IndexError, EOFError, ValueError)):
            reader.read(data[:cut])


@pytest.mark.parametrize(
    "name", sorted(default_schema_set().current), ids=lambda n: n.rsplit(".", 1)[-1]
)
def test_every_current_schema_is_generated(name: str) -> None:
    # Our own schemas must not silently fall back to fastavro.
    CompiledReader(default_schema_set().current[name].parsed)


def test_the_codec_reads_every_root_type_with_generated_readers() -> None:
    codec = default_codec()
    roots = {v.name for v in codec.schemas.current.values() if "row." not in v.name}
    assert codec.generated_roots == roots - {"synkafka.presence.SyncingDevice"}


_BOTH = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
_FASTAVRO_ONLY = Codec(default_schema_set(), generated=False)


@_BOTH
@given(st.one_of(kafka_commands, presence_snapshots))
def test_the_generated_path_decodes_what_the_fastavro_path_decodes(
    record: Command | PresenceSnapshot,
) -> None:
    data = default_codec().encode(record)
    assert default_codec().decode(data) == _FASTAVRO_ONLY.decode(data) == record


def test_builders_get_the_field_values_in_schema_order() -> None:
    schema = parse_schema(
        {
            "type": "record",
            "name": "t.P",
            "fields": [
                {"name": "b", "type": "string"},
                {"name": "a", "type": "long"},
                {
                    "name": "kids",
                    "type": {
                        "type": "array",
                        "items": {
                            "type": "record",
                            "name": "t.K",
                            "fields": [{"name": "k", "type": "long"}],
                        },
                    },
                },
            ],
        }
    )
    data = _write(schema, {"b": "x", "a": -3, "kids": [{"k": 1}, {"k": 2}]})
    reader = CompiledReader(
        schema, {"t.P": lambda *v: ("P", *v), "t.K": lambda k: ("K", k)}
    )
    assert reader.read(data) == (("P", "x", -3, [("K", 1), ("K", 2)]), len(data))


_STRING = parse_schema(
    {"type": "record", "name": "t.S", "fields": [{"name": "s", "type": "string"}]}
)


@pytest.mark.parametrize(
    ("schema", "data", "message"),
    [
        ("boolean", b"\x02", "boolean byte 2"),
        (["null", "string"], b"\x04", "union index 2 out of range"),
        (["null", "string"], b"\x01", "union index -1 out of range"),
        ("string", b"\x01", "negative length -1"),
        ("long", b"\xff" * 10 + b"\x01", "longer than ten bytes"),
        ("long", b"\xff" * 9 + b"\x7f", "beyond 64 bits"),
        ("int", b"\x80\x80\x80\x80\x10", "outside 32 bits"),
        ({"type": "enum", "name": "t.E", "symbols": ["A"]}, b"\x02", "enum index 1"),
        ({"type": "array", "items": "long"}, b"\x40\x02", "need 32 bytes"),
        ("string", b"\x06ab", "need 3 bytes"),
        ("double", b"\x00" * 7, "need 8 bytes"),
    ],
)
def test_bytes_no_writer_produces_are_refused(
    schema: Any, data: bytes, message: str
) -> None:
    with pytest.raises((ValueError, EOFError), match=message):
        CompiledReader(parse_schema(schema)).read(data)


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(UnicodeDecodeError):
        CompiledReader(_STRING).read(b"\x04\xff\xfe")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "array", "items": "null"},
        {
            "type": "array",
            "items": {"type": "record", "name": "t.Empty", "fields": []},
        },
    ],
)
def test_schemas_it_does_not_generate_are_declined(schema: Any) -> None:
    with pytest.raises(UnsupportedSchema):
        CompiledReader(parse_schema(schema))


@_BOTH
@given(kafka_commands)
def test_decode_update_gives_an_rdata_as_the_live_update_and_the_rest_as_decode(
    command: Command,
) -> None:
    codec = default_codec()
    data = codec.encode(command)
    got = codec.decode_update(data)
    if isinstance(command, RdataCommand):
        assert got == StreamUpdate(
            command.stream_name,
            command.instance_name,
            command.token or 0,
            command.rows,
            "kafka",
        )
        # Not bytes: the general path, same record.
        assert codec.decode_update(memoryview(data)) == command  # type: ignore[arg-type]
    else:
        assert got == command


def test_decode_update_refuses_an_rdata_row_of_another_stream() -> None:
    codec = default_codec()
    typing = codec.encode(
        RdataCommand("typing", "master", 3, (TypingRow("!r:x", ("@a:x",)),))
    )
    # The typing RDATA's header, a body whose rows belong to another stream.
    schema = codec.schemas.current["synkafka.command.Rdata"].parsed
    body = _write(
        schema,
        {
            "stream_name": "receipts",
            "instance_name": "master",
            "token": 3,
            "rows": [("synkafka.row.Typing", {"room_id": "!r:x", "user_ids": []})],
        },
    )
    with pytest.raises(DecodeError, match="not one of its rows"):
        codec.decode_update(typing[:10] + body)


# --- Writers ---------------------------------------------------------------------


class R1(NamedTuple):
    a: int


class R2(NamedTuple):
    a: str
    b: str


class R3(NamedTuple):
    pass


_BRANCHES: dict[str, type[Any]] = {"t.R1": R1, "t.R2": R2, "t.R3": R3}


@settings(max_examples=300, deadline=None)
@given(everything)
def test_every_type_writes_as_fastavro_writes_it(datum: dict[str, Any]) -> None:
    name, fields = datum["u"]
    as_objects = {**datum, "u": _BRANCHES[name](**fields)}
    writer = CompiledWriter(EVERYTHING, _BRANCHES, prefix=b"HDR")
    assert writer.write(as_objects) == b"HDR" + _write(EVERYTHING, datum)


def test_the_codec_writes_every_root_type_with_generated_writers() -> None:
    codec = default_codec()
    assert codec.generated_writers == codec.generated_roots


@_BOTH
@given(st.one_of(kafka_commands, presence_snapshots))
def test_the_generated_writer_writes_what_the_fastavro_path_writes(
    record: Command | PresenceSnapshot,
) -> None:
    assert default_codec().encode(record) == _FASTAVRO_ONLY.encode(record)


_LONG = parse_schema(
    {"type": "record", "name": "t.L", "fields": [{"name": "x", "type": "long"}]}
)


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        (_LONG, {"x": True}),
        (_LONG, {"x": 1.0}),
        (_LONG, {"x": 2**63}),
        (_LONG, {"x": None}),
        (_STRING, {"s": b"bytes"}),
        (_STRING, {"s": "\udc80"}),
        (EVERYTHING, {}),
    ],
)
def test_values_that_do_not_fit_are_refused(schema: Any, value: Any) -> None:
    # The codec then asks fastavro, whose error names the field.
    with pytest.raises((TypeError, ValueError, KeyError)):
        CompiledWriter(schema).write(value)


def test_a_record_of_another_class_in_a_union_is_refused() -> None:
    whole: Any = EVERYTHING
    schema = parse_schema({"type": "array", "items": whole["fields"][12]["type"]})
    writer = CompiledWriter(schema, _BRANCHES)
    assert writer.write([R1(5)]) == _write(schema, [("t.R1", {"a": 5})])
    with pytest.raises(KeyError):
        writer.write([("t.R1", {"a": 5})])


def test_an_rdata_with_a_row_of_another_stream_still_names_it() -> None:
    command = RdataCommand("events", "master", 3, (TypingRow("!r:x", ()),))
    with pytest.raises(EncodeError) as caught:
        default_codec().encode(command)
    assert caught.value.path == "rows[0]"
