"""The long-running commands own their process, so they tune the interpreter around the run.

The runtime classes are replaced by fakes that record the interpreter's settings while
they "run"; nothing connects anywhere.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

import adapter.cli.bridge as bridge_cli
import adapter.cli.consume as consume_cli
import adapter.cli.feed as feed_cli
from adapter.cli import app
from adapter.io.metrics import CollectorRegistry, Metrics
from adapter.runtime.interpreter import GC_THRESHOLD, SWITCH_INTERVAL_S

RUNNER = CliRunner()
_seen: list[tuple[tuple[int, int, int], float]] = []


@pytest.fixture(autouse=True)
def _defaults() -> Iterator[None]:
    threshold, switch = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(700, 10, 10)
    sys.setswitchinterval(0.005)
    _seen.clear()
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        sys.setswitchinterval(switch)


def _metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def _record() -> None:
    _seen.append((gc.get_threshold(), sys.getswitchinterval()))


class _FakeConsumer:
    broker_up = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def run(self, stop: threading.Event) -> None:
        _record()


class _FakeBridge:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def run(self, stop: threading.Event) -> None:
        _record()
        stop.set()


class _Quiet:
    """Stands in for a client that would connect (producer, subscriber, writer)."""

    connected = False
    broker_up = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _invoke(monkeypatch: pytest.MonkeyPatch, module: Any, argv: list[str]) -> None:
    monkeypatch.setattr(module, "install_stop_signals", lambda stop: None)
    monkeypatch.setattr(module, "default_metrics", _metrics)
    result = RUNNER.invoke(app, [*argv, "-b", "127.0.0.1:1", "--metrics-port", "-1"])
    assert result.exit_code == 0, result.output


def test_consume_tunes_the_interpreter_around_the_consumer_and_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consume_cli, "ReplicationConsumer", _FakeConsumer)
    _invoke(monkeypatch, consume_cli, ["consume", "--prefix", "p", "--no-progress"])
    assert _seen == [(GC_THRESHOLD, SWITCH_INTERVAL_S)]
    assert gc.get_threshold() == (700, 10, 10)
    assert sys.getswitchinterval() == 0.005


def test_bridge_raises_the_gc_thresholds_only_and_restores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bridge_cli, "Bridge", _FakeBridge)
    for name in ("Producer", "ReplicationSubscriber", "DeadLetterWriter"):
        monkeypatch.setattr(bridge_cli, name, _Quiet)
    monkeypatch.setattr(bridge_cli, "_read_state", lambda settings, prefix: ({}, {}))
    argv = ["bridge", "--redis", "redis://127.0.0.1:1", "--server-name", "example.org"]
    _invoke(monkeypatch, bridge_cli, argv)
    assert _seen == [(GC_THRESHOLD, 0.005)]
    assert gc.get_threshold() == (700, 10, 10)


class _FakeFeed:
    published = 0
    healthy = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def run(self, stop: threading.Event) -> None:
        _record()


def test_feed_raises_the_gc_thresholds_only_and_restores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feed_cli, "EventFeed", _FakeFeed)
    for name in ("TransactionalPipe", "EventContent"):
        monkeypatch.setattr(feed_cli, name, _Quiet)
    monkeypatch.setattr(feed_cli, "reach_kafka", lambda settings, timeout: None)
    monkeypatch.setattr(feed_cli, "_ensure_topics", lambda admin, prefix, n: None)
    monkeypatch.setattr(feed_cli, "first_check", lambda dsn: None)
    _invoke(monkeypatch, feed_cli, ["feed", "--prefix", "p", "--db", "sqlite:///x.db"])
    assert _seen == [(GC_THRESHOLD, 0.005)]
    assert gc.get_threshold() == (700, 10, 10)
