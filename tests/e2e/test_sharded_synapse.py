"""A sharded Synapse through ``synkafka bridge`` and two ``synkafka consume``, with faults.

The deployment is the one big homeservers run: ``main``, two event persisters
(``persister1``, ``persister2``), a ``/sync`` worker, PostgreSQL and Redis
(:class:`~adapter.devstack.services.synapse_sharded.ShardedSynapse`). ``synkafka bridge
--db`` and two consumers run as the real commands, in child processes: ``consume
--db --catch-up database -o consumer.jsonl`` (instance ``sharded``) and ``consume
--db --catch-up kafka -o audit.jsonl`` (instance ``audit``). Four users in twelve
rooms write messages, typing, receipts, read markers, account data, room tags,
to-device messages, presence and push rules, while syncing on the ``/sync``
worker; a fifth user, the *watcher*, only long-polls ``/sync`` there. During that
traffic:

1. the bridge is SIGKILLed, then started again;
2. Redis is restarted;
3. both consumers are SIGKILLed, then started again on the same output files;
4. ``persister1`` is SIGKILLed, then started again.

Then, per stream: every row Synapse's tables hold between the consumers' start and
the end of the traffic is in both files, under the writer that wrote it; both
persisters wrote events, and each ``ev`` row names the persister the ``events``
table says persisted it; every message Synapse accepted is there; every (stream,
writer, token, row) the stream topics hold from the consumers' start to the end
of the traffic is in the ``--catch-up kafka`` file; no file holds a (stream,
writer, token, row) twice.

Presence (docs/presence.md, "A bridged Synapse"): the bridge runs with
``--presence-sync-window 90``, a shortened stand-in for Synapse's 5 minutes, so a
run of a few minutes shows what a 12-minute run would. A reader of the presence
topic with a 30 s expiry must list the watcher, under ``sync1``'s one instance ID,
without a gap from its first sync until 60 s past that window, counted from the
last ``USER_SYNC`` the bridge saw (from then on only Synapse's presence-stream rows
keep the instance alive). Then ``sync1`` is SIGKILLed, and the test measures when
(a) the watcher leaves the reader's view, (b) Synapse's own ``GET
/presence/{user}/status`` stops saying ``online`` and (c) an ``offline`` row for
the watcher reaches the ``presence`` stream topic; (a) must come no later than (b)
and (c), and the bridge must have tombstoned ``sync1``'s instance ID (nothing else
writes the presence topic in a bridged deployment).

The per-stream numbers of both consumers (database rows, Kafka updates, delivered,
missing, duplicated) and the presence times are printed and written to
``numbers.txt`` in the test's tmp folder, and are part of every failure message.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.commands import RdataCommand
from adapter.core.config import KafkaSettings
from adapter.core.errors import DecodeError
from adapter.core.presence import PresenceChange
from adapter.core.rows import STREAM_NAMES, PresenceRow, row_to_wire
from adapter.devstack.services import RedisServer
from adapter.devstack.services._process import ManagedProcess, free_port, log_tail
from adapter.devstack.services.matrix_client import (
    MatrixClient,
    MatrixError,
    RoomsTraffic,
    SyncLoop,
)
from adapter.devstack.services.synapse_sharded import (
    EVENT_PERSISTERS,
    SYNC_WORKER,
    ShardedSynapse,
)
from adapter.io.kafka.consumer import Consumer, PartitionStart
from adapter.io.kafka.records import KafkaRecord
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.presence_follower import PresenceFollower
from tests.integration.harness import wait_for

# Bounded traffic: the data part stays within about a minute and a half on two busy
# cores; the presence part then waits for Synapse's own timers.
_STEPS = 480
# Steps after which each fault starts; the traffic keeps going during each one.
# The bridge goes first and Redis second: a restarted bridge gives every instance
# it reads back a fresh sync window, and the Redis restart makes sync1 announce its
# users again (the run's last USER_SYNC). In this order the presence wait starts
# at that last USER_SYNC, the moment from which Synapse's writer counts too.
_KILL_BRIDGE_AT = 50
_RESTART_REDIS_AT = 140
_KILL_CONSUMERS_AT = 230
_KILL_PERSISTER_AT = 320
# Steps the traffic makes while the killed bridge or consumers stay down.
_DOWN_FOR = 15
_KILLED_PERSISTER = EVENT_PERSISTERS[0]
_START_TIMEOUT_S = 60.0
_DRAIN_TIMEOUT_S = 90.0

# The bridge's --presence-sync-window: a shortened stand-in for Synapse's 300 s.
_SYNC_WINDOW_S = 90.0
# How long past that window the watcher must stay listed before sync1 is killed:
# by then only presence-stream rows (about one a minute) have kept it listed.
_PAST_WINDOW_S = 60.0
# The expiry of the test's reader of the presence topic (the bridge republishes
# every 10 s, so a live instance is never older than that).
_READER_EXPIRY_MS = 30_000
# Long-poll time of the watcher's /sync, a common client's.
_WATCHER_POLL_MS = 30_000
# Upper bound for the kill -> offline measurements: Synapse's writer counts a
# worker's syncs for 300 s after its last USER_SYNC (checked every 5 s), which is
# at most 300 - 150 s after the kill.
_AFTER_KILL_DEADLINE_S = 300.0

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

    def duplicated(self) -> Counter[str]:
        """Per stream: copies beyond the first of each (stream, writer, token, row)."""
        out: Counter[str] = Counter()
        for (stream, _w, _t, _r), copies in self.copies.items():
            out[stream] += copies - 1
        return out

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


def _topic_heads(bootstrap: str, names: list[str]) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of ``names``, as of now."""
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), "e2e-heads")
    try:
        return {
            (topic, partition): consumer.watermarks(topic, partition)[1]
            for topic in names
            for partition in consumer.partitions(topic)
        }
    finally:
        consumer.close()


