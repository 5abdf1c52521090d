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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import assert_never

from adapter.codec.avro_codec import decode_update
from adapter.core import topics
from adapter.core.backoff import Backoff
from adapter.core.catchup import (
    CatchUp,
    PartitionMark,
    StartFrom,
    StreamStart,
    plan_stream_start,
)
from adapter.core.commands import PositionCommand, RdataCommand
from adapter.core.config import KafkaSettings
from adapter.core.errors import (
    AdapterError,
    BackfillError,
    ConfigError,
    DecodeError,
    KafkaIOError,
    SinkError,
    exception_summary,
)
from adapter.core.ports import BackfillReader, Handler, StreamUpdate, make_update
from adapter.core.positions import (
    Apply,
    Backfill,
    Decision,
    Drop,
    Gap,
    PositionTracker,
    Reset,
    decode_commit_metadata,
    encode_commit_metadata,
)
from adapter.io.kafka.client import connected_to_a_broker
from adapter.io.kafka.consumer import (
    BEGINNING,
    Committed,
    Consumer,
    Message,
    PartitionStart,
    record_of,
)
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import Metrics
from adapter.runtime.dead_letter_writer import DeadLetterWriter
from adapter.runtime.health import DependencyStatus
from adapter.runtime.progress import Progress
from adapter.runtime.stream_worker import (
    BackfillWork,
    HandlerPolicy,
    StreamWorker,
    UpdateWork,
    Work,
)

__all__ = [
    "CatchUp",
    "ConsumerOptions",
    "ReplicationConsumer",
    "StartFrom",
]

logger = logging.getLogger(__name__)

TP = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """What a replication consumer follows and how.

    Attributes:
        prefix: the topic prefix (``synapse.<server_name>``).
        instance_name: this consumer's name; its group is ``<prefix>.<instance_name>``.
        streams: the streams to follow.
        start_from: ``committed`` (default: resume, see ``catch_up``), ``latest``
            (ignore commits, start at the head), ``earliest`` (replay Kafka).
        catch_up: how a resumed stream with a database source reads what it missed:
            ``database`` (default: skip Kafka to the pinned head, read the latest
            state from the database, as Synapse does) or ``kafka`` (replay Kafka from
            the committed offset, read only the tokens Kafka lacks from the
            database); see :mod:`adapter.core.catchup`.
        commit_interval_s: how often finished work is committed.
        poll_batch: records fetched per poll.
        max_batches: per-stream queue bound, in poll batches (backpressure).
        handler_policy: ``stop`` or ``dead-letter`` for a handler that keeps failing.
        handler_retries: handler attempts before the policy applies.
        shutdown_timeout_s: how long in-flight handlers may take on shutdown.
        fatal_attempts: setup attempts before an error that will not heal by itself
            (authentication, authorization) ends the run.
        kafka_extra: extra librdkafka properties for the consumer.
    """

    prefix: str
    instance_name: str
    streams: tuple[str, ...]
    start_from: StartFrom = "committed"
    catch_up: CatchUp = "database"
    commit_interval_s: float = 1.0
    poll_batch: int = 1000
    max_batches: int = 64
    handler_policy: HandlerPolicy = "stop"
    handler_retries: int = 5
    shutdown_timeout_s: float = 30.0
    fatal_attempts: int = 3
    kafka_extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _StreamState:
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


