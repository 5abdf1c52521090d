"""Bad input, table-driven, against the real broker and Redis: nothing is dropped.

Each table row is one kind of bad input found when synkafka was attacked on purpose
(garbage records of every shape and size on a stream topic, malformed Redis lines).
Every row must end up on the dead-letter topic, in order, with its reason; the good
record after them must still be delivered; and the consumer's committed offset must
be past all of them only once they are there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from confluent_kafka import Producer as RawProducer

from adapter.codec.avro_codec import MAGIC, encode
from adapter.core import topics
from adapter.core.commands import RdataCommand, ReplicateCommand
from adapter.core.config import KafkaSettings
from adapter.core.rows import row_from_wire
from adapter.devstack.services import PostgresCluster
from adapter.devstack.services._process import free_port
from adapter.io.kafka.admin import Admin
from adapter.runtime.publisher import Publisher
from tests.integration.bridge_run import BridgeRun, read_topic
from tests.integration.harness import (
    ConsumerRun,
    allow_large_records,
    dead_letter_records,
    ensure_topics,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "syt_YmFk_InPuTsEcReT_9z8y7x"  # noqa: S105 (made up; must never show)


@pytest.fixture
def raw_producer(kafka_bootstrap: str) -> Iterator[Callable[[str, bytes], None]]:
    """Puts values on a topic as they are, acknowledged (4 MB allowed)."""
    client = RawProducer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": "4100000"}
    )

    def put(topic: str, value: bytes) -> None:
        client.produce(topic, value, key=b"master")
        assert client.flush(30) == 0

    yield put
    client.flush(10)


def _rdata_for(stream: str, wire_row: list[object]) -> bytes:
    return encode(RdataCommand(stream, "master", 7, (row_from_wire(stream, wire_row),)))


@dataclass(frozen=True)
class BadRecord:
    """A value put straight on the ``typing`` stream topic."""

    kind: str
    value: bytes
    reason: str  # the start of its dlq.reason
    reference: bool = False  # too large: stored as a reference record


_VALID = _rdata_for("typing", ["!r:test", ["@u:test"]])

BAD_RECORDS = [
    BadRecord("random bytes", b"\x00\x17garbage\xff" * 5, "decode"),
    BadRecord("empty value", b"", "decode"),
    BadRecord("magic only", MAGIC, "decode"),
    BadRecord("unknown schema fingerprint", MAGIC + b"\x01" * 8 + b"\x02", "decode"),
    BadRecord("truncated body", _VALID[: len(_VALID) - 3], "decode"),
    BadRecord("trailing bytes", _VALID + b"\x00\x00", "decode"),
    BadRecord("JSON instead of Avro", json.dumps({"token": 1}).encode(), "decode"),
    BadRecord(
        "RDATA of another stream",
        _rdata_for("receipts", ["!r:test", "m.read", "@u:test", "$e", None, {}]),
        "RDATA for another stream",
    ),
    BadRecord(
        "a command that has no business on a stream topic",
        encode(ReplicateCommand()),
        "REPLICATE does not belong on a stream topic",
    ),
    BadRecord(
        "3 MB of garbage", b"\xc3\x01" + bytes(range(256)) * 11_719, "decode", True
    ),
    BadRecord("token in a garbage record", f"x {TOKEN} y".encode(), "decode"),
]


def test_every_kind_of_bad_record_reaches_the_dead_letter_topic(
    kafka_bootstrap: str,
    prefix: str,
    publisher: Publisher,
    raw_producer: Callable[[str, bytes], None],
) -> None:
    ensure_topics(kafka_bootstrap, prefix, ["typing"])
    topic = topics.stream_topic(prefix, "typing")
    allow_large_records(kafka_bootstrap, topic)
    with ConsumerRun(kafka_bootstrap, prefix, ["typing"], None) as run:
        run.wait_caught_up()
        attempts_when_live = run.consumer.attempts
        for bad in BAD_RECORDS:
            raw_producer(topic, bad.value)
        publisher.publish_rdata(
            "typing", "master", 1, [row_from_wire("typing", ["!r:test", []])]
        )
        publisher.flush()
        wait_for(
            lambda: run.recorder.tokens("typing") == [1], what="the good record after"
        )
        # Never restarted over a bad record (a start-up retry, such as "not
        # coordinator" on a busy broker, happened before and does not count).
        assert run.consumer.attempts == attempts_when_live
    letters = dead_letter_records(kafka_bootstrap, prefix, len(BAD_RECORDS))
    for offset, (bad, (value, headers)) in enumerate(
        zip(BAD_RECORDS, letters, strict=True)
    ):
        assert headers["dlq.offset"] == str(offset).encode(), bad.kind
        assert headers["dlq.reason"].decode().startswith(bad.reason), bad.kind
        assert TOKEN.encode() not in headers["dlq.reason"], bad.kind
        if bad.reference:
            assert headers["dlq.reference"] == b"1", bad.kind
            assert value is not None
            assert json.loads(value)["size"] == len(bad.value), bad.kind
        else:
            assert value == bad.value, bad.kind
    committed = Admin(KafkaSettings(bootstrap_servers=kafka_bootstrap)).group_offsets(
        topics.consumer_group(prefix, "test-consumer")
    )
    assert committed[(topic, 0)][0] == len(BAD_RECORDS) + 1


@dataclass(frozen=True)
class BadLine:
    """A line published on the homeserver's Redis channel (or its USER_IP channel)."""

    kind: str
    line: bytes
    user_ip: bool = False
    reference: bool = False


