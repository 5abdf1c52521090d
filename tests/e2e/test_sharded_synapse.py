"""A sharded Synapse through ``synkafka bridge`` and ``synkafka consume``, with faults.

The deployment is the one big homeservers run: ``main``, two event persisters
(``persister1``, ``persister2``), a ``/sync`` worker, PostgreSQL and Redis
(:class:`~adapter.localstack.synapse_sharded.ShardedSynapse`). ``synkafka bridge
--db`` and ``synkafka consume --db -o <file>`` run as the real commands, in child
processes. Four users in twelve rooms write messages, typing, receipts, read
markers, account data, room tags, to-device messages, presence and push rules,
while syncing on the ``/sync`` worker. During that traffic:

1. the bridge is SIGKILLed, then started again;
2. the consumer is SIGKILLed, then started again on the same output file;
3. Redis is restarted;
4. ``persister1`` is SIGKILLed, then started again.

Then, per stream with a database source: every row Synapse's tables hold between
the consumer's start and the end of the traffic is in the JSON lines, under the
writer that wrote it; both persisters wrote events, and each ``ev`` row names the
persister the ``events`` table says persisted it; every message Synapse accepted is
there; no (stream, writer, token, row) is in the file twice. The per-stream numbers
(database rows, delivered, missing, duplicated) are printed and written to
``numbers.txt`` in the test's tmp folder, and are part of every failure message.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from adapter.localstack import RedisServer
from adapter.localstack._process import ManagedProcess, free_port, log_tail
from adapter.localstack.matrix_client import RoomsTraffic
from adapter.localstack.synapse_sharded import EVENT_PERSISTERS, ShardedSynapse
from adapter.rows import STREAM_NAMES, row_to_wire
from adapter.runtime.backfill import DatabaseReader
from tests.integration.harness import wait_for

# Bounded traffic: the whole test stays within about four minutes on two busy cores.
_STEPS = 480
# Steps after which each fault starts; the traffic keeps going during each one.
_KILL_BRIDGE_AT = 50
_KILL_CONSUMER_AT = 140
_RESTART_REDIS_AT = 230
_KILL_PERSISTER_AT = 320
# Steps the traffic makes while the killed bridge or consumer stays down.
_DOWN_FOR = 15
_KILLED_PERSISTER = EVENT_PERSISTERS[0]
_START_TIMEOUT_S = 60.0
_DRAIN_TIMEOUT_S = 90.0

Key = tuple[str, str, int]  # stream, writer, token


def _canonical(row: Any) -> str:
    """A wire row in a form that compares equal across JSON round trips."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class SynkafkaChild:
    """One ``synkafka`` command as a child process, restartable, log appended.

    Runs under :class:`ManagedProcess`, so it dies with the test run even on SIGKILL.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.metrics_port = free_port()
        self._argv = [
            sys.executable,
            "-m",
            "adapter",
            *argv,
            "--metrics-port",
            str(self.metrics_port),
        ]
        self.log_path = log_path
        self.process: ManagedProcess | None = None
        self.exit_codes: list[int] = []

    def start(self) -> None:
        self.process = ManagedProcess(
            self._argv, log_path=self.log_path, name=f"synkafka {self.name}"
        )

    def alive(self) -> None:
        """Fail the test at once, with the log's tail, if the child exited."""
        process = self.process
        assert process is not None
        code = process.returncode
        assert code is None, (
            f"synkafka {self.name} exited with {code}:\n{log_tail(self.log_path)}"
        )

    def ready(self) -> bool:
        """``/ready`` answers 200 (and the child still runs)."""
        self.alive()
        return _http_ok(f"http://127.0.0.1:{self.metrics_port}/ready")

    def wait_ready(self, timeout_s: float = _START_TIMEOUT_S) -> float:
        started = time.monotonic()
        wait_for(self.ready, timeout_s, f"synkafka {self.name} /ready")
        return time.monotonic() - started

    def samples(self, name: str, **labels: str) -> dict[str, float]:
        """``name``'s non-zero samples on ``/metrics`` that carry ``labels``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        found: dict[str, float] = {}
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample.partition("{")[0] != name or float(value or 0) == 0:
                continue
            if all(w in sample for w in wanted):
                found[sample] = float(value)
        return found

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples on ``/metrics`` that carry ``labels``."""
        return sum(self.samples(name, **labels).values())

    def kill(self) -> None:
        assert self.process is not None
        self.exit_codes.append(self.process.kill())
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.exit_codes.append(self.process.stop(30))
            self.process = None


