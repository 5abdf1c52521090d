"""The replication consumer: committed offset as POSITION, database backfill, then live.

The algorithm (docs/architecture.md, "The consumer in short"), step by step:

1. **Start.** Read the group's committed offsets; the commit metadata of each partition
   holds the stream's token map, so the committed offset *is* the POSITION.
2. **Pin the head.** Note every partition's high watermark *before* reading the
   database positions: a writer persists a row before it publishes it, so every record
   below the pinned head has a token at or below the positions read afterwards.
3. **Catch up** as :func:`adapter.core.catchup.plan_stream_start` decides. ``database``
   (default): for each writer behind its database position, read the missing rows
   from the database (not by replaying old Kafka records) in the stream's worker, in
   token order, before any live record of that stream. ``kafka``: replay Kafka from
   the committed offset and read from the database only what Kafka lacks.
4. **Live.** Consume from the pinned head and let :class:`PositionTracker` decide:
   duplicates are dropped, a POSITION past our token triggers a backfill, a reset
   stream is followed.
5. **Commit** only what the handlers finished, with the token map as metadata.
6. **Caught up** per stream once the pinned head is reached and the backfill is done;
   the reconnect backoff is reset only once *every* stream is caught up.

Streams without a database source (typing, federation, presence_federation, or any
stream when no database is configured) cannot be backfilled: they resume from their
committed offset and replay what Kafka still holds.

This module holds the outer loop (retries, one attempt, the poll loop, shutdown). Its
parts: :mod:`~adapter.runtime.consumer_options` (what to follow and how),
:mod:`~adapter.runtime.consumer_start` (steps 1 to 3: read, decide, apply),
:mod:`~adapter.runtime.consumer_dispatch` (step 4: records to work),
:mod:`~adapter.runtime.consumer_commit` (step 5),
:mod:`~adapter.runtime.consumer_dead_letters` and
:mod:`~adapter.runtime.consumer_streams` (the per-stream state they share).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from adapter.core import topics
from adapter.core.backoff import Backoff
from adapter.core.config import KafkaSettings
from adapter.core.errors import (
    AdapterError,
    BackfillError,
    ConfigError,
    KafkaIOError,
    SinkError,
    exception_summary,
)
from adapter.core.ports import BackfillReader, Handler
from adapter.core.positions import PositionTracker
from adapter.io.kafka.client import connected_to_a_broker
from adapter.io.kafka.consumer import Consumer, PartitionStart
from adapter.io.metrics import Metrics
from adapter.runtime.consumer_commit import OffsetCommits
from adapter.runtime.consumer_dead_letters import ConsumerDeadLetters
from adapter.runtime.consumer_dispatch import Dispatcher
from adapter.runtime.consumer_options import (
    CatchUp,
    ConsumerOptions,
    StartFrom,
)
from adapter.runtime.consumer_start import (
    apply_start,
    decide_start,
    open_streams,
    read_start,
    settle_at_head,
)
from adapter.runtime.consumer_streams import StreamState
from adapter.runtime.health import DependencyStatus
from adapter.runtime.progress import Progress
from adapter.runtime.stream_worker import StreamWorker, Work

__all__ = [
    "CatchUp",
    "ConsumerOptions",
    "ReplicationConsumer",
    "StartFrom",
]

logger = logging.getLogger(__name__)


_FATAL_CODES = frozenset(
    {
        "_AUTHENTICATION",
        "_SSL",
        "SASL_AUTHENTICATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "TOPIC_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "_UNKNOWN_TOPIC",
        "UNKNOWN_TOPIC_OR_PART",
    }
)


class ReplicationConsumer:
    """Follows replication streams on Kafka and hands every row to handlers once.

    Args:
        kafka: how to reach the cluster.
        options: what to follow and how.
        handlers: one handler per stream name, or one for every stream.
        open_reader: opens a database reader for backfill; None without a database.
        metrics: where to report.
        backoff: the reconnect backoff.
        before_commit: called before every commit, after the finished work is read:
            makes the handlers' output durable (``JsonLinesSink.sync``). If it
            raises, nothing is committed.
        database: where the outcome of opening and reading the database is kept for
            ``/health`` (a new one by default).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        options: ConsumerOptions,
        handlers: Mapping[str, Handler] | Handler,
        *,
        open_reader: Callable[[], BackfillReader] | None,
        metrics: Metrics,
        backoff: Backoff | None = None,
        before_commit: Callable[[], None] | None = None,
        database: DependencyStatus | None = None,
    ) -> None:
        if not options.streams:
            raise AdapterError("no streams to follow")
        self._kafka = kafka
        self._options = options
        self._handlers = handlers
        self._open_reader = open_reader
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self._commits = OffsetCommits(before_commit)
        self._dead_letters = ConsumerDeadLetters(
            kafka,
            options.prefix,
            options.instance_name,
            metrics,
            stop_event=lambda: self._stop_event,
        )
        self.database = database or DependencyStatus()
        """The last outcome of opening or reading the database (for ``/health``)."""
        self._streams: dict[str, StreamState] = {}
        self._by_topic: dict[str, StreamState] = {}
        self._lock = threading.Lock()
        # Streams with writers to settle at the pinned head (retention, kafka
        # catch-up): their database positions read at start.
        self._unsettled: dict[str, dict[str, int]] = {}
        self._stop_event: threading.Event | None = None
        self.attempts = 0
        self.broker_up = False

    # -- status ---------------------------------------------------------------------

    def caught_up(self) -> dict[str, bool]:
        """Per stream: pinned head reached and backfill done."""
        with self._lock:
            if not self._streams:
                # Not set up yet: nothing is caught up (so /ready says 503).
                return dict.fromkeys(self._options.streams, False)
            return {s.name: s.caught_up for s in self._streams.values()}

    def progress(self) -> Progress:
        """A sample for the progress display."""
        with self._lock:
            states = list(self._streams.values())
        remaining = int(
            sum(
                sample.value
                for metric in self._metrics.backfill_remaining_tokens.collect()
                for sample in metric.samples
            )
        )
        return Progress(
            rows=sum(s.worker.rows_handled for s in states),
            backfill_rows=sum(s.worker.rows_backfilled for s in states),
            remaining_tokens=remaining,
            caught_up=sum(1 for s in states if s.caught_up),
            streams=len(self._options.streams),
        )

    def rows_handled(self) -> dict[str, tuple[int, int]]:
        """Per stream: ``(rows handled in total, of which from backfill)``."""
        with self._lock:
            return {
                s.name: (s.worker.rows_handled, s.worker.rows_backfilled)
                for s in self._streams.values()
            }

    # -- the outer loop ---------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; retry failures with backoff.

        Process-wide interpreter settings are left alone: the process owner may apply
        :func:`adapter.runtime.interpreter.tuned` around this call, as ``synkafka
        consume`` does.

        Raises:
            AdapterError: a failure that retrying cannot fix (bad credentials after
                ``fatal_attempts`` tries, a handler that keeps failing with the
                ``stop`` policy).
        """
        self._stop_event = stop
        self._run_with_retries(stop)

    def _run_with_retries(self, stop: threading.Event) -> None:
        fatal_failures = 0
        while not stop.is_set():
            self.attempts += 1
            try:
                self._run_once(stop)
            except ConfigError as exc:
                # Wrong settings (a database that does not exist, a refused
                # password): waiting will not change them.
                if isinstance(exc, BackfillError):
                    self.database.failed(str(exc))
                raise
            except (KafkaIOError, BackfillError) as exc:
                if isinstance(exc, BackfillError):
                    self.database.failed(str(exc))
                fatal = (
                    isinstance(exc, KafkaIOError) and exc.code in _FATAL_CODES
                ) or (isinstance(exc, BackfillError) and not exc.retriable)
                fatal_failures = fatal_failures + 1 if fatal else 0
                if fatal_failures >= self._options.fatal_attempts:
                    raise
                delay = self._backoff.next_delay()
                self._metrics.reconnects.labels("consumer").inc()
                self._metrics.backoff_seconds.labels("consumer").set(delay)
                logger.warning("consumer failed: %s; retrying in %.1f s", exc, delay)
                stop.wait(delay)
            else:
                return

    # -- one attempt ----------------------------------------------------------------

    def _run_once(self, stop: threading.Event) -> None:
        opts = self._options
        consumer = Consumer(
            self._kafka,
            topics.consumer_group(opts.prefix, opts.instance_name),
            client_id=f"synkafka-{opts.instance_name}",
            extra={"statistics.interval.ms": "5000", **opts.kafka_extra},
            on_stats=self._on_stats,
        )
        reader: BackfillReader | None = None
        worker_stop = threading.Event()
        stopped = False
        try:
            reader = self._open_reader() if self._open_reader is not None else None
            if reader is not None:
                self.database.succeeded()
            dispatcher = self._set_up(consumer, reader, worker_stop)
            if reader is not None:
                reader.close()
                reader = None
            self._loop(consumer, dispatcher, stop)
            stopped = True
        finally:
            if reader is not None:
                reader.close()
            self._shut_down(consumer, worker_stop, stopped=stopped)
        # A handler that failed while the queued work drained.
        self._check_workers()

    def _handler_for(self, stream: str) -> Handler | None:
        handlers = self._handlers
        if callable(handlers):
            return handlers
        return handlers.get(stream)

    def _new_worker(
        self, stream: str, has_source: bool, worker_stop: threading.Event
    ) -> StreamWorker:
        opts = self._options
        return StreamWorker(
            stream,
            self._handler_for(stream),
            open_reader=self._open_reader if has_source else None,
            metrics=self._metrics,
            dead_letter=self._dead_letters.update,
            policy=opts.handler_policy,
            handler_retries=opts.handler_retries,
            max_batches=opts.max_batches,
            stop_event=worker_stop,
        )

    def _set_up(
        self,
        consumer: Consumer,
        reader: BackfillReader | None,
        worker_stop: threading.Event,
    ) -> Dispatcher:
        """Steps 1 to 3 (:mod:`adapter.runtime.consumer_start`): read, decide, apply."""
        opts = self._options
        states = open_streams(
            consumer,
            opts.prefix,
            opts.streams,
            reader,
            lambda stream, has_source: self._new_worker(
                stream, has_source, worker_stop
            ),
        )
        read = read_start(consumer, reader, states)
        tracker = PositionTracker(
            database_streams=frozenset(s.name for s in states.values() if s.has_source)
        )
        self._unsettled = {}
        initial: dict[str, list[Work]] = {}
        for state in states.values():
            plan = decide_start(opts, state, read[state.name])
            initial[state.name] = apply_start(
                state, read[state.name], plan, tracker, self._metrics
            )
            if plan.unverified:
                self._unsettled[state.name] = dict(plan.settle)
        self._commits.forget(
            (s.topic, p) for s in states.values() for p in s.partitions
        )
        with self._lock:
            self._streams = states
            self._by_topic = {s.topic: s for s in states.values()}
        for state in states.values():
            state.worker.start()
            if initial[state.name]:
                state.pending.append(initial[state.name])
        consumer.assign(
            [
                PartitionStart(s.topic, p, s.start[p])
                for s in states.values()
                for p in s.partitions
            ]
        )
        return Dispatcher(states, tracker, self._metrics, self._dead_letters)

    # -- steps 4 and 5 --------------------------------------------------------------

    def _loop(
        self, consumer: Consumer, dispatcher: Dispatcher, stop: threading.Event
    ) -> None:
        opts = self._options
        next_commit = time.monotonic() + opts.commit_interval_s
        all_caught_up = False
        while not stop.is_set():
            self._check_workers()
            if self._unsettled:
                settle_at_head(
                    consumer, self._streams, self._unsettled, dispatcher.tracker
                )
            self._flush_pending(consumer)
            messages = consumer.poll_messages(opts.poll_batch, 0.1)
            if messages:
                dispatcher.dispatch(messages)
                self._flush_pending(consumer)
            now = time.monotonic()
            if now >= next_commit:
                self._commits.commit(consumer, self._streams.values())
                next_commit = now + opts.commit_interval_s
                if self._update_caught_up() and not all_caught_up:
                    all_caught_up = True
                    # Only a consumer that caught up on every stream counts as healthy
                    # (the intent of matrix-org/synapse#4749).
                    self._backoff.reset()
                    self._metrics.backoff_seconds.labels("consumer").set(0)
                    logger.info("caught up on every stream")
        self._check_workers()

    def _flush_pending(self, consumer: Consumer) -> None:
        """Hand pending batches to workers; pause a stream whose queue is full."""
        for state in self._streams.values():
            while state.pending:
                if not state.worker.offer(state.pending[0]):
                    break
                state.pending.pop(0)
            full = bool(state.pending)
            if full and not state.paused:
                consumer.pause((state.topic, p) for p in state.partitions)
                state.paused = True
            elif not full and state.paused:
                consumer.resume((state.topic, p) for p in state.partitions)
                state.paused = False

    def _check_workers(self) -> None:
        for state in self._streams.values():
            failure = state.worker.failure
            if failure is not None:
                if isinstance(failure, AdapterError):
                    raise failure
                raise AdapterError(
                    f"stream {state.name} failed: {exception_summary(failure)}"
                ) from failure

    def _update_caught_up(self) -> bool:
        all_up = True
        for state in self._streams.values():
            done, _ = state.worker.progress()
            backfilling = state.initial_backfill_left()
            reached = all(
                state.head[p] <= max(state.start.get(p, 0), 0)
                or done.get((state.topic, p), -1) + 1 >= state.head[p]
                for p in state.partitions
            )
            up = reached and not backfilling
            if up != state.caught_up:
                with self._lock:
                    state.caught_up = up
                self._metrics.caught_up.labels(state.name).set(1 if up else 0)
                if up:
                    logger.info("%s: caught up", state.name)
            all_up = all_up and up
        return all_up

    def _shut_down(
        self, consumer: Consumer, worker_stop: threading.Event, *, stopped: bool
    ) -> None:
        """Finish in-flight handlers, commit what finished, close.

        ``stopped``: a requested stop (not a failure); its final commit is logged.
        """
        timeout = self._options.shutdown_timeout_s
        failed = any(s.worker.failure is not None for s in self._streams.values())
        if failed:
            worker_stop.set()
        for state in self._streams.values():
            if not state.worker.stop(timeout):
                worker_stop.set()
                logger.warning(
                    "%s: handler did not finish within %.0f s", state.name, timeout
                )
        try:
            self._commits.commit(consumer, self._streams.values())
            if stopped and not any(
                s.worker.failure is not None for s in self._streams.values()
            ):
                logger.info(
                    "stopped; committed %s",
                    self._commits.summary(self._streams.values()),
                )
        except (KafkaIOError, SinkError) as exc:
            logger.warning("final commit failed: %s", exc)
        finally:
            consumer.close()
            self._dead_letters.close()

    # -- statistics ---------------------------------------------------------------------

    def _on_stats(self, stats: Mapping[str, object]) -> None:
        """Export per-partition consumer lag from librdkafka's statistics."""
        if isinstance(stats.get("brokers"), dict):
            self.broker_up = connected_to_a_broker(stats)
        topics_stats = stats.get("topics")
        if not isinstance(topics_stats, dict):
            return
        for topic, tstats in topics_stats.items():
            if topic not in self._by_topic or not isinstance(tstats, dict):
                continue
            partitions = tstats.get("partitions")
            if not isinstance(partitions, dict):
                continue
            for pid, pstats in partitions.items():
                if pid == "-1" or not isinstance(pstats, dict):
                    continue
                lag = pstats.get("consumer_lag")
                if isinstance(lag, int) and lag >= 0:
                    self._metrics.consumer_lag_messages.labels(topic, pid).set(lag)
