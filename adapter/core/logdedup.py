"""Deduplicate repeated log lines: the first one, then a reminder at most every interval.

While a broker is down, librdkafka reports the same failure many times a second
(every reconnect attempt, from every client, through its log and its error
callback); while Redis is down, the bridge's subscriber fails every few seconds.
:class:`LogDeduplicator` decides, line by line, which to let through:

* the first line of a kind is shown (the change of state);
* the same kind again within ``interval_s`` of the last shown one is suppressed and
  counted;
* after ``interval_s`` the next one is shown as a reminder, with the count of the
  lines suppressed since the last one shown;
* a kind not seen for ``interval_s`` starts over (a new outage is news again).

Lines are of the same kind when they are equal once the parts that change on every
attempt are taken out (:func:`line_kind`): librdkafka's thread prefix, ``(after 12ms
in state CONNECT, 3 identical error(s) suppressed)`` and other millisecond counts.
The class does no I/O and takes its clock as an argument, so it is tested with a
fake clock; a lock makes it safe to share between clients polled on different
threads.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_INTERVAL_S", "LogDeduplicator", "Verdict", "line_kind"]

DEFAULT_INTERVAL_S: Final = 30.0

# "[thrd:127.0.0.1:9092/bootstrap]: " starts every librdkafka line; the error
# callback reports the same text without it.
_THREAD_RE: Final = re.compile(r"^\[thrd:[^\]]*\]:\s*")
# librdkafka's own per-line timing and repeat count.
_AFTER_RE: Final = re.compile(
    r"\s*\(after \d+ms in state [A-Z_-]+(?:, \d+ identical error\(s\) suppressed)?\)"
)
_MILLIS_RE: Final = re.compile(r"\b\d+ms\b")


def line_kind(message: str) -> str:
    """What stays the same between repeats of ``message`` (the deduplication key)."""
    kind = _THREAD_RE.sub("", message.strip())
    kind = _AFTER_RE.sub("", kind)
    return _MILLIS_RE.sub("Nms", kind)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether to show a line, and how many of its kind were suppressed before it.

    Attributes:
        show: log the line now.
        suppressed: lines of the same kind suppressed since the last one shown
            (only meaningful when ``show``).
    """

    show: bool
    suppressed: int = 0


@dataclass(slots=True)
class _Kind:
    shown_at: float
    seen_at: float
    suppressed: int = 0


class LogDeduplicator:
    """Decides which repeated lines to show (see the module docstring).

    Args:
        interval_s: the least time between two shown lines of one kind.
        clock: monotonic seconds; tests pass a fake.
        max_kinds: kinds remembered at most (the least recently seen are forgotten),
            so a stream of distinct lines cannot grow memory without bound.
    """

    def __init__(
        self,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 512,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._max_kinds = max_kinds
        self._kinds: OrderedDict[str, _Kind] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, message: str) -> Verdict:
        """Record one occurrence of ``message`` and say whether to show it."""
        key = line_kind(message)
        now = self._clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None:
                self._remember(key, _Kind(shown_at=now, seen_at=now))
                return Verdict(show=True)
            self._kinds.move_to_end(key)
            quiet_for = now - kind.seen_at
            kind.seen_at = now
            if quiet_for >= self._interval_s or now - kind.shown_at >= self._interval_s:
                suppressed, kind.suppressed, kind.shown_at = kind.suppressed, 0, now
                return Verdict(show=True, suppressed=suppressed)
            kind.suppressed += 1
            return Verdict(show=False)

    def _remember(self, key: str, kind: _Kind) -> None:
        self._kinds[key] = kind
        while len(self._kinds) > self._max_kinds:
            self._kinds.popitem(last=False)
