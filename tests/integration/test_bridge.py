"""The bridge between a real Redis and a real Kafka, fed Synapse's recorded lines.

The lines in ``tests/data/synapse_lines/`` were captured from a real Synapse (main
process and ``worker1``) on SQLite and on PostgreSQL; here they are published into
the session's Redis as Synapse would, and the Kafka topics are checked. Gap repair
reads from a simulated Synapse database written by
:class:`~adapter.devstack.writer.SynapseWriter`.

The helpers at the top (:class:`BridgeRun`, :func:`read_topic`...) are shared with
``tests/e2e/test_bridge.py``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from adapter.codec.avro_codec import decode
from adapter.core import dead_letters, topics
from adapter.core.backoff import Backoff
from adapter.core.commands import (
    ClearUserSyncsCommand,
    PositionCommand,
    RdataCommand,
    UserIpCommand,
)
from adapter.core.config import KafkaSettings
from adapter.core.errors import ConsumeError
from adapter.core.masking import mask_access_tokens
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.core.rows import STREAM_NAMES, row_to_wire
from adapter.devstack.writer import SynapseWriter
from adapter.io.db.connection import connect
from adapter.io.kafka.consumer import BEGINNING, Consumer, PartitionStart
from adapter.io.kafka.producer import Producer
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import CollectorRegistry, Metrics
from adapter.io.redis import RedisClients, ReplicationSubscriber
from adapter.io.redis.subscriber import CLIENT_NAME
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.bridge import Bridge
from adapter.runtime.dead_letter_writer import DeadLetterWriter
from tests.integration.harness import ensure_topics, make_database, wait_for

__all__ = [
    "BridgeRun",
    "decoded",
    "kill_bridge_connection",
    "rdata_by_token",
    "read_topic",
    "recorded_lines",
    "topic_size",
]

DATA = Path(__file__).resolve().parents[1] / "data" / "synapse_lines"
_RECORDED_SERVER = "synkafka.test"
_TOKEN = "syt_Ym9i_sEcReTtOkEnvAlUe_1a2b3c"  # noqa: S105 (a fake, to be masked)


# --- helpers (shared with the e2e tier) ---------------------------------------------


class BridgeRun:
    """A :class:`Bridge` running in a thread against real Redis and Kafka.

    Args:
        redis_url: the Redis Synapse publishes on.
        server_name: the homeserver's name (its channel).
        bootstrap: Kafka.
        prefix: the topic prefix.
        dsn: Synapse's database for gap repair, or None.
        published: the seed of already published tokens.
        presence_windows: the bridge's presence windows (shortened in tests).
        probe_interval_s: turns the presence probe (CLIENT LIST) on at this interval.
    """

    def __init__(
        self,
        redis_url: str,
        server_name: str,
        bootstrap: str,
        prefix: str,
        *,
        dsn: str | None = None,
        published: dict[tuple[str, str], int] | None = None,
        presence_windows: dict[str, int] | None = None,
        probe_interval_s: float | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.clients = RedisClients(redis_url) if probe_interval_s else None
        self.metrics = Metrics(self.registry)
        self.subscriber = ReplicationSubscriber(
            redis_url, server_name, backoff=Backoff(initial_s=0.1, max_s=0.5)
        )
        self.producer = Producer(
            KafkaSettings(bootstrap_servers=bootstrap),
            metrics=self.metrics,
            extra={"linger.ms": "2"},
        )
        self.bridge = Bridge(
            self.subscriber,
            self.producer,
            prefix,
            metrics=self.metrics,
            open_reader=(lambda: DatabaseReader(dsn)) if dsn else None,
            published=published,
            presence_windows=presence_windows,
            clients=self.clients,
            probe_interval_s=probe_interval_s or 0.0,
            dead_letters=DeadLetterWriter(
                KafkaSettings(bootstrap_servers=bootstrap),
                prefix,
                client_id="test-bridge-dlq",
                metrics=self.metrics,
            ),
        )
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.bridge.run(self.stop_event)
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            self.error = exc

    def __enter__(self) -> BridgeRun:
        self._thread.start()
        wait_for(
            lambda: self.subscriber.connected or self.error is not None,
            20,
            "the bridge to subscribe",
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the bridge (it flushes) and re-raise what stopped it early."""
        self.stop_event.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "bridge did not stop in time"
        if self.clients is not None:
            self.clients.close()
        if self.error is not None:
            raise AssertionError(f"bridge failed: {self.error!r}") from self.error

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample's value (0 when absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0


