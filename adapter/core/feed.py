"""The event feed's rules: Synapse's events, with their content, one record per event.

The events stream tells *that* an event was persisted (an ``ev`` row: ID, room, type,
flags), not what it says. The feed joins each ``ev`` row with the event as Synapse
stored it (``events``, ``event_json``, ``rejections``, ``redactions``) and publishes
one :class:`FeedEvent` per row on ``<prefix>.feed.events``, keyed by room ID so that a
room's events stay in order on one partition.

What the feed does with Synapse's special cases (docs/feed.md says why):

* **rejected** events are published, with ``rejected`` set and the reason: an audit
  or moderation reader needs to see them; a search indexer skips them.
* **outliers** are published with ``outlier`` set. When Synapse later takes an event
  out of outlier state it sends a second ``ev`` row for it, and the feed publishes the
  event again with ``outlier`` false: ``(event_id, outlier)`` is unique on the feed.
* **backfilled** history (negative stream orderings) travels on the ``backfill``
  stream, not ``events``; the feed does not carry it.
* **redactions**: the redaction event is published like any other, with ``redacts``
  naming its target. The target's own record stays as published (a Kafka log is not
  rewritten): readers that show content must apply redactions themselves.
* an event whose content the database **no longer has** (a purged room or history) is
  not published; it goes to the dead-letter topic as a reference, and is counted.
* a **re-sent** record (a writer publishes its last records again after a reconnect)
  names events the feed has just published: each ``(event_id, outlier)`` the feed
  committed recently (:class:`RecentEvents`) is skipped, not published twice.

Everything here is pure: the runtime reads the rows and the database and carries out
the decisions.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from adapter.core.rows import EventsEventRow

__all__ = [
    "DEFAULT_FEED_PARTITIONS",
    "RECENT_EVENTS",
    "Duplicate",
    "FeedEvent",
    "FeedInput",
    "Missing",
    "Output",
    "Publish",
    "RecentEvents",
    "Undecodable",
    "advance_tokens",
    "feed_decisions",
    "feed_event_from_json",
    "feed_event_ids",
    "feed_event_to_json",
    "plan_batch",
]

#: Partitions of ``<prefix>.feed.events`` when none is asked for: the most consumers
#: one group can spread over.
DEFAULT_FEED_PARTITIONS: Final = 12

#: ``(event_id, outlier)`` keys the feed remembers as published: far more than the
#: few records a writer re-sends after a reconnect, small enough to hold in memory.
RECENT_EVENTS: Final = 20_000


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event on the feed: Avro ``synkafka.feed.Event``.

    Attributes:
        event_id: the event's ID.
        room_id: its room (the record key).
        type: its type, e.g. ``m.room.message``.
        state_key: the state key of a state event, else ``None``.
        sender: the user who sent it.
        origin_server_ts: when its server says it was sent, in ms since the epoch.
        stream_ordering: its position on Synapse's events stream.
        instance_name: the event persister that wrote it (``None`` on old Synapses).
        outlier: Synapse holds it outside the room's timeline (see the module notes).
        rejected: Synapse rejected it (auth or validation).
        rejection_reason: why, when rejected.
        redacts: for a redaction, the event it redacts.
        format_version: ``event_json.format_version`` (the event format).
        json: the event's JSON exactly as ``event_json.json`` holds it.
    """

    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    origin_server_ts: int
    stream_ordering: int
    instance_name: str | None
    outlier: bool
    rejected: bool
    rejection_reason: str | None
    redacts: str | None
    format_version: int | None
    json: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``event`` on the feed, keyed by its room."""

    event: FeedEvent


@dataclass(frozen=True, slots=True)
class Missing:
    """The database has no content for this row's event: dead-letter a reference."""

    event_id: str
    room_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """This event (with this ``outlier`` flag) was published already: skip it."""

    event_id: str
    outlier: bool