BAD_LINES = [
    BadLine("unknown command", b"NOT_A_COMMAND 1 2"),
    BadLine("RDATA with too few fields", b"RDATA events master"),
    BadLine("RDATA with a word for a token", b'RDATA typing master seven ["!r:x",[]]'),
    BadLine("RDATA of an unknown stream", b'RDATA no_such master 3 ["x"]'),
    BadLine("RDATA with broken JSON", b'RDATA typing master 3 ["!r:x",'),
    BadLine("RDATA row of the wrong shape", b'RDATA typing master 3 {"room": 1}'),
    BadLine("POSITION with a word", b"POSITION events master one 2"),
    BadLine("JSON nested 100,000 deep", b"RDATA typing master 3 " + b"[" * 100_000),
    BadLine("not UTF-8", b"RDATA typing master 3 \xff\xfe\xfd"),
    BadLine("a token in a bad line", f"BOGUS {TOKEN}".encode()),
    BadLine(
        "USER_IP with four fields",
        f'USER_IP @u:x ["{TOKEN}","127.0.0.1","ua","DEV"]'.encode(),
        user_ip=True,
    ),
    BadLine("3 MB line", b"BOGUS " + b"x" * 3_000_000, reference=True),
]


def test_every_kind_of_bad_line_reaches_the_dead_letter_topic(
    redis_url: str, kafka_bootstrap: str, prefix: str, unique_name: str
) -> None:
    server_name = f"{unique_name}.test"
    client = redis.Redis.from_url(redis_url)
    try:
        with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix) as run:
            for bad in BAD_LINES:
                channel = f"{server_name}/USER_IP" if bad.user_ip else server_name
                client.publish(channel, bad.line)
            client.publish(server_name, b'RDATA typing master 9 ["!r:x",[]]')
            wait_for(
                lambda: (
                    len(read_topic(kafka_bootstrap, topics.dlq_topic(prefix)))
                    >= len(BAD_LINES)
                ),
                30,
                "every bad line on the dead-letter topic",
            )
            wait_for(
                lambda: bool(
                    read_topic(kafka_bootstrap, topics.stream_topic(prefix, "typing"))
                ),
                30,
                "the good line after them",
            )
        assert run.error is None
        assert run.bridge.stats.parse_failures == len(BAD_LINES)
    finally:
        client.close()
    letters = read_topic(kafka_bootstrap, topics.dlq_topic(prefix))
    assert len(letters) == len(BAD_LINES)
    for bad, record in zip(BAD_LINES, letters, strict=True):
        headers = dict(record.headers)
        assert record.value is not None, bad.kind
        assert TOKEN.encode() not in record.value, bad.kind
        assert all(TOKEN.encode() not in v for v in headers.values()), bad.kind
        assert headers[topics.HEADER_DLQ_REASON], bad.kind
        if bad.reference:
            assert headers["dlq.reference"] == b"1", bad.kind
        elif not bad.user_ip and TOKEN.encode() not in bad.line:
            # Kept as it was, bad bytes shown as U+FFFD.
            assert record.value == bad.line.decode("utf-8", "replace").encode(), (
                bad.kind
            )


