"""Presence on the real broker: the compacted topic, the clear on shutdown, expiry.

Trackers run in-process (``PresenceSync``) where time must be driven, and as real
``python -m adapter presence track`` subprocesses where signals matter. Waiting is
always polling with a deadline; the only fixed durations are the ones under test
(an instance must outlive several expiry periods).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from adapter.codec.avro_codec import decode, encode
from adapter.core import topics
from adapter.core.commands import ClearUserSyncsCommand
from adapter.core.config import KafkaSettings
from adapter.core.errors import DecodeError
from adapter.core.presence import PresenceChange, PresenceView, SyncTracker
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import BEGINNING, Consumer, PartitionStart
from adapter.io.kafka.producer import Producer
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import Metrics
from adapter.runtime.presence_follower import PresenceFollower
from adapter.runtime.presence_sync import PresenceSync, wall_clock_ms
from adapter.runtime.publisher import Publisher
from tests.fakes import FixedClock
from tests.integration.harness import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Compaction that happens within seconds (the production values are in topics.py).
FAST_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "100",
}

CLEAR_RUNS = 20
CLEAR_BUDGET_S = 1.0


# -- helpers -----------------------------------------------------------------------


def create_presence_topic(
    bootstrap: str, prefix: str, config: dict[str, str] | None = None
) -> str:
    topic = topics.presence_topic(prefix)
    spec = topics.TopicSpec(topic, 1, config or dict(topics.COMPACTED_TOPIC_CONFIG))
    Admin(KafkaSettings(bootstrap_servers=bootstrap)).create_topics([spec])
    return topic


def new_reader(bootstrap: str, name: str) -> Consumer:
    return Consumer(
        KafkaSettings(bootstrap_servers=bootstrap),
        f"{name}.reader",
        extra={"auto.offset.reset": "earliest"},
    )


def end_offset(bootstrap: str, topic: str) -> int:
    reader = new_reader(bootstrap, topic)
    try:
        return reader.watermarks(topic, 0)[1]
    finally:
        reader.close()


def read_topic(bootstrap: str, topic: str) -> list[KafkaRecord]:
    """Every record now in partition 0 (gaps where compaction removed some)."""
    reader = new_reader(bootstrap, topic)
    try:
        _low, high = reader.watermarks(topic, 0)
        reader.assign([PartitionStart(topic, 0, BEGINNING)])
        out: list[KafkaRecord] = []
        deadline = time.monotonic() + 15
        idle_since = time.monotonic()
        while not out or out[-1].offset < high - 1:
            batch = reader.poll_batch(1000, 0.1)
            out += batch
            if batch:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 1.0:
                break  # the tail was compacted away
            assert time.monotonic() < deadline, f"could not read {topic}"
        return out
    finally:
        reader.close()


@dataclass
class Follower:
    follower: PresenceFollower
    registry: CollectorRegistry
    producer: Producer | None
    changes: list[PresenceChange]

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def followers(kafka_bootstrap: str) -> Iterator[list[Follower]]:
    made: list[Follower] = []
    yield made
    for f in made:
        f.follower.close()


def start_follower(
    made: list[Follower],
    bootstrap: str,
    prefix: str,
    *,
    tombstones: bool = False,
    thread: bool = True,
    **options: Any,
) -> Follower:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    producer = Producer(settings, metrics=metrics) if tombstones else None
    changes: list[PresenceChange] = []
    follower = PresenceFollower(
        Consumer(settings, f"{prefix}.view{len(made)}"),
        prefix,
        producer=producer,
        metrics=metrics,
        on_change=changes.append,
        **options,
    )
    made.append(Follower(follower, registry, producer, changes))
    if thread:
        follower.start()
    return made[-1]


def new_publisher(bootstrap: str, prefix: str) -> Publisher:
    return Publisher(Producer(KafkaSettings(bootstrap_servers=bootstrap)), prefix)


class Tracker:
    """``python -m adapter presence track`` in a subprocess."""

    def __init__(self, bootstrap: str, prefix: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adapter",
                "presence",
                "track",
                "-b",
                bootstrap,
                "--prefix",
                prefix,
                *args,
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.instance_id = ""

    def line(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        raw = self.proc.stdout.readline() if ready else b""
        if not raw:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"tracker said nothing: {err.decode()[-2000:]}")
        document: dict[str, Any] = json.loads(raw)
        return document

    def wait_ready(self, timeout_s: float = 60.0) -> str:
        self.instance_id = self.line(timeout_s)["instance_id"]
        return self.instance_id

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


@pytest.fixture
def trackers() -> Iterator[list[Tracker]]:
    made: list[Tracker] = []
    yield made
    for t in made:
        t.close()


def is_clear_of(record: KafkaRecord, instance_id: str) -> bool:
    if record.key != instance_id.encode() or record.value is None:
        return False
    try:
        return decode(record.value) == ClearUserSyncsCommand(instance_id)
    except DecodeError:
        return False


# -- 1. syncs show up; a quick stop/start sends nothing ------------------------------


def test_sync_start_and_stop_show_up_and_a_quick_reconnect_sends_nothing(
    kafka_bootstrap: str, unique_name: str, followers: list[Follower]
) -> None:
    topic = create_presence_topic(kafka_bootstrap, unique_name)
    view = start_follower(followers, kafka_bootstrap, unique_name)
    publisher = new_publisher(kafka_bootstrap, unique_name)
    clock = FixedClock(wall_clock_ms())
    sync = PresenceSync(
        publisher, "synchrotron1", clock=clock.now_ms, stop_delay_ms=10_000
    )

    sync.sync_started("@alice:test", "PHONE")
    assert sync.run_once() is not None
    publisher.flush()
    wait_for(lambda: view.follower.is_syncing("@alice:test"), 10, "alice syncing")
    records = end_offset(kafka_bootstrap, topic)

    # `synkafka presence --json` replays the topic and lists the instance.
    listed = subprocess.run(
        [
            *(sys.executable, "-m", "adapter", "presence"),
            *("-b", kafka_bootstrap, "--prefix", unique_name, "--json"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    [instance] = json.loads(listed.stdout)["instances"]
    assert instance["instance_id"] == sync.instance_id
    assert instance["users"] == ["@alice:test"]

    # Stop and start again within the stop delay: nothing changes, nothing is sent.
    sync.sync_ended("@alice:test", "PHONE")
    clock.advance(3_000)
    sync.sync_started("@alice:test", "PHONE")
    clock.advance(20_000)
    assert sync.run_once() is None
    publisher.flush()
    assert end_offset(kafka_bootstrap, topic) == records

    # A real stop is published once the stop delay ran out.
    sync.sync_ended("@alice:test", "PHONE")
    clock.advance(10_000)
    assert sync.run_once() is None  # the stop delay ended: debounced
    clock.advance(500)
    assert sync.run_once() is not None
    publisher.flush()
    wait_for(lambda: not view.follower.is_syncing("@alice:test"), 10, "alice gone")
    assert end_offset(kafka_bootstrap, topic) == records + 1
    assert [c.started for c in view.changes] == [
        frozenset({"@alice:test"}),
        frozenset(),
    ]
    sync.close()
    wait_for(lambda: not view.follower.state(), 10, "the clear")


# -- 2. compaction on the real broker ------------------------------------------------


def test_compacted_topic_keeps_one_record_per_live_instance_and_the_same_view(
    kafka_bootstrap: str, unique_name: str, followers: list[Follower]
) -> None:
    topic = create_presence_topic(kafka_bootstrap, unique_name, FAST_COMPACTION)
    publisher = new_publisher(kafka_bootstrap, unique_name)
    now = wall_clock_ms()
    trackers = [SyncTracker(f"inst{i}", f"worker{i}", debounce_ms=0) for i in range(6)]
    for round_ in range(30):
        for i, tracker in enumerate(trackers):
            t = now + round_
            tracker.sync_started(f"@u{round_}:test", f"D{i}", t)
            snapshot = tracker.due(t)
            assert snapshot is not None
            publisher.publish(snapshot)
    for tracker in trackers[4:]:
        tracker.clear()
        publisher.publish(ClearUserSyncsCommand(tracker.instance_id))
    publisher.flush()
    live = {t.instance_id for t in trackers[:4]}

    # The writer's follower tombstones the cleared instances at once.
    writer = start_follower(
        followers,
        kafka_bootstrap,
        unique_name,
        tombstones=True,
        clear_tombstone_delay_ms=0,
        expire_interval_s=0.05,
    )
    wait_for(lambda: writer.follower.tombstones_written == 2, 10, "tombstones")
    assert writer.producer is not None
    writer.producer.flush()
    before = writer.follower.state()
    assert set(before) == live
    assert all(len(s.syncing) == 30 for s in before.values())

    roller = Producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))

    def compacted() -> bool:
        # The active segment is never cleaned: keep appending (a tombstone of a key
        # nobody uses) so every update lands in a rolled segment the cleaner visits.
        roller.produce(topic, None, key=b"roll")
        roller.flush()
        kept = [r for r in read_topic(kafka_bootstrap, topic) if r.key != b"roll"]
        return len(kept) == len(live) and all(r.value is not None for r in kept)

    wait_for(compacted, 60, "the broker to compact the presence topic")
    kept = [r for r in read_topic(kafka_bootstrap, topic) if r.key != b"roll"]
    assert {r.key for r in kept} == {i.encode() for i in live}

    rebuilt = start_follower(followers, kafka_bootstrap, unique_name, thread=False)
    stats = rebuilt.follower.replay()
    assert stats.records < 30 * 6  # it really read the compacted log
    assert rebuilt.follower.state() == before
    with writer.follower.lock:
        assert rebuilt.follower.view == writer.follower.view


# -- 3. the clear on SIGTERM, 20 out of 20, each within 1 s ---------------------------


def test_sigterm_publishes_the_clear_within_one_second_every_time(
    kafka_bootstrap: str,
    unique_name: str,
    trackers: list[Tracker],
    record_property: Any,
) -> None:
    topic = create_presence_topic(kafka_bootstrap, unique_name)
    # Start every interpreter at once; each announces itself when its first snapshot
    # is acknowledged.
    for i in range(CLEAR_RUNS):
        trackers.append(
            Tracker(
                kafka_bootstrap,
                unique_name,
                "--user",
                f"@user{i}:test",
                "--device",
                "D",
                "--instance-name",
                f"sync{i}",
            )
        )
    for tracker in trackers:
        tracker.wait_ready()

    reader = new_reader(kafka_bootstrap, unique_name)
    # An explicit offset: END would be resolved on the first fetch, after the clear.
    reader.assign([PartitionStart(topic, 0, reader.watermarks(topic, 0)[1])])
    latencies: list[float] = []
    broker_latencies: list[float] = []
    try:
        for tracker in trackers:
            sent_wall_ms = time.time() * 1000
            sent = time.monotonic()
            tracker.stop(signal.SIGTERM)
            seen: KafkaRecord | None = None
            while seen is None and time.monotonic() - sent < 5:
                for record in reader.poll_batch(100, 0.01):
                    if is_clear_of(record, tracker.instance_id):
                        seen = record
            latency = time.monotonic() - sent
            assert seen is not None, f"no clear from {tracker.instance_id}"
            latencies.append(latency)
            broker_latencies.append((seen.timestamp_ms - sent_wall_ms) / 1000)
            assert tracker.proc.wait(10) == 0
            assert tracker.line(5)["cleared"] == tracker.instance_id
    finally:
        reader.close()

    record_property("clear_latency_s", latencies)
    print(  # shown with -s; the numbers go to docs/benchmarks.md
        "clear latency (SIGTERM -> seen by a consumer) s: "
        f"min {min(latencies):.3f} median {sorted(latencies)[len(latencies) // 2]:.3f} "
        f"max {max(latencies):.3f}; record timestamp - SIGTERM max "
        f"{max(broker_latencies):.3f}; all ms: "
        f"{sorted(round(x * 1000) for x in latencies)}"
    )
    assert len(latencies) == CLEAR_RUNS
    assert max(latencies) < CLEAR_BUDGET_S, latencies


# -- 4. a crash is expired and tombstoned ---------------------------------------------


def test_killed_tracker_is_expired_and_its_key_tombstoned(
    kafka_bootstrap: str,
    unique_name: str,
    trackers: list[Tracker],
    followers: list[Follower],
) -> None:
    topic = create_presence_topic(kafka_bootstrap, unique_name)
    tracker = Tracker(
        kafka_bootstrap,
        unique_name,
        "--user",
        "@crash:test",
        "--heartbeat-interval",
        "0.2",
    )
    trackers.append(tracker)
    instance_id = tracker.wait_ready()
    view = start_follower(
        followers,
        kafka_bootstrap,
        unique_name,
        tombstones=True,
        expiry_ms=1_500,
        expire_interval_s=0.1,
    )
    wait_for(lambda: view.follower.is_syncing("@crash:test"), 10, "the tracker")

    tracker.stop(signal.SIGKILL)
    tracker.proc.wait(10)
    wait_for(lambda: not view.follower.state(), 10, "the expiry")
    assert view.changes[-1].stopped == frozenset({"@crash:test"})
    assert view.sample("synkafka_presence_expired_instances_total") == 1
    assert view.producer is not None
    view.producer.flush()

    records = read_topic(kafka_bootstrap, topic)
    assert records[-1].key == instance_id.encode()
    assert records[-1].value is None  # the tombstone
    assert not any(is_clear_of(r, instance_id) for r in records)  # no clear: killed


# -- 5. no flapping: heartbeats keep a quiet instance alive ----------------------------


def test_quiet_instance_with_steady_syncs_outlives_the_expiry(
    kafka_bootstrap: str, unique_name: str, followers: list[Follower]
) -> None:
    create_presence_topic(kafka_bootstrap, unique_name)
    # Ten heartbeats per expiry: a stall of over a second on a loaded machine (in this
    # process's sync thread, Kafka or the follower) must not pass for a death.
    expiry_ms = 2000
    view = start_follower(
        followers,
        kafka_bootstrap,
        unique_name,
        tombstones=True,
        expiry_ms=expiry_ms,
        expire_interval_s=0.05,
    )
    sync = PresenceSync(
        new_publisher(kafka_bootstrap, unique_name),
        "synchrotron1",
        debounce_ms=10,
        heartbeat_interval_ms=200,
    )
    # Users start syncing once and never stop or start again (Synapse would send no
    # USER_SYNC at all from here on, and expire the worker after the timeout).
    for n in range(5):
        sync.sync_started(f"@steady{n}:test", "D")
    sync.start(register_atexit=False)
    try:
        wait_for(lambda: sync.instance_id in view.follower.state(), 10, "announce")
        first = view.follower.state()[sync.instance_id].heartbeat_ms

        def outlived() -> bool:
            snap = view.follower.state().get(sync.instance_id)
            assert snap is not None, "the instance was expired"
            return snap.heartbeat_ms - first > 3 * expiry_ms

        wait_for(outlived, 30, "three expiry periods of heartbeats")
    finally:
        sync.close()
    assert all(not c.stopped for c in view.changes[:-1])
    assert view.sample("synkafka_presence_expired_instances_total") == 0
    assert view.follower.tombstones_written == 0
    assert sync.failure is None


# -- 6. the presence writer publishes nothing ------------------------------------------


def test_presence_writer_publishes_nothing(
    kafka_bootstrap: str,
    unique_name: str,
    trackers: list[Tracker],
    followers: list[Follower],
) -> None:
    topic = create_presence_topic(kafka_bootstrap, unique_name)
    before = end_offset(kafka_bootstrap, topic)

    # In-process: the writer's tracker feeds the view its follower also folds into.
    shared = start_follower(followers, kafka_bootstrap, unique_name)
    view: PresenceView = shared.follower.view
    sync = PresenceSync(
        None,
        "master",
        is_presence_writer=True,
        local_view=view,
        lock=shared.follower.lock,
        debounce_ms=0,
        heartbeat_interval_ms=20,
    )
    sync.start(register_atexit=False)
    sync.sync_started("@writer:test", "D")
    assert shared.follower.is_syncing("@writer:test")
    wait_for(
        lambda: (
            shared.follower.state()[sync.instance_id].heartbeat_ms
            > wall_clock_ms() - 10
        ),
        5,
        "local heartbeats",
    )
    sync.sync_ended("@writer:test", "D")
    assert sync.close() is None
    assert not shared.follower.is_syncing("@writer:test")
    assert end_offset(kafka_bootstrap, topic) == before

    # As a process: `track --presence-writer`, stopped by SIGTERM.
    tracker = Tracker(
        kafka_bootstrap, unique_name, "--user", "@w:test", "--presence-writer"
    )
    trackers.append(tracker)
    tracker.wait_ready()
    tracker.stop(signal.SIGTERM)
    assert tracker.proc.wait(10) == 0
    assert tracker.line(5) == {
        "cleared": tracker.instance_id,
        "offset": None,
        "close_s": pytest.approx(0, abs=1),
    }
    assert end_offset(kafka_bootstrap, topic) == before


# -- 7. bad records are counted and skipped --------------------------------------------


def test_bad_records_are_counted_and_skipped(
    kafka_bootstrap: str, unique_name: str, followers: list[Follower]
) -> None:
    topic = create_presence_topic(kafka_bootstrap, unique_name)
    now = wall_clock_ms()
    good = PresenceSnapshot(
        "GOODGOODGOOD", "w1", now, (SyncingDevice("@good:test", "D", now),)
    )
    other = PresenceSnapshot(
        "OTHEROTHEROT", "w2", now, (SyncingDevice("@other:test", None, now),)
    )
    producer = Producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    producer.produce(topic, encode(good), key=good.instance_id)
    producer.produce(topic, b"\x00not avro", key=b"junk")
    producer.produce(topic, b"\xc3\x01" + os.urandom(8) + b"junk", key=b"unknown")
    producer.produce(topic, encode(other), key=other.instance_id)
    # Garbage under a live instance's key leaves that instance as it was.
    producer.produce(topic, b"\xc3\x01garbage", key=other.instance_id)
    producer.flush()

    view = start_follower(followers, kafka_bootstrap, unique_name)
    assert view.follower.state() == {good.instance_id: good, other.instance_id: other}
    assert view.sample("synkafka_decode_failures_total", topic=topic) == 3

    # Live, too.
    newer = PresenceSnapshot("GOODGOODGOOD", "w1", now + 1, ())
    producer.produce(topic, b"\xc3\x01" + os.urandom(8), key=b"live-junk")
    producer.produce(topic, encode(newer), key=newer.instance_id)
    producer.flush()
    wait_for(
        lambda: view.follower.state().get(good.instance_id) == newer, 10, "the update"
    )
    assert view.sample("synkafka_decode_failures_total", topic=topic) == 4
    assert view.follower.is_syncing("@other:test")
    assert not view.follower.is_syncing("@good:test")
    assert view.sample("synkafka_presence_instances") == 2
    assert view.sample("synkafka_presence_syncing_users") == 1
