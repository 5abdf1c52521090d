"""The one-body Avro writer and reader: fast path live, and a correct fallback."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from adapter.codec import avro_body
from adapter.codec.avro_body import BodyReader, BodyWriter, probe_datum
from adapter.codec.avro_codec import default_codec
from adapter.codec.schemas import AvroSchema


def _rdata_schema() -> AvroSchema:
    return default_codec().schemas.current["synkafka.command.Rdata"].parsed


def _datum() -> dict[str, object]:
    return {
        "stream_name": "typing",
        "instance_name": "master",
        "token": 7,
        "rows": [("synkafka.row.Typing", {"room_id": "!r:x", "user_ids": ["@a:x"]})],
    }


def test_the_fast_path_is_live_on_the_installed_fastavro() -> None:
    # If fastavro changes its internals this fails, and the codec is slower, not wrong.
    schema = _rdata_schema()
    assert BodyWriter(schema, b"").uses_internals
    assert BodyReader(schema, None, return_record_name=True).uses_internals


@pytest.mark.parametrize("internals", [True, False])
def test_bodies_match_fastavros_public_functions(
    internals: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not internals:
        monkeypatch.setattr(avro_body, "_fa_read_data", None)
        monkeypatch.setattr(avro_body, "_fa_write_data", None)
    schema = _rdata_schema()
    writer = BodyWriter(schema, b"HDR")
    reader = BodyReader(schema, None, return_record_name=True)
    assert writer.uses_internals is internals
    assert reader.uses_internals is internals
    expected = io.BytesIO()
    schemaless_writer(expected, schema, _datum())
    body = writer.write(_datum())
    assert body == b"HDR" + expected.getvalue()
    assert reader.read(io.BytesIO(body[3:])) == schemaless_reader(
        io.BytesIO(expected.getvalue()), schema, return_record_name=True
    )


def test_a_wrong_internal_falls_back_to_the_public_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An internal whose signature changed (or that writes other bytes) is not used.
    monkeypatch.setattr(avro_body, "_fa_write_data", lambda *a: a[0].extend(b"x"))
    monkeypatch.setattr(avro_body, "_fa_read_data", lambda fo: fo.read())
    schema = _rdata_schema()
    writer = BodyWriter(schema, b"")
    reader = BodyReader(schema, None, return_record_name=True)
    assert not writer.uses_internals
    assert not reader.uses_internals
    body = writer.write(_datum())
    assert reader.read(io.BytesIO(body))["token"] == 7


def test_probe_datum_fits_every_current_schema() -> None:
    for version in default_codec().schemas.current.values():
        named: dict[str, Any] = {}
        parsed = parse_schema(version.parsed, named)
        probe = probe_datum(parsed, named)
        out = io.BytesIO()
        schemaless_writer(out, parsed, probe)
        back = schemaless_reader(
            io.BytesIO(out.getvalue()), parsed, return_record_name=True
        )
        assert back == probe, version.name
