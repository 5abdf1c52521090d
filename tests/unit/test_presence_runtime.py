"""The presence shells without a broker: PresenceSync and PresenceFollower with fakes."""

from __future__ import annotations

import string
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import CollectorRegistry

from adapter.codec.avro_codec import encode
from adapter.core.commands import ClearUserSyncsCommand, Command, UserSyncCommand
from adapter.core.errors import ConfigError
from adapter.core.presence import PresenceView
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from adapter.io.kafka.consumer import PartitionStart
from adapter.io.kafka.producer import Delivered, DeliveryCallback
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import Metrics
from adapter.runtime.presence_follower import PresenceFollower
from adapter.runtime.presence_sync import (
    INSTANCE_ID_LENGTH,
    PresenceSync,
    new_instance_id,
)
from tests.fakes import FixedClock

PREFIX = "synapse.test"
TOPIC = f"{PREFIX}.presence.syncs"


class FakePublisher:
    """Keeps what is published; reports deliveries on poll/flush, in order."""

    def __init__(self) -> None:
        self.published: list[Command | PresenceSnapshot] = []
        self._pending: list[tuple[int, DeliveryCallback | None]] = []
        self.lock = threading.Lock()

    @property
    def producer(self) -> FakePublisher:
        return self

    def publish(
        self,
        command: Command | PresenceSnapshot,
        *,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        with self.lock:
            self.published.append(command)
            self._pending.append((len(self.published) - 1, on_delivery))

    def poll(self, timeout_s: float = 0.0) -> int:
        with self.lock:
            pending, self._pending = self._pending, []
        for offset, callback in pending:
            if callback is not None:
                callback(None, Delivered(TOPIC, 0, offset))
        return len(pending)

    def flush(
        self, timeout_s: float = 30.0, *, interrupt: threading.Event | None = None
    ) -> None:
        self.poll()

    def snapshot_records(self) -> list[PresenceSnapshot]:
        with self.lock:
            return [p for p in self.published if isinstance(p, PresenceSnapshot)]


def make_sync(
    publisher: FakePublisher | None = None, clock: FixedClock | None = None, **kw: int
) -> tuple[PresenceSync, FakePublisher, FixedClock]:
    publisher = publisher or FakePublisher()
    clock = clock or FixedClock(1_000_000)
    sync = PresenceSync(
        publisher,
        "synchrotron1",
        clock=clock.now_ms,
        stop_delay_ms=kw.get("stop_delay_ms", 10_000),
        debounce_ms=kw.get("debounce_ms", 500),
        heartbeat_interval_ms=kw.get("heartbeat_interval_ms", 60_000),
    )
    return sync, publisher, clock


# -- PresenceSync -----------------------------------------------------------------


def test_instance_ids_are_long_random_letters() -> None:
    ids = {new_instance_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == INSTANCE_ID_LENGTH for i in ids)
    assert all(set(i) <= set(string.ascii_letters) for i in ids)


def test_publisher_and_presence_writer_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        PresenceSync(None, "worker")
    with pytest.raises(ConfigError):
        PresenceSync(
            FakePublisher(), "w", is_presence_writer=True, local_view=PresenceView()
        )


def test_quick_stop_and_start_publishes_nothing_and_a_real_stop_does() -> None:
    sync, publisher, clock = make_sync()
    sync.sync_started("@a:x", "D")
    first = sync.run_once()
    assert first is not None
    assert [d.user_id for d in first.syncing] == ["@a:x"]

    sync.sync_ended("@a:x", "D")
    clock.advance(2_000)
    sync.sync_started("@a:x", "D")  # back within the stop delay
    clock.advance(20_000)
    assert sync.run_once() is None
    assert len(publisher.published) == 1

    sync.sync_ended("@a:x", "D")
    clock.advance(10_000)
    assert sync.run_once() is None  # the stop delay ended: debounced
    clock.advance(500)
    stopped = sync.run_once()
    assert stopped is not None
    assert stopped.syncing == ()


def test_close_publishes_the_clear_last_and_only_once() -> None:
    registry = CollectorRegistry()
    publisher = FakePublisher()
    clock = FixedClock(5_000)
    sync = PresenceSync(
        publisher, "w", clock=clock.now_ms, metrics=Metrics(registry), debounce_ms=0
    )
    sync.sync_started("@a:x")
    sync.run_once()
    sync.sync_started("@b:x")  # a change not yet published when the process stops
    delivered = sync.close()

    assert delivered == Delivered(TOPIC, 0, 1)
    assert publisher.published[-1] == ClearUserSyncsCommand(sync.instance_id)
    assert sync.close() == delivered
    sync.sync_started("@c:x")
    assert sync.run_once() is None
    assert len(publisher.published) == 2
    assert (
        registry.get_sample_value(
            "synkafka_presence_published_total", {"kind": "clear"}
        )
        == 1.0
    )


def test_presence_writer_publishes_nothing_and_feeds_its_view() -> None:
    view = PresenceView(expiry_ms=60_000)
    clock = FixedClock(1_000)
    sync = PresenceSync(
        None, "master", is_presence_writer=True, local_view=view, clock=clock.now_ms
    )
    sync.sync_started("@a:x", "D")
    sync.start(register_atexit=False)
    try:
        assert view.is_syncing("@a:x")
    finally:
        assert sync.close() is None
    assert not view.is_syncing("@a:x")
    assert view.counts().instances == 0


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_thread_publishes_changes_and_heartbeats_then_the_clear() -> None:
    publisher = FakePublisher()
    sync = PresenceSync(publisher, "w", debounce_ms=10, heartbeat_interval_ms=30)
    sync.start(register_atexit=False)
    sync.sync_started("@a:x")
    wait_for(
        lambda: any(
            s.syncing and s.syncing[0].user_id == "@a:x"
            for s in publisher.snapshot_records()
        )
    )
    count = len(publisher.snapshot_records())
    wait_for(lambda: len(publisher.snapshot_records()) >= count + 2)  # heartbeats
    sync.close()
    assert publisher.published[-1] == ClearUserSyncsCommand(sync.instance_id)
    assert sync.failure is None


# -- PresenceFollower -------------------------------------------------------------


class FakeReader:
    """One partition of records, served in batches."""

    def __init__(self, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
        self.log: list[KafkaRecord] = []
        self.position = 0
        self.closed = False
        for key, value in records:
            self.append(key, value)

    def append(self, key: bytes | None, value: bytes | None) -> None:
        self.log.append(KafkaRecord(TOPIC, 0, len(self.log), key, value, (), 1_000_000))

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        return [0] if topic == TOPIC else []

    def watermarks(
        self, topic: str, partition: int, timeout_s: float = 10.0
    ) -> tuple[int, int]:
        return 0, len(self.log)

    def assign(self, starts: Sequence[PartitionStart]) -> None:
        self.position = 0

    def poll_batch(self, max_records: int, timeout_s: float) -> list[KafkaRecord]:
        batch = self.log[self.position : self.position + max_records]
        self.position += len(batch)
        return batch

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, str | bytes | None]] = []

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        on_delivery: DeliveryCallback | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.records.append((topic, value, key))
        if on_delivery is not None:
            on_delivery(None, Delivered(topic, 0, len(self.records)))

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0

    def flush(
        self, timeout_s: float = 30.0, *, interrupt: threading.Event | None = None
    ) -> None:
        return None


