"""Syncing sets, their publication, and the presence writer's view (adapter/core/presence.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, assert_never

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.core.errors import ConfigError
from adapter.core.presence import (
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_EXPIRY_MS,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_STOP_DELAY_MS,
    InstanceSummary,
    PresenceChange,
    PresenceCounts,
    PresenceView,
    SyncTracker,
)
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from tests.fakes import FixedClock, InMemoryLog

MINUTE = 60_000

# -- SyncTracker transcripts ------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    user: str
    device: str | None
    at: int


@dataclass(frozen=True)
class End:
    user: str
    device: str | None
    at: int


@dataclass(frozen=True)
class Due:
    """Call due(at); expect None, or a snapshot with these (user, device, since)."""

    at: int
    expect: tuple[tuple[str, str | None, int], ...] | None


Step: TypeAlias = Start | End | Due

A, B, C = "@a:hs", "@b:hs", "@c:hs"

TRANSCRIPTS: dict[str, list[Step]] = {
    "the first call announces the instance at once": [
        Due(0, ()),
        Due(1, None),
    ],
    "a start is published after the debounce": [
        Due(0, ()),
        Start(A, "D1", 100),
        Due(100, None),
        Due(599, None),
        Due(600, ((A, "D1", 100),)),
        Due(700, None),
    ],
    "a burst of starts becomes one record": [
        Due(0, ()),
        Start(A, "D1", 100),
        Start(B, "D1", 300),
        Start(C, None, 550),
        Due(600, ((A, "D1", 100), (B, "D1", 300), (C, None, 550))),
        Due(1_100, None),
    ],
    "a quick stop and start sends nothing": [
        Due(0, ()),
        Start(A, "D1", 100),
        Due(600, ((A, "D1", 100),)),
        End(A, "D1", 1_000),
        Due(5_000, None),
        Start(A, "D1", 8_000),  # within the 10 s stop delay
        Due(11_000, None),
        Due(30_000, None),
        # Only the heartbeat; the streak still started at 100.
        Due(60_600, ((A, "D1", 100),)),
    ],
    "a stop is published after the stop delay and the debounce": [
        Due(0, ()),
        Start(A, "D1", 100),
        Due(600, ((A, "D1", 100),)),
        End(A, "D1", 1_000),
        Due(10_999, None),
        Due(11_000, None),
        Due(11_500, ()),
    ],
    "only the last of several requests of a device stops it": [
        Due(0, ()),
        Start(A, "D1", 100),
        Start(A, "D1", 200),
        End(A, "D1", 300),
        Due(600, ((A, "D1", 100),)),
        Due(20_000, None),
        End(A, "D1", 30_000),
        Due(40_000, None),
        Due(40_500, ()),
    ],
    "an unchanged set is republished as a heartbeat": [
        Due(0, ()),
        Due(59_999, None),
        Due(60_000, ()),
        Due(119_999, None),
        Due(120_000, ()),
    ],
    "devices are sorted by user then device, no device first": [
        Due(0, ()),
        Start(B, None, 10),
        Start(A, "D2", 20),
        Start(A, None, 30),
        Due(510, ((A, None, 30), (A, "D2", 20), (B, None, 10))),
    ],
    "a stop of one device leaves the user's other device": [
        Due(0, ()),
        Start(A, "D1", 100),
        Start(A, "D2", 100),
        Due(600, ((A, "D1", 100), (A, "D2", 100))),
        End(A, "D1", 1_000),
        Due(11_000, None),
        Due(11_500, ((A, "D2", 100),)),
    ],
}


def make_tracker(**overrides: object) -> SyncTracker:
    return SyncTracker("ABCDE", "synchrotron1", **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(TRANSCRIPTS))
def test_tracker_transcript(name: str) -> None:
    tracker = make_tracker()
    for index, step in enumerate(TRANSCRIPTS[name]):
        match step:
            case Start(user, device, at):
                tracker.sync_started(user, device, at)
            case End(user, device, at):
                tracker.sync_ended(user, device, at)
            case Due(at, expect):
                got = tracker.due(at)
                if expect is None:
                    assert got is None, f"step {index}: {step} published {got}"
                else:
                    assert got == PresenceSnapshot(
                        "ABCDE",
                        "synchrotron1",
                        at,
                        tuple(SyncingDevice(u, d, since) for u, d, since in expect),
                    ), f"step {index}: {step}"
            case _:
                assert_never(step)


def test_defaults_are_synapse_like() -> None:
    assert DEFAULT_STOP_DELAY_MS == 10_000
    assert DEFAULT_DEBOUNCE_MS == 500
    assert DEFAULT_HEARTBEAT_INTERVAL_MS == MINUTE
    assert DEFAULT_EXPIRY_MS == 5 * MINUTE


def test_settings_are_configurable() -> None:
    tracker = make_tracker(stop_delay_ms=0, debounce_ms=0, heartbeat_interval_ms=1_000)
    assert tracker.due(0) is not None
    tracker.sync_started(A, None, 5)
    assert tracker.due(5) is not None
    tracker.sync_ended(A, None, 6)
    snapshot = tracker.due(6)
    assert snapshot is not None
    assert snapshot.syncing == ()
    assert tracker.due(1_005) is None
    assert tracker.due(1_006) is not None


def test_next_due_ms_says_when_to_call_due_again() -> None:
    tracker = make_tracker()
    assert tracker.next_due_ms(0) == 0  # nothing published yet
    tracker.due(0)
    assert tracker.next_due_ms(10) == MINUTE  # the heartbeat
    tracker.sync_started(A, None, 100)
    assert tracker.next_due_ms(100) == 600  # the debounce
    assert tracker.next_due_ms(700) == 700  # overdue: now
    tracker.due(600)
    tracker.sync_ended(A, None, 1_000)
    assert tracker.next_due_ms(1_000) == 11_000  # the stop delay
    tracker.clear()
    assert tracker.next_due_ms(20_000) is None


def test_republish_publishes_at_once() -> None:
    tracker = make_tracker()
    tracker.due(0)
    tracker.sync_started(A, None, 10)
    tracker.due(510)
    assert tracker.due(1_000) is None
    tracker.republish()
    snapshot = tracker.due(1_000)
    assert snapshot is not None
    assert snapshot.syncing == (SyncingDevice(A, None, 10),)


def test_sync_ended_without_start_is_a_caller_bug() -> None:
    tracker = make_tracker()
    with pytest.raises(ConfigError):
        tracker.sync_ended(A, "D1", 0)


def test_clear_asks_for_the_clear_record_and_silences_the_tracker() -> None:
    tracker = make_tracker()
    tracker.due(0)
    tracker.sync_started(A, "D1", 10)
    assert tracker.clear() is True
    assert tracker.snapshot(20).syncing == ()
    # Requests still finishing during shutdown, or new ones, change nothing.
    tracker.sync_ended(A, "D1", 30)
    tracker.sync_started(B, None, 40)
    assert tracker.due(10 * MINUTE) is None


@pytest.mark.parametrize(
    "build",
    [
        lambda: SyncTracker("", "w"),
        lambda: SyncTracker("ABCDE", "w", is_presence_writer=True),
        lambda: SyncTracker("ABCDE", "w", local_view=PresenceView()),
        lambda: SyncTracker("ABCDE", "w", stop_delay_ms=-1),
        lambda: SyncTracker("ABCDE", "w", debounce_ms=-1),
        lambda: SyncTracker("ABCDE", "w", heartbeat_interval_ms=0),
        lambda: PresenceView(expiry_ms=0),
    ],
)
def test_bad_settings_raise_config_error(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


# -- the presence writer publishes nothing ------------------------------------------------------


def test_presence_writer_publishes_nothing_and_feeds_its_own_view() -> None:
    view = PresenceView()
    tracker = SyncTracker("WRITR", "master", is_presence_writer=True, local_view=view)
    clock = FixedClock(0)
    assert tracker.due(clock.now) is None
    assert view.instances(0) == [InstanceSummary("WRITR", "master", 0, (), 0)]
    tracker.sync_started(A, "D1", clock.advance(100))
    # No debounce for a local dict update: visible at once.
    assert view.is_syncing(A)
    assert view.syncing_since(A) == 100
    tracker.sync_ended(A, "D1", clock.advance(900))
    for _ in range(30):  # 30 minutes of due() calls every minute
        assert tracker.due(clock.advance(MINUTE)) is None
        # The writer's heartbeat reaches its own view, so it never expires itself.
        assert view.expire(clock.now) == []
    assert not view.is_syncing(A)
    assert view.state()["WRITR"].heartbeat_ms == clock.now
    assert tracker.clear() is False
    assert view.state() == {}


# -- PresenceView ------------------------------------------------------------------------------


def snap(
    instance_id: str, heartbeat_ms: int, *devices: tuple[str, str | None, int]
) -> PresenceSnapshot:
    return PresenceSnapshot(
        instance_id,
        f"worker-{instance_id}",
        heartbeat_ms,
        tuple(SyncingDevice(u, d, since) for u, d, since in devices),
    )


def test_view_answers_who_syncs_where_since_when() -> None:
    view = PresenceView()
    assert view.apply_snapshot(
        snap("I1", 1_000, (A, "D1", 500), (A, "D2", 300), (B, None, 900)), 1_000
    ) == (PresenceChange(started=frozenset({A, B})))
    assert (
        view.apply_snapshot(snap("I2", 1_100, (A, "D3", 200)), 1_100)
        == PresenceChange()
    )
    assert view.is_syncing(A)
    assert view.syncing_since(A) == 200
    assert view.syncing_since(B) == 900
    assert view.syncing_since(C) is None
    assert not view.is_syncing(C)
    assert view.syncing_users() == {A, B}
    assert view.counts() == PresenceCounts(instances=2, users=2, devices=4)
    assert view.instances(2_000) == [
        InstanceSummary("I1", "worker-I1", 1_000, (A, B), 3),
        InstanceSummary("I2", "worker-I2", 900, (A,), 1),
    ]
    # A leaves I1 but still syncs on I2: only B's state flips.
    assert view.apply_snapshot(snap("I1", 2_000), 2_000) == PresenceChange(
        stopped=frozenset({B})
    )
    assert view.syncing_since(A) == 200
    assert view.apply_clear("I2") == PresenceChange(stopped=frozenset({A}))
    assert view.apply_tombstone("I1") == PresenceChange()
    assert view.state() == {}
    # Tombstones and clears of unknown instances are no-ops.
    assert view.apply_tombstone("nobody") == PresenceChange()
    assert view.apply_clear("nobody") == PresenceChange()


@pytest.mark.parametrize(
    ("age_ms", "expired"),
    [(0, False), (DEFAULT_EXPIRY_MS, False), (DEFAULT_EXPIRY_MS + 1, True)],
)
def test_expire_drops_instances_with_an_old_heartbeat(
    age_ms: int, expired: bool
) -> None:
    view = PresenceView()
    view.apply_snapshot(snap("I1", 0, (A, None, 0)), 0)
    assert view.expire(age_ms) == (["I1"] if expired else [])
    assert view.is_syncing(A) is not expired
    # Once reported, an expiry is not reported again.
    assert view.expire(age_ms) == []


def test_expiry_is_configurable() -> None:
    view = PresenceView(expiry_ms=1_000)
    view.apply_snapshot(snap("I1", 0), 0)
    assert view.expire(1_001) == ["I1"]


def test_a_snapshot_expired_on_arrival_brings_no_one_online() -> None:
    view = PresenceView()
    now = 10 * MINUTE
    # Replaying the topic: a crashed instance's last snapshot.
    assert view.apply_snapshot(snap("DEAD", 0, (A, None, 0)), now) == PresenceChange()
    assert not view.is_syncing(A)
    assert view.counts() == PresenceCounts(0, 0, 0)
    assert view.expire(now) == ["DEAD"]
    # A fresh snapshot of an instance seen as dead revives it.
    view.apply_snapshot(snap("DEAD", 0, (A, None, 0)), now)
    assert view.apply_snapshot(snap("DEAD", now, (A, None, 0)), now) == PresenceChange(
        started=frozenset({A})
    )
    assert view.expire(now) == []


def test_a_live_instance_whose_latest_snapshot_arrives_stale_is_dropped() -> None:
    view = PresenceView()
    view.apply_snapshot(snap("I1", 0, (A, None, 0)), 0)
    assert view.apply_snapshot(
        snap("I1", 0, (A, None, 0)), 6 * MINUTE
    ) == PresenceChange(stopped=frozenset({A}))
    assert view.expire(6 * MINUTE) == ["I1"]


def test_views_compare_by_state() -> None:
    one, two = PresenceView(), PresenceView()
    assert one == two
    one.apply_snapshot(snap("I1", 0, (A, None, 0)), 0)
    assert one != two
    assert one.__eq__(object()) is NotImplemented
    assert "I1" in repr(one)
    two.apply_snapshot(snap("I1", 0, (A, None, 0)), 0)
    assert one == two


# -- no flapping: level-triggered heartbeats keep busy quiet instances alive -----------------------


def test_an_instance_whose_users_keep_syncing_never_expires() -> None:
    """element-hq/synapse#16771: no start/stop for 30 minutes, heartbeats only."""
    clock = FixedClock(0)
    tracker = make_tracker()
    view = PresenceView()
    tracker.sync_started(A, "D1", clock.now)  # a long-poll that is always in flight
    for _ in range(30 * 60):  # every second for 30 minutes
        snapshot = tracker.due(clock.advance(1_000))
        if snapshot is not None:
            view.apply_snapshot(snapshot, clock.now)
        assert view.expire(clock.now) == []
        if clock.now >= 1_000:
            assert view.is_syncing(A), clock.now
    assert view.syncing_since(A) == 0


