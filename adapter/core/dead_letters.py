"""What goes to the dead-letter topic: the record itself, or a reference to it.

A bad record of any size must reach the dead-letter topic, and a producer refuses a
record above its ``message.max.bytes`` (and the broker one above the topic's
``max.message.bytes``). So a value that fits is stored whole, and one that does not is
replaced by a small JSON **reference record** that says where the original is and how
to recognise it:

.. code-block:: json

    {"synkafka_dlq_reference": 1,
     "source": {"topic": "synapse.example.com.stream.events", "partition": 0,
                "offset": 1234},
     "size": 3145728, "sha256": "9f86d0...", "head_base64": "<the first KiB>",
     "reason": "decode: ..."}

``source`` is the Kafka position (consumer) or the Redis channel (bridge). The
original stays on its topic until retention (a Redis line is gone: the first KiB and
the digest are all that is kept). Reference records carry the header
``dlq.reference: 1``.

Pure: no I/O, no Kafka client.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_BYTES",
    "HEADER_REFERENCE",
    "REFERENCE_HEAD_BYTES",
    "DeadLetter",
    "dead_letter",
    "reference_value",
    "value_limit",
]

DEFAULT_MAX_BYTES: Final = 1_000_000
"""librdkafka's default ``message.max.bytes`` (the broker's default topic limit,
1,048,588, is a little higher)."""

REFERENCE_HEAD_BYTES: Final = 1024
HEADER_REFERENCE: Final = "dlq.reference"

# Room for the key, the headers and the record batch's own overhead, so a value at the
# limit still fits once it is framed.
_FRAMING_BYTES: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record ready for the dead-letter topic.

    Attributes:
        value: the original value, or the reference record's JSON.
        headers: the headers to write (the reference header added when it is one).
        reference: ``True`` when ``value`` is a reference record.
    """

    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    reference: bool


def value_limit(librdkafka: Mapping[str, str]) -> int:
    """Return the largest value stored whole, given the producer's settings.

    Args:
        librdkafka: the producer's librdkafka properties (``-X`` included).
    """
    configured = librdkafka.get("message.max.bytes", "")
    limit = int(configured) if configured.isdigit() else DEFAULT_MAX_BYTES
    return max(REFERENCE_HEAD_BYTES * 4, limit - _FRAMING_BYTES)


def reference_value(
    value: bytes, *, source: Mapping[str, str | int], reason: str
) -> bytes:
    """Return the JSON reference record that stands in for ``value``.

    Args:
        value: the original bytes.
        source: where the original is (topic, partition, offset; or a Redis channel).
        reason: why it is a dead letter (already masked).
    """
    document = {
        "synkafka_dlq_reference": 1,
        "source": dict(source),
        "size": len(value),
        "sha256": hashlib.sha256(value).hexdigest(),
        "head_base64": base64.b64encode(value[:REFERENCE_HEAD_BYTES]).decode("ascii"),
        "reason": reason,
    }
    return json.dumps(document, sort_keys=True).encode("utf-8")


def dead_letter(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    *,
    source: Mapping[str, str | int],
    reason: str,
    limit: int,
    force_reference: bool = False,
) -> DeadLetter:
    """Decide what to write for one bad record: itself if it fits, else a reference.

    Args:
        value: the original value.
        headers: the dead-letter headers (reason, source...).
        source: where the original is, for a reference record.
        reason: why (already masked).
        limit: the largest value stored whole (:func:`value_limit`).
        force_reference: write a reference whatever the size (the broker refused the
            whole record: its topic's limit is lower than the producer's).
    """
    if value is None or (len(value) <= limit and not force_reference):
        return DeadLetter(value, tuple(headers), False)
    return DeadLetter(
        reference_value(value, source=source, reason=reason),
        (*headers, (HEADER_REFERENCE, b"1")),
        True,
    )
