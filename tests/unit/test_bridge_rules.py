"""The bridge's rules: Synapse lines in, decisions out (adapter/core/bridge_rules.py)."""

from __future__ import annotations

import doctest
import json
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.core import bridge_rules
from adapter.core.bridge_rules import (
    BridgeRules,
    Buffered,
    PositionDecision,
    Publish,
    PublishPosition,
    RdataDecision,
    Repair,
    Unrepaired,
)
from adapter.core.commands import PositionCommand, RdataCommand, parse_line
from adapter.core.errors import PositionError
from adapter.core.positions import (
    Apply,
    Drop,
    DropReason,
    PositionTracker,
    StreamWriter,
)
from adapter.core.rows import row_from_wire

DUP = DropReason.DUPLICATE
REPAIRED = DropReason.REPAIRED

#: Not a Synapse line: the subscriber (re)connected.
RECONNECT = "(reconnect)"

# -- a tiny transcript language ---------------------------------------------------------


def _wire(stream: str, tag: str) -> list[object]:
    # A typing row (room ID), or a cache invalidation (cache name) on other streams.
    return [f"!{tag}:x", []] if stream == "typing" else [tag, None, 1]


def R(writer: str, token: int | None, tag: str, stream: str = "caches") -> str:
    """The RDATA line of one row named ``tag``."""
    position = "batch" if token is None else str(token)
    return f"RDATA {stream} {writer} {position} {json.dumps(_wire(stream, tag))}"


def P(writer: str, prev: int, new: int, stream: str = "caches") -> str:
    """A POSITION line."""
    return f"POSITION {stream} {writer} {prev} {new}"


def record(writer: str, token: int, *tags: str, stream: str = "caches") -> RdataCommand:
    """The RDATA record of one token with the rows of ``tags``, in order."""
    rows = tuple(row_from_wire(stream, _wire(stream, tag)) for tag in tags)
    return RdataCommand(stream, writer, token, rows)


def position(
    writer: str, prev: int, new: int, stream: str = "caches"
) -> PositionCommand:
    return PositionCommand(stream, writer, prev, new)


#: The tokens with rows in the fake database, per (stream, writer).
Database = Mapping[StreamWriter, set[int]]

Decision = RdataDecision | PositionDecision


def repair(rules: BridgeRules, gap: Repair, database: Database) -> None:
    """Publish the gap's tokens that the database holds, as the shell does."""
    held = database.get((gap.stream, gap.writer), set())
    for token in sorted(t for t in held if gap.from_token < t <= gap.to_token):
        rules.published(record(gap.writer, token, "db", stream=gap.stream))


def feed(rules: BridgeRules, line: str, database: Database | None) -> list[Decision]:
    """One line through the rules, carried out as the bridge does: every decision."""
    if line == RECONNECT:
        rules.reconnected()
        return []
    command = parse_line(line)
    if isinstance(command, PositionCommand):
        decision = rules.position(command)
        if isinstance(decision.gap, Repair):
            assert database is not None
            repair(rules, decision.gap, database)
        rules.published(command)
        return [decision]
    assert isinstance(command, RdataCommand)
    first = rules.rdata(command)
    decisions: list[Decision] = [first]
    if isinstance(first, Repair):
        assert database is not None
        repair(rules, first, database)
        follow = rules.after_repair(first)
        assert follow is not None
        decisions.append(follow)
    last = decisions[-1]
    if isinstance(last, Publish):
        rules.published(last.command)
    return decisions


Transcript = tuple[
    dict[StreamWriter, int], Database | None, list[tuple[str, list[Decision]]]
]