def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 20.0
) -> list[KafkaRecord]:
    """Every record of ``topic`` up to its high watermarks now, in offset order."""
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), f"read-{topic}")
    try:
        parts = consumer.partitions(topic)
        heads = {p: consumer.watermarks(topic, p)[1] for p in parts}
        wanted = {p: h for p, h in heads.items() if h > 0}
        if not wanted:
            return []
        consumer.assign([PartitionStart(topic, p, BEGINNING) for p in wanted])
        out: list[KafkaRecord] = []
        done: set[int] = set()
        wait_for(
            lambda: _drain(consumer, out, wanted, done), timeout_s, f"reading {topic}"
        )
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def _drain(
    consumer: Consumer,
    out: list[KafkaRecord],
    wanted: dict[int, int],
    done: set[int],
) -> bool:
    for record in consumer.poll_batch(1000, 0.2):
        if record.offset < wanted[record.partition]:
            out.append(record)
        if record.offset + 1 >= wanted[record.partition]:
            done.add(record.partition)
    return len(done) == len(wanted)


def topic_size(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (sum of high watermarks)."""
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), f"size-{topic}")
    try:
        return sum(consumer.watermarks(topic, p)[1] for p in consumer.partitions(topic))
    except ConsumeError:
        return 0  # a new topic's leader is not elected yet: ask again
    finally:
        consumer.close()


def kill_bridge_connection(client: redis.Redis) -> None:
    """Make Redis drop the bridge's subscription (as a network failure would)."""
    for info in client.client_list():
        if info.get("name") == CLIENT_NAME:
            client.client_kill_filter(_id=info["id"])


def decoded(records: list[KafkaRecord]) -> list[Any]:
    """The decoded values (tombstones skipped)."""
    return [decode(r.value) for r in records if r.value is not None]


def rdata_by_token(
    bootstrap: str, prefix: str, stream: str
) -> list[tuple[str, int, list[Any]]]:
    """``(writer, token, wire rows)`` of every RDATA on a stream topic, in order."""
    return [
        (c.instance_name, c.token or 0, [row_to_wire(r) for r in c.rows])
        for c in decoded(read_topic(bootstrap, topics.stream_topic(prefix, stream)))
        if isinstance(c, RdataCommand)
    ]


def recorded_lines(engine: str, server_name: str) -> list[tuple[str, str]]:
    """The recorded ``(channel, line)`` pairs, moved to ``server_name``'s channels."""
    out = []
    for raw in (DATA / f"{engine}.txt").read_text().splitlines():
        channel, _, line = raw.partition("\t")
        out.append((channel.replace(_RECORDED_SERVER, server_name, 1), line))
    return out


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def server_name(unique_name: str) -> str:
    return unique_name.replace("_", "-") + ".test"


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_name: str) -> str:
    ensure_topics(kafka_bootstrap, unique_name, STREAM_NAMES)
    return unique_name


