"""Avro readers and writers generated for one schema: plain Python, faster than fastavro.

fastavro's compiled reader walks the schema for every datum (a type lookup and a few
dict reads per value) and reads through a file object, one method call per value;
its writer likewise, from dicts the caller must build first. For records of a few
hundred bytes that is most of the cost of consuming or publishing a stream.
:class:`CompiledReader` instead generates, once per schema, Python source that reads
a ``bytes`` object by index: a field is a handful of byte-code operations, nested
records are one function call, and records can be built straight into the caller's
types (``builders``) instead of dicts that are converted afterwards.
:class:`CompiledWriter` generates the reverse: it reads the fields of the caller's
objects (or dicts) and appends to one ``bytearray``.

Only a writer schema read as itself is generated (no schema resolution: records
written by an older schema version still go through fastavro). Schemas with a
logical type, an array or map of zero-width items (reader), or a union other than
``[null, T]`` or of records with classes (writer) are refused with
:class:`UnsupportedSchema`, and the caller keeps fastavro for them.

The reader is stricter than fastavro on bytes no Avro writer produces (a boolean
byte other than 0 or 1, a varint longer than ten bytes or beyond 64 bits, an int
outside 32 bits, a negative length, a union index out of range): it raises
``ValueError`` where fastavro would return something. The writer takes only exact
types (an ``int`` for a long, never a ``bool`` or a ``float``) and raises otherwise,
so its caller can ask fastavro, whose rules and error messages then apply. On valid
values the results equal fastavro's; the unit tests check both.

It must not do I/O or know about commands, rows or framing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

from adapter.codec.schemas import AvroSchema

__all__ = ["CompiledReader", "CompiledWriter", "UnsupportedSchema"]

_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1


class UnsupportedSchema(ValueError):
    """The schema uses something the generator does not read; use fastavro."""


def _varint(data: bytes, pos: int, acc: int) -> tuple[int, int]:
    """Finish a varint whose first byte ``acc`` had the continuation bit set."""
    acc &= 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        acc |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if acc >> 64:
                raise ValueError("varint beyond 64 bits")
            return acc, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than ten bytes")


def _eof(need: int, pos: int, size: int) -> EOFError:
    return EOFError(f"need {need} bytes at {pos}, only {size - pos} left")


def _bad_union(index: int, branches: int) -> ValueError:
    return ValueError(f"union index {index} out of range (0..{branches - 1})")


def _bad_boolean(byte: int) -> ValueError:
    return ValueError(f"boolean byte {byte}, expected 0 or 1")


def _bad_int(value: int) -> ValueError:
    return ValueError(f"int {value} outside 32 bits")


def _bad_length(length: int) -> ValueError:
    return ValueError(f"negative length {length}")


def _bad_enum(index: int, symbols: int) -> ValueError:
    return ValueError(f"enum index {index} out of range (0..{symbols - 1})")


class _Generator:
    """What generated readers and writers share: names, constants, named types."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.functions: list[str] = []
        self.named: dict[str, dict[str, Any]] = {}
        self.record_functions: dict[str, str] = {}
        self._counter = 0

    def var(self, stem: str = "v") -> str:
        self._counter += 1
        return f"{stem}{self._counter}"

    def constant(self, value: Any) -> str:
        name = self.var("_k")
        self.namespace[name] = value
        return name

    def resolve(self, schema: AvroSchema) -> AvroSchema:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            try:
                return self.named[schema]
            except KeyError:
                raise UnsupportedSchema(f"unknown named type {schema!r}") from None
        return schema

    def register(self, schema: AvroSchema) -> None:
        """Learn every named type (parsed schemas define each once, then name it)."""
        if isinstance(schema, list):
            for branch in schema:
                self.register(branch)
        elif isinstance(schema, dict):
            if "logicalType" in schema:
                raise UnsupportedSchema(f"logical type {schema['logicalType']!r}")
            kind = schema.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                self.named[schema["name"]] = schema
            if kind in ("record", "error"):
                for f in schema["fields"]:
                    self.register(f["type"])
            elif kind == "array":
                self.register(schema["items"])
            elif kind == "map":
                self.register(schema["values"])
            elif isinstance(kind, (dict, list)):
                self.register(kind)

    def emit(self, schema: AvroSchema, target: str, out: list[str], ind: str) -> None:
        """Append the lines for one ``schema`` value, read into or written from ``target``."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            self._union(schema, target, out, ind)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(kind, (dict, list)):
            self.emit(kind, target, out, ind)
            return
        self._emit_kind(kind, schema, target, out, ind)

    def build(
        self, schema: AvroSchema, head: list[str], tail: str, filename: str
    ) -> str:
        """Generate the module, run it into :attr:`namespace`, return its source.

        The module is the record functions, then ``head``, the root value's lines
        and ``tail`` (the entry function).
        """
        self.register(schema)
        out = list(head)
        self.emit(schema, "value", out, "    ")
        out.append(tail)
        source = "\n\n".join([*self.functions, "\n".join(out)]) + "\n"
        # Generated once per schema from the schema's own names and types, as
        # dataclasses generates __init__: straight-line code is what makes it fast.
        exec(compile(source, filename, "exec"), self.namespace)  # noqa: S102
        return source

    def _union(
        self, branches: list[Any], target: str, out: list[str], ind: str
    ) -> None:
        raise NotImplementedError

    def _emit_kind(
        self, kind: str, schema: AvroSchema, target: str, out: list[str], ind: str
    ) -> None:
        raise NotImplementedError


class _Source(_Generator):
    """The generated reader: one function per named record and one for the root."""

    def __init__(self, builders: Mapping[str, Callable[..., Any]]) -> None:
        super().__init__(
            {
                "_varint": _varint,
                "_eof": _eof,
                "_bad_union": _bad_union,
                "_bad_boolean": _bad_boolean,
                "_bad_int": _bad_int,
                "_bad_length": _bad_length,
                "_bad_enum": _bad_enum,
                "_f32": struct.Struct("<f").unpack_from,
                "_f64": struct.Struct("<d").unpack_from,
            }
        )
        self.builders = builders
        self.tables: dict[str, list[str]] = {}

    # -- schema walking -------------------------------------------------------------

    def zero_width(
        self, schema: AvroSchema, seen: frozenset[str] = frozenset()
    ) -> bool:
        """True if a value of ``schema`` can take no bytes at all."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            return False  # a union always writes its branch index
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(kind, (dict, list)):
            return self.zero_width(kind, seen)
        if kind == "null":
            return True
        if kind == "fixed":
            return int(schema["size"]) == 0
        if kind in ("record", "error"):
            name = schema["name"]
            if name in seen:
                return False
            return all(
                self.zero_width(f["type"], seen | {name}) for f in schema["fields"]
            )
        return False

    # -- code emission ----------------------------------------------------------------

    def _emit_kind(
        self, kind: str, schema: AvroSchema, target: str, out: list[str], ind: str
    ) -> None:
        """Append lines that read one ``schema`` value into ``target``, advancing p."""
        if kind == "null":
            out.append(f"{ind}{target} = None")
        elif kind == "boolean":
            out += [
                f"{ind}{target} = b[p]",
                f"{ind}p += 1",
                f"{ind}if {target} == 1: {target} = True",
                f"{ind}elif {target} == 0: {target} = False",
                f"{ind}else: raise _bad_boolean({target})",
            ]
        elif kind in ("int", "long"):
            self._long(target, out, ind)
            if kind == "int":
                out.append(
                    f"{ind}if not {_INT_MIN} <= {target} <= {_INT_MAX}: "
                    f"raise _bad_int({target})"
                )
        elif kind in ("float", "double"):
            width, fn = (4, "_f32") if kind == "float" else (8, "_f64")
            out += [
                f"{ind}if p + {width} > n: raise _eof({width}, p, n)",
                f"{ind}{target} = {fn}(b, p)[0]",
                f"{ind}p += {width}",
            ]
        elif kind in ("string", "bytes"):
            length = self.var("n")
            self._long(length, out, ind)
            end = self.var("e")
            out += [
                f"{ind}if {length} < 0: raise _bad_length({length})",
                f"{ind}{end} = p + {length}",
                f"{ind}if {end} > n: raise _eof({length}, p, n)",
                f"{ind}{target} = b[p:{end}]"
                + (".decode()" if kind == "string" else ""),
                f"{ind}p = {end}",
            ]
        elif kind == "fixed":
            size = int(schema["size"])
            out += [
                f"{ind}if p + {size} > n: raise _eof({size}, p, n)",
                f"{ind}{target} = b[p:p + {size}]",
                f"{ind}p += {size}",
            ]
        elif kind == "enum":
            symbols = self.constant(tuple(schema["symbols"]))
            index = self.var("i")
            self._long(index, out, ind)
            count = len(schema["symbols"])
            out += [
                f"{ind}if not 0 <= {index} < {count}: raise _bad_enum({index}, {count})",
                f"{ind}{target} = {symbols}[{index}]",
            ]
        elif kind in ("record", "error"):
            fn = self.record_function(schema)
            out.append(f"{ind}{target}, p = {fn}(b, p, n)")
        elif kind == "array":
            self._blocks(schema["items"], None, target, out, ind)
        elif kind == "map":
            self._blocks(schema["values"], "string", target, out, ind)
        else:
            raise UnsupportedSchema(f"type {kind!r}")

    def _long(self, target: str, out: list[str], ind: str) -> None:
        # One- and two-byte varints (tokens, lengths up to 8191) inline; longer
        # ones through _varint.
        out += [
            f"{ind}{target} = b[p]",
            f"{ind}p += 1",
            f"{ind}if {target} & 128:",
            f"{ind}    if b[p] < 128:",
            f"{ind}        {target} = ({target} & 127) | (b[p] << 7)",
            f"{ind}        p += 1",
            f"{ind}    else: {target}, p = _varint(b, p, {target})",
            f"{ind}{target} = ({target} >> 1) ^ -({target} & 1)",
        ]

    def _union(
        self, branches: list[Any], target: str, out: list[str], ind: str
    ) -> None:
        index = self.var("i")
        self._long(index, out, ind)
        resolved = [self.resolve(branch) for branch in branches]
        if len(branches) > 2 and all(
            isinstance(r, dict) and r.get("type") in ("record", "error")
            for r in resolved
        ):
            # A union of records (a stream's row kinds): index a tuple of readers
            # instead of testing the branches one by one.
            table = self.var("_t")
            self.namespace[table] = None  # filled in once the functions exist
            self.tables[table] = [self.record_function(r) for r in resolved]
            count = len(branches)
            out += [
                f"{ind}if not 0 <= {index} < {count}: raise _bad_union({index}, {count})",
                f"{ind}{target}, p = {table}[{index}](b, p, n)",
            ]
            return
        for i, branch in enumerate(branches):
            out.append(f"{ind}{'if' if i == 0 else 'elif'} {index} == {i}:")
            self.emit(branch, target, out, ind + "    ")
        out.append(f"{ind}else: raise _bad_union({index}, {len(branches)})")

    def _blocks(
        self,
        items: AvroSchema,
        key: str | None,
        target: str,
        out: list[str],
        ind: str,
    ) -> None:
        if self.zero_width(items) and (key is None):
            # A count of zero-width items is not bounded by the bytes left.
            raise UnsupportedSchema("array of zero-width items")
        count, item, name = self.var("c"), self.var("x"), self.var("k")
        out.append(f"{ind}{target} = {{}}" if key else f"{ind}{target} = []")
        out.append(f"{ind}while True:")
        inner = ind + "    "
        self._long(count, out, inner)
        out += [
            f"{inner}if not {count}: break",
            f"{inner}if {count} < 0:",
            f"{inner}    {count} = -{count}",
        ]
        skipped = self.var("s")
        self._long(skipped, out, inner + "    ")
        # Every item takes at least one byte: a count beyond the bytes left is a
        # corrupt length, refused before it sizes a loop.
        out += [
            f"{inner}if {count} > n - p: raise _eof({count}, p, n)",
            f"{inner}for _ in range({count}):",
        ]
        body = inner + "    "
        if key:
            self.emit(key, name, out, body)
            self.emit(items, item, out, body)
            out.append(f"{body}{target}[{name}] = {item}")
        else:
            self.emit(items, item, out, body)
            out.append(f"{body}{target}.append({item})")

    def record_function(self, schema: dict[str, Any]) -> str:
        name = schema["name"]
        existing = self.record_functions.get(name)
        if existing is not None:
            return existing
        fn = self.record_functions[name] = f"_r{len(self.record_functions)}"
        out = [f"def {fn}(b, p, n):"]
        values = []
        for f in schema["fields"]:
            value = self.var()
            values.append(value)
            self.emit(f["type"], value, out, "    ")
        builder = self.builders.get(name)
        if builder is not None:
            make = self.constant(builder)
            out.append(f"    return {make}({', '.join(values)}), p")
        else:
            items = ", ".join(
                f"{f['name']!r}: {v}"
                for f, v in zip(schema["fields"], values, strict=True)
            )
            out.append(f"    return {{{items}}}, p")
        self.functions.append("\n".join(out))
        return fn


