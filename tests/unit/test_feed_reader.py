"""The feed reader's rules (adapter.core.feed_reader) and its loop over a fake group."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from adapter.codec.avro_codec import encode
from adapter.core import topics
from adapter.core.errors import AdapterError, ConfigError, DecodeError
from adapter.core.feed import FeedEvent, feed_event_from_json, feed_event_to_json
from adapter.core.feed_reader import CommitTracker, RoomScheduler, Work
from adapter.io.metrics import Metrics
from adapter.runtime.feed_handling import decode_feed_value
from adapter.runtime.feed_reader import FeedReader, FeedReaderOptions


def _event(n: int, room: str = "!r:test", body: str = "hi") -> FeedEvent:
    return FeedEvent(
        f"$e{n}", room, "m.room.message", None, "@u:test", 1, n, "persister1",
        False, False, None, None, 3, json.dumps({"content": {"body": body}}),
    )  # fmt: skip


# -- CommitTracker -------------------------------------------------------------------


def test_commits_only_the_finished_prefix() -> None:
    tracker = CommitTracker()
    for offset in (10, 11, 12, 13):
        tracker.read(0, offset)
    tracker.finish(0, 12)
    tracker.finish(0, 13)
    assert tracker.to_commit() == {}, "nothing below 12 finished"
    tracker.finish(0, 10)
    assert tracker.to_commit() == {0: 11}, "11 still runs"
    tracker.committed({0: 11})
    assert tracker.to_commit() == {}, "nothing new"
    tracker.finish(0, 11)
    assert tracker.to_commit() == {0: 14}
    assert tracker.unfinished(0) == 0


def test_partitions_commit_independently_and_forgotten_ones_are_ignored() -> None:
    tracker = CommitTracker()
    tracker.read(0, 5)
    tracker.read(1, 7)
    tracker.read(1, 9)  # a gap (a transaction marker) is fine
    tracker.finish(1, 7)
    tracker.finish(1, 9)
    assert tracker.to_commit() == {1: 10}
    assert tracker.to_commit([0]) == {}
    tracker.forget([1])
    tracker.finish(1, 11)  # a late finish of a revoked partition
    assert tracker.to_commit() == {}
    assert tracker.unfinished(0) == 1


def test_a_position_past_a_marker_counts_only_when_everything_read_is_finished() -> (
    None
):
    tracker = CommitTracker()
    tracker.passed(0, 4)  # nothing read yet: no prefix to extend
    assert tracker.to_commit() == {}
    tracker.read(0, 0)
    tracker.read(0, 2)  # offsets 1 and 3: the writer's commit markers
    tracker.finish(0, 0)
    tracker.passed(0, 4)  # 2 still runs: the position says nothing yet
    assert tracker.to_commit() == {0: 1}
    tracker.finish(0, 2)
    tracker.passed(0, 2)  # behind the prefix: ignored
    assert tracker.to_commit() == {0: 3}
    tracker.passed(0, 4)
    assert tracker.to_commit() == {0: 4}
    tracker.passed(7, 9)  # a partition never read (or revoked): ignored
    assert 7 not in tracker.to_commit()


# -- RoomScheduler -------------------------------------------------------------------


def _work(partition: int, offset: int, room: str | None) -> Work[str]:
    key = room.encode() if room is not None else None
    return Work(partition, offset, key, f"{room}@{offset}")


def test_one_record_per_room_at_a_time_rooms_in_arrival_order() -> None:
    scheduler: RoomScheduler[str] = RoomScheduler()
    a1, b1, a2, c1 = (
        _work(0, 1, "a"),
        _work(0, 2, "b"),
        _work(0, 3, "a"),
        _work(1, 1, "c"),
    )
    for work in (a1, b1, a2, c1):
        scheduler.add(work)
    assert [scheduler.take(), scheduler.take(), scheduler.take()] == [a1, b1, c1]
    assert scheduler.take() is None, "a2 waits for a1"
    assert scheduler.running() == 3
    assert scheduler.running({1}) == 1
    scheduler.done(a1)
    assert scheduler.take() == a2
    assert scheduler.queued == 0


def test_keyless_records_are_ordered_per_partition() -> None:
    scheduler: RoomScheduler[str] = RoomScheduler()
    first, second, other = _work(0, 1, None), _work(0, 2, None), _work(1, 1, None)
    for work in (first, second, other):
        scheduler.add(work)
    assert [scheduler.take(), scheduler.take(), scheduler.take()] == [
        first,
        other,
        None,
    ]


def test_drop_forgets_queued_records_and_running_ones_when_asked() -> None:
    scheduler: RoomScheduler[str] = RoomScheduler()
    a1, a2, b1 = _work(0, 1, "a"), _work(0, 2, "a"), _work(1, 1, "b")
    for work in (a1, a2, b1):
        scheduler.add(work)
    assert scheduler.take() == a1
    assert scheduler.drop({0}) == 1
    assert scheduler.running({0}) == 1, "a1 still runs: the caller may wait for it"
    scheduler.done(a1)
    assert scheduler.take() == b1
    assert scheduler.take() is None, "a2 was dropped"
    scheduler.drop({1}, running=True)
    assert scheduler.running() == 0
    scheduler.done(b1)  # ignored: dropped
    assert scheduler.take() is None


# -- decoding, names -----------------------------------------------------------------


def test_both_feed_formats_decode_by_header_or_by_marker() -> None:
    event = _event(1)
    as_json = json.dumps(feed_event_to_json(event)).encode()
    assert decode_feed_value(encode(event), [("synkafka.format", b"avro")]) == event
    assert decode_feed_value(as_json, [("synkafka.format", b"json")]) == event
    assert decode_feed_value(encode(event), None) == event
    assert decode_feed_value(as_json, {}) == event
    for bad in (b"", b"\x00junk", b'{"event_id": 1}', b"[]"):
        with pytest.raises(DecodeError):
            decode_feed_value(bad, None)


def test_json_feed_records_are_checked_field_by_field() -> None:
    good = feed_event_to_json(_event(1))
    assert feed_event_from_json({**good, "extra": 1}) == _event(1)
    for name, value in (("outlier", 0), ("stream_ordering", True), ("json", None)):
        with pytest.raises(ValueError, match=name):
            feed_event_from_json({**good, name: value})
    with pytest.raises(ValueError, match="room_id"):
        feed_event_from_json({k: v for k, v in good.items() if k != "room_id"})


def test_feed_reader_group_names() -> None:
    group = topics.feed_reader_group("synapse.x", "search")
    assert group == "synapse.x.feed-reader.search"
    assert topics.is_feed_reader_group("synapse.x", group)
    assert not topics.is_feed_reader_group("synapse.x", "synapse.x.feed")
    assert not topics.is_feed_reader_group("synapse.y", group)
    with pytest.raises(ConfigError):
        topics.feed_reader_group("synapse.x", "a b")


# -- the loop, over a fake group consumer ----------------------------------------------


class _Message:
    def __init__(self, partition: int, offset: int, event: FeedEvent) -> None:
        self._partition, self._offset, self._event = partition, offset, event

    def topic(self) -> str:
        return "feed"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._event.room_id.encode()

    def value(self) -> bytes:
        return encode(self._event)

    def headers(self) -> list[tuple[str, bytes]]:
        return []


class _FakeGroup:
    """Assigns partitions 0 and 1, hands out queued messages, records commits."""

    topic = "feed"

    def __init__(self, listener: Any, messages: list[_Message]) -> None:
        self._listener = listener
        self._messages = messages
        self.commits: list[dict[int, int]] = []
        self.revoke: list[int] | None = None
        self.position: dict[int, int] = {}

    def subscribe(self) -> None:
        self._listener.assigned([0, 1])

    def poll(self, _max: int, timeout_s: float) -> list[_Message]:
        if self.revoke is not None:
            revoke, self.revoke = self.revoke, None
            self._listener.revoked(revoke)
        out, self._messages[:] = list(self._messages), []
        if not out:
            time.sleep(min(timeout_s, 0.01))
        return out

    def positions(self, partitions: list[int]) -> dict[int, int]:
        return {p: o for p, o in self.position.items() if p in partitions}

    def commit(self, offsets: dict[int, int]) -> None:
        self.commits.append(dict(offsets))

    def pause(self, _partitions: list[int]) -> None:
        pass

    def resume(self, _partitions: list[int]) -> None:
        pass

    def close(self) -> None:
        self._listener.revoked([0, 1])


def _reader(
    handler: Callable[[FeedEvent], Any],
    messages: list[_Message],
    dead: list[str],
    **options: Any,
) -> tuple[FeedReader, list[_FakeGroup]]:
    groups: list[_FakeGroup] = []

    def open_group(listener: Any, _stats: object) -> Any:
        groups.append(_FakeGroup(listener, messages))
        return groups[0]

    reader = FeedReader(
        open_group,
        handler,
        lambda message, reason: dead.append(f"{message.offset()}: {reason}"),
        FeedReaderOptions(commit_interval_s=0.05, **options),
        Metrics(CollectorRegistry()),
    )
    return reader, groups


def _run(reader: FeedReader, until: Callable[[], bool]) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=lambda: _quiet(reader, stop))
    thread.start()
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def _quiet(reader: FeedReader, stop: threading.Event) -> None:
    with contextlib.suppress(AdapterError):  # the test reads reader.failure
        reader.run(stop)


def test_rooms_run_concurrently_each_in_order_and_commits_cover_only_finished() -> None:
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    release = threading.Event()

    def handler(event: FeedEvent) -> None:
        if event.room_id == "!slow:test":
            release.wait(5)
        with lock:
            seen.append((event.room_id, event.stream_ordering))

    messages = [
        _Message(0, 0, _event(1, "!slow:test")),
        _Message(0, 1, _event(2, "!fast:test")),
        _Message(0, 2, _event(3, "!slow:test")),
        _Message(1, 0, _event(4, "!other:test")),
    ]
    reader, groups = _reader(handler, messages, [], concurrency=4)
    snapshot: list[tuple[str, int]] = []
    commits: list[dict[int, int]] = []

    def other_rooms_done() -> bool:
        if len(seen) < 2 or not any(c.get(1) == 1 for c in groups[0].commits):
            return False
        snapshot[:] = seen
        commits[:] = groups[0].commits
        release.set()
        return True

    _run(reader, other_rooms_done)
    # The slow room held back its own partition's commit, not the other rooms.
    assert sorted(snapshot) == [("!fast:test", 2), ("!other:test", 4)]
    assert all(c.get(0) is None for c in commits), "offset 0 had not finished"
    # On stop, the running handler finished and its offset was committed.
    assert ("!slow:test", 1) in seen
    assert groups[0].commits[-1].get(0, 0) >= 1


def test_a_revocation_waits_for_running_handlers_and_commits_them() -> None:
    started = threading.Event()
    release = threading.Event()
    done: list[int] = []

    def handler(event: FeedEvent) -> None:
        started.set()
        # Held until the reader has taken the revocation, however slow the machine.
        release.wait(10)
        done.append(event.stream_ordering)

    messages = [_Message(0, n, _event(n, "!r:test")) for n in range(3)]
    reader, groups = _reader(handler, messages, [], concurrency=2)
    asked = False

    def revoke_when_running() -> bool:
        nonlocal asked
        if started.is_set() and groups and not asked:
            groups[0].revoke = [0]
            asked = True
        elif asked and groups[0].revoke is None:
            release.set()  # taken by the poll: the handler may finish
        return reader.assigned_partitions == [1]

    _run(reader, revoke_when_running)
    # The running one finished and was committed; the queued ones were left.
    assert done == [0]
    assert {0: 1} in groups[0].commits
    assert reader.handled == 1


def test_a_failing_handler_stops_the_reader_or_goes_to_the_dead_letters() -> None:
    def handler(event: FeedEvent) -> None:
        if "poison" in event.json:
            raise RuntimeError("no")

    def messages() -> list[_Message]:
        return [
            _Message(0, 0, _event(0)),
            _Message(0, 1, _event(1, body="poison")),
            _Message(0, 2, _event(2)),
        ]

    dead: list[str] = []
    reader, groups = _reader(
        handler, messages(), dead, policy="dead-letter", handler_retries=2
    )
    _run(reader, lambda: reader.handled == 2)
    assert dead == ["1: handler failed 2 times: RuntimeError: no"]
    assert max(c[0] for c in groups[0].commits if 0 in c) == 3

    reader, groups = _reader(handler, messages(), dead, handler_retries=2)
    _run(reader, lambda: reader.failure is not None)
    assert isinstance(reader.failure, AdapterError)
    assert reader.handled == 1, "nothing after the failing event ran"
    assert all(c.get(0, 0) <= 1 for c in groups[0].commits)


def test_async_handlers_overlap_on_one_loop() -> None:
    import asyncio

    running = 0
    most = 0

    async def handler(_event: FeedEvent) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    messages = [_Message(0, n, _event(n, f"!r{n}:test")) for n in range(4)]
    reader, _ = _reader(handler, messages, [], concurrency=4)
    _run(reader, lambda: reader.handled == 4)
    assert most > 1, "rooms ran one after another"


def test_a_caught_up_member_commits_past_the_last_transaction_marker() -> None:
    # Offsets 0 and 2 are events; 1 and 3 the feed's commit markers, which the
    # client steps over: its position is 4. Committing 3 would show a lag of 1.
    messages = [_Message(0, n, _event(n, "!r:test")) for n in (0, 2)]
    reader, groups = _reader(lambda event: None, messages, [])

    def caught_up() -> bool:
        if groups and reader.handled == 2:
            groups[0].position = {0: 4}
        return any(c.get(0) == 4 for c in (groups[0].commits if groups else []))

    _run(reader, caught_up)
    assert any(c.get(0) == 4 for c in groups[0].commits)
    assert all(c.get(0, 0) <= 4 for c in groups[0].commits)