@pytest.fixture
def publisher(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def channel_log(redis_url: str, server_name: str) -> Iterator[list[str]]:
    """Every line published on the server's channels (to see what the bridge sends)."""
    lines: list[str] = []
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(server_name, f"{server_name}/USER_IP")
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                lines.append(message["data"].decode())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        stop.set()
        thread.join(5)
        pubsub.close()
        client.close()


def _publish(client: redis.Redis, pairs: list[tuple[str, str]]) -> None:
    pipe = client.pipeline(transaction=False)
    for channel, line in pairs:
        pipe.publish(channel, line)
    pipe.execute()


def _wait_records(bootstrap: str, topic: str, count: int, what: str) -> None:
    wait_for(lambda: topic_size(bootstrap, topic) >= count, 20, what)


# --- recorded traffic -----------------------------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_recorded_lines_are_batched_routed_and_never_echoed(
    engine: str,
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
    channel_log: list[str],
) -> None:
    pairs = recorded_lines(engine, server_name)
    lines = [line for _, line in pairs]
    # What Synapse meant: every numeric RDATA closes one token of rows.
    expected: dict[str, list[tuple[int, int]]] = {}
    pending: Counter[tuple[str, str]] = Counter()
    for line in lines:
        if line.startswith("RDATA "):
            _, stream, writer, token, _ = line.split(" ", 4)
            pending[(stream, writer)] += 1
            if token != "batch":  # noqa: S105 (the batch sentinel)
                expected.setdefault(stream, []).append(
                    (int(token), pending.pop((stream, writer)))
                )
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix) as run:
        _publish(publisher, pairs)
        _wait_records(
            kafka_bootstrap,
            topics.stream_topic(prefix, "events"),
            len(expected["events"]) + lines.count("POSITION events master 1 1"),
            "the events records",
        )
        wait_for(lambda: run.bridge.stats.lines >= len(lines), 20, "every line bridged")
    assert run.bridge.stats.parse_failures == 0
    for stream, tokens in expected.items():
        got = rdata_by_token(kafka_bootstrap, prefix, stream)
        assert [(t, len(rows)) for _, t, rows in got] == tokens, stream
    # Booleans arrive as booleans from either engine's spelling (0/1, false/true).
    events = rdata_by_token(kafka_bootstrap, prefix, "events")
    ev_rows = [r for _, _, rows in events for r in rows if r[0] == "ev"]
    assert ev_rows
    assert all(type(r[1][7]) is bool and type(r[1][8]) is bool for r in ev_rows)
    positions = decoded(read_topic(kafka_bootstrap, topics.positions_topic(prefix)))
    assert {(p.stream_name, p.instance_name) for p in positions} >= {
        ("events", "master"),
        ("caches", "worker1"),
    }
    presence = decoded(read_topic(kafka_bootstrap, topics.presence_topic(prefix)))
    assert any(isinstance(p, PresenceSnapshot) and p.syncing for p in presence), (
        presence
    )
    user_ip = decoded(read_topic(kafka_bootstrap, topics.user_ip_topic(prefix)))
    assert len(user_ip) == 1
    assert isinstance(user_ip[0], UserIpCommand)
    commands = Counter(
        c.NAME
        for c in decoded(read_topic(kafka_bootstrap, topics.commands_topic(prefix)))
    )
    assert commands["LOCK_RELEASED"] == sum(
        1 for ln in lines if ln.startswith("LOCK_RELEASED ")
    )
    assert commands["REPLICATE"] >= 1
    # The bridge wrote exactly one thing into Redis: REPLICATE.
    ours = Counter(channel_log) - Counter(lines)
    assert set(ours) == {"REPLICATE "}, ours
    assert run.sample("synkafka_bridge_lines_total", command="RDATA") == sum(
        1 for ln in lines if ln.startswith("RDATA ")
    )
    assert run.sample("synkafka_bridge_lag_seconds_count") > 0


def test_batches_of_two_writers_never_mix(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    def line(writer: str, token: str, user: str) -> tuple[str, str]:
        return server_name, f'RDATA device_lists {writer} {token} ["{user}",false,0]'

    pairs = [
        line("master", "batch", "@a:x"),
        line("worker1", "batch", "@b:x"),
        line("master", "batch", "@c:x"),
        line("worker1", "7", "@d:x"),
        line("master", "8", "@e:x"),
    ]
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix):
        _publish(publisher, pairs)
        _wait_records(
            kafka_bootstrap, topics.stream_topic(prefix, "device_lists"), 2, "2 records"
        )
    got = rdata_by_token(kafka_bootstrap, prefix, "device_lists")
    assert sorted(got) == [
        (
            "master",
            8,
            [["@a:x", False, False], ["@c:x", False, False], ["@e:x", False, False]],
        ),
        ("worker1", 7, [["@b:x", False, False], ["@d:x", False, False]]),
    ]


# --- bad input ------------------------------------------------------------------------


