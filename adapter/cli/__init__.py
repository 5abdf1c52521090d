"""The ``synkafka`` command line.

Each command lives in its own module and registers itself on :data:`app`.
``main`` maps :class:`~adapter.errors.AdapterError` to one line on stderr and exit
code 2; anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import sys

import typer

from adapter.cli import demo as _demo  # noqa: F401  (registers its command)
from adapter.cli import presence as _presence  # noqa: F401
from adapter.cli._app import app
from adapter.errors import AdapterError

__all__ = ["app", "main"]


def main() -> None:
    """Run the CLI; the console script ``synkafka`` points here."""
    try:
        app(standalone_mode=False)
    except AdapterError as exc:
        typer.echo(f"synkafka: error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here with standalone_mode off
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
