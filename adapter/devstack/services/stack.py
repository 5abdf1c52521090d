"""Start several local services together and stop them together.

:class:`LocalStack` is what ``synkafka demo`` and ``python -m adapter.devstack.services up``
use: ask for the services you need, enter the context, and every process that was
started is stopped on exit, in reverse order, even if a later one failed to start or
the user pressed Ctrl-C.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Self

from adapter.devstack.services.kafka import (
    KAFKA_VERSION,
    KafkaBroker,
    fetch_kafka,
    kafka_home,
)
from adapter.devstack.services.postgres import PostgresCluster
from adapter.devstack.services.redis import RedisServer

__all__ = ["LocalStack"]

logger = logging.getLogger(__name__)


def _quiet(_message: str) -> None:
    """Default progress callback: say nothing."""


class LocalStack:
    """A context manager owning any of Kafka, PostgreSQL and Redis.

    Example::

        with LocalStack(kafka=True, redis=True, progress=print) as stack:
            assert stack.kafka is not None
            run(stack.kafka.bootstrap_servers, stack.redis.url)

    Args:
        kafka: start a :class:`KafkaBroker` (fetching its jars first if needed).
        postgres: start a :class:`PostgresCluster`.
        redis: start a :class:`RedisServer`.
        progress: called with one human-readable line per step.
    """

    def __init__(
        self,
        *,
        kafka: bool = True,
        postgres: bool = False,
        redis: bool = False,
        progress: Callable[[str], None] = _quiet,
    ) -> None:
        self._want_kafka = kafka
        self._want_postgres = postgres
        self._want_redis = redis
        self._progress = progress
        self.kafka: KafkaBroker | None = None
        self.postgres: PostgresCluster | None = None
        self.redis: RedisServer | None = None

    def start(self) -> None:
        """Start the requested services; on failure, stop those already started.

        Raises:
            ServiceError: a service is missing or would not start.
        """
        try:
            if self._want_kafka:
                if not (kafka_home(KAFKA_VERSION) / ".complete").is_file():
                    self._progress(
                        f"Fetching the Apache Kafka {KAFKA_VERSION} jars with Maven "
                        f"into {kafka_home(KAFKA_VERSION)} (first run only)..."
                    )
                install = fetch_kafka()
                if install.downloaded:
                    self._progress(
                        f"Fetched the Kafka jars in {install.elapsed_s:.1f} s."
                    )
                self._progress(f"Starting Kafka {KAFKA_VERSION} (KRaft, one node)...")
                self.kafka = KafkaBroker()
                self.kafka.start()
                self._progress(
                    f"Kafka ready on {self.kafka.bootstrap_servers} "
                    f"in {self.kafka.ready_s or 0:.1f} s."
                )
            if self._want_postgres:
                self._progress("Starting PostgreSQL...")
                self.postgres = PostgresCluster()
                self.postgres.start()
                self._progress(f"PostgreSQL ready at {self.postgres.dsn()}.")
            if self._want_redis:
                self._progress("Starting Redis...")
                self.redis = RedisServer()
                self.redis.start()
                self._progress(f"Redis ready at {self.redis.url}.")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every started service in reverse order and remove their folders."""
        for name in ("redis", "postgres", "kafka"):
            service: KafkaBroker | PostgresCluster | RedisServer | None = getattr(
                self, name
            )
            if service is None:
                continue
            self._progress(f"Stopping {name}...")
            try:
                service.close()
            except Exception:  # one failing service must not leave the others running
                logger.exception("stopping %s failed", name)
            setattr(self, name, None)

    def addresses(self) -> dict[str, str]:
        """Return ``{"kafka": bootstrap, "postgres": dsn, "redis": url}`` of what runs."""
        out: dict[str, str] = {}
        if self.kafka is not None:
            out["kafka"] = self.kafka.bootstrap_servers
        if self.postgres is not None:
            out["postgres"] = self.postgres.dsn()
        if self.redis is not None:
            out["redis"] = self.redis.url
        return out

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
