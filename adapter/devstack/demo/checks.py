"""The demo's final comparison: the database read back, the JSON lines, the checks.

:func:`read_expected` and :func:`lag_totals` serve the ``--with-synapse`` run as well
(:mod:`adapter.devstack.demo_synapse`); the rest is the simulated run's verdict, kept
apart from the scenario's process handling so each rule reads on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adapter.core.rows import row_to_wire
from adapter.devstack.demo.children import PresenceChild
from adapter.devstack.demo.deliveries import canonical
from adapter.devstack.demo.report import DemoReport
from adapter.devstack.demo.settings import Key
from adapter.io.db.sources import SourceRegistry
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.lag import LagRow

__all__ = [
    "count_differences",
    "demo_checks",
    "lag_totals",
    "presence_outcome",
    "read_expected",
]


def lag_totals(rows: Sequence[LagRow]) -> tuple[int | None, int | None]:
    """``(tokens, messages)`` behind over every partition, as ``synkafka lag`` sums them.

    Either is ``None`` when it is unknown: no rows at all, or (tokens) a partition
    whose token lag could not be told.
    """
    if not rows:
        return None, None
    tokens = [x.lag_tokens for x in rows]
    known = None if None in tokens else sum(t for t in tokens if t is not None)
    return known, sum(x.lag_messages for x in rows)


def read_expected(
    dsn: str,
    streams: Sequence[str],
    after: Mapping[tuple[str, str], int],
    registry: SourceRegistry | None = None,
) -> dict[Key, tuple[str, ...]]:
    """The rows the database holds past ``after``, per token, in canonical form.

    Read with the backfill code up to each writer's position, so the comparison sees
    exactly what a consumer's catch-up would.

    Args:
        dsn: the database.
        streams: the streams to read (those without a table are skipped).
        after: per ``(stream, writer)``, the last token not to read (default 0).
        registry: the stream sources; ``None``, the built-in ones.
    """
    expected: dict[Key, tuple[str, ...]] = {}
    reader = DatabaseReader(dsn, registry=registry)
    try:
        for stream in streams:
            if not reader.has_source(stream):
                continue
            for writer, position in sorted(reader.positions(stream).items()):
                start = after.get((stream, writer), 0)
                for token, typed in reader.read(stream, writer, start, position):
                    expected[(stream, writer, token)] = canonical(
                        [row_to_wire(row) for row in typed]
                    )
    finally:
        reader.close()
    return expected


def count_differences(
    expected: Mapping[Key, tuple[str, ...]],
    delivered: Mapping[Key, tuple[str, ...]],
) -> tuple[int, int]:
    """``(lost, unexpected)`` rows between what was written and what was delivered."""
    lost = unexpected = 0
    for key, rows in expected.items():
        got = delivered.get(key)
        if got is None:
            lost += len(rows)
        elif got != rows:
            lost += len(set(rows) - set(got))
            unexpected += len(set(got) - set(rows))
    for key, got in delivered.items():
        if key not in expected:
            unexpected += len(got)
    return lost, unexpected


def presence_outcome(p: PresenceChild, expiry_s: float) -> str:
    """The summary's sentence on one presence instance after its signal."""
    if p.how == "SIGTERM":
        return (
            f"{p.name}: SIGTERM, clear acknowledged, exit {p.exit_code}; gone "
            f"from the view after {p.gone_after_s or 0:.2f} s"
        )
    return (
        f"{p.name}: SIGKILL (no clear); expired after "
        f"{p.gone_after_s or 0:.2f} s (expiry {expiry_s:g} s)"
    )


def demo_checks(
    r: DemoReport,
    sync1: PresenceChild,
    sync2: PresenceChild,
    *,
    typing_rows: int,
    expiry_s: float,
    tombstones: int,
    resend_asked: int = 0,
) -> list[tuple[str, bool]]:
    """The simulated run's checks, ``(what, passed)``, from its report and presence.

    Args:
        r: the report, numbers filled in.
        sync1: the presence instance stopped with SIGTERM.
        sync2: the presence instance stopped with SIGKILL.
        typing_rows: typing rows written (no table holds them).
        expiry_s: the presence writer's expiry.
        tombstones: tombstones the presence writer wrote.
        resend_asked: records the homeserver was asked to re-send (then some must
            have been, or the duplicate check would pass without testing anything).
    """
    return [
        ("lost rows is 0", r.lost == 0),
        ("no unexpected rows", r.unexpected == 0),
        ("nothing delivered twice", r.twice == 0),
        ("every written row delivered", r.delivered == r.written),
        (
            "the database holds every written row",
            r.db_rows == r.written - typing_rows,
        ),
        ("the gap came from backfill", r.from_backfill > 0),
        (
            "records were re-sent, and every one dropped as a duplicate",
            (r.resent > 0 or resend_asked == 0) and r.dropped >= r.resent,
        ),
        ("lag is 0 tokens", r.lag_tokens == 0),
        ("lag is 0 messages", r.lag_messages == 0),
        (
            "the consumer exited 0 on each SIGTERM",
            r.consumer_exits == [0, 0],
        ),
        (
            "sync1 cleared on SIGTERM",
            sync1.cleared
            and sync1.exit_code == 0
            and sync1.gone_after_s is not None
            and sync1.gone_after_s < 2.0,
        ),
        (
            "sync2 expired after SIGKILL",
            sync2.gone_after_s is not None and sync2.gone_after_s <= expiry_s + 3.0,
        ),
        ("tombstones written for both", tombstones >= 2),
        (
            "every stored event on the feed exactly once",
            r.feed is not None and r.feed.exactly_once,
        ),
        ("the feed exited 0 on SIGTERM", r.feed_exit == 0),
    ]
