"""The read-ahead thread of database backfills: order, errors, early close."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from adapter.core.errors import BackfillError
from adapter.runtime.backfill import each_gc_paused, prefetched


def _threads() -> set[str]:
    return {
        t.name for t in threading.enumerate() if t.name.startswith("synkafka-prefetch")
    }


def test_items_arrive_in_order_and_the_thread_ends() -> None:
    assert list(prefetched(iter(range(50)), "order")) == list(range(50))
    assert "synkafka-prefetch-order" not in _threads()


def test_an_error_reaches_the_caller_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise BackfillError("database went away", retriable=True)

    reader = prefetched(items(), "error")
    assert [next(reader), next(reader)] == [1, 2]
    with pytest.raises(BackfillError, match="went away") as info:
        next(reader)
    assert info.value.retriable


def test_closing_early_stops_the_producer_and_frees_its_resource() -> None:
    produced: list[int] = []
    in_use = threading.Lock()

    def items() -> Iterator[int]:
        with in_use:  # stands for the database connection
            for n in range(1000):
                produced.append(n)
                yield n

    reader = prefetched(items(), "close", depth=2)
    assert next(reader) == 0
    reader.close()
    # The producer stopped a few items ahead (queue depth), not at the end, and let
    # go of its connection before close() returned.
    assert len(produced) < 10
    assert in_use.acquire(blocking=False)
    assert "synkafka-prefetch-close" not in _threads()


def test_the_producer_runs_ahead_while_the_caller_works() -> None:
    started = threading.Event()

    def items() -> Iterator[int]:
        yield 0
        started.set()  # reached only if the producer runs ahead of the caller
        yield 1

    reader = prefetched(items(), "ahead")
    assert next(reader) == 0
    assert started.wait(5.0)
    assert list(reader) == [1]
    deadline = time.monotonic() + 5.0
    while "synkafka-prefetch-ahead" in _threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "synkafka-prefetch-ahead" not in _threads()


def test_each_gc_paused_makes_items_with_the_collector_off_and_hands_them_over_with_it_on() -> (
    None
):
    seen_while_making: list[bool] = []

    def items() -> Iterator[int]:
        for n in range(3):
            seen_while_making.append(gc.isenabled())
            yield n

    was_enabled = gc.isenabled()
    gc.enable()
    try:
        handed: list[tuple[int, bool]] = [
            (n, gc.isenabled()) for n in each_gc_paused(items())
        ]
    finally:
        if not was_enabled:
            gc.disable()
    assert seen_while_making == [False, False, False]
    assert handed == [(0, True), (1, True), (2, True)]