@dataclass(frozen=True)
class BadCommand:
    """A command line a user gets wrong, and the one line it must answer with."""

    kind: str
    argv: tuple[str, ...]
    code: int  # 2: fix the command, its settings or its input; 1: a runtime failure
    says: str  # in the error line
    stdin: bytes = b""
    files: tuple[tuple[str, bytes], ...] = ()  # written into the folder first


_GOOD = json.dumps(
    {"command": "POSITION", "stream": "typing", "writer": "master", "prev": 1, "new": 2}
).encode()
_PUB = ("publish", "-b", "{dead}", "--prefix", "bad.x")
_CONSUME = ("consume", "-b", "{dead}", "--prefix", "bad.x", "--metrics-port", "-1")

BAD_COMMANDS = [
    BadCommand("unknown flag", ("consume", "--no-such-flag"), 2, "No such option"),
    BadCommand("unknown command", ("nosuchcommand",), 2, "No such command"),
    BadCommand("bad option value", (*_CONSUME, "--commit-interval", "abc"), 2, "Invalid value"),
    BadCommand("bad log level", (*_CONSUME, "--log-level", "LOUD"), 2, "unknown log level"),
    BadCommand("unknown -X property", (*_CONSUME, "-X", "no.such=1"), 2, "No such configuration property"),
    BadCommand("invalid -X value", (*_CONSUME, "-X", "fetch.max.bytes=lots"), 2, "fetch.max.bytes"),
    BadCommand("bootstrap list that does not parse", ("lag", "-b", "notahost::::"), 2, "notahost"),
    BadCommand("DSN of no known kind", (*_CONSUME, "--db", "mysql://db/synapse"), 2, "--db"),
    BadCommand("a bare path as DSN", (*_CONSUME, "--db", "synapse.db"), 2, "--db"),
    BadCommand("-o in a missing folder", (*_CONSUME, "-o", "missing/out.jsonl"), 2, "missing"),
    BadCommand("-o a folder", (*_CONSUME, "-o", "."), 2, "directory"),
    BadCommand("config file missing", ("--config", "nope.toml", "lag"), 2, "nope.toml"),
    BadCommand("config file not TOML", ("--config", "bad.toml", "lag"), 2, "bad.toml",
               files=(("bad.toml", b"[consume\nx = = 1"),)),
    BadCommand("config file with an unknown key", ("--config", "c.toml", "lag"), 2,
               "c.toml: [lag] unknown key 'jsn'", files=(("c.toml", b"[lag]\njsn = true\n"),)),
    BadCommand("config file with an unknown table", ("--config", "c.toml", "lag"), 2,
               "c.toml: unknown table [consumer]", files=(("c.toml", b"[consumer]\ndb = 1\n"),)),
    BadCommand("config value of the wrong type", ("--config", "c.toml", *_CONSUME), 2,
               "c.toml: [consume] metrics-port: ",
               files=(("c.toml", b'[consume]\nmetrics-port = "abc"\n'),)),
    BadCommand("unknown stream", ("tail", "nosuchstream", "-b", "{dead}", "--prefix", "p"), 2, "nosuchstream"),
    BadCommand("schemas folder missing", ("schemas", "check", "--dir", "nowhere"), 2, "nowhere"),
    BadCommand("publish a missing file", (*_PUB, "in.jsonl"), 2, "in.jsonl"),
    BadCommand("publish a folder", (*_PUB, "."), 2, "."),
    BadCommand("publish bytes that are not UTF-8", _PUB, 2, "UTF-8", stdin=b"\xff\xfe\n"),
    BadCommand("publish JSON nested 100,000 deep", _PUB, 2, "line 1", stdin=b"[" * 100_000),
    BadCommand("publish four good lines and a bad fifth", _PUB, 2, "line 5",
               stdin=b"\n".join([_GOOD] * 4 + [b"{not json"])),
    BadCommand("publish an unclosed batch", _PUB, 2, "batch",
               stdin=b'RDATA typing master batch ["!r:x",[]]\n'),
    BadCommand("publish a negative token", _PUB, 2, "line 1",
               stdin=b'RDATA typing master -4 ["!r:x",[]]\n'),
    BadCommand("secret next to a bad setting", (*_CONSUME, "--kafka-password", "sekret-pw",
               "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN",
               "--kafka-username", "u", "-X", "no.such=1"), 2, "No such configuration"),
    BadCommand("presence track with an empty user", ("presence", "track", "--user", "",
               "-b", "{dead}", "--prefix", "p"), 2, "--user '' is not a Matrix user ID"),
    BadCommand("presence track with a user that is no Matrix ID", ("presence", "track",
               "--user", "@alice", "-b", "{dead}", "--prefix", "p"), 2,
               "--user '@alice' is not a Matrix user ID"),
    BadCommand("unreachable broker", ("topics", "describe", "-b", "{dead}", "--prefix", "p",
               "--timeout", "2"), 1, "cannot reach Kafka"),
    BadCommand("--db empty", (*_CONSUME, "--db", ""), 2, "empty"),
    BadCommand("password file not UTF-8", ("lag", "-b", "{dead}", "--prefix", "p",
               "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN",
               "--kafka-username", "u", "--kafka-password-file", "pw"), 2, "not UTF-8",
               files=(("pw", b"\xff\xfesekret-pw\n"),)),
    BadCommand("handler module that fails as it loads", (*_CONSUME, "--handler", "boom:f"),
               2, "RuntimeError: boom", files=(("boom.py", b"raise RuntimeError('boom')\n"),)),
    BadCommand("handler module with a syntax error", (*_CONSUME, "--handler", "broken:f"),
               2, "SyntaxError", files=(("broken.py", b"def f(:\n"),)),
    BadCommand("a database that does not exist", ("consume", "-b", "{kafka}", "--prefix",
               "{prefix}", "--metrics-port", "-1", "--stream", "events", "--db",
               "{pg_missing}"), 2, "does not exist"),
    BadCommand("feed with a SQLite file that does not exist", ("feed", "-b", "{dead}",
               "--prefix", "p", "--metrics-port", "-1", "--db",
               "sqlite:///nowhere/homeserver.db"), 2, "does not exist"),
    BadCommand("feed with a database that does not exist", ("feed", "-b", "{dead}",
               "--prefix", "p", "--metrics-port", "-1", "--db", "{pg_missing}"), 2,
               "does not exist"),
    BadCommand("a database that is not Synapse's", ("consume", "-b", "{kafka}", "--prefix",
               "{prefix}", "--metrics-port", "-1", "--stream", "events", "--db", "{pg}"),
               2, "Synapse's database"),
    BadCommand("Redis refuses the password", ("bridge", "-b", "{kafka}", "--server-name",
               "bad.test", "--metrics-port", "-1", "--redis", "{redis_wrong_password}",
               "--log-level", "WARNING"),
               2, "refused the credentials"),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_COMMANDS, ids=lambda bad: bad.kind)
