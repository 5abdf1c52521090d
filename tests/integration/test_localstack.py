"""The local services really work: Kafka admin/produce/consume/compaction/restart,
PostgreSQL databases, Redis pub/sub, and no service outliving its parent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from adapter.devstack.services import KafkaBroker, PostgresCluster, RedisServer
from adapter.devstack.services._process import is_alive, poll_until

REPO_ROOT = Path(__file__).resolve().parents[2]

COMPACT_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "100",
}


# -- helpers ---------------------------------------------------------------------


def _create_topic(
    bootstrap: str, name: str, config: dict[str, str] | None = None
) -> AdminClient:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1, config=config or {})],
        operation_timeout=10,
    )
    futures[name].result(timeout=15)
    return admin


def _produce(
    bootstrap: str, records: Sequence[tuple[bytes, bytes | None]], topic: str
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert failures == []


@pytest.fixture
def reader(kafka_bootstrap: str, unique_name: str) -> Iterator[Consumer]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{unique_name}_reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    yield consumer
    consumer.close()


def _read_all(consumer: Consumer, topic: str) -> list[tuple[int, bytes, bytes | None]]:
    """Read partition 0 from the beginning to its end: ``(offset, key, value)``."""
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[tuple[int, bytes, bytes | None]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return out
            raise AssertionError(f"consume error: {err}")
        offset, key = msg.offset(), msg.key()
        assert offset is not None
        assert isinstance(key, bytes)
        value = msg.value()
        assert value is None or isinstance(value, bytes)
        out.append((offset, key, value))
    raise AssertionError(f"did not reach the end of {topic}[0] within 15 s")


# -- Kafka -------------------------------------------------------------------------


def test_admin_creates_compacted_topic_with_configs(
    kafka_bootstrap: str, unique_name: str
) -> None:
    admin = _create_topic(kafka_bootstrap, unique_name, COMPACT_CONFIG)

    resource = ConfigResource(ResourceType.TOPIC, unique_name)
    described = admin.describe_configs([resource])[resource].result(timeout=10)

    assert {k: described[k].value for k in COMPACT_CONFIG} == COMPACT_CONFIG
    assert unique_name in admin.list_topics(timeout=10).topics


def test_produce_consume_and_read_back_committed_offset(
    kafka_bootstrap: str, unique_name: str
) -> None:
    _create_topic(kafka_bootstrap, unique_name)
    sent = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(3)]
    _produce(kafka_bootstrap, sent, unique_name)

    group = f"{unique_name}_group"
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([unique_name])
        received: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received.append((msg.key(), msg.value()))
        assert received == sent
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    # A new member of the group sees the committed offset: one past the last record.
    checker = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        committed = checker.committed([TopicPartition(unique_name, 0)], timeout=10)
    finally:
        checker.close()
    assert [tp.offset for tp in committed] == [len(sent)]


def test_broker_compacts_a_compacted_topic(
    kafka_bootstrap: str, unique_name: str, reader: Consumer
) -> None:
    _create_topic(kafka_bootstrap, unique_name, COMPACT_CONFIG)
    keys = [f"user{i}".encode() for i in range(5)]
    updates = [
        (key, f"{key.decode()}-v{n}".encode()) for n in range(40) for key in keys
    ]
    _produce(kafka_bootstrap, updates, unique_name)
    last_offset_of = {key: offset for offset, (key, _v) in enumerate(updates)}

    def compacted() -> list[tuple[int, bytes, bytes | None]] | None:
        # The cleaner never touches the active segment. Each append that arrives
        # more than segment.ms after the previous one rolls a new segment, so keep
        # appending a marker record until the updates sit in a closed segment and
        # the cleaner has been through it.
        _produce(kafka_bootstrap, [(b"roll", b"x")], unique_name)
        records = [r for r in _read_all(reader, unique_name) if r[1] != b"roll"]
        return records if len(records) == len(keys) else None

    records = poll_until(compacted, timeout_s=30, interval_s=0.2, what="compaction")

    # One record per key: the latest value, still at its original offset.
    assert sorted(records) == sorted(
        (last_offset_of[key], key, f"{key.decode()}-v39".encode()) for key in keys
    )


# -- PostgreSQL ------------------------------------------------------------------


def test_fresh_database_is_empty_utf8_with_c_collation(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        datcollate, datctype, encoding = conn.execute(
            "SELECT datcollate, datctype, pg_encoding_to_char(encoding)"
            " FROM pg_database WHERE datname = current_database()"
        ).fetchone() or (None, None, None)
        assert (datcollate, datctype, encoding) == ("C", "C", "UTF8")
        if conn.info.server_version < 160000:  # lc_collate is no GUC from 16 on
            assert conn.execute("SHOW lc_collate").fetchone() == ("C",)
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        assert tables == (0,)

        conn.execute("CREATE TABLE probe (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO probe VALUES (1, 'é')")
        assert conn.execute("SELECT name FROM probe").fetchone() == ("é",)
        conn.execute("DROP TABLE probe")


def test_postgres_restart_keeps_port_and_data(
    postgres: PostgresCluster, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    port = postgres.port

    postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=2).close()
    postgres.start()

    assert postgres.port == port
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT id FROM kept").fetchall() == [(42,)]


# -- Redis ------------------------------------------------------------------------


def test_redis_publish_subscribe_round_trip(redis_url: str, unique_name: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(unique_name)
        # The subscription is active once the server counts us as a subscriber.
        poll_until(
            lambda: True if client.pubsub_numsub(unique_name)[0][1] == 1 else None,
            timeout_s=5,
            what="subscription",
        )
        assert client.publish(unique_name, b"RDATA events master 1 [...]") == 1
        message = poll_until(
            lambda: pubsub.get_message(timeout=0.5), timeout_s=5, what="message"
        )
        assert message["data"] == b"RDATA events master 1 [...]"
    finally:
        pubsub.close()
        client.close()


def test_redis_restart_keeps_port(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.restart()
    assert redis_server.url == url
    client = redis.Redis.from_url(url)
    try:
        assert client.ping() is True
    finally:
        client.close()


# -- process hygiene ---------------------------------------------------------------

_CHILD = """\
import sys
from adapter.devstack.services import KafkaBroker, PostgresCluster, RedisServer
services = [RedisServer(), PostgresCluster(), KafkaBroker()]
for service in services:
    service.start()
