"""The root Typer application every command module registers on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapter import __version__
from adapter.cli.config_file import config_default_map

__all__ = ["app"]

app = typer.Typer(
    name="synkafka",
    help="Synapse worker replication over Apache Kafka: publish, consume, bridge, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
            "command, a table named after a command (consume, topics.ensure...) to one; "
            "keys are the long option names without dashes (json, from, metrics-port).",
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
        ctx.default_map = config_default_map(config, ctx.command)
