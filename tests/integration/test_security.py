"""Security end to end: SASL_SSL, mutual TLS, ACLs per role, secrets and tokens kept in.

Everything runs against the second broker of :mod:`tests.integration.secure_broker`
(ACLs enforced, nothing allowed by default). Each test grants its principals their
roles with ``deploy/acls.py --apply``, the script operators run, so the ACL lists in
docs/security.md are the ones tested here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.commands import UserIpCommand
from adapter.core.errors import ConsumeError
from adapter.devstack.services._process import free_port
from adapter.io.kafka.consumer import BEGINNING, Consumer, PartitionStart
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import Metrics
from adapter.runtime.consumer import ConsumerOptions, ReplicationConsumer
from tests.integration.harness import Recorder, json_lines, wait_for
from tests.integration.secure_broker import (
    ADMIN,
    CLIENT_CN,
    PLAIN_USER,
    SCRAM_256_USER,
    SecureKafka,
    secure_kafka,
)

__all__ = ["secure_kafka"]  # the fixture, re-exported so pytest finds it here

ROOT = Path(__file__).resolve().parents[2]
ACL_SCRIPT = ROOT / "deploy" / "acls.py"
FAKE_TOKEN = "syt_dGVzdA_abcdefghijklmnopqrst_1a2b3c"  # noqa: S105 (a fake token)


def synkafka(
    *args: str,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def grant(secure: SecureKafka, prefix: str, *grants: str) -> None:
    """Create the ACLs of ``ROLE[/INSTANCE]=PRINCIPAL`` grants with deploy/acls.py."""
    argv = [sys.executable, str(ACL_SCRIPT), "--prefix", prefix, "--apply"]
    for g in grants:
        argv += ["--grant", g]
    args = secure.cli_args(ADMIN)
    result = subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert secure.passwords[ADMIN] not in result.stdout + result.stderr


def receipts_lines(tokens: range) -> str:
    return "\n".join(
        f'RDATA receipts master {t} ["!r:test","m.read","@u{t}:test","$e",null,{{}}]'
        for t in tokens
    )


@pytest.fixture
def prefix(unique_name: str) -> str:
    return f"sec.{unique_name}"


@pytest.fixture
def topics_ready(secure_kafka: SecureKafka, prefix: str) -> str:
    """The prefix, with every topic created by a topic-admin principal."""
    grant(secure_kafka, prefix, "topic-admin=User:topicadmin")
    ensured = synkafka(
        "topics",
        "ensure",
        "--stream",
        "receipts",
        "--prefix",
        prefix,
        *secure_kafka.cli_args("topicadmin"),
    )
    assert ensured.returncode == 0, ensured.stderr
    return prefix


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; each is stopped (SIGTERM, then SIGKILL) afterwards."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def spawn(procs: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapter", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    return proc


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


# -- 1. every role over SASL_SSL (and mutual TLS) with exactly its ACLs ------------------


def test_every_role_works_over_sasl_ssl_with_exactly_its_acls(
    secure_kafka: SecureKafka,
    topics_ready: str,
    tmp_path: Path,
    background: list[subprocess.Popen[str]],
) -> None:
    prefix = topics_ready
    grant(
        secure_kafka,
        prefix,
        "bridge=User:bridge",
        "consumer/sec=User:consumer",
        "presence-writer=User:presence",
        "lag-reader=User:lag",
        f"consumer/synkafka-tail=User:CN={CLIENT_CN}",
    )
    common = ["--prefix", prefix]
    published = synkafka(
        "publish",
        *common,
        *secure_kafka.cli_args("bridge"),
        input_text=receipts_lines(range(2, 5)) + "\nPOSITION receipts master 4 4\n",
    )
    assert published.returncode == 0, published.stderr

    out = tmp_path / "rows.jsonl"
    consumer = spawn(
        background,
        "consume",
        *common,
        "--instance-name", "sec",
        "--stream", "receipts",
        "--from", "earliest",
        "--output", str(out),
        "--metrics-port", "-1",
        "--no-progress",
        "--commit-interval", "0.1",
        *secure_kafka.cli_args("consumer"),
    )  # fmt: skip
    tracker = spawn(
        background,
        "presence",
        "track",
        "--user", "@alice:test",
        "--heartbeat-interval", "0.2",
        *common,
        *secure_kafka.cli_args("bridge"),
    )  # fmt: skip
    wait_for(
        lambda: len(json_lines(out)) == 3,
        60,
        "3 updates over SASL_SSL",
    )
    assert consumer.poll() is None

    def lag_is_zero() -> bool:
        lag = synkafka(
            "lag", "--json", "--group", f"{prefix}.sec", *common,
            *secure_kafka.cli_args("lag"),
        )  # fmt: skip
        assert lag.returncode == 0, lag.stderr
        rows = [json.loads(x) for x in lag.stdout.splitlines()]
        return bool(rows) and all(r["lag_messages"] == 0 for r in rows)

    wait_for(lag_is_zero, 60, "lag 0 read by the lag-reader principal")

    def alice_listed() -> bool:
        listed = synkafka(
            "presence", "list", "--json", *common, *secure_kafka.cli_args("presence")
        )
        assert listed.returncode == 0, listed.stderr
        users = [u for i in json.loads(listed.stdout)["instances"] for u in i["users"]]
        return "@alice:test" in users

    wait_for(alice_listed, 60, "the tracked user on the presence topic")

    # Mutual TLS: the client certificate's subject is the principal, and its key is
    # encrypted; the key password comes from a file named in the environment.
    key_password = tmp_path / "key-password"
    key_password.write_text(secure_kafka.certs.client_key_password + "\n")
    tailed = synkafka(
        "tail", "receipts", "--from-beginning", "--json", *common,
        "--bootstrap-servers", secure_kafka.ssl_bootstrap,
        "--security-protocol", "SSL",
        "--ssl-ca", str(secure_kafka.certs.ca),
        "--ssl-cert", str(secure_kafka.certs.client_cert),
        "--ssl-key", str(secure_kafka.certs.client_key),
        env={"SYNKAFKA_SSL_KEY_PASSWORD_FILE": str(key_password)},
    )  # fmt: skip
    assert tailed.returncode == 0, tailed.stderr
    assert [json.loads(x)["command"] for x in tailed.stdout.splitlines()] == [
        "RDATA",
        "RDATA",
        "RDATA",
        "POSITION",
    ]
    assert secure_kafka.certs.client_key_password not in tailed.stdout + tailed.stderr

    code, _, err = stop(consumer)
    assert code == 0, err
    code, _, err = stop(tracker)
    assert code == 0, err
    everything = "".join([published.stderr, err, tailed.stderr, out.read_text()])
    for user in ("bridge", "consumer", "presence", "lag"):
        assert secure_kafka.passwords[user] not in everything


@pytest.mark.parametrize(
    ("user", "mechanism"),
    [(SCRAM_256_USER, "SCRAM-SHA-256"), (PLAIN_USER, "PLAIN")],
)
def test_other_sasl_mechanisms_work(
    secure_kafka: SecureKafka, prefix: str, user: str, mechanism: str
) -> None:
    grant(secure_kafka, prefix, f"topic-admin=User:{user}")
    ensured = synkafka(
        "topics", "ensure", "--stream", "typing", "--prefix", prefix,
        *secure_kafka.cli_args(user, mechanism=mechanism),
    )  # fmt: skip
    assert ensured.returncode == 0, ensured.stderr
    assert secure_kafka.passwords[user] not in ensured.stdout + ensured.stderr


def test_without_acls_a_valid_user_is_refused(
    secure_kafka: SecureKafka, prefix: str
) -> None:
    # Authenticated but granted nothing: allow.everyone.if.no.acl.found=false holds.
    described = synkafka(
        "topics", "ensure", "--stream", "typing", "--prefix", prefix,
        *secure_kafka.cli_args("ipreader"),
    )  # fmt: skip
    assert described.returncode == 1  # the broker refused: a runtime failure
    assert "authoriz" in described.stderr.lower(), described.stderr


# -- 2. wrong password, untrusted certificate ----------------------------------------


_RETRY_RE = re.compile(
    r"^(\S+ \S+) WARNING adapter\.runtime\.consumer: consumer failed"
)


@pytest.mark.parametrize("failure", ["wrong-password", "untrusted-certificate"])
def test_bad_credentials_give_one_clear_line_and_exit_within_30_s(
    secure_kafka: SecureKafka, topics_ready: str, tmp_path: Path, failure: str
) -> None:
    args = secure_kafka.cli_args("consumer")
    wrong = "wrong-" + secure_kafka.passwords["consumer"][::-1]
    if failure == "wrong-password":
        bad_file = tmp_path / "wrong"
        bad_file.write_text(wrong + "\n")
        args[args.index("--kafka-password-file") + 1] = str(bad_file)
    else:
        args[args.index("--ssl-ca") + 1] = str(secure_kafka.certs.rogue_ca)
    started = time.monotonic()
    try:
        result = synkafka(
            "consume", "--prefix", topics_ready, "--instance-name", "bad",
            "--stream", "receipts", "--metrics-port", "-1", "--no-progress",
            *args,
            timeout=31,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("synkafka consume kept retrying for 31 s")
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]
    assert elapsed < 30
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("synkafka: error:")
    expected = "authentication" if failure == "wrong-password" else "ssl"
    assert expected in last.lower(), last
    for secret in (wrong, secure_kafka.passwords["consumer"]):
        assert secret not in output
    # Backoff between the fatal_attempts (3) tries: two retries, spaced apart.
    retries = [m.group(1) for m in map(_RETRY_RE.match, output.splitlines()) if m]
    assert len(retries) == 2, output[-2000:]


# -- 3. user_ip is restricted ---------------------------------------------------------


def _run_consumer(
    secure: SecureKafka, prefix: str, instance: str
) -> tuple[ReplicationConsumer, Recorder, threading.Event, threading.Thread]:
    from prometheus_client import CollectorRegistry

    recorder = Recorder()
    consumer = ReplicationConsumer(
        secure.settings("consumer"),
        ConsumerOptions(
            prefix=prefix,
            instance_name=instance,
            streams=("receipts",),
            start_from="earliest",
            commit_interval_s=0.2,
        ),
        recorder,
        open_reader=None,
        metrics=Metrics(CollectorRegistry()),
    )
    stop_event = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop_event,), daemon=True)
    thread.start()
    return consumer, recorder, stop_event, thread


def test_user_ip_needs_its_own_grant_and_streams_keep_working(
    secure_kafka: SecureKafka, topics_ready: str
) -> None:
    prefix = topics_ready
    grant(
        secure_kafka,
        prefix,
        "bridge=User:bridge",
        "consumer/sec=User:consumer",
        "user-ip-reader/ipreader=User:ipreader",
    )
    user_ip_line = (
        f'USER_IP @bob:test ["{FAKE_TOKEN}","10.0.0.1","ua/1","BOBDEV",1700000000000]'
    )
    published = synkafka(
        "publish", "--prefix", prefix, *secure_kafka.cli_args("bridge"),
        input_text=receipts_lines(range(2, 4)) + "\n" + user_ip_line + "\n",
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    user_ip = topics.user_ip_topic(prefix)

    # The stream consumer's principal may not read user_ip: one clear error.
    denied = Consumer(secure_kafka.settings("consumer"), f"{prefix}.sec")
    try:
        with pytest.raises(ConsumeError) as info:
            denied.partitions(user_ip)
    finally:
        denied.close()
    assert info.value.code == "TOPIC_AUTHORIZATION_FAILED"
    assert str(info.value) == f"not authorized to read topic {user_ip}"

    # ...while the same principal follows the stream topics.
    _consumer, recorder, stop_event, thread = _run_consumer(secure_kafka, prefix, "sec")
    try:
        wait_for(lambda: recorder.tokens("receipts") == [2, 3], 60, "receipts 2, 3")
    finally:
        stop_event.set()
        thread.join(30)
    assert not thread.is_alive()

    # The user-ip-reader principal reads the token (the one place it may appear).
    reader = Consumer(secure_kafka.settings("ipreader"), f"{prefix}.ipreader")
    try:
        partitions = reader.partitions(user_ip)
        reader.assign([PartitionStart(user_ip, p, BEGINNING) for p in partitions])
        records: list[KafkaRecord] = []
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            records = reader.poll_batch(10, 0.5)
    finally:
        reader.close()
    command = decode(records[0].value or b"")
    assert isinstance(command, UserIpCommand)
    assert command.access_token == FAKE_TOKEN


# -- 4. the bridge keeps access tokens inside the user_ip record value -----------------


def _recorded_lines() -> list[tuple[str, str]]:
    lines = []
    for path in sorted((ROOT / "tests/data/synapse_lines").glob("*.txt")):
        for raw in path.read_text().splitlines():
            channel, sep, line = raw.partition("\t")
            if sep and line.strip():
                lines.append((channel, line))
    return lines


def test_bridge_keeps_access_tokens_out_of_logs_metrics_and_dead_letters(
    secure_kafka: SecureKafka,
    topics_ready: str,
    redis_url: str,
    background: list[subprocess.Popen[str]],
) -> None:
    prefix = topics_ready
    grant(
        secure_kafka,
        prefix,
        "bridge=User:bridge",
        "user-ip-reader/ipreader=User:ipreader",
    )
    # The recorded traffic touches every stream: create all their topics.
    ensured = synkafka(
        "topics", "ensure", "--prefix", prefix, *secure_kafka.cli_args("topicadmin")
    )
    assert ensured.returncode == 0, ensured.stderr
    server_name = "synkafka.test"
    metrics_port = free_port()
    bridge = spawn(
        background,
        "bridge",
        "--redis", redis_url,
        "--server-name", server_name,
        "--prefix", prefix,
        "--metrics-port", str(metrics_port),
        "--log-level", "DEBUG",
        *secure_kafka.cli_args("bridge"),
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(
            lambda: client.pubsub_numsub(server_name)[0][1] > 0,
            30,
            "the bridge to subscribe",
        )
        injected = [
            (
                f"{server_name}/USER_IP",
                (
                    f'USER_IP @eve:synkafka.test ["{FAKE_TOKEN}","127.0.0.1",'
                    f'"ua/{n}","EVEDEV",{1795886251028 + n}]'
                ),
            )
            for n in range(3)
        ]
        # A malformed USER_IP line that still carries the token: it must not reach
        # the dead-letter topic or a log line unmasked.
        injected.append(
            (f"{server_name}/USER_IP", f'USER_IP @eve:synkafka.test ["{FAKE_TOKEN}"')
        )
        for channel, line in [*_recorded_lines(), *injected]:
            client.publish(channel, line)
    finally:
        client.close()

    user_ip = topics.user_ip_topic(prefix)
    reader = Consumer(secure_kafka.settings("ipreader"), f"{prefix}.ipreader")
    values: list[bytes] = []
    try:
        partitions = reader.partitions(user_ip)
        reader.assign([PartitionStart(user_ip, p, BEGINNING) for p in partitions])

        def tokens_arrived() -> bool:
            values.extend(r.value or b"" for r in reader.poll_batch(100, 0.2))
            return sum(FAKE_TOKEN.encode() in v for v in values) >= 3

        try:
            wait_for(tokens_arrived, 60, "the injected USER_IP records")
        except AssertionError:
            _, _, err = stop(bridge)
            pytest.fail(f"no USER_IP records; the bridge said:\n{err[-3000:]}")
    finally:
        reader.close()

    with urllib.request.urlopen(
        f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
    ) as response:
        metrics_text = response.read().decode()
    # The malformed line came after the good ones: its dead letter may still be on
    # its way when they are read.
    dlq: list[bytes] = [b""]

    def dead_lettered() -> bool:
        dlq[0] = _read_topic(secure_kafka, prefix, topics.dlq_topic(prefix))
        return bool(dlq[0])

    wait_for(dead_lettered, 30, "the malformed line's dead letter")
    dlq_bytes = dlq[0]
    code, out, err = stop(bridge)
    assert code == 0, err[-3000:]
    assert FAKE_TOKEN not in out + err, "token in the bridge's output"
    assert FAKE_TOKEN not in metrics_text, "token in /metrics"
    assert dlq_bytes, "the malformed USER_IP line should have been dead-lettered"
    assert FAKE_TOKEN.encode() not in dlq_bytes, "token in the dead-letter topic"
    assert secure_kafka.passwords["bridge"] not in out + err + metrics_text


def _read_topic(secure: SecureKafka, prefix: str, topic: str) -> bytes:
    """Every key, value and header byte of a topic, read as the admin."""
    reader = Consumer(secure.settings(ADMIN), f"{prefix}.admin-reader")
    blob = bytearray()
    try:
        partitions = reader.partitions(topic)
        heads = {p: reader.watermarks(topic, p)[1] for p in partitions}
        reader.assign([PartitionStart(topic, p, BEGINNING) for p in partitions])
        seen = 0
        deadline = time.monotonic() + 30
        while seen < sum(heads.values()) and time.monotonic() < deadline:
            for record in reader.poll_batch(500, 0.2):
                seen += 1
                blob += (record.key or b"") + (record.value or b"")
                for name, value in record.headers:
                    blob += name.encode() + (value or b"")
    finally:
        reader.close()
    return bytes(blob)
