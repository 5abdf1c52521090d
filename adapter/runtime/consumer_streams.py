"""One followed stream inside the replication consumer, and the work its parts share.

The start-up (:mod:`adapter.runtime.consumer_start`), the poll loop's dispatch
(:mod:`adapter.runtime.consumer_dispatch`) and the commits
(:mod:`adapter.runtime.consumer_commit`) all read and update a :class:`StreamState`;
only the consumer's poll thread does, so it needs no lock (``caught_up`` is also read
by status calls, under the consumer's lock).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapter.core.positions import Backfill, PositionTracker
from adapter.runtime.stream_worker import BackfillWork, StreamWorker, Work

__all__ = ["TP", "StreamState", "backfill_work"]

#: A topic partition: ``(topic, partition)``.
TP = tuple[str, int]


@dataclass(slots=True)
class StreamState:
    """One stream the consumer follows.

    Attributes:
        name: the stream.
        topic: its topic.
        partitions: the topic's partitions.
        worker: the thread that runs the stream's handler and backfills.
        has_source: the stream can be read back from the database.
        start: per partition, the offset reading started at (may be ``BEGINNING``).
        head: per partition, the high watermark pinned at start.
        pending: batches of work the worker's queue had no room for yet.
        paused: the stream's partitions are paused (its queue is full).
        caught_up: the pinned head is reached and the initial backfill is done.
    """

    name: str
    topic: str
    partitions: list[int]
    worker: StreamWorker
    has_source: bool
    start: dict[int, int] = field(default_factory=dict)
    head: dict[int, int] = field(default_factory=dict)
    pending: list[list[Work]] = field(default_factory=list)
    paused: bool = False
    caught_up: bool = False

    def initial_backfill_left(self) -> bool:
        """The backfill run before going live is still running or queued."""
        return self.worker.initial_backfill_pending > 0 or any(
            any(isinstance(w, BackfillWork) and w.initial for w in batch)
            for batch in self.pending
        )


def backfill_work(decision: Backfill, tracker: PositionTracker) -> list[Work]:
    """Queue the backfill in the stream's worker, ahead of every later record.

    The worker runs it before anything queued after it, so the tracker can count it as
    done now: later records of this writer are judged against its end.
    """
    tracker.backfilled(decision.stream, decision.writer, decision.to_token)
    return [BackfillWork(decision.writer, decision.from_token, decision.to_token)]
