"""Many plain message events at once, for benchmarks and large backfills."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from adapter.devstack.writer.base import DEFAULT_SENDER, WriterBase
from adapter.devstack.writer.events import event_json
from adapter.io.db.sources import WireRow

__all__ = ["BulkEventWrites", "BulkResult"]


@dataclass(frozen=True, slots=True)
class BulkResult:
    """The outcome of :meth:`SynapseWriter.bulk_events`.

    Attributes:
        count: how many events were written.
        first_token: the lowest token written.
        last_token: the highest token written.
        rows: the ``(token, wire_row)`` pairs, only when asked for.
    """

    count: int
    first_token: int
    last_token: int
    rows: list[tuple[int, WireRow]] = field(default_factory=list)


class BulkEventWrites(WriterBase):
    """:meth:`bulk_events`: ``events`` rows by the batch (COPY on PostgreSQL)."""

    def bulk_events(
        self,
        count: int,
        *,
        room_ids: Sequence[str] = ("!bench:test",),
        event_type: str = "m.room.message",
        sender: str = DEFAULT_SENDER,
        batch_size: int = 50_000,
        with_json: bool = False,
        collect_rows: bool = False,
    ) -> BulkResult:
        """Write ``count`` plain message events fast (COPY on PostgreSQL).

        Only the ``events`` row (and, with ``with_json``, ``event_json``) is written;
        the events are neither state nor relations, so their wire rows are
        ``["ev", [event_id, room_id, type, None, None, None, None, False, False]]``.
        Tokens come from the shared sequence in batches of ``batch_size``.

        Args:
            count: how many events.
            room_ids: rooms to spread the events over, round robin.
            event_type: the event type.
            sender: the sender.
            batch_size: ids allocated and rows copied per round.
            with_json: also write ``event_json`` rows.
            collect_rows: return the wire rows (memory grows with ``count``).

        Returns:
            The counts, token range and optionally the rows.
        """
        first = last = 0
        collected: list[tuple[int, WireRow]] = []
        rooms = list(room_ids)
        done = 0
        now = self._now_ms()
        while done < count:
            n = min(batch_size, count - done)
            tokens = self.allocate("events", n)
            first = first or tokens[0]
            last = tokens[-1]
            ids = [f"$ev{t}-{self.instance_name}" for t in tokens]
            room_of = [rooms[(done + i) % len(rooms)] for i in range(n)]
            with self.conn.transaction():
                self.conn.copy_rows(
                    "events",
                    (
                        "topological_ordering",
                        "event_id",
                        "type",
                        "room_id",
                        "processed",
                        "outlier",
                        "depth",
                        "origin_server_ts",
                        "received_ts",
                        "sender",
                        "contains_url",
                        "instance_name",
                        "stream_ordering",
                    ),
                    (
                        (
                            t,
                            eid,
                            event_type,
                            room,
                            True,
                            False,
                            t,
                            now,
                            now,
                            sender,
                            False,
                            self.instance_name,
                            t,
                        )
                        for t, eid, room in zip(tokens, ids, room_of, strict=True)
                    ),
                )
                if with_json:
                    self.conn.copy_rows(
                        "event_json",
                        (
                            "event_id",
                            "room_id",
                            "internal_metadata",
                            "json",
                            "format_version",
                        ),
                        (
                            (
                                eid,
                                room,
                                "{}",
                                event_json(
                                    eid, room, event_type, sender, None, {}, now
                                ),
                                3,
                            )
                            for eid, room in zip(ids, room_of, strict=True)
                        ),
                    )
                self.advance_position("events", last)
            if collect_rows:
                collected.extend(
                    (
                        t,
                        [
                            "ev",
                            [
                                eid,
                                room,
                                event_type,
                                None,
                                None,
                                None,
                                None,
                                False,
                                False,
                            ],
                        ],
                    )
                    for t, eid, room in zip(tokens, ids, room_of, strict=True)
                )
            done += n
        return BulkResult(count, first, last, collected)
