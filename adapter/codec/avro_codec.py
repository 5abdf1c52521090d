"""Commands and presence snapshots to Avro bytes and back.

This module owns the Kafka record value format:

* **Framing** is Avro single-object encoding: ``C3 01``, the 8-byte CRC-64-AVRO
  fingerprint of the writer schema (little-endian), then the Avro binary body. Every
  root type (each command, :class:`~adapter.core.presence_snapshot.PresenceSnapshot`) has its own
  schema, so the fingerprint also says which type the record is.
* **Reading** resolves the writer schema by fingerprint among every version kept in
  ``schemas/`` and ``schemas/history/`` and reads it into the current schema (Avro
  schema resolution), so records written before a schema change stay readable.
* **Errors**: :func:`decode` raises only :class:`~adapter.core.errors.DecodeError` (truncated
  input, wrong magic, unknown fingerprint, corrupt body); :func:`encode` raises only
  :class:`~adapter.core.errors.EncodeError`, naming the offending field path.

It must not do I/O (beyond loading schemas once, through ``adapter.codec.schemas``) or know
about topics, keys or Kafka clients.

Speed: the dataclass <-> dict conversion is done by small functions generated once per
type when the :class:`Codec` is built (the way ``dataclasses`` builds ``__init__``), so
no reflection happens per record. RDATA rows are written with fastavro's tuple
notation ``(record name, dict)``, so fastavro never has to guess a union branch.
Records of a current schema version are read by a reader generated for that schema
(:mod:`adapter.codec.avro_compiled`), which builds rows and commands straight from the
field values; older versions are read by fastavro into dicts, where the row kinds of
one stream are told apart by field count. :meth:`Codec.decode_update` reads an RDATA
straight into the consumer's :class:`~adapter.core.ports.StreamUpdate`. Writing goes
through a writer generated per current schema too, straight from the objects; a
value it refuses goes the fastavro way (dicts), which names the bad field.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, TypeAlias

from fastavro.read import SchemaResolutionError

from adapter.codec.avro_body import BodyReader, BodyWriter
from adapter.codec.avro_compiled import (
    CompiledReader,
    CompiledWriter,
    UnsupportedSchema,
)
from adapter.codec.schemas import (
    AvroSchema,
    SchemaSet,
    default_schema_set,
    incompatibilities,
)
from adapter.core.commands import COMMAND_CLASSES, Command, RdataCommand
from adapter.core.errors import (
    DecodeError,
    EncodeError,
    SchemaError,
    UnknownStreamDecodeError,
)
from adapter.core.feed import FeedEvent
from adapter.core.frozen import frozen_maker
from adapter.core.ports import StreamUpdate, make_update
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from adapter.core.rows import ROW_CLASSES, Row, row_field_types

__all__ = [
    "MAGIC",
    "Codec",
    "Payload",
    "decode",
    "decode_update",
    "default_codec",
    "encode",
    "row_name",
]

Payload: TypeAlias = Command | PresenceSnapshot | FeedEvent
"""What one Kafka record value holds: a command, a presence snapshot or a feed event."""

MAGIC: Final = b"\xc3\x01"
"""The two marker bytes of Avro single-object encoding."""

_HEADER_LEN: Final = 10  # magic + 8 fingerprint bytes
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1

_ROOT_NAMES: Final[Mapping[type[Any], str]] = {
    **{
        cls: "synkafka.command."
        + "".join(part.capitalize() for part in cls.NAME.split("_"))
        for cls in COMMAND_CLASSES
    },
    PresenceSnapshot: "synkafka.presence.PresenceSnapshot",
    FeedEvent: "synkafka.feed.Event",
}
_NESTED_NAMES: Final[Mapping[type[Any], str]] = {
    **{cls: "synkafka.row." + cls.__name__.removesuffix("Row") for cls in ROW_CLASSES},
    SyncingDevice: "synkafka.presence.SyncingDevice",
}


def row_name(cls: type[Row]) -> str:
    """Return the Avro full name of a row class (``TypingRow`` -> ``synkafka.row.Typing``)."""
    return _NESTED_NAMES[cls]


# --- Generated converters ----------------------------------------------------------

_ToDict: TypeAlias = Callable[[Any], dict[str, Any]]
_FromDict: TypeAlias = Callable[[dict[str, Any]], Any]
_FromValues: TypeAlias = Callable[..., Any]
_ReadValue: TypeAlias = Callable[[bytes, int], tuple[Any, int]]


def _record_fields(schema: AvroSchema) -> list[dict[str, Any]]:
    fields_: list[dict[str, Any]] = schema["fields"]
    return fields_


def _find_record(schema: AvroSchema, name: str) -> dict[str, Any] | None:
    """Find the definition of the Avro record type ``name`` inside a parsed schema."""
    if isinstance(schema, list):
        for branch in schema:
            found = _find_record(branch, name)
            if found is not None:
                return found
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            if schema.get("name") == name:
                return schema
            for f in schema["fields"]:
                found = _find_record(f["type"], name)
                if found is not None:
                    return found
        elif kind == "array":
            return _find_record(schema["items"], name)
        elif isinstance(kind, (dict, list)):
            return _find_record(kind, name)
    return None


def _compile(
    cls: type[Any], schema: dict[str, Any], tuple_fields: set[str]
) -> tuple[_ToDict, _FromDict, _FromValues]:
    """Generate ``to_dict``, ``from_dict`` and ``from_values`` for a class and its schema.

    ``from_values`` takes the record's field values in schema order (what the
    generated Avro reader hands a builder); ``from_dict`` takes fastavro's dict.

    The dataclass' fields must all be in the record; record fields the dataclass does
    not have (added later, with a default) are left to fastavro's default on write
    and ignored on read.
    """
    names = [name for name, _ in _field_types(cls)]
    schema_names = [f["name"] for f in _record_fields(schema)]
    missing = [n for n in names if n not in schema_names]
    if missing:
        raise SchemaError(f"{schema['name']} lacks fields {missing} of {cls.__name__}")
    extra = [
        f["name"]
        for f in _record_fields(schema)
        if f["name"] not in names and "default" not in f
    ]
    if extra:
        raise SchemaError(f"{schema['name']} fields {extra} need a default")
    # Tuples go to fastavro as lists: inside a union fastavro would take a tuple for
    # its (branch name, value) notation.
    to_items = ", ".join(
        (f"{n!r}: _list_or_none(obj.{n})" if n in tuple_fields else f"{n!r}: obj.{n}")
        for n in names
    )
    namespace: dict[str, Any] = {
        "cls": cls,
        "_tuple_new": tuple.__new__,
        "_tuple_or_none": _tuple_or_none,
        "_list_or_none": _list_or_none,
    }
    values = [
        f"_tuple_or_none(d[{n!r}])" if n in tuple_fields else f"d[{n!r}]" for n in names
    ]
    position = {f["name"]: i for i, f in enumerate(_record_fields(schema))}
    params = ", ".join(f"v{i}" for i in range(len(position)))
    positional = [
        f"_tuple_or_none(v{position[n]})" if n in tuple_fields else f"v{position[n]}"
        for n in names
    ]
    if issubclass(cls, tuple):
        # Rows are named tuples: one C call, no per-field store.
        from_src = (
            f"def from_dict(d):\n    return _tuple_new(cls, ({', '.join(values)},))\n"
            f"def from_values({params}):\n"
            f"    return _tuple_new(cls, ({', '.join(positional)},))\n"
        )
    else:
        # Readers build the frozen instance by setting its slots directly (see
        # adapter.core.frozen): the dataclass __init__ costs about three times as much.
        namespace["_make"] = frozen_maker(cls)
        from_src = (
            f"def from_dict(d):\n    return _make({', '.join(values)})\n"
            f"def from_values({params}):\n    return _make({', '.join(positional)})\n"
        )
    source = f"def to_dict(obj):\n    return {{{to_items}}}\n" + from_src
    # Generated once per type at start-up from field names we control, as dataclasses
    # does for __init__: a literal dict display is much faster than any generic loop.
    exec(compile(source, f"<codec {cls.__name__}>", "exec"), namespace)  # noqa: S102
    return namespace["to_dict"], namespace["from_dict"], namespace["from_values"]


_make_rdata: Final = frozen_maker(RdataCommand)
_make_snapshot: Final = frozen_maker(PresenceSnapshot)


def _foreign_row(value: dict[str, Any]) -> Any:
    raise KeyError(len(value))


def _tuple_or_none(value: list[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _list_or_none(value: tuple[Any, ...] | None) -> list[Any] | None:
    return None if value is None else list(value)


def _field_types(cls: type[Any]) -> tuple[tuple[str, str], ...]:
    """``(name, annotation text)`` of a row (named tuple) or a dataclass."""
    if issubclass(cls, tuple):
        return row_field_types(cls)
    return tuple((f.name, str(f.type)) for f in fields(cls))


def _tuple_fields(cls: type[Any]) -> set[str]:
    return {n for n, annotation in _field_types(cls) if annotation.startswith("tuple[")}


@dataclass(frozen=True, slots=True)
class _Root:
    name: str
    header: bytes
    schema: AvroSchema
    to_dict: _ToDict
    from_dict: _FromDict
    body: BodyWriter
    generated: Callable[[Any], bytes] | None
    """Header and body straight from the object; None: only the fastavro path."""


@dataclass(frozen=True, slots=True)
class _Writer:
    """How to read one writer fingerprint: its root type and its body readers.

    ``generated`` reads the current versions (no schema resolution) straight into
    our types; ``body`` (fastavro, into dicts) reads older versions, and any schema
    the generator declines.
    """

    root: _Root
    body: BodyReader
    generated: _ReadValue | None


def _check_builder_fields(schema: AvroSchema, expected: tuple[str, ...]) -> None:
    """RDATA and snapshots are built from their field values by position."""
    names = tuple(f["name"] for f in _record_fields(schema))
    if names != expected:
        raise SchemaError(
            f"{schema['name']} has fields {names}; the codec builds it from {expected}"
        )


def _read_generated(read: _ReadValue, data: bytes, name: str) -> Any:
    """Read a body after the header with a generated reader; only DecodeError escapes."""
    try:
        value, end = read(data, _HEADER_LEN)
    except DecodeError:
        raise
    except (EOFError, ValueError, IndexError, TypeError, RecursionError) as exc:
        raise DecodeError(f"corrupt {name} body: {type(exc).__name__}: {exc}") from exc
    if end != len(data):
        raise DecodeError(f"{len(data) - end} bytes after the end of the {name} body")
    return value


def _generated_writer(
    schema: AvroSchema, classes: Mapping[str, type[Any]], header: bytes
) -> Callable[[Any], bytes] | None:
    try:
        return CompiledWriter(schema, classes, header).write
    except UnsupportedSchema:
        return None


def _generated_reader(
    schema: AvroSchema, builders: Mapping[str, _FromValues]
) -> _ReadValue | None:
    try:
        return CompiledReader(schema, builders).read
    except UnsupportedSchema:
        return None


class Codec:
    """Encode and decode records against one :class:`~adapter.codec.schemas.SchemaSet`.

    Build one per schema set and reuse it: construction generates the converters
    and checks that every kept version can be read into the current schema.

    Args:
        schemas: the loaded schemas.
        generated: read current-version records with readers generated for their
            schemas (:mod:`adapter.codec.avro_compiled`, about twice as fast as fastavro);
            False reads everything with fastavro (for comparisons and tests).

    Raises:
        SchemaError: a schema does not match its Python class, or a kept version
            cannot be read with the current schema.
    """

    def __init__(self, schemas: SchemaSet, *, generated: bool = True) -> None:
        self.schemas = schemas
        self._roots: dict[type[Any], _Root] = {}
        self._writers: dict[bytes, _Writer] = {}
        rdata_schema = schemas.current[_ROOT_NAMES[RdataCommand]].parsed
        snapshot_schema = schemas.current[_ROOT_NAMES[PresenceSnapshot]].parsed

        # Rows: class -> (name, to_dict, stream) for writing; stream -> field count
        # -> from_dict for reading. The row kinds of one stream differ in field
        # count (checked here), so a decoded row dict says its own kind and fastavro
        # need not return record names, which costs it a check on every union.
        self._row_writers: dict[type[Any], tuple[str, _ToDict, str]] = {}
        self._row_readers: dict[str, dict[int, _FromDict]] = {}
        self._row_classes: dict[str, frozenset[type[Any]]] = {}
        # Avro record full name -> constructor from field values, for generated readers.
        builders: dict[str, _FromValues] = {}
        for cls in ROW_CLASSES:
            name = _NESTED_NAMES[cls]
            record = _find_record(rdata_schema, name)
            if record is None:
                raise SchemaError(f"RDATA rows have no branch {name}")
            to_dict, from_dict, builders[name] = _compile(
                cls, record, _tuple_fields(cls)
            )
            self._row_writers[cls] = (name, to_dict, cls.STREAM_NAME)
            self._row_classes[cls.STREAM_NAME] = self._row_classes.get(
                cls.STREAM_NAME, frozenset()
            ) | {cls}
            kinds = self._row_readers.setdefault(cls.STREAM_NAME, {})
            count = len(_record_fields(record))
            if count in kinds:
                raise SchemaError(
                    f"two {cls.STREAM_NAME} row records have {count} fields; the "
                    "decoder tells a stream's row kinds apart by field count"
                )
            kinds[count] = from_dict
        device = _find_record(snapshot_schema, _NESTED_NAMES[SyncingDevice])
        if device is None:
            raise SchemaError("PresenceSnapshot has no SyncingDevice record")
        self._device_to, self._device_from, device_values = _compile(
            SyncingDevice, device, set()
        )
        builders[_NESTED_NAMES[SyncingDevice]] = device_values

        classes = {name: cls for cls, name in _NESTED_NAMES.items()}
        for cls, name in _ROOT_NAMES.items():
            version = schemas.current[name]
            if cls is RdataCommand:
                to_dict, from_dict = self._rdata_to_dict, self._rdata_from_dict
                builders[name] = self._rdata_from_values
            elif cls is PresenceSnapshot:
                to_dict, from_dict = self._snapshot_to_dict, self._snapshot_from_dict
                builders[name] = self._snapshot_from_values
            else:
                to_dict, from_dict, builders[name] = _compile(
                    cls, version.parsed, _tuple_fields(cls)
                )
            header = MAGIC + version.fingerprint
            root = _Root(
                name,
                header,
                version.parsed,
                to_dict,
                from_dict,
                BodyWriter(version.parsed, header),
                _generated_writer(version.parsed, {**classes, name: cls}, header)
                if generated
                else None,
            )
            self._roots[cls] = root

        _check_builder_fields(
            rdata_schema, ("stream_name", "instance_name", "token", "rows")
        )
        _check_builder_fields(
            snapshot_schema, ("instance_id", "instance_name", "heartbeat_ms", "syncing")
        )
        by_name = {root.name: root for root in self._roots.values()}
        for digest, version in schemas.versions.items():
            root_ = by_name.get(version.name)
            if root_ is None:
                continue  # a retired type: its records fail with a clear DecodeError
            if version.current:
                self._writers[digest] = _Writer(
                    root_,
                    BodyReader(version.parsed, None, return_record_name=False),
                    _generated_reader(version.parsed, builders) if generated else None,
                )
                continue
            problems = incompatibilities(version.parsed, root_.schema)
            if problems:
                raise SchemaError(
                    f"{version.path}: the current {version.name} cannot read it: "
                    + "; ".join(problems)
                )
            self._writers[digest] = _Writer(
                root_,
                BodyReader(version.parsed, root_.schema, return_record_name=False),
                None,
            )
        self._live = self._live_rdata(schemas, builders, generated)

    def _live_rdata(
        self, schemas: SchemaSet, builders: dict[str, _FromValues], generated: bool
    ) -> tuple[bytes, _ReadValue] | None:
        """The current RDATA header and a reader building a StreamUpdate from it."""
        if not generated:
            return None
        version = schemas.current[_ROOT_NAMES[RdataCommand]]
        reader = _generated_reader(
            version.parsed, {**builders, version.name: self._update_from_values}
        )
        return None if reader is None else (MAGIC + version.fingerprint, reader)

    @property
    def generated_writers(self) -> frozenset[str]:
        """Root types written by a generated writer."""
        return frozenset(
            r.name for r in self._roots.values() if r.generated is not None
        )

    @property
    def generated_roots(self) -> frozenset[str]:
        """Root types whose current version is read by a generated reader."""
        return frozenset(
            w.root.name for w in self._writers.values() if w.generated is not None
        )

    # --- RDATA and PresenceSnapshot have nested records: written by hand ---

    def _rdata_to_dict(self, command: RdataCommand) -> dict[str, Any]:
        if command.token is None:
            raise EncodeError(
                "RDATA token is None: batches are joined by the bridge first",
                path="token",
            )
        if not command.rows:
            raise EncodeError("RDATA without rows: publish a POSITION", path="rows")
        stream = command.stream_name
        rows = []
        writers = self._row_writers
        for index, row in enumerate(command.rows):
            spec = writers.get(type(row))
            if spec is None or spec[2] != stream:
                raise EncodeError(
                    f"{type(row).__name__} is not a row of stream {stream!r}",
                    path=f"rows[{index}]",
                )
            rows.append((spec[0], spec[1](row)))
        return {
            "stream_name": stream,
            "instance_name": command.instance_name,
            "token": command.token,
            "rows": rows,
        }

    def _rows_fit(self, command: RdataCommand) -> bool:
        """True if an RDATA has rows, all of its stream.

        The generated writer's rows union takes any stream's row; this is the check
        ``_rdata_to_dict`` makes on the fastavro path.
        """
        classes = self._row_classes.get(command.stream_name)
        if classes is None or not command.rows:
            return False
        return all(type(row) in classes for row in command.rows)

    def _rdata_from_dict(self, d: dict[str, Any]) -> RdataCommand:
        stream = d["stream_name"]
        kinds = self._row_readers.get(stream)
        if kinds is None:
            raise UnknownStreamDecodeError(f"unknown stream {stream!r}")
        rows = []
        for value in d["rows"]:
            # Another stream's row has other field names or another count (one with
            # the very same fields as one of this stream's reads as that row).
            from_dict = kinds.get(len(value), _foreign_row)
            try:
                rows.append(from_dict(value))
            except KeyError:
                raise DecodeError(
                    f"RDATA of stream {stream!r} holds a row with fields "
                    f"{sorted(value)}, which is not one of its rows"
                ) from None
        if not rows:
            raise DecodeError("RDATA without rows")
        result: RdataCommand = _make_rdata(
            stream, d["instance_name"], d["token"], tuple(rows)
        )
        return result

    def _rdata_from_values(
        self, stream: str, instance_name: str, token: int, rows: list[Any]
    ) -> RdataCommand:
        """RDATA from the generated reader, whose rows are typed by union branch."""
        result: RdataCommand = _make_rdata(
            stream, instance_name, token, self._stream_rows(stream, rows)
        )
        return result

    def _update_from_values(
        self, stream: str, instance_name: str, token: int, rows: list[Any]
    ) -> StreamUpdate:
        return make_update(
            stream, instance_name, token, self._stream_rows(stream, rows), "kafka"
        )

    def _stream_rows(self, stream: str, rows: list[Any]) -> tuple[Any, ...]:
        """The rows of an RDATA of ``stream``, checked to be that stream's."""
        classes = self._row_classes.get(stream)
        if classes is None:
            raise UnknownStreamDecodeError(f"unknown stream {stream!r}")
        if not rows:
            raise DecodeError("RDATA without rows")
        for row in rows:
            if type(row) not in classes:
                raise DecodeError(
                    f"RDATA of stream {stream!r} holds a {type(row).__name__}, which "
                    "is not one of its rows"
                )
        return tuple(rows)

    def _snapshot_from_values(
        self,
        instance_id: str,
        instance_name: str,
        heartbeat_ms: int,
        syncing: list[SyncingDevice],
    ) -> PresenceSnapshot:
        result: PresenceSnapshot = _make_snapshot(
            instance_id, instance_name, heartbeat_ms, tuple(syncing)
        )
        return result

    def _snapshot_to_dict(self, snapshot: PresenceSnapshot) -> dict[str, Any]:
        to_dict = self._device_to
        return {
            "instance_id": snapshot.instance_id,
            "instance_name": snapshot.instance_name,
            "heartbeat_ms": snapshot.heartbeat_ms,
            "syncing": [to_dict(device) for device in snapshot.syncing],
        }

    def _snapshot_from_dict(self, d: dict[str, Any]) -> PresenceSnapshot:
        from_dict = self._device_from
        result: PresenceSnapshot = _make_snapshot(
            d["instance_id"],
            d["instance_name"],
            d["heartbeat_ms"],
            tuple([from_dict(device) for device in d["syncing"]]),
        )
        return result

    # --- Public API ---

    def encode(self, payload: Payload) -> bytes:
        """Encode a command or presence snapshot as a Kafka record value.

        Args:
            payload: the value. An RDATA must have a numeric token and at least one
                row, all of its stream.

        Returns:
            ``C3 01`` + fingerprint + Avro body.

        Raises:
            EncodeError: the value does not fit its schema; ``path`` names the field.
        """
        root = self._roots.get(type(payload))
        if root is None:
            raise EncodeError(f"cannot encode a {type(payload).__name__}")
        generated = root.generated
        if generated is not None and (
            type(payload) is not RdataCommand or self._rows_fit(payload)
        ):
            try:
                return generated(payload)
            except Exception:  # noqa: BLE001, S110 - the fastavro path names the problem
                pass
        datum = root.to_dict(payload)
        try:
            return root.body.write(datum)
        except (TypeError, ValueError, AttributeError, OverflowError, KeyError) as exc:
            # Rare path: walk the datum to say which field is wrong.
            path, reason = _find_bad_field(datum, root.schema, root.name)
            raise EncodeError(reason or str(exc), path=path) from exc

    def decode(self, data: bytes) -> Payload:
        """Decode a Kafka record value written with any kept schema version.

        Args:
            data: the record value.

        Returns:
            The command or presence snapshot, in the current model.

        Raises:
            DecodeError: the bytes are truncated, do not start with ``C3 01``, name
                an unknown schema fingerprint, or the body is corrupt.
        """
        if type(data) is not bytes:
            data = bytes(data)
        if len(data) < _HEADER_LEN:
            raise DecodeError(
                f"truncated record: {len(data)} bytes, the header alone needs {_HEADER_LEN}"
            )
        if data[:2] != MAGIC:
            raise DecodeError(
                f"not Avro single-object encoding: starts {data[:2].hex()}, expected c301"
            )
        writer = self._writers.get(data[2:_HEADER_LEN])
        if writer is None:
            raise DecodeError(
                f"unknown writer schema fingerprint {data[2:_HEADER_LEN].hex()}"
            )
        root = writer.root
        generated = writer.generated
        if generated is not None:
            decoded: Payload = _read_generated(generated, data, root.name)
            return decoded
        # A sliced copy is cheaper than seeking past the header (records are small).
        stream = io.BytesIO(data[_HEADER_LEN:])
        try:
            datum: Any = writer.body.read(stream)
        except (
            EOFError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            OverflowError,
            MemoryError,
            SchemaResolutionError,
        ) as exc:
            raise DecodeError(
                f"corrupt {root.name} body: {type(exc).__name__}: {exc}"
            ) from exc
        extra = len(data) - _HEADER_LEN - stream.tell()
        if extra:
            raise DecodeError(f"{extra} bytes after the end of the {root.name} body")
        result: Payload = root.from_dict(datum)
        return result

    def decode_update(self, data: bytes) -> StreamUpdate | Payload:
        """:meth:`decode`, but a current-version RDATA comes as a live StreamUpdate.

        The consumer's hot path: an RDATA read from Kafka becomes the update its
        handler gets (``source`` ``kafka``) without an :class:`RdataCommand` in
        between. Any other record (or an RDATA of an older schema version) is
        returned as :meth:`decode` returns it.

        Raises:
            DecodeError: as :meth:`decode`.
        """
        live = self._live
        if live is not None and type(data) is bytes and data[:_HEADER_LEN] == live[0]:
            update: StreamUpdate = _read_generated(
                live[1], data, _ROOT_NAMES[RdataCommand]
            )
            return update
        return self.decode(data)


