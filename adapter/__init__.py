"""synkafka: Synapse worker replication carried over Apache Kafka.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

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
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "UnknownCommandError",
    "__version__",
]
