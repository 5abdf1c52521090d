"""A periodic check that Synapse's database answers, for ``/health``.

The consumer uses the database only to backfill and the bridge only to repair gaps,
so between those uses their own outcomes say nothing: a database that went away
would look healthy until the next gap. This thread opens a connection every
``interval_s`` (with a short timeout), asks ``SELECT 1`` and reports the outcome to
a :class:`~adapter.runtime.health.DependencyStatus`, next to the outcomes the real
uses report.
"""

from __future__ import annotations

import logging
import threading

from adapter.core.errors import AdapterError, ConfigError
from adapter.io.db.connection import connect
from adapter.runtime.health import DependencyStatus

__all__ = ["DEFAULT_PROBE_INTERVAL_S", "DatabaseProbe", "first_check"]

logger = logging.getLogger(__name__)

DEFAULT_PROBE_INTERVAL_S = 10.0
_CONNECT_TIMEOUT_S = 5.0


class DatabaseProbe:
    """Checks ``dsn`` every ``interval_s`` in a daemon thread until stopped.

    Args:
        dsn: Synapse's database.
        status: where the outcome goes.
        interval_s: time between two checks.
    """

    def __init__(
        self,
        dsn: str,
        status: DependencyStatus,
        *,
        interval_s: float = DEFAULT_PROBE_INTERVAL_S,
    ) -> None:
        self._dsn = dsn
        self._status = status
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="synkafka-db-probe", daemon=True
        )

    def start(self) -> None:
        """Start checking (the first check at once)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop checking; returns once the thread ended (at most one timeout)."""
        self._stop.set()
        self._thread.join(_CONNECT_TIMEOUT_S + 5)

    def check_once(self) -> bool:
        """One check: ``True`` if the database answered."""
        try:
            with connect(self._dsn, connect_timeout_s=_CONNECT_TIMEOUT_S) as conn:
                conn.fetchone("SELECT 1")
        except AdapterError as exc:
            self._status.failed(str(exc))
            return False
        self._status.succeeded()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self._interval_s)


def first_check(dsn: str) -> str | None:
    """Open ``dsn`` once at a command's start: ``None`` if it answered, else why not.

    A database that is down is an outage, which the command rides out (its
    ``/health`` says so meanwhile); a wrong one (a SQLite file that does not exist,
    a database or role PostgreSQL does not know, a refused password) is a mistake in
    the settings, which no retry will mend.

    Raises:
        ConfigError: the settings name a database that cannot be the right one.
    """
    try:
        with connect(dsn, connect_timeout_s=_CONNECT_TIMEOUT_S) as conn:
            conn.fetchone("SELECT 1")
    except ConfigError:
        raise
    except AdapterError as exc:
        return str(exc)
    return None
