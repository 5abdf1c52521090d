"""The replication consumer against a real broker and real databases.

Each test writes rows into a Synapse-shaped database, publishes what Synapse would
publish, and checks what the handlers saw: the committed offset as POSITION, the
backfill from the database, the token rules, dead letters and backoff.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import Producer as RawProducer
from confluent_kafka import TopicPartition

from adapter.core import topics
from adapter.core.backoff import Backoff
from adapter.core.commands import PositionCommand
from adapter.core.config import KafkaSettings
from adapter.core.errors import DeliveryError
from adapter.core.positions import decode_commit_metadata
from adapter.core.rows import row_from_wire
from adapter.devstack.services import KafkaBroker, PostgresCluster
from adapter.devstack.writer import SynapseWriter
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import Consumer
from adapter.runtime.lag import LagRow, measure_lag
from adapter.runtime.publisher import Publisher
from tests.integration.harness import (
    ConsumerRun,
    allow_large_records,
    dead_letter_records,
    ensure_topics,
    json_lines,
    make_database,
    open_db,
    publish_written,
    wait_for,
)

ENGINES = ["postgresql", "sqlite"]


def _events(
    writer: SynapseWriter, n: int, room: str = "!r:test"
) -> list[tuple[int, list[Any]]]:
    return [writer.send_event(room, "m.room.message") for _ in range(n)]


@pytest.mark.parametrize("engine", ENGINES)
def test_fresh_consumer_starts_at_the_head_and_sees_only_new_rows(
    engine: str,
    pg_dsn: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
) -> None:
    dsn = make_database(engine, pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    with open_db(dsn) as conn:
        master = SynapseWriter(conn, "master")
        publish_written(publisher, "events", "master", _events(master, 5))
        publisher.flush()
        switch_before = sys.getswitchinterval()
        threshold_before = gc.get_threshold()
        with ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn) as run:
            run.wait_caught_up()
            # The library leaves process-wide settings to the process owner.
            assert sys.getswitchinterval() == switch_before
            assert gc.get_threshold() == threshold_before
            new = _events(master, 3)
            publish_written(publisher, "events", "master", new)
            publisher.flush()
            wait_for(lambda: len(run.recorder.tokens("events")) >= 3, what="3 new rows")
            # Nothing older than the start, each new token once, from Kafka.
            assert run.recorder.tokens("events") == [t for t, _ in new]
            assert {u.source for u in run.recorder.snapshot()} == {"kafka"}
        assert sys.getswitchinterval() == switch_before
        assert gc.get_threshold() == threshold_before


@pytest.mark.parametrize("engine", ENGINES)
def test_restarted_consumer_backfills_the_gap_from_the_database_exactly_once(
    engine: str,
    pg_dsn: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
) -> None:
    dsn = make_database(engine, pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    with open_db(dsn) as conn:
        master = SynapseWriter(conn, "master")
        with ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn) as run:
            run.wait_caught_up()
            first = _events(master, 20)
            publish_written(publisher, "events", "master", first)
            publisher.flush()
            wait_for(
                lambda: len(run.recorder.tokens("events")) == 20, what="20 live rows"
            )
        # Stopped: 10,000 rows are written and published while nobody consumes.
        bulk = master.bulk_events(10_000, collect_rows=True)
        assert bulk.rows is not None
        by_token: dict[int, list[Any]] = {}
        for token, wire in bulk.rows:
            by_token.setdefault(token, []).append(wire)
        publish_written(publisher, "events", "master", sorted(by_token.items()))
        publisher.flush()
        with ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn) as run2:
            run2.wait_caught_up(120)
            after = _events(master, 5)
            publish_written(publisher, "events", "master", after)
            publisher.flush()
            wait_for(
                lambda: len(run2.recorder.tokens("events")) >= 10_005, 60, "all rows"
            )
            updates = run2.recorder.snapshot()
    tokens = [u.token for u in updates]
    assert tokens == sorted(set(tokens)), "tokens in order, each once"
    assert tokens == sorted(by_token) + [t for t, _ in after]
    backfilled = [u for u in updates if u.source == "backfill"]
    assert sum(len(u.rows) for u in backfilled) == 10_000
    assert {u.token for u in backfilled} == set(by_token)
    assert (
        run2.sample("synkafka_rows_applied_total", stream="events", source="backfill")
        == 10_000
    )
    assert (
        run2.sample("synkafka_rows_applied_total", stream="events", source="kafka") == 5
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_position_ahead_of_the_consumer_reads_the_gap_from_the_database(
    engine: str,
    pg_dsn: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
) -> None:
    dsn = make_database(engine, pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["receipts"])
    with open_db(dsn) as conn:
        master = SynapseWriter(conn, "master")
        first = master.send_receipt("!r:test", "m.read", "@a:test", "$e1")
        with ConsumerRun(kafka_bootstrap, prefix, ["receipts"], dsn) as run:
            run.wait_caught_up()
            publish_written(
                publisher, "receipts", "master", [first]
            )  # a duplicate: dropped
            # Written but never published, as if lost on Redis before the bridge saw it.
            lost = [
                master.send_receipt("!r:test", "m.read", f"@u{i}:test", f"$e{i}")
                for i in range(4)
            ]
            last = lost[-1][0]
            publisher.publish(PositionCommand("receipts", "master", last, last + 2))
            publisher.flush()
            wait_for(lambda: len(run.recorder.tokens("receipts")) == 4, what="the gap")
            assert run.recorder.tokens("receipts") == [t for t, _ in lost]
            assert {u.source for u in run.recorder.snapshot()} == {"backfill"}
            assert (
                run.sample(
                    "synkafka_rows_dropped_total", stream="receipts", reason="duplicate"
                )
                == 1
            )


@pytest.mark.parametrize("engine", ENGINES)
def test_duplicates_are_dropped_writers_are_separate_and_a_reset_stream_is_followed(
    engine: str,
    pg_dsn: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
) -> None:
    dsn = make_database(engine, pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events", "typing"])
    with open_db(dsn) as conn:
        one, two = SynapseWriter(conn, "persister1"), SynapseWriter(conn, "persister2")
        with ConsumerRun(kafka_bootstrap, prefix, ["events", "typing"], dsn) as run:
            run.wait_caught_up()
            a = _events(one, 3)
            b = _events(two, 3)
            publish_written(publisher, "events", "persister1", a)
            publish_written(publisher, "events", "persister2", b)
            # Redelivered and out-of-date records of both writers.
            publish_written(publisher, "events", "persister1", a[:2])
            publish_written(publisher, "events", "persister2", b[:1])
            # typing: tokens 1, 2, then the writer restarts and counts from 1 again.
            typing_rows = [["!r:test", ["@a:test"]], ["!r:test", []]]
            for token, row in enumerate(typing_rows, start=1):
                publisher.publish_rdata(
                    "typing", "master", token, [row_from_wire("typing", row)]
                )
            publisher.publish(PositionCommand("typing", "master", 1, 1))
            publisher.publish_rdata(
                "typing",
                "master",
                2,
                [row_from_wire("typing", ["!r:test", ["@b:test"]])],
            )
            publisher.flush()
            wait_for(
                lambda: len(run.recorder.tokens("typing")) == 3, what="typing rows"
            )
            wait_for(
                lambda: len(run.recorder.tokens("events")) == 6, what="events rows"
            )
            assert run.recorder.tokens("events", "persister1") == [t for t, _ in a]
            assert run.recorder.tokens("events", "persister2") == [t for t, _ in b]
            assert run.recorder.tokens("typing") == [1, 2, 2]
            assert (
                run.sample(
                    "synkafka_rows_dropped_total", stream="events", reason="duplicate"
                )
                == 3
            )


def test_undecodable_record_goes_to_the_dead_letter_topic_and_is_committed_past(
    kafka_bootstrap: str, prefix: str, publisher: Publisher
) -> None:
    ensure_topics(kafka_bootstrap, prefix, ["typing"])
    topic = topics.stream_topic(prefix, "typing")
    raw = RawProducer({"bootstrap.servers": kafka_bootstrap})
    with ConsumerRun(kafka_bootstrap, prefix, ["typing"], None) as run:
        run.wait_caught_up()
        raw.produce(topic, b"\xc3\x01garbage", key=b"master")
        raw.flush(10)
        publisher.publish_rdata(
            "typing", "master", 1, [row_from_wire("typing", ["!r:test", []])]
        )
        publisher.flush()
        wait_for(
            lambda: run.recorder.tokens("typing") == [1],
            what="the row after the bad one",
        )
        wait_for(
            lambda: (
                run.sample("synkafka_dead_letters_total", topic=topic, reason="decode")
                == 1
            ),
            what="the dead-letter metric",
        )
    ((value, headers),) = dead_letter_records(kafka_bootstrap, prefix, 1)
    assert headers["dlq.topic"] == topic.encode()
    assert headers["dlq.partition"] == b"0"
    assert headers["dlq.offset"] == b"0"
    assert headers["dlq.reason"].startswith(b"decode")
    assert value == b"\xc3\x01garbage"
    offsets = Admin(KafkaSettings(bootstrap_servers=kafka_bootstrap)).group_offsets(
        topics.consumer_group(prefix, "test-consumer")
    )
    assert offsets[(topic, 0)][0] == 2  # past the bad record and the good one


def test_a_bad_record_too_large_for_the_dead_letter_topic_is_kept_as_a_reference(
    kafka_bootstrap: str, prefix: str, publisher: Publisher
) -> None:
    ensure_topics(kafka_bootstrap, prefix, ["typing"])
    topic = topics.stream_topic(prefix, "typing")
    # The stream topic takes 4 MB records; the dead-letter producer keeps its 1 MB.
    allow_large_records(kafka_bootstrap, topic)
    raw = RawProducer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": "4100000"}
    )
    huge = b"\xc3\x01" + bytes(range(256)) * 11_719  # 3,000,066 undecodable bytes
    with ConsumerRun(kafka_bootstrap, prefix, ["typing"], None) as run:
        run.wait_caught_up()
        attempts_when_live = run.consumer.attempts
        raw.produce(topic, huge, key=b"master")
        raw.produce(topic, b"\xc3\x01small", key=b"master")
        raw.flush(30)
        publisher.publish_rdata(
            "typing", "master", 1, [row_from_wire("typing", ["!r:test", []])]
        )
        publisher.flush()
        wait_for(
            lambda: run.recorder.tokens("typing") == [1],
            what="the row after the bad ones",
        )
        wait_for(
            lambda: (
                run.sample("synkafka_dead_letters_total", topic=topic, reason="decode")
                == 2
            ),
            what="both dead letters counted",
        )
        # No restart over a dead letter (start-up retries came before).
        assert run.consumer.attempts == attempts_when_live
    big, small = dead_letter_records(kafka_bootstrap, prefix, 2)
    big_value, big_headers = big
    small_value, small_headers = small
    assert big_headers["dlq.reference"] == b"1"
    assert big_headers["dlq.offset"] == b"0"
    assert big_value is not None
    reference = json.loads(big_value)
    assert reference["source"] == {"topic": topic, "partition": 0, "offset": 0}
    assert reference["size"] == len(huge)
    assert reference["sha256"] == hashlib.sha256(huge).hexdigest()
    assert base64.b64decode(reference["head_base64"]) == huge[:1024]
    assert reference["reason"].startswith("decode")
    assert small_value == b"\xc3\x01small"
    assert "dlq.reference" not in small_headers
    assert small_headers["dlq.offset"] == b"1"
    offsets = Admin(KafkaSettings(bootstrap_servers=kafka_bootstrap)).group_offsets(
        topics.consumer_group(prefix, "test-consumer")
    )
    assert offsets[(topic, 0)][0] == 3  # past both bad records and the good one


_SECRET_TOKEN = "syt_YWxpY2U_sEcReTsEcReT_1a2b3c"  # noqa: S105 (a made-up token)


def _fail_with_a_token(update: Any) -> None:
    raise RuntimeError(f"the homeserver refused {_SECRET_TOKEN} for {update.token}")


def test_a_failing_handler_dead_letters_its_update_with_the_token_masked(
    kafka_bootstrap: str, prefix: str, publisher: Publisher
) -> None:
    ensure_topics(kafka_bootstrap, prefix, ["typing"])
    with ConsumerRun(
        kafka_bootstrap,
        prefix,
        ["typing"],
        None,
        handler=_fail_with_a_token,
        handler_policy="dead-letter",
        handler_retries=1,
    ) as run:
        run.wait_caught_up()
        publisher.publish_rdata(
            "typing", "master", 1, [row_from_wire("typing", ["!r:test", []])]
        )
        publisher.flush()
        wait_for(
            lambda: run.sample("synkafka_dead_letters_total", reason="handler",
                               topic=topics.stream_topic(prefix, "typing")) == 1,
            what="the handler's dead letter",
        )  # fmt: skip
    ((value, headers),) = dead_letter_records(kafka_bootstrap, prefix, 1)
    assert value is not None
    assert headers["dlq.reason"].startswith(b"handler failed 1 times: ")
    assert b"syt_***" in headers["dlq.reason"]
    assert _SECRET_TOKEN.encode() not in headers["dlq.reason"]
    assert headers["token"] == b"1"


def test_database_down_during_backfill_backs_off_then_succeeds(
    postgres: PostgresCluster,
    pg_dsn: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
) -> None:
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    with open_db(dsn) as conn:
        master = SynapseWriter(conn, "master")
        with ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn) as run:
            run.wait_caught_up()
        written = _events(master, 50)
    publish_written(publisher, "events", "master", written)
    publisher.flush()
    postgres.stop()
    window_s = 8.0
    try:
        run2 = ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn)
        with run2:
            started = time.monotonic()
            # Measure how often it tries while the database is down.
            wait_for(
                lambda: time.monotonic() - started >= window_s,
                window_s + 5,
                "the window",
            )
            attempts = run2.consumer.attempts
            assert run2.sample("synkafka_reconnects_total", component="consumer") >= 2
            postgres.start()
            run2.wait_caught_up(60)
            wait_for(
                lambda: len(run2.recorder.tokens("events")) == 50, 30, "the backfill"
            )
    finally:
        if not postgres.running():
            postgres.start()
    assert run2.recorder.tokens("events") == [t for t, _ in written]
    assert {u.source for u in run2.recorder.snapshot()} == {"backfill"}
    # n attempts need at least the sum of the first n - 1 backoff delays.
    assert attempts >= 3, "it kept trying"
    assert Backoff().min_total_s(attempts - 1) <= window_s + 1.0, f"{attempts} attempts"


def test_consumer_killed_with_sigkill_loses_nothing_and_repeats_only_uncommitted_rows(
    pg_dsn: str, tmp_path: Path, kafka_bootstrap: str, prefix: str, publisher: Publisher
) -> None:
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    out1, out2 = tmp_path / "run1.jsonl", tmp_path / "run2.jsonl"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = int(probe.getsockname()[1])

    def ready() -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/ready", timeout=2
            ) as r:
                return bool(r.status == 200)
        except OSError:  # not listening yet, or 503 (HTTPError) while catching up
            return False

    def start(out: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adapter",
                "consume",
                "--bootstrap-servers",
                kafka_bootstrap,
                "--prefix",
                prefix,
                "--instance-name",
                "killed",
                "--stream",
                "events",
                "--db",
                dsn,
                "--output",
                str(out),
                "--metrics-port",
                str(port),
                "--no-progress",
                "--commit-interval",
                "0.2",
            ],
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    # One admin client for every look: creating one per poll (every 20 ms) on a
    # broker that just started made librdkafka crash now and then.
    admin = Admin(KafkaSettings(bootstrap_servers=kafka_bootstrap))

    def committed_token() -> int | None:
        """master's token in the group's commit of the events partition, if any."""
        offsets = admin.group_offsets(topics.consumer_group(prefix, "killed"))
        meta = offsets.get((topics.stream_topic(prefix, "events"), 0), (None, None))[1]
        return decode_commit_metadata(meta or "").get(("events", "master"))

    with open_db(dsn) as conn:
        master = SynapseWriter(conn, "master")
        proc = start(out1)
        try:
            # Caught up (its /ready): rows published from now on are live ones. Not
            # the group's offsets: on a broker that just started, the coordinator
            # can take half a minute to answer an admin client.
            wait_for(ready, 60, "the consumer ready")
            written = []
            for _ in range(40):
                batch = _events(master, 25)
                written += batch
                publish_written(publisher, "events", "master", batch)
                publisher.flush()
                if len(json_lines(out1)) >= 300:
                    break
            wait_for(lambda: len(json_lines(out1)) >= 300, 30, "rows flowing")
            # Kill it mid-stream: after a commit that covers some of master's rows
            # (so "after the last commit" means something), with rows handled since.
            wait_for(
                lambda: committed_token() is not None, 30, "a commit of master's rows"
            )
            handled = len(json_lines(out1))
            batch = _events(master, 25)
            written += batch
            publish_written(publisher, "events", "master", batch)
            publisher.flush()
            wait_for(
                lambda: len(json_lines(out1)) > handled, 30, "rows after the commit"
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        last_commit = committed_token()
        assert last_commit is not None
        rest = _events(master, 100)
        written += rest
        publish_written(publisher, "events", "master", rest)
        publisher.flush()
        proc2 = start(out2)
        try:
            last = written[-1][0]
            wait_for(
                lambda: any(x["token"] == last for x in json_lines(out2)),
                60,
                "the last row",
            )
        finally:
            proc2.send_signal(signal.SIGTERM)
            assert proc2.wait(30) == 0
    first, second = json_lines(out1), json_lines(out2)
    seen = [x["token"] for x in first] + [x["token"] for x in second]
    assert set(seen) == {t for t, _ in written}, "no row lost"
    repeated = {x["token"] for x in second} & {x["token"] for x in first}
    assert all(t > last_commit for t in repeated), (
        "only rows after the last commit repeat"
    )


def test_broker_restart_mid_stream_loses_nothing(
    kafka: KafkaBroker,
    pg_dsn: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
) -> None:
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    with open_db(dsn) as conn:
        master = SynapseWriter(conn, "master")
        with ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn) as run:
            run.wait_caught_up()
            before = _events(master, 50)
            publish_written(publisher, "events", "master", before)
            publisher.flush()
            kafka.restart()
            after = _events(master, 50)
            publish_written(publisher, "events", "master", after)
            publisher.flush(60)
            wait_for(
                lambda: len(set(run.recorder.tokens("events"))) == 100, 90, "all rows"
            )
    tokens = run.recorder.tokens("events")
    assert tokens == [t for t, _ in before + after], "each row once, in order"


def test_an_oversized_record_is_refused_loudly_and_nothing_else_is_lost(
    kafka_bootstrap: str, prefix: str, publisher: Publisher
) -> None:
    ensure_topics(kafka_bootstrap, prefix, ["typing"])
    huge = row_from_wire(
        "typing", ["!r:test", [f"@user{i}:test" for i in range(120_000)]]
    )
    small = row_from_wire("typing", ["!r:test", ["@a:test"]])
    with ConsumerRun(kafka_bootstrap, prefix, ["typing"], None) as run:
        run.wait_caught_up()
        publisher.publish_rdata("typing", "master", 1, [small])
        # librdkafka refuses it before it leaves the process: the caller sees it.
        with pytest.raises(DeliveryError, match=r"MSG_SIZE_TOO_LARGE|too large"):
            publisher.publish_rdata("typing", "master", 2, [huge])
        publisher.publish_rdata("typing", "master", 3, [small])
        publisher.flush()
        wait_for(lambda: run.recorder.tokens("typing") == [1, 3], what="the small rows")


def test_a_commit_without_our_token_map_replays_kafka_from_that_offset(
    pg_dsn: str, tmp_path: Path, kafka_bootstrap: str, prefix: str, publisher: Publisher
) -> None:
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    with open_db(dsn) as conn:
        written = _events(SynapseWriter(conn, "master"), 6)
    publish_written(publisher, "events", "master", written)
    publisher.flush()
    # What `kafka-consumer-groups --reset-offsets --to-offset 2` leaves behind.
    raw = KafkaConsumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": f"{prefix}.test-consumer"}
    )
    raw.commit(
        offsets=[TopicPartition(topics.stream_topic(prefix, "events"), 0, 2)],
        asynchronous=False,
    )
    raw.close()
    with ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn) as run:
        wait_for(lambda: len(run.recorder.tokens("events")) == 4, what="the replay")
        run.wait_caught_up()
    assert run.recorder.tokens("events") == [t for t, _ in written[2:]]
    assert {u.source for u in run.recorder.snapshot()} == {"kafka"}


def test_every_partition_carries_the_stream_token_map_so_lag_reaches_zero(
    tmp_path: Path, kafka_bootstrap: str, prefix: str, publisher: Publisher
) -> None:
    # One writer keys every record to one partition; the other partition only ever
    # holds the initial commit. Its metadata must still follow the stream's tokens.
    dsn = make_database("sqlite", "", tmp_path)
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    Admin(settings).create_topics(
        topics.topic_specs(prefix, ["events"], stream_partitions=2)
    )
    with (
        open_db(dsn) as conn,
        ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn) as run,
    ):
        run.wait_caught_up()
        written = _events(SynapseWriter(conn, "master"), 5)
        publish_written(publisher, "events", "master", written)
        last = written[-1][0]
        publisher.publish(PositionCommand("events", "master", last, last))
        publisher.flush()
        wait_for(lambda: len(run.recorder.tokens("events")) == 5, what="5 rows")
        reader = Consumer(settings, f"{prefix}.lag-reader")
        rows: list[LagRow] = []
        try:

            def zero() -> bool:
                rows[:] = measure_lag(
                    Admin(settings),
                    reader,
                    prefix,
                    [f"{prefix}.test-consumer"],
                    ["events"],
                )
                return len(rows) == 2 and all(
                    r.lag_messages == 0 and r.lag_tokens == 0 for r in rows
                )

            try:
                wait_for(zero, what="zero lag on both partitions")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last lag rows: {rows}") from None
        finally:
            reader.close()
    assert sorted(r.head for r in rows)[0] == 0  # one partition never got a record


def test_a_quiet_stream_keeps_its_token_map_across_restarts(
    tmp_path: Path, kafka_bootstrap: str, prefix: str, publisher: Publisher
) -> None:
    # Rows written before the first start are history, not a gap: no restart may
    # hand them out, even when the stream got no record while the consumer ran.
    dsn = make_database("sqlite", "", tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    with open_db(dsn) as conn:
        history = _events(SynapseWriter(conn, "master"), 5)
    last = history[-1][0]
    group = f"{prefix}.test-consumer"
    topic = topics.stream_topic(prefix, "events")
    admin = Admin(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    for _ in range(2):
        with ConsumerRun(kafka_bootstrap, prefix, ["events"], dsn) as run:
            run.wait_caught_up()
            wait_for(lambda: (topic, 0) in admin.group_offsets(group), what="a commit")
        assert run.recorder.snapshot() == []
        _, metadata = admin.group_offsets(group)[(topic, 0)]
        assert metadata is not None
        assert decode_commit_metadata(metadata) == {("events", "master"): last}
