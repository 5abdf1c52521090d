"""synkafka: Synapse worker replication carried over Apache Kafka.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

import importlib.metadata

from adapter.codec.avro_codec import decode, encode
from adapter.core.commands import Command, parse_line, to_lines
from adapter.core.errors import (
    AdapterError,
    ConfigError,
    DecodeError,
    EncodeError,
    UnknownCommandError,
)


def _installed_version() -> str:
    # The distribution's metadata is the one truth (pyproject.toml writes it); a
    # source tree that was never installed has none.
    try:
        return importlib.metadata.version("synkafka")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()

__all__ = [
    "AdapterError",
    "Command",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "UnknownCommandError",
    "__version__",
    "decode",
    "encode",
    "parse_line",
    "to_lines",
]
