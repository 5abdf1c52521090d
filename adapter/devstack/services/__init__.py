"""Real local services for tests and the demo: Kafka, PostgreSQL and Redis.

No Docker: Kafka runs from Maven jars cached under ``~/.cache/synkafka``, PostgreSQL
and Redis from the Debian packages. Every service binds to 127.0.0.1 on a free port
and cannot outlive the Python process that started it (see ``_process``).
"""

from __future__ import annotations

from adapter.devstack.services.kafka import (
    KAFKA_VERSION,
    KafkaBroker,
    KafkaInstall,
    fetch_kafka,
    kafka_home,
)
from adapter.devstack.services.postgres import PostgresCluster
from adapter.devstack.services.redis import RedisServer
from adapter.devstack.services.stack import LocalStack

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "KafkaInstall",
    "LocalStack",
    "PostgresCluster",
    "RedisServer",
    "fetch_kafka",
    "kafka_home",
]