def _read_range(
    bootstrap: str,
    start: dict[tuple[str, int], int],
    end: dict[tuple[str, int], int],
    timeout_s: float = 60.0,
) -> list[KafkaRecord]:
    """Every record at offsets ``[start, end)`` of each partition, in offset order."""
    wanted = {
        tp: (start.get(tp, 0), head)
        for tp, head in end.items()
        if head > start.get(tp, 0)
    }
    if not wanted:
        return []
    consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), "e2e-range")
    out: list[KafkaRecord] = []
    try:
        consumer.assign(
            [PartitionStart(t, p, first) for (t, p), (first, _) in wanted.items()]
        )
        done: set[tuple[str, int]] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(wanted):
            assert time.monotonic() < deadline, (
                f"reading {len(wanted)} partitions took over {timeout_s:.0f} s; "
                f"not done: {sorted(set(wanted) - done)}"
            )
            for record in consumer.poll_batch(1000, 0.2):
                tp = (record.topic, record.partition)
                if record.offset < wanted[tp][1]:
                    out.append(record)
                if record.offset + 1 >= wanted[tp][1]:
                    done.add(tp)
    finally:
        consumer.close()
    return sorted(out, key=lambda r: (r.topic, r.partition, r.offset))


def _kafka_updates(records: list[KafkaRecord]) -> dict[Key, set[str]]:
    """The (stream, writer, token) -> rows that stream-topic records hold.

    A token published twice (the bridge re-publishes from the database what it may
    not have acknowledged before a SIGKILL) counts once, with the union of its rows.
    """
    out: dict[Key, set[str]] = {}
    for record in records:
        if record.value is None:
            continue
        command = decode(record.value)
        if not isinstance(command, RdataCommand):
            continue  # POSITION: no rows
        assert command.token is not None, f"RDATA without a token at {record.where}"
        key = (command.stream_name, command.instance_name, command.token)
        out.setdefault(key, set()).update(
            _canonical(row_to_wire(row)) for row in command.rows
        )
    return out


