"""The root Typer application every command module registers on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from adapter import __version__
from adapter.cli.common import config_default_map

__all__ = ["app"]

app = typer.Typer(
    name="synkafka",
    help="Synapse worker replication over Apache Kafka: publish, consume, bridge, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _tree(command: object) -> dict[str, Any] | None:
    if isinstance(command, TyperGroup):
        return {name: _tree(sub) for name, sub in command.commands.items()}
    return None


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"synkafka {__version__}")
        raise typer.Exit


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="SYNKAFKA_CONFIG",
            help="TOML file with option defaults: top-level keys apply to every "
            "command, a table named after a command (consume, topics.ensure...) to one.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the version.",
        ),
    ] = False,
) -> None:
    """Synapse worker replication over Apache Kafka.

    Every option also reads a SYNKAFKA_* environment variable (see each --help).
    """
    if config is not None:
        tree = _tree(ctx.command) or {}
        ctx.default_map = config_default_map(config, tree)
