"""The bridge's rules for Synapse's Redis lines: batches, duplicates and gaps, decided.

This is the sans-IO core of ``adapter.runtime.bridge``. The shell feeds it every
RDATA and POSITION (parsed) and every (re)connect, in arrival order, carries out the
decision it gets back (publish to Kafka, read a repair from the database, count a
gap), and reports every command it put on Kafka with :meth:`BridgeRules.published`.
The rules never read a database, a clock or a socket. State is one token per
(stream, writer): the last one on Kafka, seeded at start from the positions topic.

* **Rule 1: rows of one token are joined per (stream, writer).** Synapse sends the
  rows of one token as several RDATA lines, every one but the last with the token
  ``batch``: those rows are :class:`Buffered`, and the line with the token gives ONE
  record with all of them. Keyed by writer too, unlike Synapse, so two writers'
  batches never mix. A POSITION, or a reconnect, drops pending rows, as Synapse
  does: a catch-up reads such tokens whole again.
* **Rule 2: RDATA at or below the writer's last token is a duplicate** (already
  published live, or read back by a repair): :class:`~adapter.core.positions.Drop`,
  with its pending rows.
* **Rule 3: a POSITION whose ``prev`` is past the last token means rows were missed**
  (Synapse's own gap test on POSITION): :class:`Repair` ``(last, new]`` before the
  POSITION is published. Every instance sends a POSITION in answer to the bridge's
  ``REPLICATE`` after a reconnect. The token then follows ``new``, even downwards
  (an in-memory stream whose writer restarted).
* **Rule 4: right after a reconnect every known writer is suspect** until its next
  RDATA or POSITION. Its first RDATA (above the last token) may follow lost rows: of
  the tokens in between, and of this token if part of its batch went by during the
  outage. With a database, :class:`Repair` ``(last, token]`` and publish the live
  record only if the repair did not reach its token (:meth:`BridgeRules.after_repair`:
  the database may no longer hold it). Without one, only a jump past ``last + 1`` is
  a gap worth counting: :class:`Unrepaired`, and the live record is published.
* **Rule 5: without a database every gap is** :class:`Unrepaired`: the shell counts
  it and publishes what it has; consumers backfill.

Example::

    >>> from adapter.core.commands import parse_line
    >>> rules = BridgeRules(published={("typing", "master"): 4}, database=True)
    >>> rules.reconnected()
    >>> rules.rdata(parse_line('RDATA typing master batch ["!a:x",[]]'))
    Buffered()
    >>> repair = rules.rdata(parse_line('RDATA typing master 7 ["!b:x",[]]'))
    >>> repair.from_token, repair.to_token, len(repair.live.rows)
    (4, 7, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from adapter.core.commands import PositionCommand, RdataCommand
from adapter.core.errors import PositionError
from adapter.core.frozen import frozen_maker
from adapter.core.positions import Drop, DropReason, StreamWriter
from adapter.core.rows import Row

__all__ = [
    "BridgeRules",
    "Buffered",
    "PositionDecision",
    "Publish",
    "PublishPosition",
    "RdataDecision",
    "Repair",
    "Unrepaired",
]


@dataclass(frozen=True, slots=True)
class Buffered:
    """A ``batch`` line: its rows wait for the line with the token."""


@dataclass(frozen=True, slots=True)
class Unrepaired:
    """Rows of the writer in (from_token, to_token] may be missing for good.

    There is no database to read them from: the shell logs and counts the gap
    (``synkafka_bridge_gaps{outcome="unrepaired"}``); consumers backfill.

    Attributes:
        stream: the stream name.
        writer: the writer instance name.
        from_token: the writer's last token on Kafka.
        to_token: the token of the line that showed the gap.
    """

    stream: str
    writer: str
    from_token: int
    to_token: int


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish this RDATA record (the rows of one token, joined).

    Attributes:
        command: the record; its token is never ``None``.
        gap: a gap to count before it, when there is no database (Rule 4).
    """

    command: RdataCommand
    gap: Unrepaired | None = None


@dataclass(frozen=True, slots=True)
class Repair:
    """Publish the writer's rows in (from_token, to_token] from the database first.

    The shell reads them in token order and reports each record it publishes with
    :meth:`BridgeRules.published`; whatever it cannot read it counts as unrepaired.

    Attributes:
        stream: the stream name.
        writer: the writer instance name.
        from_token: exclusive: the writer's last token on Kafka.
        to_token: inclusive: the token of the line that showed the gap.
        live: the RDATA that showed it; what becomes of it after the repair is
            :meth:`BridgeRules.after_repair`'s decision. ``None`` for the gap of a
            POSITION, which is published after the repair whatever it found.
    """

    stream: str
    writer: str
    from_token: int
    to_token: int
    live: RdataCommand | None = None