class RecentEvents:
    """The ``(event_id, outlier)`` keys published last, oldest forgotten first.

    Args:
        limit: how many keys to remember.
    """

    def __init__(self, limit: int = RECENT_EVENTS) -> None:
        self._limit = limit
        self._keys: dict[tuple[str, bool], None] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, keys: Iterable[tuple[str, bool]]) -> None:
        """Remember ``keys`` (committed), forgetting the oldest beyond the limit."""
        known = self._keys
        for key in keys:
            known.pop(key, None)
            known[key] = None
        while len(known) > self._limit:
            del known[next(iter(known))]


def feed_event_ids(rows: Iterable[object]) -> list[str]:
    """The event IDs whose content the feed needs for these events-stream rows, in order.

    Only ``ev`` rows name an event; ``state`` and ``state-all`` rows are about current
    state and are not feed records.
    """
    return [row.event_id for row in rows if isinstance(row, EventsEventRow)]


def feed_decisions(
    rows: Sequence[object],
    stored: Mapping[str, FeedEvent],
    published: Container[tuple[str, bool]] = (),
) -> list[Publish | Missing | Duplicate]:
    """What to do with each ``ev`` row of a batch, in the rows' order.

    Args:
        rows: events-stream rows, in stream order (other row kinds are skipped).
        stored: what the database returned for :func:`feed_event_ids` of the rows.
        published: ``(event_id, outlier)`` keys already on the feed (a re-sent row's
            event is a :class:`Duplicate`).

    The row's ``outlier`` flag wins over the database's: a later un-outliering
    changes the table, and each row must say what was true when it was sent.
    """
    decisions: list[Publish | Missing | Duplicate] = []
    for row in rows:
        if not isinstance(row, EventsEventRow):
            continue
        if (row.event_id, row.outlier) in published:
            decisions.append(Duplicate(row.event_id, row.outlier))
            continue
        event = stored.get(row.event_id)
        if event is None:
            decisions.append(
                Missing(row.event_id, row.room_id, "no content in the database")
            )
            continue
        if event.outlier != row.outlier:
            event = replace(event, outlier=row.outlier)
        decisions.append(Publish(event))
    return decisions


def feed_event_to_json(event: FeedEvent) -> dict[str, Any]:
    """The JSON object form of a feed record (``--value-format json``).

    The same fields as the Avro record; ``json`` stays a string holding the event's
    JSON as Synapse stored it, so the bytes a reader hashes or verifies are Synapse's.
    """
    return asdict(event)


#: The fields of :class:`FeedEvent` and the JSON types each may hold.
_JSON_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "event_id": (str,),
    "room_id": (str,),
    "type": (str,),
    "state_key": (str, type(None)),
    "sender": (str,),
    "origin_server_ts": (int,),
    "stream_ordering": (int,),
    "instance_name": (str, type(None)),
    "outlier": (bool,),
    "rejected": (bool,),
    "rejection_reason": (str, type(None)),
    "redacts": (str, type(None)),
    "format_version": (int, type(None)),
    "json": (str,),
}


def feed_event_from_json(obj: object) -> FeedEvent:
    """A feed record read back from its JSON object form (:func:`feed_event_to_json`).

    Raises:
        ValueError: ``obj`` is not such an object (a field missing or of the wrong
            type); unknown extra fields are ignored, as an Avro reader would.
    """
    if not isinstance(obj, dict):
        raise ValueError("a feed record must be a JSON object")  # noqa: TRY004 (bad input, as the other checks)
    values: dict[str, Any] = {}
    for name, types in _JSON_FIELDS.items():
        if name not in obj:
            raise ValueError(f"a feed record needs the field {name!r}")
        value = obj[name]
        # bool is an int in Python; JSON keeps them apart, and so does this check.
        wrong_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or wrong_bool:
            raise ValueError(f"field {name!r} has the wrong type")
        values[name] = value
    return FeedEvent(**values)


