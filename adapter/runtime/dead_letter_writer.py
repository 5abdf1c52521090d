"""Writes dead letters and waits for the broker's acknowledgement of each one.

The consumer commits past a bad record, and the bridge forgets a bad Redis line, only
after this writer returned: the dead letter is on the broker. So:

* a value too large for the producer or the topic is replaced by a reference record
  (:mod:`adapter.core.dead_letters`), also when the broker refuses a value the producer
  let through (a topic whose ``max.message.bytes`` is lower);
* an outage is waited out in place, with backoff, instead of failing the caller: a
  consumer that restarted over a failed dead letter would resume at the pinned head
  and never see the bad record again;
* reasons are masked (:func:`adapter.core.masking.mask_access_tokens`) before they go into a
  header, a reference or a log line.

It keeps a producer of its own: a failed delivery poisons a producer (it re-raises
the first failure, see :mod:`adapter.io.kafka.producer`), and a refused dead letter must
not stop the records of the main producer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from adapter.core import dead_letters, topics
from adapter.core.backoff import Backoff
from adapter.core.config import KafkaSettings
from adapter.core.errors import DeliveryError, KafkaIOError
from adapter.core.masking import mask_access_tokens
from adapter.io.kafka.producer import Producer
from adapter.io.metrics import Metrics

__all__ = ["DeadLetterWriter"]

logger = logging.getLogger(__name__)

# Producer (local) and broker answers that mean "this value is too large".
_TOO_LARGE = frozenset(
    {"_MSG_SIZE_TOO_LARGE", "MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"}
)
# Answers that waiting will not change: the writer gives up and says why.
_PERMANENT = frozenset(
    {
        "_AUTHENTICATION",
        "_SSL",
        "SASL_AUTHENTICATION_FAILED",
        "TOPIC_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "_UNKNOWN_TOPIC",
        "UNKNOWN_TOPIC_OR_PART",
        "_INVALID_ARG",
    }
)
_FLUSH_TIMEOUT_S = 30.0


class DeadLetterWriter:
    """Writes records to ``<prefix>.dlq``, one acknowledged write at a time.

    Thread-safe: the consumer's poll loop and its stream workers share one.

    Args:
        kafka: how to reach the cluster (its ``-X`` properties decide the size limit).
        prefix: the topic prefix.
        client_id: the producer's client ID.
        metrics: ``synkafka_dead_letters_total`` is counted here.
        stop: when set, a write that cannot get through gives up (raises) instead of
            waiting on; ``None`` waits until the write succeeds.
        backoff: delays between attempts while the broker does not acknowledge.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        prefix: str,
        *,
        client_id: str,
        metrics: Metrics,
        stop: threading.Event | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._kafka = kafka
        self.topic = topics.dlq_topic(prefix)
        self._client_id = client_id
        self._metrics = metrics
        self._stop = stop
        self._backoff = backoff or Backoff(initial_s=0.5, max_s=10.0)
        self._limit = dead_letters.value_limit(kafka.to_librdkafka())
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def write(
        self,
        value: bytes | None,
        *,
        key: bytes | str | None,
        reason: str,
        source: str,
        location: Mapping[str, str | int],
        headers: Sequence[tuple[str, bytes]] = (),
        counted_as: tuple[str, str],
    ) -> None:
        """Write one dead letter and return once the broker acknowledged it.

        Args:
            value: the bad record's value (or line), whole.
            key: its key.
            reason: why it is a dead letter (masked here).
            source: the ``dlq.source`` header (where it came from, in a word).
            location: where the original is, for a reference record.
            headers: more headers to keep (the original's, or topic/partition/offset).
            counted_as: the (topic, reason) labels of ``synkafka_dead_letters_total``.

        Raises:
            KafkaIOError: the broker refused it for good (authorization, say), or
                ``stop`` was set before it got through. Nothing may be committed past
                the record then.
        """
        reason = mask_access_tokens(reason)
        all_headers = [
            (topics.HEADER_DLQ_REASON, reason.encode("utf-8", "replace")),
            (topics.HEADER_DLQ_SOURCE, mask_access_tokens(source).encode()),
            *headers,
        ]
        letter = dead_letters.dead_letter(
            value, all_headers, source=location, reason=reason, limit=self._limit
        )
        with self._lock:
            # The broker may have refused the whole value: then a reference went.
            letter = self._write_acknowledged(
                letter, key, value, all_headers, location, reason
            )
        if letter.reference:
            logger.warning(
                "%s: %d bytes are over the dead-letter limit; wrote a reference "
                "record (source, size, SHA-256, first KiB) to %s",
                source,
                len(value or b""),
                self.topic,
            )
        self._metrics.dead_letters.labels(*counted_as).inc()

    def _write_acknowledged(
        self,
        letter: dead_letters.DeadLetter,
        key: bytes | str | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        location: Mapping[str, str | int],
        reason: str,
    ) -> dead_letters.DeadLetter:
        backoff_attempts = 0
        while True:
            producer = self._client()
            try:
                producer.produce(
                    self.topic, letter.value, key=key, headers=list(letter.headers)
                )
                producer.flush(_FLUSH_TIMEOUT_S)
            except DeliveryError as exc:
                self._drop_client()
                if exc.code in _TOO_LARGE and not letter.reference and value:
                    letter = dead_letters.dead_letter(
                        value,
                        headers,
                        source=location,
                        reason=reason,
                        limit=self._limit,
                        force_reference=True,
                    )
                    continue
                if exc.code in _PERMANENT:
                    raise KafkaIOError(
                        f"cannot write to the dead-letter topic {self.topic}: {exc} "
                        "(does it exist? `synkafka topics ensure` creates it)",
                        code=exc.code,
                    ) from exc
                if self._stop is not None and self._stop.is_set():
                    raise KafkaIOError(
                        f"stopped before the dead-letter topic {self.topic} "
                        f"acknowledged a record: {exc}",
                        retriable=True,
                    ) from exc
                delay = self._backoff.next_delay()
                backoff_attempts += 1
                if backoff_attempts == 1 or backoff_attempts % 10 == 0:
                    logger.warning(
                        "dead-letter topic %s: %s; trying again (attempt %d)",
                        self.topic,
                        exc,
                        backoff_attempts + 1,
                    )
                if self._stop is not None:
                    self._stop.wait(delay)
                else:
                    threading.Event().wait(delay)
            else:
                self._backoff.reset()
                return letter

    def _client(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._kafka, client_id=self._client_id)
        return self._producer

    def _drop_client(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout_s=1.0)
            except KafkaIOError:
                logger.debug("closing a failed dead-letter producer", exc_info=True)

    def close(self) -> None:
        """Flush and close the producer (each write already waited for its ack)."""
        with self._lock:
            self._drop_client()
