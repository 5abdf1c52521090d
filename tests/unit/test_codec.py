from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import adapter
from adapter.cli._app import app
from adapter.codec.avro_codec import (
    MAGIC,
    Codec,
    Payload,
    decode,
    default_codec,
    encode,
)
from adapter.codec.schemas import load_schema_set, schema_dir
from adapter.core.commands import (
    ClearUserSyncsCommand,
    Command,
    ErrorCommand,
    FederationAckCommand,
    LockReleasedCommand,
    PingCommand,
    PositionCommand,
    RdataCommand,
    ReplicateCommand,
    UserIpCommand,
    UserSyncCommand,
    parse_line,
)
from adapter.core.errors import (
    DecodeError,
    EncodeError,
    UnknownStreamDecodeError,
    UnknownStreamError,
)
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from adapter.core.rows import (
    CachesRow,
    EventsAllStateRow,
    EventsCurrentStateRow,
    EventsEventRow,
    FederationRow,
    PresenceRow,
    ProfileUpdatesRow,
    ReceiptsRow,
    TypingRow,
)
from tests.unit.data.strategies import kafka_commands, presence_snapshots
from tests.unit.test_commands import CASES

GOLDEN_DIR = Path(__file__).parents[1] / "golden"
REGENERATE_ENV = "SYNKAFKA_REGENERATE_GOLDEN"

EV = EventsEventRow(
    "$UQVYQ0123456789abcdefghijklmnopqrstuvwxyzAB",
    "!SDRUfHqzXWbOvjcRnp:test.local",
    "m.room.member",
    "@bob:test.local",
    None,
    None,
    "join",
    False,
    False,
)
GOLDEN: dict[str, Payload] = {
    "rdata_events": RdataCommand(
        "events",
        "master",
        4,
        (
            EV,
            EventsCurrentStateRow(EV.room_id, EV.type, "@bob:test.local", EV.event_id),
        ),
    ),
    "rdata_receipts": RdataCommand(
        "receipts",
        "master",
        2,
        (
            ReceiptsRow(
                EV.room_id,
                "m.read",
                "@bob:test.local",
                EV.event_id,
                None,
                '{"ts":1795882765994}',
            ),
        ),
    ),
    "rdata_presence": RdataCommand(
        "presence",
        "master",
        4,
        (
            PresenceRow(
                "@bob:test.local",
                "online",
                1795882766021,
                1795882766021,
                1795882764928,
                None,
                True,
            ),
        ),
    ),
    "rdata_typing": RdataCommand(
        "typing", "master", 1, (TypingRow(EV.room_id, ("@bob:test.local",)),)
    ),
    "rdata_caches": RdataCommand(
        "caches",
        "worker1",
        54,
        (CachesRow("get_device", '["@alice:test.local","ALICEDEV"]', 1795882969840),),
    ),
    "rdata_federation": RdataCommand(
        "federation", "master", 9, (FederationRow("e", '{"edu_type":"m.typing"}'),)
    ),
    "rdata_profile_updates": RdataCommand(
        "profile_updates",
        "master",
        2,
        (ProfileUpdatesRow("@a:test.local", "update", ("displayname",)),),
    ),
    "position": PositionCommand("receipts", "master", 2, 3),
    "replicate": ReplicateCommand(),
    "user_sync": UserSyncCommand(
        "tNKGG", "@bob:test.local", "BOBDEV", True, 1795882881365
    ),
    "user_sync_no_device": UserSyncCommand(
        "tNKGG", "@bob:test.local", None, False, 1795882883453
    ),
    "clear_user_sync": ClearUserSyncsCommand("tNKGG"),
    "federation_ack": FederationAckCommand("federation_sender1", 1518),
    "user_ip": UserIpCommand(
        "@bob:test.local",
        "syt_masked_xxxxxxxxxxxxxxxxxxxx_000000",
        "127.0.0.1",
        "Python-urllib/3.11",
        "BOBDEV",
        1795882881355,
    ),
    "lock_released": LockReleasedCommand(
        "master", "new_event_during_purge_lock", EV.room_id
    ),
    "ping": PingCommand("1795882881365"),
    "error": ErrorCommand("Wrong remote"),
    "presence_snapshot": PresenceSnapshot(
        "tNKGG",
        "worker1",
        1795882881365,
        (
            SyncingDevice("@alice:test.local", None, 1795882881000),
            SyncingDevice("@bob:test.local", "BOBDEV", 1795882881365),
        ),
    ),
}


