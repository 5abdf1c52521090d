import io
import logging
import time

import pytest

from adapter.runtime.progress import Progress, ProgressReporter, format_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_shows_rows_rate_tokens_left_and_eta() -> None:
    line = format_progress(Progress(1200, 1000, 500, 2, 3), rate=250.0)
    assert line == (
        "rows 1200 (1000 from backfill), 250 rows/s, backfill tokens left 500, "
        "ETA ~2 s, caught up 2/3"
    )
    assert "ETA" not in format_progress(Progress(10, 0, 0, 3, 3), rate=5.0)


def _wait(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_on_a_terminal_one_line_is_redrawn() -> None:
    out = Terminal()
    rows = [0]
    reporter = ProgressReporter(lambda: Progress(rows[0], 0, 0, 0, 1), out=out)
    reporter.start()
    rows[0] = 100
    _wait(lambda: "rows 100" in out.getvalue())
    reporter.stop()
    assert out.getvalue().startswith("\r\x1b[K")
    assert out.getvalue().endswith("\n")


def test_off_a_terminal_progress_goes_to_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = io.StringIO()
    caplog.set_level(logging.INFO, logger="adapter.runtime.progress")
    reporter = ProgressReporter(
        lambda: Progress(7, 7, 3, 0, 1), out=out, log_every_s=0.0
    )
    reporter.start()
    _wait(lambda: any("progress: rows 7" in r.message for r in caplog.records))
    reporter.stop()
    assert out.getvalue() == ""