def test_bad_lines_go_to_the_dead_letter_topic_with_tokens_masked(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    ip_channel = f"{server_name}/USER_IP"
    bad = [
        (ip_channel, f'USER_IP @bob:x ["{_TOKEN}","127.0.0.1","ua","DEV"]'),  # 4 fields
        (ip_channel, f'USER_IP @bob:x ["{_TOKEN}","127.0.0.1",'),  # broken JSON
        (server_name, f"BOGUS_COMMAND hello {_TOKEN}"),
        (server_name, 'RDATA no_such_stream master 3 ["x"]'),
        (server_name, "POSITION events master one 2"),
        (server_name, "RDATA events master 5 not-json"),
    ]
    good = [
        (
            ip_channel,
            f'USER_IP @bob:x ["{_TOKEN}","127.0.0.1","ua","DEV",1700000000000]',
        ),
        (server_name, "POSITION events master 1 4"),
    ]
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix) as run:
        _publish(publisher, bad + good)
        _wait_records(
            kafka_bootstrap, topics.dlq_topic(prefix), len(bad), "the dead letters"
        )
        _wait_records(
            kafka_bootstrap, topics.stream_topic(prefix, "events"), 1, "the POSITION"
        )
    assert run.bridge.stats.parse_failures == len(bad)
    assert run.sample("synkafka_bridge_parse_failures_total") == len(bad)
    dlq = read_topic(kafka_bootstrap, topics.dlq_topic(prefix))
    assert len(dlq) == len(bad)
    secret = _TOKEN.encode()
    for record, (channel, line) in zip(dlq, bad, strict=True):
        assert record.value is not None
        assert secret not in record.value
        assert all(secret not in value for _, value in record.headers)
        assert record.key == channel.encode()
        assert (
            dict(record.headers)[topics.HEADER_DLQ_SOURCE]
            == f"redis:{channel}".encode()
        )
        assert (
            record.value == mask_access_tokens(line).encode() or channel == ip_channel
        )
    assert dlq[3].value == b'RDATA no_such_stream master 3 ["x"]'
    # The good USER_IP still carries its token on the restricted topic...
    user_ip = decoded(read_topic(kafka_bootstrap, topics.user_ip_topic(prefix)))
    assert [u.access_token for u in user_ip] == [_TOKEN]
    # ...and no log line anywhere names it.
    assert _TOKEN not in caplog.text
    assert "sEcReT" not in caplog.text
    assert "unparseable line" in caplog.text


def test_a_line_too_large_for_the_dead_letter_topic_is_kept_as_a_reference(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    # 3 MB, over the producer's 1 MB limit; a small bad line follows it.
    huge = f"BOGUS_COMMAND {_TOKEN} " + "x" * 3_000_000
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix) as run:
        _publish(publisher, [(server_name, huge), (server_name, "NOT_A_COMMAND 1")])
        _wait_records(kafka_bootstrap, topics.dlq_topic(prefix), 2, "both dead letters")
    assert run.error is None
    first, second = read_topic(kafka_bootstrap, topics.dlq_topic(prefix))
    assert first.value is not None
    assert dict(first.headers)[dead_letters.HEADER_REFERENCE] == b"1"
    reference = json.loads(first.value)
    masked = mask_access_tokens(huge).encode()
    assert reference["size"] == len(masked)
    assert reference["sha256"] == hashlib.sha256(masked).hexdigest()
    assert base64.b64decode(reference["head_base64"]) == masked[:1024]
    assert reference["source"] == {"redis_channel": server_name}
    assert _TOKEN not in first.value.decode()
    assert second.value == b"NOT_A_COMMAND 1"
    assert dead_letters.HEADER_REFERENCE not in dict(second.headers)
    assert (
        run.sample(
            "synkafka_dead_letters_total",
            topic=topics.dlq_topic(prefix),
            reason="parse",
        )
        == 2
    )


def test_mask_access_tokens() -> None:
    assert (
        mask_access_tokens(f'USER_IP @u:x ["{_TOKEN}","1.2.3.4","ua",null,1]')
        == 'USER_IP @u:x ["***","***","***",null,1]'
    )
    assert mask_access_tokens(f"FOO {_TOKEN} bar") == "FOO syt_*** bar"
    assert mask_access_tokens('USER_IP @u:x ["abc\\"def') == 'USER_IP @u:x ["***"'