class CompiledReader:
    """Reads Avro bodies of one schema from ``bytes``, with generated code.

    Args:
        schema: the parsed writer schema (``fastavro.parse_schema`` output).
        builders: optional constructors by record full name, called with the
            record's field values in schema order instead of building a dict.

    Raises:
        UnsupportedSchema: the schema has a logical type or a type the generator
            does not read; read it with fastavro instead.
    """

    def __init__(
        self,
        schema: AvroSchema,
        builders: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        gen = _Source(builders or {})
        self.source = gen.build(
            schema,
            ["def read(b, p):", "    n = len(b)"],
            "    return value, p",
            "<avro reader>",
        )
        """The generated Python, for tests and debugging."""
        for table, functions in gen.tables.items():
            gen.namespace[table] = tuple(gen.namespace[fn] for fn in functions)
        self._read: Callable[[bytes, int], tuple[Any, int]] = gen.namespace["read"]

    def read(self, data: bytes, pos: int = 0) -> tuple[Any, int]:
        """Read one value starting at ``pos``; return it and the position after it.

        Raises:
            IndexError, EOFError: the bytes end inside the value.
            ValueError: bytes no Avro writer produces (also ``UnicodeDecodeError``).
        """
        return self._read(data, pos)


# --- Writers -------------------------------------------------------------------------

_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


def _write_varint(out: bytearray, z: int) -> None:
    """Append the varint of a zig-zagged value of 128 or more."""
    while z >= 128:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


class _WriterSource(_Generator):
    """The generated writer: one function per named record and one for the root."""

    def __init__(self, classes: Mapping[str, type[Any]]) -> None:
        super().__init__(
            {
                "_varint": _write_varint,
                "_pack_f32": struct.Struct("<f").pack,
                "_pack_f64": struct.Struct("<d").pack,
                "_str": str,
                "_int": int,
                "_float": float,
                "_bytes": bytes,
                "_list_types": (list, tuple),
                "_dict": dict,
            }
        )
        self.classes = classes
        self.tables: dict[str, dict[type[Any], tuple[int, str]]] = {}

    def _long(self, value: str, out: list[str], ind: str, low: int, high: int) -> None:
        # Exactly int (not bool, not float): anything else goes to fastavro, whose
        # rules for odd values the caller falls back to.
        z = self.var("z")
        check = f"_int is not type({value}) or not {low} <= {value} <= {high}"
        out += [
            f"{ind}if {check}: raise TypeError('not a long or out of range')",
            f"{ind}{z} = ({value} << 1) ^ ({value} >> 63)",
            f"{ind}if {z} < 128: o.append({z})",
            f"{ind}else: _varint(o, {z})",
        ]

    def _length(self, n: str, out: list[str], ind: str) -> None:
        out += [
            f"{ind}if {n} < 64: o.append({n} << 1)",
            f"{ind}else: _varint(o, {n} << 1)",
        ]

    def _emit_kind(
        self, kind: str, schema: AvroSchema, value: str, out: list[str], ind: str
    ) -> None:
        """Append lines that write ``value`` (an expression) as ``schema`` to ``o``."""
        if isinstance(schema, dict) and "logicalType" in schema:
            raise UnsupportedSchema(f"logical type {schema['logicalType']!r}")
        v = self.var()
        out.append(f"{ind}{v} = {value}")
        if kind == "null":
            out.append(f"{ind}if {v} is not None: raise TypeError('not null')")
        elif kind == "boolean":
            out += [
                f"{ind}if {v} is True: o.append(1)",
                f"{ind}elif {v} is False: o.append(0)",
                f"{ind}else: raise TypeError('not a boolean')",
            ]
        elif kind == "long":
            self._long(v, out, ind, _LONG_MIN, _LONG_MAX)
        elif kind == "int":
            self._long(v, out, ind, _INT_MIN, _INT_MAX)
        elif kind in ("float", "double"):
            pack = "_pack_f32" if kind == "float" else "_pack_f64"
            check = f"type({v}) is not _float and type({v}) is not _int"
            out += [
                f"{ind}if {check}: raise TypeError('not a number')",
                f"{ind}o += {pack}({v})",
            ]
        elif kind in ("string", "bytes"):
            e, n = self.var("e"), self.var("n")
            if kind == "string":
                out += [
                    f"{ind}if type({v}) is not _str: raise TypeError('not a string')",
                    f"{ind}{e} = {v}.encode()",
                ]
            else:
                out += [
                    f"{ind}if type({v}) is not _bytes: raise TypeError('not bytes')",
                    f"{ind}{e} = {v}",
                ]
            out.append(f"{ind}{n} = len({e})")
            self._length(n, out, ind)
            out.append(f"{ind}o += {e}")
        elif kind == "fixed":
            size = int(schema["size"])
            check = f"type({v}) is not _bytes or len({v}) != {size}"
            out += [
                f"{ind}if {check}: raise TypeError('not fixed')",
                f"{ind}o += {v}",
            ]
        elif kind == "enum":
            symbols = self.constant({s: i for i, s in enumerate(schema["symbols"])})
            i = self.var("i")
            out += [f"{ind}{i} = {symbols}[{v}]"]  # KeyError: not a symbol
            self._length(i, out, ind)
        elif kind in ("record", "error"):
            fn = self.record_function(schema)
            out.append(f"{ind}{fn}({v}, o)")
        elif kind in ("array", "map"):
            n, x, k = self.var("n"), self.var("x"), self.var("k")
            check = "_list_types" if kind == "array" else "_dict"
            out += [
                f"{ind}if not isinstance({v}, {check}): raise TypeError('not a {kind}')",
                f"{ind}{n} = len({v})",
                f"{ind}if {n}:",
            ]
            self._length(n, out, ind + "    ")
            if kind == "array":
                out.append(f"{ind}    for {x} in {v}:")
                self.emit(schema["items"], x, out, ind + "        ")
            else:
                out.append(f"{ind}    for {k}, {x} in {v}.items():")
                self.emit("string", k, out, ind + "        ")
                self.emit(schema["values"], x, out, ind + "        ")
            out.append(f"{ind}o.append(0)")
        else:
            raise UnsupportedSchema(f"type {kind!r}")

    def _union(self, branches: list[Any], value: str, out: list[str], ind: str) -> None:
        resolved = [self.resolve(b) for b in branches]
        kinds = [r if isinstance(r, str) else r.get("type") for r in resolved]
        if len(branches) == 2 and kinds[0] == "null" and kinds[1] != "null":
            v = self.var()
            out += [
                f"{ind}{v} = {value}",
                f"{ind}if {v} is None: o.append(0)",
                f"{ind}else:",
                f"{ind}    o.append(2)",
            ]
            self.emit(branches[1], v, out, ind + "    ")
            return
        if all(k in ("record", "error") for k in kinds):
            # Records by their Python class: the union branch is the class's.
            table: dict[type[Any], tuple[int, str]] = {}
            for index, r in enumerate(resolved):
                cls = self.classes.get(r["name"])
                if cls is None:
                    raise UnsupportedSchema(f"no class for union branch {r['name']}")
                table[cls] = (index, self.record_function(r))
            name = self.var("_t")
            self.tables[name] = table
            self.namespace[name] = None
            v, i, fn = self.var(), self.var("i"), self.var("f")
            out += [
                f"{ind}{v} = {value}",
                f"{ind}{i}, {fn} = {name}[type({v})]",  # KeyError: not a branch
            ]
            self._length(i, out, ind)
            out.append(f"{ind}{fn}({v}, o)")
            return
        raise UnsupportedSchema("a union other than [null, T] or of records")

    def record_function(self, schema: dict[str, Any]) -> str:
        name = schema["name"]
        existing = self.record_functions.get(name)
        if existing is not None:
            return existing
        fn = self.record_functions[name] = f"_w{len(self.record_functions)}"
        out = [f"def {fn}(r, o):"]
        cls = self.classes.get(name)
        for f in schema["fields"]:
            field_name = f["name"]
            if cls is not None:
                if not hasattr(cls, field_name):
                    raise UnsupportedSchema(f"{cls.__name__} has no field {field_name}")
                access = f"r.{field_name}"
            else:
                access = f"r[{field_name!r}]"
            self.emit(f["type"], access, out, "    ")
        if len(out) == 1:
            out.append("    pass")
        self.functions.append("\n".join(out))
        return fn


class CompiledWriter:
    """Writes values of one schema as Avro bytes, with generated code.

    Args:
        schema: the parsed schema (``fastavro.parse_schema`` output).
        classes: the Python class of records by full name; their fields are read as
            attributes of the same names, and a union of records picks its branch by
            the value's class. Records without a class are read as dicts.
        prefix: bytes written before every body (a single-object header).

    Raises:
        UnsupportedSchema: a logical type, a union other than ``[null, T]`` or of
            records with classes, or a class without one of its record's fields.
    """

    def __init__(
        self,
        schema: AvroSchema,
        classes: Mapping[str, type[Any]] | None = None,
        prefix: bytes = b"",
    ) -> None:
        gen = _WriterSource(classes or {})
        gen.namespace["_prefix"] = prefix
        self.source = gen.build(
            schema,
            ["def write(value):", "    o = bytearray(_prefix)"],
            "    return bytes(o)",
            "<avro writer>",
        )
        """The generated Python, for tests and debugging."""
        for table, entries in gen.tables.items():
            gen.namespace[table] = {
                cls: (i, gen.namespace[fn]) for cls, (i, fn) in entries.items()
            }
        self._write: Callable[[Any], bytes] = gen.namespace["write"]

    def write(self, value: Any) -> bytes:
        """The prefix and the Avro body of ``value``.

        Raises:
            TypeError, KeyError, ValueError, AttributeError, UnicodeEncodeError: the
                value does not fit the schema (the codec then asks fastavro, whose
                errors name the field).
        """
        return self._write(value)
