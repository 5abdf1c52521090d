"""``synkafka consume -o FILE``: exactly-once across SIGKILLs, one line on failures.

The consumer runs as a subprocess against the real broker and PostgreSQL, is killed
with SIGKILL under load several times and restarted on the same output file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.positions import decode_commit_metadata
from adapter.devstack.writer import SynapseWriter
from adapter.io.kafka.admin import Admin
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

KILLS = 3


@pytest.fixture
def prefix(unique_name: str) -> str:
    return f"it.{unique_name}"


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:  # not listening yet, or 503 while catching up
        return False


def _consume(
    bootstrap: str, prefix: str, name: str, *args: str, stderr: Any = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adapter",
            "consume",
            "--bootstrap-servers",
            bootstrap,
            "--prefix",
            prefix,
            "--instance-name",
            name,
            "--stream",
            "events",
            "--no-progress",
            "--commit-interval",
            "0.2",
            *args,
        ],
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


class _Load:
    """Writes and publishes events in a thread until stopped, as Synapse would."""

    def __init__(self, dsn: str, bootstrap: str, prefix: str) -> None:
        self.written: list[int] = []
        self._dsn = dsn
        self._publisher = Publisher(
            Producer(KafkaSettings(bootstrap_servers=bootstrap)), prefix
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with open_db(self._dsn) as conn:
                master = SynapseWriter(conn, "master")
                while not self._stop.is_set():
                    batch = [
                        master.send_event("!r:test", "m.room.message")
                        for _ in range(10)
                    ]
                    publish_written(self._publisher, "events", "master", batch)
                    self._publisher.flush()
                    self.written += [t for t, _ in batch]
                    self._stop.wait(0.02)
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            self.error = exc

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"the load failed: {self.error!r}"


@pytest.mark.parametrize("catch_up", ["database", "kafka"])
def test_output_file_holds_every_update_once_after_repeated_sigkills(
    catch_up: str, pg_dsn: str, tmp_path: Path, kafka_bootstrap: str, prefix: str
) -> None:
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    out = tmp_path / "out.jsonl"
    port = _free_port()
    args = ["--db", dsn, "-o", str(out), "--metrics-port", str(port)]
    args += ["--catch-up", catch_up]
    admin = Admin(KafkaSettings(bootstrap_servers=kafka_bootstrap))

    def committed() -> bool:
        offsets = admin.group_offsets(topics.consumer_group(prefix, "killed"))
        meta = offsets.get((topics.stream_topic(prefix, "events"), 0), (None, None))[1]
        return ("events", "master") in decode_commit_metadata(meta or "")

    proc = _consume(kafka_bootstrap, prefix, "killed", *args)
    wait_for(lambda: _ready(port), 60, "the consumer ready")
    kills = 0
    with _Load(dsn, kafka_bootstrap, prefix) as load:
        try:
            while True:
                # Under load, after a commit of master's rows, with rows written since.
                target = len(json_lines(out)) + 150
                wait_for(
                    lambda n=target: len(json_lines(out)) >= n,  # type: ignore[misc]
                    60,
                    "rows",
                )
                wait_for(committed, 30, "a commit of master's rows")
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
                if kills == KILLS:
                    break
                proc = _consume(kafka_bootstrap, prefix, "killed", *args)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        load.stop()
        written = list(load.written)
    proc = _consume(kafka_bootstrap, prefix, "killed", *args)
    try:
        # Ready first: the last row may be in the file already, and a SIGTERM before
        # the interpreter has its handlers ends it with -15, not 0.
        wait_for(lambda: _ready(port), 60, "the consumer ready")
        wait_for(
            lambda: any(x["token"] == written[-1] for x in json_lines(out)),
            90,
            "the last row",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    lines = json_lines(out)
    assert out.read_bytes().endswith(b"\n"), "no cut line is left"
    tokens = Counter((x["stream"], x["writer"], x["token"]) for x in lines)
    duplicated = {k: n for k, n in tokens.items() if n > 1}
    missing = set(written) - {t for (_, _, t) in tokens}
    print(
        f"catch-up {catch_up}: {KILLS} kills, written {len(written)}, "
        f"delivered {len(tokens)}, duplicated {len(duplicated)}, missing {len(missing)}"
    )
    assert not duplicated, f"each (stream, writer, token) once: {duplicated}"
    assert not missing, "no row lost"
    assert {t for (_, _, t) in tokens} == set(written)


def test_a_full_output_stops_the_consumer_with_one_line_and_no_commit_past_it(
    pg_dsn: str, tmp_path: Path, kafka_bootstrap: str, prefix: str
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    dsn = make_database("postgresql", pg_dsn, tmp_path)
    ensure_topics(kafka_bootstrap, prefix, ["events"])
    port = _free_port()
    publisher = Publisher(
        Producer(KafkaSettings(bootstrap_servers=kafka_bootstrap)), prefix
    )
    proc = _consume(
        kafka_bootstrap,
        prefix,
        "full",
        "-o",
        "/dev/full",
        "--metrics-port",
        str(port),
        "--log-level",
        "WARNING",
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _ready(port), 60, "the consumer ready")
        admin = Admin(KafkaSettings(bootstrap_servers=kafka_bootstrap))
        group = topics.consumer_group(prefix, "full")
        tp = (topics.stream_topic(prefix, "events"), 0)
        head = admin.group_offsets(group).get(tp, (None, None))[0]
        with open_db(dsn) as conn:
            event = SynapseWriter(conn, "master").send_event("!r:t", "m.room.message")
        publish_written(publisher, "events", "master", [event])
        publisher.flush()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode != 0
    lines = err.decode().strip().splitlines()
    assert lines == [
        "synkafka: error: cannot write to /dev/full: No space left on device"
    ], lines
    offset = admin.group_offsets(group).get(tp, (None, None))[0]
    assert offset == head, "nothing committed past the unwritten record"


def test_bad_output_paths_give_one_line_each(
    tmp_path: Path, kafka_bootstrap: str, prefix: str
) -> None:
    for path, problem in [
        (tmp_path / "missing" / "x.jsonl", "No such file or directory"),
        (tmp_path, "Is a directory"),
    ]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "adapter",
                "consume",
                "--bootstrap-servers",
                kafka_bootstrap,
                "--prefix",
                prefix,
                "-o",
                str(path),
                "--metrics-port",
                "-1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0
        assert done.stderr.splitlines() == [
            f"synkafka: error: cannot open output file {path}: {problem}"
        ]
