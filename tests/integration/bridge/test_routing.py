"""The bridge fed Synapse's recorded lines: batching, routing, dead letters, repair.

The recorded lines are published into the session's Redis as Synapse would, and the
Kafka topics are checked. Gap repair reads from a simulated Synapse database written
by :class:`~adapter.devstack.writer.SynapseWriter`. Last, ``synkafka bridge`` itself
on SIGTERM.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from adapter.core import dead_letters, topics
from adapter.core.commands import (
    PositionCommand,
    UserIpCommand,
)
from adapter.core.masking import mask_access_tokens
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.devstack.writer import SynapseWriter
from adapter.io.db.connection import connect
from tests.integration.bridge_run import (
    BridgeRun,
    decoded,
    kill_bridge_connection,
    publish_lines,
    rdata_by_token,
    read_topic,
    recorded_lines,
    topic_size,
    wait_records,
)
from tests.integration.harness import make_database, wait_for

_TOKEN = "syt_Ym9i_sEcReTtOkEnvAlUe_1a2b3c"  # noqa: S105 (a fake, to be masked)


# --- recorded traffic -----------------------------------------------------------------


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
        publish_lines(publisher, pairs)
        wait_records(
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
        publish_lines(publisher, pairs)
        wait_records(
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
        publish_lines(publisher, bad + good)
        wait_records(
            kafka_bootstrap, topics.dlq_topic(prefix), len(bad), "the dead letters"
        )
        wait_records(
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
        publish_lines(
            publisher, [(server_name, huge), (server_name, "NOT_A_COMMAND 1")]
        )
        wait_records(kafka_bootstrap, topics.dlq_topic(prefix), 2, "both dead letters")
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
        publish_lines(
            publisher, [pair for item in written[:2] for pair in lines(item, "events")]
        )
        publish_lines(
            publisher,
            [(server_name, f"POSITION events master {written[6][0]} {written[6][0]}")],
        )
        publish_lines(
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
        publish_lines(publisher, lines(written[-1], "events"))
        publish_lines(publisher, lines(receipts[0], "receipts"))
        publish_lines(publisher, lines(receipts[2], "receipts"))
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
        publish_lines(publisher, [(server_name, "POSITION events master 9 12")])
        wait_records(
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
        publish_lines(
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
