"""requirements.lock: checked against pyproject.toml offline, hashes everywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lock(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "dev" / "lock"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    (tmp_path / "dev").mkdir()
    shutil.copy(ROOT / "dev" / "lock", tmp_path / "dev" / "lock")
    for name in ("pyproject.toml", "requirements.lock", "Makefile"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_lock_matches_pyproject() -> None:
    result = _lock("check")
    assert (result.returncode, result.stderr) == (0, "")


def test_every_pin_carries_hashes() -> None:
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 6)[-1])
    pins = [b for b in blocks if "==" in b.split("\n", 1)[0]]
    assert len(pins) > 50
    for block in pins:
        assert "--hash=sha256:" in block, block.split("\n", 1)[0]


def test_every_declared_dependency_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = project["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pinned = {_name(line) for line in text.splitlines() if "==" in line[:80]}
    assert {_name(r) for r in declared} - pinned == set()


def test_runtime_export_has_the_runtime_and_nothing_of_the_extras() -> None:
    result = _lock("export", "runtime")
    assert result.returncode == 0, result.stderr
    names = {_name(line) for line in result.stdout.splitlines() if "==" in line}
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert {_name(r) for r in runtime["project"]["dependencies"]} <= names
    assert names.isdisjoint({"pytest", "mypy", "ruff", "matrix-synapse", "uv"})
    assert result.stdout.count("--hash=sha256:") >= len(names)


def test_a_lock_that_no_longer_matches_stops_make_in_one_line(copy: Path) -> None:
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(
        text.replace('"hiredis>=2.0",', '"hiredis>=2.0",\n  "attrs>=23",'),
        encoding="utf-8",
    )
    assert pyproject.read_text(encoding="utf-8") != text

    result = _lock("check", root=copy)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "does not match the dependencies in pyproject.toml" in result.stderr
    assert "make lock" in result.stderr

    made = subprocess.run(
        ["make", "-C", str(copy), "install"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert made.returncode != 0
    assert result.stderr.strip() in made.stderr
    assert not (copy / ".venv").exists()  # stopped before installing anything


def test_a_missing_lock_says_how_to_make_one(copy: Path) -> None:
    (copy / "requirements.lock").unlink()
    result = _lock("export", "runtime", root=copy)
    assert result.returncode == 1
    assert (
        result.stderr
        == "synkafka: requirements.lock is missing; create it with: make lock\n"
    )


def test_a_pin_edited_by_hand_is_caught(copy: Path) -> None:
    lock = copy / "requirements.lock"
    text = lock.read_text(encoding="utf-8")
    edited = re.sub(r"^redis==[^ ]+", "redis==5.0.0", text, count=1, flags=re.M)
    assert edited != text
    lock.write_text(edited, encoding="utf-8")
    result = _lock("check", root=copy)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "edited by hand" in result.stderr
    assert "make lock" in result.stderr