def snapshot(instance_id: str, heartbeat_ms: int, *users: str) -> PresenceSnapshot:
    return PresenceSnapshot(
        instance_id,
        f"name-{instance_id}",
        heartbeat_ms,
        tuple(SyncingDevice(u, None, heartbeat_ms) for u in users),
    )


def record(value: PresenceSnapshot | ClearUserSyncsCommand) -> tuple[bytes, bytes]:
    return value.instance_id.encode(), encode(value)


def test_replay_folds_snapshots_clears_and_tombstones_and_skips_bad_records() -> None:
    clock = FixedClock(1_000_000)
    registry = CollectorRegistry()
    reader = FakeReader(
        [
            record(snapshot("AAA", 999_000, "@a:x")),
            record(snapshot("BBB", 999_000, "@b:x")),
            record(snapshot("CCC", 999_000, "@c:x")),
            (b"junk", b"not avro at all"),
            (b"AAA", b"\xc3\x01" + b"\x01" * 8 + b"junk"),
            (b"WRONG", encode(snapshot("DDD", 999_000, "@d:x"))),
            record(ClearUserSyncsCommand("BBB")),
            (b"CCC", None),
        ]
    )
    follower = PresenceFollower(
        reader,
        PREFIX,
        clock=clock.now_ms,
        metrics=Metrics(registry),
        expiry_ms=60_000,
    )
    stats = follower.replay()

    assert stats.records == 8
    assert list(follower.state()) == ["AAA"]
    assert follower.is_syncing("@a:x")
    assert not follower.is_syncing("@b:x")
    assert (
        registry.get_sample_value("synkafka_decode_failures_total", {"topic": TOPIC})
        == 3.0
    )
    assert registry.get_sample_value("synkafka_presence_instances") == 1.0
    assert registry.get_sample_value("synkafka_presence_syncing_users") == 1.0


def test_expiry_and_clears_become_tombstones_and_user_sync_edges_fold() -> None:
    clock = FixedClock(1_000_000)
    registry = CollectorRegistry()
    producer = FakeProducer()
    reader = FakeReader(
        [
            record(snapshot("OLD", 900_000, "@old:x")),  # dead on arrival
            record(snapshot("LIVE", 999_000, "@a:x")),
            record(ClearUserSyncsCommand("GONE")),
        ]
    )
    changes: list[object] = []
    follower = PresenceFollower(
        reader,
        PREFIX,
        producer=producer,
        clock=clock.now_ms,
        metrics=Metrics(registry),
        expiry_ms=60_000,
        expire_interval_s=1.0,
        clear_tombstone_delay_ms=5_000,
        on_change=changes.append,
    )
    follower.replay()
    assert producer.records == [(TOPIC, None, "OLD")]
    assert registry.get_sample_value("synkafka_presence_expired_instances_total") == 1.0

    reader.append(
        b"LIVE", encode(UserSyncCommand("LIVE", "@b:x", "PHONE", True, 999_500))
    )
    clock.advance(500)
    follower.poll_once(0)
    assert follower.is_syncing("@b:x")
    assert producer.records == [(TOPIC, None, "OLD")]  # interval not reached

    clock.advance(5_000)
    follower.poll_once(0)
    assert producer.records[1:] == [(TOPIC, None, "GONE")]

    clock.advance(60_000)
    assert follower.maintain() == ["LIVE"]
    assert producer.records[2:] == [(TOPIC, None, "LIVE")]
    assert follower.counts().instances == 0
    assert (
        registry.get_sample_value(
            "synkafka_presence_published_total", {"kind": "tombstone"}
        )
        == 3.0
    )
    assert changes  # users started and stopped
    follower.close()
    assert reader.closed


def test_missing_topic_is_a_config_error() -> None:
    follower = PresenceFollower(FakeReader([]), "other.prefix")
    with pytest.raises(ConfigError, match="does not exist"):
        follower.replay()
