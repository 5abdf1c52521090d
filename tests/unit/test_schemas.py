from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter.cli._app import app
from adapter.codec.schemas import (
    ROOT_NAMES,
    default_schema_set,
    expand,
    fingerprint_of,
    incompatibilities,
    load_schema_set,
    schema_dir,
)
from adapter.core.errors import SchemaError
from adapter.core.rows import ROW_CLASSES

RUNNER = CliRunner()


@pytest.fixture
def schemas_copy(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(schema_dir(), target)
    return target


def _edit(directory: Path, name: str, change: object) -> None:
    path = directory / f"{name}.avsc"
    schema = json.loads(path.read_text())
    change(schema)  # type: ignore[operator]
    path.write_text(json.dumps(schema, indent=2))


def _check(directory: Path) -> tuple[int, str]:
    result = RUNNER.invoke(app, ["schemas", "check", "--dir", str(directory)])
    return result.exit_code, result.output


def test_every_root_and_row_type_has_a_schema_file() -> None:
    names = {p.name.removesuffix(".avsc") for p in schema_dir().glob("*.avsc")}
    assert set(ROOT_NAMES) <= names
    rows = {n for n in names if n.startswith("synkafka.row.")}
    assert len(rows) == len(ROW_CLASSES) == 21
    assert "synkafka.presence.SyncingDevice" in names


def test_schemas_are_loaded_once() -> None:
    assert default_schema_set() is default_schema_set()


def test_fingerprint_matches_the_avro_spec_rabin_of_canonical_form() -> None:
    # CRC-64-AVRO of the canonical form "int", little-endian (Avro spec test vector
    # 0x7275d51a3f395c8f).
    assert fingerprint_of("int") == (0x7275D51A3F395C8F).to_bytes(8, "little")


def test_expand_inlines_each_named_type_once() -> None:
    schemas = default_schema_set()
    expanded = expand(schemas, "synkafka.command.Rdata")
    text = json.dumps(expanded)
    assert text.count('"name": "synkafka.row.Typing"') == 1
    assert (
        fingerprint_of(expanded)
        == schemas.current["synkafka.command.Rdata"].fingerprint
    )


def test_cli_check_passes_on_the_repository_schemas() -> None:
    code, output = _check(schema_dir())
    assert code == 0, output
    assert "ok: 17 root types" in output


def test_cli_list_shows_every_root_type() -> None:
    result = RUNNER.invoke(app, ["schemas", "list"])
    assert result.exit_code == 0, result.output
    for name in ROOT_NAMES:
        assert name in result.output


def test_cli_export_writes_self_contained_schemas(tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["schemas", "export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out").glob("*.avsc"))
    assert len(files) == len(ROOT_NAMES)
    rdata = json.loads((tmp_path / "out" / "synkafka.command.Rdata.avsc").read_text())
    assert (
        fingerprint_of(rdata)
        == default_schema_set().current["synkafka.command.Rdata"].fingerprint
    )


def test_cli_check_fails_when_current_version_is_not_in_history(
    schemas_copy: Path,
) -> None:
    _edit(schemas_copy, "synkafka.command.Ping", lambda s: s["fields"].append(
        {"name": "sent_ms", "type": ["null", "long"], "default": None}))  # fmt: skip
    code, output = _check(schemas_copy)
    assert code == 2
    assert "synkafka.command.Ping: current version" in output
    assert "export --fingerprinted" in output
    # Following the rule makes it pass: the old version is kept and still readable.
    RUNNER.invoke(app, ["schemas", "export", "--fingerprinted",
                        str(schemas_copy / "history"), "--dir", str(schemas_copy)])  # fmt: skip
    code, output = _check(schemas_copy)
    assert code == 0, output
    assert len(load_schema_set(schemas_copy).history_of("synkafka.command.Ping")) == 1


def test_cli_check_fails_when_a_field_without_default_is_added(
    schemas_copy: Path,
) -> None:
    _edit(schemas_copy, "synkafka.command.Ping", lambda s: s["fields"].append(
        {"name": "sent_ms", "type": "long"}))  # fmt: skip
    RUNNER.invoke(app, ["schemas", "export", "--fingerprinted",
                        str(schemas_copy / "history"), "--dir", str(schemas_copy)])  # fmt: skip
    code, output = _check(schemas_copy)
    assert code == 2
    assert "sent_ms: new reader field has no default" in output


def test_cli_check_fails_when_a_row_field_changes_type(schemas_copy: Path) -> None:
    def to_long(schema: dict[str, object]) -> None:
        schema["fields"][0]["type"] = "long"  # type: ignore[index]

    _edit(schemas_copy, "synkafka.row.Typing", to_long)
    code, output = _check(schemas_copy)
    assert code == 2
    assert "rows[].room_id: writer string cannot be read as long" in output


def test_cli_check_fails_on_an_unresolvable_reference(schemas_copy: Path) -> None:
    (schemas_copy / "synkafka.row.Typing.avsc").unlink()
    code, output = _check(schemas_copy)
    assert code == 2
    assert "synkafka.row.Typing" in output


def test_cli_check_fails_on_invalid_json(schemas_copy: Path) -> None:
    (schemas_copy / "synkafka.command.Ping.avsc").write_text("{")
    code, output = _check(schemas_copy)
    assert code == 2
    assert "cannot read JSON" in output


def test_misnamed_schema_file_is_a_schema_error(schemas_copy: Path) -> None:
    (schemas_copy / "synkafka.command.Ping.avsc").rename(schemas_copy / "ping.avsc")
    with pytest.raises(SchemaError, match="must be named"):
        load_schema_set(schemas_copy)


def test_edited_history_file_is_a_schema_error(schemas_copy: Path) -> None:
    path = next((schemas_copy / "history").glob("synkafka.command.Ping.*.avsc"))
    schema = json.loads(path.read_text())
    schema["fields"][0]["type"] = "bytes"
    path.write_text(json.dumps(schema))
    with pytest.raises(SchemaError, match="never edited"):
        load_schema_set(schemas_copy)


def test_missing_schema_directory_is_a_schema_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        load_schema_set(tmp_path / "nope")


@pytest.mark.parametrize(
    ("writer", "reader", "ok"),
    [
        ("int", "long", True),
        ("long", "int", False),
        ("string", "bytes", True),
        (["null", "string"], ["null", "string", "long"], True),
        (["null", "string", "long"], ["null", "string"], False),
        ("string", ["null", "string"], True),
    ],
)
def test_incompatibilities_follow_avro_resolution(
    writer: object, reader: object, ok: bool
) -> None:
    assert (incompatibilities(writer, reader) == []) is ok


def test_new_union_branch_is_compatible_but_removing_one_is_not() -> None:
    def record(branches: list[str]) -> dict[str, object]:
        return {"type": "record", "name": "x.R", "fields": [
            {"name": "v", "type": {"type": "array", "items": [
                {"type": "record", "name": f"x.{b}", "fields": []} for b in branches]}}]}  # fmt: skip

    assert incompatibilities(record(["A"]), record(["A", "B"])) == []
    assert incompatibilities(record(["A", "B"]), record(["A"])) == [
        "x.R.v[]: writer record matches no reader union branch"
    ]