class TrafficThread:
    """Runs ``RoomsTraffic.step(0..steps-1)`` in the background; faults wait on it."""

    def __init__(self, traffic: RoomsTraffic, steps: int) -> None:
        self.traffic = traffic
        self.steps = steps
        self.done = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        try:
            for n in range(self.steps):
                self.traffic.step(n)
                self.done = n + 1
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test thread
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def reached(self, step: int) -> bool:
        if self.error is not None:
            raise AssertionError(f"the traffic failed: {self.error!r}")
        return self.done >= step

    def wait(self, step: int, timeout_s: float = 120.0) -> None:
        wait_for(lambda: self.reached(step), timeout_s, f"traffic step {step}")

    def join(self, timeout_s: float = 120.0) -> None:
        self.wait(self.steps, timeout_s)
        self._thread.join(timeout_s)


@dataclass
class Deliveries:
    """The consumer's JSON lines, read as the file grows (complete lines only)."""

    path: Path
    offset: int = 0
    # (stream, writer, token, row) -> how often the file holds it.
    copies: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    rows_per_stream: Counter[str] = field(default_factory=Counter)
    backfill_rows: Counter[str] = field(default_factory=Counter)
    bad_lines: list[str] = field(default_factory=list)

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for raw in complete.splitlines():
            try:
                update = json.loads(raw)
            except ValueError:
                # A half-written line a SIGKILL left, continued by the next run.
                self.bad_lines.append(raw.decode("utf-8", "replace")[:200])
                continue
            stream, writer, token = update["stream"], update["writer"], update["token"]
            for row in update["rows"]:
                self.copies[(stream, writer, token, _canonical(row))] += 1
                self.rows_per_stream[stream] += 1
                if update["source"] == "backfill":
                    self.backfill_rows[stream] += 1

    def missing(self, expected: dict[Key, set[str]]) -> dict[str, int]:
        """Per stream: how many expected rows the file does not hold yet."""
        out: Counter[str] = Counter()
        for (stream, writer, token), rows in expected.items():
            for row in rows:
                if (stream, writer, token, row) not in self.copies:
                    out[stream] += 1
        return dict(out)


def _positions(dsn: str) -> dict[tuple[str, str], int]:
    """Every writer's persisted token of every stream with a database source."""
    reader = DatabaseReader(dsn)
    try:
        return {
            (stream, writer): token
            for stream in STREAM_NAMES
            if reader.has_source(stream)
            for writer, token in reader.positions(stream).items()
        }
    finally:
        reader.close()


def _database_rows(
    dsn: str, start: dict[tuple[str, str], int], end: dict[tuple[str, str], int]
) -> dict[Key, set[str]]:
    """The rows Synapse's tables hold in ``(start, end]`` per stream and writer."""
    expected: dict[Key, set[str]] = {}
    reader = DatabaseReader(dsn)
    try:
        for (stream, writer), position in sorted(end.items()):
            first = start.get((stream, writer), 0)
            for token, typed in reader.read(stream, writer, first, position):
                expected[(stream, writer, token)] = {
                    _canonical(row_to_wire(row)) for row in typed
                }
    finally:
        reader.close()
    return expected


