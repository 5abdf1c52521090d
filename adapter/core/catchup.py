"""The consumer's start decision, per stream: where to read Kafka from and what first.

Pure: the runtime reads the committed offsets and their metadata, the pinned heads, the
log start offsets and the database positions; :func:`committed_tokens` and
:func:`plan_stream_start` say what to do with them, and the runtime applies the
:class:`StreamStart`.

The cases (:class:`StartCase`):

* ``earliest`` (``--from earliest``): replay the whole log, tokens from the commit.
* ``head`` (``--from latest``, or no commit yet): start at the pinned head with the
  writers' database positions; nothing older is delivered.
* ``database`` (a commit of ours, a database source, ``--catch-up database``): skip
  Kafka up to the pinned head and read ``(committed token, database position]`` of
  every writer from the database: the latest state, as a Synapse worker catches up.
  Updates that the database replaced or deleted meanwhile are not delivered.
* ``kafka`` (a commit of ours, a database source, ``--catch-up kafka``): replay Kafka
  from the committed offset with the committed tokens, so every update Kafka holds is
  delivered once. The database is read only for tokens Kafka lacks: a POSITION that
  shows a gap (the live rule), and, when retention deleted records after the
  committed offset, each writer's tokens before its first record still on Kafka.
* ``replay`` (no database source, or a commit without our token map): replay Kafka
  from the committed offset; a gap retention made is lost and reported.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from adapter.core.errors import DecodeError
from adapter.core.positions import decode_commit_metadata

__all__ = [
    "CatchUp",
    "CommittedTokens",
    "InitialBackfill",
    "PartitionMark",
    "StartCase",
    "StartFrom",
    "StreamStart",
    "committed_tokens",
    "plan_stream_start",
]

#: Where a resumed consumer reads what it missed: see the module docstring.
CatchUp = Literal["kafka", "database"]

#: ``--from``: resume from the commit, start at the head, or replay the whole log.
StartFrom = Literal["committed", "latest", "earliest"]


class StartCase(enum.StrEnum):
    """Which start rule applied to a stream (for logs and tests)."""

    EARLIEST = "earliest"
    HEAD = "head"
    DATABASE = "database"
    KAFKA = "kafka"
    REPLAY = "replay"


@dataclass(frozen=True, slots=True)
class PartitionMark:
    """What the broker says about one partition of a stream topic at start.

    Attributes:
        partition: the partition number.
        committed: the group's committed offset, or None without one.
        low: the log start offset (records below it were deleted by retention).
        head: the high watermark, pinned before the database positions were read.
        metadata: the committed offset's metadata (our token map, or whatever
            committed it by hand); None or empty without one.
    """

    partition: int
    committed: int | None
    low: int
    head: int
    metadata: str | None = None


@dataclass(frozen=True, slots=True)
class CommittedTokens:
    """A stream's token map as its partitions' commits carry it.

    Attributes:
        tokens: per writer, the highest token any partition's metadata holds; None
            when no partition has metadata of ours (no commit, or an offset reset by
            hand).
        foreign: ``(partition, reason)`` of each commit whose metadata is not ours.
    """

    tokens: dict[str, int] | None
    foreign: tuple[tuple[int, str], ...] = ()


def committed_tokens(stream: str, marks: Sequence[PartitionMark]) -> CommittedTokens:
    """Read the stream's token map from the metadata of its partitions' commits.

    Every partition of a stream carries the stream's whole map (the consumer commits
    it on each), so the maps are merged by taking each writer's highest token.
    """
    tokens: dict[str, int] = {}
    foreign: list[tuple[int, str]] = []
    ours = False
    for mark in marks:
        if not mark.metadata:
            continue
        try:
            decoded = decode_commit_metadata(mark.metadata)
        except DecodeError as exc:
            foreign.append((mark.partition, exc.reason))
            continue
        ours = True
        for (name, writer), token in decoded.items():
            if name == stream:
                tokens[writer] = max(token, tokens.get(writer, token))
    return CommittedTokens(tokens if ours else None, tuple(foreign))


@dataclass(frozen=True, slots=True)
class InitialBackfill:
    """Read one writer's ``(from_token, to_token]`` from the database before going live."""

    writer: str
    from_token: int
    to_token: int


