"""The exit codes every ``synkafka`` command uses, and which error gets which.

======  ======================================================================
code    meaning
======  ======================================================================
0       success
1       runtime failure: Kafka, the database or Redis failed or refused (an
        unreachable service, an authentication or authorization failure, a record
        not acknowledged), a check that found differences (``topics describe``),
        or a bug (which keeps its traceback). Running again later may succeed.
2       usage, configuration or input error: a bad flag, option value, setting,
        DSN, config file or input line. Nothing will change until the command,
        its settings or its input do.
130     interrupted (Ctrl-C)
======  ======================================================================

Click's own usage errors (an unknown option, a missing argument) already exit 2, so
the two kinds of "fix your command" error share one code.
"""

from __future__ import annotations

from typing import Final

from adapter.core.errors import (
    AdapterError,
    ConfigError,
    SchemaError,
    UnknownStreamError,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "exit_code_for",
]

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_CONFIG: Final = 2
EXIT_INTERRUPTED: Final = 130

# Errors that only a change to the command, its settings or its input can fix. An
# unknown stream name comes from a flag; a schema that does not parse comes from the
# installed schemas or SYNKAFKA_SCHEMA_DIR, both configuration.
_CONFIG_ERRORS: Final = (ConfigError, UnknownStreamError, SchemaError)


def exit_code_for(exc: AdapterError) -> int:
    """The exit code for an error that reached the command line.

    Args:
        exc: the error.

    Returns:
        :data:`EXIT_CONFIG` for configuration, usage and input errors,
        :data:`EXIT_RUNTIME` for everything else (Kafka, database, Redis, delivery).
    """
    return EXIT_CONFIG if isinstance(exc, _CONFIG_ERRORS) else EXIT_RUNTIME
