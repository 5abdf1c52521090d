"""``synkafka feed-consume``'s loop: one member of a group reading the event feed.

The calling thread polls the feed topic as a member of a consumer group
(:class:`~adapter.io.kafka.group_consumer.GroupConsumer`, cooperative-sticky) and
queues each record in a :class:`~adapter.core.feed_reader.RoomScheduler`; a pool of
worker threads takes records from it, one at a time per room, many rooms at once,
and runs the handler (:class:`~adapter.runtime.feed_handling.HandlerCaller`). A
record is *finished* once its handler returned, or once it was dead-lettered; the
poll loop commits, per partition, only past the finished prefix
(:class:`~adapter.core.feed_reader.CommitTracker`). So a crash re-delivers what was
not finished, and never skips it.

When the group takes partitions away (another member joined), the queued records of
those partitions are dropped, the running ones are waited for (up to
``revoke_timeout_s``), and what finished is committed before they are released: the
next owner starts exactly after it. Lost partitions (this member's session expired)
are dropped without a commit; their new owner has taken over already.

Backpressure: past ``max_queued`` waiting records the member pauses fetching (it
stays in the group and keeps heartbeating) until half of them are done.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from adapter.core.errors import (
    AdapterError,
    DecodeError,
    KafkaIOError,
    SinkError,
)
from adapter.core.feed_reader import CommitTracker, RoomScheduler, Work
from adapter.io.kafka.group_consumer import GroupConsumer, Message, RebalanceListener
from adapter.io.metrics import Metrics
from adapter.runtime.feed_handling import (
    FeedHandler,
    GaveUp,
    HandlerCaller,
    decode_feed_value,
)

__all__ = ["DeadLetter", "FeedReader", "FeedReaderOptions"]

logger = logging.getLogger(__name__)

HandlerPolicy = Literal["dead-letter", "stop"]

#: Commit refusals that only mean the group is rebalancing.
_REBALANCING = frozenset(
    {"ILLEGAL_GENERATION", "REBALANCE_IN_PROGRESS", "UNKNOWN_MEMBER_ID"}
)


class DeadLetter(Protocol):
    """Writes a feed record to the dead-letter topic; returns once acknowledged."""

    def __call__(self, message: Message, reason: str) -> None:
        """Dead-letter ``message`` because of ``reason``."""


@dataclass(frozen=True, slots=True)
class FeedReaderOptions:
    """How one member runs.

    Attributes:
        concurrency: rooms handled at once (worker threads).
        policy: what to do with an event whose handler keeps failing: ``stop``
            (exit, committing nothing past it) or ``dead-letter`` (and go on).
        handler_retries: attempts before the policy applies.
        commit_interval_s: seconds between commits.
        max_queued: waiting records above which fetching pauses.
        revoke_timeout_s: how long a revocation waits for running handlers.
        poll_timeout_s: how long one poll waits.
    """

    concurrency: int = 8
    policy: HandlerPolicy = "stop"
    handler_retries: int = 5
    commit_interval_s: float = 1.0
    max_queued: int = 2000
    revoke_timeout_s: float = 30.0
    poll_timeout_s: float = 0.2


class FeedReader(RebalanceListener):
    """One member of a feed reader group.

    Args:
        open_consumer: builds the group consumer, given this reader as its
            rebalance listener and its statistics callback.
        handler: called once per event.
        dead_letter: writes records to the dead-letter topic.
        options: see :class:`FeedReaderOptions`.
        metrics: where to count.
    """

    def __init__(
        self,
        open_consumer: Callable[
            [RebalanceListener, Callable[[dict[str, object]], None]], GroupConsumer
        ],
        handler: FeedHandler,
        dead_letter: DeadLetter,
        options: FeedReaderOptions,
        metrics: Metrics,
    ) -> None:
        self._open_consumer = open_consumer
        self._dead_letter = dead_letter
        self._options = options
        self._metrics = metrics
        self._stop = threading.Event()
        self._caller = HandlerCaller(
            handler, metrics, retries=options.handler_retries, stop=self._stop
        )
        self._cond = threading.Condition()
        self._scheduler: RoomScheduler[Message] = RoomScheduler()
        self._tracker = CommitTracker()
        self._assigned: set[int] = set()
        self._paused: set[int] = set()
        self._consumer: GroupConsumer | None = None
        self._workers_done = False
        self.failure: BaseException | None = None
        """Why the member stopped on its own (a handler that kept failing), if it did."""
        self.handled = 0
        """Events handled so far."""
        self.dead_lettered = 0
        """Records dead-lettered so far."""

    @property
    def assigned_partitions(self) -> list[int]:
        """The feed partitions this member reads now."""
        with self._cond:
            return sorted(self._assigned)

    @property
    def healthy(self) -> bool:
        """False once a handler failure stopped the member."""
        return self.failure is None

    # -- the poll loop --------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Read, handle and commit until ``stop`` is set or a handler stops the member.

        Raises:
            AdapterError: a handler kept failing under the ``stop`` policy, or its
                output failed (nothing past the record was committed).
            KafkaIOError: the broker failed in a way polling cannot get past.
        """
        consumer = self._open_consumer(self, self._on_stats)
        self._consumer = consumer
        workers = [
            threading.Thread(
                target=self._work, name=f"synkafka-feed-worker-{n}", daemon=True
            )
            for n in range(self._options.concurrency)
        ]
        for worker in workers:
            worker.start()
        consumer.subscribe()
        next_commit = time.monotonic() + self._options.commit_interval_s
        # A poll that raised may have moved the position past records it never
        # returned: then the last commit goes by the finished records alone.
        polls_done = False
        try:
            while not stop.is_set() and self.failure is None:
                self._enqueue(consumer.poll(500, self._options.poll_timeout_s))
                self._flow(consumer)
                if time.monotonic() >= next_commit:
                    self._commit(None, between_polls=True)
                    next_commit = time.monotonic() + self._options.commit_interval_s
            polls_done = True
        finally:
            self._shut_down(consumer, workers, between_polls=polls_done)
        if self.failure is not None:
            raise self.failure

    def _enqueue(self, messages: list[Message]) -> None:
        if not messages:
            return
        with self._cond:
            for message in messages:
                partition, offset = message.partition(), message.offset()
                # A record fetched before its partition was revoked is not ours.
                if (
                    partition is None
                    or offset is None
                    or partition not in self._assigned
                ):
                    continue
                self._tracker.read(partition, offset)
                self._scheduler.add(Work(partition, offset, message.key(), message))
            self._cond.notify_all()

    def _flow(self, consumer: GroupConsumer) -> None:
        """Pause fetching while too much waits; resume once half of it is done."""
        with self._cond:
            queued = self._scheduler.queued
            assigned = set(self._assigned)
        self._paused &= assigned
        limit = self._options.max_queued
        if queued >= limit or (self._paused and queued > limit // 2):
            more = sorted(assigned - self._paused)
            consumer.pause(more)
            self._paused |= set(more)
        elif self._paused:
            consumer.resume(sorted(self._paused))
            self._paused.clear()

    def _commit(
        self, partitions: Collection[int] | None, *, between_polls: bool = False
    ) -> dict[int, int]:
        """Commit the finished prefix of ``partitions`` (all when ``None``).

        ``between_polls``: no poll is under way, so the consumer's positions count
        (past transaction markers; see :meth:`CommitTracker.passed`). Not so in a
        rebalance callback, which runs inside a poll.

        Returns what was committed (empty when nothing moved or the commit failed).
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        if between_polls:
            with self._cond:
                assigned = sorted(self._assigned)
            try:
                positions = consumer.positions(assigned)
            except KafkaIOError as exc:
                logger.info("feed reader positions unknown: %s", exc)
                positions = {}
            with self._cond:
                for partition, position in positions.items():
                    self._tracker.passed(partition, position)
        with self._cond:
            offsets = self._tracker.to_commit(partitions)
        if not offsets:
            return {}
        try:
            consumer.commit(offsets)
        except KafkaIOError as exc:
            # The next commit (or the next owner, from the last commit) covers it.
            # During a rebalance the group refuses commits of the old generation:
            # expected, so not a warning.
            level = logging.INFO if exc.code in _REBALANCING else logging.WARNING
            logger.log(level, "commit of the feed reader's offsets failed: %s", exc)
            return {}
        with self._cond:
            self._tracker.committed(offsets)
        return offsets

    def _shut_down(
        self,
        consumer: GroupConsumer,
        workers: list[threading.Thread],
        *,
        between_polls: bool,
    ) -> None:
        """Finish what runs, commit it, leave the group, end the workers."""
        self._stop.set()
        with self._cond:
            self._scheduler.drop(set(self._assigned))
            self._wait_running(None, self._options.revoke_timeout_s)
        self._commit(None, between_polls=between_polls)
        consumer.close()  # revokes what is left: nothing runs, nothing new to commit
        with self._cond:
            self._workers_done = True
            self._cond.notify_all()
        for worker in workers:
            worker.join(5.0)
        self._caller.close()
        logger.info(
            "feed reader stopped: %d events handled, %d dead-lettered",
            self.handled,
            self.dead_lettered,
        )

    def _wait_running(
        self, partitions: Collection[int] | None, timeout_s: float
    ) -> bool:
        """With the lock held: wait until nothing runs in ``partitions``."""
        deadline = time.monotonic() + timeout_s
        while self._scheduler.running(partitions):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(min(left, 0.5))
        return True

    # -- rebalance callbacks (run inside poll, in the poll loop's thread) -----------

    def assigned(self, partitions: list[int]) -> None:
        """Start reading ``partitions`` (from their committed offsets)."""
        with self._cond:
            self._assigned |= set(partitions)
            count = len(self._assigned)
        self._metrics.feed_reader_partitions.set(count)
        logger.info("assigned partitions %s (now %d)", partitions, count)

    def revoked(self, partitions: list[int]) -> None:
        """Finish the running records of ``partitions``, commit them, let them go."""
        gone = set(partitions)
        with self._cond:
            dropped = self._scheduler.drop(gone)
            if not self._wait_running(gone, self._options.revoke_timeout_s):
                logger.warning(
                    "handlers of partitions %s still running after %.0f s; releasing "
                    "them anyway (their records will be handled again)",
                    partitions,
                    self._options.revoke_timeout_s,
                )
                self._scheduler.drop(gone, running=True)
        committed = self._commit(gone)
        self._release(gone)
        logger.info(
            "revoked partitions %s: committed %s, %d queued records left for the "
            "next owner",
            partitions,
            committed or "nothing new",
            dropped,
        )

    def lost(self, partitions: list[int]) -> None:
        """Drop ``partitions`` at once: another member owns them already."""
        gone = set(partitions)
        with self._cond:
            self._scheduler.drop(gone, running=True)
        self._release(gone)
        logger.warning("lost partitions %s (session expired)", partitions)

    def _release(self, gone: set[int]) -> None:
        with self._cond:
            self._tracker.forget(gone)
            self._assigned -= gone
            count = len(self._assigned)
        # The client remembers a pause across a revocation: a partition released
        # paused would come back paused, and never be read again.
        paused = sorted(self._paused & gone)
        if paused and self._consumer is not None:
            self._consumer.resume(paused)
        self._paused -= gone
        self._metrics.feed_reader_partitions.set(count)
        for partition in gone:
            with contextlib.suppress(KeyError):
                self._metrics.feed_reader_lag.remove(str(partition))

    # -- workers ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                work = self._scheduler.take()
                while work is None:
                    if self._workers_done:
                        return
                    self._cond.wait()
                    work = self._scheduler.take()
            outcome = self._handle(work.payload)
            with self._cond:
                if outcome is None:
                    # Not finished: nothing of its partition may run or be committed
                    # past it any more, and the member stops.
                    self._scheduler.drop({work.partition}, running=True)
                else:
                    self._scheduler.done(work)
                    self._tracker.finish(work.partition, work.offset)
                    if outcome == "handled":
                        self.handled += 1
                    else:
                        self.dead_lettered += 1
                self._cond.notify_all()
            if outcome is not None:
                self._metrics.feed_reader_events.labels(outcome).inc()

    def _handle(self, message: Message) -> Literal["handled", "dead-lettered"] | None:
        """Handle one record: how it finished, or ``None`` when it did not."""
        try:
            try:
                event = decode_feed_value(message.value(), message.headers())
            except DecodeError as exc:
                # Bad input never stops a reader, whatever the handler policy.
                self._dead_letter(message, f"decode: {exc}")
                return "dead-lettered"
            try:
                self._caller(event)
            except GaveUp as exc:
                if self._options.policy != "dead-letter":
                    raise AdapterError(
                        f"{exc}; stopping without committing past "
                        f"{message.topic()}[{message.partition()}]@{message.offset()} "
                        f"(event {event.event_id})"
                    ) from exc
                self._dead_letter(message, str(exc))
                return "dead-lettered"
        except (AdapterError, SinkError) as exc:
            with self._cond:
                # Cut short by a stop (a retry wait, a dead letter that could not
                # get through): not a failure of its own.
                if self.failure is None and not self._stop.is_set():
                    self.failure = exc
            return None
        return "handled"

    # -- statistics -------------------------------------------------------------------

    def _on_stats(self, stats: Mapping[str, object]) -> None:
        """Export per-partition lag (messages) of the partitions this member reads."""
        consumer = self._consumer
        topics = stats.get("topics")
        if consumer is None or not isinstance(topics, dict):
            return
        tstats = topics.get(consumer.topic)
        partitions = tstats.get("partitions") if isinstance(tstats, dict) else None
        if not isinstance(partitions, dict):
            return
        with self._cond:
            mine = {str(p) for p in self._assigned}
        for pid, pstats in partitions.items():
            if pid not in mine or not isinstance(pstats, dict):
                continue
            lag = pstats.get("consumer_lag")
            if isinstance(lag, int) and lag >= 0:
                self._metrics.feed_reader_lag.labels(pid).set(lag)
