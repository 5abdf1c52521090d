"""Failures as a user meets them: configuration errors, an unreachable broker, floods.

Each command runs as a real process. Configuration errors must end it at once with
one line; an unreachable broker must end a one-shot command within its timeout with
one line naming the bootstrap servers; nothing prints librdkafka's raw log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter.cli.exit_codes import EXIT_CONFIG, EXIT_RUNTIME
from adapter.devstack.services import KafkaBroker, PostgresCluster, RedisServer
from adapter.devstack.services._process import free_port
from adapter.io.db.connection import connect
from adapter.io.db.synapse_schema import create_synapse_tables
from tests.integration.harness import wait_for


def run(
    *args: str, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``synkafka *args``; return the result and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SYNKAFKA_METRICS_PORT": "-1"},
        check=False,
    )
    return done, time.monotonic() - started


def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a failed command (asserting there is only one).

    ``code`` is the documented exit code: 2 for configuration, 1 for runtime failures.
    """
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("synkafka: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert done.returncode == code, done.stderr
    return lines[0]


BAD_CONFIGS = [
    (
        ["-X", "no.such.property=1"],
        'No such configuration property: "no.such.property"',
    ),
    (["-X", "fetch.max.bytes=notanumber"], '"fetch.max.bytes"'),
    (["-b", "notahost::::"], "'notahost::::' is not host:port"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_CONFIGS)
@pytest.mark.parametrize(
    "command",
    [
        ["consume", "--no-progress"],
        ["bridge", "--redis", "redis://127.0.0.1:1", "--server-name", "cfg.test"],
        ["topics", "ensure"],
        ["lag"],
    ],
    ids=["consume", "bridge", "topics-ensure", "lag"],
)
def test_configuration_errors_end_every_command_at_once_with_one_line(
    command: list[str], flags: list[str], message: str
) -> None:
    # Nothing listens there: a command that tried to connect would wait, not exit.
    dead = f"127.0.0.1:{free_port()}"
    args = [*command, "-b", dead, *flags]
    done, took = run(*args)
    line = one_error_line(done, EXIT_CONFIG)
    assert message in line
    # Startup (imports) is most of it; a retry loop would take 20 s or more.
    assert took < 15, f"{args} took {took:.1f} s"


@pytest.mark.parametrize(
    ("command", "timeout_flag"),
    [
        (["lag"], []),  # the default timeout
        (["topics", "describe"], ["--timeout", "2"]),
        (["tail", "events"], ["--timeout", "2"]),
        (["presence"], ["--timeout", "2"]),
        (["publish", "/dev/null"], ["--timeout", "2"]),
        (
            [
                "lag",
                "--security-protocol",
                "SASL_PLAINTEXT",
                "--sasl-mechanism",
                "PLAIN",
                "--kafka-username",
                "u",
                "--kafka-password",
                "sekret-pw",
            ],
            ["--timeout", "2"],
        ),
    ],
    ids=["lag", "topics-describe", "tail", "presence", "publish", "lag-sasl"],
)
def test_one_shot_commands_give_up_on_an_unreachable_broker_with_one_line(
    command: list[str], timeout_flag: list[str]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    # Commands need a server name or a prefix before they go near the broker.
    done, took = run(*command, "-b", dead, "--prefix", "fail.p", *timeout_flag)
    line = one_error_line(done, EXIT_RUNTIME)
    assert f"cannot reach Kafka at {dead}" in line
    assert "sekret-pw" not in done.stderr
    limit = 15 if not timeout_flag else 2 + 8  # start-up of a loaded machine
    assert took < limit, f"{command} took {took:.1f} s: {line}"


def _status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture(scope="module")
def own_broker() -> Iterator[KafkaBroker]:
    """A broker of this module's own, which the tests stop and restart."""
    broker = KafkaBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def _start(args: list[str], stderr_path: Path) -> subprocess.Popen[bytes]:
    with stderr_path.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "adapter", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_consume_with_the_broker_down_logs_little_and_health_follows_the_broker(
    own_broker: KafkaBroker, tmp_path: Path
) -> None:
    boot = own_broker.bootstrap_servers
    prefix = ["--prefix", "flood.test"]
    ensured, _ = run("topics", "ensure", "-b", boot, *prefix, "--stream", "typing")
    assert ensured.returncode == 0, ensured.stderr
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    err = tmp_path / "consume.err"
    proc = _start(
        [
            "consume",
            "-b",
            boot,
            *prefix,
            "--stream",
            "typing",
            "--no-progress",
            "--metrics-port",
            str(port),
            "--from",
            "latest",
        ],
        err,
    )
    try:
        wait_for(lambda: _status(health)[0] == 200, 60, "/health 200")
        own_broker.stop()
        stopped_at = len(err.read_bytes().splitlines())
        wait_for(lambda: _status(health)[0] == 503, 30, "/health 503 without Kafka")
        assert "broker unreachable" in _status(health)[1]
        # Before deduplication: about 40 lines a second, half of them raw.
        lines = err.read_bytes().splitlines()[stopped_at:]
        assert not any(line.startswith(b"%") for line in lines), lines
        assert len(lines) <= 12, b"\n".join(lines).decode()
        own_broker.start()
        wait_for(lambda: _status(health)[0] == 200, 90, "/health 200 after restart")
    finally:
        _stop(proc)
        if not own_broker.running():
            own_broker.start()


def test_bridge_health_follows_kafka_and_redis(
    own_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    boot = own_broker.bootstrap_servers
    ensured, _ = run("topics", "ensure", "-b", boot, "--server-name", "health.test")
    assert ensured.returncode == 0, ensured.stderr
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    ready = f"http://127.0.0.1:{port}/ready"
    proc = _start(
        [
            "bridge",
            "-b",
            boot,
            "--redis",
            redis_server.url,
            "--server-name",
            "health.test",
            "--metrics-port",
            str(port),
        ],
        tmp_path / "bridge.err",
    )
    try:
        wait_for(lambda: _status(health)[0] == 200, 60, "/health 200")
        own_broker.stop()
        wait_for(lambda: _status(health)[0] == 503, 30, "/health 503 without Kafka")
        assert "broker unreachable" in _status(health)[1]
        assert _status(ready)[0] == 503
        own_broker.start()
        wait_for(lambda: _status(health)[0] == 200, 90, "/health 200 with Kafka back")
        redis_server.stop()
        wait_for(lambda: _status(health)[0] == 503, 30, "/health 503 without Redis")
        assert "redis unreachable" in _status(health)[1]
        redis_server.start()
        wait_for(lambda: _status(health)[0] == 200, 60, "/health 200 with Redis back")
        assert _status(ready)[0] == 200
    finally:
        _stop(proc)
        if not redis_server.running():
            redis_server.start()


def test_consumer_health_follows_the_database_between_backfills(
    kafka_bootstrap: str, postgres: PostgresCluster, pg_dsn: str, tmp_path: Path
) -> None:
    # A database Synapse made (the consumer refuses to create one), then stopped.
    with connect(pg_dsn) as conn:
        create_synapse_tables(conn)
    prefix = ["--prefix", f"dbhealth.{free_port()}"]
    ensured, _ = run("topics", "ensure", "-b", kafka_bootstrap, *prefix)
    assert ensured.returncode == 0, ensured.stderr
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    proc = _start(
        ["consume", "-b", kafka_bootstrap, *prefix, "--db", pg_dsn, "--stream", "events",
         "--metrics-port", str(port), "--no-progress", "-o", str(tmp_path / "o.jsonl")],
        tmp_path / "consume.err",
    )  # fmt: skip
    try:
        wait_for(lambda: _status(health)[0] == 200, 60, "/health 200")
        postgres.stop()
        # The probe asks every 10 s; nothing else uses the database now.
        wait_for(lambda: _status(health)[0] == 503, 30, "/health 503 without the DB")
        assert "database unreachable" in _status(health)[1]
        postgres.start()
        wait_for(lambda: _status(health)[0] == 200, 30, "/health 200 with the DB back")
    finally:
        _stop(proc)
        if not postgres.running():
            postgres.start()


def test_bridge_logs_a_redis_outage_once_then_a_reminder_and_the_recovery_once(
    kafka_bootstrap: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    server = "redisflood.test"
    ensured, _ = run("topics", "ensure", "-b", kafka_bootstrap, "--server-name", server)
    assert ensured.returncode == 0, ensured.stderr
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    err = tmp_path / "bridge.err"
    proc = _start(
        ["bridge", "-b", kafka_bootstrap, "--redis", redis_server.url,
         "--server-name", server, "--metrics-port", str(port)],
        err,
    )  # fmt: skip

    def redis_lines() -> list[str]:
        lines = err.read_text("utf-8", "replace").splitlines()[stopped_at:]
        return [line for line in lines if "Redis" in line]

    try:
        wait_for(lambda: _status(health)[0] == 200, 60, "/health 200")
        stopped_at = len(err.read_bytes().splitlines())
        redis_server.stop()
        down_at = time.monotonic()
        # The reminder comes 30 s after the first line; before the fix, the
        # subscriber had logged about 7 warnings by then (one per reconnect).
        wait_for(
            lambda: any("similar lines suppressed" in line for line in redis_lines()),
            60,
            "a reminder while Redis is down",
        )
        assert time.monotonic() - down_at >= 29
        outage = redis_lines()
        assert len(outage) == 2, "\n".join(outage)
        assert "suppressed" not in outage[0]
        suppressed = int(outage[1].split("; ")[-1].split()[0])
        assert suppressed >= 3, outage[1]
        redis_server.start()
        wait_for(
            lambda: any("Redis is back" in line for line in redis_lines()),
            60,
            "the recovery line",
        )
        wait_for(lambda: _status(health)[0] == 200, 30, "/health 200 with Redis back")
        lines = redis_lines()
        assert len(lines) == 3, "\n".join(lines)
        assert "failed attempts" in lines[2]
    finally:
        _stop(proc)
        if not redis_server.running():
            redis_server.start()


def test_presence_track_stops_within_seconds_when_the_broker_is_unreachable(
    tmp_path: Path,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    err = tmp_path / "track.err"
    proc = _start(
        ["presence", "track", "--user", "@a:x", "-b", dead, "--prefix", "dead.p"], err
    )
    try:
        # Running: the producer has found the broker down (the first snapshot waits).
        wait_for(lambda: b"brokers are down" in err.read_bytes(), 30, "broker down")
        stopped = time.monotonic()
        proc.terminate()
        proc.wait(20)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stderr = err.read_text("utf-8", "replace")
    # Before: 30.7 s (the first snapshot's 30 s wait, then 5 s for the clear).
    assert took < 12, f"took {took:.1f} s\n{stderr}"  # 5 s for the clear, then exit
    assert proc.returncode == EXIT_RUNTIME, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("synkafka: ")]
    assert len(errors) == 1, stderr
    assert "clear of presence instance" in errors[0], errors[0]
    assert "not delivered" in errors[0], errors[0]
    # The time it gives is the time it waited, no more than the whole stop took.
    waited = float(errors[0].split(" within ")[1].split(" s")[0])
    assert 0 < waited <= took, errors[0]