TRANSCRIPTS: dict[str, Transcript] = {
    "a line with a token is one record": (
        {},
        None,
        [
            (R("master", 5, "a"), [Publish(record("master", 5, "a"))]),
            (R("master", 6, "b"), [Publish(record("master", 6, "b"))]),
        ],
    ),
    "a writer's batch split across lines is one record": (
        {},
        None,
        [
            (R("master", None, "a"), [Buffered()]),
            (R("master", None, "b"), [Buffered()]),
            (R("master", 6, "c"), [Publish(record("master", 6, "a", "b", "c"))]),
            (R("master", 7, "d"), [Publish(record("master", 7, "d"))]),
        ],
    ),
    "two writers' interleaved batches never mix": (
        {},
        None,
        [
            (R("w1", None, "a1"), [Buffered()]),
            (R("w2", None, "b1"), [Buffered()]),
            (R("w1", None, "a2"), [Buffered()]),
            (R("w2", 8, "b2"), [Publish(record("w2", 8, "b1", "b2"))]),
            (R("w1", 9, "a3"), [Publish(record("w1", 9, "a1", "a2", "a3"))]),
            (
                R("w1", 3, "r", "typing"),
                [Publish(record("w1", 3, "r", stream="typing"))],
            ),
        ],
    ),
    "a POSITION drops only its writer's pending rows": (
        {},
        None,
        [
            (R("w1", None, "dropped"), [Buffered()]),
            (R("w2", None, "kept"), [Buffered()]),
            (P("w1", 55, 57), [PublishPosition(position("w1", 55, 57))]),
            (R("w1", 58, "x"), [Publish(record("w1", 58, "x"))]),
            (R("w2", 60, "y"), [Publish(record("w2", 60, "kept", "y"))]),
        ],
    ),
    "RDATA at or below the last token is dropped, with its pending rows": (
        {("caches", "master"): 10},
        None,
        [
            (R("master", 10, "a"), [Drop("caches", "master", 10, DUP)]),
            (R("master", 11, "b"), [Publish(record("master", 11, "b"))]),
            (R("master", 11, "b"), [Drop("caches", "master", 11, DUP)]),
            (R("master", None, "old"), [Buffered()]),
            (R("master", 9, "older"), [Drop("caches", "master", 9, DUP)]),
            (R("master", 12, "c"), [Publish(record("master", 12, "c"))]),
        ],
    ),
    "a POSITION past the last token is repaired, then published": (
        {("caches", "master"): 10},
        {("caches", "master"): {11, 13}},
        [
            (
                P("master", 12, 15),
                [
                    PublishPosition(
                        position("master", 12, 15), Repair("caches", "master", 10, 15)
                    )
                ],
            ),
            # Read back by the repair: live copies are duplicates.
            (R("master", 13, "a"), [Drop("caches", "master", 13, DUP)]),
            (P("master", 15, 18), [PublishPosition(position("master", 15, 18))]),
            (R("master", 19, "b"), [Publish(record("master", 19, "b"))]),
        ],
    ),
    "without a database a POSITION gap is unrepaired and published": (
        {("caches", "master"): 10},
        None,
        [
            (
                P("master", 12, 15),
                [
                    PublishPosition(
                        position("master", 12, 15),
                        Unrepaired("caches", "master", 10, 15),
                    )
                ],
            ),
            (R("master", 16, "a"), [Publish(record("master", 16, "a"))]),
        ],
    ),
    "after a reconnect the first RDATA is repaired up to its token": (
        {("caches", "master"): 10},
        {("caches", "master"): {11, 12}},
        [
            (RECONNECT, []),
            # A duplicate says nothing about a gap: the writer stays suspect.
            (R("master", 10, "old"), [Drop("caches", "master", 10, DUP)]),
            (
                R("master", 12, "a"),
                [
                    Repair("caches", "master", 10, 12, record("master", 12, "a")),
                    Drop("caches", "master", 12, REPAIRED),
                ],
            ),
            # Checked once: the next line is published as usual.
            (R("master", 14, "b"), [Publish(record("master", 14, "b"))]),
        ],
    ),
    "a repair that misses the live token publishes the live record": (
        {("caches", "master"): 10},
        {("caches", "master"): {11}},
        [
            (RECONNECT, []),
            (R("master", None, "a"), [Buffered()]),
            (
                R("master", 13, "b"),
                [
                    Repair("caches", "master", 10, 13, record("master", 13, "a", "b")),
                    Publish(record("master", 13, "a", "b")),
                ],
            ),
        ],
    ),
    "with a database even the next token is checked: its batch may be cut": (
        {("caches", "master"): 10},
        {("caches", "master"): {11}},
        [
            (R("master", None, "before the outage"), [Buffered()]),
            (RECONNECT, []),
            (
                R("master", 11, "b"),
                [
                    Repair("caches", "master", 10, 11, record("master", 11, "b")),
                    Drop("caches", "master", 11, REPAIRED),
                ],
            ),
        ],
    ),
    "without a database a jump after a reconnect is published and counted": (
        {("caches", "master"): 10, ("caches", "w1"): 20},
        None,
        [
            (RECONNECT, []),
            (R("master", 11, "a"), [Publish(record("master", 11, "a"))]),
            (
                R("w1", 25, "b"),
                [Publish(record("w1", 25, "b"), Unrepaired("caches", "w1", 20, 25))],
            ),
            (R("w1", 27, "c"), [Publish(record("w1", 27, "c"))]),
        ],
    ),
    "a POSITION in answer to REPLICATE ends the suspicion": (
        {("caches", "master"): 10},
        {("caches", "master"): {11}},
        [
            (RECONNECT, []),
            (P("master", 10, 10), [PublishPosition(position("master", 10, 10))]),
            (R("master", 11, "a"), [Publish(record("master", 11, "a"))]),
        ],
    ),
    "seeded start positions: dropped below, repaired above, new writers trusted": (
        {("caches", "master"): 100},
        {("caches", "master"): {101, 102, 103}},
        [
            # The first subscribe: what happened while the bridge was stopped is lost.
            (RECONNECT, []),
            (R("master", 99, "a"), [Drop("caches", "master", 99, DUP)]),
            (
                R("master", 104, "b"),
                [
                    Repair("caches", "master", 100, 104, record("master", 104, "b")),
                    Publish(record("master", 104, "b")),
                ],
            ),
            (R("w9", 5, "c"), [Publish(record("w9", 5, "c"))]),
        ],
    ),
    "an in-memory stream restarting from a lower token is followed": (
        {("caches", "master"): 50},
        None,
        [
            (P("master", 0, 0), [PublishPosition(position("master", 0, 0))]),
            (R("master", 1, "a"), [Publish(record("master", 1, "a"))]),
        ],
    ),
}


