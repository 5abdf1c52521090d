"""One server-name rule for every command, the missing-topic line, the stop line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.core.config import KafkaSettings
from adapter.devstack.writer import SynapseWriter
from adapter.io.kafka.producer import Producer
from adapter.runtime.publisher import Publisher
from tests.integration.harness import (
    ensure_topics,
    json_lines,
    make_database,
    open_db,
    publish_written,
    wait_for,
)


def _synkafka(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNKAFKA_")}
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("consume", "--metrics-port", "-1"),
        ("presence", "--json"),
        ("lag",),
        ("tail", "events"),
        ("bridge", "--redis", "redis://127.0.0.1:1", "--prefix", "p"),
    ],
    ids=lambda argv: argv[0],
)
def test_every_command_requires_the_server_name_the_same_way(
    argv: tuple[str, ...],
) -> None:
    done = _synkafka(*argv, "--bootstrap-servers", "127.0.0.1:1")
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        (
            "synkafka: error: --server-name is required (or SYNKAFKA_SERVER_NAME; "
            "commands that only read or write topics also accept --prefix instead)"
        )
    ]


def test_a_missing_topic_names_the_prefix_and_the_flags(kafka_bootstrap: str) -> None:
    done = _synkafka(
        "tail", "events", "--server-name", "nosuch.example", "-b", kafka_bootstrap
    )
    assert done.returncode != 0
    [line] = done.stderr.splitlines()
    assert "topic synapse.nosuch.example.stream.events does not exist" in line
    assert "'synapse.nosuch.example'" in line
    assert "--prefix" in line
    assert "--server-name" in line


def test_sigterm_logs_one_line_with_what_was_committed(
    pg_dsn: str, tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"it.{unique_name}"
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "adapter", "consume", "-b", kafka_bootstrap),
            *("--prefix", prefix, "--stream", "events", "-o", str(out)),
            *("--metrics-port", "-1", "--no-progress", "--instance-name", "t"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    publisher = Publisher(
        Producer(KafkaSettings(bootstrap_servers=kafka_bootstrap)), prefix
    )
    try:
        with open_db(dsn) as conn:
            master = SynapseWriter(conn, "master")

            # Publish until the consumer (assigned at the head) has handled a row.
            def handled() -> bool:
                publish_written(
                    publisher,
                    "events",
                    "master",
                    [master.send_event("!r:t", "m.room.message")],
                )
                publisher.flush()
                return bool(json_lines(out))

            wait_for(handled, 60, "a handled row")
        last = json_lines(out)[-1]["token"]
        wait_for(lambda: json_lines(out)[-1]["token"] >= last, 10, "the last row")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    token = json_lines(out)[-1]["token"]
    stopped = [x for x in err.splitlines() if "stopped; committed" in x]
    assert len(stopped) == 1, err
    assert "events [0]@" in stopped[0]
    assert f"(master={token})" in stopped[0], stopped[0]
