"""The Avro schemas: find them, load and parse them once, fingerprint every version.

This module owns the ``schemas/`` directory and its rules:

* ``schemas/<namespace>.<Name>.avsc``: one named type per file, named after its full
  name (fastavro's ``FlatDictRepository`` naming), so ``fastavro.schema.load_schema``
  resolves references between files. These are the **current** versions.
* ``schemas/history/<namespace>.<Name>.<fingerprint>.avsc``: every version of a *root*
  type (a type that is a whole Kafka record value, :data:`ROOT_NAMES`) that may have
  been written, self-contained (references inlined). ``<fingerprint>`` is the 16 hex
  digits of the 8 fingerprint bytes in wire order. The decoder resolves a record's
  writer schema here, then reads it into the current schema (Avro schema resolution).

**The rule: history files are never edited or deleted.** After you change a schema,
run ``synkafka schemas export --fingerprinted schemas/history`` so the new version is
kept too; ``synkafka schemas check`` fails while a current root version is missing from
history, and when a current schema cannot read a kept version. Changes that keep
old data readable: add a field *with a default* (``["null", T]`` with default null),
remove a field, add a branch to a union, widen int to long. Anything else needs a new
type name.

Fingerprints are CRC-64-AVRO (Rabin) of the Parsing Canonical Form, as Avro's
single-object encoding requires.

It must not know about Python command classes (``adapter.codec.avro_codec`` maps them) and does
no I/O except reading the schema files when asked to load them. The files ship inside
the package as ``adapter/avro_schemas`` (in a checkout, a symlink to the top-level
``schemas/`` folder, which stays the one source of truth; a wheel holds a copy), and
are found through :mod:`importlib.resources`. The one environment read,
``SYNKAFKA_SCHEMA_DIR``, happens in :func:`schema_dir`, on purpose: it overrides the
packaged files.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from fastavro.repository import SchemaRepositoryError
from fastavro.schema import (
    SchemaParseException,
    UnknownType,
    fingerprint,
    load_schema,
    parse_schema,
    to_parsing_canonical_form,
)

from adapter.core.errors import SchemaError

__all__ = [
    "HISTORY_DIR_NAME",
    "PACKAGED_DIR_NAME",
    "ROOT_NAMES",
    "SCHEMA_DIR_ENV",
    "AvroSchema",
    "SchemaSet",
    "SchemaVersion",
    "default_schema_set",
    "expand",
    "fingerprint_of",
    "incompatibilities",
    "load_schema_set",
    "schema_dir",
]

AvroSchema: TypeAlias = Any
"""A schema as JSON (dict, list or str); ``Any`` because the shape is recursive."""

SCHEMA_DIR_ENV: Final = "SYNKAFKA_SCHEMA_DIR"
HISTORY_DIR_NAME: Final = "history"
PACKAGED_DIR_NAME: Final = "avro_schemas"

ROOT_NAMES: Final[tuple[str, ...]] = (
    "synkafka.command.Rdata",
    "synkafka.command.Position",
    "synkafka.command.Replicate",
    "synkafka.command.UserSync",
    "synkafka.command.ClearUserSync",
    "synkafka.command.FederationAck",
    "synkafka.command.UserIp",
    "synkafka.command.RemoteServerUp",
    "synkafka.command.LockReleased",
    "synkafka.command.NewActiveTask",
    "synkafka.command.CancelTask",
    "synkafka.command.Server",
    "synkafka.command.Name",
    "synkafka.command.Ping",
    "synkafka.command.Error",
    "synkafka.presence.PresenceSnapshot",
    "synkafka.feed.Event",
)
"""Types that are a whole Kafka record value. Every other type is nested in these."""

_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
# Writer type -> reader types that can read it (Avro spec, "Schema Resolution").
_PROMOTIONS: Final[Mapping[str, frozenset[str]]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


def schema_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the schemas directory.

    Args:
        environ: the environment to read; ``os.environ`` when omitted.

    Returns:
        ``$SYNKAFKA_SCHEMA_DIR`` if set and not empty, else the schemas packaged
        with ``adapter`` (resolved, so in a checkout it is the top-level
        ``schemas/`` folder, the one to edit).
    """
    env = os.environ if environ is None else environ
    configured = env.get(SCHEMA_DIR_ENV, "")
    if configured:
        return Path(configured)
    # fastavro reads schema files by path, so the package must be installed as plain
    # files (every pip, uv or wheel install is); a zipped package is not supported.
    packaged = importlib.resources.files("adapter") / PACKAGED_DIR_NAME
    return Path(str(packaged)).resolve()


