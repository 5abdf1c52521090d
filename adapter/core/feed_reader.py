"""The feed reader's rules: rooms in order, rooms concurrently, commits never too far.

``synkafka feed-consume`` reads ``<prefix>.feed.events`` in a consumer group and hands
every event to a handler. Two rules decide what may run and what may be committed;
both are pure and live here, the runtime (:mod:`adapter.runtime.feed_reader`) carries
them out.

* :class:`RoomScheduler`: the events of one room are handled one at a time, in the
  order they were read; different rooms run concurrently. A room is the record's key
  (the feed keys by room ID) within its partition, so a record whose key is missing
  is ordered with its partition's other keyless records.
* :class:`CommitTracker`: per partition, the offset to commit is one past the
  highest offset below which every record read has finished. Rooms finish out of
  order, so a finished record above an unfinished one is not committed yet: a crash
  then re-delivers both (at least once) instead of losing the unfinished one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["CommitTracker", "RoomKey", "RoomScheduler", "Work"]

#: A room's identity for ordering: (partition, record key).
RoomKey = tuple[int, bytes | None]

_P = TypeVar("_P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Work(Generic[_P]):
    """One record waiting for, or in, a handler.

    Attributes:
        partition: its partition.
        offset: its offset.
        key: its key (the room ID for the feed's records).
        payload: what the runtime needs to handle it (the record, decoded or not).
    """

    partition: int
    offset: int
    key: bytes | None
    payload: _P

    @property
    def room(self) -> RoomKey:
        """The ordering key: records of one room run one after another."""
        return (self.partition, self.key)


@dataclass(slots=True)
class _PartitionOffsets:
    read: deque[int] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)
    next_commit: int | None = None
    committed: int | None = None


class CommitTracker:
    """Per partition, the highest offset that may be committed.

    Offsets are :meth:`read` in increasing order per partition (as Kafka delivers
    them) and :meth:`finish` marks them done in any order.
    """

    def __init__(self) -> None:
        self._partitions: dict[int, _PartitionOffsets] = {}

    def read(self, partition: int, offset: int) -> None:
        """Record that ``offset`` of ``partition`` was read and is not finished yet."""
        self._partitions.setdefault(partition, _PartitionOffsets()).read.append(offset)

    def finish(self, partition: int, offset: int) -> None:
        """Record that the record at ``offset`` is finished (handled or dead-lettered).

        A partition no longer tracked (revoked meanwhile) is ignored: its new owner
        handles the record again from the last commit.
        """
        state = self._partitions.get(partition)
        if state is None:
            return
        state.finished.add(offset)
        while state.read and state.read[0] in state.finished:
            done = state.read.popleft()
            state.finished.discard(done)
            state.next_commit = done + 1

    def passed(self, partition: int, position: int) -> None:
        """The consumer's position in ``partition`` is ``position``.

        A transaction's commit marker takes an offset that no reader ever receives,
        so after a transactional writer's last record the position is one past what
        the finished prefix says, and a reader committing that prefix shows a lag of
        one for good. When every record read from the partition is finished, nothing
        lies between the two, and the committable offset moves up to the position.

        Only for a position taken while no fetched record is on its way to
        :meth:`read` (between two polls, not inside one).
        """
        state = self._partitions.get(partition)
        if state is None or state.read or state.next_commit is None:
            return
        state.next_commit = max(state.next_commit, position)

    def to_commit(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """The offsets to commit now: per partition, one past its finished prefix.

        Only partitions whose committable offset moved since the last
        :meth:`committed` are returned. ``partitions`` limits the answer (all when
        ``None``).
        """
        wanted = self._partitions if partitions is None else partitions
        out: dict[int, int] = {}
        for partition in wanted:
            state = self._partitions.get(partition)
            if state is None or state.next_commit is None:
                continue
            if state.next_commit != state.committed:
                out[partition] = state.next_commit
        return out

    def committed(self, offsets: dict[int, int]) -> None:
        """Record that ``offsets`` (from :meth:`to_commit`) were committed."""
        for partition, offset in offsets.items():
            state = self._partitions.get(partition)
            if state is not None:
                state.committed = offset

    def unfinished(self, partition: int) -> int:
        """How many records of ``partition`` were read and are not finished."""
        state = self._partitions.get(partition)
        return 0 if state is None else len(state.read)

    def forget(self, partitions: Iterable[int]) -> None:
        """Stop tracking ``partitions`` (revoked or lost)."""
        for partition in partitions:
            self._partitions.pop(partition, None)


class RoomScheduler(Generic[_P]):
    """Which record runs next: one at a time per room, rooms in arrival order.

    A room with queued records and nothing running is *ready*; :meth:`take` hands out
    the first record of the ready room that became ready first, so no room starves.
    """

    def __init__(self) -> None:
        self._queues: dict[RoomKey, deque[Work[_P]]] = {}
        self._running: dict[RoomKey, Work[_P]] = {}
        self._ready: deque[RoomKey] = deque()
        self.queued = 0
        """Records waiting (not running)."""

    def add(self, work: Work[_P]) -> None:
        """Queue ``work`` behind the records of its room read before it."""
        room = work.room
        queue = self._queues.get(room)
        if queue is None:
            queue = self._queues[room] = deque()
        if not queue and room not in self._running:
            self._ready.append(room)
        queue.append(work)
        self.queued += 1

    def take(self) -> Work[_P] | None:
        """The next record to run (now marked running), or ``None`` if none may run."""
        if not self._ready:
            return None
        room = self._ready.popleft()
        queue = self._queues[room]
        work = queue.popleft()
        if not queue:
            del self._queues[room]
        self._running[room] = work
        self.queued -= 1
        return work

    def done(self, work: Work[_P]) -> None:
        """``work`` finished: its room's next record may run."""
        room = work.room
        if self._running.get(room) is not work:
            return  # dropped with its partition meanwhile
        del self._running[room]
        if room in self._queues:
            self._ready.append(room)

    def running(self, partitions: Collection[int] | None = None) -> int:
        """How many records are running (in ``partitions``, when given)."""
        if partitions is None:
            return len(self._running)
        return sum(1 for p, _ in self._running if p in partitions)

    def drop(self, partitions: Collection[int], *, running: bool = False) -> int:
        """Forget the queued records of ``partitions``; return how many there were.

        With ``running``, forget their running records too: their :meth:`done` is
        then ignored (the caller gave up waiting for them). Without it they finish
        as usual, and the caller may wait for them (:meth:`running`).
        """
        dropped = 0
        for room in [r for r in self._queues if r[0] in partitions]:
            dropped += len(self._queues.pop(room))
        if running:
            for room in [r for r in self._running if r[0] in partitions]:
                del self._running[room]
        self._ready = deque(r for r in self._ready if r[0] not in partitions)
        self.queued -= dropped
        return dropped
