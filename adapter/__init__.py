"""synkafka: Synapse worker replication carried over Apache Kafka.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

from adapter.codec import decode, encode
from adapter.commands import Command, parse_line, to_lines
from adapter.errors import (
    AdapterError,
    ConfigError,
    DecodeError,
    EncodeError,
    UnknownCommandError,
)

__version__ = "0.1.0"

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
