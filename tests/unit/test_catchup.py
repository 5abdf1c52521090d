"""The consumer's start decision: one test per start case (adapter.core.catchup)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from adapter.core.catchup import (
    CatchUp,
    CommittedTokens,
    InitialBackfill,
    PartitionMark,
    StartCase,
    StartFrom,
    StreamStart,
    committed_tokens,
    plan_stream_start,
)
from adapter.core.positions import encode_commit_metadata

COMMITTED = {"master": 10, "persister1": 12}
DB = {"master": 15, "persister1": 12, "persister2": 4}


def _mark(committed: int | None, low: int = 0, head: int = 100) -> PartitionMark:
    return PartitionMark(0, committed, low, head)


def test_earliest_replays_the_whole_log_with_the_committed_tokens() -> None:
    plan = plan_stream_start(
        start_from="earliest",
        catch_up="kafka",
        has_source=True,
        marks=[_mark(50, low=20)],
        committed_tokens=COMMITTED,
        db_positions=DB,
    )
    assert plan.case is StartCase.EARLIEST
    assert plan.offsets == {0: None}
    assert plan.tokens == COMMITTED
    assert not plan.backfills


def test_no_commit_starts_at_the_pinned_head_with_the_database_positions() -> None:
    for catch_up in ("kafka", "database"):
        plan = plan_stream_start(
            start_from="committed",
            catch_up=catch_up,
            has_source=True,
            marks=[_mark(None, head=70)],
            committed_tokens=None,
            db_positions=DB,
        )
        assert plan.case is StartCase.HEAD
        assert plan.offsets == {0: 70}
        assert plan.tokens == DB == plan.handled
        assert not plan.backfills
        assert not plan.unverified


def test_latest_ignores_the_commit() -> None:
    plan = plan_stream_start(
        start_from="latest",
        catch_up="kafka",
        has_source=True,
        marks=[_mark(50, head=80)],
        committed_tokens=COMMITTED,
        db_positions=DB,
    )
    assert plan.case is StartCase.HEAD
    assert plan.offsets == {0: 80}


def test_database_catch_up_skips_kafka_and_backfills_each_writer_behind() -> None:
    plan = plan_stream_start(
        start_from="committed",
        catch_up="database",
        has_source=True,
        marks=[_mark(50, head=100)],
        committed_tokens=COMMITTED,
        db_positions=DB,
    )
    assert plan.case is StartCase.DATABASE
    assert plan.offsets == {0: 100}, "Kafka is skipped up to the pinned head"
    # persister2 is not in our metadata: it published nothing before our commit.
    assert plan.backfills == (
        InitialBackfill("master", 10, 15),
        InitialBackfill("persister2", 0, 4),
    )
    assert plan.tokens == {"master": 15, "persister1": 12, "persister2": 4}
    assert plan.handled == {"master": 10, "persister1": 12, "persister2": 0}


def test_kafka_catch_up_replays_from_the_committed_offset_with_the_tokens() -> None:
    plan = plan_stream_start(
        start_from="committed",
        catch_up="kafka",
        has_source=True,
        marks=[_mark(50, low=20, head=100)],
        committed_tokens=COMMITTED,
        db_positions=DB,
    )
    assert plan.case is StartCase.KAFKA
    assert plan.offsets == {0: 50}
    assert not plan.backfills, "nothing is read from the database up front"
    assert plan.tokens == {"master": 10, "persister1": 12, "persister2": 0}
    assert not plan.unverified
    assert not plan.lost


def test_kafka_catch_up_after_retention_checks_every_writer_from_the_log_start() -> (
    None
):
    plan = plan_stream_start(
        start_from="committed",
        catch_up="kafka",
        has_source=True,
        marks=[_mark(50, low=60, head=100)],
        committed_tokens=COMMITTED,
        db_positions=DB,
    )
    assert plan.case is StartCase.KAFKA
    assert plan.lost == (0,)
    assert plan.offsets == {0: 60}, "the log starts at its start offset"
    assert plan.tokens == {}, "no writer is trusted..."
    assert plan.unverified == {"master": 10, "persister1": 12, "persister2": 0}
    assert plan.handled == plan.unverified


def test_no_source_or_foreign_commit_replays_kafka_and_reports_retention() -> None:
    no_source = plan_stream_start(
        start_from="committed",
        catch_up="database",
        has_source=False,
        marks=[_mark(50, low=60), PartitionMark(1, None, 0, 30)],
        committed_tokens=COMMITTED,
        db_positions={},
    )
    assert no_source.case is StartCase.REPLAY
    assert no_source.offsets == {0: 60, 1: 30}
    assert no_source.lost == (0,)
    assert no_source.tokens == COMMITTED
    foreign = plan_stream_start(
        start_from="committed",
        catch_up="database",
        has_source=True,
        marks=[_mark(50)],
        committed_tokens=None,
        db_positions=DB,
    )
    assert foreign.case is StartCase.REPLAY
    assert foreign.offsets == {0: 50}
    assert foreign.tokens == {}


# -- every combination of --from, --catch-up, database source and commit ------------


def _plan(
    *,
    start_from: StartFrom = "committed",
    catch_up: CatchUp = "database",
    has_source: bool = True,
    marks: Sequence[PartitionMark] = (_mark(50),),
    committed_tokens: Mapping[str, int] | None = COMMITTED,
    db_positions: Mapping[str, int] = DB,
) -> StreamStart:
    """:func:`plan_stream_start` with a resumed consumer's inputs by default."""
    return plan_stream_start(
        start_from=start_from,
        catch_up=catch_up,
        has_source=has_source,
        marks=marks,
        committed_tokens=committed_tokens,
        db_positions=db_positions,
    )


