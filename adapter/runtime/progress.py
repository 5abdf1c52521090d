"""Progress of long work: a live line on a terminal, periodic log lines elsewhere.

A daemon thread samples a status callable once a second. On a terminal it redraws
one line on stderr (rows, backfill tokens left, rate, ETA); off a terminal (a pipe,
a container log) it logs a line every ``log_every_s`` seconds instead, so logs stay
readable.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

__all__ = ["Progress", "ProgressReporter", "format_progress"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Progress:
    """A sample of long-running work.

    Attributes:
        rows: rows handled so far.
        backfill_rows: of those, rows read from the database.
        remaining_tokens: tokens still to backfill (0 when none).
        caught_up: streams caught up, out of ``streams``.
        streams: streams followed.
    """

    rows: int
    backfill_rows: int
    remaining_tokens: int
    caught_up: int
    streams: int


def format_progress(now: Progress, rate: float) -> str:
    """One human line for a sample and a rows/s rate."""
    eta = ""
    if now.remaining_tokens and rate > 0:
        eta = f", ETA ~{now.remaining_tokens / rate:.0f} s"
    return (
        f"rows {now.rows} ({now.backfill_rows} from backfill), {rate:,.0f} rows/s, "
        f"backfill tokens left {now.remaining_tokens}{eta}, "
        f"caught up {now.caught_up}/{now.streams}"
    )


class ProgressReporter:
    """Samples ``status`` every second and shows it.

    Args:
        status: returns the current :class:`Progress`.
        out: where a terminal line goes (stderr by default).
        log_every_s: interval of log lines when ``out`` is not a terminal.
    """

    def __init__(
        self,
        status: Callable[[], Progress],
        *,
        out: IO[str] | None = None,
        log_every_s: float = 10.0,
    ) -> None:
        self._status = status
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._log_every_s = log_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="synkafka-progress", daemon=True
        )

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and end the terminal line."""
        self._stop.set()
        self._thread.join(2.0)
        if self._tty:
            self._out.write("\n")
            self._out.flush()

    def _run(self) -> None:
        last = self._status()
        last_t = time.monotonic()
        last_log = last_t
        while not self._stop.wait(1.0):
            now = self._status()
            t = time.monotonic()
            rate = (now.rows - last.rows) / max(t - last_t, 1e-6)
            line = format_progress(now, rate)
            if self._tty:
                self._out.write("\r\x1b[K" + line)
                self._out.flush()
            elif t - last_log >= self._log_every_s:
                logger.info("progress: %s", line)
                last_log = t
            last, last_t = now, t