@dataclass(frozen=True, slots=True)
class FeedInput:
    """One record of the events stream topic, as the feed's shell decoded it.

    Attributes:
        topic: where it is.
        partition: its partition.
        offset: its offset.
        rows: its RDATA rows (empty for a POSITION, which the feed does not need).
        error: why it could not be decoded, else ``None``.
        writer: the RDATA's writer (instance name), else ``None``.
        token: the RDATA's token, else ``None``.
    """

    topic: str
    partition: int
    offset: int
    rows: tuple[object, ...] = ()
    error: str | None = None
    writer: str | None = None
    token: int | None = None

    def stale(self, tokens: Mapping[str, int]) -> bool:
        """Whether this RDATA's token is at or below its writer's in ``tokens``.

        A writer's tokens only grow, so such a record is a re-send of one the feed
        already handled (the bridge after a reconnect, say).
        """
        if self.writer is None or self.token is None:
            return False
        last = tokens.get(self.writer)
        return last is not None and self.token <= last


def advance_tokens(
    inputs: Iterable[FeedInput], tokens: Mapping[str, int]
) -> dict[str, int]:
    """Each writer's highest token after ``inputs``: what the batch's commit records.

    The feed keeps this map in its committed offsets' metadata, so a re-sent record
    is recognised after a restart too (:meth:`FeedInput.stale`).
    """
    out = dict(tokens)
    for item in inputs:
        if item.writer is not None and item.token is not None:
            out[item.writer] = max(out.get(item.writer, item.token), item.token)
    return out


@dataclass(frozen=True, slots=True)
class Undecodable:
    """An input record that is not a readable events-stream record: dead-letter it."""

    topic: str
    partition: int
    offset: int
    reason: str


Output = Publish | Missing | Undecodable | Duplicate


class _Published:
    """What an earlier batch committed, and what this batch publishes so far."""

    __slots__ = ("_batch", "_earlier")

    def __init__(self, earlier: Container[tuple[str, bool]]) -> None:
        self._earlier = earlier
        self._batch: set[tuple[str, bool]] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._batch or key in self._earlier

    def add(self, decisions: Iterable[Output]) -> None:
        self._batch.update(
            (d.event.event_id, d.event.outlier)
            for d in decisions
            if isinstance(d, Publish)
        )


def plan_batch(
    inputs: Sequence[FeedInput],
    stored: Mapping[str, FeedEvent],
    published: Container[tuple[str, bool]] = (),
    tokens: Mapping[str, int] | None = None,
) -> tuple[list[Output], dict[tuple[str, int], int]]:
    """What one transaction writes, in input order, and the input offsets it commits.

    Args:
        inputs: the batch's records, in the order they were read.
        stored: the database's answer for :func:`feed_event_ids` of all their rows.
        published: ``(event_id, outlier)`` keys earlier batches committed (a
            :class:`RecentEvents`); an event published by those or earlier in this
            batch is a :class:`Duplicate`.
        tokens: each writer's last token committed (the offsets' metadata); a record
            at or below it, or below one earlier in this batch, is a re-send, and
            its events are :class:`Duplicate` whatever ``published`` says.

    Returns:
        The outputs, and per (topic, partition) the next offset to consume (one past
        the last record of the batch): every input record is accounted for by an
        output or by being a record the feed has nothing to say about.
    """
    outputs: list[Output] = []
    next_offsets: dict[tuple[str, int], int] = {}
    seen = _Published(published)
    running = dict(tokens or {})
    for item in inputs:
        next_offsets[(item.topic, item.partition)] = item.offset + 1
        if item.error is not None:
            outputs.append(
                Undecodable(item.topic, item.partition, item.offset, item.error)
            )
            continue
        if tokens is not None and item.stale(running):
            outputs.extend(
                Duplicate(row.event_id, row.outlier)
                for row in item.rows
                if isinstance(row, EventsEventRow)
            )
            continue
        running = advance_tokens([item], running)
        decisions = feed_decisions(item.rows, stored, seen)
        seen.add(decisions)
        outputs.extend(decisions)
    return outputs, next_offsets
