"""Process-wide interpreter tuning: applied and restored, reference-counted across threads."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from adapter.runtime.interpreter import (
    GC_THRESHOLD,
    SWITCH_INTERVAL_S,
    gc_paused,
    tuned,
)

DEADLINE_S = 10.0


@pytest.fixture(autouse=True)
def _interpreter_state() -> Iterator[None]:
    """Start each test from CPython's defaults and leave the process as it was."""
    enabled = gc.isenabled()
    threshold = gc.get_threshold()
    switch = sys.getswitchinterval()
    gc.enable()
    gc.set_threshold(700, 10, 10)
    sys.setswitchinterval(0.005)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        sys.setswitchinterval(switch)
        if enabled:
            gc.enable()
        else:
            gc.disable()


class _Holder:
    """A thread that enters a context manager, holds it until told, then leaves."""

    def __init__(self, manager: Callable[[], AbstractContextManager[None]]) -> None:
        self._manager = manager
        self.inside = threading.Event()
        self.release = threading.Event()
        self.left = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.inside.wait(DEADLINE_S), "the thread entered"

    def _run(self) -> None:
        with self._manager():
            self.inside.set()
            self.release.wait(DEADLINE_S)
        self.left.set()

    def leave(self) -> None:
        self.release.set()
        assert self.left.wait(DEADLINE_S), "the thread left"
        self._thread.join(DEADLINE_S)


def test_tuned_applies_the_defaults_and_restores_what_was_there() -> None:
    with tuned():
        assert gc.get_threshold() == GC_THRESHOLD
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    assert gc.get_threshold() == (700, 10, 10)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_tuned_with_none_leaves_that_setting_alone() -> None:
    with tuned(switch_interval_s=None):
        assert gc.get_threshold() == GC_THRESHOLD
        assert sys.getswitchinterval() == pytest.approx(0.005)
    with tuned(gc_threshold=None, switch_interval_s=0.01):
        assert gc.get_threshold() == (700, 10, 10)
        assert sys.getswitchinterval() == pytest.approx(0.01)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_tuned_restores_after_an_error() -> None:
    with pytest.raises(RuntimeError), tuned():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_tuned_overlapping_threads_restore_only_when_the_last_leaves() -> None:
    first = _Holder(tuned)
    second = _Holder(lambda: tuned(gc_threshold=(1000, 5, 5), switch_interval_s=None))
    # The first thread leaves while the second is still inside: nothing is restored.
    first.leave()
    assert gc.get_threshold() == (1000, 5, 5)
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    second.leave()
    assert gc.get_threshold() == (700, 10, 10)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_gc_paused_disables_the_collector_and_enables_it_again() -> None:
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_gc_paused_leaves_a_collector_that_was_already_off_off() -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_gc_paused_nested_in_one_thread_enables_only_at_the_outer_exit() -> None:
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "the outer pause is still on"
    assert gc.isenabled()


@pytest.mark.parametrize("first_out", ["first", "second"])
def test_gc_paused_two_threads_overlapping_in_either_order(first_out: str) -> None:
    a = _Holder(gc_paused)
    assert not gc.isenabled()
    b = _Holder(gc_paused)
    early, late = (a, b) if first_out == "first" else (b, a)
    early.leave()
    assert not gc.isenabled(), "one pauser is still inside"
    late.leave()
    assert gc.isenabled(), "the last pauser re-enabled the collector"


def test_gc_paused_two_threads_keep_a_disabled_collector_disabled() -> None:
    gc.disable()
    a = _Holder(gc_paused)
    b = _Holder(gc_paused)
    a.leave()
    b.leave()
    assert not gc.isenabled()
    # And the next pause, with the collector back on, re-enables it again.
    gc.enable()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_gc_paused_after_an_error_the_collector_is_back_on() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
