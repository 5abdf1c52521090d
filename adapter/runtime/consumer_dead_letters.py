"""The replication consumer's dead letters: bad records and updates a handler refused.

The dead-letter producer is opened on the first dead letter, not at start: most runs
never write one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.ports import StreamUpdate
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import Metrics
from adapter.runtime.dead_letter_writer import DeadLetterWriter

__all__ = ["ConsumerDeadLetters"]


class ConsumerDeadLetters:
    """Writes a consumer's dead letters to ``<prefix>.dlq``.

    Args:
        kafka: how to reach the cluster.
        prefix: the topic prefix.
        instance_name: the consumer's name (in the producer's client id).
        metrics: where to count dead letters.
        stop_event: the consumer's stop event, once it runs: a write that waits for
            the broker gives up when it is set.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        prefix: str,
        instance_name: str,
        metrics: Metrics,
        *,
        stop_event: Callable[[], threading.Event | None],
    ) -> None:
        self._kafka = kafka
        self._prefix = prefix
        self._instance_name = instance_name
        self._metrics = metrics
        self._stop_event = stop_event
        self._writer: DeadLetterWriter | None = None

    def _dlq(self) -> DeadLetterWriter:
        writer = self._writer
        if writer is None:
            writer = DeadLetterWriter(
                self._kafka,
                self._prefix,
                client_id=f"synkafka-{self._instance_name}-dlq",
                metrics=self._metrics,
                stop=self._stop_event(),
            )
            self._writer = writer
        return writer

    def record(self, record: KafkaRecord, reason: str) -> None:
        """Write ``record`` to the dead-letter topic; return once it is acknowledged."""
        self._dlq().write(
            record.value,
            key=record.key,
            reason=reason,
            source=record.where,
            location={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
            headers=[
                ("dlq.topic", record.topic.encode()),
                ("dlq.partition", str(record.partition).encode()),
                ("dlq.offset", str(record.offset).encode()),
                *[(k, v) for k, v in record.headers if not k.startswith("dlq.")],
            ],
            counted_as=(record.topic, reason.split(":", 1)[0]),
        )

    def update(
        self, update: StreamUpdate | None, raw: bytes | None, reason: str
    ) -> None:
        """Write an update its handler kept refusing (the ``dead-letter`` policy)."""
        stream = update.stream_name if update else ""
        headers: list[tuple[str, bytes]] = []
        location: dict[str, str | int] = {"stream": stream}
        if update is not None:
            headers += [
                (topics.HEADER_STREAM, update.stream_name.encode()),
                (topics.HEADER_WRITER, update.instance_name.encode()),
                ("token", str(update.token).encode()),
            ]
            location.update(writer=update.instance_name, token=update.token)
        self._dlq().write(
            raw,
            key=update.instance_name if update else None,
            reason=reason,
            source=f"handler:{stream}",
            location=location,
            headers=headers,
            counted_as=(
                topics.stream_topic(self._prefix, stream)
                if stream
                else self._dlq().topic,
                "handler",
            ),
        )

    def close(self) -> None:
        """Close the producer if one was opened (the next dead letter reopens it)."""
        if self._writer is not None:
            self._writer.close()