def fingerprint_of(schema: AvroSchema) -> bytes:
    """Return the 8 CRC-64-AVRO fingerprint bytes of a schema, in wire order.

    Args:
        schema: a schema (raw JSON or parsed by fastavro), self-contained.

    Returns:
        The bytes single-object encoding puts after ``C3 01``.
    """
    # fastavro returns the little-endian bytes as hex, exactly the wire order.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One version of a root type.

    Attributes:
        name: the full name, for example ``synkafka.command.Rdata``.
        fingerprint: the 8 fingerprint bytes in wire order.
        parsed: the schema parsed by fastavro (self-contained); pass it to fastavro.
        path: the file it was loaded from.
        current: whether this is the version in ``schemas/`` (not only in history).
    """

    name: str
    fingerprint: bytes
    parsed: AvroSchema = field(compare=False, repr=False)
    path: Path
    current: bool

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint as 16 hex digits in wire order (as in history file names)."""
        return self.fingerprint.hex()


@dataclass(frozen=True, slots=True)
class SchemaSet:
    """Every schema of one schemas directory, loaded and parsed once.

    Attributes:
        directory: the schemas directory.
        current: root full name to its current version.
        versions: fingerprint to version, for every current and kept version.
        kept: fingerprints that have a file in ``history/``.
        raw: full name to the JSON of its file, for every named type in the directory.
    """

    directory: Path
    current: Mapping[str, SchemaVersion]
    versions: Mapping[bytes, SchemaVersion]
    kept: frozenset[bytes]
    raw: Mapping[str, AvroSchema] = field(repr=False)

    def history_of(self, name: str) -> list[SchemaVersion]:
        """Return every kept version of ``name`` that is not the current one."""
        return [v for v in self.versions.values() if v.name == name and not v.current]


def _read_json(path: Path) -> AvroSchema:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: cannot read JSON: {exc}") from exc


def _full_name(schema: AvroSchema, path: Path) -> str:
    if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
        raise SchemaError(f"{path}: not a named type")
    name: str = schema["name"]
    namespace = schema.get("namespace")
    if "." not in name and isinstance(namespace, str) and namespace:
        name = f"{namespace}.{name}"
    return name


def _iter_named_files(directory: Path) -> Iterator[Path]:
    yield from sorted(directory.glob("*.avsc"))