print(" ".join(str(s.pid) for s in services), flush=True)
sys.stdin.read()
"""


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            listed = children.read_text().split()
        except OSError:  # the task ended since the glob (a short-lived backend)
            continue
        for child in listed:
            found |= {int(child)} | _descendants(int(child))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")
def test_services_die_when_their_parent_is_killed() -> None:
    # The child's temporary folders go to a scratch TMPDIR that we remove, since a
    # SIGKILLed parent cannot clean up. PostgreSQL's user must be able to enter it.
    scratch = Path(tempfile.mkdtemp(prefix="synkafka-orphan-"))
    scratch.chmod(0o755)
    try:
        with subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env={**os.environ, "TMPDIR": str(scratch)},
        ) as parent:
            assert parent.stdout is not None
            try:
                services = {int(p) for p in parent.stdout.readline().split()}
                assert len(services) == 3, "the child did not start its services"
                assert all(is_alive(pid) for pid in services)
                pids = set(services)
                for pid in services:
                    # PostgreSQL's backends too (some come and go by themselves).
                    pids |= _descendants(pid)
            finally:
                parent.kill()  # SIGKILL: no atexit, no finalizers, only the kernel
            parent.wait(timeout=10)

        poll_until(
            lambda: True if not any(is_alive(pid) for pid in pids) else None,
            timeout_s=15,
            what="every service process exiting",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- last: bouncing the shared broker --------------------------------------------


def test_broker_restart_keeps_topics_and_records(
    kafka: KafkaBroker, unique_name: str, reader: Consumer
) -> None:
    _create_topic(kafka.bootstrap_servers, unique_name)
    _produce(kafka.bootstrap_servers, [(b"k", b"before restart")], unique_name)
    bootstrap = kafka.bootstrap_servers

    kafka.restart()

    assert kafka.bootstrap_servers == bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert unique_name in admin.list_topics(timeout=10).topics
    assert _read_all(reader, unique_name) == [(0, b"k", b"before restart")]