@dataclass(frozen=True, slots=True)
class StreamStart:
    """What a stream does at start.

    Attributes:
        case: the rule that applied.
        offsets: per partition, the offset to read from; None means the beginning of
            the log.
        tokens: the position tracker's token per writer.
        unverified: writers whose next record is checked for a gap instead of being
            trusted (``PositionTracker.seed_unverified``), with their token.
        handled: per writer, the token up to which the handlers have everything (what
            the next commit stores before any new work finishes).
        backfills: database reads to run, in order, before any record of the stream.
        lost: partitions whose committed offset is below the log start offset:
            retention deleted records this consumer had not read.
        settle: per writer, the database position read at start; only with
            ``unverified``: once the pinned head is reached, a writer still
            unverified is backfilled up to it (``PositionTracker.settle_unverified``).
    """

    case: StartCase
    offsets: Mapping[int, int | None]
    tokens: Mapping[str, int]
    unverified: Mapping[str, int] = field(default_factory=dict)
    handled: Mapping[str, int] = field(default_factory=dict)
    backfills: tuple[InitialBackfill, ...] = ()
    lost: tuple[int, ...] = ()
    settle: Mapping[str, int] = field(default_factory=dict)


def plan_stream_start(
    *,
    start_from: StartFrom,
    catch_up: CatchUp,
    has_source: bool,
    marks: Sequence[PartitionMark],
    committed_tokens: Mapping[str, int] | None,
    db_positions: Mapping[str, int],
) -> StreamStart:
    """Decide where one stream starts (see the module docstring for the cases).

    Args:
        start_from: ``--from``.
        catch_up: ``--catch-up``.
        has_source: the stream can be read back from the configured database.
        marks: every partition of the stream's topic.
        committed_tokens: the stream's token map from the commit metadata; None when
            no partition has metadata of ours (no commit, or an offset reset by hand).
        db_positions: each writer's persisted token, read after the heads were pinned;
            empty without a database source.

    Returns:
        The stream's start.
    """
    heads = {m.partition: m.head for m in marks}
    has_commit = any(m.committed is not None for m in marks)
    lost = tuple(
        m.partition for m in marks if m.committed is not None and m.committed < m.low
    )
    # A committed offset below the log start cannot be read; the log starts at low.
    resume: dict[int, int | None] = {
        m.partition: (m.head if m.committed is None else max(m.committed, m.low))
        for m in marks
    }
    committed = dict(committed_tokens or {})
    if start_from == "earliest":
        return StreamStart(
            StartCase.EARLIEST,
            dict.fromkeys(heads, None),
            committed,
            handled=committed,
        )
    if start_from == "latest" or not has_commit:
        positions = dict(db_positions)
        return StreamStart(StartCase.HEAD, heads, positions, handled=positions)
    if not has_source or committed_tokens is None:
        return StreamStart(
            StartCase.REPLAY, resume, committed, handled=committed, lost=lost
        )
    if catch_up == "database":
        # A writer absent from our metadata published nothing before our commit, so
        # all of its rows are new to us: start it at 0.
        tokens = dict(committed)
        handled = dict(committed)
        backfills: list[InitialBackfill] = []
        for writer, position in sorted(db_positions.items()):
            current = tokens.get(writer, 0)
            if position > current:
                backfills.append(InitialBackfill(writer, current, position))
                tokens[writer] = position
                handled[writer] = current
        return StreamStart(
            StartCase.DATABASE,
            heads,
            tokens,
            handled=handled,
            backfills=tuple(backfills),
        )
    # Kafka: every record from the committed offset goes through the token rule. A
    # writer absent from our metadata starts at 0 for the same reason as above; its
    # records since our commit are all on Kafka unless retention deleted them.
    tokens = {**dict.fromkeys(db_positions, 0), **committed}
    if not lost:
        return StreamStart(StartCase.KAFKA, resume, tokens, handled=tokens)
    return StreamStart(
        StartCase.KAFKA,
        resume,
        {},
        unverified=tokens,
        handled=tokens,
        lost=lost,
        settle=dict(db_positions),
    )
