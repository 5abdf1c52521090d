"""The replication consumer's commits: finished work only, with the token map.

Step 5 of :mod:`adapter.runtime.consumer`: per partition, the offset after the last
record whose handler finished, with the stream's token map as the commit's metadata, so
the committed offset is the consumer's POSITION.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from adapter.core.positions import encode_commit_metadata
from adapter.io.kafka.consumer import BEGINNING, Committed, Consumer
from adapter.runtime.consumer_streams import TP, StreamState

__all__ = ["OffsetCommits"]


class OffsetCommits:
    """What the consumer committed, and the next commit.

    Args:
        before_commit: called before every commit, after the finished work is read:
            makes the handlers' output durable. If it raises, nothing is committed.
    """

    def __init__(self, before_commit: Callable[[], None] | None) -> None:
        self._before_commit = before_commit
        # Per partition: the last committed offset and the token map it carried.
        self._committed: dict[TP, tuple[int, str]] = {}

    def forget(self, partitions: Iterable[TP]) -> None:
        """Start an attempt: nothing is committed by it yet on ``partitions``."""
        for tp in partitions:
            self._committed[tp] = (-1, "")

    def due(self, states: Iterable[StreamState]) -> list[Committed]:
        """The commits that would move an offset or a token map."""
        offsets: list[Committed] = []
        for state in states:
            done, tokens = state.worker.progress()
            initial_done = not state.initial_backfill_left()
            # Always ours, even when empty: a commit without it means someone else
            # moved the offset (see adapter.core.catchup).
            metadata = encode_commit_metadata(
                {(state.name, w): t for w, t in tokens.items()}
            )
            for p in state.partitions:
                tp = (state.topic, p)
                offset = done[tp] + 1 if tp in done else None
                start = state.start.get(p, BEGINNING)
                if offset is None and start >= 0 and initial_done:
                    # Nothing consumed yet, but the skipped range below the pinned head
                    # is covered by the finished backfill: commit the head.
                    offset = start
                last_offset, last_metadata = self._committed.get(tp, (-1, ""))
                # The token map is per stream but stored on every partition: a
                # partition with no new records still gets a commit (same offset) when
                # the stream's tokens moved, or lag readers would keep counting the
                # tokens its metadata lacks.
                if offset is None or offset < last_offset:
                    continue
                if offset == last_offset and metadata == last_metadata:
                    continue
                offsets.append(Committed(state.topic, p, offset, metadata))
        return offsets

    def commit(self, consumer: Consumer, states: Iterable[StreamState]) -> None:
        """Commit, per partition, the offset after the last finished record."""
        offsets = self.due(states)
        if not offsets:
            return
        if self._before_commit is not None:
            self._before_commit()
        consumer.commit(offsets)
        for c in offsets:
            self._committed[(c.topic, c.partition)] = (c.offset or 0, c.metadata or "")

    def summary(self, states: Iterable[StreamState]) -> str:
        """What the group's commits now hold, per stream: offsets and tokens."""
        parts = []
        for state in states:
            _, tokens = state.worker.progress()
            offsets = ", ".join(
                f"[{p}]@{offset}" if offset >= 0 else f"[{p}] unchanged"
                for p in state.partitions
                for offset in (self._committed.get((state.topic, p), (-1, ""))[0],)
            )
            writers = ", ".join(f"{w}={t}" for w, t in sorted(tokens.items()))
            parts.append(f"{state.name} {offsets} ({writers or 'no writers'})")
        return "; ".join(parts) or "nothing"
