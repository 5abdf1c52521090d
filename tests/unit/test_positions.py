"""The catch-up state machine and commit metadata (adapter/core/positions.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, assert_never

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.core.errors import DecodeError, EncodeError, PositionError
from adapter.core.positions import (
    MAX_COMMIT_METADATA_BYTES,
    Apply,
    Backfill,
    Decision,
    Drop,
    DropReason,
    Gap,
    PositionTracker,
    Reset,
    decode_commit_metadata,
    encode_commit_metadata,
)

DATABASE_STREAMS = ("events", "receipts", "caches")

DUP = DropReason.DUPLICATE
STALE = DropReason.STALE_POSITION


# -- a tiny transcript language ---------------------------------------------------------


@dataclass(frozen=True)
class R:
    """RDATA stream writer token (n_rows rows)."""

    stream: str
    writer: str
    token: int
    n_rows: int = 1


@dataclass(frozen=True)
class P:
    """POSITION stream writer prev new."""

    stream: str
    writer: str
    prev: int
    new: int


@dataclass(frozen=True)
class Filled:
    """The runtime reports a backfill page up to ``upto``."""

    stream: str
    writer: str
    upto: int


Step: TypeAlias = R | P | Filled
Outcome: TypeAlias = Decision | bool


def run(tracker: PositionTracker, step: Step) -> Outcome:
    match step:
        case R(stream, writer, token, n_rows):
            return tracker.observe_rdata(stream, writer, token, n_rows)
        case P(stream, writer, prev, new):
            return tracker.observe_position(stream, writer, prev, new)
        case Filled(stream, writer, upto):
            return tracker.backfilled(stream, writer, upto)
        case _:
            assert_never(step)


TRANSCRIPTS: dict[
    str, tuple[dict[tuple[str, str], int], list[tuple[Step, Outcome]]]
] = {
    "rdata above the token applies, at or below drops": (
        {("events", "master"): 10},
        [
            (R("events", "master", 11, 3), Apply("events", "master", 11, 3)),
            (R("events", "master", 11, 3), Drop("events", "master", 11, DUP)),
            (R("events", "master", 10), Drop("events", "master", 10, DUP)),
            (R("events", "master", 14), Apply("events", "master", 14, 1)),
        ],
    ),
    "position inside the range jumps, stale positions drop": (
        {("events", "master"): 10},
        [
            (P("events", "master", 10, 15), Apply("events", "master", 15)),
            (P("events", "master", 12, 20), Apply("events", "master", 20)),
            # REPLICATE answer: prev == new == cur.
            (P("events", "master", 20, 20), Drop("events", "master", 20, STALE)),
            # An old POSITION redelivered after a crash: database streams never go back.
            (P("events", "master", 5, 8), Drop("events", "master", 8, STALE)),
            (R("events", "master", 20), Drop("events", "master", 20, DUP)),
            (R("events", "master", 21), Apply("events", "master", 21, 1)),
        ],
    ),
    "a gap asks for a backfill, paged, then live again": (
        {("events", "master"): 10},
        [
            (P("events", "master", 12, 15), Backfill("events", "master", 10, 15)),
            (Filled("events", "master", 13), False),
            (Filled("events", "master", 15), True),
            (R("events", "master", 15), Drop("events", "master", 15, DUP)),
            (R("events", "master", 16, 2), Apply("events", "master", 16, 2)),
        ],
    ),
    "an in-memory stream reset is followed": (
        {("typing", "master"): 100},
        [
            (P("typing", "master", 0, 0), Reset("typing", "master", 0, 100)),
            (R("typing", "master", 1), Apply("typing", "master", 1, 1)),
            (P("typing", "master", 1, 1), Drop("typing", "master", 1, STALE)),
        ],
    ),
    "an in-memory gap is reported and jumped": (
        {("typing", "master"): 5},
        [
            (P("typing", "master", 8, 9), Gap("typing", "master", 5, 9)),
            (R("typing", "master", 9), Drop("typing", "master", 9, DUP)),
            (R("typing", "master", 10), Apply("typing", "master", 10, 1)),
        ],
    ),
    "unknown writers start at the stream minimum": (
        {("events", "master"): 100, ("events", "p1"): 90},
        [
            # prev above the minimum: rows in (90, 95] of p2 may be missed.
            (P("events", "p2", 95, 110), Backfill("events", "p2", 90, 110)),
            (Filled("events", "p2", 110), True),
            # prev at or below the minimum: nothing missing.
            (P("events", "p3", 80, 120), Apply("events", "p3", 120)),
            # new at or below the minimum: stale, but the writer is now known at 90.
            (P("events", "p4", 10, 50), Drop("events", "p4", 50, STALE)),
            (R("events", "p4", 91), Apply("events", "p4", 91, 1)),
            # RDATA from an unknown writer above the minimum: read (90, 95] first.
            (R("events", "p5", 95), Backfill("events", "p5", 90, 95)),
            (Filled("events", "p5", 95), True),
            (R("events", "p5", 95), Drop("events", "p5", 95, DUP)),
            # RDATA at the minimum: already covered.
            (R("events", "p6", 90), Drop("events", "p6", 90, DUP)),
        ],
    ),
    "an unknown writer on a stream with no known writer trusts the writer": (
        {},
        [
            (R("caches", "w1", 500, 2), Apply("caches", "w1", 500, 2)),
            # Other caches writers now start at 500 (the minimum).
            (R("caches", "w2", 400), Drop("caches", "w2", 400, DUP)),
            (P("receipts", "w3", 7, 7), Drop("receipts", "w3", 7, STALE)),
            (P("receipts", "w3", 7, 9), Apply("receipts", "w3", 9)),
            (P("receipts", "w4", 3, 12), Apply("receipts", "w4", 12)),
        ],
    ),
    "an unknown writer on an in-memory stream starts at what it says": (
        {("typing", "master"): 1000},
        [
            (R("typing", "new_master", 3), Apply("typing", "new_master", 3, 1)),
            (P("federation", "master", 40, 41), Apply("federation", "master", 41)),
            (
                P("presence_federation", "master", 9, 9),
                Drop("presence_federation", "master", 9, STALE),
            ),
        ],
    ),
    "two writers of one stream are tracked separately": (
        {("receipts", "m"): 10, ("receipts", "w1"): 20},
        [
            (R("receipts", "m", 15), Apply("receipts", "m", 15, 1)),
            (R("receipts", "w1", 15), Drop("receipts", "w1", 15, DUP)),
            (R("receipts", "w1", 21), Apply("receipts", "w1", 21, 1)),
            (P("receipts", "m", 15, 30), Apply("receipts", "m", 30)),
            (R("receipts", "w1", 25), Apply("receipts", "w1", 25, 1)),
            # A gap on one writer does not block the other.
            (P("receipts", "m", 35, 40), Backfill("receipts", "m", 30, 40)),
            (R("receipts", "w1", 26), Apply("receipts", "w1", 26, 1)),
            (Filled("receipts", "m", 40), True),
        ],
    ),
    "a malformed position is dropped and changes nothing": (
        {("events", "master"): 10},
        [
            (
                P("events", "master", 12, 11),
                Drop("events", "master", 11, DropReason.MALFORMED_POSITION),
            ),
            (R("events", "master", 11), Apply("events", "master", 11, 1)),
        ],
    ),
}


@pytest.mark.parametrize("name", list(TRANSCRIPTS))
def test_transcript(name: str) -> None:
    seeds, steps = TRANSCRIPTS[name]
    tracker = PositionTracker(database_streams=DATABASE_STREAMS, tokens=seeds)
    for index, (step, expected) in enumerate(steps):
        assert run(tracker, step) == expected, f"step {index}: {step}"


def test_in_memory_streams_are_the_synapse_ones() -> None:
    tracker = PositionTracker(database_streams=["events"])
    assert tracker.is_database_stream("events")
    assert not tracker.is_database_stream("typing")


def test_state_queries() -> None:
    tracker = PositionTracker(
        database_streams=DATABASE_STREAMS,
        tokens={
            ("events", "master"): 10,
            ("events", "p1"): 7,
            ("receipts", "master"): 3,
        },
    )
    assert tracker.token("events", "p1") == 7
    assert tracker.token("events", "nobody") is None
    assert tracker.token("nothing", "nobody") is None
    assert tracker.min_token("events") == 7
    assert tracker.min_token("typing") is None
    assert tracker.pending_backfill("events", "master") is None
    assert tracker.observe_position("events", "master", 12, 20) == Backfill(
        "events", "master", 10, 20
    )
    assert tracker.pending_backfill("events", "master") == Backfill(
        "events", "master", 10, 20
    )
    assert tracker.backfilled("events", "master", 15) is False
    assert tracker.pending_backfill("events", "master") == Backfill(
        "events", "master", 15, 20
    )
    snapshot = tracker.snapshot()
    assert snapshot == {
        ("events", "master"): 15,
        ("events", "p1"): 7,
        ("receipts", "master"): 3,
    }
    snapshot["events", "master"] = 0
    assert tracker.token("events", "master") == 15


def test_lag_tokens_counts_from_the_token_or_where_a_writer_would_start() -> None:
    tracker = PositionTracker(
        database_streams=DATABASE_STREAMS,
        tokens={
            ("events", "master"): 10,
            ("events", "p1"): 7,
            ("typing", "master"): 50,
        },
    )
    assert tracker.lag_tokens(
        {
            ("events", "master"): 25,
            ("events", "p2"): 9,  # unknown: counts from the minimum 7
            ("receipts", "w"): 100,  # no known writer: would start at the head
            ("typing", "master"): 2,  # reset or stale head: never negative
        }
    ) == {
        ("events", "master"): 15,
        ("events", "p2"): 2,
        ("receipts", "w"): 0,
        ("typing", "master"): 0,
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.observe_rdata("events", "master", "11", 1),
        lambda t: t.observe_rdata("events", "master", True, 1),
        lambda t: t.observe_rdata("events", "master", None, 1),
        lambda t: t.observe_rdata("events", "master", 11, -1),
        lambda t: t.observe_position("events", "master", 1.0, 2),
        lambda t: t.observe_position("events", "master", 1, "2"),
        lambda t: t.seed("events", "master", "3"),
        lambda t: t.backfilled("events", "master", 12),
        lambda t: t.backfilled("events", "master", False),
    ],
)
def test_caller_mistakes_raise_position_error(
    call: Callable[[PositionTracker], object],
) -> None:
    tracker = PositionTracker(
        database_streams=DATABASE_STREAMS, tokens={("events", "master"): 10}
    )
    with pytest.raises(PositionError):
        call(tracker)


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.observe_rdata("events", "master", 30, 1),
        lambda t: t.observe_position("events", "master", 20, 20),
        lambda t: t.seed("events", "master", 5),
        lambda t: t.backfilled("events", "master", 10),  # not above the current token
        lambda t: t.backfilled("events", "master", 21),  # beyond to_token
    ],
)
def test_nothing_of_a_writer_is_observed_during_its_backfill(
    call: Callable[[PositionTracker], object],
) -> None:
    tracker = PositionTracker(
        database_streams=DATABASE_STREAMS,
        tokens={("events", "master"): 10, ("events", "p1"): 5},
    )
    assert tracker.observe_position("events", "master", 15, 20) == Backfill(
        "events", "master", 10, 20
    )
    with pytest.raises(PositionError):
        call(tracker)
    # Other writers of the same stream carry on.
    assert tracker.observe_rdata("events", "p1", 6, 1) == Apply("events", "p1", 6, 1)
    assert tracker.pending_backfill("events", "master") == Backfill(
        "events", "master", 10, 20
    )


# -- property: duplicates and interleaving never double-apply or lose a token -------------


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[dict[str, list[int]], list[Step]]:
    """Per-writer token logs, some RDATA lost (then repaired by a POSITION), interleaved
    across writers, with earlier records redelivered at random later points."""
    writers = ["w1", "w2", "w3"]
    logs: dict[str, list[int]] = {}
    per_writer: dict[str, list[Step]] = {}
    for writer in writers:
        tokens = sorted(draw(st.sets(st.integers(1, 200), max_size=25)))
        logs[writer] = tokens
        out: list[Step] = []
        lost_upto: int | None = None
        for token in tokens:
            if draw(st.booleans()) and draw(st.booleans()):
                lost_upto = token  # never delivered: only a backfill can bring it
                continue
            if lost_upto is not None:
                # The writer announced the lost rows; a POSITION follows a reconnect.
                out.append(P("events", writer, lost_upto, lost_upto))
                lost_upto = None
            out.append(R("events", writer, token))
        if lost_upto is not None:
            out.append(
                P("events", writer, lost_upto, lost_upto + draw(st.integers(0, 3)))
            )
        per_writer[writer] = out
    # Interleave the writers' logs (order inside a writer is Kafka partition order).
    cursors = dict.fromkeys(writers, 0)
    merged: list[Step] = []
    while any(cursors[w] < len(per_writer[w]) for w in writers):
        ready = [w for w in writers if cursors[w] < len(per_writer[w])]
        writer = draw(st.sampled_from(ready))
        merged.append(per_writer[writer][cursors[writer]])
        cursors[writer] += 1
        # At-least-once: sometimes redeliver an earlier record (a crash replay).
        if draw(st.integers(0, 3)) == 0:
            merged.append(draw(st.sampled_from(merged)))
    return logs, merged


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_every_token_is_applied_or_backfilled_exactly_once(
    case: tuple[dict[str, list[int]], list[Step]],
) -> None:
    logs, steps = case
    tracker = PositionTracker(
        database_streams=["events"], tokens={("events", w): 0 for w in logs}
    )
    handled: dict[str, list[int]] = {w: [] for w in logs}
    for step in steps:
        decision = run(tracker, step)
        assert not isinstance(decision, bool)
        match decision:
            case Apply(_, writer, token, n_rows):
                if n_rows:
                    handled[writer].append(token)
            case Backfill(_, writer, from_token, to_token):
                # The fake database: the writer's rows in (from, to], in two pages.
                rows = [t for t in logs[writer] if from_token < t <= to_token]
                handled[writer].extend(rows)
                middle = (from_token + to_token) // 2
                if from_token < middle < to_token:
                    assert tracker.backfilled("events", writer, middle) is False
                assert tracker.backfilled("events", writer, to_token) is True
            case Drop() | Gap() | Reset():
                assert not isinstance(decision, Gap | Reset), (
                    "database streams never gap or reset"
                )
            case _:
                assert_never(decision)
    for writer, tokens in logs.items():
        # Strictly increasing, and exactly the writer's tokens: none lost, none twice.
        assert handled[writer] == tokens


# -- commit metadata -----------------------------------------------------------------------


def test_commit_metadata_is_compact_and_round_trips() -> None:
    tokens = {("events", "master"): 1234, ("events", "p1"): 1240, ("receipts", "m"): 7}
    text = encode_commit_metadata(tokens)
    assert text == '{"t":{"events":{"master":1234,"p1":1240},"receipts":{"m":7}},"v":1}'
    assert decode_commit_metadata(text) == tokens


def test_empty_metadata_is_an_empty_map() -> None:
    assert decode_commit_metadata("") == {}
    assert decode_commit_metadata(encode_commit_metadata({})) == {}


def test_metadata_over_the_broker_limit_raises() -> None:
    many = {("events", f"event_persister{i}"): 1_234_567_890 for i in range(135)}
    with pytest.raises(EncodeError):
        encode_commit_metadata(many)
    fits = {("events", f"event_persister{i}"): 1_234_567_890 for i in range(130)}
    assert len(encode_commit_metadata(fits)) <= MAX_COMMIT_METADATA_BYTES
    with pytest.raises(EncodeError):
        encode_commit_metadata({("events", "master"): 1}, max_bytes=10)


def test_metadata_rejects_non_int_tokens() -> None:
    with pytest.raises(EncodeError):
        encode_commit_metadata({("events", "master"): True})


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "NaN",
        "[]",
        '{"v":2,"t":{}}',
        '{"v":true,"t":{}}',
        '{"t":{}}',
        '{"v":1}',
        '{"v":1,"t":[]}',
        '{"v":1,"t":{"events":5}}',
        '{"v":1,"t":{"events":{"master":"5"}}}',
        '{"v":1,"t":{"events":{"master":true}}}',
        '{"v":1,"t":{"events":{"master":1.5}}}',
    ],
)
def test_bad_metadata_raises_decode_error(text: str) -> None:
    with pytest.raises(DecodeError):
        decode_commit_metadata(text)


@given(
    st.dictionaries(
        st.tuples(st.text(min_size=1, max_size=10), st.text(min_size=1, max_size=10)),
        st.integers(-(2**63), 2**63 - 1),
        max_size=10,
    )
)
def test_metadata_round_trips_any_names_and_longs(
    tokens: dict[tuple[str, str], int],
) -> None:
    text = encode_commit_metadata(tokens, max_bytes=1 << 20)
    assert text.isascii()
    assert decode_commit_metadata(text) == tokens


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["events", "receipts", "typing"]),
            st.sampled_from(["master", "w1", "w2"]),
            st.integers(min_value=0, max_value=30),
        ),
        max_size=40,
    ),
    st.sampled_from([{}, {("events", "master"): 5}, {("events", "w1"): 3}]),
)
def test_try_apply_rdata_is_observe_rdatas_apply_case(
    records: list[tuple[str, str, int]], seeds: dict[tuple[str, str], int]
) -> None:
    # The consumer's fast path must take exactly the tokens observe_rdata would
    # apply, and leave every other record to it unchanged.
    fast = PositionTracker(database_streams=frozenset({"events", "receipts"}))
    slow = PositionTracker(database_streams=frozenset({"events", "receipts"}))
    for (stream, writer), token in seeds.items():
        fast.seed(stream, writer, token)
        slow.seed(stream, writer, token)
    for n, (stream, writer, token) in enumerate(records):
        before = fast.snapshot()
        try:
            expected: Decision | PositionError = slow.observe_rdata(
                stream, writer, token, 1
            )
        except PositionError as exc:  # a backfill of this writer is outstanding
            expected = exc
        if fast.try_apply_rdata(stream, writer, token):
            assert isinstance(expected, Apply)
        else:
            assert fast.snapshot() == before
            if isinstance(expected, PositionError):
                with pytest.raises(PositionError):
                    fast.observe_rdata(stream, writer, token, 1)
            else:
                assert fast.observe_rdata(stream, writer, token, 1) == expected
        # Finish most backfills; leave some outstanding to cover that refusal.
        if isinstance(expected, Backfill) and n % 3:
            for t in (fast, slow):
                assert t.backfilled(stream, writer, expected.to_token)
        assert fast.snapshot() == slow.snapshot()


def test_an_unverified_writer_backfills_the_tokens_before_its_first_rdata() -> None:
    tracker = PositionTracker(database_streams={"receipts"})
    tracker.seed_unverified("receipts", "master", 10)
    # The hot path treats it as unknown, so its first record gets the full decision.
    assert not tracker.try_apply_rdata("receipts", "master", 20)
    assert tracker.observe_rdata("receipts", "master", 20, 1) == Backfill(
        "receipts", "master", 10, 19
    )
    assert tracker.backfilled("receipts", "master", 19)
    assert tracker.observe_rdata("receipts", "master", 20, 1) == Apply(
        "receipts", "master", 20, 1
    )
    assert tracker.unverified("receipts") == {}


def test_an_unverified_writer_with_the_next_token_or_an_old_one_needs_nothing() -> None:
    tracker = PositionTracker(database_streams={"receipts"})
    tracker.seed_unverified("receipts", "a", 10)
    tracker.seed_unverified("receipts", "b", 10)
    tracker.seed_unverified("receipts", "c", 10)
    assert tracker.observe_rdata("receipts", "a", 11, 1) == Apply(
        "receipts", "a", 11, 1
    )
    assert tracker.observe_rdata("receipts", "b", 9, 1) == Drop(
        "receipts", "b", 9, DropReason.DUPLICATE
    )
    # A POSITION is judged by its own range from the unverified token.
    assert tracker.observe_position("receipts", "c", 12, 15) == Backfill(
        "receipts", "c", 10, 15
    )


def test_an_unverified_writer_without_records_is_settled_at_the_head() -> None:
    tracker = PositionTracker(database_streams={"receipts"})
    tracker.seed_unverified("receipts", "a", 10)
    tracker.seed_unverified("receipts", "b", 7)
    assert tracker.settle_unverified("receipts", "a", 14) == Backfill(
        "receipts", "a", 10, 14
    )
    assert tracker.settle_unverified("receipts", "b", 7) is None
    assert tracker.token("receipts", "b") == 7
    with pytest.raises(PositionError):
        tracker.settle_unverified("receipts", "b", 9)