def test_a_crashed_instance_expires_after_five_minutes() -> None:
    clock = FixedClock(0)
    tracker = make_tracker()
    view = PresenceView()
    tracker.sync_started(A, "D1", clock.now)
    first = tracker.due(clock.now)
    assert first is not None
    view.apply_snapshot(first, clock.now)
    # The process dies: no more heartbeats, no clear.
    clock.advance(DEFAULT_EXPIRY_MS)
    assert view.expire(clock.now) == []
    assert view.expire(clock.advance(1)) == ["ABCDE"]
    assert not view.is_syncing(A)


# -- compaction: the view of the compacted log equals the view of the full log ------------------


@dataclass(frozen=True)
class Clear:
    """The clear record (CLEAR_USER_SYNC) of one instance."""

    instance_id: str


Value: TypeAlias = PresenceSnapshot | Clear


def fold(log: InMemoryLog[Value], now_ms: int) -> PresenceView:
    view = PresenceView()
    for key, value in log.read_all():
        if value is None:
            view.apply_tombstone(key)
        elif isinstance(value, Clear):
            view.apply_clear(value.instance_id)
        else:
            view.apply_snapshot(value, now_ms)
    return view


def test_in_memory_log_compacts_like_kafka() -> None:
    log: InMemoryLog[str] = InMemoryLog()
    log.append("a", "1")
    log.append("b", "1")
    log.append("a", "2")
    log.append("c", "1")
    log.append("c", None)
    assert len(log) == 5
    log.compact()
    assert log.read_all() == [("b", "1"), ("a", "2")]
    with pytest.raises(ValueError, match="forward"):
        FixedClock().advance(-1)
    assert FixedClock(5).now_ms() == 5


