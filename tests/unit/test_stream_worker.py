"""The per-stream worker with fake readers and handlers (threads, no sockets)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from adapter.core.backoff import Backoff
from adapter.core.errors import AdapterError, BackfillError
from adapter.core.ports import StreamUpdate
from adapter.io.metrics import Metrics
from adapter.runtime.stream_worker import BackfillWork, StreamWorker, UpdateWork


class FakeReader:
    """Rows 1..n of one writer; fails ``failures`` times before working."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.opened = 0
        self.closed = 0

    def has_source(self, stream_name: str) -> bool:
        return True

    def positions(self, stream_name: str) -> dict[str, int]:
        return {}

    def read(
        self, stream_name: str, instance_name: str, from_token: int, to_token: int
    ) -> Iterator[tuple[int, tuple[Any, ...]]]:
        if self.failures:
            self.failures -= 1
            raise BackfillError("connection refused", retriable=True)
        for token in range(from_token + 1, to_token + 1):
            yield token, (f"row{token}",)

    def close(self) -> None:
        self.closed += 1


def _wait(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _update(token: int) -> StreamUpdate:
    return StreamUpdate("events", "master", token, (f"row{token}",), "kafka")


def _worker(
    handler: Any, reader: FakeReader | None = None, **kwargs: Any
) -> tuple[StreamWorker, CollectorRegistry]:
    registry = CollectorRegistry()
    opened: list[FakeReader] = []

    def open_reader() -> FakeReader:
        assert reader is not None
        reader.opened += 1
        opened.append(reader)
        return reader

    worker = StreamWorker(
        "events",
        handler,
        open_reader=open_reader if reader is not None else None,
        metrics=Metrics(registry),
        backoff=Backoff(initial_s=0.01, max_s=0.05, rng=random.Random(0)),
        **kwargs,
    )
    worker.start()
    return worker, registry


def test_updates_and_backfills_run_in_queue_order_and_progress_follows() -> None:
    seen: list[tuple[int, str]] = []
    worker, registry = _worker(lambda u: seen.append((u.token, u.source)), FakeReader())
    assert worker.offer([BackfillWork("master", 0, 3, initial=True)])
    assert worker.offer(
        [
            UpdateWork(("t", 0), 10, _update(4)),
            UpdateWork(("t", 0), 11, None, token_after=("master", 9)),
        ]
    )
    assert worker.stop(5)
    assert seen == [(1, "backfill"), (2, "backfill"), (3, "backfill"), (4, "kafka")]
    offsets, tokens = worker.progress()
    assert offsets == {("t", 0): 11}
    assert tokens == {"master": 9}
    assert worker.rows_backfilled == 3
    assert worker.initial_backfill_pending == 0
    assert (
        registry.get_sample_value(
            "synkafka_rows_applied_total", {"stream": "events", "source": "backfill"}
        )
        == 3
    )


def test_backfill_retries_a_database_outage_with_backoff_then_succeeds() -> None:
    seen: list[int] = []
    reader = FakeReader(failures=3)
    worker, registry = _worker(lambda u: seen.append(u.token), reader)
    worker.offer([BackfillWork("master", 5, 8)])
    assert worker.stop(5)
    assert seen == [6, 7, 8]
    assert (
        registry.get_sample_value(
            "synkafka_reconnects_total", {"component": "database"}
        )
        == 3
    )
    assert reader.closed >= 3  # the broken connection was dropped each time


def test_a_failing_handler_is_retried_then_dead_lettered() -> None:
    calls: list[int] = []
    letters: list[tuple[int, str]] = []

    def handler(update: StreamUpdate) -> None:
        calls.append(update.token)
        if update.token == 2:
            raise ValueError("boom")

    worker, registry = _worker(
        handler,
        policy="dead-letter",
        handler_retries=3,
        dead_letter=lambda u, raw, reason: letters.append(
            (u.token if u else -1, reason)
        ),
    )
    worker.offer([UpdateWork(("t", 0), i, _update(i)) for i in (1, 2, 3)])
    assert worker.stop(10)
    assert calls == [1, 2, 2, 2, 3]
    assert letters == [(2, "handler failed 3 times: ValueError: boom")]
    assert worker.progress()[0] == {("t", 0): 3}
    assert (
        registry.get_sample_value(
            "synkafka_handler_failures_total", {"stream": "events"}
        )
        == 3
    )


def test_with_the_stop_policy_a_failing_handler_stops_before_marking_its_offset() -> (
    None
):
    def handler(update: StreamUpdate) -> None:
        if update.token == 2:
            raise ValueError("boom")

    worker, _ = _worker(handler, policy="stop", handler_retries=2)
    worker.offer([UpdateWork(("t", 0), i, _update(i)) for i in (1, 2, 3)])
    _wait(lambda: worker.failure is not None)
    assert isinstance(worker.failure, AdapterError)
    assert worker.progress()[0] == {("t", 0): 1}, "never past the failing update"


def test_async_handlers_are_awaited_in_order() -> None:
    seen: list[int] = []

    async def handler(update: StreamUpdate) -> None:
        await asyncio.sleep(0)
        seen.append(update.token)

    worker, _ = _worker(handler)
    worker.offer([UpdateWork(("t", 0), i, _update(i)) for i in range(1, 6)])
    assert worker.stop(5)
    assert seen == [1, 2, 3, 4, 5]


def test_a_full_queue_refuses_more_work_without_blocking() -> None:
    gate = threading.Event()
    worker, _ = _worker(lambda u: gate.wait(5), max_batches=1)
    assert worker.offer([UpdateWork(("t", 0), 1, _update(1))])
    _wait(worker.idle)  # the first batch is being handled, blocked on the gate
    assert worker.offer([UpdateWork(("t", 0), 2, _update(2))])
    assert not worker.offer([UpdateWork(("t", 0), 3, _update(3))])
    gate.set()
    assert worker.stop(5)


@pytest.mark.parametrize("retriable", [False])
def test_a_permanent_database_error_fails_the_worker(retriable: bool) -> None:
    class Broken(FakeReader):
        def read(self, *args: Any) -> Iterator[tuple[int, tuple[Any, ...]]]:
            raise BackfillError("no such table", retriable=retriable)

    worker, registry = _worker(lambda u: None, Broken())
    worker.offer([BackfillWork("master", 0, 3, initial=True)])
    _wait(lambda: worker.failure is not None)
    assert isinstance(worker.failure, BackfillError)
    assert (
        registry.get_sample_value(
            "synkafka_backfills_total", {"stream": "events", "outcome": "failed"}
        )
        == 1
    )