# --- gap repair -----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_withheld_lines_are_repaired_from_the_database(
    engine: str,
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    dsn = make_database(engine, pg_dsn, tmp_path)
    conn = connect(dsn)
    writer = SynapseWriter(conn, "master")
    written = [writer.send_event("!r:x", "m.room.message") for _ in range(12)]
    state = writer.send_event("!r:x", "m.room.topic", state_key="")  # ev + state rows
    written.append(state)
    receipts = [
        writer.send_receipt("!r:x", "m.read", f"@u{i}:x", "$e") for i in range(3)
    ]
    conn.close()

    def lines(item: tuple[int, list[Any]], stream: str) -> list[tuple[str, str]]:
        import json

        token, rows = item
        return [
            (
                server_name,
                f"RDATA {stream} master {token if i == len(rows) - 1 else 'batch'} "
                + json.dumps(row, separators=(",", ":")),
            )
            for i, row in enumerate(rows)
        ]

    first = written[0][0]
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix, dsn=dsn) as run:
        # Seen: the first two events; withheld: 3..7; then a POSITION says 7 was the
        # last announced (prev past what the bridge has): the gap must be read back.
        _publish(
            publisher, [pair for item in written[:2] for pair in lines(item, "events")]
        )
        _publish(
            publisher,
            [(server_name, f"POSITION events master {written[6][0]} {written[6][0]}")],
        )
        _publish(
            publisher, [pair for item in written[7:9] for pair in lines(item, "events")]
        )
        wait_for(
            lambda: run.bridge.published.get(("events", "master")) == written[8][0],
            20,
            "the POSITION gap repaired",
        )
        # A reconnect: Redis drops the bridge's subscription; what follows jumps.
        kill_bridge_connection(publisher)
        wait_for(lambda: run.subscriber.connects >= 2, 20, "the bridge to resubscribe")
        _publish(publisher, lines(written[-1], "events"))
        _publish(publisher, lines(receipts[0], "receipts"))
        _publish(publisher, lines(receipts[2], "receipts"))
        wait_for(
            lambda: run.bridge.published.get(("events", "master")) == written[-1][0],
            20,
            "the reconnect gap repaired",
        )
        wait_for(
            lambda: run.bridge.published.get(("receipts", "master")) == receipts[2][0],
            20,
            "receipts",
        )
    got = rdata_by_token(kafka_bootstrap, prefix, "events")
    assert [(t, rows) for _, t, rows in got] == [(t, rows) for t, rows in written]
    assert got[0][1] == first
    assert run.sample("synkafka_bridge_gap_rows_total", stream="events") == sum(
        len(rows) for _, rows in written[2:7] + written[9:]
    )
    assert (
        run.sample("synkafka_bridge_gaps_total", stream="events", outcome="repaired")
        == 2
    )
    assert run.bridge.stats.reconnects >= 1
    # receipts: only a jump over nothing after the first one (no gap before it).
    got_receipts = rdata_by_token(kafka_bootstrap, prefix, "receipts")
    assert [t for _, t, _ in got_receipts] == [receipts[0][0], receipts[2][0]]


