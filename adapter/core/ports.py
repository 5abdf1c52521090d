"""The seams between synkafka's core and the code that uses it.

A handler receives :class:`StreamUpdate` values: every row of one token of one
(stream, writer), in token order within the stream, exactly as Synapse's
``on_rdata(stream, instance, token, rows)`` would see them. ``source`` says whether
the rows came from Kafka or were read from the database to fill a gap, so a handler
(or a test) can tell. Handlers may be plain functions or ``async`` functions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

from adapter.core.frozen import frozen_maker

__all__ = ["BackfillReader", "Handler", "Source", "StreamUpdate", "make_update"]

Source: TypeAlias = Literal["kafka", "backfill"]


@dataclass(frozen=True, slots=True)
class StreamUpdate:
    """Rows of one token of one stream writer.

    Attributes:
        stream_name: the Synapse stream (``events``, ``receipts``...).
        instance_name: the writer that produced the rows (``master``, ``event_persister1``).
        token: the stream token the rows share.
        rows: the typed rows (see :mod:`adapter.core.rows`); empty for a bare position
            advance, which handlers are not called for.
        source: ``kafka`` for live records, ``backfill`` for rows read from the database.
    """

    stream_name: str
    instance_name: str
    token: int
    rows: tuple[Any, ...]
    source: Source


make_update: Callable[[str, str, int, tuple[Any, ...], Source], StreamUpdate] = (
    frozen_maker(StreamUpdate)
)
"""``StreamUpdate(stream_name, instance_name, token, rows, source)`` for the consumer's
hot path (once per live record), without the frozen ``__init__``; same result."""


Handler: TypeAlias = Callable[[StreamUpdate], Awaitable[None] | None]


class BackfillReader(Protocol):
    """Reads stream rows and writer positions from the database of record.

    Implementations wrap one database connection; they are used from one thread.
    """

    def has_source(self, stream_name: str) -> bool:
        """Whether rows of this stream can be read from the database at all."""
        ...

    def positions(self, stream_name: str) -> dict[str, int]:
        """Each writer's current persisted token for the stream."""
        ...

    def read(
        self, stream_name: str, instance_name: str, from_token: int, to_token: int
    ) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """``(token, typed rows)`` for tokens in ``(from_token, to_token]``, ascending.

        Raises:
            BackfillError: the database failed (``retriable`` says whether to retry).
        """
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