def load_schema_set(directory: Path | None = None) -> SchemaSet:
    """Load, resolve, parse and fingerprint every schema in ``directory``.

    Args:
        directory: the schemas directory; :func:`schema_dir` when omitted.

    Returns:
        The loaded set.

    Raises:
        SchemaError: a file does not parse, is misnamed, references an unknown type,
            a root type is missing, or a history file's name does not match its
            fingerprint.
    """
    directory = schema_dir() if directory is None else directory
    if not directory.is_dir():
        raise SchemaError(f"schemas directory {directory} does not exist")
    raw: dict[str, AvroSchema] = {}
    for path in _iter_named_files(directory):
        schema = _read_json(path)
        name = _full_name(schema, path)
        if path.name != f"{name}.avsc":
            raise SchemaError(f"{path}: holds {name}, so it must be named {name}.avsc")
        raw[name] = schema

    current: dict[str, SchemaVersion] = {}
    versions: dict[bytes, SchemaVersion] = {}
    # Every file must resolve on its own, not only the roots, so a broken row type
    # is reported by name even before a root references it.
    for name in sorted(raw):
        path = directory / f"{name}.avsc"
        try:
            parsed = load_schema(str(path))
        except (SchemaRepositoryError, SchemaParseException, UnknownType) as exc:
            raise SchemaError(f"{path}: {type(exc).__name__}: {exc}") from exc
        if name in ROOT_NAMES:
            version = SchemaVersion(name, fingerprint_of(parsed), parsed, path, True)
            current[name] = version
            versions[version.fingerprint] = version
    missing = [name for name in ROOT_NAMES if name not in current]
    if missing:
        raise SchemaError(f"{directory}: root types missing: {', '.join(missing)}")

    history = directory / HISTORY_DIR_NAME
    kept: set[bytes] = set()
    for path in sorted(history.glob("*.avsc")) if history.is_dir() else ():
        schema = _read_json(path)
        name = _full_name(schema, path)
        try:
            parsed = parse_schema(schema)
        except (SchemaParseException, UnknownType, ValueError, TypeError) as exc:
            raise SchemaError(f"{path}: {type(exc).__name__}: {exc}") from exc
        digest = fingerprint_of(parsed)
        if path.name != f"{name}.{digest.hex()}.avsc":
            raise SchemaError(
                f"{path}: content fingerprints as {name}.{digest.hex()}.avsc; "
                "history files are never edited"
            )
        kept.add(digest)
        if digest not in versions:
            versions[digest] = SchemaVersion(name, digest, parsed, path, False)
    return SchemaSet(
        directory,
        MappingProxyType(current),
        MappingProxyType(versions),
        frozenset(kept),
        MappingProxyType(raw),
    )


@functools.cache
def default_schema_set() -> SchemaSet:
    """Return the schema set of :func:`schema_dir`, loaded on first use only.

    Raises:
        SchemaError: as :func:`load_schema_set`.
    """
    return load_schema_set()


def expand(schemas: SchemaSet, name: str) -> AvroSchema:
    """Return the self-contained JSON of ``name``: references inlined, docs kept.

    Each named type is defined at its first use and referenced by full name after
    that, as Avro requires. This is what ``export`` writes.

    Args:
        schemas: the loaded set.
        name: a full name in ``schemas.raw``.

    Returns:
        The schema as JSON.
    """
    defined: set[str] = set()

    def walk(node: AvroSchema, namespace: str) -> AvroSchema:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full = node if "." in node else f"{namespace}.{node}"
            if full in defined or full not in schemas.raw:
                return full
            return walk(schemas.raw[full], namespace)
        if isinstance(node, list):
            return [walk(branch, namespace) for branch in node]
        out = dict(node)
        kind = node.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            full = _full_name(node, schemas.directory)
            defined.add(full)
            out["name"] = full
            out.pop("namespace", None)
            namespace = full.rpartition(".")[0]
            if kind != "enum" and "fields" in node:
                out["fields"] = [
                    {**f, "type": walk(f["type"], namespace)} for f in node["fields"]
                ]
        elif kind == "array":
            out["items"] = walk(node["items"], namespace)
        elif kind == "map":
            out["values"] = walk(node["values"], namespace)
        elif isinstance(kind, (dict, list)):
            out["type"] = walk(kind, namespace)
        return out

    return walk(schemas.raw[name], name.rpartition(".")[0])


# --- Compatibility (Avro schema resolution rules) -----------------------------------


def _named_types(schema: AvroSchema, into: dict[str, AvroSchema]) -> dict[str, Any]:
    """Collect every named type defined inside a parsed schema, by full name."""
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, into)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            into[schema["name"]] = schema
            for f in schema.get("fields", ()):
                _named_types(f["type"], into)
        elif kind == "array":
            _named_types(schema["items"], into)
        elif kind == "map":
            _named_types(schema["values"], into)
        elif isinstance(kind, (dict, list)):
            _named_types(kind, into)
    return into


def _kind(schema: AvroSchema) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        kind = schema["type"]
        return kind if isinstance(kind, str) else _kind(kind)
    return str(schema)