# --- Finding the bad field after fastavro refused a datum (slow path) ---------------


def _find_bad_field(datum: Any, schema: AvroSchema, path: str) -> tuple[str, str]:
    """Return (path, reason) of the first value that does not fit, or (path, "")."""
    found = _FieldChecker(schema).walk(datum, schema, "")
    return found if found is not None else (path, "")


def _primitive_fits(value: Any, kind: str) -> bool | None:
    """Whether ``value`` is an Avro ``kind``; None when ``kind`` is not a primitive."""
    if kind == "null":
        return value is None
    if kind == "boolean":
        return type(value) is bool
    if kind == "long":
        return type(value) is int and _LONG_MIN <= value <= _LONG_MAX
    if kind == "int":
        return type(value) is int and -(2**31) <= value < 2**31
    if kind == "string":
        return type(value) is str and _utf8_encodable(value)
    if kind == "bytes":
        return type(value) is bytes
    if kind in ("double", "float"):
        return type(value) in (int, float)
    return None


class _FieldChecker:
    """Walks a datum along its schema the way fastavro writes it, to name a bad value."""

    def __init__(self, schema: AvroSchema) -> None:
        self._named: dict[str, Any] = {}
        self._register(schema)

    def _register(self, node: AvroSchema) -> None:
        if isinstance(node, list):
            for branch in node:
                self._register(branch)
        elif isinstance(node, dict):
            if node.get("type") == "record":
                self._named[node["name"]] = node
                for f in node["fields"]:
                    self._register(f["type"])
            elif node.get("type") == "array":
                self._register(node["items"])

    def walk(self, value: Any, node: AvroSchema, where: str) -> tuple[str, str] | None:
        """(path, reason) of the first value under ``where`` that does not fit."""
        named = self._named
        if isinstance(node, str) and node in named:
            node = named[node]
        if isinstance(node, list):
            return self._walk_union(value, node, where)
        kind = node["type"] if isinstance(node, dict) else node
        ok = _primitive_fits(value, kind) if isinstance(kind, str) else None
        if ok is not None:
            return None if ok else (where, f"{_short(value)} is not a {kind}")
        if kind == "record":
            return self._walk_record(value, node, where)
        if kind == "array":
            return self._walk_array(value, node, where)
        return where, f"unsupported schema {kind!r}"

    def _walk_union(
        self, value: Any, union: list[Any], where: str
    ) -> tuple[str, str] | None:
        named = self._named
        # fastavro's tuple notation names the branch: check against that one only.
        if isinstance(value, tuple) and len(value) == 2 and value[0] in named:
            return self.walk(value[1], named[value[0]], where)
        if any(self.walk(value, branch, "") is None for branch in union):
            return None
        return where, f"{_short(value)} fits none of {_type_names(union)}"

    def _walk_record(
        self, value: Any, node: dict[str, Any], where: str
    ) -> tuple[str, str] | None:
        if not isinstance(value, dict):
            return where, f"{_short(value)} is not a record"
        for f in node["fields"]:
            found = self.walk(value.get(f["name"]), f["type"], _join(where, f["name"]))
            if found is not None:
                return found
        return None

    def _walk_array(
        self, value: Any, node: dict[str, Any], where: str
    ) -> tuple[str, str] | None:
        if not isinstance(value, (list, tuple)):
            return where, f"{_short(value)} is not an array"
        for index, item in enumerate(value):
            found = self.walk(item, node["items"], f"{where}[{index}]")
            if found is not None:
                return found
        return None


def _utf8_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _type_names(union: list[Any]) -> str:
    return "/".join(b if isinstance(b, str) else str(b.get("type")) for b in union)


# --- Module-level API on the default schemas ---------------------------------------


@functools.cache
def default_codec() -> Codec:
    """Return the codec of the default schema set, built on first use only.

    Raises:
        SchemaError: the schemas cannot be loaded or do not match the classes.
    """
    return Codec(default_schema_set())


def encode(payload: Payload) -> bytes:
    """Encode with the default schemas; see :meth:`Codec.encode`.

    Raises:
        EncodeError: the value does not fit its schema.
    """
    return default_codec().encode(payload)


def decode(data: bytes) -> Payload:
    """Decode with the default schemas; see :meth:`Codec.decode`.

    Raises:
        DecodeError: the bytes cannot be decoded.
    """
    return default_codec().decode(data)


def decode_update(data: bytes) -> StreamUpdate | Payload:
    """Decode with the default schemas; see :meth:`Codec.decode_update`.

    Raises:
        DecodeError: the bytes cannot be decoded.
    """
    return default_codec().decode_update(data)