def _rows_count(updates: dict[Key, set[str]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (stream, _writer, _token), rows in updates.items():
        out[stream] += len(rows)
    return out


class PresenceWatch:
    """What a reader of the presence topic sees of one user, as it happens.

    A read-only :class:`PresenceFollower` (it writes no tombstones: in a bridged
    deployment only the bridge writes the topic) with a 30 s expiry follows the
    topic in its own thread; its ``on_change`` stamps every start and stop of the
    watched user, so even a gap shorter than a sample shows. Another thread
    samples once a second which instances list the user, and notes when the
    bridge's count of ``USER_SYNC`` lines last grew (the bridge reads them from
    Redis; its ``/metrics`` lags by at most a second, which only makes the waits
    built on it longer).
    """

    def __init__(
        self, bootstrap: str, prefix: str, user_id: str, bridge: SynkafkaChild
    ) -> None:
        self.user_id = user_id
        self._bridge = bridge
        self.follower = PresenceFollower(
            Consumer(KafkaSettings(bootstrap_servers=bootstrap), "e2e-presence"),
            prefix,
            expiry_ms=_READER_EXPIRY_MS,
            on_change=self._on_change,
        )
        self._lock = threading.Lock()
        # (wall time, "started" | "stopped") of the watched user, in order.
        self.changes: list[tuple[float, str]] = []
        # Every instance ID a sample found listing the user.
        self.instance_ids: set[str] = set()
        # Wall times of samples (after the first listing) that found no instance.
        self.unlisted_samples: list[float] = []
        self.samples = 0
        self.user_sync_at: float | None = None
        """Wall time at which the bridge's ``USER_SYNC`` count last grew."""
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._sample_loop, name="presence-watch", daemon=True
        )

    def _on_change(self, change: PresenceChange) -> None:
        # Called by the follower's thread, under its lock.
        now = time.time()
        with self._lock:
            if self.user_id in change.started:
                self.changes.append((now, "started"))
            if self.user_id in change.stopped:
                self.changes.append((now, "stopped"))

    def start(self) -> None:
        self.follower.start()  # replays in this thread, then follows in its own
        self._thread.start()

    def listing(self) -> set[str]:
        """The instance IDs that list the watched user now."""
        return {
            instance_id
            for instance_id, snapshot in self.follower.state().items()
            if any(d.user_id == self.user_id for d in snapshot.syncing)
        }

    def _sample_loop(self) -> None:
        last_count = 0.0
        try:
            while not self._stop.wait(1.0):
                listed = self.listing()
                with self._lock:
                    self.samples += 1
                    if listed:
                        self.instance_ids |= listed
                    elif self.instance_ids:
                        self.unlisted_samples.append(time.time())
                try:
                    count = self._bridge.metric(
                        "synkafka_bridge_lines_total", command="USER_SYNC"
                    )
                except OSError:
                    continue  # the bridge is down (killed on purpose)
                # A restarted bridge counts from 0 again: only growth is a line.
                if count > last_count:
                    self.user_sync_at = time.time()
                last_count = count
        except BaseException as exc:  # noqa: BLE001 - re-raised by check()
            self.error = exc

    def check(self) -> None:
        """Fail at once if the follower or the sampler died."""
        for what, error in (
            ("presence follower", self.follower.failure),
            ("presence sampler", self.error),
        ):
            if error is not None:
                raise AssertionError(f"the {what} failed: {error!r}")

    def stops_after(self, since: float) -> list[float]:
        """Wall times at which the user left the view after ``since``."""
        with self._lock:
            return [at for at, kind in self.changes if kind == "stopped" and at > since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.follower.close()


class AfterKillTap:
    """Reads the ``presence`` stream topic and the presence topic from given offsets.

    Notes the Kafka timestamp (set by the bridge when it published) of the first
    ``offline`` row for ``user_id`` and of the first tombstone of ``instance_id``.
    """

    def __init__(
        self,
        bootstrap: str,
        heads: dict[tuple[str, int], int],
        stream_topic: str,
        presence_topic: str,
        user_id: str,
        instance_id: str,
    ) -> None:
        self._consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), "e2e-tap")
        self._consumer.assign([PartitionStart(t, p, o) for (t, p), o in heads.items()])
        self._stream_topic = stream_topic
        self._presence_topic = presence_topic
        self._user_id = user_id
        self._instance_key = topics.presence_key(instance_id).encode()
        self.offline_row_at: float | None = None
        self.tombstone_at: float | None = None
        self.rows: list[tuple[float, str, int]] = []
        """(Kafka time, state, last_user_sync_ts) of every row for the user."""

    def poll(self, timeout_s: float) -> None:
        for record in self._consumer.poll_batch(1000, timeout_s):
            at = record.timestamp_ms / 1000
            if record.topic == self._presence_topic:
                if record.key == self._instance_key and record.value is None:
                    self.tombstone_at = self.tombstone_at or at
                continue
            if record.topic != self._stream_topic or record.value is None:
                continue
            try:
                command = decode(record.value)
            except DecodeError:
                continue  # not ours to judge here; the consumers count those
            if not isinstance(command, RdataCommand):
                continue
            for row in command.rows:
                if isinstance(row, PresenceRow) and row.user_id == self._user_id:
                    self.rows.append((at, row.state, row.last_user_sync_ts))
                    if row.state == "offline" and self.offline_row_at is None:
                        self.offline_row_at = at

    def close(self) -> None:
        self._consumer.close()


