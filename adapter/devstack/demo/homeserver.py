"""The simulated homeserver: Synapse's writers, rows into the database, RDATA onto Kafka."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from adapter.core.errors import AdapterError
from adapter.core.rows import row_from_wire, row_to_wire
from adapter.devstack.demo.deliveries import canonical
from adapter.devstack.demo.settings import EVENT_WRITERS, MAIN_WRITER, MIX, RESEND, Key
from adapter.devstack.writer import SynapseWriter, Written
from adapter.io.db.connection import DbConnection
from adapter.runtime.publisher import Publisher

__all__ = ["SimulatedHomeserver"]

logger = logging.getLogger(__name__)

_ROOMS: Final = ("!lobby", "!dev", "!ops", "!random")
# History rows per (stream, writer), written before the consumer first starts.
_HISTORY: Final = 5


@dataclass(frozen=True, slots=True)
class _Published:
    stream: str
    writer: str
    token: int
    rows: tuple[Any, ...]


class SimulatedHomeserver:
    """A Synapse homeserver's writers: rows into the database, then RDATA onto Kafka.

    Writes one token at a time from one thread, like a homeserver whose writers take
    turns: ``event_persister1`` and ``event_persister2`` share the ``events``
    stream's counter (their tokens interleave), ``master`` writes every other
    stream. Every row is persisted before its record is published, as Synapse does.
    Keys are unique per write (a new user per receipt, presence or account data
    row), so no row replaces an older one and every row written stays in the
    database for the final comparison.

    Args:
        conn: the database, tables created.
        publisher: where the records go.
        streams: the streams to write (a subset of the mix).
        server_name: used in user and room ids.
    """

    def __init__(
        self,
        conn: DbConnection,
        publisher: Publisher,
        streams: Sequence[str],
        server_name: str,
    ) -> None:
        self._conn = conn
        self._publisher = publisher
        self._server = server_name
        self._mix = tuple(s for s in MIX if s in streams) or ("events",)
        self._writers = {
            name: SynapseWriter(conn, name) for name in (*EVENT_WRITERS, MAIN_WRITER)
        }
        self._lock = threading.Lock()
        self._n = 0
        self._event_turn = 0
        self._last_event_id = "$none"
        self._recent_events: deque[_Published] = deque(maxlen=max(RESEND, 64))
        self._resend_wanted = 0
        # Set under the lock once the writing loop is over: a re-send asked for
        # after that is done by the asker (a quick run can finish writing first).
        self._closing = False
        self.history: dict[tuple[str, str], int] = {}
        """The last history token per (stream, writer); later tokens are the run's."""
        self.last_token: dict[tuple[str, str], int] = {}
        """The last published token per (stream, writer)."""
        self.rows_written: Counter[str] = Counter()
        """Rows written per stream after the history."""
        self.typing_log: dict[Key, tuple[str, ...]] = {}
        """Typing rows (no table holds them) after the history, canonical."""
        self.writes = 0
        """Tokens written after the history."""
        self.history_rows = 0
        """Rows written as history."""
        self.resent = 0
        """Records published a second time (duplicates the consumer must drop)."""
        self.failure: BaseException | None = None
        self.finished = threading.Event()

    # -- writing -------------------------------------------------------------------

    def _user(self, n: int) -> str:
        return f"@user{n}:{self._server}"

    def _write(self, stream: str, n: int) -> tuple[str, Written]:
        """Write one token of ``stream``; return the writer's name and what it wrote."""
        room = f"{_ROOMS[n % len(_ROOMS)]}:{self._server}"
        user = self._user(n)
        if stream == "events":
            name = EVENT_WRITERS[self._event_turn % len(EVENT_WRITERS)]
            self._event_turn += 1
            writer = self._writers[name]
            if n % 5 == 0:
                # Joins spread over many rooms: no room gets Synapse's 150 state
                # rows per page that the backfill collapses into one state-all row.
                written = writer.send_event(
                    f"!room{n % 97}:{self._server}",
                    "m.room.member",
                    sender=user,
                    state_key=user,
                    content={"membership": "join"},
                )
            else:
                written = writer.send_event(
                    room,
                    "m.room.message",
                    sender=user,
                    content={"msgtype": "m.text", "body": f"message {n}"},
                )
            self._last_event_id = str(written[1][0][1][0])
            return name, written
        master = self._writers[MAIN_WRITER]
        if stream == "receipts":
            written = master.send_receipt(room, "m.read", user, self._last_event_id)
        elif stream == "presence":
            written = master.set_presence(
                user, "online", last_active_ts=int(time.time() * 1000)
            )
        elif stream == "account_data":
            written = master.set_account_data(
                user, "m.demo", {"n": n}, room_id=room if n % 2 else None
            )
        elif stream == "to_device":
            written = master.send_to_device(
                local=[(user, "PHONE", {"type": "m.demo", "n": n})]
            )
        elif stream == "device_lists":
            written = master.add_device_list_change(user, "PHONE")
        elif stream == "push_rules":
            written = master.push_rule_change(user, f"demo.rule.{n}")
        elif stream == "typing":
            written = master.set_typing(room, [user] if n % 2 else [])
        elif stream == "caches":
            written = master.invalidate_cache("get_user_by_id", [user])
        else:  # pragma: no cover - the mix names only the streams above
            raise AdapterError(f"the demo cannot write {stream}")
        return MAIN_WRITER, written

    def write_one(self, *, history: bool = False) -> None:
        """Write and publish the next token of the mix."""
        stream = self._mix[self._n % len(self._mix)]
        self._n += 1
        writer, (token, wire_rows) = self._write(stream, self._n)
        rows = tuple(row_from_wire(stream, w) for w in wire_rows)
        self._publisher.publish_rdata(stream, writer, token, rows)
        published = _Published(stream, writer, token, rows)
        with self._lock:
            self.last_token[(stream, writer)] = token
            if history:
                self.history[(stream, writer)] = token
                self.history_rows += len(rows)
                return
            self.writes += 1
            self.rows_written[stream] += len(rows)
            if stream == "typing":
                self.typing_log[(stream, writer, token)] = canonical(
                    [row_to_wire(r) for r in rows]
                )
            if stream == "events":
                self._recent_events.append(published)

    def write_history(self, per_writer: int = _HISTORY) -> None:
        """Write the rows that exist before the consumer first starts, then flush."""
        for _ in range(per_writer * len(self._mix)):
            self.write_one(history=True)
        self._publisher.flush()

    def request_resend(self, count: int) -> None:
        """Re-publish the last ``count`` events records, as a writer does after a reconnect.

        The writing thread does it; once its loop is over, this call waits for the
        thread's final flush and does it here, so a re-send asked for late still
        happens (``_resend`` takes the request atomically: it runs once).
        """
        with self._lock:
            self._resend_wanted = count
            closing = self._closing
        if closing:
            self.finished.wait(60)
            self._resend()
            self._publisher.flush(30.0)

    def _resend(self) -> None:
        with self._lock:
            count, self._resend_wanted = self._resend_wanted, 0
            again = list(self._recent_events)[-count:] if count else []
        for p in again:
            self._publisher.publish_rdata(p.stream, p.writer, p.token, p.rows)
        with self._lock:
            self.resent += len(again)

    def run(self, stop: threading.Event, rows: int, duration_s: float) -> None:
        """Write ``rows`` tokens paced over ``duration_s``, then flush; ends early on ``stop``.

        Failures are kept in :attr:`failure` for the scenario to report.
        """
        started = time.monotonic()
        interval = duration_s / max(rows, 1)
        next_flush = started
        try:
            for i in range(rows):
                if stop.is_set():
                    break
                delay = started + i * interval - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                self.write_one()
                if self._resend_wanted:
                    self._resend()
                if time.monotonic() >= next_flush:
                    # Announce positions (for ``synkafka lag``) and wait for the acks.
                    self._publisher.flush(10.0)
                    next_flush = time.monotonic() + 0.25
            with self._lock:
                self._closing = True
            if self._resend_wanted:
                self._resend()
            self._publisher.flush(30.0)
        except BaseException as exc:  # the thread's outermost frame: kept for the owner
            logger.exception("the simulated homeserver failed")
            self.failure = exc
        finally:
            self.finished.set()

    def snapshot(self) -> tuple[int, dict[tuple[str, str], int], dict[str, int]]:
        """``(writes, last token per (stream, writer), rows written per stream)``."""
        with self._lock:
            return self.writes, dict(self.last_token), dict(self.rows_written)