def test_view_from_the_compacted_log_equals_the_view_from_the_full_log() -> None:
    clock = FixedClock(0)
    log: InMemoryLog[Value] = InMemoryLog()
    live = PresenceView()

    def publish(key: str, value: Value | None) -> None:
        log.append(key, value)
        # The writer follows the topic as it grows.
        if value is None:
            live.apply_tombstone(key)
        elif isinstance(value, Clear):
            live.apply_clear(value.instance_id)
        else:
            live.apply_snapshot(value, clock.now)

    one, two, three = (
        make_tracker(),
        SyncTracker("FGHIJ", "sync2"),
        SyncTracker("KLMNO", "sync3"),
    )
    trackers = [one, two, three]
    one.sync_started(A, "D1", clock.now)
    two.sync_started(B, None, clock.now)
    three.sync_started(C, "D9", clock.now)
    for second in range(15 * 60):
        clock.advance(1_000)
        if second == 100:
            one.sync_started(B, "D2", clock.now)
        if second == 200:
            two.sync_ended(B, None, clock.now)
        if second == 300:
            # three shuts down cleanly: the clear, then a tombstone.
            assert three.clear()
            publish(three.instance_id, Clear(three.instance_id))
            publish(three.instance_id, None)
            trackers.remove(three)
        if second == 400:
            trackers.remove(two)  # two crashes: heartbeats stop
        for tracker in trackers:
            snapshot = tracker.due(clock.now)
            if snapshot is not None:
                publish(tracker.instance_id, snapshot)
        for instance_id in live.expire(clock.now):
            publish(instance_id, None)  # the tombstone the caller writes
    full = fold(log, clock.now)
    size = len(log)
    log.compact()
    assert len(log) < size
    compacted = fold(log, clock.now)
    assert compacted == full
    assert compacted == live
    assert sorted(compacted.state()) == ["ABCDE"]
    assert compacted.syncing_users() == {A, B}


