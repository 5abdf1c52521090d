"""The ``synkafka`` command line.

Each command lives in its own module and registers itself on :data:`app`.
``main`` turns every :class:`~adapter.core.errors.AdapterError` into one line on stderr
and the exit code :mod:`adapter.cli.exit_codes` assigns it (2 for usage and
configuration errors, 1 for runtime failures); anything else is a bug and keeps its
traceback (exit code 1).
"""

from __future__ import annotations

import sys

import typer

# Importing a command module registers its command on the app.
from adapter.cli import bridge as _bridge  # noqa: F401
from adapter.cli import consume as _consume  # noqa: F401
from adapter.cli import demo as _demo  # noqa: F401
from adapter.cli import feed as _feed  # noqa: F401
from adapter.cli import feed_consume as _feed_consume  # noqa: F401
from adapter.cli import lag as _lag  # noqa: F401
from adapter.cli import presence as _presence  # noqa: F401
from adapter.cli import publish as _publish  # noqa: F401
from adapter.cli import schemas as _schemas  # noqa: F401
from adapter.cli import topics as _topics  # noqa: F401
from adapter.cli._app import app
from adapter.cli.common import masked_default_logging
from adapter.cli.exit_codes import EXIT_CONFIG, EXIT_INTERRUPTED, exit_code_for
from adapter.core.errors import AdapterError
from adapter.core.masking import mask_access_tokens

__all__ = ["app", "main"]


def _usage_line(exc: Exception) -> str | None:
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    text = " ".join(mask_access_tokens(str(message)).split())
    if not text:
        return None
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "synkafka"
    return f"{text} (see `{command} --help`)"


def main() -> None:
    """Run the CLI; the console script ``synkafka`` points here."""
    masked_default_logging()
    try:
        code = app(standalone_mode=False)
    except AdapterError as exc:
        typer.echo(f"synkafka: error: {mask_access_tokens(str(exc))}", err=True)
        sys.exit(exit_code_for(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("Aborted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as exc:
        # Usage errors (bad options, a missing argument) arrive here because
        # standalone mode is off; they are all "fix the command", like ConfigError,
        # and get one line like every other error, pointing at the right --help.
        line = _usage_line(exc)
        if line is not None:  # None: the help was shown (a group called bare)
            typer.echo(f"synkafka: error: {line}", err=True)
        sys.exit(EXIT_CONFIG)
    sys.exit(code if isinstance(code, int) else 0)
