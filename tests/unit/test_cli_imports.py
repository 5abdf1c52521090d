"""Production commands never load the dev stack; ``--version`` tells the installed one.

Each command's ``--help`` runs in a fresh interpreter (imports are process-wide, so a
test in this process would see whatever earlier tests loaded), which then lists the
dev-stack modules it holds.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperGroup

from adapter.cli import app

DEV_STACK = (
    "adapter.devstack.services",
    "adapter.devstack.demo",
    "adapter.devstack.demo_synapse",
    "adapter.devstack.writer",
    "adapter.devstack.demo_run",
)

_PROBE = """
import json, sys
from adapter.cli import app
try:
    app(sys.argv[1:] + ["--help"], standalone_mode=False)
except SystemExit:
    pass
dev = %r
print(json.dumps(sorted(m for m in sys.modules if m in dev or m.startswith(
    tuple(d + "." for d in dev)))))
"""


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command of the real CLI, as argv prefixes."""
    paths: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            paths.append(path)

    walk(typer.main.get_command(app), ())
    return sorted(paths)


def _dev_modules_loaded(*argv: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE % (DEV_STACK,), *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


PRODUCTION = [p for p in _command_paths() if p[0] != "demo"]


def test_every_command_of_the_issue_is_covered() -> None:
    tops = {path[0] for path in PRODUCTION}
    expected = {
        "consume",
        "bridge",
        "presence",
        "lag",
        "tail",
        "topics",
        "publish",
        "feed",
    }
    assert tops >= expected | {"schemas"}


@pytest.mark.parametrize("argv", PRODUCTION, ids=" ".join)
def test_production_commands_do_not_load_the_dev_stack(argv: tuple[str, ...]) -> None:
    assert _dev_modules_loaded(*argv) == []


def test_the_probe_sees_the_dev_stack_when_it_is_loaded() -> None:
    # The demo's runner is what loads it; the probe must notice, or the test above
    # would pass whatever the commands import.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, adapter.devstack.demo_run; print(sorted(m for m in "
                "sys.modules if m.startswith('adapter.devstack.services')))"
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "adapter.devstack.services.kafka" in loaded
    assert _dev_modules_loaded("demo") == []  # --help alone does not load it


def test_version_is_the_installed_distribution() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "adapter", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    declared = tomllib.loads(
        (Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    )["project"]["version"]
    assert importlib.metadata.version("synkafka") == declared
    assert out.stdout.strip() == f"synkafka {declared}"
