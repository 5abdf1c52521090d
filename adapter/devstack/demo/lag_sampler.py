"""The consumer group's lag during the demo, measured as ``synkafka lag`` does."""

from __future__ import annotations

import logging
import threading

from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.errors import AdapterError
from adapter.devstack.demo.settings import CONSUMER_NAME, QUIET, DemoSettings
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import Consumer
from adapter.runtime.lag import LagRow, measure_lag

__all__ = ["LagSampler"]

logger = logging.getLogger(__name__)


class LagSampler:
    """Measures the consumer group's lag (like ``synkafka lag``) in a thread.

    Args:
        settings: the demo's settings.
        interval_s: pause between samples.
    """

    def __init__(self, settings: DemoSettings, interval_s: float = 1.0) -> None:
        kafka = KafkaSettings(bootstrap_servers=settings.bootstrap, overrides=QUIET)
        self._admin: Admin | None = Admin(kafka, timeout_s=10.0)
        self._consumer = Consumer(
            kafka,
            f"{settings.prefix}.demo-lag-reader",
            client_id="synkafka-demo-lag",
            # measure_lag assigns this consumer and then asks for metadata and
            # watermarks: the broker answers those only after the pending fetch,
            # which waits up to fetch.wait.max.ms (500 ms by default) on an idle
            # partition. 10 ms makes one measurement take 0.3 s instead of 10 s.
            extra={"fetch.wait.max.ms": "10"},
        )
        self._prefix = settings.prefix
        self._group = topics.consumer_group(settings.prefix, CONSUMER_NAME)
        self._streams = settings.streams
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._rows: list[LagRow] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def measure(self) -> list[LagRow]:
        """One measurement now (not thread-safe with the background thread)."""
        if self._admin is None:
            raise AdapterError("the lag sampler is closed")
        return measure_lag(
            self._admin, self._consumer, self._prefix, [self._group], self._streams
        )

    def record(self, rows: list[LagRow]) -> None:
        """Keep ``rows`` as the latest sample (a measurement taken outside the thread)."""
        with self._lock:
            self._rows = list(rows)

    def latest(self) -> list[LagRow]:
        """The last background sample."""
        with self._lock:
            return list(self._rows)

    def start(self) -> None:
        """Sample in a background thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="demo-lag", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop the background thread (so :meth:`measure` may be called)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.measure()
            except AdapterError as exc:
                logger.debug("lag sample failed: %s", exc)
            else:
                with self._lock:
                    self._rows = rows
            self._stop.wait(self._interval_s)

    def close(self) -> None:
        """Stop sampling, close the reader and drop the admin client.

        librdkafka destroys a client when it is collected; one kept alive would keep
        reconnecting (and logging) after the broker stopped.
        """
        self.pause()
        self._consumer.close()
        self._admin = None
