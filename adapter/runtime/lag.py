"""How far a consumer group is behind, in records and in tokens.

Works from what the broker stores, so it needs no running consumer: the group's
committed offsets (and the token map in their metadata), each partition's high
watermark, the timestamp of the partition's newest record, and the writers' latest
tokens from the compacted positions topic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.commands import PositionCommand
from adapter.core.errors import DecodeError
from adapter.core.positions import decode_commit_metadata
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import BEGINNING, Consumer, PartitionStart

__all__ = ["LagRow", "measure_lag", "read_positions_topic"]


@dataclass(frozen=True, slots=True)
class LagRow:
    """Lag of one group on one partition of one stream topic.

    Attributes:
        group: the consumer group.
        stream: the stream name.
        topic: the topic.
        partition: the partition.
        committed: the committed offset, or None when the group never committed.
        head: the high watermark (offset of the next record to be written).
        lag_messages: ``head - committed`` (all of ``head`` when never committed).
        lag_tokens: tokens behind the writers' latest known tokens, summed over the
            writers of the stream; None when the positions are unknown.
        last_record_age_s: seconds since the newest record was written; None when
            the partition is empty.
    """

    group: str
    stream: str
    topic: str
    partition: int
    committed: int | None
    head: int
    lag_messages: int
    lag_tokens: int | None
    last_record_age_s: float | None

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON-ready dict."""
        return asdict(self)


def read_positions_topic(
    consumer: Consumer, prefix: str, timeout_s: float = 10.0
) -> dict[tuple[str, str], int]:
    """The latest token of every (stream, writer) from the compacted positions topic."""
    topic = topics.positions_topic(prefix)
    partitions = consumer.partitions(topic)
    heads = {p: consumer.watermarks(topic, p)[1] for p in partitions}
    wanted = {p: h for p, h in heads.items() if h > 0}
    latest: dict[tuple[str, str], int] = {}
    if not wanted:
        return latest
    consumer.assign([PartitionStart(topic, p, BEGINNING) for p in wanted])
    done: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(done) < len(wanted) and time.monotonic() < deadline:
        for record in consumer.poll_batch(1000, 0.2):
            if record.offset + 1 >= wanted.get(record.partition, 0):
                done.add(record.partition)
            if record.value is None:
                continue
            try:
                command = decode(record.value)
            except DecodeError:
                continue
            if isinstance(command, PositionCommand):
                key = (command.stream_name, command.instance_name)
                latest[key] = max(command.new_token, latest.get(key, command.new_token))
    return latest


def _last_record_ms(
    consumer: Consumer, topic: str, partition: int, head: int
) -> int | None:
    if head <= 0:
        return None
    consumer.assign([PartitionStart(topic, partition, head - 1)])
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        for record in consumer.poll_batch(1, 0.2):
            return record.timestamp_ms or None
    return None


def _partition_heads(
    consumer: Consumer, label: str, topic: str, now: float
) -> list[tuple[str, str, int, int, float | None]]:
    """(label, topic, partition, head, age of the newest record) of every partition."""
    out: list[tuple[str, str, int, int, float | None]] = []
    for p in consumer.partitions(topic):
        head = consumer.watermarks(topic, p)[1]
        last_ms = _last_record_ms(consumer, topic, p, head)
        age = None if last_ms is None else max(0.0, (now - last_ms) / 1000.0)
        out.append((label, topic, p, head, age))
    return out


def measure_lag(
    admin: Admin,
    consumer: Consumer,
    prefix: str,
    groups: Sequence[str],
    streams: Sequence[str],
    *,
    feed_groups: Sequence[str] = (),
    now_ms: int | None = None,
) -> list[LagRow]:
    """Lag rows for every group, stream topic and partition.

    Args:
        admin: to read committed offsets (works for groups whose members are down).
        consumer: a reader (its own throwaway group) for watermarks and records.
        prefix: the topic prefix.
        groups: the consumer groups to report on the stream topics.
        streams: the streams whose topics to report.
        feed_groups: feed reader groups (``synkafka feed-consume``), reported on
            the feed topic (stream ``feed``; lag in messages only).
        now_ms: the current time (tests may pin it).
    """
    now = time.time() * 1000 if now_ms is None else now_ms
    rows: list[LagRow] = []
    if groups and streams:
        rows += _stream_rows(admin, consumer, prefix, groups, streams, now)
    if feed_groups:
        feed = _partition_heads(consumer, "feed", topics.feed_topic(prefix), now)
        for group in feed_groups:
            offsets = admin.group_offsets(group)
            for label, topic, p, head, age in feed:
                committed = offsets.get((topic, p), (None, None))[0]
                rows.append(
                    LagRow(
                        group=group,
                        stream=label,
                        topic=topic,
                        partition=p,
                        committed=committed,
                        head=head,
                        lag_messages=max(0, head - (committed or 0)),
                        lag_tokens=None,
                        last_record_age_s=age,
                    )
                )
    return rows


def _stream_rows(
    admin: Admin,
    consumer: Consumer,
    prefix: str,
    groups: Sequence[str],
    streams: Sequence[str],
    now: float,
) -> list[LagRow]:
    positions = read_positions_topic(consumer, prefix)
    partitions: list[tuple[str, str, int, int, float | None]] = []
    for stream in streams:
        topic = topics.stream_topic(prefix, stream)
        partitions += _partition_heads(consumer, stream, topic, now)
    rows: list[LagRow] = []
    for group in groups:
        offsets = admin.group_offsets(group)
        for stream, topic, p, head, age in partitions:
            committed, metadata = offsets.get((topic, p), (None, None))
            lag_tokens: int | None = None
            writers = {w: t for (s, w), t in positions.items() if s == stream}
            if writers and committed is not None:
                mine: dict[str, int] = {}
                if metadata:
                    try:
                        mine = {
                            w: t
                            for (s, w), t in decode_commit_metadata(metadata).items()
                            if s == stream
                        }
                    except DecodeError:
                        mine = {}
                # A writer the group never recorded starts, for the consumer, at the
                # stream's minimum known token (PositionTracker Rule 5), not at 0.
                floor = min(mine.values()) if mine else 0
                lag_tokens = sum(
                    max(0, t - mine.get(w, floor)) for w, t in writers.items()
                )
            rows.append(
                LagRow(
                    group=group,
                    stream=stream,
                    topic=topic,
                    partition=p,
                    committed=committed,
                    head=head,
                    lag_messages=max(0, head - (committed or 0)),
                    lag_tokens=lag_tokens,
                    last_record_age_s=age,
                )
            )
    return rows