@st.composite
def presence_logs(draw: st.DrawFn) -> list[tuple[str, Value | None]]:
    ids = ["I1", "I2", "I3"]
    users = [A, B, C]
    records: list[tuple[str, Value | None]] = []
    for _ in range(draw(st.integers(0, 40))):
        instance_id = draw(st.sampled_from(ids))
        kind = draw(st.sampled_from(["snapshot", "snapshot", "clear", "tombstone"]))
        if kind == "clear":
            records.append((instance_id, Clear(instance_id)))
        elif kind == "tombstone":
            records.append((instance_id, None))
        else:
            heartbeat = draw(st.integers(0, 20 * MINUTE))
            chosen = draw(st.lists(st.sampled_from(users), unique=True, max_size=3))
            devices = tuple(
                SyncingDevice(u, draw(st.sampled_from([None, "D1"])), heartbeat)
                for u in sorted(chosen)
            )
            records.append(
                (instance_id, PresenceSnapshot(instance_id, "w", heartbeat, devices))
            )
    return records


@settings(max_examples=200, deadline=None)
@given(presence_logs(), st.integers(0, 25 * MINUTE))
def test_compaction_never_changes_the_folded_view(
    records: list[tuple[str, Value | None]], now_ms: int
) -> None:
    log: InMemoryLog[Value] = InMemoryLog()
    for key, value in records:
        log.append(key, value)
    full = fold(log, now_ms)
    log.compact()
    assert fold(log, now_ms) == full
