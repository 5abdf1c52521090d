"""The demo's terminal views: a block redrawn in place, or a line now and then.

The scenario reports through the :class:`Display` protocol: :class:`LiveView` on a
terminal (ANSI cursor movement), :class:`PlainView` off one (logs, CI, pipes).
:class:`StreamTotals` is one stream's line, in the view and in the final summary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Final, Protocol

__all__ = [
    "TOTALS_HEADER",
    "Display",
    "Frame",
    "LiveView",
    "PlainView",
    "StreamTotals",
    "sum_totals",
    "totals_line",
]


@dataclass(frozen=True, slots=True)
class StreamTotals:
    """One stream's line in the view and the summary.

    Attributes:
        stream: the stream name.
        writers: how many writers wrote it.
        written: rows written after the history.
        delivered: rows in the JSON lines.
        backfill: of which from the database.
        lag_tokens: tokens published but not yet delivered, over its writers.
        lag_messages: records not yet committed by the consumer group, or None
            before the first measurement.
    """

    stream: str
    writers: int
    written: int
    delivered: int
    backfill: int
    lag_tokens: int
    lag_messages: int | None


@dataclass(frozen=True, slots=True)
class Frame:
    """What the progress view shows at one moment.

    Attributes:
        elapsed_s: seconds since the scenario started.
        phase: what is happening, in words.
        streams: one line per stream.
        consumer: the consumer's state, in words.
        presence: one phrase per presence instance.
    """

    elapsed_s: float
    phase: str
    streams: tuple[StreamTotals, ...]
    consumer: str
    presence: tuple[str, ...]


class Display(Protocol):
    """Where the scenario reports progress."""

    def event(self, message: str) -> None:
        """A step happened (printed once, above the live block)."""
        ...

    def update(self, frame: Frame) -> None:
        """The state changed (redraw or, now and then, print a line)."""
        ...

    def close(self) -> None:
        """The run is over: leave the last state on screen."""
        ...


def totals_line(t: StreamTotals) -> str:
    """One stream's line of the table, aligned under :data:`TOTALS_HEADER`."""
    msgs = "-" if t.lag_messages is None else str(t.lag_messages)
    return (
        f"  {t.stream:<14}{t.writers:>8}{t.written:>9}{t.delivered:>11}"
        f"{t.backfill:>10}{t.lag_tokens:>12}{msgs:>10}"
    )


def sum_totals(streams: Sequence[StreamTotals]) -> StreamTotals:
    """The ``total`` line: every column summed (lag in messages only where known)."""
    known = [t.lag_messages for t in streams if t.lag_messages is not None]
    return StreamTotals(
        "total",
        sum(t.writers for t in streams),
        sum(t.written for t in streams),
        sum(t.delivered for t in streams),
        sum(t.backfill for t in streams),
        sum(t.lag_tokens for t in streams),
        sum(known) if known else None,
    )


TOTALS_HEADER: Final = (
    f"  {'stream':<14}{'writers':>8}{'written':>9}{'delivered':>11}"
    f"{'backfill':>10}{'lag tokens':>12}{'lag msgs':>10}"
)
"""The header line of the per-stream table."""


class LiveView:
    """Redraws a block of lines in place on a terminal (ANSI cursor movement).

    Args:
        out: the terminal.
        min_interval_s: the shortest time between two redraws.
    """

    def __init__(self, out: IO[str], min_interval_s: float = 0.2) -> None:
        self._out = out
        self._drawn = 0
        self._last: Frame | None = None
        self._last_draw = 0.0
        self._min_interval_s = min_interval_s

    def _erase(self) -> None:
        if self._drawn:
            self._out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, frame: Frame) -> None:
        lines = [
            f"\x1b[1m{frame.elapsed_s:6.1f} s  {frame.phase}\x1b[0m",
            TOTALS_HEADER,
            *(totals_line(t) for t in frame.streams),
            totals_line(sum_totals(frame.streams)),
            f"  consumer  {frame.consumer}",
            *(
                f"  {'presence' if i == 0 else '':<8}  {p}"
                for i, p in enumerate(frame.presence)
            ),
        ]
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()
        self._drawn = len(lines)

    def event(self, message: str) -> None:
        """Print ``message`` above the block and redraw the block under it."""
        self._erase()
        self._out.write(message + "\n")
        if self._last is not None:
            self._draw(self._last)
        self._out.flush()

    def update(self, frame: Frame) -> None:
        """Redraw, at most every ``min_interval_s``."""
        self._last = frame
        now = time.monotonic()
        if now - self._last_draw < self._min_interval_s:
            return
        self._last_draw = now
        self._erase()
        self._draw(frame)

    def close(self) -> None:
        """Draw the last frame once more and leave it."""
        if self._last is not None:
            self._erase()
            self._draw(self._last)
        self._drawn = 0


class PlainView:
    """Prints one plain progress line every ``interval_s`` (logs, CI, pipes).

    Args:
        out: where to print.
        interval_s: seconds between progress lines.
    """

    def __init__(self, out: IO[str], interval_s: float = 3.0) -> None:
        self._out = out
        self._interval_s = interval_s
        self._next = 0.0

    def event(self, message: str) -> None:
        """Print ``message``."""
        self._out.write(message + "\n")
        self._out.flush()

    def update(self, frame: Frame) -> None:
        """Print a progress line if one is due."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval_s
        t = sum_totals(frame.streams)
        msgs = "?" if t.lag_messages is None else str(t.lag_messages)
        self._out.write(
            f"[{frame.elapsed_s:6.1f} s] {frame.phase}: written {t.written}, "
            f"delivered {t.delivered} (backfill {t.backfill}), lag {t.lag_tokens} "
            f"tokens / {msgs} messages; consumer {frame.consumer}; "
            f"presence: {'; '.join(frame.presence)}\n"
        )
        self._out.flush()

    def close(self) -> None:
        """Nothing to tidy up."""
