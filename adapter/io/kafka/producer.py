"""A confluent ``Producer`` that never loses a failure.

Defaults chosen here: ``enable.idempotence=true`` (which implies ``acks=all`` and
ordered retries per partition), ``linger.ms=5``, lz4 compression. Every delivery report
is checked: the first failure is kept and raised as :class:`DeliveryError` from the
next ``produce``, ``check`` or ``flush`` call, so a caller can never carry on as if a
record had been written. Fatal client errors (idempotence broken, authentication
failed) are raised the same way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as _ConfluentProducer

from adapter.core.config import KafkaSettings
from adapter.core.errors import DeliveryError, KafkaIOError
from adapter.io.kafka.client import client_log, config_error, connected_to_a_broker
from adapter.io.metrics import Metrics

__all__ = ["DEFAULT_PRODUCER_CONFIG", "Delivered", "Producer"]


DEFAULT_PRODUCER_CONFIG: Mapping[str, str] = {
    "enable.idempotence": "true",
    "acks": "all",
    "linger.ms": "5",
    "compression.type": "lz4",
    # A record that cannot be delivered within this time fails loudly.
    "message.timeout.ms": "120000",
}

# Client-level errors that mean "this will not get better by waiting".
_FATAL_CLIENT_ERRORS = {
    KafkaError._AUTHENTICATION,  # noqa: SLF001 (librdkafka's names for local errors)
    KafkaError._SSL,  # noqa: SLF001
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}


class Delivered(NamedTuple):
    """Where the broker put an acknowledged record.

    A named tuple: one is built per acknowledged record that has a callback.
    """

    topic: str
    partition: int
    offset: int


# Delivery reports are served after this many produce calls or 50 ms, whichever
# comes first (and by flush/poll).
_POLL_EVERY = 64
# How often an interruptible flush looks at its event: a stop is seen this fast.
_INTERRUPT_CHECK_S = 0.1

DeliveryCallback = Callable[[DeliveryError | None, Delivered | None], None]


class Producer:
    """Wraps ``confluent_kafka.Producer``; the client is created on first use.

    Args:
        settings: how to reach the cluster.
        client_id: shown in broker logs and metrics.
        extra: more librdkafka properties, applied after the defaults and before the
            settings' own ``-X`` overrides.
        metrics: where to count records out and delivery failures.
        stats_interval_s: how often librdkafka reports statistics (served by
            :meth:`poll`), from which :attr:`broker_up` is kept; 0 turns them off.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str = "synkafka",
        extra: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        stats_interval_s: float = 0.0,
    ) -> None:
        conf: dict[str, str] = {"client.id": client_id, **DEFAULT_PRODUCER_CONFIG}
        if stats_interval_s > 0:
            conf["statistics.interval.ms"] = str(max(1, int(stats_interval_s * 1000)))
        conf.update(extra or {})
        conf.update(settings.to_librdkafka())
        self._conf = conf
        self._settings = settings
        self._metrics = metrics
        self._client: _ConfluentProducer | None = None
        self._failure: KafkaIOError | None = None
        self._counters: dict[str, Any] = {}
        self._out_counts: dict[str, int] = {}
        self._unpolled = 0
        self._polled_at = 0.0
        self.acknowledged = 0
        self.broker_up = False
        """Whether the last statistics showed a connection to a broker (needs
        ``stats_interval_s``)."""
        self.on_lag: Callable[[float], None] | None = None
        """Called with the seconds from ``received_s`` to the acknowledgement of
        every record produced with a ``received_s``."""

    @property
    def client(self) -> _ConfluentProducer:
        """The underlying confluent producer (created lazily).

        Raises:
            ConfigError: librdkafka refused the configuration.
        """
        if self._client is None:
            conf: dict[str, object] = dict(self._conf)
            conf["error_cb"] = self._on_client_error
            conf["logger"] = client_log()
            if "statistics.interval.ms" in conf:
                conf["stats_cb"] = self._on_stats
            try:
                self._client = _ConfluentProducer(conf)
            except KafkaException as exc:
                # Construction fails only on configuration: retrying cannot help.
                raise config_error(exc, self._settings) from exc
        return self._client

    def _on_stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
        except ValueError:
            return
        if isinstance(stats, dict):
            self.broker_up = connected_to_a_broker(stats)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() in _FATAL_CLIENT_ERRORS:
            if self._failure is None:
                self._failure = KafkaIOError(
                    f"Kafka producer failed: {error.str()}", code=error.name()
                )
            # librdkafka repeats it on every reconnect.
            client_log().emit(logging.ERROR, error.str(), "Kafka producer error")
        else:
            # Transient (broker down, connection refused): librdkafka retries, and
            # reports it again on every attempt.
            client_log().emit(logging.WARNING, error.str(), "Kafka producer")

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        on_delivery: DeliveryCallback | None = None,
        received_s: float | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        """Queue one record; wait for queue space up to ``timeout_s``.

        ``received_s`` (a ``time.monotonic()`` reading, when the record's input
        arrived) has :attr:`on_lag` called with the input-to-acknowledgement time:
        the bridge's per-record lag, without a callback object per record.

        Raises:
            DeliveryError: an earlier record failed, or the queue stayed full.
            KafkaIOError: the client hit a fatal error.
        """
        if self._failure is not None:
            raise self._failure
        report: Callable[[KafkaError | None, Message], None]
        if on_delivery is not None:
            report = partial(self._report_to, on_delivery)
        elif received_s is not None and self.on_lag is not None:
            report = partial(self._report_lag, received_s)
        else:
            report = self._report
        client = self.client
        deadline: float | None = None
        while True:
            try:
                client.produce(
                    topic,
                    value,
                    key,
                    headers=headers
                    if isinstance(headers, list)
                    else (list(headers) or None),
                    on_delivery=report,
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                if deadline is None:
                    deadline = time.monotonic() + timeout_s
                elif time.monotonic() > deadline:
                    raise DeliveryError(
                        f"producer queue full for {timeout_s:.0f} s; is the broker reachable?",
                        retriable=True,
                    ) from None
                client.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = err.name() if isinstance(err, KafkaError) else ""
                raise DeliveryError(
                    f"cannot produce to {topic}: {exc}", code=code
                ) from exc
        # Serving delivery reports costs a call into librdkafka; once per batch of
        # records keeps reports flowing without paying it per record.
        self._unpolled += 1
        now = time.monotonic()
        if self._unpolled >= _POLL_EVERY or now - self._polled_at > 0.05:
            self._unpolled = 0
            self._polled_at = now
            client.poll(0)
            self._publish_counts()

    def _report(self, err: KafkaError | None, msg: Message) -> None:
        """Delivery report of a record produced without a callback of its own."""
        if err is not None:
            self._failed(err, msg.topic() or "")
            return
        self.acknowledged += 1
        self._count_out(msg.topic() or "")

    def _count_out(self, topic: str) -> None:
        # Counted here and added to the metric in _publish_counts: a labelled inc
        # takes a lock, which per acknowledged record costs more than the report.
        counts = self._out_counts
        counts[topic] = counts.get(topic, 0) + 1

    def _publish_counts(self) -> None:
        if not self._out_counts:
            return
        counts, self._out_counts = self._out_counts, {}
        if self._metrics is not None:
            for topic, count in counts.items():
                self._out_counter(topic).inc(count)

    def _report_lag(
        self, received_s: float, err: KafkaError | None, msg: Message
    ) -> None:
        """Delivery report of a record whose input-to-acknowledgement time counts."""
        self._report(err, msg)
        if err is None and self.on_lag is not None:
            self.on_lag(time.monotonic() - received_s)

    def _report_to(
        self, on_delivery: DeliveryCallback, err: KafkaError | None, msg: Message
    ) -> None:
        """Delivery report for a record whose caller wants to hear about it."""
        topic = msg.topic() or ""
        if err is not None:
            on_delivery(self._failed(err, topic), None)
            return
        self.acknowledged += 1
        self._count_out(topic)
        on_delivery(None, Delivered(topic, msg.partition() or 0, msg.offset() or 0))

    def _failed(self, err: KafkaError, topic: str) -> DeliveryError:
        failure = DeliveryError(
            f"record to {topic} not delivered: {err.str()}",
            code=err.name(),
            retriable=err.retriable(),
        )
        if self._failure is None:
            self._failure = failure
        if self._metrics is not None:
            self._metrics.delivery_failures.labels(topic).inc()
        return failure

    def _out_counter(self, topic: str) -> Any:
        # Label lookups cost more than the increment; topics are few.
        counter = self._counters.get(topic)
        if counter is None and self._metrics is not None:
            counter = self._counters[topic] = self._metrics.records_out.labels(topic)
        return counter

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        served: int = self.client.poll(timeout_s)
        self._publish_counts()
        return served

    def check(self) -> None:
        """Raise the first failure seen so far, if any.

        Raises:
            KafkaIOError: a delivery or client failure happened.
        """
        if self._failure is not None:
            raise self._failure

    def flush(
        self, timeout_s: float = 30.0, *, interrupt: threading.Event | None = None
    ) -> None:
        """Wait until every queued record is acknowledged.

        Args:
            timeout_s: the longest wait.
            interrupt: when set, stop waiting within :data:`_INTERRUPT_CHECK_S`
                (librdkafka's own flush cannot be woken, so it is called in slices).

        Raises:
            DeliveryError: a record failed, or some were still unacknowledged at the
                deadline or when ``interrupt`` was set. The message gives the time
                actually waited.
        """
        if self._client is None:
            return
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            step = deadline - time.monotonic()
            if interrupt is not None:
                step = min(step, _INTERRUPT_CHECK_S)
            remaining = self._client.flush(max(0.0, step))
            if (
                not remaining
                or self._failure is not None
                or time.monotonic() >= deadline
                or (interrupt is not None and interrupt.is_set())
            ):
                break
        self._publish_counts()
        self.check()
        if remaining:
            waited = time.monotonic() - started
            raise DeliveryError(
                f"{remaining} records not acknowledged within {waited:.1f} s",
                retriable=True,
            )

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush and drop the client (librdkafka closes it when collected)."""
        try:
            self.flush(timeout_s)
        finally:
            self._client = None