def _event_writers(dsn: str, event_ids: set[str]) -> dict[str, str]:
    """``event_id -> instance_name`` from the ``events`` table itself."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_id, instance_name FROM events WHERE event_id = ANY(%s)",
            (sorted(event_ids),),
        ).fetchall()
    return {str(event_id): str(writer) for event_id, writer in rows}


def _numbers(expected: dict[Key, set[str]], deliveries: Deliveries) -> str:
    """The per-stream table: database rows, delivered, missing, duplicated."""
    db_rows: Counter[str] = Counter()
    for (stream, _writer, _token), rows in expected.items():
        db_rows[stream] += len(rows)
    missing = deliveries.missing(expected)
    duplicated: Counter[str] = Counter()
    for (stream, _w, _t, _r), copies in deliveries.copies.items():
        duplicated[stream] += copies - 1
    streams = sorted(set(db_rows) | set(deliveries.rows_per_stream))
    header = (
        f"{'stream':<14}{'db rows':>9}{'delivered':>11}{'backfill':>10}"
        f"{'missing':>9}{'duplicated':>12}"
    )
    lines = [header]
    for stream in streams:
        lines.append(
            f"{stream:<14}{db_rows[stream]:>9}{deliveries.rows_per_stream[stream]:>11}"
            f"{deliveries.backfill_rows[stream]:>10}{missing.get(stream, 0):>9}"
            f"{duplicated[stream]:>12}"
        )
    # The events split per persister: both must have written, each under its name.
    db_events: Counter[str] = Counter()
    for (stream, writer, _token), rows in expected.items():
        if stream == "events":
            db_events[writer] += len(rows)
    file_events: Counter[str] = Counter()
    for (stream, writer, _t, _r), copies in deliveries.copies.items():
        if stream == "events":
            file_events[writer] += copies
    for writer in sorted(set(db_events) | set(file_events)):
        lines.append(
            f"  {writer:<12}{db_events[writer]:>9}{file_events[writer]:>11}"
            "   (events per writer)"
        )
    return "\n".join(lines)


def test_sharded_synapse_loses_no_row_through_faults(
    synapse_sharded: ShardedSynapse,
    redis_server: RedisServer,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    hs = synapse_sharded
    dsn = hs.database_dsn
    assert dsn is not None
    timeline: list[str] = []

    def note(what: str) -> None:
        line = f"[{time.monotonic() - started:6.1f} s] {what}"
        timeline.append(line)
        print(line)  # pytest shows it with a failure

    note(
        f"synapse ready (main {hs.ready_s:.1f} s, workers "
        f"{max(hs.worker_ready_times.values()):.1f} s)"
    )
    kafka_args = [
        "--bootstrap-servers",
        kafka_bootstrap,
        "--server-name",
        hs.server_name,
    ]
    ensure = ManagedProcess(
        [sys.executable, "-m", "adapter", "topics", "ensure", *kafka_args],
        log_path=tmp_path / "topics.log",
        name="synkafka topics ensure",
    )
    wait_for(lambda: ensure.returncode is not None, 60, "synkafka topics ensure")
    assert ensure.returncode == 0, log_tail(tmp_path / "topics.log")

    bridge = SynkafkaChild(
        "bridge",
        ["bridge", "--redis", redis_server.url, "--db", dsn, *kafka_args],
        tmp_path / "bridge.log",
    )
    output = tmp_path / "consumer.jsonl"
    consumer = SynkafkaChild(
        "consume",
        [
            "consume",
            "--db",
            dsn,
            "--output",
            str(output),
            "--instance-name",
            "sharded",
            "--no-progress",
            *kafka_args,
        ],
        tmp_path / "consumer.log",
    )
    traffic = RoomsTraffic(
        hs.client_url, hs.worker_client_url, hs.registration_shared_secret
    )
    deliveries = Deliveries(output)
    try:
        bridge.start()
        bridge.wait_ready()
        consumer.start()
        consumer.wait_ready()
        # The consumer's first start takes the database positions as its start: from
        # here on every row must reach the file.
        start = _positions(dsn)
        note("bridge and consumer ready")
        traffic.set_up()
        note(f"{len(traffic.users)} users in {len(traffic.room_ids)} rooms, syncing")
        run = TrafficThread(traffic, _STEPS)
        run.start()

        run.wait(_KILL_BRIDGE_AT)
        bridge.kill()
        note("bridge SIGKILLed")
        run.wait(_KILL_BRIDGE_AT + _DOWN_FOR)
        bridge.start()
        note(f"bridge started again, ready after {bridge.wait_ready():.1f} s")

        run.wait(_KILL_CONSUMER_AT)
        consumer.kill()
        note("consumer SIGKILLed")
        run.wait(_KILL_CONSUMER_AT + _DOWN_FOR)
        consumer.start()
        note(f"consumer started again, ready after {consumer.wait_ready():.1f} s")

        run.wait(_RESTART_REDIS_AT)
        subscribers = hs.subscriber_count()
        redis_server.restart()
        note("redis restarted")
        wait_for(
            lambda: hs.subscriber_count() >= subscribers,
            60,
            f"{subscribers} subscribers (Synapse's processes and the bridge) back",
        )
        note("every Synapse process and the bridge subscribed again")

        run.wait(_KILL_PERSISTER_AT)
        before_kill = _positions(dsn)[("events", _KILLED_PERSISTER)]
        hs.kill_worker(_KILLED_PERSISTER)
        note(f"{_KILLED_PERSISTER} SIGKILLed at events token {before_kill}")
        # No waiting for traffic here: main holds a request for a room of the dead
        # persister and retries until it is back, so the traffic stalls meanwhile.
        hs.start_worker(_KILLED_PERSISTER)
        note(
            f"{_KILLED_PERSISTER} started again, ready after "
            f"{hs.worker_ready_times[_KILLED_PERSISTER]:.1f} s"
        )

        run.join()
        note(
            f"traffic done: {traffic.actions}; failed requests {traffic.failures}; "
            f"{traffic.syncs} syncs ({traffic.sync_errors} failed)"
        )
        # Syncing users make presence rows; stop them so the end positions hold still.
        traffic.close()
        end = _positions(dsn)
        expected = _database_rows(dsn, start, end)

        # Poll until nothing is missing; on timeout the assertions below say what
        # is, with the numbers.
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while True:
            bridge.alive()
            consumer.alive()
            deliveries.poll()
            if not deliveries.missing(expected) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        note("drained")
        redis_reconnects = bridge.metric("synkafka_reconnects_total", component="redis")
        note(
            f"bridge: {redis_reconnects:.0f} Redis reconnects, gaps repaired "
            f"{bridge.metric('synkafka_bridge_gaps_total', outcome='repaired'):.0f} "
            f"({bridge.metric('synkafka_bridge_gap_rows_total'):.0f} rows), "
            "unrepaired: "
            f"{bridge.samples('synkafka_bridge_gaps_total', outcome='unrepaired')}"
        )
        consumer.stop()
        bridge.stop()
    finally:
        traffic.close()
        consumer.stop()
        bridge.stop()
    deliveries.poll()

    numbers = _numbers(expected, deliveries)
    report = "\n".join([*timeline, numbers])
    (tmp_path / "numbers.txt").write_text(report + "\n")
    print(f"\n{report}\ntotal {time.monotonic() - started:.1f} s")

    assert not deliveries.bad_lines, (
        f"unreadable lines {deliveries.bad_lines}\n{report}"
    )
    assert deliveries.missing(expected) == {}, f"rows lost\n{report}"

    # Both persisters wrote events, and the file names the one that did.
    ev_writers: dict[str, set[str]] = {}
    for stream, writer, _token, row in deliveries.copies:
        wire = json.loads(row)
        if stream == "events" and wire[0] == "ev":
            ev_writers.setdefault(wire[1][0], set()).add(writer)
    per_writer = Counter(w for writers in ev_writers.values() for w in writers)
    assert set(per_writer) == set(EVENT_PERSISTERS), f"{per_writer}\n{report}"
    assert min(per_writer.values()) >= 10, f"{per_writer}\n{report}"
    in_table = _event_writers(dsn, set(ev_writers))
    wrong = {
        event_id: (sorted(writers), in_table.get(event_id))
        for event_id, writers in ev_writers.items()
        if writers != {in_table.get(event_id)}
    }
    assert not wrong, f"events under the wrong writer: {list(wrong.items())[:5]}"
    # Every message Synapse acknowledged reached the file.
    unseen = set(traffic.event_ids) - set(ev_writers)
    assert not unseen, f"{len(unseen)} acknowledged messages missing\n{report}"
    # The killed persister came back and went on writing after its old position.
    after_kill = [
        token
        for (stream, writer, token, _row) in deliveries.copies
        if stream == "events" and writer == _KILLED_PERSISTER and token > before_kill
    ]
    assert after_kill, f"{_KILLED_PERSISTER} wrote nothing after its restart\n{report}"
    # The faults happened: the bridge saw Redis go away, users synced on sync1.
    assert redis_reconnects >= 1, report
    assert traffic.syncs > 0, report
    assert consumer.exit_codes[-1] == 0, log_tail(consumer.log_path)
    assert bridge.exit_codes[-1] == 0, log_tail(bridge.log_path)

    duplicated = {k: n for k, n in deliveries.copies.items() if n > 1}
    assert not duplicated, (
        f"{len(duplicated)} (stream, writer, token, row) in the file more than once, "
        f"e.g. {list(duplicated)[:3]}\n{report}"
    )
