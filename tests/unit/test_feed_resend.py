"""The feed's loop remembers what it published only once the transaction committed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from adapter.codec.avro_codec import encode
from adapter.core.commands import RdataCommand
from adapter.core.feed import FeedEvent
from adapter.core.rows import EventsEventRow
from adapter.io.kafka.transactions import AbortedTransaction
from adapter.io.metrics import CollectorRegistry, Metrics
from adapter.runtime.feed import EventFeed, FeedOptions


class _Message:
    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def topic(self) -> str:
        return "p.stream.events"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class _Pipe:
    """Hands out queued batches; fails the commits it is told to fail."""

    def __init__(self, batches: list[list[_Message]], fail_commits: int) -> None:
        self.batches = batches
        self.fail_commits = fail_commits
        self.pending: list[bytes | None] = []
        self.committed: list[bytes | None] = []
        self.metadata = ""

    def poll(self, max_records: int, timeout_s: float) -> list[_Message]:
        return self.batches.pop(0) if self.batches else []

    def begin(self) -> None:
        self.pending = []

    def produce(self, topic: str, value: bytes | None, **_: object) -> None:
        self.pending.append(value)

    def commit(
        self, next_offsets: Mapping[tuple[str, int], int], metadata: str = ""
    ) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise AbortedTransaction("broker said no")
        self.committed += self.pending
        self.metadata = metadata

    def committed_metadata(self) -> list[str]:
        return [self.metadata]

    def abort(self, rewind: object) -> None:
        self.pending = []


def _record(offset: int, event_id: str) -> _Message:
    row = EventsEventRow(event_id, "!r:x", "m.room.message", None, None, None, None, False, False)  # fmt: skip
    return _Message(offset, encode(RdataCommand("events", "p1", offset, (row,))))


def _read(ids: Sequence[str]) -> dict[str, FeedEvent]:
    return {
        i: FeedEvent(
            i,
            "!r:x",
            "m.room.message",
            None,
            "@a:x",
            1,
            1,
            "p1",
            False,
            False,
            None,
            None,
            3,
            "{}",
        )
        for i in ids
    }


def test_an_aborted_batch_runs_again_whole_and_a_re_sent_record_after_a_commit_is_skipped() -> (
    None
):
    first = [_record(0, "$1")]
    pipe = _Pipe([first, first, [_record(1, "$1"), _record(2, "$2")]], fail_commits=1)
    metrics = Metrics(CollectorRegistry())
    options = FeedOptions("p", value_format="json")
    feed = EventFeed(pipe, _read, options, metrics=metrics)  # type: ignore[arg-type]
    with pytest.raises(AbortedTransaction):
        feed.step()
    assert pipe.committed == []
    assert feed.step() == 1  # the retry publishes it: the abort left nothing behind
    assert feed.step() == 1  # $1 again (re-sent) is skipped, $2 is new
    assert [b'"event_id":"$1"' in v for v in pipe.committed if v] == [True, False]
    assert feed.published == 2
    counted = metrics.registry.get_sample_value
    assert counted("synkafka_feed_events_total", {"outcome": "published"}) == 2
    assert counted("synkafka_feed_events_total", {"outcome": "duplicate"}) == 1
    assert counted("synkafka_feed_transactions_total", {"outcome": "committed"}) == 2
    assert counted("synkafka_feed_stream_ordering", {"writer": "p1"}) == 1


def test_a_re_sent_record_is_skipped_after_a_restart_too() -> None:
    # The memory of recent events starts empty in a new process; the token map in the
    # committed offsets' metadata does not.
    pipe = _Pipe([[_record(5, "$5"), _record(6, "$6")]], fail_commits=0)
    options = FeedOptions("p", value_format="json")
    first = EventFeed(pipe, _read, options)  # type: ignore[arg-type]
    first.resume()
    assert first.step() == 2
    assert '"p1":6' in pipe.metadata
    pipe.batches = [[_record(6, "$6"), _record(7, "$7")]]  # the bridge re-sends token 6
    restarted = EventFeed(pipe, _read, options)  # type: ignore[arg-type]
    restarted.resume()
    assert restarted.step() == 1
    assert [b'"event_id":"$7"' in v for v in pipe.committed[2:] if v] == [True]
    assert '"p1":7' in pipe.metadata
