"""Writing and reading one Avro body with fastavro, without its per-call set-up.

fastavro's public ``schemaless_writer`` and ``schemaless_reader`` re-register every
named type of the schema on each call (for the RDATA schema that is some twenty dict
writes) and wrap the output in a ``BytesIO``. On records of a few hundred bytes that
set-up is about a seventh of the whole cost. :class:`BodyWriter` and
:class:`BodyReader` do it once per schema and then call fastavro's compiled
``write_data`` and ``_read_data`` directly.

Those two are fastavro internals, so each instance first checks them on a probe
value against the public functions and falls back to the public functions when they
are missing, have another signature, or disagree. ``uses_internals`` says which path
an instance took; a unit test pins that the fast path is live on the fastavro we
install.

It must not do I/O or know about commands, rows or framing.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from typing import IO, Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from adapter.codec.schemas import AvroSchema

__all__ = ["BodyReader", "BodyWriter", "probe_datum"]


def _internal(module: str, name: str) -> Callable[..., Any] | None:
    """A fastavro internal, or None; the probes below catch a changed signature."""
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:  # pragma: no cover - a fastavro without compiled modules
        return None
    return found if callable(found) else None


_fa_read_data: Final = _internal("fastavro._read", "_read_data")
_fa_write_data: Final = _internal("fastavro._write", "write_data")


def _unavailable(*_args: Any) -> Any:
    raise TypeError("fastavro internal not available")


_WRITE_OPTIONS: Final = {
    "strict": False,
    "strict_allow_default": False,
    "disable_tuple_notation": False,
}


def _read_options(return_record_name: bool) -> dict[str, Any]:
    return {
        "return_record_name": return_record_name,
        "return_record_name_override": False,
        "handle_unicode_errors": "strict",
        "return_named_type": False,
        "return_named_type_override": False,
    }


def probe_datum(schema: AvroSchema, named: dict[str, Any], depth: int = 0) -> Any:
    """A datum that fits ``schema``, touching a non-null branch of every union.

    Args:
        schema: a parsed schema (or part of one).
        named: the named types ``parse_schema`` registered for it.
        depth: nesting so far (recursive schemas give up at 32 levels).

    Raises:
        ValueError: the schema nests too deep or uses a type not handled here.
    """
    if depth > 32:
        raise ValueError("schema nests too deep for a probe")
    if isinstance(schema, list):
        branch = schema[-1]
        value = probe_datum(branch, named, depth + 1)
        record = named.get(branch, branch) if isinstance(branch, str) else branch
        if isinstance(record, dict) and record.get("type") == "record":
            return (record["name"], value)  # fastavro's union notation
        return value
    if isinstance(schema, str):
        simple = {
            "null": None,
            "boolean": True,
            "int": 1,
            "long": 1,
            "float": 1.0,
            "double": 1.0,
            "string": "probe",
            "bytes": b"probe",
        }
        if schema in simple:
            return simple[schema]
        return probe_datum(named[schema], named, depth + 1)
    kind = schema["type"]
    if kind == "record":
        return {
            f["name"]: probe_datum(f["type"], named, depth + 1)
            for f in schema["fields"]
        }
    if kind == "array":
        return [probe_datum(schema["items"], named, depth + 1)]
    if kind == "map":
        return {"k": probe_datum(schema["values"], named, depth + 1)}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "fixed":
        return b"\0" * schema["size"]
    return probe_datum(kind, named, depth + 1)


class BodyWriter:
    """Writes Avro bodies of one schema, each after a fixed header.

    Args:
        schema: the parsed schema.
        header: bytes put before every body (the single-object framing).
    """

    def __init__(self, schema: AvroSchema, header: bytes) -> None:
        self._schema = schema
        self._header = header
        self._named: dict[str, Any] = {}
        self._parsed = parse_schema(schema, self._named)
        self.uses_internals = False
        self.write: Callable[[Any], bytes] = self._write_public
        self._write_data: Callable[..., Any] = _unavailable
        if _fa_write_data is not None:
            self._write_data = _fa_write_data
            try:
                probe = probe_datum(self._parsed, self._named)
                same = self._write_internal(probe) == self._write_public(probe)
            except (TypeError, ValueError, AttributeError, KeyError):
                same = False
            if same:
                self.write = self._write_internal
                self.uses_internals = True

    def _write_internal(self, datum: Any) -> bytes:
        out = bytearray(self._header)
        self._write_data(out, datum, self._parsed, self._named, "", _WRITE_OPTIONS)
        return bytes(out)

    def _write_public(self, datum: Any) -> bytes:
        out = io.BytesIO()
        out.write(self._header)
        schemaless_writer(out, self._schema, datum)
        return out.getvalue()


class BodyReader:
    """Reads Avro bodies written with ``writer_schema`` into ``reader_schema``.

    Args:
        writer_schema: the parsed schema the bytes were written with.
        reader_schema: the parsed schema to resolve into, or None for the writer's.
        return_record_name: read records in unions as ``(name, dict)``.
    """

    def __init__(
        self,
        writer_schema: AvroSchema,
        reader_schema: AvroSchema | None,
        *,
        return_record_name: bool,
    ) -> None:
        self._writer_schema = writer_schema
        self._reader_schema = reader_schema
        self._return_record_name = return_record_name
        self._options = _read_options(return_record_name)
        self._named: dict[str, dict[str, Any]] = {"writer": {}, "reader": {}}
        self._parsed_writer = parse_schema(writer_schema, self._named["writer"])
        self._parsed_reader = (
            None
            if reader_schema is None
            else parse_schema(reader_schema, self._named["reader"])
        )
        self.uses_internals = False
        self.read: Callable[[IO[bytes]], Any] = self._read_public
        self._read_data: Callable[..., Any] = _unavailable
        if _fa_read_data is not None:
            self._read_data = _fa_read_data
            try:
                out = io.BytesIO()
                schemaless_writer(
                    out,
                    writer_schema,
                    probe_datum(self._parsed_writer, self._named["writer"]),
                )
                probe = out.getvalue()
                same = self._read_internal(io.BytesIO(probe)) == self._read_public(
                    io.BytesIO(probe)
                )
            except (TypeError, ValueError, AttributeError, KeyError, EOFError):
                same = False
            if same:
                self.read = self._read_internal
                self.uses_internals = True

    def _read_internal(self, fo: IO[bytes]) -> Any:
        return self._read_data(
            fo, self._parsed_writer, self._named, self._parsed_reader, self._options
        )

    def _read_public(self, fo: IO[bytes]) -> Any:
        return schemaless_reader(
            fo,
            self._writer_schema,
            self._reader_schema,
            return_record_name=self._return_record_name,
        )