def test_without_a_database_the_gap_is_counted_and_the_position_published(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    with BridgeRun(
        redis_url,
        server_name,
        kafka_bootstrap,
        prefix,
        published={("events", "master"): 5},
    ) as run:
        _publish(publisher, [(server_name, "POSITION events master 9 12")])
        _wait_records(
            kafka_bootstrap, topics.stream_topic(prefix, "events"), 1, "the POSITION"
        )
    assert (
        run.sample("synkafka_bridge_gaps_total", stream="events", outcome="unrepaired")
        == 1
    )
    records = decoded(
        read_topic(kafka_bootstrap, topics.stream_topic(prefix, "events"))
    )
    assert records == [PositionCommand("events", "master", 9, 12)]


def test_clear_user_sync_clears_the_instance(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix):
        _publish(
            publisher,
            [
                (server_name, "USER_SYNC abcde @a:x DEV start 1000"),
                (server_name, "USER_SYNC abcde @b:x None start 1001"),
                (server_name, "USER_SYNC abcde @a:x DEV end 1002"),
                (server_name, "CLEAR_USER_SYNC abcde"),
            ],
        )
        _wait_records(kafka_bootstrap, topics.presence_topic(prefix), 5, "presence")
    records = read_topic(kafka_bootstrap, topics.presence_topic(prefix))
    values = decoded(records[:4])
    assert [len(v.syncing) for v in values[:3]] == [1, 2, 1]
    assert values[2].syncing[0].user_id == "@b:x"
    assert values[3] == ClearUserSyncsCommand("abcde")
    # Nothing else writes tombstones in a bridged deployment: the bridge does.
    assert records[4].key == b"abcde"
    assert records[4].value is None


def _presence_row(user: str, state: str, last_sync_ms: int, token: int) -> str:
    row = [user, state, last_sync_ms, 0, last_sync_ms, None, state == "online"]
    return f"RDATA presence master {token} {json.dumps(row)}"


def test_presence_rows_keep_a_quiet_instance_alive_and_their_end_removes_it(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    # Windows scaled down 100x from the defaults (120 s, 300 s, 10 s).
    windows = {
        "live_window_ms": 1200,
        "user_sync_window_ms": 3000,
        "heartbeat_interval_ms": 100,
    }
    topic = topics.presence_topic(prefix)
    with BridgeRun(
        redis_url, server_name, kafka_bootstrap, prefix, presence_windows=windows
    ) as run:
        _publish(
            publisher,
            [
                (server_name, "USER_SYNC quiet @a:x DEV start 1000"),
                (server_name, "USER_SYNC other @b:x DEV start 1000"),
            ],
        )
        # @a keeps syncing as Synapse shows it: a presence row every 600 ms (scaled
        # from 60 s), with a last_user_sync_ts a little old; nothing on Redis else.
        started = time.monotonic()
        token = 1
        while time.monotonic() - started < 6.0:  # twice the USER_SYNC window
            now_ms = int(time.time() * 1000)
            _publish(
                publisher,
                [(server_name, _presence_row("@a:x", "online", now_ms - 130, token))],
            )
            token += 1
            run.stop_event.wait(0.6)
        last_row_s = time.monotonic()
        # @b's worker said nothing after its start: gone after the USER_SYNC window.
        records = read_topic(kafka_bootstrap, topic)
        assert [r.key for r in records if r.value is None] == [b"other"]
        # ...while "quiet" was republished at every tick of the bridge (1 s).
        beats = [
            decoded([r])[0].heartbeat_ms
            for r in records
            if r.key == b"quiet" and r.value
        ]
        assert len(beats) >= 5
        assert max(b - a for a, b in itertools.pairwise(beats)) < 1600
        # Its user's rows stop (the worker died): it leaves within the live window.
        wait_for(
            lambda: any(
                r.key == b"quiet" and r.value is None
                for r in read_topic(kafka_bootstrap, topic)
            ),
            10,
            "the tombstone of the quiet instance",
        )
        gone_after = time.monotonic() - last_row_s
    assert 0.6 < gone_after < 1.2 + 0.6 + 1.5  # window, last row age, tick and reads


def test_an_offline_presence_row_removes_the_user_at_once(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    topic = topics.presence_topic(prefix)
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix):
        _publish(
            publisher,
            [
                (server_name, "USER_SYNC inst1 @a:x DEV start 1000"),
                (server_name, "USER_SYNC inst1 @b:x DEV start 1000"),
                (server_name, _presence_row("@a:x", "offline", 1000, 1)),
            ],
        )
        _wait_records(kafka_bootstrap, topic, 3, "three snapshots")
    values = decoded(read_topic(kafka_bootstrap, topic)[:3])
    assert [[d.user_id for d in v.syncing] for v in values] == [
        ["@a:x"],
        ["@a:x", "@b:x"],
        ["@b:x"],
    ]


def test_an_instance_leaves_when_every_connection_that_may_carry_it_closed(
    redis_url: str, kafka_bootstrap: str, prefix: str, server_name: str
) -> None:
    """The presence probe: ties by CLIENT LIST after each USER_SYNC, then closes.

    Two "workers" publish their USER_SYNC in the same moment, so each instance is
    tied to both connections: closing one decides nothing (the windows, 5 minutes
    here, keep both); closing the other ends both at the next list.
    """
    topic = topics.presence_topic(prefix)
    worker_a = redis.Redis.from_url(redis_url)
    worker_b = redis.Redis.from_url(redis_url)
    try:
        with BridgeRun(
            redis_url, server_name, kafka_bootstrap, prefix, probe_interval_s=0.2
        ) as run:
            # Both connections exist and have just spoken before either USER_SYNC, so
            # the list after each one holds both, whichever the bridge takes first.
            worker_a.ping()
            worker_b.ping()
            worker_a.publish(server_name, "USER_SYNC instA @a:x DEV start 1000")
            worker_b.publish(server_name, "USER_SYNC instB @b:x DEV start 1000")
            _wait_records(kafka_bootstrap, topic, 2, "both snapshots")
            worker_a.close()
            lists = run.bridge.stats.client_lists
            wait_for(
                lambda: run.bridge.stats.client_lists >= lists + 3,
                10,
                "three client lists after the first worker closed",
            )
            records = read_topic(kafka_bootstrap, topic)
            assert [r.key for r in records if r.value is None] == []
            worker_b.close()
            closed_at = time.monotonic()
            wait_for(
                lambda: (
                    {
                        r.key
                        for r in read_topic(kafka_bootstrap, topic)
                        if r.value is None
                    }
                    == {b"instA", b"instB"}
                ),
                10,
                "the tombstones of both instances",
            )
            gone_after = time.monotonic() - closed_at
    finally:
        worker_a.close()
        worker_b.close()
    # The probe interval and the reads of the topic, not a window.
    assert gone_after < 3.0


def test_a_redis_user_without_client_list_turns_the_probe_off_once(
    redis_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis.from_url(redis_url)
    user = f"probe-{unique_name}"
    # What a bridge role limited to replication may run (docs/security.md), and the
    # same with the probe's two commands.
    limited = ["-@all", "+subscribe", "+publish", "+ping", "+client|setname"]
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], commands=limited)
    host = redis_url.split("//", 1)[1]
    try:
        clients = RedisClients(f"redis://{user}:pw@{host}")
        with caplog.at_level(logging.WARNING, logger="adapter.io.redis.clients"):
            assert clients.list() is None
            assert clients.list() is None
        assert not clients.enabled
        assert len(caplog.records) == 1, caplog.text
        assert "time windows alone" in caplog.text
        clients.close()
        admin.acl_setuser(
            user, enabled=True, commands=["+client|list", "+info"], reset=False
        )
        allowed = RedisClients(f"redis://{user}:pw@{host}")
        listed = allowed.list()
        assert listed is not None
        assert listed[0].server
        assert allowed.enabled
        allowed.close()
    finally:
        admin.acl_deluser(user)
        admin.close()


# --- the CLI ----------------------------------------------------------------------------


def test_cli_exits_0_on_sigterm_after_flushing(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adapter",
            "bridge",
            "--redis",
            redis_url,
            "--server-name",
            server_name,
            "--prefix",
            prefix,
            "--bootstrap-servers",
            kafka_bootstrap,
            "--metrics-port",
            "-1",
            "--log-level",
            "DEBUG",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for(
            lambda: (
                publisher.pubsub_numsub(server_name)[0][1] >= 1
                or proc.poll() is not None
            ),
            30,
            "the CLI to subscribe",
        )
        assert proc.poll() is None
        _publish(
            publisher,
            [
                (
                    f"{server_name}/USER_IP",
                    f'USER_IP @b:x ["{_TOKEN}","::1","ua",null,5]',
                ),
                (server_name, f"NOT_A_COMMAND {_TOKEN}"),
                *[
                    (server_name, f'RDATA push_rules master {t} ["@a:x"]')
                    for t in range(2, 200)
                ],
            ],
        )
        # SIGTERM right away: what was received must still reach Kafka.
        wait_for(
            lambda: topic_size(kafka_bootstrap, topics.user_ip_topic(prefix)) >= 1,
            20,
            "the first record",
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    assert _TOKEN not in text
    assert "sEcReT" not in text
    got = rdata_by_token(kafka_bootstrap, prefix, "push_rules")
    assert [t for _, t, _ in got] == list(range(2, 200))
