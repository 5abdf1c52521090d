"""The consumer's start decision: one test per start case (adapter.core.catchup)."""

from __future__ import annotations

from adapter.core.catchup import (
    InitialBackfill,
    PartitionMark,
    StartCase,
    plan_stream_start,
)

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