# --- Golden bytes -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes(name: str) -> None:
    """Encoding is stable; regenerate on purpose with SYNKAFKA_REGENERATE_GOLDEN=1."""
    path = GOLDEN_DIR / f"{name}.bin"
    record = GOLDEN[name]
    if os.environ.get(REGENERATE_ENV):
        path.write_bytes(encode(record))
        pytest.skip(f"regenerated {path.name}")
    golden = path.read_bytes()
    assert decode(golden) == record
    assert encode(record) == golden


def test_golden_covers_every_root_type() -> None:
    assert {type(r) for r in GOLDEN.values()} >= {
        RdataCommand, PositionCommand, ReplicateCommand, UserSyncCommand,
        ClearUserSyncsCommand, FederationAckCommand, UserIpCommand,
        LockReleasedCommand, PingCommand, PresenceSnapshot,
    }  # fmt: skip


def test_framing_is_avro_single_object_encoding() -> None:
    data = encode(ReplicateCommand())
    version = default_codec().schemas.current["synkafka.command.Replicate"]
    assert data == MAGIC + version.fingerprint  # no fields: empty body
    assert len(version.fingerprint) == 8


# --- Round trips --------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(kafka_commands)
def test_every_command_round_trips_through_avro(command: Command) -> None:
    assert decode(encode(command)) == command


@settings(max_examples=100, deadline=None)
@given(presence_snapshots)
def test_presence_snapshot_round_trips_through_avro(snapshot: PresenceSnapshot) -> None:
    assert decode(encode(snapshot)) == snapshot


@pytest.mark.parametrize(("line", "_expected"), CASES, ids=[c[0][:50] for c in CASES])
def test_every_example_line_survives_avro(line: str, _expected: str) -> None:
    command = parse_line(line)
    if isinstance(command, RdataCommand) and command.token is None:
        command = RdataCommand(
            command.stream_name, command.instance_name, 1, command.rows
        )
    assert decode(encode(command)) == command


def test_public_api_is_reexported() -> None:
    assert adapter.encode is encode
    assert adapter.decode is decode
    assert adapter.parse_line is parse_line
    assert adapter.DecodeError is DecodeError
    assert adapter.EncodeError is EncodeError


# --- Encode errors ------------------------------------------------------------------


def test_rdata_with_batch_token_cannot_be_encoded() -> None:
    with pytest.raises(EncodeError, match="batches are joined") as info:
        encode(RdataCommand("typing", "master", None, (TypingRow("!r", ()),)))
    assert info.value.path == "token"


def test_rdata_without_rows_cannot_be_encoded() -> None:
    with pytest.raises(EncodeError) as info:
        encode(RdataCommand("typing", "master", 1, ()))
    assert info.value.path == "rows"


def test_rdata_row_of_another_stream_names_its_index() -> None:
    rows = (TypingRow("!r", ()), CachesRow("f", None, 1))
    with pytest.raises(EncodeError) as info:
        encode(RdataCommand("typing", "master", 1, rows))
    assert info.value.path == "rows[1]"


# Values of the wrong type, as an untyped caller could pass them.
BAD_INT: Any = 5
BAD_STR: Any = "1"
BAD_NONE: Any = None


@pytest.mark.parametrize(
    ("record", "path"),
    [
        (
            RdataCommand(
                "events",
                "m",
                1,
                (
                    EventsEventRow(
                        "$e", "!r", BAD_INT, None, None, None, None, False, False
                    ),
                ),
            ),
            "rows[0].type",
        ),
        (RdataCommand("events", "m", 2**63, (EV,)), "token"),
        (PositionCommand("events", "master", BAD_STR, 2), "prev_token"),
        (UserSyncCommand("i", "@u", None, True, BAD_NONE), "last_sync_ms"),
        (PingCommand("\ud800"), "data"),
        (
            PresenceSnapshot("i", "w", 1, (SyncingDevice("@u", BAD_INT, 1),)),
            "syncing[0].device_id",
        ),
    ],
)
def test_encode_error_names_the_field_path(record: Payload, path: str) -> None:
    with pytest.raises(EncodeError) as info:
        encode(record)
    assert info.value.path == path


