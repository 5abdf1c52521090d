"""The bridge follows a real Synapse (from PyPI) over a real Redis into a real Kafka.

* ``test_bridge_follows_synapse`` (PostgreSQL and SQLite; main process + ``worker1``,
  the shared scenario): every row Synapse's own tables hold between the first and the
  last token the bridge saw is on Kafka exactly once, at the same token, with the
  same fields: ``events`` exactly, the other database streams as a superset (their
  tables keep only the latest row per key). On the same run:

  - **presence**: the worker's USER_SYNC shows in a
    :class:`~adapter.runtime.presence_follower.PresenceFollower`'s view; a
    ``CLEAR_USER_SYNC <instance_id>`` published into Redis (a real worker loses its
    own on shutdown, docs/presence.md) clears the instance;
  - **consumers**: a replication consumer that committed before the scenario and is
    started again after it, with ``--db`` pointing at Synapse's database, backfills and
    reaches the same ``events`` state as one that followed live.

* ``test_redis_restart_loses_nothing``: Redis is restarted while messages keep
  flowing; afterwards every ``events`` token of the database is on Kafka once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.commands import PositionCommand
from adapter.core.config import KafkaSettings
from adapter.core.ports import StreamUpdate
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.core.rows import STREAM_NAMES, row_to_wire
from adapter.devstack.services import RedisServer
from adapter.devstack.services.synapse import MAIN_INSTANCE_NAME, SynapseHomeserver
from adapter.io.kafka.consumer import Consumer
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.presence_follower import PresenceFollower
from tests.e2e.capture import RedisCapture
from tests.e2e.matrix_client import MatrixClient, MatrixError
from tests.e2e.scenario import run_scenario
from tests.integration.bridge_run import BridgeRun, decoded, rdata_by_token, read_topic
from tests.integration.harness import ConsumerRun, ensure_topics, wait_for

# Database streams whose tables keep every row in range (a log): compared exactly.
_LOG_STREAMS = ("events",)
# Database streams whose tables keep only the latest row per key: what the table
# holds must be on Kafka at the same token.
_LATEST_STREAMS = (
    "receipts",
    "presence",
    "account_data",
    "device_lists",
    "push_rules",
    "to_device",
    "caches",
)


def _dsn(hs: SynapseHomeserver) -> str:
    if hs.database_dsn is not None:
        return hs.database_dsn
    return f"sqlite:///{hs.sqlite_path}"


def _key(row: Any) -> str:
    return repr(row)


def _db_rows(dsn: str, stream: str, start: int, end: int) -> dict[int, list[Any]]:
    reader = DatabaseReader(dsn)
    try:
        if not reader.has_source(stream):
            return {}
        return {
            token: sorted((row_to_wire(r) for r in rows), key=_key)
            for token, rows in reader.read(stream, MAIN_INSTANCE_NAME, start, end)
        }
    finally:
        reader.close()


def _kafka_rows(
    bootstrap: str, prefix: str, stream: str
) -> list[tuple[int, list[Any]]]:
    return [
        (token, sorted(rows, key=_key))
        for writer, token, rows in rdata_by_token(bootstrap, prefix, stream)
        if writer == MAIN_INSTANCE_NAME
    ]


def _first_position(bootstrap: str, prefix: str, stream: str) -> int:
    """The token of the first POSITION the bridge published for master."""
    for record in read_topic(bootstrap, topics.stream_topic(prefix, stream)):
        assert record.value is not None
        command = decode(record.value)
        if (
            isinstance(command, PositionCommand)
            and command.instance_name == MAIN_INSTANCE_NAME
        ):
            return command.new_token
    raise AssertionError(f"no POSITION of {stream} on Kafka")


def _db_position(dsn: str, stream: str) -> int:
    reader = DatabaseReader(dsn)
    try:
        return reader.positions(stream).get(MAIN_INSTANCE_NAME, 0)
    finally:
        reader.close()


def _check_kafka_matches_database(
    bootstrap: str, prefix: str, dsn: str, engine: str
) -> None:
    for stream in (*_LOG_STREAMS, *_LATEST_STREAMS):
        if stream == "caches" and engine != "postgresql":
            continue  # no caches table on SQLite (pitfall P10)
        start = _first_position(bootstrap, prefix, stream)
        kafka = _kafka_rows(bootstrap, prefix, stream)
        tokens = [t for t, _ in kafka]
        assert len(tokens) == len(set(tokens)), f"{stream}: duplicated tokens"
        assert tokens == sorted(tokens), f"{stream}: tokens out of order"
        end = max(tokens, default=start)
        db = _db_rows(dsn, stream, start, end)
        by_token = dict(kafka)
        if stream in _LOG_STREAMS:
            assert by_token == db, stream
            assert len(db) > 10, stream
        else:
            for token, rows in db.items():
                got = by_token.get(token, [])
                missing = [r for r in rows if r not in got]
                assert not missing, f"{stream}@{token}: {missing} not on Kafka"
        print(
            f"  {stream}: tokens ({start}, {end}], {len(kafka)} records, db {len(db)}"
        )


def _rows_by_token(updates: list[StreamUpdate], stream: str) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for u in updates:
        if u.stream_name == stream and u.instance_name == MAIN_INSTANCE_NAME:
            out.setdefault(u.token, []).extend(row_to_wire(r) for r in u.rows)
    return {t: sorted(rows, key=_key) for t, rows in out.items()}


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_name: str) -> str:
    ensure_topics(kafka_bootstrap, unique_name, STREAM_NAMES)
    return unique_name


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_bridge_follows_synapse(
    engine: str,
    request: pytest.FixtureRequest,
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    redis_capture: RedisCapture,
) -> None:
    started = time.monotonic()
    hs: SynapseHomeserver = request.getfixturevalue(
        "synapse_pg" if engine == "postgresql" else "synapse_sqlite"
    )
    dsn = _dsn(hs)
    streams = ("events", "receipts", "account_data", "push_rules")
    with BridgeRun(redis_url, hs.server_name, kafka_bootstrap, prefix, dsn=dsn) as run:
        wait_for(
            lambda: ("events", MAIN_INSTANCE_NAME) in run.bridge.published,
            30,
            "the answer to the bridge's REPLICATE",
        )
        live = ConsumerRun(kafka_bootstrap, prefix, streams, None, instance_name="live")
        late = ConsumerRun(kafka_bootstrap, prefix, streams, dsn, instance_name="late")
        with live:
            with late:
                late.wait_caught_up()  # commits its position, then stops
            live.wait_caught_up()

            report = run_scenario(hs, redis_capture)
            end = _db_position(dsn, "events")
            wait_for(
                lambda: (
                    run.bridge.published.get(("events", MAIN_INSTANCE_NAME), 0) >= end
                ),
                30,
                f"the bridge to publish events up to {end}",
            )
            wait_for(
                lambda: max(live.recorder.tokens("events"), default=0) >= end,
                30,
                "the live consumer",
            )
            _check_presence(hs, redis_url, kafka_bootstrap, prefix, redis_capture)
        # A consumer that was away during the scenario backfills from Synapse's DB.
        late = ConsumerRun(kafka_bootstrap, prefix, streams, dsn, instance_name="late")
        with late:
            late.wait_caught_up()
            wait_for(
                lambda: max(late.recorder.tokens("events"), default=0) >= end,
                30,
                "the late consumer",
            )
        live_events = _rows_by_token(live.recorder.snapshot(), "events")
        late_events = _rows_by_token(late.recorder.snapshot(), "events")
        assert late_events == live_events
        assert {u.source for u in late.recorder.snapshot()} == {"backfill"}
        for stream in streams[1:]:
            assert max(late.recorder.tokens(stream), default=0) == max(
                live.recorder.tokens(stream), default=0
            ), stream
    assert run.bridge.stats.parse_failures == 0
    print(
        f"\n{engine}: scenario {report.elapsed_s:.1f} s, {run.bridge.stats.lines} lines,"
        f" {run.sample('synkafka_bridge_lag_seconds_count'):.0f} acks timed"
    )
    _check_kafka_matches_database(kafka_bootstrap, prefix, dsn, engine)
    typing_records = rdata_by_token(kafka_bootstrap, prefix, "typing")
    assert [rows[0][1] for _, _, rows in typing_records][-2:] == [
        [report.bob.user_id],
        [],
    ]
    print(f"  total {time.monotonic() - started:.1f} s")


def _check_presence(
    hs: SynapseHomeserver,
    redis_url: str,
    bootstrap: str,
    prefix: str,
    capture: RedisCapture,
) -> None:
    line = capture.wait_for(
        lambda ln: ln.command == "USER_SYNC", timeout_s=30, what="USER_SYNC"
    )
    instance_id = line.line.split(" ")[1]
    user_id = line.line.split(" ")[2]
    follower = PresenceFollower(
        Consumer(KafkaSettings(bootstrap_servers=bootstrap), f"{prefix}.presence"),
        prefix,
    )
    try:
        # The worker's snapshot named the user as syncing. The scenario has stopped
        # syncing by now, so the worker may already have said so: the history, not
        # the present view, shows the start.
        wait_for(
            lambda: any(
                isinstance(value, PresenceSnapshot)
                and value.instance_id == instance_id
                and user_id in {d.user_id for d in value.syncing}
                for value in decoded(
                    read_topic(bootstrap, topics.presence_topic(prefix))
                )
            ),
            30,
            f"{user_id} syncing on the worker's instance {instance_id}",
        )
        follower.replay()
        wait_for(
            lambda: follower.poll_once() >= 0 and instance_id in follower.state(),
            30,
            f"the worker's instance {instance_id} in the view",
        )
        client = redis.Redis.from_url(redis_url)
        try:
            client.publish(hs.server_name, f"CLEAR_USER_SYNC {instance_id}")
        finally:
            client.close()
        wait_for(
            lambda: follower.poll_once() >= 0 and instance_id not in follower.state(),
            30,
            "the cleared instance to leave the view",
        )
        assert not follower.is_syncing(user_id)
    finally:
        follower.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis for one test, which it may restart without disturbing others."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_redis_restart_loses_nothing(
    own_redis: RedisServer,
    kafka_bootstrap: str,
    prefix: str,
    synapse_server_name: str,
) -> None:
    hs = SynapseHomeserver(own_redis.url, server_name=synapse_server_name)
    hs.start()
    try:
        dsn = _dsn(hs)
        server = MatrixClient(hs.client_url)
        alice = server.register("alice", "pass-alice")
        room_id = alice.create_room(name="restart")
        sent: list[str] = []
        failures: Counter[str] = Counter()
        stop = threading.Event()

        def send() -> None:
            while not stop.is_set():
                try:
                    sent.append(alice.send_message(room_id, "m"))
                except (MatrixError, OSError) as exc:
                    failures[type(exc).__name__] += 1

        with BridgeRun(
            own_redis.url, hs.server_name, kafka_bootstrap, prefix, dsn=dsn
        ) as run:
            wait_for(
                lambda: ("events", MAIN_INSTANCE_NAME) in run.bridge.published,
                30,
                "the bridge to learn the events position",
            )
            senders = [threading.Thread(target=send, daemon=True) for _ in range(3)]
            for sender in senders:
                sender.start()
            try:
                wait_for(lambda: len(sent) >= 20, 30, "messages before the restart")
                # Synapse's client API stalls while Redis is down, so what gets lost
                # is what was in flight around the restart: usually a few events,
                # sometimes none (the integration tests force gaps).
                own_redis.restart()
                after = len(sent)
                wait_for(lambda: len(sent) >= after + 20, 60, "messages after it")
            finally:
                stop.set()
                for sender in senders:
                    sender.join(30)
            end = _db_position(dsn, "events")
            wait_for(
                lambda: (
                    run.bridge.published.get(("events", MAIN_INSTANCE_NAME), 0) >= end
                ),
                60,
                f"the bridge to publish events up to {end}",
            )
        start = _first_position(kafka_bootstrap, prefix, "events")
        kafka = _kafka_rows(kafka_bootstrap, prefix, "events")
        tokens = [t for t, _ in kafka]
        assert len(tokens) == len(set(tokens)), "duplicated tokens"
        assert dict(kafka) == _db_rows(dsn, "events", start, end)
        print(
            f"\nsent {len(sent)} messages, {failures} failures, "
            f"{run.bridge.stats.reconnects} reconnects, "
            f"{run.bridge.stats.gap_rows} rows / {run.bridge.stats.gap_tokens} "
            "tokens repaired from the database"
        )
        assert run.bridge.stats.reconnects >= 1
    finally:
        hs.close()
