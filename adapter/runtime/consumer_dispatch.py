"""Step 4 of the replication consumer: turn polled records into each stream's work.

Every record goes through :class:`PositionTracker`: duplicates are dropped, a POSITION
past our token queues a backfill, a reset stream is followed. The work is queued per
stream, in record order, for the stream's worker; a record is committed past only
once its work is done.

This is the consumer's hot path: the common RDATA is decoded and checked inline, and a
:class:`KafkaRecord` is built only for the rare paths that need one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import assert_never

from adapter.codec.avro_codec import Payload, decode_update
from adapter.core.commands import PositionCommand, RdataCommand
from adapter.core.errors import DecodeError
from adapter.core.ports import StreamUpdate, make_update
from adapter.core.positions import (
    Apply,
    Backfill,
    Decision,
    Drop,
    Gap,
    PositionTracker,
    Reset,
)
from adapter.io.kafka.consumer import Message, record_of
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import Metrics
from adapter.runtime.consumer_dead_letters import ConsumerDeadLetters
from adapter.runtime.consumer_streams import TP, StreamState, backfill_work
from adapter.runtime.stream_worker import UpdateWork, Work

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)


def _held(tracker: PositionTracker, decision: Drop) -> tuple[str, int] | None:
    """The writer's token after a dropped record, so the commit records the writer.

    A writer first seen in a dropped record (a stale POSITION of a new writer starts it
    at the stream's minimum) would otherwise never reach the commit metadata, and lag
    readers would count it from token 0.
    """
    token = tracker.token(decision.stream, decision.writer)
    return None if token is None else (decision.writer, token)


class Dispatcher:
    """Decides each polled record's work and queues it on its stream.

    Args:
        streams: the streams followed in this attempt, by name.
        tracker: the attempt's position tracker, seeded at start.
        metrics: where to count commands, drops and gaps.
        dead_letters: where undecodable and misplaced records go.
    """

    def __init__(
        self,
        streams: Mapping[str, StreamState],
        tracker: PositionTracker,
        metrics: Metrics,
        dead_letters: ConsumerDeadLetters,
    ) -> None:
        self._streams = streams
        self._by_topic = {s.topic: s for s in streams.values()}
        self.tracker = tracker
        """The attempt's position tracker."""
        self._metrics = metrics
        self._dead_letters = dead_letters

    def dispatch(self, messages: Sequence[Message]) -> None:
        """Queue the work of ``messages`` on their streams' pending batches."""
        batches: dict[str, list[Work]] = {}
        tracker = self.tracker
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
        state: StreamState | None = None
        batch: list[Work] = []
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
                offset: int = message.offset() or 0
                value = message.value()
                if value is None:
                    batch.append(UpdateWork(tp, offset, None))
                    continue
                try:
                    got = decode_update(value)
                except DecodeError as exc:
                    self._undecodable(message, exc)
                    batch.append(UpdateWork(tp, offset, None))
                    continue
                update: StreamUpdate | None
                if type(got) is StreamUpdate:
                    update = got
                else:
                    update = self._not_an_update(
                        got, message, tp, offset, state, batch, commands_in
                    )
                    if update is None:
                        continue
                stream = update.stream_name
                rdata_in[stream] = rdata_in.get(stream, 0) + 1
                if stream != state.name:
                    self._dead_letters.record(
                        record_of(message), "RDATA for another stream"
                    )
                    batch.append(UpdateWork(tp, offset, None))
                    continue
                if tracker.try_apply_rdata(stream, update.instance_name, update.token):
                    # The common case, inlined; the rest goes through _on_rdata.
                    batch.append(UpdateWork(tp, offset, update, value))
                    continue
                decision = tracker.observe_rdata(
                    stream, update.instance_name, update.token, len(update.rows)
                )
                batch.extend(
                    self._on_rdata(update, tp, record_of(message), state, decision)
                )
        finally:
            # Also when a dead letter fails mid-batch: count what was seen.
            self._count(commands_in, rdata_in)
        for name, work in batches.items():
            if work:
                self._streams[name].pending.append(work)

    def _count(
        self, commands_in: Mapping[tuple[str, str], int], rdata_in: Mapping[str, int]
    ) -> None:
        counter = self._metrics.commands_in
        for (name, stream), count in commands_in.items():
            counter.labels(name, stream).inc(count)
        for stream, count in rdata_in.items():
            counter.labels("RDATA", stream).inc(count)

    def _undecodable(self, message: Message, exc: DecodeError) -> None:
        record = record_of(message)
        self._metrics.decode_failures.labels(record.topic).inc()
        logger.warning("cannot decode %s: %s", record.where, exc.reason)
        self._dead_letters.record(record, f"decode: {exc.reason}")

    def _not_an_update(
        self,
        got: StreamUpdate | Payload,
        message: Message,
        tp: TP,
        offset: int,
        state: StreamState,
        batch: list[Work],
        commands_in: dict[tuple[str, str], int],
    ) -> StreamUpdate | None:
        """A record that did not decode to a :class:`StreamUpdate` (rare).

        Returns:
            The update to go on with (an RDATA written with an older schema version),
            or None once the record's work is in ``batch``.
        """
        if type(got) is RdataCommand and got.token is not None:
            return make_update(
                got.stream_name, got.instance_name, got.token, got.rows, "kafka"
            )
        if isinstance(got, PositionCommand):
            key = ("POSITION", got.stream_name)
            commands_in[key] = commands_in.get(key, 0) + 1
            batch.extend(self._on_position(got, tp, offset, state))
            return None
        if isinstance(got, RdataCommand):
            self._dead_letters.record(record_of(message), "RDATA without a token")
        else:
            # A valid record, but only RDATA and POSITION belong on a stream topic.
            name = getattr(got, "NAME", "PRESENCE")
            self._dead_letters.record(
                record_of(message), f"{name} does not belong on a stream topic"
            )
        batch.append(UpdateWork(tp, offset, None))
        return None

    def _on_rdata(
        self,
        update: StreamUpdate,
        tp: TP,
        record: KafkaRecord,
        state: StreamState,
        decision: Decision,
    ) -> list[Work]:
        """The work for a live RDATA (of ``state``'s stream) once decided."""
        tracker = self.tracker
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
            work = backfill_work(decision, tracker)
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
                    *self._on_rdata(update, tp, record, state, after),
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
        state: StreamState,
    ) -> list[Work]:
        tracker = self.tracker
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
                *backfill_work(decision, tracker),
                UpdateWork(tp, offset, None, token_after=writer_token),
            ]
        assert_never(decision)