def test_encoding_something_else_is_an_encode_error() -> None:
    with pytest.raises(EncodeError):
        encode("PING 1")  # type: ignore[arg-type]


# --- Decode errors ------------------------------------------------------------------


def test_truncated_header_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode(b"\xc3\x01abc")


def test_wrong_magic_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="single-object"):
        decode(b"\x00" + encode(ReplicateCommand())[1:])


def test_unknown_fingerprint_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        decode(MAGIC + b"\x00" * 8)


def test_truncated_body_is_a_decode_error() -> None:
    data = encode(GOLDEN["rdata_events"])
    with pytest.raises(DecodeError, match=r"corrupt synkafka\.command\.Rdata"):
        decode(data[:-5])


def test_trailing_bytes_are_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="after the end"):
        decode(encode(PingCommand("x")) + b"\x00")


def test_rdata_of_unknown_stream_is_an_unknown_stream_decode_error() -> None:
    schema = default_codec().schemas.current["synkafka.command.Rdata"]
    out = io.BytesIO()
    out.write(MAGIC + schema.fingerprint)
    datum = {"stream_name": "groups", "instance_name": "m", "token": 1,
             "rows": [("synkafka.row.Typing", {"room_id": "!r", "user_ids": []})]}  # fmt: skip
    schemaless_writer(out, schema.parsed, datum)
    with pytest.raises(DecodeError) as info:
        decode(out.getvalue())
    assert isinstance(info.value, UnknownStreamError)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode(GOLDEN["user_sync"])
    assert decode(bytearray(data)) == GOLDEN["user_sync"]  # type: ignore[arg-type]
    assert decode(memoryview(data)) == GOLDEN["user_sync"]  # type: ignore[arg-type]


# --- Fuzzing: only DecodeError may escape --------------------------------------------

SEED_BYTES = [encode(record) for record in GOLDEN.values()]
SEED_LINES = [line for line, _ in CASES]
_LINE_ALPHABET = ' 0123456789-[]{}",:nulltruefalsebatchNone\\u\n\t\x00é€😀'


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEED_BYTES)))
    for _ in range(draw(st.integers(1, 4))):
        # Mostly mutate the body, so the Avro reader is what gets stressed.
        low = 10 if len(data) > 10 and draw(st.integers(0, 4)) else 0
        index = draw(st.integers(low, max(low, len(data))))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        if op == "flip" and index < len(data):
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[index:]
        elif op == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[index : index + draw(st.integers(1, 8))]
        elif op == "set" and index < len(data):
            data[index] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]))
    return bytes(data)


@st.composite
def mutated_lines(draw: st.DrawFn) -> str:
    line = list(draw(st.sampled_from(SEED_LINES)))
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["replace", "truncate", "insert", "delete"]))
        char = draw(st.sampled_from(_LINE_ALPHABET))
        if op == "replace" and index < len(line):
            line[index] = char
        elif op == "truncate":
            del line[index:]
        elif op == "insert":
            line[index:index] = list(
                draw(st.text(_LINE_ALPHABET, min_size=1, max_size=6))
            )
        elif op == "delete":
            del line[index : index + draw(st.integers(1, 6))]
    return "".join(line)


_FUZZ = settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_FUZZ
@given(
    st.one_of(
        mutated_bytes(),
        st.binary(max_size=48),
        st.builds(
            lambda seed, tail: seed[:10] + tail,
            st.sampled_from(SEED_BYTES),
            st.binary(max_size=48),
        ),
    )
)
def test_decode_of_random_and_mutated_bytes_raises_only_decode_error(
    data: bytes,
) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@_FUZZ
@given(st.one_of(mutated_lines(), st.text(max_size=60)))
def test_parse_line_of_random_and_mutated_lines_raises_only_decode_error(
    line: str,
) -> None:
    with contextlib.suppress(DecodeError):
        parse_line(line)


def test_many_more_random_mutations_of_bytes_and_lines() -> None:
    # A cheap, deterministic complement to the Hypothesis runs above.
    rng = random.Random(20260528)
    for _ in range(5_000):
        data = bytearray(rng.choice(SEED_BYTES))
        index = rng.randrange(len(data))
        data[index] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        with contextlib.suppress(DecodeError):
            decode(bytes(data))
        line = list(rng.choice(SEED_LINES))
        line[rng.randrange(len(line))] = rng.choice(_LINE_ALPHABET)
        with contextlib.suppress(DecodeError):
            parse_line("".join(line))