HEAD = 100
COMMITTED_AT = 50


@pytest.mark.parametrize("catch_up", ["kafka", "database"])
@pytest.mark.parametrize("has_source", [True, False])
@pytest.mark.parametrize(
    ("start_from", "has_commit", "case"),
    [
        ("earliest", True, StartCase.EARLIEST),
        ("earliest", False, StartCase.EARLIEST),
        ("latest", True, StartCase.HEAD),
        ("latest", False, StartCase.HEAD),
        ("committed", False, StartCase.HEAD),
        ("committed", True, None),  # depends on the source and the catch-up mode
    ],
)
def test_every_start_case(
    start_from: StartFrom,
    has_commit: bool,
    case: StartCase | None,
    has_source: bool,
    catch_up: CatchUp,
) -> None:
    db = DB if has_source else {}
    plan = _plan(
        start_from=start_from,
        catch_up=catch_up,
        has_source=has_source,
        marks=[_mark(COMMITTED_AT if has_commit else None, low=20, head=HEAD)],
        committed_tokens=COMMITTED if has_commit else None,
        db_positions=db,
    )
    if case is None:
        if not has_source:
            case = StartCase.REPLAY
        else:
            case = StartCase.DATABASE if catch_up == "database" else StartCase.KAFKA
    assert plan.case is case
    assert not plan.lost
    assert not plan.unverified
    assert not plan.settle
    if case is StartCase.EARLIEST:
        # The whole log, judged against the commit's tokens (none without a commit).
        assert plan.offsets == {0: None}
        assert plan.tokens == plan.handled == (COMMITTED if has_commit else {})
        assert not plan.backfills
    elif case is StartCase.HEAD:
        # Nothing older than the pinned head: the writers start where the database is.
        assert plan.offsets == {0: HEAD}
        assert plan.tokens == plan.handled == db
        assert not plan.backfills
    elif case is StartCase.REPLAY:
        assert plan.offsets == {0: COMMITTED_AT}
        assert plan.tokens == plan.handled == COMMITTED
        assert not plan.backfills
    elif case is StartCase.DATABASE:
        # The latest state from the database; Kafka only from the pinned head.
        assert plan.offsets == {0: HEAD}
        assert plan.backfills == (
            InitialBackfill("master", 10, 15),
            InitialBackfill("persister2", 0, 4),
        )
        assert plan.tokens == DB
        assert plan.handled == {"master": 10, "persister1": 12, "persister2": 0}
    else:
        # Every update Kafka holds, from the committed offset; the database only for
        # what Kafka lacks (a POSITION gap, found live).
        assert plan.offsets == {0: COMMITTED_AT}
        assert not plan.backfills
        assert plan.tokens == plan.handled == {**COMMITTED, "persister2": 0}


def test_database_catch_up_leaves_a_writer_the_database_has_not_passed() -> None:
    plan = _plan(
        committed_tokens={"master": 20, "persister1": 12},
        db_positions={"master": 18, "persister1": 12},
    )
    assert plan.case is StartCase.DATABASE
    assert not plan.backfills, "no writer is behind its database position"
    assert plan.tokens == plan.handled == {"master": 20, "persister1": 12}


def test_database_catch_up_after_retention_loses_nothing() -> None:
    plan = _plan(marks=[_mark(50, low=60, head=100)])
    assert plan.case is StartCase.DATABASE
    assert plan.offsets == {0: 100}
    assert not plan.lost, "the deleted records are skipped and read from the database"
    assert plan.backfills == (
        InitialBackfill("master", 10, 15),
        InitialBackfill("persister2", 0, 4),
    )


def test_kafka_catch_up_after_retention_settles_against_the_database_positions() -> (
    None
):
    plan = _plan(
        catch_up="kafka",
        marks=[_mark(50, low=60, head=100), PartitionMark(1, 40, 10, 90)],
    )
    assert plan.lost == (0,), "only the partition whose commit retention passed"
    assert plan.offsets == {0: 60, 1: 40}
    assert plan.settle == DB


# -- the token map in the commit metadata -------------------------------------------


def test_committed_tokens_merges_the_partitions_and_keeps_only_the_stream() -> None:
    p0 = encode_commit_metadata({("events", "master"): 10, ("typing", "master"): 99})
    p1 = encode_commit_metadata({("events", "master"): 12, ("events", "persister1"): 3})
    got = committed_tokens(
        "events",
        [
            PartitionMark(0, 5, 0, 9, p0),
            PartitionMark(1, 7, 0, 9, p1),
            PartitionMark(2, None, 0, 9, None),
        ],
    )
    assert got == CommittedTokens({"master": 12, "persister1": 3})


def test_committed_tokens_is_none_without_metadata_of_ours() -> None:
    assert committed_tokens("events", [PartitionMark(0, None, 0, 9)]).tokens is None
    assert committed_tokens("events", [PartitionMark(0, 5, 0, 9, "")]).tokens is None
    foreign = committed_tokens("events", [PartitionMark(0, 5, 0, 9, "reset by hand")])
    assert foreign.tokens is None
    assert [p for p, _ in foreign.foreign] == [0]
    assert "not JSON" in foreign.foreign[0][1]


def test_an_empty_token_map_of_ours_is_a_commit_of_ours() -> None:
    got = committed_tokens(
        "events",
        [
            PartitionMark(0, 5, 0, 9, encode_commit_metadata({})),
            PartitionMark(1, 5, 0, 9, "not ours"),
        ],
    )
    assert got.tokens == {}, "a quiet stream still resumes with the token rule"
    assert [p for p, _ in got.foreign] == [1]