def _held(tracker: PositionTracker, decision: Drop) -> tuple[str, int] | None:
    """The writer's token after a dropped record, so the commit records the writer.

    A writer first seen in a dropped record (a stale POSITION of a new writer starts it
    at the stream's minimum) would otherwise never reach the commit metadata, and lag
    readers would count it from token 0.
    """
    token = tracker.token(decision.stream, decision.writer)
    return None if token is None else (decision.writer, token)


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
        clock: monotonic seconds (tests may pass a fake).
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
        self._before_commit = before_commit
        self.database = database or DependencyStatus()
        """The last outcome of opening or reading the database (for ``/health``)."""
        self._streams: dict[str, _StreamState] = {}
        self._by_topic: dict[str, _StreamState] = {}
        self._lock = threading.Lock()
        # Per partition: the last committed offset and the token map it carried.
        self._committed: dict[TP, tuple[int, str]] = {}
        # Streams with writers to settle at the pinned head (retention, kafka
        # catch-up): their database positions read at start.
        self._unsettled: dict[str, dict[str, int]] = {}
        self._dead_letters: DeadLetterWriter | None = None
        self._stop_event: threading.Event | None = None
        self.attempts = 0
        self.records_seen = 0
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
            tracker = self._set_up(consumer, reader, worker_stop)
            if reader is not None:
                reader.close()
                reader = None
            self._loop(consumer, tracker, stop)
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

    def _set_up(
        self,
        consumer: Consumer,
        reader: BackfillReader | None,
        worker_stop: threading.Event,
    ) -> PositionTracker:
        """Steps 1 to 3: committed offsets, pinned heads, database positions, backfill."""
        opts = self._options
        states: dict[str, _StreamState] = {}
        self._unsettled = {}
        for stream in opts.streams:
            topic = topics.stream_topic(opts.prefix, stream)
            partitions = consumer.partitions(topic)
            if not partitions:
                raise KafkaIOError(
                    topics.missing_topic_message(topic, opts.prefix),
                    code="_UNKNOWN_TOPIC",
                    retriable=True,
                )
            has_source = reader is not None and reader.has_source(stream)
            worker = StreamWorker(
                stream,
                self._handler_for(stream),
                open_reader=self._open_reader if has_source else None,
                metrics=self._metrics,
                dead_letter=self._dead_letter_update,
                policy=opts.handler_policy,
                handler_retries=opts.handler_retries,
                max_batches=opts.max_batches,
                stop_event=worker_stop,
            )
            states[stream] = _StreamState(stream, topic, partitions, worker, has_source)
        committed = {
            (c.topic, c.partition): c
            for c in consumer.committed(
                [(s.topic, p) for s in states.values() for p in s.partitions]
            )
        }
        # Pin the heads before reading database positions (see the module docstring).
        lows: dict[TP, int] = {}
        for state in states.values():
            for p in state.partitions:
                lows[(state.topic, p)], state.head[p] = consumer.watermarks(
                    state.topic, p
                )

        tracker = PositionTracker(
            database_streams=frozenset(s.name for s in states.values() if s.has_source)
        )
        starts: list[PartitionStart] = []
        initial: dict[str, list[Work]] = {}
        for state in states.values():
            marks = [committed.get((state.topic, p)) for p in state.partitions]
            db_positions = (
                reader.positions(state.name) if (reader and state.has_source) else {}
            )
            plan = plan_stream_start(
                start_from=opts.start_from,
                catch_up=opts.catch_up,
                has_source=state.has_source,
                marks=[
                    PartitionMark(
                        p,
                        None if c is None else c.offset,
                        lows[(state.topic, p)],
                        state.head[p],
                    )
                    for p, c in zip(state.partitions, marks, strict=True)
                ],
                committed_tokens=self._committed_tokens(state.name, marks),
                db_positions=db_positions,
            )
            self._apply_start(state, plan, tracker, initial, db_positions)
            for p in state.partitions:
                self._committed[(state.topic, p)] = (-1, "")
                starts.append(PartitionStart(state.topic, p, state.start[p]))

        with self._lock:
            self._streams = states
            self._by_topic = {s.topic: s for s in states.values()}
        for state in states.values():
            state.worker.start()
            if state.name in initial:
                state.pending.append(initial[state.name])
        consumer.assign(starts)
        return tracker

    @staticmethod
    def _committed_tokens(
        stream: str, marks: Sequence[Committed | None]
    ) -> dict[str, int] | None:
        """The stream's token map from its partitions' commits; None if none is ours."""
        tokens: dict[str, int] = {}
        has_metadata = False
        for c in marks:
            if c is None or not c.metadata:
                continue
            try:
                decoded = decode_commit_metadata(c.metadata)
            except DecodeError as exc:
                # Someone else's commit (a manual offset reset): no tokens.
                logger.warning(
                    "%s[%d]: commit metadata is not ours (%s); replaying from the "
                    "committed offset",
                    c.topic,
                    c.partition,
                    exc.reason,
                )
                continue
            has_metadata = True
            for (name, writer), token in decoded.items():
                if name == stream:
                    tokens[writer] = max(token, tokens.get(writer, token))
        return tokens if has_metadata else None

    def _apply_start(
        self,
        state: _StreamState,
        plan: StreamStart,
        tracker: PositionTracker,
        initial: dict[str, list[Work]],
        db_positions: Mapping[str, int],
    ) -> None:
        """Set up one stream as :func:`plan_stream_start` decided."""
        state.start = {
            p: BEGINNING if offset is None else offset
            for p, offset in plan.offsets.items()
        }
        for writer, token in plan.tokens.items():
            tracker.seed(state.name, writer, token)
            self._metrics.stream_position.labels(state.name, writer).set(token)
        for writer, token in plan.unverified.items():
            tracker.seed_unverified(state.name, writer, token)
            self._metrics.stream_position.labels(state.name, writer).set(token)
        if plan.unverified:
            self._unsettled[state.name] = dict(db_positions)
        state.worker.seed(plan.handled)
        work: list[Work] = []
        for b in plan.backfills:
            work.append(BackfillWork(b.writer, b.from_token, b.to_token, initial=True))
            self._metrics.backfill_remaining_tokens.labels(state.name, b.writer).set(
                b.to_token - b.from_token
            )
        if work:
            initial[state.name] = work
            logger.info(
                "%s: backfilling %d writer(s) from the database before going live",
                state.name,
                len(work),
            )
        for p in plan.lost:
            # Retention deleted records this consumer had not read.
            if plan.unverified:
                logger.warning(
                    "%s[%d]: records after the committed offset were deleted by "
                    "retention; the tokens Kafka lacks are read from the database",
                    state.topic,
                    p,
                )
            else:
                self._metrics.backfills.labels(state.name, "unavailable").inc()
                logger.warning(
                    "%s[%d]: records after the committed offset were deleted by "
                    "retention and cannot be read back",
                    state.topic,
                    p,
                )
        logger.debug("%s: start %s at %s", state.name, plan.case, state.start)

    def _settle_at_head(self, consumer: Consumer, tracker: PositionTracker) -> None:
        """Backfill writers that had no record on Kafka up to the pinned head.

        Only after retention deleted records of a ``--catch-up kafka`` consumer
        (:class:`StreamStart` ``unverified``); checked once per poll until settled.
        """
        for name in list(self._unsettled):
            state = self._streams[name]
            positions = consumer.positions((state.topic, p) for p in state.partitions)
            reached = all(
                state.head[p] <= state.start[p] or positions.get(p, -1) >= state.head[p]
                for p in state.partitions
            )
            if not reached:
                continue
            db_positions = self._unsettled.pop(name)
            work: list[Work] = []
            for writer, token in sorted(tracker.unverified(name).items()):
                decision = tracker.settle_unverified(
                    name, writer, max(token, db_positions.get(writer, token))
                )
                if decision is not None:
                    logger.warning(
                        "%s/%s: tokens (%d, %d] are not on Kafka; reading them from "
                        "the database",
                        name,
                        writer,
                        decision.from_token,
                        decision.to_token,
                    )
                    work += self._backfill_work(decision, state, tracker)
            if work:
                state.pending.append(work)

    # -- steps 4 and 5 --------------------------------------------------------------

    def _loop(
        self, consumer: Consumer, tracker: PositionTracker, stop: threading.Event
    ) -> None:
        opts = self._options
        next_commit = time.monotonic() + opts.commit_interval_s
        all_caught_up = False
        while not stop.is_set():
            self._check_workers()
            if self._unsettled:
                self._settle_at_head(consumer, tracker)
            self._flush_pending(consumer)
            messages = consumer.poll_messages(opts.poll_batch, 0.1)
            if messages:
                self._dispatch(messages, tracker)
                self._flush_pending(consumer)
            now = time.monotonic()
            if now >= next_commit:
                self._commit(consumer)
                next_commit = now + opts.commit_interval_s
                if self._update_caught_up() and not all_caught_up:
                    all_caught_up = True
                    # Only a consumer that caught up on every stream counts as healthy
                    # (the intent of matrix-org/synapse#4749).
                    self._backoff.reset()
                    self._metrics.backoff_seconds.labels("consumer").set(0)
                    logger.info("caught up on every stream")
        self._check_workers()

    def _dispatch(self, messages: Sequence[Message], tracker: PositionTracker) -> None:
        batches: dict[str, list[Work]] = {}
        metrics = self._metrics
        by_topic = self._by_topic
        # Counted per batch, not per record: a labelled ``inc`` costs more than the
        # rest of an RDATA's bookkeeping.
        commands_in: dict[tuple[str, str], int] = {}
        rdata_in: dict[str, int] = {}
        # Messages of one partition come in runs: reuse its state, key and batch.
        # The client's messages are read through their C accessors; a KafkaRecord
        # is built only for the rare paths that need one (dead letters, drops).
        last_topic: str | None = None
        last_partition: int | None = -1
        tp: TP = ("", -1)
        state: _StreamState | None = None
        batch: list[Work] = []
        seen = 0
        try:
            for message in messages:
                topic = message.topic()
                partition = message.partition()
                if topic != last_topic or partition != last_partition:
                    last_topic, last_partition = topic, partition
                    tp = (topic or "", partition or 0)
                    state = by_topic.get(tp[0])
                    if state is not None:
                        batch = batches.setdefault(state.name, [])
                if state is None:
                    continue
                seen += 1
                offset: int = message.offset() or 0
                value = message.value()
                if value is None:
                    batch.append(UpdateWork(tp, offset, None))
                    continue
                try:
                    got = decode_update(value)
                except DecodeError as exc:
                    record = record_of(message)
                    metrics.decode_failures.labels(record.topic).inc()
                    logger.warning("cannot decode %s: %s", record.where, exc.reason)
                    self._dead_letter_record(record, f"decode: {exc.reason}")
                    batch.append(UpdateWork(tp, offset, None))
                    continue
                if type(got) is not StreamUpdate:
                    if type(got) is RdataCommand and got.token is not None:
                        # An RDATA written with an older schema version.
                        got = make_update(
                            got.stream_name,
                            got.instance_name,
                            got.token,
                            got.rows,
                            "kafka",
                        )
                    elif isinstance(got, PositionCommand):
                        key = ("POSITION", got.stream_name)
                        commands_in[key] = commands_in.get(key, 0) + 1
                        batch.extend(self._on_position(got, tp, offset, state, tracker))
                        continue
                    elif isinstance(got, RdataCommand):
                        self._dead_letter_record(
                            record_of(message), "RDATA without a token"
                        )
                        batch.append(UpdateWork(tp, offset, None))
                        continue
                    else:
                        batch.append(UpdateWork(tp, offset, None))
                        continue
                stream = got.stream_name
                rdata_in[stream] = rdata_in.get(stream, 0) + 1
                if stream != state.name:
                    self._dead_letter_record(
                        record_of(message), "RDATA for another stream"
                    )
                    batch.append(UpdateWork(tp, offset, None))
                    continue
                if tracker.try_apply_rdata(stream, got.instance_name, got.token):
                    # The common case, inlined; the rest goes through _on_rdata.
                    batch.append(UpdateWork(tp, offset, got, value))
                    continue
                decision = tracker.observe_rdata(
                    stream, got.instance_name, got.token, len(got.rows)
                )
                batch.extend(
                    self._on_rdata(
                        got, tp, record_of(message), state, tracker, decision
                    )
                )
        finally:
            # Also when a dead letter fails mid-batch: count what was seen.
            self.records_seen += seen
            for (name, stream), count in commands_in.items():
                metrics.commands_in.labels(name, stream).inc(count)
            for stream, count in rdata_in.items():
                metrics.commands_in.labels("RDATA", stream).inc(count)
        for name, work in batches.items():
            if work:
                self._streams[name].pending.append(work)

    def _on_rdata(
        self,
        update: StreamUpdate,
        tp: TP,
        record: KafkaRecord,
        state: _StreamState,
        tracker: PositionTracker,
        decision: Decision,
    ) -> list[Work]:
        """The work for a live RDATA (of ``state``'s stream) once decided."""
        if isinstance(decision, Apply | Reset | Gap):
            return [UpdateWork(tp, record.offset, update, record.value)]
        if isinstance(decision, Drop):
            self._metrics.rows_dropped.labels(state.name, "duplicate").inc(
                len(update.rows)
            )
            return [
                UpdateWork(
                    tp, record.offset, None, token_after=_held(tracker, decision)
                )
            ]
        if isinstance(decision, Backfill):
            work = self._backfill_work(decision, state, tracker)
            if decision.to_token < update.token:
                # A writer checked after retention (Rule 5b): the backfill reads the
                # tokens Kafka lacks, and this record is applied from Kafka after it.
                after = tracker.observe_rdata(
                    update.stream_name,
                    update.instance_name,
                    update.token,
                    len(update.rows),
                )
                return [
                    *work,
                    *self._on_rdata(update, tp, record, state, tracker, after),
                ]
            # An RDATA from a writer we have no token for: the backfill reads the rows
            # before it *and* this record's rows (the writer persisted them first).
            return [*work, UpdateWork(tp, record.offset, None)]
        assert_never(decision)

    def _on_position(
        self,
        command: PositionCommand,
        tp: TP,
        offset: int,
        state: _StreamState,
        tracker: PositionTracker,
    ) -> list[Work]:
        decision = tracker.observe_position(
            command.stream_name,
            command.instance_name,
            command.prev_token,
            command.new_token,
        )
        writer_token = (command.instance_name, command.new_token)
        if isinstance(decision, Drop):
            return [UpdateWork(tp, offset, None, token_after=_held(tracker, decision))]
        if isinstance(decision, Apply | Reset):
            return [UpdateWork(tp, offset, None, token_after=writer_token)]
        if isinstance(decision, Gap):
            # Typing, federation and presence_federation live only in their writer's
            # memory: the missing rows cannot be read back. Count it and move on, as
            # a Synapse worker does when its HTTP catch-up finds nothing.
            self._metrics.backfills.labels(state.name, "unavailable").inc()
            logger.warning(
                "%s/%s: tokens (%d, %d] were missed and cannot be read back",
                state.name,
                decision.writer,
                decision.from_token,
                decision.to_token,
            )
            return [UpdateWork(tp, offset, None, token_after=writer_token)]
        if isinstance(decision, Backfill):
            return [
                *self._backfill_work(decision, state, tracker),
                UpdateWork(tp, offset, None, token_after=writer_token),
            ]
        assert_never(decision)

    @staticmethod
    def _backfill_work(
        decision: Backfill, state: _StreamState, tracker: PositionTracker
    ) -> list[Work]:
        """Queue the backfill in the stream's worker, ahead of every later record.

        The worker runs it before anything queued after it, so the tracker can count
        it as done now: later records of this writer are judged against its end.
        """
        tracker.backfilled(decision.stream, decision.writer, decision.to_token)
        return [BackfillWork(decision.writer, decision.from_token, decision.to_token)]

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

    def _commit(self, consumer: Consumer) -> None:
        """Commit, per partition, the offset after the last finished record."""
        offsets: list[Committed] = []
        for state in self._streams.values():
            done, tokens = state.worker.progress()
            initial_done = state.worker.initial_backfill_pending == 0 and not any(
                any(isinstance(w, BackfillWork) and w.initial for w in b)
                for b in state.pending
            )
            # Always ours, even when empty: a commit without it means someone else
            # moved the offset (see _set_up).
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
        if offsets:
            if self._before_commit is not None:
                self._before_commit()
            consumer.commit(offsets)
            for c in offsets:
                self._committed[(c.topic, c.partition)] = (
                    c.offset or 0,
                    c.metadata or "",
                )

    def _update_caught_up(self) -> bool:
        all_up = True
        for state in self._streams.values():
            done, _ = state.worker.progress()
            backfilling = state.worker.initial_backfill_pending > 0 or any(
                any(isinstance(w, BackfillWork) and w.initial for w in b)
                for b in state.pending
            )
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
            self._commit(consumer)
            if stopped and not any(
                s.worker.failure is not None for s in self._streams.values()
            ):
                logger.info("stopped; committed %s", self._commit_summary())
        except (KafkaIOError, SinkError) as exc:
            logger.warning("final commit failed: %s", exc)
        finally:
            consumer.close()
            if self._dead_letters is not None:
                self._dead_letters.close()

    def _commit_summary(self) -> str:
        """What the group's commits now hold, per stream: offsets and tokens."""
        parts = []
        for state in self._streams.values():
            _, tokens = state.worker.progress()
            offsets = ", ".join(
                f"[{p}]@{offset}" if offset >= 0 else f"[{p}] unchanged"
                for p in state.partitions
                for offset in (self._committed.get((state.topic, p), (-1, ""))[0],)
            )
            writers = ", ".join(f"{w}={t}" for w, t in sorted(tokens.items()))
            parts.append(f"{state.name} {offsets} ({writers or 'no writers'})")
        return "; ".join(parts) or "nothing"

    # -- dead letters and statistics ------------------------------------------------

    def _dlq(self) -> DeadLetterWriter:
        writer = self._dead_letters
        if writer is None:
            writer = DeadLetterWriter(
                self._kafka,
                self._options.prefix,
                client_id=f"synkafka-{self._options.instance_name}-dlq",
                metrics=self._metrics,
                stop=self._stop_event,
            )
            self._dead_letters = writer
        return writer

    def _dead_letter_record(self, record: KafkaRecord, reason: str) -> None:
        """Write ``record`` to the dead-letter topic; return once it is acknowledged."""
        self._dlq().write(
            record.value,
            key=record.key,
            reason=reason,
            source=record.where,
            location={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
            headers=[
                ("dlq.topic", record.topic.encode()),
                ("dlq.partition", str(record.partition).encode()),
                ("dlq.offset", str(record.offset).encode()),
                *[(k, v) for k, v in record.headers if not k.startswith("dlq.")],
            ],
            counted_as=(record.topic, reason.split(":", 1)[0]),
        )

    def _dead_letter_update(
        self, update: StreamUpdate | None, raw: bytes | None, reason: str
    ) -> None:
        stream = update.stream_name if update else ""
        headers: list[tuple[str, bytes]] = []
        location: dict[str, str | int] = {"stream": stream}
        if update is not None:
            headers += [
                (topics.HEADER_STREAM, update.stream_name.encode()),
                (topics.HEADER_WRITER, update.instance_name.encode()),
                ("token", str(update.token).encode()),
            ]
            location.update(writer=update.instance_name, token=update.token)
        self._dlq().write(
            raw,
            key=update.instance_name if update else None,
            reason=reason,
            source=f"handler:{stream}",
            location=location,
            headers=headers,
            counted_as=(
                topics.stream_topic(self._options.prefix, stream)
                if stream
                else self._dlq().topic,
                "handler",
            ),
        )

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
