"""Process-wide CPython tuning, applied by whoever owns the process.

CPython's cycle-collector thresholds, the collector's on/off switch and the GIL switch
interval belong to the whole process, not to one object in it. The library classes
(:class:`~adapter.runtime.consumer.ReplicationConsumer`,
:class:`~adapter.runtime.bridge.Bridge`) therefore leave them alone; the process owner
(the ``synkafka`` commands, the benchmarks) opts in with :func:`tuned`, and an
application embedding the library decides for itself.

Both context managers here are safe to enter from several threads at once: they keep a
count of who is inside under a lock, save the interpreter's state when the first one
enters and restore it when the last one leaves, in whatever order the threads finish.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

__all__ = ["GC_THRESHOLD", "SWITCH_INTERVAL_S", "gc_paused", "tuned"]

GC_THRESHOLD = (50_000, 20, 100)
"""Cycle-collector thresholds for a consumer or a bridge (CPython's default: 700, 10, 10).

Every row makes a few short-lived objects. At the default thresholds the collector runs
every few hundred rows, and its full collections over a large heap stalled the poll loop
for 100-300 ms: that was the whole p99 of publish-to-handler latency
(docs/benchmarks.md). Rows are freed by reference counting, not by the cycle collector,
so collecting far less often costs nothing."""

SWITCH_INTERVAL_S = 0.02
"""CPython's GIL switch interval for a consumer (the default is 5 ms).

The poll loop and the stream workers share one GIL. At the default a busy worker is
made to hand the GIL back every 5 ms, mostly to a poll loop that has little to do
before the worker needs it again; measured with ``bench.consume`` at 500,000 rows,
20 ms gave 5 to 15% more rows/s. Threads that wait (a worker on its queue, the
poll loop in librdkafka) release the GIL at once regardless, so at live rates the
interval does not add latency (``bench.latency``)."""


class _Tuning:
    """Reference-counted tuning: the state before the first entry comes back after the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._saved_threshold: tuple[int, int, int] = gc.get_threshold()
        self._saved_switch = sys.getswitchinterval()

    @contextmanager
    def tuned(
        self,
        gc_threshold: tuple[int, int, int] | None,
        switch_interval_s: float | None,
    ) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._saved_threshold = gc.get_threshold()
                self._saved_switch = sys.getswitchinterval()
            self._inside += 1
            if gc_threshold is not None:
                gc.set_threshold(*gc_threshold)
            if switch_interval_s is not None:
                sys.setswitchinterval(switch_interval_s)
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    gc.set_threshold(*self._saved_threshold)
                    sys.setswitchinterval(self._saved_switch)


class _GcPause:
    """Reference-counted collector pause shared by every thread of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pausers = 0
        self._was_enabled = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            if self._pausers == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._pausers += 1
        try:
            yield
        finally:
            with self._lock:
                self._pausers -= 1
                if self._pausers == 0 and self._was_enabled:
                    gc.enable()


_TUNING = _Tuning()
_GC_PAUSE = _GcPause()


def tuned(
    *,
    gc_threshold: tuple[int, int, int] | None = GC_THRESHOLD,
    switch_interval_s: float | None = SWITCH_INTERVAL_S,
) -> AbstractContextManager[None]:
    """Apply the collector thresholds and the GIL switch interval until the block ends.

    For the process owner only (a command's entry point, a benchmark): the settings are
    process-wide. Entries from several threads may overlap; each applies its values, and
    the values from before the first entry are restored when the last one leaves.

    Args:
        gc_threshold: the collector thresholds (see :data:`GC_THRESHOLD`); ``None``
            leaves them alone.
        switch_interval_s: the GIL switch interval (see :data:`SWITCH_INTERVAL_S`);
            ``None`` leaves it alone.
    """
    return _TUNING.tuned(gc_threshold, switch_interval_s)


def gc_paused() -> AbstractContextManager[None]:
    """Pause CPython's cycle collector while a backfill page is fetched or typed.

    A page allocates a few container objects per row (driver tuples, wire lists, typed
    rows) and creates no reference cycles, yet every 700 allocations trigger a
    collection that walks all live tracked objects: measured on 200k events rows, the
    collector took about 85% of the row-building time.

    Safe across threads: the collector is switched off by the first pauser and back on
    only when the last pauser leaves, and only if it was on before the first one came
    (a collector someone else disabled stays disabled).
    """
    return _GC_PAUSE.paused()