def incompatibilities(writer: AvroSchema, reader: AvroSchema) -> list[str]:
    """List why data written with ``writer`` cannot be read with ``reader``.

    Implements the Avro specification's schema resolution rules on parsed schemas
    (full names): matching names, promotions, reader fields without a writer field
    need a default, every writer union branch must be readable.

    Args:
        writer: the parsed writer schema.
        reader: the parsed reader schema.

    Returns:
        Problems as ``path: reason`` strings; empty when every datum is readable.
    """
    resolution = _Resolution(writer, reader)
    root = writer.get("name") if isinstance(writer, dict) else None
    resolution.check(writer, reader, root if isinstance(root, str) else _kind(writer))
    return resolution.problems


def _resolve(node: AvroSchema, names: Mapping[str, AvroSchema]) -> AvroSchema:
    """A reference as its definition, a ``{"type": <union or type>}`` as the type."""
    if isinstance(node, str) and node not in _PRIMITIVES:
        return names.get(node, node)
    if isinstance(node, dict) and isinstance(node.get("type"), (dict, list)):
        return node["type"]
    return node


def _matches(w: AvroSchema, r: AvroSchema) -> bool:
    """Whether reader type ``r`` reads writer type ``w`` (both resolved, not unions).

    A union branch is chosen by type kind and, for named types, by name.
    """
    wk, rk = _kind(w), _kind(r)
    if wk in ("record", "error", "enum", "fixed"):
        return rk == wk and (
            w["name"] == r["name"] or w["name"] in r.get("aliases", ())
        )
    return wk == rk or rk in _PROMOTIONS.get(wk, frozenset())


class _Resolution:
    """One writer-reader comparison: the named types of each and the problems found."""

    def __init__(self, writer: AvroSchema, reader: AvroSchema) -> None:
        self._writer_names = _named_types(writer, {})
        self._reader_names = _named_types(reader, {})
        self._seen: set[tuple[str, str]] = set()
        self.problems: list[str] = []

    def check(self, w: AvroSchema, r: AvroSchema, path: str) -> None:
        """Add every problem of reading ``w`` as ``r`` at ``path`` to :attr:`problems`."""
        w, r = _resolve(w, self._writer_names), _resolve(r, self._reader_names)
        wk, rk = _kind(w), _kind(r)
        if wk == "union":
            for branch in w:
                self.check(branch, r, path)
        elif rk == "union":
            self._check_union_reader(w, r, path)
        elif not _matches(w, r):
            self.problems.append(f"{path}: writer {wk} cannot be read as {rk}")
        elif wk in ("record", "error"):
            self._check_record(w, r, path)
        else:
            self._check_contents(wk, w, r, path)

    def _check_union_reader(self, w: AvroSchema, r: list[Any], path: str) -> None:
        branches = [_resolve(b, self._reader_names) for b in r]
        chosen = next((b for b in branches if _matches(w, b)), None)
        if chosen is None:
            self.problems.append(
                f"{path}: writer {_kind(w)} matches no reader union branch"
            )
        else:
            self.check(w, chosen, path)

    def _check_record(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        key = (w["name"], r["name"])
        if key in self._seen:
            return  # checked already, or being checked (a recursive type)
        self._seen.add(key)
        by_name = {f["name"]: f for f in w["fields"]}
        for rf in r["fields"]:
            wf = by_name.get(rf["name"]) or next(
                (by_name[a] for a in rf.get("aliases", ()) if a in by_name), None
            )
            if wf is not None:
                self.check(wf["type"], rf["type"], f"{path}.{rf['name']}")
            elif "default" not in rf:
                self.problems.append(
                    f"{path}.{rf['name']}: new reader field has no default"
                )

    def _check_contents(
        self, kind: str, w: AvroSchema, r: AvroSchema, path: str
    ) -> None:
        """Enum symbols, fixed sizes, array items and map values (same kind, names)."""
        if kind == "enum":
            missing = set(w["symbols"]) - set(r["symbols"])
            if missing and "default" not in r:
                self.problems.append(f"{path}: enum symbols {sorted(missing)} unknown")
        elif kind == "fixed" and w["size"] != r["size"]:
            self.problems.append(f"{path}: fixed size {w['size']} != {r['size']}")
        elif kind == "array":
            self.check(w["items"], r["items"], f"{path}[]")
        elif kind == "map":
            self.check(w["values"], r["values"], f"{path}{{}}")
