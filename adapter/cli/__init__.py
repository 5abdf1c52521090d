"""The ``synkafka`` command line.

Each command lives in its own module and registers itself on :data:`app`.
``main`` maps :class:`~adapter.errors.AdapterError` to one line on stderr and exit
code 2; anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import sys

import typer

# Importing a command module registers its command on the app.
from adapter.cli import bridge as _bridge  # noqa: F401
from adapter.cli import consume as _consume  # noqa: F401
from adapter.cli import demo as _demo  # noqa: F401
from adapter.cli import lag as _lag  # noqa: F401
from adapter.cli import presence as _presence  # noqa: F401
from adapter.cli import publish as _publish  # noqa: F401
from adapter.cli import schemas as _schemas  # noqa: F401
from adapter.cli import topics as _topics  # noqa: F401
from adapter.cli._app import app
from adapter.errors import AdapterError
from adapter.masking import mask_access_tokens

__all__ = ["app", "main"]


def main() -> None:
    """Run the CLI; the console script ``synkafka`` points here."""
    try:
        code = app(standalone_mode=False)
    except AdapterError as exc:
        typer.echo(f"synkafka: error: {mask_access_tokens(str(exc))}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("Aborted.", err=True)
        sys.exit(130)
    except typer.TyperException as exc:
        # Usage errors (bad options) arrive here because standalone mode is off.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"synkafka: error: {mask_access_tokens(str(exc))}", err=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)
