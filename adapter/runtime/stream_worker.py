"""One worker thread per stream: runs handlers in order and fills gaps from the database.

The poll loop decides (with :class:`~adapter.core.positions.PositionTracker`) what to do with
each record and hands the work to the stream's worker in batches through a bounded
queue. The worker:

* calls the stream's handler for every update, in order, retrying a failing handler
  with backoff and then dead-lettering the update or stopping, as configured;
* runs backfills (rows read from the database) in the same queue, so rows read to fill
  a gap reach the handler exactly where the gap was;
* records, per partition, the highest offset whose work is finished and, per writer,
  the highest token handled. The poll loop commits only those, so a commit never
  covers unfinished work.

Streams run concurrently (one thread each); within a stream, order is total.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from adapter.core.backoff import Backoff
from adapter.core.errors import (
    AdapterError,
    BackfillError,
    SinkError,
    exception_summary,
)
from adapter.core.ports import BackfillReader, Handler, StreamUpdate
from adapter.io.metrics import HistogramBatch, Metrics

__all__ = ["BackfillWork", "HandlerPolicy", "StreamWorker", "UpdateWork", "Work"]

logger = logging.getLogger(__name__)

HandlerPolicy = Literal["dead-letter", "stop"]


class UpdateWork(NamedTuple):
    """Hand ``update`` to the handler (if any), then mark ``offset`` of ``partition`` done.

    ``update`` is None for records that need no handler (duplicates, positions); they
    still go through the queue so the offset is only marked done in order.
    """

    partition: tuple[str, int] | None
    offset: int | None
    update: StreamUpdate | None
    raw: bytes | None = None
    token_after: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class BackfillWork:
    """Read ``(from_token, to_token]`` of one writer from the database and handle it."""

    instance_name: str
    from_token: int
    to_token: int
    initial: bool = False


Work = UpdateWork | BackfillWork

# A sentinel batch that tells the worker to finish.
_STOP: list[Work] = []


@dataclass(slots=True)
class _Progress:
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)


class StreamWorker:
    """Runs one stream's handler and backfills in a thread.

    Args:
        stream_name: the stream this worker owns.
        handler: called once per update; may be async.
        open_reader: opens a database reader (in the worker thread), or None when
            the stream has no database to backfill from.
        metrics: where to count rows, handler time, backfill progress.
        dead_letter: called with ``(update, raw, error)`` when the handler keeps
            failing and the policy is ``dead-letter``; must return only once the
            dead letter is acknowledged.
        policy: what to do with an update whose handler keeps failing.
        handler_retries: attempts before the policy applies.
        max_batches: queue bound (batches); a full queue makes the poll loop pause the
            stream's partitions.
        page_rows: rows per database page during backfill.
    """

    def __init__(
        self,
        stream_name: str,
        handler: Handler | None,
        *,
        open_reader: Callable[[], BackfillReader] | None,
        metrics: Metrics,
        dead_letter: Callable[[StreamUpdate | None, bytes | None, str], None]
        | None = None,
        policy: HandlerPolicy = "stop",
        handler_retries: int = 5,
        max_batches: int = 64,
        backoff: Backoff | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.stream_name = stream_name
        self._handler = handler
        self._is_async = handler is not None and inspect.iscoroutinefunction(handler)
        self._open_reader = open_reader
        self._reader: BackfillReader | None = None
        self._metrics = metrics
        self._dead_letter = dead_letter
        self._policy = policy
        self._handler_retries = handler_retries
        self._queue: queue.Queue[list[Work]] = queue.Queue(maxsize=max_batches)
        self._lock = threading.Lock()
        self._progress = _Progress()
        self._backoff = backoff or Backoff()
        self._stop = stop_event or threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None
        self.initial_backfill_pending = 0
        self.rows_handled = 0
        self.rows_backfilled = 0
        self._thread = threading.Thread(
            target=self._run, name=f"synkafka-{stream_name}", daemon=True
        )
        # Label children are looked up once: ``labels()`` costs more than the update.
        self._duration = metrics.handler_duration.labels(stream_name)
        self._durations = HistogramBatch(self._duration)
        self._applied: dict[str, Any] = {}
        self._positions: dict[str, Any] = {}
        # Gathered per batch by _update, published by _flush_batch.
        self._batch_tokens: dict[str, int] = {}
        self._batch_offsets: dict[tuple[str, int], int] = {}
        self._batch_applied: dict[str, int] = {}

    # -- poll-loop side -------------------------------------------------------------

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def seed(self, tokens: Mapping[str, int]) -> None:
        """Record the tokens this stream starts from as already handled.

        Without it a quiet stream (no work since the start) would commit an empty
        token map, and the next start would read its whole history again.
        """
        with self._lock:
            for writer, token in tokens.items():
                self._progress.tokens.setdefault(writer, token)

    def offer(self, batch: list[Work]) -> bool:
        """Queue a batch without blocking; False when the queue is full."""
        if not batch:
            return True
        with self._lock:
            self.initial_backfill_pending += sum(
                1 for w in batch if isinstance(w, BackfillWork) and w.initial
            )
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            with self._lock:
                self.initial_backfill_pending -= sum(
                    1 for w in batch if isinstance(w, BackfillWork) and w.initial
                )
            return False
        return True

    def progress(self) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
        """Finished offsets per partition and handled tokens per writer."""
        with self._lock:
            return dict(self._progress.offsets), dict(self._progress.tokens)

    def idle(self) -> bool:
        """True when nothing is queued (work may still be running)."""
        return self._queue.empty()

    def stop(self, timeout_s: float) -> bool:
        """Let queued work finish, then end the thread; False if it did not end in time."""
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    # -- worker thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._queue.get()
                if batch is _STOP:
                    return
                try:
                    for work in batch:
                        if isinstance(work, UpdateWork):
                            self._update(work)
                        else:
                            # A backfill publishes its own progress as it goes,
                            # after what came before it.
                            self._flush_batch()
                            self._backfill(work)
                        if self._stop.is_set() and self.failure is not None:
                            return
                finally:
                    # Also when a work failed: what finished before it is recorded.
                    self._flush_batch()
        except BaseException as exc:  # the poll loop reports it and stops
            if isinstance(exc, AdapterError):
                # An expected failure (a handler that keeps failing, a database
                # error): its message is the command's one error line, so no
                # traceback here; it stays available at DEBUG.
                logger.debug("stream %s worker failed", self.stream_name, exc_info=True)
            else:
                logger.exception("stream %s worker failed", self.stream_name)
            self.failure = exc
        finally:
            if self._reader is not None:
                self._reader.close()
            if self._loop is not None:
                self._loop.close()

    def _position_gauge(self, instance_name: str) -> Any:
        gauge = self._positions.get(instance_name)
        if gauge is None:
            gauge = self._positions[instance_name] = (
                self._metrics.stream_position.labels(self.stream_name, instance_name)
            )
        return gauge

    def _advance(self, instance_name: str, token: int) -> None:
        with self._lock:
            self._progress.tokens[instance_name] = token
        self._position_gauge(instance_name).set(token)

    def _update(self, work: UpdateWork) -> None:
        # The hot path of a live stream: progress and metrics are gathered here and
        # published once per batch (_flush_batch), not with a lock and three metric
        # updates per record.
        update = work.update
        if update is not None:
            if update.rows:
                self._call(update, work.raw, deferred=True)
            self._batch_tokens[update.instance_name] = update.token
        elif work.token_after is not None:
            self._batch_tokens[work.token_after[0]] = work.token_after[1]
        partition, offset = work.partition, work.offset
        if partition is not None and offset is not None:
            self._batch_offsets[partition] = offset

    def _flush_batch(self) -> None:
        """Publish the progress and metrics gathered by :meth:`_update`."""
        tokens, offsets = self._batch_tokens, self._batch_offsets
        if tokens or offsets:
            with self._lock:
                self._progress.tokens.update(tokens)
                self._progress.offsets.update(offsets)
            for writer, token in tokens.items():
                self._position_gauge(writer).set(token)
            self._batch_tokens, self._batch_offsets = {}, {}
        if self._batch_applied:
            for source, count in self._batch_applied.items():
                self._applied_counter(source).inc(count)
            self._batch_applied = {}
        self._durations.flush()

    def _applied_counter(self, source: str) -> Any:
        applied = self._applied.get(source)
        if applied is None:
            applied = self._applied[source] = self._metrics.rows_applied.labels(
                self.stream_name, source
            )
        return applied

    def _call(
        self, update: StreamUpdate, raw: bytes | None, *, deferred: bool = False
    ) -> None:
        """Run the handler with retries; apply the policy when it keeps failing.

        ``deferred``: count the applied rows at the end of the batch (live records)
        rather than now (a backfill, whose progress must show while it runs).
        """
        handler = self._handler
        if handler is None:
            return
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = handler(update)
                if self._is_async or (
                    result is not None and inspect.isawaitable(result)
                ):
                    if self._loop is None:
                        self._loop = asyncio.new_event_loop()
                    self._loop.run_until_complete(result)  # type: ignore[arg-type]
            except SinkError:
                # The output cannot take it: retrying or dead-lettering would let the
                # commit pass an update that was never written.
                raise
            except Exception as exc:
                attempt += 1
                self._metrics.handler_failures.labels(self.stream_name).inc()
                logger.warning(
                    "handler for %s token %d failed (attempt %d/%d): %s",
                    self.stream_name,
                    update.token,
                    attempt,
                    self._handler_retries,
                    exception_summary(exc),
                )
                if attempt >= self._handler_retries:
                    self._give_up(update, raw, exc)
                    return
                if self._stop.wait(min(5.0, 0.1 * 2**attempt)):
                    raise AdapterError(
                        "stopped while retrying a failing handler"
                    ) from exc
                continue
            n_rows = len(update.rows)
            if deferred:
                self._durations.observe(time.perf_counter() - started)
                pending = self._batch_applied
                pending[update.source] = pending.get(update.source, 0) + n_rows
            else:
                self._duration.observe(time.perf_counter() - started)
                self._applied_counter(update.source).inc(n_rows)
            self.rows_handled += n_rows
            return

    def _give_up(self, update: StreamUpdate, raw: bytes | None, exc: Exception) -> None:
        reason = (
            f"handler failed {self._handler_retries} times: {exception_summary(exc)}"
        )
        if self._policy == "dead-letter" and self._dead_letter is not None:
            self._dead_letter(update, raw, reason)
            return
        raise AdapterError(
            f"stream {self.stream_name}: {reason}; stopping without committing past token "
            f"{update.token}"
        ) from exc

    def _backfill(self, work: BackfillWork) -> None:
        """Read the gap from the database page by page, retrying outages with backoff."""
        stream = self.stream_name
        writer = work.instance_name
        done = work.from_token
        gauge = self._metrics.backfill_remaining_tokens.labels(stream, writer)
        self._metrics.backfills.labels(stream, "started").inc()
        started = time.monotonic()
        rows = 0
        try:
            while done < work.to_token:
                try:
                    reader = self._reader_or_open()
                    for token, typed_rows in reader.read(
                        stream, writer, done, work.to_token
                    ):
                        update = StreamUpdate(
                            stream, writer, token, typed_rows, "backfill"
                        )
                        self._call(update, None)
                        self._advance(writer, token)
                        done = token
                        rows += len(typed_rows)
                        self.rows_backfilled += len(typed_rows)
                        self._metrics.backfill_rows.labels(stream).inc(len(typed_rows))
                        gauge.set(work.to_token - token)
                    done = work.to_token
                except BackfillError as exc:
                    if not exc.retriable:
                        raise
                    self._drop_reader()
                    delay = self._backoff.next_delay()
                    self._metrics.reconnects.labels("database").inc()
                    self._metrics.backoff_seconds.labels("database").set(delay)
                    logger.warning(
                        "backfill of %s/%s from token %d failed: %s; retrying in %.1f s",
                        stream,
                        writer,
                        done,
                        exc,
                        delay,
                    )
                    if self._stop.wait(delay):
                        raise AdapterError(
                            f"stopped during backfill of {stream}/{writer} at token {done}"
                        ) from exc
            self._backoff.reset()
            self._metrics.backoff_seconds.labels("database").set(0)
            self._advance(writer, work.to_token)
            gauge.set(0)
            self._metrics.backfills.labels(stream, "done").inc()
            logger.info(
                "backfilled %s/%s tokens (%d, %d]: %d rows in %.1f s",
                stream,
                writer,
                work.from_token,
                work.to_token,
                rows,
                time.monotonic() - started,
            )
        except BaseException:
            self._metrics.backfills.labels(stream, "failed").inc()
            raise
        finally:
            if work.initial:
                with self._lock:
                    self.initial_backfill_pending -= 1

    def _reader_or_open(self) -> BackfillReader:
        if self._reader is None:
            if self._open_reader is None:
                raise BackfillError(
                    f"stream {self.stream_name} has no database", retriable=False
                )
            self._reader = self._open_reader()
        return self._reader

    def _drop_reader(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except AdapterError:
                logger.debug("closing a failed database reader", exc_info=True)
            self._reader = None
