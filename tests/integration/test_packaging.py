"""The wheel carries the schemas of the top-level ``schemas/`` folder, byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from adapter.codec.schemas import PACKAGED_DIR_NAME, schema_dir

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def _repo_schemas() -> dict[str, bytes]:
    return {
        path.relative_to(SCHEMAS).as_posix(): path.read_bytes()
        for path in sorted(SCHEMAS.rglob("*.avsc"))
    }


def test_the_packaged_folder_is_the_top_level_one() -> None:
    # In a checkout the package's copy is a link to schemas/, so it cannot drift.
    link = ROOT / "adapter" / PACKAGED_DIR_NAME
    assert link.is_symlink()
    assert link.resolve() == SCHEMAS.resolve()
    assert schema_dir({}) == SCHEMAS.resolve()


def test_the_wheel_holds_every_schema_file_unchanged(tmp_path: Path) -> None:
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
    )
    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
    subprocess.run(
        [*build, "--outdir", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("synkafka-*.whl")
    prefix = f"adapter/{PACKAGED_DIR_NAME}/"
    with zipfile.ZipFile(wheel) as archive:
        packaged = {
            name.removeprefix(prefix): archive.read(name)
            for name in archive.namelist()
            if name.startswith(prefix)
        }
    expected = _repo_schemas()
    assert len(expected) > 16  # the current files and their history
    assert packaged == expected