# --- Evolution ------------------------------------------------------------------------


def _schema_copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(schema_dir(), target)
    return target


def _add_presence_state(directory: Path) -> None:
    path = directory / "synkafka.command.UserSync.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append(
        {"name": "presence_state", "type": ["null", "string"], "default": None}
    )
    path.write_text(json.dumps(schema, indent=2))


def test_new_optional_field_old_bytes_decode_and_new_bytes_read_by_old_schema(
    tmp_path: Path,
) -> None:
    old_dir = _schema_copy(tmp_path, "old")
    new_dir = _schema_copy(tmp_path, "new")
    _add_presence_state(new_dir)
    command = GOLDEN["user_sync"]
    old_bytes = (GOLDEN_DIR / "user_sync.bin").read_bytes()

    # New reader, old writer: the old version is in new_dir/history.
    new_codec = Codec(load_schema_set(new_dir))
    assert new_codec.decode(old_bytes) == command
    new_bytes = new_codec.encode(command)
    assert new_bytes[2:10] != old_bytes[2:10]

    # Old reader, new writer: unknown until the new version is kept where it reads.
    old_codec = Codec(load_schema_set(old_dir))
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        old_codec.decode(new_bytes)
    result = CliRunner().invoke(
        app,
        [
            "schemas",
            "export",
            "--fingerprinted",
            str(old_dir / "history"),
            "--dir",
            str(new_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    old_codec = Codec(load_schema_set(old_dir))
    assert old_codec.decode(new_bytes) == command

    # A new record that sets the new field: the old reader drops it.
    new_version = new_codec.schemas.current["synkafka.command.UserSync"]
    out = io.BytesIO()
    out.write(MAGIC + new_version.fingerprint)
    datum = {"instance_id": "tNKGG", "user_id": "@bob:test.local", "device_id": "BOBDEV",
             "is_syncing": True, "last_sync_ms": 1795882881365, "presence_state": "online"}  # fmt: skip
    schemaless_writer(out, new_version.parsed, datum)
    assert old_codec.decode(out.getvalue()) == command


def test_schema_dir_honours_environment_variable(tmp_path: Path) -> None:
    assert schema_dir({"SYNKAFKA_SCHEMA_DIR": str(tmp_path)}) == tmp_path
    assert schema_dir({}) == Path(adapter.__file__).resolve().parent.parent / "schemas"


def _rdata_bytes(stream: str, rows: list[tuple[str, dict[str, Any]]]) -> bytes:
    """RDATA bytes written straight with fastavro, bypassing our encoder's checks."""
    version = default_codec().schemas.current["synkafka.command.Rdata"]
    out = io.BytesIO()
    out.write(MAGIC + version.fingerprint)
    datum = {"stream_name": stream, "instance_name": "m", "token": 3, "rows": rows}
    schemaless_writer(out, version.parsed, datum)
    return out.getvalue()


def test_rdata_of_one_stream_holding_another_streams_row_is_refused() -> None:
    push_rules = ("synkafka.row.PushRules", {"user_id": "@a:x"})
    with pytest.raises(DecodeError, match="not one of its rows"):
        decode(_rdata_bytes("typing", [push_rules]))
    # Same field count as typing's row, other names.
    sticky = ("synkafka.row.StickyEvents", {"room_id": "!r:x", "event_id": "$e"})
    with pytest.raises(DecodeError, match="not one of its rows"):
        decode(_rdata_bytes("typing", [sticky]))


def test_rdata_of_an_unknown_stream_is_an_unknown_stream_error() -> None:
    row = ("synkafka.row.PushRules", {"user_id": "@a:x"})
    with pytest.raises(UnknownStreamDecodeError):
        decode(_rdata_bytes("no_such_stream", [row]))


def test_each_events_row_kind_is_told_apart_on_decode() -> None:
    rows = (
        EventsEventRow(
            "$e", "!r", "m.room.member", "@a", None, None, "join", False, False
        ),
        EventsCurrentStateRow("!r", "m.room.member", "@a", "$e"),
        EventsAllStateRow("!r"),
    )
    decoded = decode(encode(RdataCommand("events", "master", 9, rows)))
    assert isinstance(decoded, RdataCommand)
    assert [type(r) for r in decoded.rows] == [type(r) for r in rows]
    assert decoded.rows == rows
