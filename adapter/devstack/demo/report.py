"""The demo's outcome: the numbers, the per-stream lines, the checks and the summary.

:func:`lag_text`, :func:`all_passed` and :func:`verdict` are shared with the
``--with-synapse`` report (:mod:`adapter.devstack.demo_synapse`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapter.devstack.demo.feed import FeedTally
from adapter.devstack.demo.views import (
    TOTALS_HEADER,
    StreamTotals,
    sum_totals,
    totals_line,
)

__all__ = ["DemoReport", "RunReport", "all_passed", "lag_text", "verdict"]


def lag_text(tokens: int | None, messages: int | None) -> str:
    """A report's lag line: both figures, or ``unknown`` when one was not measured."""
    if tokens is None or messages is None:
        return "unknown"
    return f"{tokens} tokens, {messages} messages"


def all_passed(checks: Sequence[tuple[str, bool]]) -> bool:
    """Whether there is at least one check and every check passed."""
    return bool(checks) and all(passed for _, passed in checks)


def verdict(checks: Sequence[tuple[str, bool]]) -> str:
    """The summary's last line: the checks that failed, or how many passed."""
    failed = [what for what, passed in checks if not passed]
    if failed:
        return "FAILED: " + "; ".join(failed)
    return f"All {len(checks)} checks passed."


@dataclass(slots=True)
class RunReport:
    """What every demo run reports: the final lag, the consumer's runs, the checks.

    Attributes:
        engine: ``SQLite`` or ``PostgreSQL``.
        lag_tokens: final lag in tokens over every stream (None: unknown).
        lag_messages: final lag in messages over every partition (None: unknown).
        consumer_exits: exit codes of the consumer's runs.
        catch_up_s: seconds from the restart until the consumer was ready again.
        elapsed_s: seconds the scenario took.
        output: the JSON lines file.
        checks: ``(what, passed)`` per check.
    """

    engine: str
    lag_tokens: int | None = None
    lag_messages: int | None = None
    consumer_exits: list[int] = field(default_factory=list)
    catch_up_s: float | None = None
    elapsed_s: float = 0.0
    output: Path | None = None
    checks: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed (and there was at least one)."""
        return all_passed(self.checks)

    def consumer_line(self, note: str = "") -> str:
        """The summary's line on the consumer: its exit codes, ``note``, its catch-up."""
        exits = ", ".join(str(c) for c in self.consumer_exits) or "-"
        caught_up = (
            f"; caught up {self.catch_up_s:.1f} s after the restart"
            if self.catch_up_s is not None
            else ""
        )
        return f"  consumer exit codes   {exits}{note}{caught_up}"


@dataclass(slots=True)
class DemoReport(RunReport):
    """The simulated run's outcome: numbers, per-stream lines and the checks.

    The fields of :class:`RunReport`, and:

    Attributes:
        streams: per-stream totals at the end.
        history_rows: rows written before the consumer first started.
        written: rows written after the history.
        delivered: rows in the JSON lines.
        from_backfill: of which read from the database.
        resent: records the homeserver published twice on purpose.
        dropped: duplicate rows the consumer dropped (its metric).
        twice: updates delivered more than once.
        lost: rows in the database (or typing rows) missing from the JSON lines.
        unexpected: delivered rows the database does not hold.
        db_rows: rows the database holds after the history.
        presence: one sentence per presence instance.
        writing_s: seconds the homeserver spent writing.
        feed: what the feed topic held at the end (``None``: not read).
        feed_exit: the feed's exit code on SIGTERM.
    """

    streams: list[StreamTotals] = field(default_factory=list)
    history_rows: int = 0
    written: int = 0
    delivered: int = 0
    from_backfill: int = 0
    resent: int = 0
    dropped: int = 0
    twice: int = 0
    lost: int = 0
    unexpected: int = 0
    db_rows: int = 0
    presence: list[str] = field(default_factory=list)
    writing_s: float = 0.0
    feed: FeedTally | None = None
    feed_exit: int | None = None

    def feed_line(self) -> str:
        """The summary's line on the event feed."""
        f = self.feed
        if f is None:
            return "  feed                  not read"
        return (
            f"  feed                  {f.records:>7}   events on {f.topic}, {f.missing} missing, "
            f"{f.duplicated} duplicated (read_committed; exit {self.feed_exit})"
        )

    def lines(self) -> list[str]:
        """The summary, ready to print."""
        lag = lag_text(self.lag_tokens, self.lag_messages)
        out = [
            f"Summary ({self.engine}; {len(self.streams)} streams, two writers on events)",
            TOTALS_HEADER,
            *(totals_line(t) for t in self.streams),
            totals_line(sum_totals(self.streams)),
            "",
            f"  rows written          {self.written:>7}   (after {self.history_rows} rows of history)",
            f"  rows delivered        {self.delivered:>7}   JSON lines in {self.output}",
            f"  rows from backfill    {self.from_backfill:>7}   read from the database after the restart",
            (
                f"  duplicates dropped    {self.dropped:>7}   ({self.resent} re-sent on purpose, "
                f"{max(0, self.dropped - self.resent)} overlapped the restart's backfill)"
            ),
            f"  delivered twice       {self.twice:>7}",
            f"  lost rows             {self.lost:>7}   (database and typing rows missing from the JSON lines)",
            f"  unexpected rows       {self.unexpected:>7}",
            f"  lag                   {lag}",
            self.consumer_line("   (SIGTERM twice)"),
            self.feed_line(),
            *(
                f"  {'presence' if i == 0 else '':<20}  {p}"
                for i, p in enumerate(self.presence)
            ),
            f"  elapsed               {self.elapsed_s:.1f} s (writing {self.writing_s:.1f} s)",
            "",
        ]
        out.append(verdict(self.checks))
        return out
