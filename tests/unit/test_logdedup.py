"""librdkafka's repeated lines: the first, then a reminder at most every 30 s."""

from __future__ import annotations

import logging
import threading

import pytest

from adapter.core.logdedup import LogDeduplicator, Verdict, line_kind
from adapter.io.kafka.client import ClientLog

REFUSED = (
    "[thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: Connect to "
    "ipv4#127.0.0.1:9092 failed: Connection refused (after {ms}ms in state CONNECT{rep})"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(ms: int = 0, repeats: int = 0) -> str:
    rep = f", {repeats} identical error(s) suppressed" if repeats else ""
    return REFUSED.format(ms=ms, rep=rep)


def test_repeats_differing_only_in_timings_are_one_kind() -> None:
    assert line_kind(refused(0)) == line_kind(refused(1450, repeats=7))
    # The error callback reports the same text without the thread prefix.
    without_thread = refused(3).split("]: ", 1)[1]
    assert line_kind(without_thread) == line_kind(refused(0))
    # Another broker is another kind: its failure is news.
    assert line_kind(refused().replace("9092", "9093")) != line_kind(refused())


def test_first_line_shown_then_one_reminder_per_interval_with_the_count() -> None:
    clock = FakeClock()
    dedup = LogDeduplicator(interval_s=30.0, clock=clock)
    assert dedup.admit(refused()) == Verdict(show=True)
    shown = []
    # 20 lines a second for 65 s, as librdkafka does while a broker is down.
    for step in range(1, 65 * 20 + 1):
        clock.now = 1000.0 + step / 20
        verdict = dedup.admit(refused(step % 7))
        if verdict.show:
            shown.append((clock.now - 1000.0, verdict.suppressed))
    assert [round(t) for t, _ in shown] == [30, 60]
    # Every line between two shown ones is counted, none twice.
    assert [n for _, n in shown] == [599, 599]


def test_a_kind_quiet_for_an_interval_is_news_again() -> None:
    clock = FakeClock()
    dedup = LogDeduplicator(interval_s=30.0, clock=clock)
    dedup.admit(refused())
    clock.now += 1
    assert not dedup.admit(refused()).show
    clock.now += 31  # the broker came back; now it is down again
    assert dedup.admit(refused()) == Verdict(show=True, suppressed=1)
    clock.now += 1
    assert not dedup.admit(refused()).show


def test_distinct_kinds_are_independent_and_memory_is_bounded() -> None:
    clock = FakeClock()
    dedup = LogDeduplicator(interval_s=30.0, clock=clock, max_kinds=3)
    assert all(dedup.admit(f"line {name}").show for name in "abcd")
    # "a" was forgotten (least recently seen), so it shows again; "d" does not.
    assert dedup.admit("line a").show
    assert not dedup.admit("line d").show


def test_concurrent_admits_count_every_line_once() -> None:
    clock = FakeClock()
    dedup = LogDeduplicator(interval_s=30.0, clock=clock)
    shown = []

    def hammer() -> None:
        for _ in range(2000):
            if dedup.admit(refused()).show:
                shown.append(1)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(shown) == 1
    clock.now += 30
    assert dedup.admit(refused()) == Verdict(show=True, suppressed=7999)


def test_client_log_takes_confluent_calls_and_says_how_many_were_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = ClientLog(
        logging.getLogger("test.client"), LogDeduplicator(interval_s=30, clock=clock)
    )
    caplog.set_level(logging.INFO, logger="test.client")
    for _ in range(50):
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", refused())
        log.emit(logging.WARNING, refused().split("]: ", 1)[1], "Kafka consumer")
    clock.now += 30
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", refused())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("rdkafka#consumer-1 FAIL: [thrd:")
    assert "99 similar lines suppressed" in messages[1]
    # Lines below the logger's level are neither shown nor counted.
    log.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#consumer-1", "debug")
    assert len(caplog.records) == 2