def test_every_bad_command_line_is_one_clear_line(
    bad: BadCommand,
    tmp_path: Path,
    kafka_bootstrap: str,
    postgres: PostgresCluster,
    redis_url: str,
    unique_name: str,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    prefix = f"badcmd.{unique_name}"
    if "{prefix}" in bad.argv:
        ensure_topics(kafka_bootstrap, prefix, ["events"])
    host = redis_url.split("://", 1)[1]
    places = {
        "dead": dead,
        "kafka": kafka_bootstrap,
        "prefix": prefix,
        "pg": postgres.dsn("postgres"),
        "pg_missing": postgres.dsn("no_such_database"),
        "redis_wrong_password": f"redis://:sekret-pw@{host}",
    }
    for name, content in bad.files:
        (tmp_path / name).write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "adapter", *(a.format(**places) for a in bad.argv)],
        input=bad.stdin,
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    stderr = done.stderr.decode("utf-8", "replace")
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("synkafka: error: "), stderr
    assert bad.says in lines[0], stderr
    assert done.returncode == bad.code, stderr
    assert "sekret-pw" not in stderr
    assert took < 15, f"{bad.kind} took {took:.1f} s"
    # Nothing was created from the command line (no SQLite file named after a DSN).
    assert sorted(p.name for p in tmp_path.iterdir()) == before
