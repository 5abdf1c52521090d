"""``--catch-up kafka|database``: what a resumed consumer delivers of what it missed.

Receipts and account data keep only the latest row per key in Synapse's database, so
the two modes differ exactly there: ``database`` delivers the latest state, ``kafka``
every update Kafka holds. Real broker, real PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.devstack.writer import SynapseWriter
from adapter.io.kafka.consumer import Consumer
from adapter.runtime.publisher import Publisher
from tests.integration.harness import (
    ConsumerRun,
    ensure_topics,
    make_database,
    open_db,
    publish_written,
    wait_for,
)

STREAMS = ["receipts", "account_data"]
UPDATES = 6


def _delivered(run: ConsumerRun, stream: str) -> list[int]:
    return run.recorder.tokens(stream)


@pytest.mark.parametrize("mode", ["kafka", "database"])
def test_catch_up_kafka_delivers_every_update_kafka_holds_database_the_latest(
    mode: str,
    pg_dsn: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
) -> None:
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, STREAMS)
    with open_db(dsn) as conn:
        master = SynapseWriter(conn, "master")
        with ConsumerRun(kafka_bootstrap, prefix, STREAMS, dsn, catch_up=mode) as run:
            run.wait_caught_up()
            first_r = master.send_receipt("!r:t", "m.read", "@a:t", "$e0")
            first_a = master.set_account_data("@a:t", "m.push_rules", {"v": 0})
            publish_written(publisher, "receipts", "master", [first_r])
            publish_written(publisher, "account_data", "master", [first_a])
            publisher.flush()
            wait_for(
                lambda: (
                    _delivered(run, "receipts") == [first_r[0]]
                    and _delivered(run, "account_data") == [first_a[0]]
                ),
                what="the first updates",
            )
        # Stopped (and committed): the same keys are updated several times, in the
        # database (which keeps only the latest row per key) and on Kafka.
        receipts = [
            master.send_receipt("!r:t", "m.read", "@a:t", f"$e{i}")
            for i in range(1, UPDATES + 1)
        ]
        account = [
            master.set_account_data("@a:t", "m.push_rules", {"v": i})
            for i in range(1, UPDATES + 1)
        ]
        publish_written(publisher, "receipts", "master", receipts)
        publish_written(publisher, "account_data", "master", account)
        publisher.flush()
        with ConsumerRun(kafka_bootstrap, prefix, STREAMS, dsn, catch_up=mode) as run:
            run.wait_caught_up()
            wait_for(
                lambda: (
                    receipts[-1][0] in _delivered(run, "receipts")
                    and account[-1][0] in _delivered(run, "account_data")
                ),
                what="the latest updates",
            )
            got_r, got_a = _delivered(run, "receipts"), _delivered(run, "account_data")
            sources = {u.source for u in run.recorder.snapshot()}
    if mode == "kafka":
        assert got_r == [t for t, _ in receipts], "every receipt update, once, in order"
        assert got_a == [t for t, _ in account], "every account data update, once"
        assert sources == {"kafka"}
    else:
        assert got_r == [receipts[-1][0]], "only the latest receipt"
        assert got_a == [account[-1][0]], "only the latest account data"
        assert sources == {"backfill"}


def test_catch_up_kafka_reads_from_the_database_only_what_retention_deleted(
    pg_dsn: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
) -> None:
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["receipts"])
    topic = topics.stream_topic(prefix, "receipts")
    with open_db(dsn) as conn:
        master = SynapseWriter(conn, "master")
        other = SynapseWriter(conn, "persister1")
        with ConsumerRun(
            kafka_bootstrap, prefix, ["receipts"], dsn, catch_up="kafka"
        ) as run:
            run.wait_caught_up()
            seen = master.send_receipt("!r:t", "m.read", "@seen:t", "$e")
            publish_written(publisher, "receipts", "master", [seen])
            publisher.flush()
            wait_for(lambda: _delivered(run, "receipts") == [seen[0]], what="one row")
        # Stopped. persister1's receipts and master's first two are then deleted by
        # "retention" (DeleteRecords moves the log start offset past them); master's
        # last three stay on Kafka. Different users: every row stays in the database.
        lost_other = [
            other.send_receipt("!r:t", "m.read", f"@o{i}:t", "$e") for i in range(2)
        ]
        lost_master = [
            master.send_receipt("!r:t", "m.read", f"@m{i}:t", "$e") for i in range(2)
        ]
        publish_written(publisher, "receipts", "persister1", lost_other)
        publish_written(publisher, "receipts", "master", lost_master)
        publisher.flush()
        probe = Consumer(KafkaSettings(bootstrap_servers=kafka_bootstrap), "probe")
        try:
            cut = probe.watermarks(topic, 0)[1]
        finally:
            probe.close()
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_records([TopicPartition(topic, 0, cut)]).values():
            future.result(30)
        kept = [
            master.send_receipt("!r:t", "m.read", f"@k{i}:t", "$e") for i in range(3)
        ]
        publish_written(publisher, "receipts", "master", kept)
        publisher.flush()
        with ConsumerRun(
            kafka_bootstrap, prefix, ["receipts"], dsn, catch_up="kafka"
        ) as run:
            run.wait_caught_up()
            expected = {t for t, _ in lost_other + lost_master + kept}
            wait_for(
                lambda: expected <= set(_delivered(run, "receipts")),
                what="every row after the commit",
            )
            updates = run.recorder.snapshot()
    tokens = [u.token for u in updates]
    assert sorted(tokens) == sorted(expected), "no row lost, none twice"
    by_source = {u.token: u.source for u in updates}
    assert {by_source[t] for t, _ in lost_other + lost_master} == {"backfill"}
    assert {by_source[t] for t, _ in kept} == {"kafka"}, "Kafka's records from Kafka"