@pytest.mark.parametrize("name", list(TRANSCRIPTS))
def test_transcript(name: str) -> None:
    seeds, database, steps = TRANSCRIPTS[name]
    rules = BridgeRules(published=seeds, database=database is not None)
    for index, (line, expected) in enumerate(steps):
        assert feed(rules, line, database) == expected, f"step {index}: {line}"


def test_the_last_tokens_are_what_was_published() -> None:
    seeds = {("caches", "master"): 10}
    rules = BridgeRules(published=seeds, database=False)
    decision = rules.rdata(record("master", 12, "a"))
    # Decided, not yet carried out: the shell reports what reached Kafka.
    assert rules.snapshot() == seeds
    assert isinstance(decision, Publish)
    rules.published(decision.command)
    snapshot = rules.snapshot()
    assert snapshot == {("caches", "master"): 12}
    snapshot["caches", "master"] = 0
    assert rules.snapshot() == {("caches", "master"): 12}


def test_a_batch_line_is_never_published_alone() -> None:
    rules = BridgeRules(database=False)
    with pytest.raises(PositionError):
        rules.published(
            RdataCommand("caches", "master", None, record("m", 1, "a").rows)
        )


def test_a_joined_record_is_applied_once_as_one_token_by_a_consumer() -> None:
    rules = BridgeRules(database=False)
    tracker = PositionTracker(
        database_streams={"caches"}, tokens={("caches", "master"): 53}
    )
    decisions = [
        feed(rules, line, None)
        for line in (
            R("master", None, "r1"),
            R("master", None, "r2"),
            R("master", 54, "r3"),
        )
    ]
    assert decisions[-1] == [Publish(record("master", 54, "r1", "r2", "r3"))]
    joined = record("master", 54, "r1", "r2", "r3")
    assert tracker.observe_rdata("caches", "master", 54, len(joined.rows)) == Apply(
        "caches", "master", 54, 3
    )


def test_docstring_examples_hold() -> None:
    results = doctest.testmod(bridge_rules)
    assert results.attempted > 0
    assert results.failed == 0


# -- property: with a database, reconnects lose nothing and publish nothing twice ---------


@st.composite
def outages(draw: st.DrawFn) -> tuple[list[int], list[str]]:
    """One writer's tokens (each of one or two rows) and the lines the bridge gets:
    some cut by outages (then a reconnect), some repeated."""
    tokens = sorted(draw(st.sets(st.integers(1, 60), min_size=1, max_size=20)))
    lines: list[str] = []
    for token in tokens:
        written = [R("master", None, "x")] if draw(st.booleans()) else []
        written.append(R("master", token, "y"))
        for line in written:
            if draw(st.integers(0, 5)) == 0:
                lines.append(RECONNECT)  # this line went by during the outage
                continue
            lines.append(line)
            if draw(st.integers(0, 7)) == 0:
                lines.append(line)  # a repeat
    if draw(st.booleans()):
        # The answer to REPLICATE after the last reconnect.
        lines += [RECONNECT, P("master", tokens[-1], tokens[-1])]
    return tokens, lines


class Recording(BridgeRules):
    """The rules, with the tokens of every RDATA record the shell published."""

    def __init__(self, *, published: dict[StreamWriter, int], database: bool) -> None:
        super().__init__(published=published, database=database)
        self.on_kafka: list[int] = []

    def published(self, command: RdataCommand | PositionCommand) -> None:
        if isinstance(command, RdataCommand) and command.token is not None:
            self.on_kafka.append(command.token)
        super().published(command)


@settings(max_examples=300, deadline=None)
@given(outages())
def test_every_token_reaches_kafka_once_in_order(
    case: tuple[list[int], list[str]],
) -> None:
    tokens, lines = case
    database = {("caches", "master"): set(tokens)}
    rules = Recording(published={("caches", "master"): 0}, database=True)
    for line in [RECONNECT, *lines]:
        feed(rules, line, database)
    on_kafka = rules.on_kafka
    # Tokens lost at the end with no line after them are for the next reconnect.
    seen = on_kafka[-1] if on_kafka else 0
    assert on_kafka == [t for t in tokens if t <= seen]
    assert on_kafka == sorted(set(on_kafka))
