"""``KafkaRecord``: the value type that crosses from confluent-kafka into synkafka.

The core never sees a confluent ``Message``; the shell converts each one here and
raises on a message that carries an error instead of a record.
"""

from __future__ import annotations

from typing import NamedTuple

from confluent_kafka import Message

from adapter.core.errors import ConsumeError

__all__ = ["KafkaRecord", "from_message"]


class KafkaRecord(NamedTuple):
    """One consumed record (a named tuple: built once per record on the hot path).

    Attributes:
        topic: the topic name.
        partition: the partition number.
        offset: the record's offset in its partition.
        key: the raw key, or None.
        value: the raw value, or None for a tombstone.
        headers: the record headers, in order, values as bytes.
        timestamp_ms: the record's timestamp in ms since the epoch (0 if unknown).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @property
    def where(self) -> str:
        """``topic[partition]@offset``, how logs and errors name a record."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


def from_message(message: Message) -> KafkaRecord:
    """Convert a confluent ``Message`` to a :class:`KafkaRecord`.

    Raises:
        ConsumeError: the message reports an error rather than carrying a record.
    """
    error = message.error()
    if error is not None:
        raise ConsumeError(
            f"consume failed: {error.str()}",
            code=error.name(),
            retriable=bool(error.retriable()),
        )
    raw_headers = message.headers() or []
    pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    headers = tuple(
        (k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in pairs
    )
    _, ts = message.timestamp()
    return KafkaRecord(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
        headers=headers,
        timestamp_ms=max(ts, 0),
    )