def _synapse_presence(client: MatrixClient, user_id: str) -> str:
    """What Synapse's presence writer says of ``user_id`` (``error: ...`` on failure)."""
    try:
        answer = client.request(
            "GET",
            f"/_matrix/client/v3/presence/{urllib.parse.quote(user_id, safe='')}/status",
            timeout_s=5,
        )
    except (MatrixError, OSError) as exc:
        return f"error: {exc}"
    return str(answer.get("presence"))


def _user_presence_rows(
    bootstrap: str, prefix: str, user_id: str
) -> list[tuple[float, str, int]]:
    """(Kafka time, state, last_user_sync_ts) of every ``presence`` row for the user."""
    topic = topics.stream_topic(prefix, "presence")
    out: list[tuple[float, str, int]] = []
    for record in _read_range(bootstrap, {}, _topic_heads(bootstrap, [topic])):
        if record.value is None:
            continue
        command = decode(record.value)
        if isinstance(command, RdataCommand):
            out.extend(
                (record.timestamp_ms / 1000, row.state, row.last_user_sync_ts)
                for row in command.rows
                if isinstance(row, PresenceRow) and row.user_id == user_id
            )
    return out


def _numbers(
    expected: dict[Key, set[str]],
    on_kafka: dict[Key, set[str]],
    consumers: list[tuple[str, Deliveries]],
) -> str:
    """Per consumer and stream: database rows, Kafka updates, delivered, missing, duplicated.

    ``missing db`` counts database rows of ``(start, end]`` that are not in the
    file; ``missing kafka`` counts (stream, writer, token, row) the stream topics
    hold from the start to the end of the traffic that are not in the file.
    """
    db_rows = _rows_count(expected)
    kafka_rows = _rows_count(on_kafka)
    lines: list[str] = []
    for title, deliveries in consumers:
        missing_db = deliveries.missing(expected)
        missing_kafka = deliveries.missing(on_kafka)
        duplicated = deliveries.duplicated()
        streams = sorted(
            set(db_rows) | set(kafka_rows) | set(deliveries.rows_per_stream)
        )
        lines.append(title)
        lines.append(
            f"{'stream':<14}{'db rows':>9}{'kafka':>8}{'delivered':>11}{'backfill':>10}"
            f"{'missing db':>12}{'missing kafka':>15}{'duplicated':>12}"
        )
        for stream in streams:
            lines.append(
                f"{stream:<14}{db_rows[stream]:>9}{kafka_rows[stream]:>8}"
                f"{deliveries.rows_per_stream[stream]:>11}"
                f"{deliveries.backfill_rows[stream]:>10}"
                f"{missing_db.get(stream, 0):>12}{missing_kafka.get(stream, 0):>15}"
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
                f"  {writer:<12}{db_events[writer]:>9}{'':>8}{file_events[writer]:>11}"
                "   (events per writer)"
            )
    return "\n".join(lines)


