"""Steps 1 to 3 of the replication consumer: read, decide, apply.

* **Read** (:func:`read_start`): the group's committed offsets and their metadata, then
  every partition's watermarks (the high one is the pinned head), and only then the
  writers' database positions. A writer persists a row before it publishes it, so every
  record below the pinned head has a token at or below the positions read afterwards.
* **Decide** (:func:`decide_start`): :func:`adapter.core.catchup.committed_tokens` and
  :func:`adapter.core.catchup.plan_stream_start`, pure.
* **Apply** (:func:`apply_start`): seed the position tracker and the stream's worker,
  note where to read each partition from, and return the backfill to run before going
  live.

:func:`settle_at_head` finishes a ``--catch-up kafka`` start after retention once the
pinned head is reached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from adapter.core import topics
from adapter.core.catchup import (
    PartitionMark,
    StreamStart,
    committed_tokens,
    plan_stream_start,
)
from adapter.core.errors import KafkaIOError
from adapter.core.ports import BackfillReader
from adapter.core.positions import PositionTracker
from adapter.io.kafka.consumer import BEGINNING, Consumer
from adapter.io.metrics import Metrics
from adapter.runtime.consumer_options import ConsumerOptions
from adapter.runtime.consumer_streams import StreamState, backfill_work
from adapter.runtime.stream_worker import BackfillWork, StreamWorker, Work

__all__ = [
    "StartRead",
    "apply_start",
    "decide_start",
    "open_streams",
    "read_start",
    "settle_at_head",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StartRead:
    """What was read at start for one stream.

    Attributes:
        marks: per partition, the commit, the log start and the pinned head.
        db_positions: each writer's persisted token, read after the heads were
            pinned; empty without a database source.
    """

    marks: tuple[PartitionMark, ...]
    db_positions: dict[str, int]


def open_streams(
    consumer: Consumer,
    prefix: str,
    streams: Sequence[str],
    reader: BackfillReader | None,
    new_worker: Callable[[str, bool], StreamWorker],
) -> dict[str, StreamState]:
    """Find each stream's partitions and give it a worker (not started yet).

    ``new_worker(stream, has_source)`` makes the worker.

    Raises:
        KafkaIOError: a stream's topic does not exist (retried: it may be created).
    """
    states: dict[str, StreamState] = {}
    for stream in streams:
        topic = topics.stream_topic(prefix, stream)
        partitions = consumer.partitions(topic)
        if not partitions:
            raise KafkaIOError(
                topics.missing_topic_message(topic, prefix),
                code="_UNKNOWN_TOPIC",
                retriable=True,
            )
        has_source = reader is not None and reader.has_source(stream)
        worker = new_worker(stream, has_source)
        states[stream] = StreamState(stream, topic, partitions, worker, has_source)
    return states


def read_start(
    consumer: Consumer,
    reader: BackfillReader | None,
    states: Mapping[str, StreamState],
) -> dict[str, StartRead]:
    """Steps 1 and 2: committed offsets, pinned heads, then database positions."""
    committed = {
        (c.topic, c.partition): c
        for c in consumer.committed(
            [(s.topic, p) for s in states.values() for p in s.partitions]
        )
    }
    marks: dict[str, tuple[PartitionMark, ...]] = {}
    for state in states.values():
        stream_marks = []
        for p in state.partitions:
            low, head = consumer.watermarks(state.topic, p)
            c = committed.get((state.topic, p))
            stream_marks.append(
                PartitionMark(
                    p,
                    None if c is None else c.offset,
                    low,
                    head,
                    None if c is None else c.metadata,
                )
            )
        marks[state.name] = tuple(stream_marks)
    # Every head is pinned: only now the database positions (see the module docstring).
    return {
        state.name: StartRead(
            marks[state.name],
            reader.positions(state.name)
            if (reader is not None and state.has_source)
            else {},
        )
        for state in states.values()
    }


def decide_start(
    options: ConsumerOptions, state: StreamState, read: StartRead
) -> StreamStart:
    """Step 3's decision for one stream (:mod:`adapter.core.catchup`)."""
    tokens = committed_tokens(state.name, read.marks)
    for partition, reason in tokens.foreign:
        logger.warning(
            "%s[%d]: commit metadata is not ours (%s); replaying from the "
            "committed offset",
            state.topic,
            partition,
            reason,
        )
    return plan_stream_start(
        start_from=options.start_from,
        catch_up=options.catch_up,
        has_source=state.has_source,
        marks=read.marks,
        committed_tokens=tokens.tokens,
        db_positions=read.db_positions,
    )


def apply_start(
    state: StreamState,
    read: StartRead,
    plan: StreamStart,
    tracker: PositionTracker,
    metrics: Metrics,
) -> list[Work]:
    """Set up one stream as decided; return the backfill to run before going live."""
    state.head = {m.partition: m.head for m in read.marks}
    state.start = {
        p: BEGINNING if offset is None else offset for p, offset in plan.offsets.items()
    }
    for writer, token in plan.tokens.items():
        tracker.seed(state.name, writer, token)
        metrics.stream_position.labels(state.name, writer).set(token)
    for writer, token in plan.unverified.items():
        tracker.seed_unverified(state.name, writer, token)
        metrics.stream_position.labels(state.name, writer).set(token)
    state.worker.seed(plan.handled)
    work: list[Work] = []
    for b in plan.backfills:
        work.append(BackfillWork(b.writer, b.from_token, b.to_token, initial=True))
        metrics.backfill_remaining_tokens.labels(state.name, b.writer).set(
            b.to_token - b.from_token
        )
    if work:
        logger.info(
            "%s: backfilling %d writer(s) from the database before going live",
            state.name,
            len(work),
        )
    _report_lost(state, plan, metrics)
    logger.debug("%s: start %s at %s", state.name, plan.case, state.start)
    return work


def _report_lost(state: StreamState, plan: StreamStart, metrics: Metrics) -> None:
    """Log each partition whose records retention deleted before we read them."""
    for p in plan.lost:
        if plan.unverified:
            logger.warning(
                "%s[%d]: records after the committed offset were deleted by "
                "retention; the tokens Kafka lacks are read from the database",
                state.topic,
                p,
            )
        else:
            metrics.backfills.labels(state.name, "unavailable").inc()
            logger.warning(
                "%s[%d]: records after the committed offset were deleted by "
                "retention and cannot be read back",
                state.topic,
                p,
            )


def settle_at_head(
    consumer: Consumer,
    streams: Mapping[str, StreamState],
    unsettled: dict[str, dict[str, int]],
    tracker: PositionTracker,
) -> None:
    """Backfill writers that had no record on Kafka up to the pinned head.

    Only after retention deleted records of a ``--catch-up kafka`` consumer
    (:class:`StreamStart` ``unverified``); ``unsettled`` holds, per such stream, the
    database positions read at start, and loses the stream once it is settled. Checked
    once per poll until every stream is settled.
    """
    for name in list(unsettled):
        state = streams[name]
        positions = consumer.positions((state.topic, p) for p in state.partitions)
        reached = all(
            state.head[p] <= state.start[p] or positions.get(p, -1) >= state.head[p]
            for p in state.partitions
        )
        if not reached:
            continue
        db_positions = unsettled.pop(name)
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
                work += backfill_work(decision, tracker)
        if work:
            state.pending.append(work)
