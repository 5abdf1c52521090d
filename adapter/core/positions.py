"""Catch-up state of a consumer: one token per (stream, writer), decisions out.

This is the sans-IO core of the consumer (docs/architecture.md, steps 1 and 4). The runtime feeds it
what arrives on Kafka and does what the returned decision says; the tracker never
reads a database, a clock or a socket.

* **Rule 1: state is one token per (stream, writer).** Writers of a multi-writer
  stream (events, receipts, device_lists, caches) are tracked separately; a minimum
  across writers is only taken for the "unknown writer" rule and :meth:`min_token`.
* **Rule 2: RDATA only moves forward.** RDATA at or below the writer's token is a
  duplicate (a redelivery after a crash, or an old record) and is dropped; above it, it
  is applied and becomes the token. RDATA carries no "previous token", so a gap
  *between* RDATA records is not detectable here, as in Synapse; Kafka does not lose
  records inside a partition, and a POSITION repairs anything lost before Kafka.
* **Rule 3: POSITION(prev, new) promises the writer wrote nothing in (prev, new].**
  With ``cur`` the writer's token (Synapse ``_process_position``, range test of
  matrix-org/synapse#16555):

  - ``prev <= cur < new``: nothing is missing; jump to ``new``.
  - ``cur < prev``: rows in (cur, prev] were missed. A database stream asks for a
    :class:`Backfill` of (cur, new]; an in-memory stream reports a :class:`Gap` and
    jumps, because nothing can be read back.
  - ``new <= cur``: for a database stream this is stale (a no-op announcement or a
    redelivered record) and dropped, as Synapse's ``can_discard_position`` does. For
    an in-memory stream ``new < cur`` means the writer restarted and the stream was
    reset: :class:`Reset` and follow it.
* **Rule 4: a backfill finishes before the writer is observed again.** While a
  :class:`Backfill` is outstanding the tracker stays at its ``from_token``; the
  runtime reads the rows, reports progress with :meth:`PositionTracker.backfilled`,
  and only then observes the next record of that (stream, writer). Observing it
  earlier raises :class:`~adapter.core.errors.PositionError`: rows would go out of order.
* **Rule 5: an unknown writer starts at the stream's minimum** (Synapse's catch-up rule,
  matrix-org/synapse#16473), never at 0, which would mean a full table scan. See
  :meth:`PositionTracker.observe_position` and
  :meth:`PositionTracker.observe_rdata` for the cases.
* **Rule 5b: a writer whose records Kafka may have lost is checked** (a consumer
  replaying Kafka from a committed offset that retention has since deleted,
  :meth:`PositionTracker.seed_unverified`). Its first record decides: an RDATA above
  ``token + 1`` gives a :class:`Backfill` of the tokens before it, a POSITION goes
  through Rule 3. A writer with no record at all is settled by the runtime at the
  pinned head (:meth:`PositionTracker.settle_unverified`).
* **Rule 6: commit metadata is the consumer's POSITION.** :func:`encode_commit_metadata`
  packs the token map into the string Kafka stores next to a committed offset.

The bridge joins Synapse's ``batch``-token RDATA lines into one record per token
(:mod:`adapter.core.bridge_rules`), so every RDATA record seen here is one token.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from adapter.core.errors import DecodeError, EncodeError, PositionError

__all__ = [
    "COMMIT_METADATA_VERSION",
    "MAX_COMMIT_METADATA_BYTES",
    "Apply",
    "Backfill",
    "Decision",
    "Drop",
    "DropReason",
    "Gap",
    "PositionTracker",
    "Reset",
    "StreamWriter",
    "decode_commit_metadata",
    "encode_commit_metadata",
]

#: A (stream name, writer instance name) pair: the unit of ordering and of state.
StreamWriter: TypeAlias = tuple[str, str]

#: The broker's default ``offset.metadata.max.bytes``. A commit whose metadata is
#: longer fails as a whole with ``OFFSET_METADATA_TOO_LARGE``.
MAX_COMMIT_METADATA_BYTES: Final = 4096

#: The ``v`` field of the commit metadata this version writes and reads.
COMMIT_METADATA_VERSION: Final = 1


class DropReason(enum.StrEnum):
    """Why a record changes nothing."""

    #: RDATA at or below the writer's token: already applied (or covered by a
    #: backfill or by the stream minimum an unknown writer started at).
    DUPLICATE = "duplicate"
    #: POSITION whose new token is not ahead of the writer's token.
    STALE_POSITION = "stale_position"
    #: POSITION with prev > new: no writer sends that; the record is bad.
    MALFORMED_POSITION = "malformed_position"
    #: (The bridge) live RDATA whose token the repair it asked for read back.
    REPAIRED = "repaired"


@dataclass(frozen=True, slots=True)
class Apply:
    """Hand the record to the handlers; the writer's token is now ``token``.

    Attributes:
        stream: the stream name.
        writer: the writer instance name.
        token: the new token.
        n_rows: rows to hand over; 0 when a POSITION moved the token without rows
            (the runtime then only announces the new position, Synapse's
            ``on_position``).
    """

    stream: str
    writer: str
    token: int
    n_rows: int = 0


@dataclass(frozen=True, slots=True)
class Drop:
    """Ignore the record; nothing changed.

    Attributes:
        stream: the stream name.
        writer: the writer instance name.
        token: the record's token (the new token of a POSITION).
        reason: why.
    """

    stream: str
    writer: str
    token: int
    reason: DropReason


@dataclass(frozen=True, slots=True)
class Backfill:
    """Read the writer's rows in (from_token, to_token] from the database first.

    The runtime reads them in pages in token order, hands them to the handlers, and
    calls :meth:`PositionTracker.backfilled` after each page. Until the last page the
    tracker stays behind and refuses further records of this (stream, writer).

    Attributes:
        stream: the stream name.
        writer: the writer instance name.
        from_token: exclusive lower bound: the token the tracker is at.
        to_token: inclusive upper bound.
    """

    stream: str
    writer: str
    from_token: int
    to_token: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Rows in (from_token, to_token] may be lost and cannot be read back.

    Only for streams without a database source (typing, federation,
    presence_federation). The tracker has moved to ``to_token``; the runtime logs and
    counts it, and handlers that care can resynchronise.

    Attributes:
        stream: the stream name.
        writer: the writer instance name.
        from_token: the token the tracker was at.
        to_token: the token it is at now.
    """

    stream: str
    writer: str
    from_token: int
    to_token: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The stream went backwards (its in-memory writer restarted); follow it.

    The tracker is now at ``new_token``; handlers that keep derived state for this
    stream should drop it.

    Attributes:
        stream: the stream name.
        writer: the writer instance name.
        new_token: the token the tracker is at now.
        old_token: the token it was at.
    """

    stream: str
    writer: str
    new_token: int
    old_token: int


#: Everything :class:`PositionTracker` can decide; match it exhaustively with
#: ``typing.assert_never`` in the default branch.
Decision: TypeAlias = Apply | Drop | Backfill | Gap | Reset


def _is_token(value: object) -> bool:
    # bool is an int subclass, but a True token is a bug, not position 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_token(what: str, value: object) -> None:
    # Tokens come from our own decoder, so a wrong type is a bug in the caller.
    if not _is_token(value):
        raise PositionError(f"{what} must be an int, got {value!r}")


class PositionTracker:
    """The token state machine of one consumer (see the module rules).

    Args:
        database_streams: streams whose rows can be read back from a database; a gap
            on them becomes a :class:`Backfill`. Every other stream is treated as
            in-memory (gaps become :class:`Gap`, and a POSITION below the token is a
            :class:`Reset`).
        tokens: initial tokens, for example from :func:`decode_commit_metadata`;
            same as calling :meth:`seed` for each.
    """

    def __init__(
        self,
        *,
        database_streams: Iterable[str],
        tokens: Mapping[StreamWriter, int] | None = None,
    ) -> None:
        self._database_streams = frozenset(database_streams)
        # stream -> writer -> token: per-stream dicts make the stream minimum cheap.
        self._tokens: dict[str, dict[str, int]] = {}
        # (stream, writer) -> to_token of the outstanding backfill.
        self._backfills: dict[StreamWriter, int] = {}
        # (stream, writer) -> token of a writer whose next record is checked for a
        # gap (Rule 5b). Kept out of _tokens so the hot path (try_apply_rdata) sees an
        # unknown writer and sends its first record through observe_rdata.
        self._unverified: dict[StreamWriter, int] = {}
        for (stream, writer), token in (tokens or {}).items():
            self.seed(stream, writer, token)

    # -- state ---------------------------------------------------------------------

    def is_database_stream(self, stream: str) -> bool:
        """Whether gaps on ``stream`` can be backfilled from a database."""
        return stream in self._database_streams

    def seed(self, stream: str, writer: str, token: int) -> None:
        """Set a writer's token, before anything of it is observed.

        Step 1 (docs/architecture.md): tokens come from the committed offset's metadata, or from
        the database's positions when there is no commit yet.

        Raises:
            PositionError: the token is not an int, or a backfill of this writer is
                outstanding.
        """
        _check_token("token", token)
        self._refuse_during_backfill(stream, writer)
        self._unverified.pop((stream, writer), None)
        self._tokens.setdefault(stream, {})[writer] = token

    def seed_unverified(self, stream: str, writer: str, token: int) -> None:
        """Set a writer's token and check its next record for a gap (Rule 5b).

        For a consumer that replays Kafka from a committed offset whose records
        retention deleted: the writer's records right after ``token`` may be gone.
        Its first RDATA above ``token + 1`` then gives a :class:`Backfill` of
        ``(token, rdata_token - 1]`` (the record itself is applied after it), and its
        first POSITION is judged by Rule 3 from ``token``. Tokens of one writer need
        not be consecutive (writers of a stream share one sequence), so a backfill
        that finds no rows is the price of not knowing.

        Raises:
            PositionError: the token is not an int, or a backfill of this writer is
                outstanding.
        """
        _check_token("token", token)
        self._refuse_during_backfill(stream, writer)
        self._tokens.get(stream, {}).pop(writer, None)
        self._unverified[stream, writer] = token

    def unverified(self, stream: str) -> dict[str, int]:
        """The writers of ``stream`` still waiting for their first record (Rule 5b)."""
        return {w: t for (s, w), t in self._unverified.items() if s == stream}

    def settle_unverified(
        self, stream: str, writer: str, position: int
    ) -> Backfill | None:
        """Settle a writer that had no record on Kafka up to the pinned head.

        Every record below the pinned head is at or below the database position read
        after pinning it; a writer with none of them has lost ``(token, position]``
        to retention (or never published it). Returns that :class:`Backfill`, or None
        when nothing is missing; either way the writer is known from now on.

        Raises:
            PositionError: the writer is not waiting (see :meth:`seed_unverified`).
        """
        _check_token("position", position)
        token = self._unverified.pop((stream, writer), None)
        if token is None:
            raise PositionError(f"{stream}/{writer}: not waiting for a first record")
        self._set(stream, writer, token)
        if position <= token:
            return None
        self._backfills[stream, writer] = position
        return Backfill(stream, writer, token, position)

    def token(self, stream: str, writer: str) -> int | None:
        """Return the writer's token, or ``None`` for a writer not seen yet."""
        return self._tokens.get(stream, {}).get(writer)

    def min_token(self, stream: str) -> int | None:
        """Return the lowest token over the stream's known writers, or ``None``.

        This is the linear "every fact up to here" view of a multi-writer stream,
        Synapse's ``persisted_upto`` as far as this consumer knows.
        """
        writers = self._tokens.get(stream)
        return min(writers.values()) if writers else None

    def snapshot(self) -> dict[StreamWriter, int]:
        """Return a copy of every (stream, writer) token."""
        return {
            (stream, writer): token
            for stream, writers in self._tokens.items()
            for writer, token in writers.items()
        }

    def pending_backfill(self, stream: str, writer: str) -> Backfill | None:
        """Return what is still to backfill for this writer, or ``None``."""
        to_token = self._backfills.get((stream, writer))
        if to_token is None:
            return None
        return Backfill(stream, writer, self._tokens[stream][writer], to_token)

    def lag_tokens(
        self, head_tokens: Mapping[StreamWriter, int]
    ) -> dict[StreamWriter, int]:
        """Say how many tokens each writer is behind a head, for metrics.

        Args:
            head_tokens: the latest token per (stream, writer), from the positions
                topic or the last records.

        Returns:
            ``head - token`` per key of ``head_tokens``, never negative (a head that
            is behind the tracker is stale, or an in-memory stream was reset). An
            unknown writer counts from where it would start (Rule 5): the stream's
            minimum, or the head itself when the stream has no known writer.
        """
        lag: dict[StreamWriter, int] = {}
        for (stream, writer), head in head_tokens.items():
            current = self.token(stream, writer)
            if current is None:
                current = self.min_token(stream)
            lag[stream, writer] = max(0, head - (head if current is None else current))
        return lag

    def _refuse_during_backfill(self, stream: str, writer: str) -> None:
        if (stream, writer) in self._backfills:
            raise PositionError(
                f"{stream}/{writer}: backfill up to {self._backfills[stream, writer]} "
                "is outstanding; finish it before observing more of this writer"
            )

    def _set(self, stream: str, writer: str, token: int) -> None:
        self._tokens.setdefault(stream, {})[writer] = token

    # -- observations --------------------------------------------------------------

    def observe_rdata(
        self, stream: str, writer: str, token: int, n_rows: int
    ) -> Decision:
        """Decide what to do with one RDATA record (all rows of one token).

        An unknown writer (Rule 5):

        * on a database stream whose other writers are known, starts at their
          minimum ``m``: RDATA at or below ``m`` is a duplicate, and RDATA above it
          gives a :class:`Backfill` of (m, token], which reads this record's rows too,
          so nothing the writer wrote after ``m`` is missed;
        * on a stream with no known writer, or an in-memory stream, there is nothing
          to start from or to read back: the record is applied and the writer starts
          at its token. Step 1 seeds every writer the database knows, so
          this is a writer that appeared after we started.

        Args:
            stream: the stream name.
            writer: the writer instance name.
            token: the record's token (a joined batch: never ``None``).
            n_rows: how many rows the record holds.

        Returns:
            :class:`Apply`, :class:`Drop` or :class:`Backfill`. A backfill of a
            writer seeded with :meth:`seed_unverified` may end *before* ``token``:
            then the record is not covered by it, and the caller observes it again
            once the backfill is queued.

        Raises:
            PositionError: a token that is not an int, a negative row count, or a
                backfill of this writer is outstanding.
        """
        _check_token("RDATA token", token)
        if n_rows < 0:
            raise PositionError(f"n_rows must not be negative, got {n_rows}")
        self._refuse_during_backfill(stream, writer)
        current = self.token(stream, writer)
        if current is None and self._unverified:
            checked = self._unverified.pop((stream, writer), None)
            if checked is not None:
                # Rule 5b: the first record after records Kafka may have lost.
                self._set(stream, writer, checked)
                if token - 1 > checked and self.is_database_stream(stream):
                    self._backfills[stream, writer] = token - 1
                    return Backfill(stream, writer, checked, token - 1)
                current = checked
        if current is None:
            start = self.min_token(stream)
            if start is None or not self.is_database_stream(stream):
                # Nothing to start from (or to read back): trust the writer.
                self._set(stream, writer, token)
                return Apply(stream, writer, token, n_rows)
            self._set(stream, writer, start)
            if token > start:
                # Rows of this writer in (start, token) may predate our first sight of
                # it; read them and this record's rows from the database.
                self._backfills[stream, writer] = token
                return Backfill(stream, writer, start, token)
            current = start
        if token <= current:
            # Already applied (a redelivered tail after a crash, or an old record):
            # RDATA only ever moves a token forward.
            return Drop(stream, writer, token, DropReason.DUPLICATE)
        self._set(stream, writer, token)
        return Apply(stream, writer, token, n_rows)

    def try_apply_rdata(self, stream: str, writer: str, token: int) -> bool:
        """The usual outcome of :meth:`observe_rdata`, decided without a decision object.

        True when the RDATA is the next one of a known writer with no backfill
        outstanding: the token is taken (exactly what ``observe_rdata`` would do
        before returning :class:`Apply`) and the caller hands the rows over. False
        changes nothing: ask :meth:`observe_rdata` for the full decision. The live
        consumer calls this once per record.
        """
        writers = self._tokens.get(stream)
        if writers is None or type(token) is not int:
            return False
        current = writers.get(writer)
        if current is None or token <= current:
            return False
        if self._backfills and (stream, writer) in self._backfills:
            return False
        writers[writer] = token
        return True

    def observe_position(
        self, stream: str, writer: str, prev: int, new: int
    ) -> Decision:
        """Decide what to do with one POSITION(prev, new) record (Rule 3).

        An unknown writer starts at the stream's minimum (Synapse gives an unknown
        writer ``persisted_upto``, matrix-org/synapse#16473); if the stream has no
        known writer, or is in-memory, at ``prev``, as if it had announced itself
        before. Then the range test applies as for any writer.

        Args:
            stream: the stream name.
            writer: the writer instance name.
            prev: the writer's previous announced token.
            new: its current token.

        Returns:
            :class:`Apply` (with 0 rows), :class:`Drop`, :class:`Backfill`,
            :class:`Gap` or :class:`Reset`.

        Raises:
            PositionError: a token that is not an int, or a backfill of this writer is
                outstanding.
        """
        _check_token("POSITION prev token", prev)
        _check_token("POSITION new token", new)
        self._refuse_during_backfill(stream, writer)
        if prev > new:
            # A writer only ever announces prev <= new; do not let it move us.
            return Drop(stream, writer, new, DropReason.MALFORMED_POSITION)
        database = self.is_database_stream(stream)
        current = self.token(stream, writer)
        if current is None and self._unverified:
            # Rule 5b: a POSITION carries its own range test.
            checked = self._unverified.pop((stream, writer), None)
            if checked is not None:
                self._set(stream, writer, checked)
                current = checked
        if current is None:
            start = self.min_token(stream) if database else None
            current = prev if start is None else start
            self._set(stream, writer, current)
        if new == current or (new < current and database):
            # Nothing new. Database streams never go backwards, so new < cur is a
            # redelivered or outdated POSITION (Synapse can_discard_position).
            return Drop(stream, writer, new, DropReason.STALE_POSITION)
        if new < current:
            # An in-memory stream restarted from a lower token (typing after its
            # writer restarted): follow it, or every later RDATA would be dropped.
            self._set(stream, writer, new)
            return Reset(stream, writer, new, current)
        if prev <= current:
            # The writer wrote nothing in (prev, new] and we have seen prev.
            self._set(stream, writer, new)
            return Apply(stream, writer, new)
        if database:
            # We missed rows in (cur, prev]. Read (cur, new]: the writer promised
            # nothing is in (prev, new], so that costs nothing and leaves no hole if
            # it was wrong.
            self._backfills[stream, writer] = new
            return Backfill(stream, writer, current, new)
        # In-memory: the rows are gone with the writer's memory; say so and move on.
        self._set(stream, writer, new)
        return Gap(stream, writer, current, new)

    def backfilled(self, stream: str, writer: str, upto: int) -> bool:
        """Record that the rows of an outstanding backfill are handled up to ``upto``.

        Call it after each page (the "limited" rule: a page ends at a token, and every
        row at or below it has been returned).

        Args:
            stream: the stream name.
            writer: the writer instance name.
            upto: the last token handled, inclusive.

        Returns:
            ``True`` once the backfill reached its ``to_token`` and is finished.

        Raises:
            PositionError: no backfill is outstanding, or ``upto`` is not inside it
                (not above the current token or beyond ``to_token``).
        """
        _check_token("backfilled token", upto)
        to_token = self._backfills.get((stream, writer))
        if to_token is None:
            raise PositionError(f"{stream}/{writer}: no backfill is outstanding")
        current = self._tokens[stream][writer]
        if not current < upto <= to_token:
            raise PositionError(
                f"{stream}/{writer}: backfilled up to {upto} is outside ({current}, {to_token}]"
            )
        self._tokens[stream][writer] = upto
        if upto < to_token:
            return False
        del self._backfills[stream, writer]
        return True


