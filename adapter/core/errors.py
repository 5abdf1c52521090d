"""The only exception types synkafka raises.

The whole tree, so callers can pick the level they catch at::

    AdapterError
    ├── ConfigError (ValueError)          bad settings or arguments: our own mistake
    ├── SchemaError                       a schema file does not parse or resolve
    ├── CodecError
    │   ├── EncodeError (ValueError)      a value does not fit its schema
    │   └── DecodeError (ValueError)      bytes or a line from a peer cannot be read
    │       ├── UnknownCommandError       a line names a command we do not know
    │       └── UnknownStreamDecodeError  peer input names a stream we do not know
    │                                     (also an UnknownStreamError)
    ├── UnknownStreamError (LookupError)  a stream name nobody registered
    ├── PositionError                     a token rule was broken by our own caller
    ├── ServiceError                      a local service (broker, database, Redis) would not start
    ├── KafkaIOError                      anything the broker or librdkafka reported
    │   ├── DeliveryError                 a produced record was not acknowledged
    │   └── ConsumeError                  polling or committing failed
    └── BackfillError                     reading rows or positions from the database failed

Errors from peers (``DecodeError``) are handled by the poison-input policy of the
runtime; errors from our own inputs surface at once.
"""

from __future__ import annotations

from adapter.core.masking import mask_access_tokens

__all__ = [
    "AdapterError",
    "BackfillError",
    "CodecError",
    "ConfigError",
    "ConsumeError",
    "DatabaseConfigError",
    "DecodeError",
    "DeliveryError",
    "EncodeError",
    "KafkaIOError",
    "PositionError",
    "SchemaError",
    "ServiceError",
    "SinkError",
    "UnknownCommandError",
    "UnknownStreamDecodeError",
    "UnknownStreamError",
    "exception_summary",
]


class AdapterError(Exception):
    """Root of every error synkafka raises on purpose."""


class ConfigError(AdapterError, ValueError):
    """Settings or arguments are invalid."""


class SchemaError(AdapterError):
    """An Avro schema file is missing, does not parse, or references an unknown type."""


class CodecError(AdapterError):
    """Base of encoding and decoding failures."""


class EncodeError(CodecError, ValueError):
    """A value does not fit its schema; ``path`` names the offending field."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{message} (at {path})" if path else message)
        self.path = path


class DecodeError(CodecError, ValueError):
    """Bytes or a text line cannot be decoded.

    ``where`` says where the input came from (``topic[partition]@offset``, a line
    number, ...) when the caller knows it.
    """

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(f"{message} ({where})" if where else message)
        self.reason = message
        self.where = where


class UnknownCommandError(DecodeError):
    """A line or record names a command this version does not know."""


class UnknownStreamError(AdapterError, LookupError):
    """A stream name that is not registered."""


class UnknownStreamDecodeError(DecodeError, UnknownStreamError):
    """Peer input (a Synapse line, a Kafka record) names a stream we do not know.

    It is both kinds at once so that a poison-input handler catching ``DecodeError``
    and a caller catching ``UnknownStreamError`` each see it.
    """


class PositionError(AdapterError):
    """A caller broke a token rule (for example a token that is not an integer)."""


class ServiceError(AdapterError):
    """A local service (Kafka, PostgreSQL, Redis) is missing or would not start."""


class KafkaIOError(AdapterError):
    """The broker or librdkafka reported an error.

    Attributes:
        code: librdkafka's error name (``_TRANSPORT``, ``TOPIC_AUTHORIZATION_FAILED``...).
        retriable: whether trying again may succeed.
    """

    def __init__(
        self, message: str, *, code: str = "", retriable: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable


class DeliveryError(KafkaIOError):
    """A produced record was not acknowledged by the broker."""


class ConsumeError(KafkaIOError):
    """Polling, committing or reading offsets failed."""


class BackfillError(AdapterError):
    """Reading rows or positions from the database failed."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class DatabaseConfigError(BackfillError, ConfigError):
    """The database answered, and said the settings are wrong.

    A database name or role that does not exist, a refused password, a database
    without Synapse's tables: waiting will not change the answer, so it is not
    retried, and the command ends with the configuration exit code.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


class SinkError(AdapterError):
    """A built-in sink cannot write its output (disk full, a closed pipe, ...).

    Not retried and never dead-lettered: the consumer stops without committing past
    the update that was not written.
    """


def exception_summary(exc: BaseException) -> str:
    """One line for an exception synkafka did not raise itself (a handler's, say).

    ``RuntimeError: the message``, whitespace folded so a multi-line message stays one
    line, with access tokens masked. Every message built from a foreign exception goes
    through here, so a token it quotes (in a handler's error, say) never shows.

    Args:
        exc: the exception.

    Returns:
        Its type name and message, on one line.
    """
    text = mask_access_tokens(" ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