# Synapse's writer keeps a killed worker's users online for 300 s after the worker's
# last USER_SYNC, and the test waits for that: about six minutes in all.
@pytest.mark.timeout(600)
def test_sharded_synapse_through_faults(
    synapse_sharded: ShardedSynapse,
    redis_server: RedisServer,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    wall_started = time.time()
    hs = synapse_sharded
    dsn = hs.database_dsn
    assert dsn is not None
    prefix = topics.default_prefix(hs.server_name)
    stream_topics = [topics.stream_topic(prefix, stream) for stream in STREAM_NAMES]
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
        [
            "bridge",
            "--redis",
            redis_server.url,
            "--db",
            dsn,
            "--presence-sync-window",
            str(_SYNC_WINDOW_S),
            *kafka_args,
        ],
        tmp_path / "bridge.log",
    )

    def consume(name: str, catch_up: str, output: Path) -> SynkafkaChild:
        return SynkafkaChild(
            name,
            [
                "consume",
                "--db",
                dsn,
                "--catch-up",
                catch_up,
                "--output",
                str(output),
                "--instance-name",
                name,
                "--no-progress",
                *kafka_args,
            ],
            tmp_path / f"{name}.log",
        )

    consumer = consume("sharded", "database", tmp_path / "consumer.jsonl")
    audit = consume("audit", "kafka", tmp_path / "audit.jsonl")
    consumers = (consumer, audit)
    deliveries = Deliveries(tmp_path / "consumer.jsonl")
    audited = Deliveries(tmp_path / "audit.jsonl")
    traffic = RoomsTraffic(
        hs.client_url, hs.worker_client_url, hs.registration_shared_secret
    )
    watch: PresenceWatch | None = None
    watcher_sync: SyncLoop | None = None
    tap: AfterKillTap | None = None
    expected: dict[Key, set[str]] = {}
    on_kafka: dict[Key, set[str]] = {}
    presence: list[str] = []
    times: dict[str, float | None] = {}

    def report() -> str:
        numbers = _numbers(
            expected,
            on_kafka,
            [
                ("--catch-up database (consumer.jsonl)", deliveries),
                ("--catch-up kafka (audit.jsonl)", audited),
            ],
        )
        return "\n".join([*timeline, numbers, *presence])

    def wait_steadily(
        until: Callable[[], bool],
        deadline_s: float,
        what: str,
        *,
        required: bool = True,
    ) -> bool:
        """Poll ``until`` every half second; fail on a dead child or a presence gap.

        Returns whether ``until`` came true; past the deadline it fails, unless not
        ``required`` (the caller's assertions then say what is missing).
        """
        deadline = time.monotonic() + deadline_s
        while not until():
            if time.monotonic() > deadline:
                assert not required, (
                    f"{what}: not within {deadline_s:.0f} s\n{report()}"
                )
                return False
            bridge.alive()
            if watch is not None:
                watch.check()
                gaps = watch.stops_after(0)
                assert not gaps, (
                    f"{watcher.user_id} left the reader's view at "
                    f"{[round(g - wall_started, 1) for g in gaps]} s\n{report()}"
                )
            time.sleep(0.5)
        return True

    try:
        bridge.start()
        bridge.wait_ready()
        bridge_up_at = time.time()
        for child in consumers:
            child.start()
        for child in consumers:
            child.wait_ready()
        # The consumers' first start is where every row and update must begin to
        # reach the files. Kafka's heads are read before the database positions, so
        # a database row past the positions reaches Kafka past the heads too.
        start_heads = _topic_heads(kafka_bootstrap, stream_topics)
        start = _positions(dsn)
        note("bridge and both consumers ready")

        # The watcher: one user who only long-polls /sync on sync1, without a break.
        watcher = MatrixClient(hs.client_url).register_with_shared_secret(
            "watcher", "pass-watcher", hs.registration_shared_secret
        )
        assert watcher.user_id is not None
        watch = PresenceWatch(kafka_bootstrap, prefix, watcher.user_id, bridge)
        watch.start()
        on_worker = watcher.on(hs.worker_client_url)
        watcher_sync = SyncLoop(on_worker, timeout_ms=_WATCHER_POLL_MS, keep_going=True)
        watcher_sync.next_batch = on_worker.sync(timeout_ms=0)["next_batch"]
        watcher_sync.start()
        wait_for(lambda: bool(watch.listing()), 30, "the watcher in the presence view")
        (instance_id,) = watch.listing()
        note(f"{watcher.user_id} listed under sync1's instance {instance_id}")

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
        # A restarted bridge gives every instance it read back a fresh sync window.
        bridge_up_at = time.time()

        run.wait(_RESTART_REDIS_AT)
        subscribers = hs.subscriber_count()
        redis_server.restart()
        note("redis restarted")
        wait_steadily(
            lambda: hs.subscriber_count() >= subscribers,
            60,
            f"{subscribers} subscribers (Synapse's processes and the bridge) back",
        )
        note("every Synapse process and the bridge subscribed again")

        run.wait(_KILL_CONSUMERS_AT)
        for child in consumers:
            child.kill()
        note("both consumers SIGKILLed")
        run.wait(_KILL_CONSUMERS_AT + _DOWN_FOR)
        for child in consumers:
            child.start()
        ready = [child.wait_ready() for child in consumers]
        note(f"both consumers started again, ready after {max(ready):.1f} s")

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
        syncs = traffic.syncs
        # The users keep syncing until sync1 is killed: a user who stops makes sync1
        # send USER_SYNC, which would restart the sync window below. Their presence
        # rows only add rows past `end`, which nothing here expects.
        end = _positions(dsn)
        expected = _database_rows(dsn, start, end)
        on_kafka = _kafka_updates(
            _read_range(
                kafka_bootstrap,
                start_heads,
                _topic_heads(kafka_bootstrap, stream_topics),
            )
        )

        # Poll until nothing is missing; on timeout the assertions below say what
        # is, with the numbers.
        def drained() -> bool:
            for child in consumers:
                child.alive()
            deliveries.poll()
            audited.poll()
            return not (
                deliveries.missing(expected)
                or audited.missing(expected)
                or audited.missing(on_kafka)
            )

        if wait_steadily(drained, _DRAIN_TIMEOUT_S, "drained", required=False):
            note("drained")
        else:
            note(f"not drained after {_DRAIN_TIMEOUT_S:.0f} s")
        # The bridge's counters start at its restart, which came before Redis's.
        redis_reconnects = bridge.metric("synkafka_reconnects_total", component="redis")
        note(
            f"bridge since its restart: {redis_reconnects:.0f} Redis reconnects, "
            "gaps repaired "
            f"{bridge.metric('synkafka_bridge_gaps_total', outcome='repaired'):.0f} "
            f"({bridge.metric('synkafka_bridge_gap_rows_total'):.0f} rows), "
            "unrepaired: "
            f"{bridge.samples('synkafka_bridge_gaps_total', outcome='unrepaired')}"
        )
        for child in consumers:
            child.stop()
        deliveries.poll()
        audited.poll()

        # Presence, part 1: the watcher stays listed, without a gap, until 60 s past
        # the sync window after the last USER_SYNC the bridge saw (the window moves
        # on if another comes meanwhile).
        def last_user_sync() -> float:
            assert watch is not None
            return max(watch.user_sync_at or 0.0, bridge_up_at)

        def kill_due() -> bool:
            return time.time() >= last_user_sync() + _SYNC_WINDOW_S + _PAST_WINDOW_S

        wait_steadily(kill_due, 300, "the end of the sync window plus 60 s")
        listed = watch.listing()
        status = _synapse_presence(watcher.on(hs.client_url), watcher.user_id)
        kill_wall = time.time()
        since_user_sync = kill_wall - last_user_sync()
        times["last USER_SYNC the bridge saw"] = -since_user_sync
        note(
            f"last USER_SYNC the bridge saw {since_user_sync:.1f} s ago; "
            f"the watcher listed under {sorted(listed)}, Synapse says {status!r}"
        )
        assert listed == {instance_id}, report()
        assert status == "online", report()

        # Presence, part 2: SIGKILL sync1 and time (a) our view, (b) Synapse's
        # status, (c) the offline row on Kafka; poll every second.
        presence_topic = topics.presence_topic(prefix)
        presence_stream = topics.stream_topic(prefix, "presence")
        tap = AfterKillTap(
            kafka_bootstrap,
            _topic_heads(kafka_bootstrap, [presence_stream, presence_topic]),
            presence_stream,
            presence_topic,
            watcher.user_id,
            instance_id,
        )
        hs.kill_worker(SYNC_WORKER)
        note(f"{SYNC_WORKER} SIGKILLed")
        # Their syncs fail from now on; stopping them sends nothing anywhere.
        traffic.close()
        watcher_sync.stop()
        synapse_offline: float | None = None
        answers: Counter[str] = Counter()
        deadline = time.monotonic() + _AFTER_KILL_DEADLINE_S
        while time.monotonic() < deadline:
            tick = time.monotonic()
            bridge.alive()
            watch.check()
            if synapse_offline is None:
                asked = time.time()
                answer = _synapse_presence(watcher.on(hs.client_url), watcher.user_id)
                answers[answer.partition(":")[0]] += 1
                if answer != "online" and not answer.startswith("error"):
                    synapse_offline = asked
                    note(f"Synapse says {answer!r}")
            tap.poll(0.2)
            if (
                watch.stops_after(kill_wall)
                and synapse_offline is not None
                and tap.offline_row_at is not None
                and tap.tombstone_at is not None
            ):
                break
            time.sleep(max(0.0, tick + 1.0 - time.monotonic()))
        dropped = watch.stops_after(kill_wall)
        times["(a) our view drops the watcher"] = (
            dropped[0] - kill_wall if dropped else None
        )
        times["(b) Synapse's status leaves online"] = (
            synapse_offline - kill_wall if synapse_offline is not None else None
        )
        times["(c) offline row on Kafka"] = (
            tap.offline_row_at - kill_wall if tap.offline_row_at is not None else None
        )
        times["bridge's tombstone of sync1's instance"] = (
            tap.tombstone_at - kill_wall if tap.tombstone_at is not None else None
        )
        presence.append(
            "presence, seconds relative to the SIGKILL of sync1 "
            f"(sync window {_SYNC_WINDOW_S:.0f} s, reader expiry "
            f"{_READER_EXPIRY_MS / 1000:.0f} s; status answers {dict(answers)}):"
        )
        presence.extend(
            f"  {what:<42}{'never' if at is None else f'{at:+7.1f}'}"
            for what, at in times.items()
        )
        note("presence measured")
        bridge.stop()
    finally:
        traffic.close()
        if watcher_sync is not None:
            watcher_sync.stop()
        for child in consumers:
            child.stop()
        bridge.stop()
        if tap is not None:
            tap.close()
        if watch is not None:
            watch.close()
    deliveries.poll()
    audited.poll()
    # Every presence row the watcher got, relative to its first sync: how often
    # Synapse's writer persists a syncing user, and how old its last sync is.
    rows = _user_presence_rows(kafka_bootstrap, prefix, watcher.user_id)
    presence.append(
        f"presence rows of {watcher.user_id} (Kafka time relative to the kill, "
        "state, age of last_user_sync_ts):"
    )
    presence.extend(
        f"  {at - kill_wall:+7.1f} s {state:<12}{at - last_sync / 1000:5.1f} s"
        for at, state, last_sync in rows
    )

    text = report()
    (tmp_path / "numbers.txt").write_text(text + "\n")
    print(f"\n{text}\ntotal {time.monotonic() - started:.1f} s")

    for name, files in (("consumer.jsonl", deliveries), ("audit.jsonl", audited)):
        assert not files.bad_lines, (
            f"{name}: unreadable lines {files.bad_lines}\n{text}"
        )
    assert deliveries.missing(expected) == {}, f"rows lost (database)\n{text}"
    assert audited.missing(expected) == {}, f"rows lost (kafka)\n{text}"
    # --catch-up kafka: every update the stream topics hold, through both kills.
    assert audited.missing(on_kafka) == {}, f"Kafka updates not delivered\n{text}"
    assert sum(_rows_count(on_kafka).values()) > sum(_rows_count(expected).values()), (
        f"Kafka holds no more than the database: the comparison proves nothing\n{text}"
    )

    # Both persisters wrote events, and the file names the one that did.
    ev_writers: dict[str, set[str]] = {}
    for stream, writer, _token, row in deliveries.copies:
        wire = json.loads(row)
        if stream == "events" and wire[0] == "ev":
            ev_writers.setdefault(wire[1][0], set()).add(writer)
    per_writer = Counter(w for writers in ev_writers.values() for w in writers)
    assert set(per_writer) == set(EVENT_PERSISTERS), f"{per_writer}\n{text}"
    assert min(per_writer.values()) >= 10, f"{per_writer}\n{text}"
    in_table = _event_writers(dsn, set(ev_writers))
    wrong = {
        event_id: (sorted(writers), in_table.get(event_id))
        for event_id, writers in ev_writers.items()
        if writers != {in_table.get(event_id)}
    }
    assert not wrong, f"events under the wrong writer: {list(wrong.items())[:5]}"
    # Every message Synapse acknowledged reached the file.
    unseen = set(traffic.event_ids) - set(ev_writers)
    assert not unseen, f"{len(unseen)} acknowledged messages missing\n{text}"
    # The killed persister came back and went on writing after its old position.
    after_kill = [
        token
        for (stream, writer, token, _row) in deliveries.copies
        if stream == "events" and writer == _KILLED_PERSISTER and token > before_kill
    ]
    assert after_kill, f"{_KILLED_PERSISTER} wrote nothing after its restart\n{text}"
    # The faults happened: the bridge saw Redis go away, users synced on sync1.
    assert redis_reconnects >= 1, text
    assert syncs > 0, text
    for child in consumers:
        assert child.exit_codes[-1] == 0, log_tail(child.log_path)
    assert bridge.exit_codes[-1] == 0, log_tail(bridge.log_path)

    for name, files in (("consumer.jsonl", deliveries), ("audit.jsonl", audited)):
        duplicated = {k: n for k, n in files.copies.items() if n > 1}
        assert not duplicated, (
            f"{name}: {len(duplicated)} (stream, writer, token, row) more than once, "
            f"e.g. {list(duplicated)[:3]}\n{text}"
        )

    # Presence: one instance for sync1 all along, listed at every sample.
    assert watch.instance_ids == {instance_id}, f"{watch.instance_ids}\n{text}"
    unlisted = [at for at in watch.unlisted_samples if at < kill_wall]
    assert not unlisted, f"unlisted at {unlisted[:5]}\n{text}"
    ours = times["(a) our view drops the watcher"]
    synapse = times["(b) Synapse's status leaves online"]
    offline_row = times["(c) offline row on Kafka"]
    assert ours is not None, f"the watcher never left our view\n{text}"
    assert synapse is not None, f"Synapse never stopped saying online\n{text}"
    assert offline_row is not None, f"no offline row for the watcher\n{text}"
    assert ours <= synapse, f"our view dropped the watcher after Synapse\n{text}"
    assert ours <= offline_row, f"our view dropped the watcher after the row\n{text}"
    assert times["bridge's tombstone of sync1's instance"] is not None, (
        f"the bridge wrote no tombstone for {instance_id}\n{text}"
    )