# -- commit metadata ----------------------------------------------------------------


def encode_commit_metadata(
    tokens: Mapping[StreamWriter, int], *, max_bytes: int = MAX_COMMIT_METADATA_BYTES
) -> str:
    """Pack a token map into the metadata string of an offset commit.

    The format is compact JSON, grouped by stream so a stream name is written once:
    ``{"v":1,"t":{"events":{"master":1234,"persister1":1240}}}``. It is ASCII only
    (``ensure_ascii``), so its length in characters is its length in bytes.

    Size: the broker limits metadata to ``offset.metadata.max.bytes`` (4096 by
    default) and fails the *whole* commit above it. One writer costs its name plus
    the token's digits plus 4 bytes, so one stream fits about 130 writers named like
    ``event_persister12`` with 10-digit tokens. Pass only the keys of the partition being
    committed (one stream per topic keeps that small). If it still does not fit,
    raise the broker limit; never commit without the tokens, since the committed
    offset must be the consumer's POSITION.

    Args:
        tokens: the tokens to store (usually those of one partition's stream).
        max_bytes: the broker's ``offset.metadata.max.bytes``.

    Returns:
        The metadata string.

    Raises:
        EncodeError: the result is longer than ``max_bytes``, or a token is not an
            int.
    """
    grouped: dict[str, dict[str, int]] = {}
    for (stream, writer), token in tokens.items():
        if not _is_token(token):
            raise EncodeError(
                f"token must be an int, got {token!r}", path=f"{stream}/{writer}"
            )
        grouped.setdefault(stream, {})[writer] = token
    text = json.dumps(
        {"v": COMMIT_METADATA_VERSION, "t": grouped},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=True,
    )
    if len(text) > max_bytes:
        raise EncodeError(
            f"commit metadata for {len(tokens)} writers is {len(text)} bytes, "
            f"over offset.metadata.max.bytes={max_bytes}"
        )
    return text


def decode_commit_metadata(text: str) -> dict[StreamWriter, int]:
    """Unpack metadata written by :func:`encode_commit_metadata`.

    Args:
        text: the metadata string of a committed offset. Kafka reports ``""`` for a
            commit without metadata; that gives an empty map.

    Returns:
        The token per (stream, writer).

    Raises:
        DecodeError: the text is not this format or names another version.
    """
    if text == "":
        return {}
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise DecodeError(f"commit metadata is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DecodeError("commit metadata is not a JSON object")
    version = document.get("v")
    if not _is_token(version) or version != COMMIT_METADATA_VERSION:
        raise DecodeError(f"commit metadata version {version!r} is not supported")
    grouped = document.get("t")
    if not isinstance(grouped, dict):
        raise DecodeError("commit metadata has no token map")
    tokens: dict[StreamWriter, int] = {}
    for stream, writers in grouped.items():
        if not isinstance(writers, dict):
            raise DecodeError(
                f"commit metadata: stream {stream!r} is not a map of writers"
            )
        for writer, token in writers.items():
            if not _is_token(token):
                raise DecodeError(
                    f"commit metadata: token of {stream}/{writer} is {token!r}"
                )
            tokens[stream, writer] = token
    return tokens