@dataclass(frozen=True, slots=True)
class PublishPosition:
    """Publish this POSITION, after carrying out its gap if it has one.

    Attributes:
        command: the POSITION.
        gap: :class:`Repair` (a database is configured) or :class:`Unrepaired` of
            the rows it says were missed, or ``None``.
    """

    command: PositionCommand
    gap: Repair | Unrepaired | None = None


#: What :meth:`BridgeRules.rdata` decides; the shell matches it exhaustively.
RdataDecision: TypeAlias = Buffered | Publish | Drop | Repair

#: What :meth:`BridgeRules.position` decides.
PositionDecision: TypeAlias = PublishPosition

_BUFFERED: Final = Buffered()
# One Publish per live record, one PublishPosition per POSITION: built without the
# frozen __init__.
_publish: Final[Callable[[RdataCommand, Unrepaired | None], Publish]] = frozen_maker(
    Publish
)
_publish_position: Final[
    Callable[[PositionCommand, Repair | Unrepaired | None], PublishPosition]
] = frozen_maker(PublishPosition)


class BridgeRules:
    """The bridge's state machine (see the module rules).

    Args:
        published: the last token already on Kafka per (stream, writer), e.g. read
            from the positions topic at start.
        database: whether a database is configured to read gaps back from.
    """

    def __init__(
        self, *, published: Mapping[StreamWriter, int] | None = None, database: bool
    ) -> None:
        self._published: dict[StreamWriter, int] = dict(published or {})
        self._database = database
        self._pending: dict[StreamWriter, list[Row]] = {}
        # Keys not heard from since the last reconnect (Rule 4).
        self._suspect: set[StreamWriter] = set()

    def snapshot(self) -> dict[StreamWriter, int]:
        """Return a copy of the last token on Kafka per (stream, writer)."""
        return dict(self._published)

    def reconnected(self) -> None:
        """Redis (re)subscribed: lines published meanwhile are lost (Rules 1 and 4)."""
        self._suspect = set(self._published)
        # Batches cut by the disconnect are incomplete; a repair reads such tokens
        # whole from the database.
        self._pending.clear()

    def rdata(self, command: RdataCommand) -> RdataDecision:
        """Decide what to do with one RDATA line (Rules 1, 2, 4 and 5)."""
        key = (command.stream_name, command.instance_name)
        token = command.token
        if token is None:
            self._pending.setdefault(key, []).extend(command.rows)
            return _BUFFERED
        batch = self._pending.pop(key, None)
        last = self._published.get(key)
        if last is not None and token <= last:
            return Drop(key[0], key[1], token, DropReason.DUPLICATE)
        if batch is not None:
            command = RdataCommand(key[0], key[1], token, (*batch, *command.rows))
        if last is not None and key in self._suspect:
            self._suspect.discard(key)
            if self._database:
                return Repair(key[0], key[1], last, token, command)
            if token > last + 1:
                return Publish(command, Unrepaired(key[0], key[1], last, token))
        return _publish(command, None)

    def after_repair(self, repair: Repair) -> Publish | Drop | None:
        """Decide on the live RDATA of a carried-out :class:`Repair` (Rule 4).

        Returns:
            :class:`~adapter.core.positions.Drop` when the repair published its token, else
            :class:`Publish` of the live record (the database no longer holds that
            token, or the read failed); ``None`` for a POSITION's repair.
        """
        live = repair.live
        if live is None:
            return None
        last = self._published.get((repair.stream, repair.writer))
        if last is not None and last >= repair.to_token:
            return Drop(
                repair.stream, repair.writer, repair.to_token, DropReason.REPAIRED
            )
        return _publish(live, None)

    def position(self, command: PositionCommand) -> PositionDecision:
        """Decide what to do with one POSITION line (Rules 1, 3 and 5)."""
        key = (command.stream_name, command.instance_name)
        self._suspect.discard(key)
        self._pending.pop(key, None)
        last = self._published.get(key)
        if last is None or command.prev_token <= last:
            return _publish_position(command, None)
        gap: Repair | Unrepaired
        if self._database:
            gap = Repair(key[0], key[1], last, command.new_token)
        else:
            gap = Unrepaired(key[0], key[1], last, command.new_token)
        return PublishPosition(command, gap)

    def published(self, command: RdataCommand | PositionCommand) -> None:
        """Record that ``command`` is on Kafka: its token is the writer's last now.

        A POSITION's new token is taken even below the last one: an in-memory stream
        (typing) restarts from a lower token with its writer.

        Raises:
            PositionError: an RDATA without a token (a ``batch`` line is never
                published alone).
        """
        if isinstance(command, RdataCommand):
            token = command.token
            if token is None:
                raise PositionError("a batch line is never published alone")
        else:
            token = command.new_token
        self._published[command.stream_name, command.instance_name] = token
