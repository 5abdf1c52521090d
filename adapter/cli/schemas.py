"""``synkafka schemas list | export DIR | check``: inspect and guard the Avro schemas.

A thin shell over :mod:`adapter.codec.schemas` and :mod:`adapter.codec.avro_codec`: it loads the schema
set, prints, writes files, and turns problems into exit code 2.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated

import typer
from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from adapter.cli._app import app
from adapter.codec.avro_codec import Codec
from adapter.codec.schemas import (
    HISTORY_DIR_NAME,
    ROOT_NAMES,
    SCHEMA_DIR_ENV,
    AvroSchema,
    SchemaSet,
    expand,
    incompatibilities,
    load_schema_set,
    schema_dir,
)
from adapter.core.errors import SchemaError

__all__ = ["check", "export", "list_schemas", "schemas_app"]

schemas_app = typer.Typer(
    name="schemas",
    help="List, export and check the Avro schemas of synkafka's records.",
    no_args_is_help=True,
)
app.add_typer(schemas_app, name="schemas")

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        envvar=SCHEMA_DIR_ENV,
        help="Schemas directory (default: the schemas installed with synkafka).",
    ),
]

# How many generated records per kept version ``check`` round-trips through the
# current schema, on top of the structural rules.
_SAMPLES_PER_VERSION = 8


def _load(directory: Path | None) -> SchemaSet:
    try:
        return load_schema_set(directory or schema_dir())
    except SchemaError as exc:
        typer.echo(f"synkafka: error: {exc}", err=True)
        raise typer.Exit(code=2) from exc


@schemas_app.command("list")
def list_schemas(directory: DirOption = None) -> None:
    """List every root type with its current fingerprint and kept versions."""
    schemas = _load(directory)
    typer.echo(f"{'type':40} {'fingerprint':16}  kept")
    for name in ROOT_NAMES:
        version = schemas.current[name]
        kept = len(schemas.history_of(name)) + (version.fingerprint in schemas.kept)
        typer.echo(f"{name:40} {version.fingerprint_hex}  {kept}")


@schemas_app.command("export")
def export(
    target: Annotated[Path, typer.Argument(help="Directory to write into.")],
    fingerprinted: Annotated[
        bool,
        typer.Option(
            "--fingerprinted",
            help="Name files <type>.<fingerprint>.avsc, as schemas/history wants.",
        ),
    ] = False,
    directory: DirOption = None,
) -> None:
    """Write every root type as one self-contained schema file (references inlined).

    After changing a schema, keep the new version with
    ``synkafka schemas export --fingerprinted schemas/history``.
    """
    schemas = _load(directory)
    target.mkdir(parents=True, exist_ok=True)
    for name in ROOT_NAMES:
        version = schemas.current[name]
        suffix = f".{version.fingerprint_hex}" if fingerprinted else ""
        path = target / f"{name}{suffix}.avsc"
        text = json.dumps(expand(schemas, name), indent=2) + "\n"
        path.write_text(text, encoding="utf-8")
        typer.echo(str(path))


@schemas_app.command("check")
def check(directory: DirOption = None) -> None:
    """Check that every schema parses and resolves, and old records stay readable.

    Fails (exit code 2) when a schema does not parse, a reference does not resolve,
    a current root version is missing from history, or a current schema cannot read
    a kept older version.
    """
    schemas = _load(directory)
    problems: list[str] = []
    for name in ROOT_NAMES:
        current = schemas.current[name]
        if current.fingerprint not in schemas.kept:
            problems.append(
                f"{name}: current version {current.fingerprint_hex} is not in "
                f"{HISTORY_DIR_NAME}/; run: synkafka schemas export --fingerprinted "
                f"{schemas.directory / HISTORY_DIR_NAME}"
            )
        for old in schemas.history_of(name):
            found = incompatibilities(old.parsed, current.parsed)
            problems.extend(
                f"{old.path.name}: current {name} cannot read it: {p}" for p in found
            )
            if not found:
                problems.extend(
                    _sample_round_trip(old.parsed, current.parsed, old.path)
                )
    try:
        Codec(schemas)
    except SchemaError as exc:
        problems.append(str(exc))
    if problems:
        for problem in problems:
            typer.echo(f"synkafka: schema problem: {problem}", err=True)
        raise typer.Exit(code=2)
    versions = len(schemas.versions)
    typer.echo(f"ok: {len(schemas.current)} root types, {versions} versions readable")


def _sample_round_trip(writer: AvroSchema, reader: AvroSchema, path: Path) -> list[str]:
    """Write generated records with ``writer`` and read them with ``reader``."""
    problems = []
    for datum in generate_many(writer, _SAMPLES_PER_VERSION):
        buffer = io.BytesIO()
        try:
            schemaless_writer(buffer, writer, datum)
            buffer.seek(0)
            schemaless_reader(buffer, writer, reader)
        except Exception as exc:  # noqa: BLE001  (any failure here is the finding)
            problems.append(f"{path.name}: sample did not resolve: {exc}")
            break
    return problems
